"""The ClientApp: one node's part in a round, on the node's own installed code.

In a run with client-level DP (``client-dp-noise-multiplier`` > 0) every node's delta is
clipped to the run's L2 norm and weighs 1; a node in ``federation.privacy.mode =
"client"`` trains without DP-SGD and records (z, 1, 1) per round in its ledger.

``train`` (each round): parse the run config; verify the global model (digest and the
coordinator's signature, `trainer.federated.signing`; then its shapes against the node's
running model, `trainer.federated.wire.load_arrays`); score it on the node's held-out
cases; plan the round's DP-SGD and ask the node's privacy ledger whether it fits the
budget (`PrivacyLedger.check_round`) *before* training; train
(`trainer.federated.local_train`); record the round (`PrivacyLedger.record_round`);
reply with the weight delta, clipped to the SecAgg+ range, and named numbers only.

``evaluate`` (the last round): verify the final global model the same way, score it on
the held-out cases against the running model, keep it with its signature
(`Node.keep_global`), then hand it to the node's deployment (`appliance.federation.deploy`:
re-verified from the file, validated, exported and activated, or refused with the reason).

A node that does not train this round replies with zero examples, a zero delta and
``declined = 1`` with a `DeclineCode` (it stays in the round, so SecAgg+ goes on): the
budget would be exceeded, no training cases, the global model refused, another model
group, a model without torch weights, a node in client mode and a run without enough
client-level noise (`trainer.federated.client_dp`). Why, in
words, goes to the node's own log, never to the coordinator.

Messages use Flower's legacy train / evaluate layout (``fitins`` / ``fitres``), the one
SecAgg+ (`secaggplus_mod`) works on. Mods, outermost first: SecAgg+ (only when the
request is a SecAgg+ stage), then `reply_guard`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import (
    evaluateres_to_recorddict,
    fitres_to_recorddict,
    recorddict_to_evaluateins,
    recorddict_to_fitins,
)

from appliance.errors import FameNodeError
from trainer.federated import FederatedError, GlobalModelError
from trainer.federated.client_dp import clip_update, refusal, round_record
from trainer.federated.evaluate import HeldoutScore, evaluate_heldout
from trainer.federated.guard import reply_guard
from trainer.federated.local_train import DpSgd, LocalSettings, plan_round, train_local
from trainer.federated.node import GROUP_KEY, Node, config_path_of
from trainer.federated.settings import RunSettings, parse_run_config
from trainer.federated.signing import verify_global
from trainer.federated.wire import (
    Arrays,
    arrays_digest,
    clip,
    load_arrays,
    mix,
    state_arrays,
    subtract,
)
from trainer.models import FameNodeNet
from trainer.weights import WeightsError

log = logging.getLogger("fame_node.federation.client")

# Keys of the instructions' config the ServerApp sets (`trainer.federated.strategy`).
DIGEST, SIGNATURE, MODEL_ROUND = "model-digest", "model-signature", "model-round"
NODES = "model-nodes"


class DeclineCode(enum.IntEnum):
    BUDGET = 1
    NO_DATA = 2
    MODEL_REFUSED = 3
    OTHER_GROUP = 4
    NOT_TRAINABLE = 5
    MODE_UNSUPPORTED = 6


class Declined(Exception):
    def __init__(self, code: DeclineCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Received:
    net: FameNodeNet  # the node's architecture, holding the global weights
    arrays: Arrays
    digest: str
    label: int


def _secaggplus_when_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    # secaggplus_mod expects its stage record in every train message; plain rounds have none.
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(mods=[_secaggplus_when_asked, reply_guard])


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings = parse_run_config(context.run_config)
    fitins = recorddict_to_fitins(msg.content, keep_input=True)
    arrays_in = parameters_to_ndarrays(fitins.parameters)
    node = Node.open(config_path_of(dict(context.node_config)))
    try:
        metrics, update, n = _train(node, settings, msg, context, arrays_in, fitins.config)
    except Declined as why:
        log.warning("round %s declined: %s", fitins.config.get(MODEL_ROUND), why)
        metrics = {"declined": 1, "decline_code": int(why.code), "n_examples": 0}
        update, n = [np.zeros_like(np.asarray(a, np.float32)) for a in arrays_in], 0
    res = FitRes(
        status=Status(Code.OK, "declined" if metrics.get("declined") else "ok"),
        parameters=ndarrays_to_parameters(update),
        num_examples=n,
        metrics=dict(metrics),
    )
    return Message(fitres_to_recorddict(res, keep_input=False), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    settings = parse_run_config(context.run_config)
    ins = recorddict_to_evaluateins(msg.content, keep_input=True)
    node = Node.open(config_path_of(dict(context.node_config)))
    metrics: dict[str, int | float] = {}
    n = 0
    about: dict[str, str | int | float | bool] = {
        "strategy": settings.strategy,
        "secagg": settings.secagg,
        "model_group": settings.model_group,
    }
    if isinstance(ins.config.get(NODES), int):
        about["nodes"] = int(ins.config[NODES])
    try:
        got = _received(node, msg, parameters_to_ndarrays(ins.parameters), ins.config, about)
        data = node.local_data()
        threshold, area = node.postprocessing
        new = evaluate_heldout(got.net, data.heldout, threshold, area)
        running = evaluate_heldout(node.running_net(), data.heldout, threshold, area)
        metrics.update(_figures(new, "heldout"))
        old = running.score()
        if old is not None:
            metrics["heldout_score"] = old
        n = new.n
        loss = 1.0 - (new.score() or 0.0)
    except Declined as why:
        log.warning("final global model not kept: %s", why)
        metrics = {"declined": 1, "decline_code": int(why.code)}
        loss = 0.0
    if n > 0:
        _deploy(node)
    res = EvaluateRes(Status(Code.OK, "declined" if n == 0 else "ok"), loss, n, dict(metrics))
    return Message(evaluateres_to_recorddict(res), reply_to=msg)


def _train(
    node: Node,
    settings: RunSettings,
    msg: Message,
    context: Context,
    arrays_in: list[np.ndarray],
    config: Mapping[str, object],
) -> tuple[dict[str, int | float], Arrays, int]:
    own_group = str(context.node_config.get(GROUP_KEY, ""))
    if settings.model_group and settings.model_group != own_group:
        raise Declined(
            DeclineCode.OTHER_GROUP,
            f"this run trains the {settings.model_group!r} model; this node is in group "
            f"{own_group!r} ({GROUP_KEY} in its SuperNode's node config)",
        )
    privacy = node.config.federation.privacy
    client_dp = settings.client_dp_noise_multiplier > 0  # this run: client-level DP
    if privacy.mode == "client":
        why = refusal(settings.client_dp_noise_multiplier, privacy.noise_multiplier)
        if why is not None:
            raise Declined(DeclineCode.MODE_UNSUPPORTED, why)
    got = _received(node, msg, arrays_in, config)
    data = node.local_data()
    if data.empty:
        raise Declined(DeclineCode.NO_DATA, data.reason)
    threshold, area = node.postprocessing
    score = evaluate_heldout(got.net, data.heldout, threshold, area)
    local = LocalSettings(
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        proximal_mu=settings.proximal_mu if settings.strategy == "fedprox" else 0.0,
        seed=int(msg.metadata.run_id + 7919 * got.label) % (2**31),
        threads=node.config.federation.max_threads,
    )
    plan = plan_round(len(data.train), local)
    spend = (  # what the round spends: (noise multiplier, sample rate, steps)
        round_record(settings.client_dp_noise_multiplier)
        if privacy.mode == "client"
        else (privacy.noise_multiplier, plan.sample_rate, plan.steps)
    )
    run_id, server_round = str(msg.metadata.run_id), got.label + 1
    with node.ledger() as ledger:
        decision = ledger.check_round(*spend, privacy.delta, privacy.epsilon_budget)
        if not decision.allowed:
            ledger.record_declined(run_id, server_round, privacy.delta)
            raise Declined(DeclineCode.BUDGET, decision.reason)
        start = got.arrays
        if settings.strategy == "flames":
            own = node.own_weights(len(got.arrays))
            if own is not None:
                start = mix(own, got.arrays, settings.keep_own_share)
                load_arrays(got.net, start)
        result = train_local(
            got.net,
            data.train,
            local,
            None
            if privacy.mode == "client"
            else DpSgd(privacy.noise_multiplier, privacy.max_grad_norm),
            global_state=got.arrays,
        )
        if privacy.mode == "example" and result.dp != spend:
            raise FederatedError(f"Opacus spent {result.dp}, the budget was checked for {spend}")
        trained = state_arrays(got.net)
        update = subtract(trained, got.arrays)
        if client_dp:  # never more loosely than the node's own norm in client mode
            norm = settings.client_dp_clipping_norm
            if privacy.mode == "client":
                norm = min(norm, privacy.max_grad_norm)
            update, _ = clip_update(update, norm)
        update, clipped = clip(update, settings.clip_range)
        figures: dict[str, int | float] = {
            "n_examples": result.n_examples,
            "declined": 0,
            "noise_multiplier": spend[0],
            "sample_rate": spend[1],
            "steps": spend[2],
            "delta": privacy.delta,
            "train_seconds": round(result.seconds, 3),
            "clipped_values": clipped,
            **_figures(score, "heldout"),
        }
        epsilon = ledger.record_round(
            run_id,
            server_round,
            privacy.mode,
            *spend,
            privacy.delta,
            result.n_examples,
            figures,
            model=node.bundle.version_label,
            update_sha256=arrays_digest(update),
        )
    figures["epsilon"] = epsilon
    node.keep_own_weights(trained)
    log.info(
        "round %d: trained on %d cases, epsilon %.3f of %g at delta %g",
        server_round,
        result.n_examples,
        epsilon,
        privacy.epsilon_budget,
        privacy.delta,
    )
    # In a client-level DP run every node weighs the same (its count stays in the figures).
    return figures, update, 1 if client_dp else result.n_examples


def _deploy(node: Node) -> None:
    """Validate, export and deploy the global model just kept (`appliance.federation.deploy`,
    which re-verifies it from the file). Whatever goes wrong there, the reply still goes."""
    from appliance.federation.deploy import deploy_pending  # torch export code: only here

    try:
        for decision in deploy_pending(node.config):
            log.info("global model of round %d: %s", decision.model_round, decision.decision)
    except Exception:
        log.exception("the global model could not be validated and deployed")


def _received(
    node: Node,
    msg: Message,
    arrays: list[np.ndarray],
    config: Mapping[str, object],
    about: Mapping[str, str | int | float | bool] | None = None,
) -> Received:
    """The global model, verified: signature over its digest, then its shapes."""
    digest, signature, label = config.get(DIGEST), config.get(SIGNATURE), config.get(MODEL_ROUND)
    try:
        if not isinstance(digest, str) or not isinstance(signature, bytes):
            raise GlobalModelError(
                "the global model comes without a digest and signature: refused (the "
                "coordinator must run this project's ServerApp with a signing key)"
            )
        if not isinstance(label, int) or label < 0:
            raise GlobalModelError(f"model round {label!r} is not a round number")
        got = arrays_digest(arrays)
        signer = verify_global(
            node.trusted_keys(), msg.metadata.run_id, label, digest, got, signature
        )
        net = node.running_net()
        load_arrays(net, arrays)
    except WeightsError as exc:
        raise Declined(DeclineCode.NOT_TRAINABLE, str(exc)) from None
    except (GlobalModelError, FederatedError, FameNodeError) as exc:
        raise Declined(DeclineCode.MODEL_REFUSED, str(exc)) from None
    if msg.metadata.message_type == "evaluate":
        node.keep_global(net, msg.metadata.run_id, label, got, signer, signature, about)
    return Received(net, [np.asarray(a, np.float32) for a in arrays], got, label)


def _figures(score: HeldoutScore, prefix: str) -> dict[str, int | float]:
    out: dict[str, int | float] = {f"{prefix}_n": score.n}
    if score.dice is not None:
        out[f"{prefix}_dice"] = score.dice
    if score.auc is not None:
        out[f"{prefix}_auc"] = score.auc
    return out
