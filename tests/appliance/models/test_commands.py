"""`fame-node models ...` in-process: output, exit codes, and what lands in the history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli import main
from tests.appliance.models.bundles import copy_bundle, flip_byte, placeholder_bundle

Keys = dict[str, tuple[Path, Path]]


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Keys) -> Path:
    root = tmp_path / "node"
    monkeypatch.setenv("FAME_NODE_PATHS__ROOT", str(root))
    monkeypatch.setenv("FAME_NODE_MODELS__TRUSTED_KEYS", json.dumps([str(keys["federation"][1])]))
    monkeypatch.setenv("FAME_NODE_MODELS__REQUIRE_SIGNATURE", "true")
    return root


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["models", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sign_verify_activate_list_rollback(
    tmp_path: Path,
    node: Path,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = placeholder_bundle(tmp_path / "a", version="1.0.0")
    second = placeholder_bundle(tmp_path / "b", version="1.1.0")
    monkeypatch.setenv("FAME_NODE_MODELS__BUNDLE", str(first))
    code, _, err = _run(capsys, "verify", str(second))
    assert code == 1 and "is not signed" in err
    for bundle in (first, second):
        code, out, _ = _run(capsys, "sign", "--key", str(keys["federation"][0]), str(bundle))
        assert code == 0 and "signed tiny@" in out
    code, out, _ = _run(capsys, "verify", str(second))
    assert code == 0 and out.startswith("OK tiny@1.1.0") and "trusted key" in out
    code, out, _ = _run(capsys, "activate", str(second), "--actor", "alice", "--reason", "r")
    assert code == 0 and "tiny@1.1.0 activated (by alice)" in out
    assert "not running" in out  # no service: nothing to wait for
    code, out, _ = _run(capsys, "list", "--json")
    listed = json.loads(out)
    assert listed["active"]["model"] == "tiny@1.1.0"
    assert [m["label"] for m in listed["installed"] if m["active"]] == ["tiny@1.1.0"]
    assert [e["action"] for e in listed["history"]] == [
        "activated",
        "installed",
        "activated",
        "installed",
    ]
    broken = copy_bundle(node / "models" / "tiny@1.1.0", tmp_path / "broken")
    flip_byte(broken / "model.onnx")
    code, _, err = _run(capsys, "install", str(broken), "--actor", "bob")
    assert code == 1
    assert "checksum mismatch for model.onnx" in err
    assert "the active model stays tiny@1.1.0" in err
    code, out, _ = _run(capsys, "rollback", "--actor", "bob", "--reason", "worse", "--json")
    assert code == 0 and json.loads(out)["event"]["model"] == "tiny@1.0.0"
    code, _, err = _run(capsys, "rollback")
    assert code == 1 and "nothing to roll back to" in err
    code, out, _ = _run(capsys, "list")
    assert out.startswith("active     tiny@1.0.0")
    assert "refused     tiny@1.1.0" in out and "bob" in out


def test_keygen_prints_the_fingerprint_and_refuses_to_overwrite(
    tmp_path: Path, node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "keygen", "--out", str(tmp_path / "k" / "fed"))
    assert code == 0 and "fingerprint SHA256:" in out
    assert (tmp_path / "k" / "fed.key").is_file() and (tmp_path / "k" / "fed.pub").is_file()
    code, _, err = _run(capsys, "keygen", "--out", str(tmp_path / "k" / "fed"))
    assert code == 1 and "never overwritten" in err


def test_list_says_signed_only_when_the_signature_verifies_against_a_trusted_key(
    tmp_path: Path,
    node: Path,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAME_NODE_MODELS__REQUIRE_SIGNATURE", "false")
    first = placeholder_bundle(tmp_path / "a", version="1.0.0")
    foreign = placeholder_bundle(tmp_path / "b", version="1.1.0")
    monkeypatch.setenv("FAME_NODE_MODELS__BUNDLE", str(first))
    code, _, _ = _run(capsys, "sign", "--key", str(keys["stranger"][0]), str(foreign))
    assert code == 0
    code, _, _ = _run(capsys, "install", str(foreign))
    assert code == 0  # accepted (signatures not required), but not by a trusted key
    code, out, _ = _run(capsys, "list")
    section = out.split("\ninstalled\n")[1].split("\nhistory")[0].splitlines()
    lines = {line[4:].split()[0]: line for line in section}
    assert lines["tiny@1.0.0"].endswith("unsigned")
    assert "signed by an untrusted key SHA256:" in lines["tiny@1.1.0"]
    code, out, _ = _run(capsys, "list", "--json")
    listed = {m["label"]: m for m in json.loads(out)["installed"]}
    assert [listed[k]["signed"] for k in ("tiny@1.0.0", "tiny@1.1.0")] == [False, False]
    assert listed["tiny@1.1.0"]["signature"].startswith("signed by an untrusted key SHA256:")
