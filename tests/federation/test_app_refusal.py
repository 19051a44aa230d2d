"""A node runs only its own installed ClientApp: a FAB that brings other code is refused.

Marker ``federation`` (about 3 minutes on two loaded cores): a real SuperLink (TLS, node
authentication) and one node under its own ``fame-node run`` (its supervisor pins the
installed app bundle, `appliance.federation.app_pin`). The coordinator first runs an app
bundle whose ClientApp has one line more than the installed one, a line that would write
a marker file when imported: the node refuses it before unpacking it (no marker file),
says why in its log, and records a ``federation_app_refused`` audit row naming the
changed member; then the coordinator's normal bundle runs a round that the node trains in.

The fast tests below check the pin itself on real FABs built by Flower's own builder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.federation.app_pin import (
    APP_DIR,
    REFUSED,
    ForeignAppError,
    check_fab,
    install_shadow_commands,
    installed_content,
    read_pin,
    write_pin,
)
from appliance.federation.supervisor import read_supernode_status
from appliance.store.audit import AuditLog
from tests.federation.harness import (
    BIN,
    Coordinator,
    Procs,
    free_port,
    processes,
    run_app,
    start_fame_node,
    start_superlink,
    write_node,
)

EXTRA_LINE = 'import pathlib; pathlib.Path({marker!r}).write_text("foreign code ran")\n'


def _foreign_app(root: Path, marker: Path) -> Path:
    """The installed app bundle with one line more in its ClientApp module."""
    app = root / "app"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    client = app / "fame_flower" / "client_app.py"
    client.write_text(client.read_text() + EXTRA_LINE.format(marker=str(marker)))
    return app


def _build(app: Path) -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(app)


def test_the_installed_app_matches_its_pin_and_one_extra_line_does_not(tmp_path: Path) -> None:
    pinned = installed_content()
    write_pin(tmp_path / "pin.json", pinned)
    assert read_pin(tmp_path / "pin.json") == pinned
    assert check_fab(_build(APP_DIR), pinned).digest == pinned.digest
    foreign = _foreign_app(tmp_path, tmp_path / "marker")
    with pytest.raises(ForeignAppError, match="not this node's installed ClientApp") as caught:
        check_fab(_build(foreign), pinned)
    assert caught.value.differences["changed"] == [".info/CONTENT", "fame_flower/client_app.py"]
    assert caught.value.differences["added"] == caught.value.differences["missing"] == []
    (foreign / "fame_flower" / "extra.py").write_text("x = 1\n")
    with pytest.raises(ForeignAppError) as caught:
        check_fab(_build(foreign), pinned)
    assert caught.value.differences["added"] == ["fame_flower/extra.py"]
    with pytest.raises(ForeignAppError, match="not a readable zip"):
        check_fab(b"PK\x03\x04 not a zip", pinned)


def test_doctor_names_the_pinned_digest() -> None:
    from appliance.doctor.federation import app_pin_finding

    finding = app_pin_finding()
    assert finding.level == "ok" and installed_content().digest[:16] in finding.detail


def test_a_tampered_pin_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pin.json"
    write_pin(path, installed_content())
    path.write_text(path.read_text().replace('"pyproject.toml": "', '"pyproject.toml": "0'))
    with pytest.raises(Exception, match="does not match its files"):
        read_pin(path)


def test_every_other_task_program_refuses(tmp_path: Path) -> None:
    install_shadow_commands(tmp_path)
    done = subprocess.run([str(tmp_path / "flwr-serverapp")], capture_output=True, text=True)
    assert done.returncode == 1 and "refused to start flwr-serverapp" in done.stderr
    assert (tmp_path / "flwr-clientapp").read_text().startswith("#!")


def _until(what: str, check: object, timeout: float, procs: Procs) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(check) and check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s; {procs.log('node0')[-3000:]}")


@pytest.mark.federation
def test_a_fab_with_other_code_is_refused_and_the_installed_one_runs(
    tmp_path: Path, tiny_bundle: Path, federation_keys: tuple[Path, Path]
) -> None:
    signing_key, trusted = federation_keys
    coordinator = Coordinator.make(tmp_path / "coordinator-side")
    key = coordinator.node_key("hospital0")
    node = write_node(
        tmp_path / "node0",
        tiny_bundle,
        trusted,
        coordinator.address,
        seed=40,
        n_images=8,
        markers=("DOE^JANE", "PID483920"),
        root_certificates=coordinator.ca,
        private_key=key,
        supernode_port=free_port(),
    )
    config = load_config(node.config)
    marker = tmp_path / "foreign-code-ran"
    foreign = _foreign_app(tmp_path / "coordinator-apps", marker)
    run_config = (
        f'initial-bundle="{tiny_bundle}" signing-key="{signing_key}" '
        f'out-dir="{tmp_path / "foreign-out"}" num-server-rounds=1 min-nodes=1 '
        "batch-size=4 round-timeout-s=90.0"
    )
    with processes(tmp_path / "logs") as procs:
        start_superlink(procs, coordinator)
        coordinator.register(key, "hospital0")
        start_fame_node(procs, "node0", node, coordinator.env)
        _until(
            "the node's SuperNode connected",
            lambda: bool((read_supernode_status(config) or {}).get("connected")),
            120,
            procs,
        )
        assert "ClientApp pinned to the installed app bundle" in procs.log("node0")
        argv = [str(BIN / "flwr"), "run", str(foreign), "test", "--stream"]
        foreign_run = subprocess.run(
            [*argv, "--run-config", run_config],
            env=coordinator.env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        _until(
            "the refusal in the node log",
            lambda: "REFUSED app bundle" in procs.log("node0"),
            60,
            procs,
        )
        node_log = procs.log("node0")
        assert not marker.exists(), "the foreign ClientApp's code ran on the node"
        assert "not this node's installed ClientApp" in node_log
        assert "changed .info/CONTENT, fame_flower/client_app.py" in node_log
        # The coordinator saw the node's error reply: the round had no training in it.
        assert "received 0 results and 1 failures" in foreign_run.stdout, foreign_run.stdout
        foreign_round = json.loads((tmp_path / "foreign-out" / "round-1.json").read_text())
        assert foreign_round["figures"]["nodes_trained"] == 0, foreign_round
        with AuditLog(config.database_path) as audit:
            refused = audit.read(action=REFUSED)
        assert len(refused) >= 1, node_log[-3000:]
        assert refused[0].detail["changed"] == [".info/CONTENT", "fame_flower/client_app.py"]
        assert refused[0].detail["pinned_digest"] == installed_content().digest
        assert refused[0].subject is not None and refused[0].subject.startswith("run:")
        installed = list((config.folder("work") / "federation" / "flwr" / "apps").glob("*"))
        assert len(installed) == 0, installed  # nothing of it was even unpacked

        out = tmp_path / "normal-out"
        done = run_app(
            coordinator,
            {
                "initial-bundle": str(tiny_bundle),
                "signing-key": str(signing_key),
                "out-dir": str(out),
                "num-server-rounds": 1,
                "min-nodes": 1,
                "batch-size": 4,
            },
            timeout=400,
        )
        assert (out / "round-1.json").is_file(), (done.stdout[-3000:], procs.log("node0")[-3000:])
        figures = json.loads((out / "round-1.json").read_text())["figures"]
        assert figures["nodes_trained"] == 1, figures
    assert not marker.exists()
