"""The round trip against a real Orthanc (Debian package ``orthanc``) and a real
`fame-node run`: Orthanc pushes an ultrasound image to the node's receiver, the node
analyses it and its sender stores the SEG and SR back into Orthanc under the image's study;
the SEG read back with highdicom is the node's mask. And the PACS down: the objects wait in
the send queue (with the reason), survive a restart of the node, and are sent once the PACS
is back.

Orthanc listens on every interface and has no bind option, so each test starts its own
from a JSON config in a temporary folder: free ports, its own storage and index, remote
access off, the node as its only modality. Skipped, saying so, where Orthanc is not
installed (``apt-get install -y orthanc``)."""

from __future__ import annotations

import io
import json
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from appliance.dicom_out.source import pad_to_stored
from appliance.io.sample_data import ultrasound_sample_files
from tests.e2e.nodeutil import jobs, node_env, run_cli, start_node, stop_node, wait_for

ORTHANC = shutil.which("Orthanc") or next(
    (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None
)
SAMPLES = {p.name: p for p in ultrasound_sample_files()}
SOURCE = "US1_J2KI.dcm"
pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(
        ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc)"
    ),
    pytest.mark.skipif(SOURCE not in SAMPLES, reason="pydicom-data is not installed"),
]
ORTHANC_AE = "ORTHANC"
NODE_AE = "FAMENODE"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Orthanc:
    """A real Orthanc process with its own storage; REST on 127.0.0.1:`http_port`."""

    def __init__(self, folder: Path, dicom_port: int, http_port: int, node_port: int) -> None:
        self.folder, self.dicom_port, self.http_port = folder, dicom_port, http_port
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "FAME-TEST",
                    "StorageDirectory": str(folder / "storage"),
                    "IndexDirectory": str(folder / "index"),
                    "DicomAet": ORTHANC_AE,
                    "DicomPort": dicom_port,
                    "HttpPort": http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomModalities": {"fame": [NODE_AE, "127.0.0.1", node_port]},
                    "DicomAlwaysAllowStore": True,
                    "DicomCheckCalledAet": True,
                    "DicomCheckModalityHost": False,
                    "Plugins": [],
                    "SaveJobs": False,
                    "HttpTimeout": 30,
                }
            )
        )
        self.log = folder / "orthanc.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [str(ORTHANC), str(self.config)], stdout=fh, stderr=subprocess.STDOUT
            )
        wait_for(self._up, 60, "Orthanc's REST API and DICOM port")

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Orthanc exited: {self.log.read_text()[-3000:]}")
        if not _listening(self.dicom_port):
            return False
        try:
            return self.http.get("/system").status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def instances_by_modality(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for iid in self.get("/instances"):
            modality = self.get(f"/instances/{iid}/simplified-tags").get("Modality", "")
            found.setdefault(str(modality), []).append(str(iid))
        return found


@pytest.fixture
def ports() -> dict[str, int]:
    dicom, http, node = _free_ports(3)
    return {"orthanc_dicom": dicom, "orthanc_http": http, "node": node}


@pytest.fixture
def orthanc(tmp_path: Path, ports: dict[str, int]) -> Iterator[Orthanc]:
    o = Orthanc(tmp_path / "orthanc", ports["orthanc_dicom"], ports["orthanc_http"], ports["node"])
    yield o
    o.stop()
    o.http.close()


def _node_env(root: Path, ports: dict[str, int]) -> dict[str, str]:
    return node_env(
        root,
        FAME_NODE_PROCESSING__WORKERS="1",
        FAME_NODE_DICOM_NET__ENABLED="true",
        FAME_NODE_DICOM_NET__PORT=str(ports["node"]),
        FAME_NODE_DICOM_NET__AE_TITLE=NODE_AE,
        FAME_NODE_DICOM_NET__ALLOWED_CALLERS=f'["{ORTHANC_AE}"]',
        FAME_NODE_DICOM_SEND__ENABLED="true",
        FAME_NODE_DICOM_SEND__AE_TITLE=ORTHANC_AE,
        FAME_NODE_DICOM_SEND__HOST="127.0.0.1",
        FAME_NODE_DICOM_SEND__PORT=str(ports["orthanc_dicom"]),
        FAME_NODE_DICOM_SEND__CALLING_AE_TITLE=NODE_AE,
        FAME_NODE_DICOM_SEND__ACSE_TIMEOUT_S="5",
        FAME_NODE_DICOM_SEND__RETRY_INITIAL_S="1",
        FAME_NODE_DICOM_SEND__RETRY_MAX_S="2",
        FAME_NODE_DICOM_SEND__POLL_INTERVAL_S="0.5",
    )


def _outbound(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM outbound ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _image_crop(db: Path, job_id: int) -> tuple[int, int, int, int] | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        (crop,) = conn.execute("SELECT crop FROM images WHERE job_id = ?", (job_id,)).fetchone()
    finally:
        conn.close()
    if crop is None:
        return None
    x0, y0, x1, y1 = json.loads(crop)
    return (x0, y0, x1, y1)


def test_orthanc_pushes_an_image_and_gets_the_seg_and_sr_back(
    tmp_path: Path, orthanc: Orthanc, ports: dict[str, int]
) -> None:
    orthanc.start()
    root = tmp_path / "node"
    log = tmp_path / "node.log"
    proc = start_node(_node_env(root, ports), log)
    try:
        wait_for(lambda: _listening(ports["node"]) or proc.poll() is not None, 120, "the node")
        assert proc.poll() is None, log.read_text()
        source = SAMPLES[SOURCE]
        uploaded = orthanc.http.post("/instances", content=source.read_bytes())
        uploaded.raise_for_status()
        source_id = uploaded.json()["ID"]
        pushed = orthanc.http.post(
            "/modalities/fame/store", json={"Resources": [source_id], "Synchronous": True}
        )
        assert pushed.status_code == 200, pushed.text
        db = root / "fame-node.sqlite3"
        wait_for(lambda: any(j["status"] == "done" for j in jobs(db)), 120, "the job done")
        wait_for(
            lambda: {r["status"] for r in _outbound(db)} == {"sent"} and len(_outbound(db)) == 2,
            60,
            "the SEG and SR sent",
        )
    finally:
        code = stop_node(proc)
    assert code == 0, log.read_text()
    (job,) = jobs(db)
    src = pydicom.dcmread(SAMPLES[SOURCE], stop_before_pixels=True)
    by_modality = orthanc.instances_by_modality()
    assert sorted(by_modality) == ["SEG", "SR", "US"], by_modality
    study_of = {
        m: orthanc.get(f"/instances/{ids[0]}/simplified-tags")["StudyInstanceUID"]
        for m, ids in by_modality.items()
    }
    assert set(study_of.values()) == {str(src.StudyInstanceUID)}  # filed under the study
    assert len(orthanc.get("/studies")) == 1
    seg_bytes = orthanc.http.get(f"/instances/{by_modality['SEG'][0]}/file").content
    seg_path = tmp_path / "from-orthanc-seg.dcm"
    seg_path.write_bytes(seg_bytes)
    seg = hd.seg.segread(seg_path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    pixels = seg.get_pixels_by_source_instance([str(src.SOPInstanceUID)], segment_numbers=[1])
    mask_png = root / "results" / f"job-{job['id']:06d}" / "frame_000_mask.png"
    node_mask = np.asarray(Image.open(mask_png))
    expected = pad_to_stored(node_mask, _image_crop(db, job["id"]), int(src.Rows), int(src.Columns))
    assert np.array_equal(pixels[0, :, :, 0] > 0, expected)
    sr_bytes = orthanc.http.get(f"/instances/{by_modality['SR'][0]}/file").content
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PatientID == src.PatientID
    text = log.read_text()
    assert f"DICOM sender {NODE_AE} started" in text and "sent SEG of job" in text


@pytest.mark.slow  # two node starts: about 30 s here
def test_the_pacs_down_then_back_across_a_node_restart(
    tmp_path: Path, orthanc: Orthanc, ports: dict[str, int]
) -> None:
    root = tmp_path / "node"
    env = _node_env(root, ports)
    log = tmp_path / "node.log"
    db = root / "fame-node.sqlite3"
    proc = start_node(env, log)  # Orthanc not started: its port is closed
    try:
        wait_for(lambda: _listening(ports["node"]) or proc.poll() is not None, 120, "the node")
        assert proc.poll() is None, log.read_text()
        shutil.copy(SAMPLES[SOURCE], root / "inbox" / "drop.dcm")
        wait_for(
            lambda: (
                len(_outbound(db)) == 2
                and all(r["last_error"] and r["not_before"] for r in _outbound(db))
            ),
            120,
            "the sends to wait for the PACS",
        )
        rows = _outbound(db)
        assert {r["status"] for r in rows} == {"pending"} and {r["attempts"] for r in rows} == {0}
        listed = run_cli(env, "outbox", "list")
        assert listed.returncode == 0, listed.stderr
        assert "cannot be reached" in listed.stdout and "next try" in listed.stdout
        assert "pending 2, sent 0, failed 0" in listed.stdout
    finally:
        assert stop_node(proc) == 0, log.read_text()
    assert {r["status"] for r in _outbound(db)} == {"pending"}  # kept across the stop
    orthanc.start()
    proc = start_node(env, log)
    try:
        wait_for(
            lambda: {r["status"] for r in _outbound(db)} == {"sent"}, 60, "the sends after restart"
        )
    finally:
        assert stop_node(proc) == 0, log.read_text()
    rows = _outbound(db)
    assert [r["attempts"] for r in rows] == [1, 1]  # each sent exactly once
    by_modality = orthanc.instances_by_modality()
    assert sorted(by_modality) == ["SEG", "SR"] and all(len(v) == 1 for v in by_modality.values())
    changes = orthanc.get("/changes?limit=100")["Changes"]
    assert len([c for c in changes if c["ChangeType"] == "NewInstance"]) == 2
    uids = {
        orthanc.get(f"/instances/{ids[0]}/simplified-tags")["SOPInstanceUID"]
        for ids in by_modality.values()
    }
    assert uids == {r["sop_instance_uid"] for r in rows}
