"""`fame-node audit`: the table, JSON lines, filters, and --verify on an intact and a
tampered store."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.store.audit_events import FederationAudit
from appliance.store.jobs import JobQueue
from tests.appliance.app.nodedata import add_done_job, node_config


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    node = node_config(root)
    add_done_job(node, "DOE_JANE.png", diagnosis="benign")
    with JobQueue(node.database_path) as queue:
        queue.record_rejected(node.folder("inbox") / "x.png", "unreadable", "vanished")
    with FederationAudit(node.database_path) as fed:
        fed.record_round(
            federation="site-net",
            round_id=1,
            decision="joined",
            epsilon_spent=0.5,
            delta=1e-5,
            n_examples=10,
        )
    path = tmp_path / "config.toml"
    path.write_text(f'[paths]\nroot = "{root}"\n', encoding="utf-8")
    return path


def test_the_table_lists_entries_oldest_first(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config_file), "audit"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["id", "at", "(UTC)", "actor"]
    assert [line.split()[4] for line in out[1:]] == ["result", "job_rejected", "federation_round"]
    assert "DOE" not in "".join(out)


def test_json_lines_with_filters(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", str(config_file), "audit", "--json", "--action", "federation_round"]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.splitlines()
    entry = json.loads(line)
    assert entry["detail"]["epsilon_spent"] == 0.5 and len(entry["sha256"]) == 64
    assert main(["--config", str(config_file), "audit", "--json", "--limit", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["--config", str(config_file), "audit", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out.strip() == "no audit entries match"


def test_a_bad_since_says_what_is_expected(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--config", str(config_file), "audit", "--since", "yesterday"])
    assert "not an ISO 8601 time" in capsys.readouterr().err


def test_verify_passes_then_names_the_tampered_row(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(config_file), "audit", "--verify"]) == 0
    assert "audit log intact: 3 row(s)" in capsys.readouterr().out
    # A copy of the node whose audit table was edited with its triggers dropped.
    copy_root = tmp_path / "copy"
    shutil.copytree(tmp_path / "node", copy_root)
    conn = sqlite3.connect(copy_root / "fame-node.sqlite3", isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'someone else' WHERE id = 2")
    conn.close()
    copy_config = tmp_path / "copy.toml"
    copy_config.write_text(f'[paths]\nroot = "{copy_root}"\n', encoding="utf-8")
    assert main(["--config", str(copy_config), "audit", "--verify"]) == 4
    assert "audit log BROKEN at row 2" in capsys.readouterr().out
    assert main(["--config", str(copy_config), "audit", "--verify", "--json"]) == 4
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["broken_id"]) == (False, 2)
