"""`fame-node process` answers every input, shows names safely, and leaks no identifiers.

The real CLI in a subprocess on real files in a fresh node folder: a FIFO, a socket, a
device, dangling and looping symlinks, a symlinked folder, names with a newline and
terminal escapes, a name that is not UTF-8, and file names that carry a patient's name
and record number, as real PACS exports do.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance.logs import setup_logging
from appliance.privacy import Pseudonymizer, shown, shown_name
from tests.e2e.nodeutil import REPO_ROOT, fame_node, jobs, node_env, run_cli


def _png(path: Path | bytes, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    frame = (rng.random((240, 320)) * 200).astype(np.uint8)
    frame[80:160, 100:220] //= 3  # something lesion-like, so it is an image with content
    Image.fromarray(frame).save(os.fsdecode(path), format="PNG")


def _json_lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "in" / "scanner.sock"
    path.parent.mkdir(exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    try:
        yield path
    finally:
        sock.close()


def test_every_entry_below_a_folder_is_answered_and_none_is_opened_or_followed(
    tmp_path: Path, unix_socket: Path
) -> None:
    inbox = unix_socket.parent
    _png(inbox / "good.png")
    (inbox / "sub").mkdir()
    _png(inbox / "sub" / "nested.png", seed=1)
    os.mkfifo(inbox / "pipe.png")  # opening it would block the command for ever
    (inbox / "dangling.png").symlink_to(tmp_path / "gone.png")
    (inbox / "loop_a").symlink_to(inbox / "loop_b")
    (inbox / "loop_b").symlink_to(inbox / "loop_a")
    (inbox / "self").symlink_to(inbox / "self")
    (inbox / "up").symlink_to(inbox)  # a folder loop if walking followed links
    (inbox / "to_good.png").symlink_to(inbox / "good.png")
    expected = {
        "good.png",
        "sub/nested.png",
        "scanner.sock",
        "pipe.png",
        "dangling.png",
        "loop_a",
        "loop_b",
        "self",
        "up",
        "to_good.png",
    }
    if os.geteuid() == 0:  # only root may make a device node
        os.mknod(inbox / "null.dcm", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        expected.add("null.dcm")
    proc = run_cli(node_env(tmp_path / "node"), "process", "--json", str(inbox), timeout=240)
    out = _json_lines(proc)
    assert proc.returncode == 3, proc.stderr[-2000:]
    by_name = {str(Path(str(o["path"])).relative_to(inbox)): o for o in out}
    assert len(out) == len(by_name), "an entry was answered twice"
    assert set(by_name) == expected  # every entry, once; nothing below the "up" link
    for name in ("good.png", "sub/nested.png"):
        assert by_name[name]["status"] == "done", by_name[name]
    for name in expected - {"good.png", "sub/nested.png"}:
        o = by_name[name]
        assert o["status"] == "rejected", (name, o)
        assert o["job_id"] is not None and o["reason"], (name, o)
    recorded = {Path(j["path"]).name for j in jobs(tmp_path / "node" / "fame-node.sqlite3")}
    assert {Path(n).name for n in expected} <= recorded  # and each is in the worklist


def test_given_special_files_and_an_empty_folder_are_answered(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "empty").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    args = [str(tmp_path / n) for n in ("pipe", "empty", "loop", "missing.png")]
    proc = run_cli(node_env(tmp_path / "node"), "process", "--json", *args, timeout=240)
    out = _json_lines(proc)
    assert [o["path"] for o in out] == args
    assert [o["status"] for o in out] == ["rejected"] * 4
    assert out[1]["job_id"] is None and "holds no files" in str(out[1]["reason"])
    assert all(o["reason"] for o in out)


def test_a_name_that_is_not_utf8_is_processed_and_shown_escaped(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"
    _png(raw)
    env = node_env(tmp_path / "node")
    proc = run_cli(env, "process", "--json", str(folder), timeout=240)
    (o,) = _json_lines(proc)
    assert o["path"] == f"{folder}/caf\\xe9.png"
    assert o["status"] == "done", o
    # Given by name on the command line (bytes in argv), and in the human output.
    line = subprocess.run(
        [*map(os.fsencode, fame_node("process")), raw],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=240,
    )
    assert b"Traceback" not in line.stderr, line.stderr[-3000:]
    assert line.stdout.startswith(b"done ") and b"/caf\\xe9.png: " in line.stdout
    listed = run_cli(env, "results")
    assert "caf\\xe9.png" in listed.stdout and "\udce9" not in listed.stdout


def test_newlines_and_escapes_in_names_are_never_printed_raw(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    evil = "evil\n\x1b[2J\x1b]0;pwned\x07\u202egnp.png"
    _png(folder / evil)
    (folder / "text\r.png").write_text("not an image\n")
    env = node_env(tmp_path / "node", FAME_NODE_LOG_LEVEL="DEBUG")
    proc = run_cli(env, "process", str(folder), timeout=240)
    listed = run_cli(env, "results")
    for text in (proc.stdout, proc.stderr, listed.stdout):
        assert not {"\x1b", "\x07", "\r", "\u202e"} & set(text), text[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout  # one line per input, whatever the names hold
    shown_evil = "evil\\n\\x1b[2J\\x1b]0;pwned\\x07\\u202egnp.png"
    assert any(line.startswith("done ") and shown_evil in line for line in lines), lines
    assert any(line.startswith("rejected ") and "text\\r.png" in line for line in lines)
    assert shown_evil in listed.stdout
    for line in proc.stderr.splitlines():  # every log line is one line of its own
        assert line[:2] == "20" or line.startswith(("Traceback", " ")), line


def test_no_file_name_in_logs_or_result_files(tmp_path: Path) -> None:
    """Real exports name files after patients: logs and result files must not repeat
    those names (the CLI's own output, for the person who typed the command, may)."""
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "DOE^JANE_MRN123456.png")
    (folder / "DOE^JOHN_MRN654321.png").write_text("not an image: a text export\n")
    os.mkfifo(folder / "ROE^RICHARD_MRN777777.dcm")
    root = tmp_path / "node"
    env = node_env(root, FAME_NODE_LOG_LEVEL="DEBUG")
    proc = run_cli(env, "process", "--json", str(folder), timeout=240)
    out = _json_lines(proc)
    assert sorted(str(o["status"]) for o in out) == ["done", "rejected", "rejected"]
    secrets = ("MRN123456", "MRN654321", "MRN777777", "DOE^", "ROE^")
    for secret in secrets:
        assert secret not in proc.stderr, proc.stderr  # the log lines
    database = root / "fame-node.sqlite3"
    keeps_paths = {database, Path(f"{database}-wal"), Path(f"{database}-shm")}
    written = [p for p in root.rglob("*") if p.is_file() and p not in keeps_paths]
    assert any(p.name == "result.json" for p in written)
    for p in written:
        data = p.read_bytes()
        for secret in secrets:
            assert secret not in p.name, p
            assert secret.encode() not in data, f"{secret} in {p.relative_to(root)}"


def test_files_the_node_creates_are_not_readable_by_others(tmp_path: Path) -> None:
    """Started by hand with the usual umask 022, the node still creates nothing that
    "other" may read: database, WAL, results, quarantine, work, and their folders."""
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "a.png")
    (folder / "b.png").write_text("not an image\n")
    root = tmp_path / "node"
    proc = subprocess.run(
        fame_node("process", str(folder)),
        env=node_env(root),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    made = [root, *root.rglob("*")]
    names = {p.name for p in made}
    assert {"fame-node.sqlite3", "result.json", "results", "quarantine", "work"} <= names
    assert any(p.parent.name == "quarantine" and p.is_file() for p in made)
    open_to_others = [
        f"{p.relative_to(tmp_path)} {stat.filemode(p.lstat().st_mode)}"
        for p in made
        if p.lstat().st_mode & 0o007
    ]
    assert open_to_others == []


def test_shown_names() -> None:
    assert shown_name("plain/name-1.dcm") == "plain/name-1.dcm"
    assert shown_name("caf\u00e9 \u4e2d.png") == "caf\u00e9 \u4e2d.png"  # people's scripts stay
    assert shown_name(b"caf\xe9.png") == "caf\\xe9.png"
    assert shown_name(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert shown_name(Path("a\nb\tc\x1b[1m\x7f\x9b")) == "a\\nb\\tc\\x1b[1m\\x7f\\x9b"
    assert shown_name("rtl\u202etxt.exe\u200b") == "rtl\\u202etxt.exe\\u200b"
    assert shown_name(b"a\\x1b\x1b") == "a\\x1b\\x1b"  # only the real ESC is escaped
    assert shown("line\nnext", keep="\n") == "line\nnext"
    assert shown("tab\there\\") == "tab\\there\\"


def test_pseudonyms_of_names_that_are_not_utf8(tmp_path: Path) -> None:
    pseudonym = Pseudonymizer.from_dir(tmp_path)
    latin1 = pseudonym(os.fsdecode(b"caf\xe9.png"), "file")
    assert latin1.startswith("file:") and latin1 == pseudonym(os.fsdecode(b"caf\xe9.png"), "file")
    assert latin1 != pseudonym("caf\u00e9.png", "file")  # other bytes on disk, other name


def test_log_lines_never_hold_raw_control_characters(tmp_path: Path) -> None:
    logger = logging.getLogger("fame_node")
    setup_logging("INFO", tmp_path, console=False)
    try:
        log = logging.getLogger("fame_node.test")
        log.warning("cannot list %s", "in/DOE\nFAKE 2026 INFO forged line\x1b[2J")
        try:
            raise OSError(f"bad name {chr(0x1B)}]0;title{chr(7)}")
        except OSError:
            log.exception("failed")
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
    text = (tmp_path / "fame-node.log").read_text(encoding="utf-8")
    assert not {"\x1b", "\x07"} & set(text)
    lines = text.splitlines()
    assert lines[0].endswith("cannot list in/DOE\\nFAKE 2026 INFO forged line\\x1b[2J")
    assert lines[1].endswith("failed") and lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "OSError: bad name \\x1b]0;title\\x07"


def test_a_passing_fault_at_intake_is_answered_not_a_traceback(tmp_path: Path) -> None:
    """The node's spool cannot be written (a file stands where its folder should be):
    the input is answered "failed, not taken now", and nothing is recorded as rejected."""
    root = tmp_path / "node"
    (root / "work").mkdir(parents=True)
    (root / "work" / "spool").write_bytes(b"")
    _png(tmp_path / "a.png")
    proc = run_cli(node_env(root), "process", "--json", str(tmp_path / "a.png"), timeout=240)
    (o,) = _json_lines(proc)
    assert proc.returncode == 3
    assert o["status"] == "failed" and o["job_id"] is None, o
    assert str(o["reason"]).startswith("not taken now: cannot write the node's copy"), o
