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
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from appliance.preprocess import PreprocessParams
from trainer.federated.experiment_metrics import (
    equal_accuracy,
)
from trainer.federated.experiment_runs import (
    FORMAT,
    Config,
    ExperimentSettings,
    configurations,
    initial_state,
    run_alone,
    run_federated,
)
from trainer.federated.experiment_sites import Site, SiteSpec, default_sites, load_sites, pooled
from trainer.federated.wire import Arrays

__all__ = ["ExperimentSettings", "main", "run_all"]


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


def shipped_report(bundle: Path = Path("models/default")) -> Path:
    """``docs/results/<name>-<version>.json``: the site report of the shipped bundle."""
    from appliance.bundle import load_bundle

    manifest = load_bundle(bundle, verify=False).manifest
    return Path("docs/results") / f"{manifest.name}-{manifest.version}.json"


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
        default=None,
        help="the site_report JSON quoted for scale (default: the shipped bundle's, "
        "docs/results/<name>-<version>.json of models/default)",
    )
    a = parser.parse_args(argv)
    if a.reference is None:
        a.reference = shipped_report()
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
