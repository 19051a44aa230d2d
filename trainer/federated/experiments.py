"""The federation experiments of docs/FEDERATION.md: local-only vs federated vs centralised,
with and without DP, with SecAgg+, on the issue's three institutions.

    python -m trainer.federated.experiments          # or: make federation-experiments

Every configuration starts from the same seeded initialisation of one `FameNodeNet` and gets
the same budget: ``rounds`` x ``local_epochs`` passes over its training data.

- ``local-<site>``: the site alone, ``rounds`` calls of `train_local` (plain SGD);
- ``centralised``: the three sites' train splits pooled, the same calls;
- ``fedavg``: an in-process federation over the shipped code, not Flower's simulation
  engine: each round every site loads the global model, trains with the ClientApp's own
  `train_local`, and replies with its delta clipped to the run's ``clip-range``
  (`trainer.federated.wire`), as `trainer.federated.client` does; the coordinator's
  `SignedDeltaFedAvg.aggregate_fit` (`trainer.federated.strategy`, FedAvg weighted by
  examples) makes the next global model. The deployment path (SuperLink, SuperNodes, TLS) is
  what `tests/federation/test_deployment.py` proves; its round times are quoted in the doc;
- ``fedavg-dp-eps8`` / ``fedavg-dp-eps1``: example-level DP-SGD (Opacus, as on a node), each
  site's noise multiplier found for the target epsilon at delta over the whole run
  (`experiment_metrics.noise_for_epsilon`); the epsilon each site spent is Opacus's history
  of its rounds composed by `appliance.federation.privacy.PrivacyAccountant`;
- ``fedavg-secagg``: every round's updates go through SecAgg+'s masking and quantisation
  (`experiment_secagg`, Flower's own functions, the deployment's settings);
- ``fedavg-client-dp-eps8``: client-level DP (every update clipped to L2 norm
  ``client_dp_clipping_norm``, the strategy adding Gaussian noise to the mean), its noise
  multiplier found the same way for one mechanism per round at sample rate 1.

Selection on val: after each round (epoch) each site's val split is scored (mean of val
Dice at its best threshold and val AUC; a federated or centralised model by the mean over
the sites) and the best round is kept; its mask threshold per site is chosen on that site's
val; the figures are on each site's test split (`experiment_metrics.site_figures`).

Each configuration writes ``<out>/<name>.json`` as soon as it finishes (settings, seeds,
machine, load average, wall and CPU times per round, every figure); a rerun skips a
configuration whose JSON holds the same settings, so an interrupted run resumes. At the end
`experiment_doc` renders docs/FEDERATION.md from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters
from flwr.server.client_proxy import ClientProxy

from appliance.federation.privacy import PrivacyAccountant
from appliance.preprocess import PreprocessParams
from trainer.data import ArraySet
from trainer.federated import FederatedError
from trainer.federated.client_dp import clip_update
from trainer.federated.experiment_metrics import (
    Outputs,
    equal_accuracy,
    noise_for_epsilon,
    site_figures,
    val_score,
)
from trainer.federated.experiment_secagg import secagg_mean
from trainer.federated.experiment_sites import Site, SiteSpec, default_sites, load_sites, pooled
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


# ------------------------------------------------------------------------------ driver


def machine() -> dict[str, Any]:
    import flwr
    import opacus

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "",
        "opacus": opacus.__version__,
        "niceness": os.nice(0),
        "torch_threads": torch.get_num_threads(),
    }


def run_configuration(
    config: Config, settings: ExperimentSettings, sites: Sequence[Site], initial: Arrays
) -> dict[str, Any]:
    """One configuration's record (what `<name>.json` holds)."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    wall = time.perf_counter()
    if config.kind == "federated":
        body = run_federated(config, settings, sites, initial)
    elif config.kind == "local":
        site = next(s for s in sites if s.name == config.site)
        body = run_alone(config, settings, site, [site], initial)
    else:
        body = run_alone(config, settings, pooled(sites), sites, initial)
    sites_figures = body["sites"]
    body["ea"] = (
        {
            "auc": equal_accuracy({k: v["auc"] for k, v in sites_figures.items()}),
            "dice": equal_accuracy({k: v["dice"] for k, v in sites_figures.items()}),
        }
        if len(sites_figures) > 1
        else None
    )
    return {
        "kind": "federation_experiment",
        "format": FORMAT,
        "config": asdict(config),
        "settings": settings.to_json(),
        "sites_used": {
            s.name: {
                "train": len(s.train),
                "train_available": s.train_available,
                "val": len(s.val),
                "test": len(s.test),
            }
            for s in sites
        },
        "started": started,
        "wall_s": round(time.perf_counter() - wall, 2),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "command": " ".join(["python -m trainer.federated.experiments", *sys.argv[1:]]),
        **body,
    }


def finished(path: Path, settings: ExperimentSettings, config: Config) -> bool:
    """True when `path` holds this configuration's record at these settings."""
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(
        data.get("format") == FORMAT
        and data.get("settings") == settings.to_json()
        and data.get("config") == asdict(config)
    )


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # a killed run never leaves half a record


def run_all(
    settings: ExperimentSettings,
    sites: Sequence[Site],
    out: Path,
    only: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Run every configuration not yet finished at these settings; returns the JSON paths."""
    initial = initial_state(settings)
    paths = []
    for config in configurations(settings, [s.name for s in sites]):
        if only and config.name not in only:
            continue
        path = out / f"{config.name}.json"
        paths.append(path)
        if finished(path, settings, config):
            log(f"{config.name}: finished before, skipped ({path})")
            continue
        log(f"{config.name}: running")
        record = run_configuration(config, settings, sites, initial)
        write_json(path, record)
        log(f"{config.name}: {record['wall_s']:.0f} s, written {path}")
    return paths


SMOKE = ExperimentSettings(
    size=32,
    base_width=2,
    classifier_widths=(4, 4, 4, 4),
    max_train=24,
    rounds=2,
    dp_epsilons=(8.0,),
    client_dp_epsilon=8.0,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.federated.experiments",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("docs/federation"))
    parser.add_argument("--doc", type=Path, default=Path("docs/FEDERATION.md"))
    parser.add_argument("--data-root", type=Path, default=None, help="folder of busi/ and busbra/")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--only", action="append", default=[], help="run only this configuration")
    parser.add_argument("--smoke", action="store_true", help="tiny settings (about 2 min)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path("docs/results/fame-node-multisite-0.2.0.json"),
        help="the shipped model's site_report JSON, quoted for scale",
    )
    a = parser.parse_args(argv)
    from trainer.federated.experiment_doc import render_dir

    if not a.render_only:
        settings = SMOKE if a.smoke else ExperimentSettings()
        if a.rounds is not None:
            settings = replace(settings, rounds=a.rounds)
        if a.max_train is not None:
            settings = replace(settings, max_train=a.max_train)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        torch.set_num_threads(settings.threads)
        specs: Sequence[SiteSpec] = default_sites(a.data_root) if a.data_root else default_sites()
        sites = load_sites(
            specs,
            PreprocessParams(size=settings.size),
            a.cache_dir,
            settings.max_train,
            settings.seed,
        )
        run_all(settings, sites, a.out, a.only, log=lambda m: print(m, flush=True))
    a.doc.write_text(render_dir(a.out, a.reference), encoding="utf-8")
    print(f"wrote {a.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
