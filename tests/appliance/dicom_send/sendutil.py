"""Helpers for the sender tests: real SEG / SR files of a phantom, a queue holding them for
a done job, and a real pynetdicom Storage SCP standing in for the PACS."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    SegmentationStorage,
)
from pynetdicom.transport import ThreadedAssociationServer

from appliance.config import DicomSendConfig
from appliance.dicom_out import DeviceInfo, DicomOutInput, FrameResult, build_job_output
from appliance.dicom_out.outbox import write_outbox
from appliance.io.dicom import read_dicom
from appliance.io.types import ImageMeta
from appliance.phantom import PhantomSpec, make_phantom
from appliance.phantom_dicom import write_phantom_dicom
from appliance.store import FrameResultRow, JobQueue, ResultStore
from appliance.store.outbound import OutboundItem

PACS_AE = "TESTPACS"
META = ImageMeta(source_format="dicom", modality="US", n_frames_total=1, frame_indices=(0,))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_objects(folder: Path, job_id: int = 1) -> list[Path]:
    """A phantom DICOM's real SEG and SR (as the node writes them) in `folder`."""
    phantom = make_phantom(PhantomSpec(height=200, width=260, semi_axes_px=(40, 30), seed=5))
    source = folder / "source.dcm"
    write_phantom_dicom(
        source, phantom, pixel_spacing_mm=0.1, patient_id="PAT-S", patient_name="Send^Test"
    )
    meta = read_dicom(source).meta
    mask = (phantom.mask * 255).astype(np.uint8)  # the phantom is the ultrasound region
    result = FrameResult(
        frame_index=0,
        mask=mask,
        diagnosis="benign",
        probabilities={"normal": 0.1, "benign": 0.7, "malignant": 0.2},
        confidence=0.7,
        lesion_area_px=float((mask > 0).sum()),
        max_diameter_px=80.0,
        lesion_area_mm2=float((mask > 0).sum()) * 0.01,
        max_diameter_mm=8.0,
    )
    inp = DicomOutInput(job_id, source, meta, (result,), "test-model@1.0", DeviceInfo("t-1"))
    return write_outbox(folder / "outbox", job_id, build_job_output(inp).datasets)


def copy_objects(objects: list[Path], outbox: Path) -> list[Path]:
    outbox.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(p, outbox / p.name)) for p in objects]


def queue_done_job(db: Path, files: list[Path], destination: str, name: str = "a.dcm") -> int:
    """A job through the queue to done, its `files` queued for `destination` with it."""
    with JobQueue(db) as queue, ResultStore(db) as results:
        outcome = queue.enqueue(
            Path(f"/inbox/{name}"), hashlib.sha256(name.encode()).hexdigest(), 1
        )
        job = queue.claim(outcome.id)
        assert job is not None
        items = [
            OutboundItem(
                "sr" if p.name.endswith("-sr.dcm") else "seg",
                p,
                _uid(p),
                destination,
            )
            for p in files
        ]
        row = FrameResultRow(0, "benign", {"benign": 1.0}, 1.0)
        results.save_completed(job.id, META, [row], "m@1", "cpu", outbound=items)
        return job.id


def _uid(path: Path) -> str | None:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    except InvalidDicomError:  # a placeholder file of a queue-only test
        return None


def send_config(port: int, **overrides: object) -> DicomSendConfig:
    values: dict[str, object] = {
        "enabled": True,
        "ae_title": PACS_AE,
        "host": "127.0.0.1",
        "port": port,
        "calling_ae_title": "FAMENODE",
        "acse_timeout_s": 5.0,
        "dimse_timeout_s": 10.0,
        "network_timeout_s": 10.0,
        "retry_initial_s": 10.0,
        "retry_max_s": 80.0,
        "max_attempts": 3,
    }
    values.update(overrides)
    return DicomSendConfig.model_validate(values)


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime = field(default_factory=lambda: datetime(2025, 1, 1, 12, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class PacsScp:
    """A real Storage SCP on 127.0.0.1 for SEG and Comprehensive 3D SR; answers `status`
    (one code for all, or a list consumed one per C-STORE) and keeps what it stored."""

    def __init__(
        self, port: int, *, status: int | list[int] = 0x0000, callers: list[str] | None = None
    ) -> None:
        self.port = port
        self.status = status
        self.received: list[Dataset] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=PACS_AE)
        ae.require_calling_aet = callers or []
        for sop_class in (SegmentationStorage, Comprehensive3DSRStorage):
            ae.add_supported_context(sop_class)
        self._ae = ae
        self._server: ThreadedAssociationServer | None = None

    def __enter__(self) -> PacsScp:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _store(self, event: Event) -> int:
        with self._lock:
            if isinstance(self.status, list):
                code = self.status.pop(0) if self.status else 0x0000
            else:
                code = self.status
            if code in (0x0000, 0xB000, 0xB006, 0xB007):
                self.received.append(event.dataset)
        return code

    def uids(self) -> list[str]:
        with self._lock:
            return [str(ds.SOPInstanceUID) for ds in self.received]
