"""Pure image functions of the viewer, and the mask editor."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.app.imaging import (
    compose,
    mask_contours,
    mask_rgba,
    measure_mask,
    paint_stroke,
    window_level,
)
from appliance.app.mask_editor import MaskEditor, Tool


def test_window_level_maps_the_window_to_the_full_range() -> None:
    ramp = np.arange(256, dtype=np.uint8)[None, :]
    out = window_level(ramp, centre=100, width=50)
    assert out[0, 75] == 0 and out[0, 125] == 255 and out[0, 100] in (127, 128)
    assert out[0, 0] == 0 and out[0, 255] == 255
    assert np.array_equal(window_level(ramp, 127.5, 255), ramp)
    hard = window_level(ramp, 100, 0)  # width 0 is taken as 1: a threshold at the centre
    assert hard[0, 99] == 0 and hard[0, 101] == 255


def test_overlay_layers() -> None:
    frame = np.full((20, 30), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 1
    rgba = mask_rgba(mask, (230, 159, 0), 0.5)
    assert rgba[10, 15].tolist() == [230, 159, 0, 128] and rgba[0, 0, 3] == 0
    fill = compose(frame, mask, rgb=(230, 159, 0), opacity=0.5, outline=False)
    assert fill[10, 15].tolist() == [165, 130, 50] and fill[0, 0].tolist() == [100, 100, 100]
    outline = compose(frame, mask, rgb=(230, 159, 0), opacity=0.5, fill=False)
    assert outline[5, 15].tolist() == [230, 159, 0] and outline[10, 15].tolist() == [100] * 3
    (contour,) = mask_contours(mask)
    assert contour[:, 0].min() == pytest.approx(10.25)
    assert contour[:, 0].max() == pytest.approx(19.75)
    assert mask_contours(np.zeros((4, 4))) == []
    with pytest.raises(ValueError, match="opacity"):
        mask_rgba(mask, (0, 0, 0), 1.5)


def test_measures_in_mm_where_calibrated_else_px() -> None:
    mask = np.zeros((50, 50), np.uint8)
    mask[10:20, 10:40] = 1  # 10 x 30 px
    px = measure_mask(mask, None)
    assert px.area_px == 300 and px.area_mm2 is None and px.max_diameter_mm is None
    assert px.max_diameter_px == pytest.approx(np.hypot(29, 9))
    mm = measure_mask(mask, (0.1, 0.2))
    assert mm.area_mm2 == pytest.approx(6.0)
    assert mm.max_diameter_mm == pytest.approx(np.hypot(29 * 0.2, 9 * 0.1))


def test_brush_and_eraser_strokes_with_undo() -> None:
    mask = np.zeros((40, 40), np.uint8)
    paint_stroke(mask, (5, 5), (30, 5), 2, 1)
    assert mask[5, 5:31].all() and mask[3, 18] == 1 and mask[10, 18] == 0
    editor = MaskEditor(np.zeros((40, 40), np.uint8), radius=3)
    changes: list[int] = []
    editor.changed.connect(lambda e: changes.append(int(e.mask.sum())))
    editor.begin_stroke(10, 10)
    editor.extend_stroke(30, 10)
    editor.end_stroke()
    painted = int(editor.mask.sum())
    assert painted > 0 and editor.modified
    editor.tool = Tool.ERASER
    editor.begin_stroke(20, 10)
    editor.end_stroke()
    assert 0 < editor.mask.sum() < painted
    assert editor.undo() and editor.mask.sum() == painted
    assert editor.undo() and not editor.modified and not editor.undo()
    assert changes[-1] == 0
    with pytest.raises(ValueError):
        editor.mask[0, 0] = 1  # read-only: only strokes change it
