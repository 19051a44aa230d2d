"""The node's local training data, built from real reviews of real pipeline results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.config import NodeConfig, load_config
from appliance.federation.heldout import HeldoutAssignments
from appliance.federation.local_data import load_local_data
from appliance.io.reader import read_file
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_dicom, write_phantom_png
from appliance.preprocess import letterbox_mask, preprocess
from appliance.service import NodeParts
from appliance.store.reviews import ReviewStore
from tests.appliance.pipelineutil import node_parts, process_file


def _write_inputs(folder: Path) -> dict[str, Path]:
    """Two images of patient A, one of patient B (DICOM), three PNGs without a patient."""
    folder.mkdir()
    files: dict[str, Path] = {}
    for i, patient in enumerate(["PAT-A", "PAT-A", "PAT-B"]):
        path = folder / f"{patient}-scan{i}.dcm"
        phantom = make_phantom(PhantomSpec(height=160, width=200, semi_axes_px=(30, 20), seed=i))
        write_phantom_dicom(
            path, phantom, pixel_spacing_mm=0.1, patient_id=patient, patient_name="Doe^Jane"
        )
        files[path.name] = path
    for i in range(3):
        path = folder / f"plain-{i}.png"
        write_phantom_png(path, make_phantom(PhantomSpec(height=128, width=160, seed=10 + i)))
        files[path.name] = path
    return files


Node = tuple[NodeParts, NodeConfig, dict[str, Path], dict[str, int]]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A node that analysed the inputs through its real pipeline (jobs by file name)."""
    files = _write_inputs(tmp_path / "pacs")
    parts = node_parts(tmp_path / "node", workers=1)
    jobs = {name: process_file(parts, path) for name, path in files.items()}
    yield parts, load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path / "node")}), files, jobs
    parts.close()


def _confirm_all(config: NodeConfig, jobs: dict[str, int]) -> None:
    with ReviewStore(config.database_path) as reviews:
        for job_id in jobs.values():
            reviews.confirm(job_id, 0, "dr. test")


def test_reviewed_cases_are_split_by_patient_and_read_from_verified_bytes(node: Node) -> None:
    parts, config, files, jobs = node
    _confirm_all(config, jobs)
    with ReviewStore(config.database_path) as reviews:  # a redrawn mask is trained on
        redrawn = np.zeros((128, 160), np.uint8)
        redrawn[40:80, 50:110] = 1
        reviews.correct_mask(jobs["plain-0.png"], 0, redrawn, "dr. test")
        reviews.correct_diagnosis(jobs["plain-0.png"], 0, "malignant", "dr. test")
    # A PACS re-export put other content under one name before training read it.
    replaced = files["plain-2.png"]
    write_phantom_png(replaced, make_phantom(PhantomSpec(height=128, width=160, seed=99)))

    data = load_local_data(config)
    params = parts.bundle.manifest.preprocess_params()

    assert not data.empty and data.reason == ""
    assert len(data.train) + len(data.heldout) == 5  # six reviewed, one changed since
    assert data.skipped == {"its bytes are gone or changed since it was analysed": 1}
    assert len(data.heldout) >= 1 and len(data.train) >= 3
    names = (*data.train.names, *data.heldout.names)
    assert all(n.startswith("job-") and "/frame-0" in n for n in names)
    assert not any("PAT" in n or "plain" in n or ".dcm" in n for n in names)  # opaque ids
    # Both images of patient A fall on the same side.
    a_jobs = {f"job-{jobs[n]}/frame-0" for n in files if n.startswith("PAT-A")}
    assert a_jobs <= set(data.train.names) or a_jobs <= set(data.heldout.names)
    assert data.train.images.dtype == np.float32 and data.train.images.shape[1:] == (128, 128)

    # The arrays are exactly what inference sees of the analysed bytes and the mask.
    name = f"job-{jobs['plain-0.png']}/frame-0"
    side = data.train if name in data.train.names else data.heldout
    i = side.names.index(name)
    frame = read_file(files["plain-0.png"]).frames[0]
    np.testing.assert_array_equal(side.images[i], preprocess(frame, params)[0])
    np.testing.assert_array_equal(side.masks[i], letterbox_mask(redrawn, params.size))
    assert side.labels[i] == 2  # malignant, the clinician's label

    # Rounds later: the same split, even with another share in the config, and the cases
    # kept even once the inbox files are gone.
    for path in files.values():
        path.unlink()
    later = load_local_data(
        config.model_copy(
            update={"federation": config.federation.model_copy(update={"heldout_share": 0.5})}
        )
    )
    assert later.train.names == data.train.names
    assert later.heldout.names == data.heldout.names
    np.testing.assert_array_equal(later.train.images, data.train.images)


def test_a_node_without_reviews_has_nothing_to_train_on_and_says_so(node: Node) -> None:
    _parts, config, _files, _jobs = node
    data = load_local_data(config)
    assert data.empty
    assert "no result has been confirmed or corrected" in data.reason
    assert len(data.heldout) == 0 and data.train.images.shape == (0, 128, 128)


def test_heldout_assignment_meets_the_share_and_never_changes(tmp_path: Path) -> None:
    db = tmp_path / "node.sqlite3"
    with HeldoutAssignments(db) as a:
        first = a.assign([f"job:{i}" for i in range(10)], 0.2)
        assert sum(first.values()) == 2
        again = a.assign([f"job:{i}" for i in range(20)], 0.5)
        assert {k: again[k] for k in first} == first  # never re-assigned
        assert a.counts()[0] == sum(again.values())
