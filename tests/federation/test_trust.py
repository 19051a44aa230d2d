"""A node accepts a global model only when its signed digest verifies and its shapes fit;
a reply carries only an update and named numbers; a malformed run config is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import fitins_to_recorddict, fitres_to_recorddict

from appliance.models.signing import TrustedKey, load_private_key
from trainer.federated import GlobalModelError, RunConfigError
from trainer.federated.guard import ReplyRefused, check_reply
from trainer.federated.settings import parse_run_config
from trainer.federated.signing import sign_global, trusted_keys_in, verify_global
from trainer.federated.wire import arrays_digest, clip, load_arrays, state_arrays
from trainer.weights import architecture, build_net


def _net():  # type: ignore[no-untyped-def]
    return build_net(architecture(4, (4, 8), 0.1))


def test_a_signed_model_verifies_and_loads(federation_keys: tuple[Path, Path]) -> None:
    key_path, trusted_dir = federation_keys
    arrays = state_arrays(_net())
    digest = arrays_digest(arrays)
    sig = sign_global(load_private_key(key_path), 7, 1, digest)
    trusted = trusted_keys_in(trusted_dir)
    assert verify_global(trusted, 7, 1, digest, arrays_digest(arrays), sig) == trusted[0]
    other = _net()
    load_arrays(other, arrays)
    assert all(np.array_equal(a, b) for a, b in zip(state_arrays(other), arrays, strict=True))


def test_a_bad_signature_a_changed_model_or_a_replayed_round_is_refused(
    federation_keys: tuple[Path, Path],
) -> None:
    key_path, trusted_dir = federation_keys
    trusted = trusted_keys_in(trusted_dir)
    arrays = state_arrays(_net())
    digest = arrays_digest(arrays)
    good = sign_global(load_private_key(key_path), 7, 1, digest)
    stranger = sign_global(Ed25519PrivateKey.generate(), 7, 1, digest)
    with pytest.raises(GlobalModelError, match="does not verify"):
        verify_global(trusted, 7, 1, digest, digest, stranger)
    with pytest.raises(GlobalModelError, match="does not verify"):
        verify_global(trusted, 7, 2, digest, digest, good)  # signed for round 1
    with pytest.raises(GlobalModelError, match="does not verify"):
        verify_global(trusted, 8, 1, digest, digest, good)  # signed for another run
    changed = [a.copy() for a in arrays]
    changed[3][0] += 1e-3
    with pytest.raises(GlobalModelError, match="changed on the way"):
        verify_global(trusted, 7, 1, digest, arrays_digest(changed), good)
    with pytest.raises(GlobalModelError, match="trusts no federation key"):
        verify_global([], 7, 1, digest, digest, good)


def test_wrong_shapes_count_or_values_are_refused() -> None:
    net = _net()
    arrays = state_arrays(build_net(architecture(8, (4, 8), 0.1)))  # another width
    with pytest.raises(GlobalModelError, match="shape"):
        load_arrays(net, arrays)
    with pytest.raises(GlobalModelError, match="received 3 arrays"):
        load_arrays(net, state_arrays(net)[:3])
    bad = state_arrays(net)
    bad[0][...] = np.nan
    with pytest.raises(GlobalModelError, match="NaN"):
        load_arrays(net, bad)


def test_digest_depends_on_every_value_shape_and_order() -> None:
    a = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]
    d = arrays_digest(a)
    assert arrays_digest([a[0].reshape(3, 2), a[1]]) != d
    assert arrays_digest([a[1], a[0]]) != d
    b = [x.copy() for x in a]
    b[1][2] = np.nextafter(np.float32(1), np.float32(2))
    assert arrays_digest(b) != d
    clipped, n = clip([np.array([-9.0, 0.5, 8.5], np.float32)], 8.0)
    assert n == 2 and clipped[0].tolist() == [-8.0, 0.5, 8.0]


@pytest.fixture
def in_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Message is made inside a Flower run: its process knows the run's id.
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _request(arrays: list[np.ndarray]) -> Message:
    content = fitins_to_recorddict(FitIns(ndarrays_to_parameters(arrays), {}), keep_input=True)
    return Message(content=content, dst_node_id=1, message_type="train")


def _reply(request: Message, arrays: list[np.ndarray], metrics: dict) -> Message:  # type: ignore[type-arg]
    res = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(arrays), 5, metrics)
    return Message(fitres_to_recorddict(res, keep_input=False), reply_to=request)


@pytest.mark.usefixtures("in_a_run")
def test_the_guard_lets_an_update_and_named_numbers_through_and_nothing_else() -> None:
    model = [np.zeros((4, 1, 3, 3), np.float32), np.zeros(4, np.float32)]
    request = _request(model)
    check_reply("train", request, _reply(request, model, {"n_examples": 5, "epsilon": 1.2}))
    with pytest.raises(ReplyRefused, match="'file' is not one a node may send"):
        check_reply("train", request, _reply(request, model, {"file": 1}))
    with pytest.raises(ReplyRefused, match="not a number"):
        check_reply("train", request, _reply(request, model, {"n_examples": "DOE^JANE"}))
    image = [np.zeros((32, 32), np.float32), np.zeros(4, np.float32)]
    with pytest.raises(ReplyRefused, match="not of the layout"):
        check_reply("train", request, _reply(request, image, {}))
    extra = _reply(request, model, {})
    extra.content.config_records["names"] = extra.content.config_records["fitres.metrics"]
    with pytest.raises(ReplyRefused, match="'names' is not part"):
        check_reply("train", request, extra)
    status = _reply(request, model, {})
    status.content.config_records["fitres.status"]["message"] = "job 12 of DOE^JANE"
    with pytest.raises(ReplyRefused, match="fixed message"):
        check_reply("train", request, status)
    doubles = _reply(request, [m.astype(np.float64) for m in model], {})
    with pytest.raises(ReplyRefused, match="dtype"):
        check_reply("train", request, doubles)


def test_a_malformed_run_config_says_which_key_and_what_is_expected() -> None:
    assert parse_run_config({"num-server-rounds": 2, "strategy": "fedprox"}).strategy == "fedprox"
    with pytest.raises(RunConfigError, match=r"strategy = 'fedsgd'.*fedavg"):
        parse_run_config({"strategy": "fedsgd"})
    with pytest.raises(RunConfigError, match=r"local-epochs = 0"):
        parse_run_config({"local-epochs": 0})
    with pytest.raises(RunConfigError, match=r"lerning-rate = 0.1: Extra inputs"):
        parse_run_config({"lerning-rate": 0.1})
    with pytest.raises(RunConfigError, match="reconstruction-threshold 4 exceeds num-shares 3"):
        parse_run_config({"num-shares": 3, "reconstruction-threshold": 4})


def test_trusted_keys_folder_must_hold_a_key(tmp_path: Path) -> None:
    with pytest.raises(GlobalModelError, match="not a folder"):
        trusted_keys_in(tmp_path / "missing")
    with pytest.raises(GlobalModelError, match="holds no public key"):
        trusted_keys_in(tmp_path)
    assert TrustedKey  # the type a node's keys come as
