"""Swapping the model under a working pipeline and service, in-process, with real ONNX
Runtime sessions of two tiny exported models (needs torch for the export)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.models.registry import ModelRegistry
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_png
from appliance.runtime.base import InferenceBackend, ModelOutputs
from appliance.service import Node, build_analyzer, build_parts
from appliance.service_status import STATUS_FILE
from appliance.store.jobs import JobStatus
from tests.appliance.models.bundles import real_bundle
from tests.appliance.models.conftest import node_config

pytest.importorskip("torch", reason="exporting the test models needs torch (the 'train' extra)")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("real-bundles")
    return {
        v: real_bundle(base / v, seed=seed, version=v)
        for seed, v in enumerate(("1.0.0", "1.1.0", "1.2.0"), start=1)
    }


def _png(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"phantom-{seed:03d}.png"
    write_phantom_png(path, make_phantom(PhantomSpec(height=120, width=160, seed=seed)))
    return path


class Gate:
    """Wraps a backend; `infer` waits until the test opens the gate."""

    def __init__(self, inner: InferenceBackend) -> None:
        self.inner = inner
        self.name, self.device = inner.name, inner.device
        self.entered = threading.Event()
        self.release = threading.Event()

    def infer(self, batch: np.ndarray) -> ModelOutputs:
        self.entered.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never opened the gate")
        return self.inner.infer(batch)


def test_a_job_in_flight_keeps_the_model_it_started_with(
    tmp_path: Path, real: dict[str, Path]
) -> None:
    config = node_config(tmp_path / "node", real["1.0.0"], [], require=False)
    parts = build_parts(config)
    gate = Gate(parts.pipeline.analyzer.backend)
    parts.pipeline.analyzer.backend = gate
    first = parts.intake.submit(_png(tmp_path / "node" / "inbox", 1))
    job = parts.queue.claim(first.id)
    assert job is not None
    worker = threading.Thread(target=parts.pipeline.process, args=(job,))
    worker.start()
    assert gate.entered.wait(30)
    # Mid-job: the new model is built and swapped in; the job must not notice.
    newer = build_analyzer(config, parts.registry.load(real["1.1.0"]))
    old = parts.pipeline.swap_analyzer(newer)
    assert old.bundle.version_label == "tiny@1.0.0"
    gate.release.set()
    worker.join(30)
    done = parts.queue.get(first.id)
    assert done.status is JobStatus.DONE and done.model_version == "tiny@1.0.0"
    rows = parts.results.results_for_job(first.id)
    assert rows and {r.model_version for r in rows} == {"tiny@1.0.0"}
    result_json = json.loads((Path(str(rows[0].result_dir)) / "result.json").read_text())
    assert result_json["model"] == "tiny@1.0.0"
    # The next job runs on the new model.
    second = parts.intake.submit(_png(tmp_path / "node" / "inbox", 2))
    job = parts.queue.claim(second.id)
    assert job is not None
    parts.pipeline.process(job)
    assert parts.queue.get(second.id).model_version == "tiny@1.1.0"
    assert {r.model_version for r in parts.results.results_for_job(second.id)} == {"tiny@1.1.0"}


def _wait_idle(node: Node, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not node.idle():
        assert time.monotonic() < deadline, "the node did not finish its jobs"
        time.sleep(0.05)


def test_the_service_swaps_on_activation_and_keeps_its_model_when_one_fails_to_load(
    tmp_path: Path, real: dict[str, Path]
) -> None:
    config = node_config(tmp_path / "node", real["1.0.0"], [], require=False)
    config = config.model_copy(
        update={"models": config.models.model_copy(update={"poll_interval_s": 60.0})}
    )  # the test drives check_model itself
    node = Node(config)
    node.start(watch=False)
    try:
        assert [e.action for e in node.parts.registry.history()] == ["activated", "installed"]
        assert node.check_model() is False  # nothing changed
        cli = ModelRegistry(config)  # another process: the CLI or the GUI
        cli.activate(real["1.1.0"], "alice", "test")
        assert node.check_model() is True
        assert node.parts.bundle.version_label == "tiny@1.1.0"
        status = json.loads((config.folder("work") / STATUS_FILE).read_text())
        assert status["model"] == "tiny@1.1.0"
        node.submit(_png(tmp_path / "node" / "inbox", 3))
        _wait_idle(node)
        # A model whose files vanish between activation and loading is refused.
        cli.activate(real["1.2.0"], "alice")
        shutil.rmtree(cli.root / "tiny@1.2.0")
        assert node.check_model() is False
        latest = node.parts.registry.history(2)
        assert [(e.action, e.model, e.actor) for e in latest] == [
            ("rolled_back", "tiny@1.1.0", "service"),
            ("refused", "tiny@1.2.0", "service"),
        ]
        assert cli.active_label() == "tiny@1.1.0"
        assert node.parts.bundle.version_label == "tiny@1.1.0"
        assert node.check_model() is False  # the refusal is not retried in a loop
        node.submit(_png(tmp_path / "node" / "inbox", 4))
        _wait_idle(node)
    finally:
        node.stop()
    jobs = node.parts.queue.list_jobs()
    assert [j.status for j in jobs] == [JobStatus.DONE, JobStatus.DONE]
    assert {j.model_version for j in jobs} == {"tiny@1.1.0"}
    for j in jobs:
        assert {r.model_version for r in node.parts.results.results_for_job(j.id)} == {"tiny@1.1.0"}
