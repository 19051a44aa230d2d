"""A real `fame-node run` process with its DICOM receiver on: an image pushed by a real
pynetdicom SCU over TCP goes through the inbox to a `done` job."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from appliance.io.sample_data import ultrasound_sample_files
from tests.e2e.nodeutil import jobs, node_env, start_node, stop_node, wait_for

SAMPLES = {p.name: p for p in ultrasound_sample_files()}
pytestmark = pytest.mark.skipif(not SAMPLES, reason="pydicom-data is not installed")


@pytest.fixture
def node_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fame-node-dicom-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_pushed_image_is_analysed(node_root: Path) -> None:
    port = _free_port()
    env = node_env(
        node_root,
        FAME_NODE_DICOM_NET__ENABLED="true",
        FAME_NODE_DICOM_NET__PORT=str(port),
        FAME_NODE_DICOM_NET__ALLOWED_CALLERS='["TESTSCU"]',
        FAME_NODE_PROCESSING__WORKERS="1",
    )
    log = node_root / "node.log"
    proc = start_node(env, log)
    try:
        wait_for(lambda: _listening(port) or proc.poll() is not None, 120, "the receiver")
        assert proc.poll() is None, log.read_text()
        ds = pydicom.dcmread(SAMPLES["US1_J2KI.dcm"])
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="FAMENODE")
        assert assoc.is_established, log.read_text()
        try:
            assert int(assoc.send_c_store(ds).Status) == 0x0000
        finally:
            assoc.release()
        db = node_root / "fame-node.sqlite3"
        wait_for(lambda: any(j["status"] == "done" for j in jobs(db)), 120, "the job done")
        (job,) = jobs(db)
        assert Path(str(job["path"])).name.startswith("dicom-")
        assert list((node_root / "inbox" / ".incoming").iterdir()) == []
    finally:
        code = stop_node(proc)
    text = log.read_text()
    assert code == 0, text
    assert f"DICOM receiver FAMENODE listening on 127.0.0.1:{port}" in text
    assert "DICOM receiver FAMENODE on port" in text and "stopped" in text
