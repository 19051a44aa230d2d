"""The doctor's network checks on real sockets: the receiver's port free, held by another
program (named by pid) or not an address of this machine; a DICOM destination answering
a real C-ECHO, refusing the node's AE title, or unreachable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from appliance.config import NodeConfig, load_config
from appliance.doctor import Finding
from appliance.doctor.network import check_dicom_receiver, check_dicom_send, check_metrics
from appliance.service_status import STATUS_FILE


def _config(tmp_path: Path, **env: str) -> NodeConfig:
    return load_config(env={"FAME_NODE_PATHS__ROOT": str(tmp_path), **env})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _receiver(tmp_path: Path, port: int, **env: str) -> list[Finding]:
    config = _config(
        tmp_path,
        FAME_NODE_DICOM_NET__ENABLED="true",
        FAME_NODE_DICOM_NET__PORT=str(port),
        FAME_NODE_DICOM_NET__ALLOWED_CALLERS='["US_ROOM1"]',
        **env,
    )
    return list(check_dicom_receiver(config))


def test_receiver_off_is_said(tmp_path: Path) -> None:
    (f,) = check_dicom_receiver(_config(tmp_path))
    assert f.level == "ok" and "off" in f.detail


def test_a_free_port_and_its_callers_are_green(tmp_path: Path) -> None:
    port = _free_port()
    findings = _receiver(tmp_path, port)
    assert {f.level for f in findings} == {"ok"}, findings
    assert any(f"127.0.0.1:{port} is free" in f.detail for f in findings)
    assert any("only this machine can push" in f.detail for f in findings)
    assert any("allowed callers: US_ROOM1" in f.detail for f in findings)


def test_a_port_held_by_another_program_blocks_and_names_it(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        findings = _receiver(tmp_path, port)
    (fail,) = [f for f in findings if f.level == "fail"]
    assert f"in use by pid {os.getpid()}" in fail.detail  # read from /proc, not guessed
    assert f"ss -ltnp 'sport = :{port}'" in fail.fix and "dicom_net.port" in fail.fix


def test_wildcard_address_and_any_caller_warn(tmp_path: Path) -> None:
    findings = _receiver(
        tmp_path,
        _free_port(),
        FAME_NODE_DICOM_NET__BIND_ADDRESS="0.0.0.0",
        FAME_NODE_DICOM_NET__ALLOW_ANY_CALLER="true",
    )
    warns = [f for f in findings if f.level == "warn"]
    assert any("every interface" in f.detail and "LAN address" in f.fix for f in warns)
    assert any("allow_any_caller" in f.detail and "allowed_callers" in f.fix for f in warns)
    assert not [f for f in findings if f.level == "fail"]


def test_an_address_not_of_this_machine_blocks(tmp_path: Path) -> None:
    findings = _receiver(tmp_path, _free_port(), FAME_NODE_DICOM_NET__BIND_ADDRESS="192.0.2.7")
    (fail,) = [f for f in findings if f.level == "fail"]
    assert "'192.0.2.7' is not an address of this machine" in fail.detail
    assert "ip -br addr" in fail.fix


@pytest.fixture
def pacs() -> Iterator[int]:
    """A real DICOM Verification SCP that only lets AE FAMENODE call."""
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = ["FAMENODE"]
    port = _free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        yield port
    finally:
        server.shutdown()


def _send(tmp_path: Path, port: int, calling: str = "FAMENODE") -> list[Finding]:
    if "dicom_send" not in NodeConfig.model_fields:
        pytest.skip("this version of the config has no dicom_send section")
    config = _config(
        tmp_path,
        FAME_NODE_DICOM_SEND__ENABLED="true",
        FAME_NODE_DICOM_SEND__AE_TITLE="PACS",
        FAME_NODE_DICOM_SEND__HOST="127.0.0.1",
        FAME_NODE_DICOM_SEND__PORT=str(port),
        FAME_NODE_DICOM_SEND__CALLING_AE_TITLE=calling,
    )
    return list(check_dicom_send(config))


def test_a_pacs_answering_c_echo_is_green(tmp_path: Path, pacs: int) -> None:
    (f,) = _send(tmp_path, pacs)
    assert f.level == "ok", f
    assert f"PACS at 127.0.0.1:{pacs} answers C-ECHO from FAMENODE" in f.detail


def test_a_pacs_refusing_the_node_warns_with_what_to_register(tmp_path: Path, pacs: int) -> None:
    (f,) = _send(tmp_path, pacs, calling="STRANGER")
    assert f.level == "warn", f
    assert "rejected" in f.detail and "register the node's AE title STRANGER" in f.fix


def test_an_unreachable_pacs_warns_but_does_not_block(tmp_path: Path) -> None:
    (f,) = _send(tmp_path, _free_port())  # nobody listens there
    assert f.level == "warn", f
    assert "cannot be reached" in f.detail and "send queue" in f.detail


def test_metrics_port_conflict_wildcard_and_any_port(tmp_path: Path) -> None:
    def metrics(**env: str) -> list[Finding]:
        return list(check_metrics(_config(tmp_path, FAME_NODE_METRICS__ENABLED="true", **env)))

    assert [f.level for f in metrics(FAME_NODE_METRICS__PORT="0")] == ["ok"]
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        (fail,) = metrics(FAME_NODE_METRICS__PORT=str(other.getsockname()[1]))
    assert fail.level == "fail" and "metrics.port" in fail.fix
    found = metrics(FAME_NODE_METRICS__BIND_ADDRESS="0.0.0.0", FAME_NODE_METRICS__PORT="0")
    assert any(f.level == "warn" and "every interface" in f.detail for f in found)


def test_a_port_held_by_a_child_of_the_running_service_is_its_own(tmp_path: Path) -> None:
    """The service's status file names this process; a process it started (as the service
    starts its SuperNode) listens on the port: that is the node's own, not a conflict."""
    config = _config(tmp_path)
    work = config.folder("work")
    work.mkdir(parents=True)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    (work / STATUS_FILE).write_text(
        json.dumps({"pid": os.getpid(), "running": True, "heartbeat_at": now})
    )
    child = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time\n"
         "s = socket.create_server(('127.0.0.1', 0)); print(s.getsockname()[1], flush=True)\n"
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        findings = _receiver(tmp_path, port)
    finally:
        child.kill()
        child.wait()
    assert any(f"held by this node's service (pid {os.getpid()})" in f.detail for f in findings)
    assert not [f for f in findings if f.level == "fail"], findings


def test_wildcard_addresses_are_recognised_in_every_spelling() -> None:
    from appliance.doctor.ports import is_wildcard

    assert all(is_wildcard(a) for a in ("", "*", "0.0.0.0", "::", " 0.0.0.0 ", "0:0::0"))
    assert not any(is_wildcard(a) for a in ("127.0.0.1", "::1", "10.1.2.3", "pacs.example.org"))
