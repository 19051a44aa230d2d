"""The runs of the federation experiments (`trainer.federated.experiments`): the settings and
configurations of the set, the model, and local-only, centralised and federated training over
the shipped code (`train_local`, `wire.clip`, `SignedDeltaFedAvg.aggregate_fit`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy

from appliance.federation.privacy import PrivacyAccountant
from trainer.data import ArraySet
from trainer.federated import FederatedError
from trainer.federated.client_dp import clip_update
from trainer.federated.experiment_metrics import (
    Outputs,
    noise_for_epsilon,
    site_figures,
    val_score,
)
from trainer.federated.experiment_secagg import secagg_mean
from trainer.federated.experiment_sites import Site
from trainer.federated.local_train import DpSgd, LocalSettings, plan_round, train_local
from trainer.federated.settings import RunSettings
from trainer.federated.strategy import SignedDeltaFedAvg
from trainer.federated.wire import Arrays, clip, load_arrays, state_arrays, subtract
from trainer.models import FameNodeNet, LesionClassifier, MAUNet

FORMAT = 2

log = logging.getLogger("fame_node.federation.experiments")


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything that decides a configuration's figures (recorded in every JSON)."""

    size: int = 64
    base_width: int = 8
    classifier_widths: tuple[int, ...] = (16, 32, 64, 128)
    max_train: int = 112
    rounds: int = 8
    local_epochs: int = 1
    batch_size: int = 8  # the deployment's default (RunSettings)
    learning_rate: float = 0.02
    seed: int = 0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    dp_epsilons: tuple[float, ...] = (8.0, 1.0)
    client_dp_epsilon: float = 8.0  # 0: no client-level DP configuration
    client_dp_clipping_norm: float = 1.0  # the node's default max_grad_norm caps it anyway
    clip_range: float = RunSettings.model_fields["clip_range"].default
    max_weight: float = RunSettings.model_fields["max_weight"].default
    threads: int = 1

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class Config:
    """One configuration of the experiment set."""

    name: str
    kind: str  # "local", "centralised" or "federated"
    site: str = ""  # local: which site
    dp_epsilon: float = 0.0  # example-level DP target (0: off)
    secagg: bool = False
    client_dp_epsilon: float = 0.0


def configurations(settings: ExperimentSettings, site_names: Sequence[str]) -> list[Config]:
    """The experiment set, in the order it runs (the side-by-side timings first)."""
    first, *others = settings.dp_epsilons or (0.0,)
    configs = [Config("fedavg", "federated")]
    if settings.dp_epsilons:
        configs.append(Config(_dp_name(first), "federated", dp_epsilon=first))
    configs.append(Config("fedavg-secagg", "federated", secagg=True))
    configs += [Config(f"local-{s}", "local", site=s) for s in site_names]
    configs.append(Config("centralised", "centralised"))
    configs += [Config(_dp_name(e), "federated", dp_epsilon=e) for e in others]
    if settings.client_dp_epsilon > 0:
        eps = settings.client_dp_epsilon
        configs.append(Config(f"fedavg-client-dp-eps{eps:g}", "federated", client_dp_epsilon=eps))
    return configs


def _dp_name(epsilon: float) -> str:
    return f"fedavg-dp-eps{epsilon:g}"


# ------------------------------------------------------------------------------ models


def build_net(settings: ExperimentSettings) -> FameNodeNet:
    return FameNodeNet(
        MAUNet(base_width=settings.base_width),
        LesionClassifier(widths=settings.classifier_widths),
    )


def initial_state(settings: ExperimentSettings) -> Arrays:
    """The seeded initialisation every configuration starts from."""
    torch.manual_seed(settings.seed)
    return state_arrays(build_net(settings))


def outputs(net: FameNodeNet, data: ArraySet, batch_size: int = 64) -> Outputs:
    net.eval()
    lesion, classes = [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(data.images[start : start + batch_size]))
            seg, cls = net(x[:, None])
            lesion.append(seg[:, 0].numpy())
            classes.append(cls.numpy())
    return Outputs(np.concatenate(lesion), np.concatenate(classes), data.masks, data.labels)


class _InProcessSite(ClientProxy):
    """A site as the strategy sees it in the in-process loop: a name, never called."""

    def __init__(self, name: str, node_id: int) -> None:
        super().__init__(name)
        self.node_id = node_id

    def _refuse(self, *_: object, **__: object) -> Any:
        raise FederatedError(
            f"site {self.cid}: the in-process experiment trains it directly; the strategy "
            "only aggregates its replies"
        )

    get_properties = get_parameters = fit = evaluate = reconnect = _refuse


# ------------------------------------------------------------------------------ runs


@dataclass
class _Tracker:
    """The best round by val score and its state."""

    best_score: float = float("-inf")
    best_round: int = 0
    best_state: Arrays = field(default_factory=list)
    val_scores: list[float] = field(default_factory=list)

    def offer(self, label: int, score: float, state: Arrays) -> None:
        self.val_scores.append(round(score, 4))
        if score > self.best_score:
            self.best_score, self.best_round = score, label
            self.best_state = [a.copy() for a in state]


def _local_settings(settings: ExperimentSettings, seed: int) -> LocalSettings:
    return LocalSettings(
        epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=seed % (2**31),
        threads=settings.threads,
    )


def _mean_val_score(net: FameNodeNet, sites: Sequence[Site]) -> float:
    return float(np.mean([val_score(outputs(net, s.val)) for s in sites]))


def _figures(net: FameNodeNet, sites: Sequence[Site]) -> dict[str, dict[str, object]]:
    return {
        s.name: site_figures(outputs(net, s.val), outputs(net, s.test), groups=s.test_scanners)
        for s in sites
    }


def run_alone(
    config: Config,
    settings: ExperimentSettings,
    train_site: Site,
    eval_sites: Sequence[Site],
    initial: Arrays,
) -> dict[str, Any]:
    """Local-only or centralised: `rounds` calls of `train_local` on one training set."""
    net = build_net(settings)
    load_arrays(net, initial)
    tracker = _Tracker()
    rounds = []
    for r in range(1, settings.rounds + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        result = train_local(
            net, train_site.train, _local_settings(settings, settings.seed + 7919 * r), None
        )
        rounds.append(_timing(r, wall, cpu, train_s=[round(result.seconds, 3)]))
        tracker.offer(r, _mean_val_score(net, eval_sites), state_arrays(net))
        log.info(
            "%s epoch %d: %s, val score %.4f", config.name, r, rounds[-1], tracker.val_scores[-1]
        )
    load_arrays(net, tracker.best_state)
    return {
        "rounds": rounds,
        "val_scores": tracker.val_scores,
        "selected_round": tracker.best_round,
        "sites": _figures(net, eval_sites),
        "n_train": len(train_site.train),
    }


def run_federated(
    config: Config, settings: ExperimentSettings, sites: Sequence[Site], initial: Arrays
) -> dict[str, Any]:
    """The in-process federation over the shipped local training and aggregation."""
    plans = {s.name: plan_round(len(s.train), _local_settings(settings, 0)) for s in sites}
    dp: dict[str, DpSgd] = {}
    noise: dict[str, dict[str, float]] = {}
    if config.dp_epsilon > 0:
        for s in sites:
            choice = noise_for_epsilon(
                config.dp_epsilon,
                settings.delta,
                plans[s.name].sample_rate,
                plans[s.name].steps,
                settings.rounds,
            )
            dp[s.name] = DpSgd(choice.noise_multiplier, settings.max_grad_norm)
            noise[s.name] = asdict(choice)
    client_z = 0.0
    if config.client_dp_epsilon > 0:
        choice = noise_for_epsilon(
            config.client_dp_epsilon, settings.delta, 1.0, 1, settings.rounds
        )
        client_z = choice.noise_multiplier
        noise["coordinator"] = asdict(choice)
    run = RunSettings(
        num_server_rounds=settings.rounds,
        min_nodes=len(sites),
        local_epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        secagg=config.secagg,
        clip_range=settings.clip_range,
        max_weight=settings.max_weight,
        client_dp_noise_multiplier=client_z,
        client_dp_clipping_norm=settings.client_dp_clipping_norm,
    )
    strategy = SignedDeltaFedAvg(run, initial, Ed25519PrivateKey.generate(), run_id=1)
    proxies = [_InProcessSite(s.name, i + 1) for i, s in enumerate(sites)]
    accountants = {s.name: PrivacyAccountant() for s in sites}
    net = build_net(settings)
    tracker = _Tracker()
    rounds = []
    np.random.seed(settings.seed)  # Flower's stochastic quantisation and noise use numpy's
    for r in range(1, settings.rounds + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        start = [a.copy() for a in strategy.current]
        replies, train_s, norms, clipped_values = [], [], [], 0
        for i, s in enumerate(sites):
            # A fresh module per site and round, as a ClientApp builds one per message:
            # Opacus leaves its hooks on a module it made private.
            net = build_net(settings)
            load_arrays(net, start)
            local = _local_settings(settings, settings.seed + 7919 * r + 104729 * i)
            result = train_local(net, s.train, local, dp.get(s.name))
            if s.name in dp:
                planned = (
                    dp[s.name].noise_multiplier,
                    plans[s.name].sample_rate,
                    plans[s.name].steps,
                )
                if result.dp != planned:
                    raise FederatedError(f"Opacus spent {result.dp}, planned {planned}")
                accountants[s.name].add(*planned)
            update = subtract(state_arrays(net), start)
            if client_z > 0:
                update, norm = clip_update(update, settings.client_dp_clipping_norm)
                norms.append(round(norm, 4))
            update, clipped = clip(update, settings.clip_range)
            clipped_values += clipped
            replies.append((result.n_examples, update))
            train_s.append(round(result.seconds, 3))
        agg_wall = time.perf_counter()
        extra: dict[str, Any] = {}
        weights = [1 if client_z > 0 else n for n, _ in replies]
        if config.secagg:
            sa = secagg_mean(
                [u for _, u in replies], weights, settings.clip_range, settings.max_weight
            )
            params = [ndarrays_to_parameters(sa.mean)] * len(replies)
            extra["secagg_relative_error"] = round(sa.relative_error, 6)
        else:
            params = [ndarrays_to_parameters(u) for _, u in replies]
        results: list[tuple[ClientProxy, FitRes]] = [
            (proxy, _fit_res(p, w)) for proxy, p, w in zip(proxies, params, weights, strict=True)
        ]
        strategy.aggregate_fit(r, results, [])
        extra["aggregate_s"] = round(time.perf_counter() - agg_wall, 4)
        extra["clipped_values"] = clipped_values
        if norms:
            extra["update_l2_norms_before_clipping"] = norms
        rounds.append(_timing(r, wall, cpu, train_s=train_s, **extra))
        load_arrays(net, strategy.current)
        tracker.offer(r, _mean_val_score(net, sites), strategy.current)
        log.info(
            "%s round %d: %s, val score %.4f", config.name, r, rounds[-1], tracker.val_scores[-1]
        )
    load_arrays(net, tracker.best_state)
    out: dict[str, Any] = {
        "rounds": rounds,
        "val_scores": tracker.val_scores,
        "selected_round": tracker.best_round,
        "sites": _figures(net, sites),
        "n_train": {s.name: len(s.train) for s in sites},
    }
    if noise:
        out["privacy"] = {
            "noise": noise,
            "epsilon_spent": {
                n: round(a.epsilon(settings.delta), 4) for n, a in accountants.items() if n in dp
            },
            "delta": settings.delta,
        }
        if client_z > 0:
            out["privacy"]["epsilon_spent"]["every site (client-level)"] = round(
                PrivacyAccountant.from_history([(client_z, 1.0, 1)] * settings.rounds).epsilon(
                    settings.delta
                ),
                4,
            )
    return out


def _fit_res(parameters: Parameters, n: int) -> FitRes:
    return FitRes(Status(Code.OK, "ok"), parameters, n, {"n_examples": n})


def _timing(r: int, wall: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {
        "round": r,
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        **extra,
    }
