"""ModelRegistry over a real SQLite history and real bundle folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.errors import BundleError
from appliance.models.registry import ModelRegistry, ModelRegistryError
from appliance.models.signing import SignatureError, fingerprint, load_private_key
from tests.appliance.models.bundles import (
    copy_bundle,
    flip_byte,
    placeholder_bundle,
    sign_bundle,
    write_test_bundle,
)
from tests.appliance.models.conftest import node_config

Keys = dict[str, tuple[Path, Path]]


@pytest.fixture
def registry(tmp_path: Path, keys: Keys, signed: dict[str, Path]) -> ModelRegistry:
    config = node_config(tmp_path / "node", signed["1.0.0"], [keys["federation"][1]])
    return ModelRegistry(config)


def _actions(registry: ModelRegistry) -> list[tuple[str, str]]:
    return [(e.action, e.model) for e in registry.history()]


def test_the_initial_bundle_is_installed_on_first_use_and_recorded_once(
    registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    active = registry.active()
    copy = registry.root / "tiny@1.0.0"
    assert active.label == "tiny@1.0.0" and active.event is not None
    assert active.path == copy.resolve()  # the node's own verified copy, not models/default
    assert (copy / "model.onnx").read_bytes() == (signed["1.0.0"] / "model.onnx").read_bytes()
    registry.ensure_initial()
    registry.active()
    assert _actions(registry) == [("activated", "tiny@1.0.0"), ("installed", "tiny@1.0.0")]
    assert {e.actor for e in registry.history()} == {"install"}
    assert registry.history()[0].bundle_path == copy.resolve()


def test_the_shipped_bundle_changed_after_first_use_is_not_what_runs(
    registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    running = registry.load(registry.active().path)
    flip_byte(signed["1.0.0"] / "model.onnx")  # the shipped folder damaged (or tampered)
    again = registry.load(registry.active().path)
    assert again.model_bytes == running.model_bytes
    assert registry.active().path == (registry.root / "tiny@1.0.0").resolve()


def test_an_initial_bundle_that_is_refused_is_not_installed_nor_recorded(
    tmp_path: Path, keys: Keys
) -> None:
    unsigned = placeholder_bundle(tmp_path / "shipped", version="1.0.0")
    registry = ModelRegistry(node_config(tmp_path / "node", unsigned, [keys["federation"][1]]))
    active = registry.active()
    assert (active.path, active.event) == (unsigned.resolve(), None)
    assert registry.history() == []
    assert not (registry.root / "tiny@1.0.0").exists()
    with pytest.raises(SignatureError, match="not signed"):
        registry.load(active.path)  # what the service does: it says why it cannot start


def test_the_listing_says_signed_only_for_a_trusted_signature(
    tmp_path: Path, registry: ModelRegistry, keys: Keys, signed: dict[str, Path]
) -> None:
    registry.install(signed["1.1.0"], "alice")
    stranger = placeholder_bundle(tmp_path / "s", version="2.0.0")
    sign_bundle(stranger, keys["stranger"][0])
    forged = copy_bundle(signed["1.2.0"], tmp_path / "forged")
    unsigned = placeholder_bundle(tmp_path / "u", version="4.0.0")
    # placed straight into the models folder (by hand, or a copy tool): the registry never
    # installs them, but the listing must not call them signed
    for src, label in ((stranger, "tiny@2.0.0"), (forged, "tiny@1.2.0"), (unsigned, "tiny@4.0.0")):
        shutil.copytree(src, registry.root / label)
    manifest = registry.root / "tiny@1.2.0" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"dice": 0.5', '"dice": 0.99'))
    listed = {m.label: m for m in registry.installed()}
    stranger_fp = fingerprint(load_private_key(keys["stranger"][0]).public_key())
    federation_fp = fingerprint(load_private_key(keys["federation"][0]).public_key())
    assert listed["tiny@1.1.0"].signed
    assert listed["tiny@1.1.0"].signature == f"signed (trusted key {federation_fp})"
    assert not listed["tiny@2.0.0"].signed
    assert listed["tiny@2.0.0"].signature == f"signed by an untrusted key {stranger_fp}"
    assert not listed["tiny@1.2.0"].signed
    assert listed["tiny@1.2.0"].signature.startswith("bad signature")
    assert (listed["tiny@4.0.0"].signed, listed["tiny@4.0.0"].signature) == (False, "unsigned")


def test_install_copies_a_verified_bundle_and_is_idempotent(
    registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    bundle = registry.install(signed["1.1.0"], "alice", "new weights")
    assert bundle.path == registry.root / "tiny@1.1.0"
    assert sorted(p.name for p in bundle.path.iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "model.onnx",
    ]
    assert bundle.signature is not None and bundle.signature.trusted
    again = registry.install(signed["1.1.0"], "alice")
    assert again.path == bundle.path
    assert _actions(registry)[0] == ("installed", "tiny@1.1.0")
    assert registry.active_label() == "tiny@1.0.0"  # installing does not activate
    assert [m.label for m in registry.installed()] == ["tiny@1.0.0", "tiny@1.1.0"]
    assert [m.active for m in registry.installed()] == [True, False]


def test_a_version_installed_with_other_contents_is_refused(
    tmp_path: Path, registry: ModelRegistry, keys: Keys, signed: dict[str, Path]
) -> None:
    registry.install(signed["1.1.0"], "alice")
    # a re-export with other weights under the same version, properly signed
    other = placeholder_bundle(tmp_path / "other" / "b", version="1.1.0")
    flip_byte(other / "model.onnx")
    other = write_test_bundle(
        tmp_path / "other2", other / "model.onnx", name="tiny", version="1.1.0"
    )
    sign_bundle(other, keys["federation"][0])
    with pytest.raises(BundleError, match=r"already installed .* different contents"):
        registry.install(other, "alice")
    assert registry.history()[0].action == "refused"
    installed = registry.root / "tiny@1.1.0" / "manifest.json"
    assert installed.read_bytes() == (signed["1.1.0"] / "manifest.json").read_bytes()


def test_activate_a_path_installs_then_activates(
    registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    registry.ensure_initial()
    event = registry.activate(signed["1.1.0"], "alice", "better dice")
    assert (event.action, event.model, event.actor, event.reason) == (
        "activated",
        "tiny@1.1.0",
        "alice",
        "better dice",
    )
    assert event.bundle_path == (registry.root / "tiny@1.1.0").resolve()
    assert event.figures == {"dice": 0.5}
    assert registry.active_label() == "tiny@1.1.0"
    assert registry.active().path == event.bundle_path
    assert _actions(registry)[:2] == [("activated", "tiny@1.1.0"), ("installed", "tiny@1.1.0")]
    # activating the active model again records nothing
    assert registry.activate("tiny@1.1.0", "bob").id == event.id
    # by name@version, once installed
    registry.activate("tiny@1.0.0", "bob")
    assert registry.active_label() == "tiny@1.0.0"


def test_a_bad_checksum_is_refused_recorded_and_the_active_model_stays(
    tmp_path: Path, registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    registry.activate(signed["1.1.0"], "alice")
    broken = copy_bundle(signed["1.2.0"], tmp_path / "broken")
    flip_byte(broken / "model.onnx")
    with pytest.raises(BundleError, match=r"checksum mismatch for model\.onnx"):
        registry.activate(broken, "alice")
    refused = registry.history()[0]
    assert (refused.action, refused.model, refused.actor) == ("refused", "tiny@1.2.0", "alice")
    assert refused.reason is not None and "checksum mismatch for model.onnx" in refused.reason
    assert registry.active_label() == "tiny@1.1.0"
    assert not (registry.root / "tiny@1.2.0").exists()


def test_unsigned_and_untrusted_bundles_are_refused(
    tmp_path: Path, registry: ModelRegistry, keys: Keys
) -> None:
    unsigned = placeholder_bundle(tmp_path / "u", version="3.0.0")
    with pytest.raises(SignatureError, match="not signed"):
        registry.activate(unsigned, "alice")
    foreign = placeholder_bundle(tmp_path / "f", version="3.0.1")
    sign_bundle(foreign, keys["stranger"][0])
    with pytest.raises(SignatureError, match="does not trust") as info:
        registry.install(foreign, "alice")
    stranger_fp = fingerprint(load_private_key(keys["stranger"][0]).public_key())
    assert stranger_fp in str(info.value)
    assert [e.action for e in registry.history()[:2]] == ["refused", "refused"]
    assert registry.active_label() == "tiny@1.0.0"


def test_a_manifest_changed_after_signing_is_refused(
    tmp_path: Path, registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    forged = copy_bundle(signed["1.2.0"], tmp_path / "forged")
    manifest = forged / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"dice": 0.5', '"dice": 0.99'))
    with pytest.raises(SignatureError, match="bad signature"):
        registry.activate(forged, "mallory")
    assert registry.history()[0].action == "refused"


def test_unsigned_bundles_pass_where_signatures_are_not_required(tmp_path: Path) -> None:
    initial = placeholder_bundle(tmp_path / "a", version="1.0.0")
    config = node_config(tmp_path / "node", initial, [], require=False)
    registry = ModelRegistry(config)
    registry.activate(placeholder_bundle(tmp_path / "b", version="1.1.0"), "alice")
    assert registry.active_label() == "tiny@1.1.0"


def test_rollback_goes_back_one_activation_at_a_time(
    registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    registry.activate(signed["1.1.0"], "alice")
    registry.activate(signed["1.2.0"], "alice")
    first = registry.rollback("bob", "1.2.0 misses lesions")
    assert (first.action, first.model, first.reason) == (
        "rolled_back",
        "tiny@1.1.0",
        "1.2.0 misses lesions",
    )
    assert registry.active_label() == "tiny@1.1.0"
    registry.rollback("bob", "again")
    assert registry.active_label() == "tiny@1.0.0"
    assert registry.active().path == (registry.root / "tiny@1.0.0").resolve()
    with pytest.raises(ModelRegistryError, match="nothing to roll back to"):
        registry.rollback("bob", "once more")
    history = registry.history()
    assert [e.id for e in history] == sorted((e.id for e in history), reverse=True)
    assert [e.action for e in history][:3] == ["rolled_back", "rolled_back", "activated"]


def test_rollback_to_a_damaged_model_is_refused(
    registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    registry.activate(signed["1.1.0"], "alice")
    registry.activate(signed["1.2.0"], "alice")
    flip_byte(registry.root / "tiny@1.1.0" / "model.onnx")
    with pytest.raises(BundleError, match=r"cannot roll back to tiny@1\.1\.0"):
        registry.rollback("bob", "test")
    assert registry.history()[0].action == "refused"
    assert registry.active_label() == "tiny@1.2.0"


def test_unknown_names_say_what_is_installed(registry: ModelRegistry) -> None:
    with pytest.raises(ModelRegistryError, match=r"no model 'tiny@9.9.9' is installed.*tiny@1.0.0"):
        registry.activate("tiny@9.9.9", "alice")


def test_the_service_refusing_a_model_rolls_back_to_what_it_runs(
    registry: ModelRegistry, signed: dict[str, Path]
) -> None:
    running = registry.load(signed["1.0.0"])
    registry.activate(signed["1.1.0"], "alice")
    target = registry.active()
    shutil.rmtree(target.path)
    registry.refuse_loading(target, "the service could not load it: gone", running)
    assert [e.action for e in registry.history()[:2]] == ["rolled_back", "refused"]
    assert registry.history()[0].actor == "service"
    assert registry.active_label() == "tiny@1.0.0"
    # activations after the failed one are not overridden by a late refusal
    registry.activate(signed["1.2.0"], "alice")
    registry.refuse_loading(target, "late", running)
    assert registry.active_label() == "tiny@1.2.0"
