"""Result files: the mask and overlay PNGs read back as what was analysed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from appliance.results.writers import LESION_RGB, overlay, overlay_image, write_frame_files


def _frame_and_mask(all_levels: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, size=(180, 240), dtype=np.uint8)
    if not all_levels:
        frame[frame == 17] = 18  # leave grey level 17 unused
    mask = np.zeros_like(frame)
    mask[60:120, 80:170] = 1
    return frame, mask


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_files_read_back_as_mask_and_outline(tmp_path: Path) -> None:
    frame, mask = _frame_and_mask(all_levels=False)
    files = write_frame_files(tmp_path, 3, frame, mask)
    assert files.mask.name == "frame_003_mask.png" and files.overlay.name == "frame_003_overlay.png"
    with Image.open(files.mask) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), mask * 255)
    with Image.open(files.overlay) as im:
        assert im.mode == "P"  # one byte per pixel
    got = _read_rgb(files.overlay)
    # A grey level was free: the overlay is exactly the frame plus the outline.
    np.testing.assert_array_equal(got, overlay(frame, mask))
    orange = (got == LESION_RGB).all(axis=2)
    grey = (got[..., 0] == got[..., 1]) & (got[..., 1] == got[..., 2])
    assert (orange | grey).all()
    # The outline runs along the lesion's border, not through its inside or the background.
    assert orange[60, 100] and orange[119, 100] and orange[90, 80] and orange[90, 169]
    assert not orange[90, 125] and not orange[10, 10]
    np.testing.assert_array_equal(got[~orange][:, 0], frame[~orange])
    assert not list(tmp_path.glob(".*.tmp"))  # written by rename, nothing half-written left


def test_a_frame_using_every_grey_level_loses_at_most_one_level_on_its_rarest_value(
    tmp_path: Path,
) -> None:
    frame, mask = _frame_and_mask(all_levels=True)
    assert np.unique(frame).size == 256
    files = write_frame_files(tmp_path, 0, frame, mask)
    got = _read_rgb(files.overlay)
    want = overlay(frame, mask).astype(int)
    diff = np.abs(got - want).max(axis=2)
    counts = np.bincount(frame.ravel(), minlength=256)
    rarest = int(counts.argmin())
    assert diff.max() == 1
    # Only pixels of the rarest grey level move, by one level; the outline is intact.
    assert set(np.unique(frame[diff > 0])) == {rarest}
    assert ((got == LESION_RGB).all(axis=2) == (want == LESION_RGB).all(axis=2)).all()


def test_no_lesion_gives_the_frame_itself() -> None:
    frame, _ = _frame_and_mask(all_levels=True)
    im = overlay_image(frame, np.zeros_like(frame))
    np.testing.assert_array_equal(np.asarray(im.convert("L")), frame)
