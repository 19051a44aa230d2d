"""Render docs/FEDERATION.md from the measured JSON in docs/federation/ (nothing typed by hand).

    python -m trainer.federated.experiments --render-only

Reads every ``*.json`` of kind ``federation_experiment`` (written by
`trainer.federated.experiments`) and, when present, ``latency.json`` (kind
``inference_latency_during_round``: a node's inference latency during a round against an
idle node). The comparisons of the issue's "Figures to reach" are computed here from those
figures (`targets`), each said to be reached or not, with its numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The deployment-engine figures of tests/federation/test_deployment.py (session 4, README
# "Federation"): quoted, labelled as such, never mixed with this experiment's.
DEPLOYMENT_QUOTE = (
    "Deployment engine (`tests/federation/test_deployment.py`, session 4, 3 SuperNodes + "
    "SuperLink with TLS on the same shared 2-core machine, a 32 px model, DP-SGD): 58.6 s per "
    "round plain, 75.5 s with SecAgg+ (x1.29); local DP-SGD against plain SGD on 13 images, "
    "8 steps: 2.60 s against 1.73 s (x1.50, `tests/federation/test_local_train.py`). Those "
    "rounds are almost all Flower overhead (a ClientApp process per message, polling) and "
    "model loading, which the in-process loop here does not have."
)

SITE_NAMES = {
    "busi": "BUSI",
    "logiq7": "BUS-BRA Logiq 7",
    "aplio300-usystems": "BUS-BRA Aplio 300 + U-Systems",
}


def load_records(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The experiment records (in run order) and the latency record, if any."""
    records, latency = [], None
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") == "federation_experiment":
            records.append(data)
        elif data.get("kind") == "inference_latency_during_round":
            latency = data
    records.sort(key=lambda r: r.get("started", ""))
    return records, latency


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _by_name(records: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {r["config"]["name"]: r for r in records}


def mean_round(record: Mapping[str, Any], key: str = "wall_s") -> float:
    rounds = record["rounds"]
    return float(sum(r[key] for r in rounds) / len(rounds))


def site_figure(records: Mapping[str, Mapping[str, Any]], name: str, site: str, key: str) -> Any:
    """One test figure of one site under configuration `name` (local: ``local-<site>``)."""
    record = records.get(f"local-{site}" if name == "local" else name)
    if record is None or site not in record["sites"]:
        return None
    return record["sites"][site][key]


def targets(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """The issue's figures to reach: (what, the numbers, reached; None when unmeasured)."""
    by = _by_name(records)
    fed = by.get("fedavg")
    sites = list(fed["sites"]) if fed else []
    out: list[tuple[str, str, bool | None]] = []

    def check(what: str, pairs: list[tuple[str, Any, Any]], ok: Any) -> None:
        if not pairs or any(a is None or b is None for _, a, b in pairs):
            out.append((what, "not measured", None))
            return
        text = "; ".join(f"{SITE_NAMES.get(s, s)} {_f(a)} vs {_f(b)}" for s, a, b in pairs)
        out.append((what, text, all(ok(a, b) for _, a, b in pairs)))

    for metric in ("dice", "auc"):
        check(
            f"federated >= local-only at every site ({metric}; federated vs local)",
            [
                (s, site_figure(by, "fedavg", s, metric), site_figure(by, "local", s, metric))
                for s in sites
            ],
            lambda a, b: a >= b,
        )
    check(
        "federated within 0.02 Dice of centralised (federated vs centralised)",
        [
            (s, site_figure(by, "fedavg", s, "dice"), site_figure(by, "centralised", s, "dice"))
            for s in sites
        ],
        lambda a, b: a >= b - 0.02,
    )
    aplio = "aplio300-usystems"
    if aplio in sites:
        scanners = fed["sites"][aplio].get("by_scanner", {}) if fed else {}
        pairs = [(aplio, site_figure(by, "fedavg", aplio, "auc"), 0.80)]
        if "aplio300" in scanners:
            pairs.append(("Aplio 300 images alone", scanners["aplio300"]["auc"], 0.80))
        check(
            "Aplio 300 test AUC >= 0.80 (federated vs the 0.80 target)", pairs, lambda a, b: a >= b
        )
    else:
        out.append(("Aplio 300 test AUC >= 0.80", "not measured", None))
    check(
        "DP-SGD at epsilon 8 costs <= 0.03 Dice (federated without DP vs with)",
        [
            (s, site_figure(by, "fedavg", s, "dice"), site_figure(by, "fedavg-dp-eps8", s, "dice"))
            for s in sites
        ],
        lambda a, b: a - b <= 0.03,
    )
    for name, limit, what in (
        ("fedavg-dp-eps8", 1.5, "DP <= 1.5x the round time of plain FedAvg"),
        ("fedavg-secagg", 2.0, "SecAgg+ <= 2x the round time of plain FedAvg"),
    ):
        if fed is None or name not in by:
            out.append((what, "not measured", None))
            continue
        wall = mean_round(by[name]) / mean_round(fed)
        cpu = mean_round(by[name], "cpu_s") / mean_round(fed, "cpu_s")
        # Judged on CPU time: the wall time of two configurations run one after the other
        # on a shared machine differs with the others' load as much as with the method.
        out.append((what, f"in process: x{cpu:.2f} CPU (x{wall:.2f} wall)", cpu <= limit))
    if fed is not None:
        share = overhead_share(fed)
        out.append(
            (
                "non-training overhead <= 10 % of a round",
                f"in process: {100 * share:.1f} % (the deployment engine's rounds are mostly "
                "Flower overhead: see Round time)",
                share <= 0.10,
            )
        )
    return out


def overhead_share(record: Mapping[str, Any]) -> float:
    """Share of a round's wall time not spent in the sites' local training."""
    total = sum(r["wall_s"] for r in record["rounds"])
    train = sum(sum(r["train_s"]) for r in record["rounds"])
    return max(0.0, (total - train) / total) if total > 0 else 0.0


def render(
    records: Sequence[Mapping[str, Any]],
    latency: Mapping[str, Any] | None,
    reference: Mapping[str, Any] | None = None,
) -> str:
    lines = ["# Federation experiments", ""]
    lines += [
        "Generated by `python -m trainer.federated.experiments` (`make federation-experiments`)"
        " from the JSON in `docs/federation/`; nothing here is typed by hand.",
        "",
    ]
    if not records:
        lines += ["No experiment has been run yet: run `make federation-experiments`.", ""]
    else:
        lines += _render_setup(records) + _render_figures(records)
        if reference is not None:
            lines += render_reference(reference)
        lines += _render_privacy(records)
        lines += _render_times(records) + _render_targets(records)
    if latency is not None:
        lines += render_latency(latency)
    return "\n".join(lines).rstrip() + "\n"


def _render_setup(records: Sequence[Mapping[str, Any]]) -> list[str]:
    first = records[0]
    s, m = first["settings"], first["machine"]
    used = first["sites_used"]
    loads = [x for r in records for x in (r["load_avg_before"][0], r["load_avg_after"][0])]
    total = sum(r["wall_s"] for r in records)
    lines = [
        "## What was run",
        "",
        f"**At a reduced scale**, to fit {m['cpu_count']} CPU cores shared with other work: "
        f"{s['size']} x {s['size']} px inputs, a narrow FameNodeNet (MAU-Net base width "
        f"{s['base_width']}, classifier widths {tuple(s['classifier_widths'])}), at most "
        f"{s['max_train']} training images per site (a seeded subset), {s['rounds']} rounds "
        f"of {s['local_epochs']} local epoch(s), batch {s['batch_size']}, SGD lr "
        f"{s['learning_rate']} momentum 0.9, from one seeded random initialisation (seed "
        f"{s['seed']}), no pre-training. The shipped model (128 px, every training image; its "
        "figures are quoted below the table) is far stronger: these figures compare the "
        "configurations with each other, they do not measure the node's model.",
        "",
        "The federation runs **in process** over the shipped code: each site trains with the "
        "ClientApp's `train_local` (`trainer/federated/local_train.py`, Opacus for DP-SGD), "
        "replies with its delta clipped to the run's `clip-range`, and the coordinator's "
        "`SignedDeltaFedAvg.aggregate_fit` (`trainer/federated/strategy.py`, FedAvg weighted by "
        "examples) makes the next model. SecAgg+ is Flower's masking and quantisation "
        "arithmetic with the deployment's settings (`trainer/federated/experiment_secagg.py`), "
        "without its message rounds. The deployment engine itself (SuperLink, SuperNodes, TLS, "
        "SecAgg+ protocol) is proven by `tests/federation/test_deployment.py`.",
        "",
        "Every configuration has the same budget: local-only and centralised training get "
        f"{s['rounds']} x {s['local_epochs']} epoch(s) of the same `train_local`. The round "
        "(epoch) kept is the best on val (mean of val Dice at its best threshold and val AUC; "
        "over the sites for a shared model); each site's mask threshold is chosen on its val "
        "split; the figures are on each site's test split. Dice: mean over test images with "
        "a lesion at the network grid; AUC: BUSI macro one-vs-rest over 3 classes, BUS-BRA "
        "malignant vs benign; EA: UltraFedFM's equal accuracy (Methods, Performance metrics, "
        "Eq. 35), max over sites of |score - mean score|, on AUC as in the paper and on Dice.",
        "",
        f"Seeds: torch {s['seed']} for the initialisation; each site's training subset "
        f"numpy {s['seed']} + 101 x site index; local training {s['seed']} + 7919 x round "
        "(+ 104729 x site index in a federation); numpy's global generator (SecAgg+'s "
        f"stochastic rounding, the client-level noise) {s['seed']}. DP-SGD: per-example "
        f"clipping norm {s['max_grad_norm']:g}, Poisson sampling, delta {s['delta']:g}.",
        "",
        "Not run here: FedProx and FLAMES (the same aggregation; FedProx's proximal step is "
        "tested in `tests/federation/test_local_train.py`), SecAgg+'s key-share messages and "
        "Shamir sharing (no node drops out), Flower's process and network overhead.",
        "",
        "| site | train (used / available) | val | test |",
        "|---|---|---|---|",
    ]
    for name, u in used.items():
        lines.append(
            f"| {SITE_NAMES.get(name, name)} | {u['train']} / {u['train_available']} "
            f"| {u['val']} | {u['test']} |"
        )
    lines += [
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} cores, torch "
        f"{m['torch']}, Flower {m['flwr']}, Opacus {m['opacus']}, {m['torch_threads']} torch "
        f"thread(s) at niceness {m['niceness']}; shared with other engineers' work: 1-minute "
        f"load average {min(loads):.1f}-{max(loads):.1f} during the runs. Total "
        f"{total / 60:.1f} min. Command: `{first['command']}`.",
        "",
    ]
    return lines


def _render_figures(records: Sequence[Mapping[str, Any]]) -> list[str]:
    sites = list(records[0]["sites_used"])
    head = " | ".join(f"{SITE_NAMES.get(s, s)} Dice / AUC / acc" for s in sites)
    lines = [
        "## Test figures per site",
        "",
        f"| configuration | {head} | EA (AUC) | EA (Dice) | round kept |",
        "|---|" + "---|" * (len(sites) + 3),
    ]
    for r in records:
        cells = []
        for s in sites:
            f = r["sites"].get(s)
            cells.append(
                "-" if f is None else f"{_f(f['dice'])} / {_f(f['auc'])} / {_f(f['accuracy'])}"
            )
        ea = r.get("ea") or {}
        lines.append(
            f"| {r['config']['name']} | {' | '.join(cells)} | {_f(ea.get('auc'))} "
            f"| {_f(ea.get('dice'))} | {r['selected_round']} of {len(r['rounds'])} |"
        )
    sizes = [u["test"] for u in records[0]["sites_used"].values()]
    lines += [
        "",
        f"One seed, one run per configuration, and small test sets ({min(sizes)} to "
        f"{max(sizes)} images a site): no confidence intervals were computed, so a "
        "difference of a few hundredths between two rows may not be meaningful. Accuracy is "
        "the argmax over the three classes (normal, benign, malignant); a model that always "
        "says benign scores the benign share.",
    ]
    subsets = [
        f"{r['config']['name']}: "
        + "; ".join(
            f"{SITE_NAMES.get(s, s)}, {g} only ({v['n_test']} images): Dice {_f(v['dice'])}, "
            f"AUC {_f(v['auc'])}, acc {_f(v['accuracy'])}"
            for s, f in r["sites"].items()
            for g, v in f.get("by_scanner", {}).items()
        )
        for r in records
        if any(f.get("by_scanner") for f in r["sites"].values())
    ]
    if subsets:
        lines += ["", "Per scanner, within a site of several (same model and threshold):", ""]
        lines += [f"- {line}" for line in subsets]
    return [*lines, ""]


def _render_privacy(records: Sequence[Mapping[str, Any]]) -> list[str]:
    dp = [r for r in records if "privacy" in r]
    if not dp:
        return []
    lines = [
        "## Privacy spent",
        "",
        "Noise multipliers found by Opacus's RDP search for the target epsilon over the whole "
        "run, at each site's own sample rate and steps; epsilon spent: Opacus's history of "
        "each site's rounds composed by `appliance.federation.privacy.PrivacyAccountant` "
        "(client-level: one Gaussian mechanism per round at sample rate 1, noise on the mean).",
        "",
        "| configuration | target epsilon | delta | noise multiplier (sample rate, steps per "
        "round) | epsilon spent |",
        "|---|---|---|---|---|",
    ]
    for r in dp:
        p = r["privacy"]
        c = r["config"]
        target = c["dp_epsilon"] or c["client_dp_epsilon"]
        noise = "; ".join(
            f"{SITE_NAMES.get(k, k)} {v['noise_multiplier']:.3f} ({v['sample_rate']:.4f}, "
            f"{v['steps_per_round']})"
            for k, v in p["noise"].items()
        )
        spent = "; ".join(f"{SITE_NAMES.get(k, k)} {v:.3f}" for k, v in p["epsilon_spent"].items())
        lines.append(f"| {c['name']} | {target:g} | {p['delta']:g} | {noise} | {spent} |")
    return [*lines, ""]


def _render_times(records: Sequence[Mapping[str, Any]]) -> list[str]:
    by = _by_name(records)
    fed = by.get("fedavg")
    lines = [
        "## Round time",
        "",
        "Mean over the rounds of one configuration, the three sites training one after the "
        "other on one thread (in a real federation they train at the same time, each on its "
        "own machine). Wall time depends on the shared machine's load; CPU time (this "
        "process) much less. Ratios against plain FedAvg of the same run.",
        "",
        "| configuration | wall s / round | CPU s / round | x wall | x CPU | load (1 min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["config"]["kind"] != "federated":
            continue
        wall, cpu = mean_round(r), mean_round(r, "cpu_s")
        ratio = (
            (f"x{wall / mean_round(fed):.2f}", f"x{cpu / mean_round(fed, 'cpu_s'):.2f}")
            if fed
            else ("n/a", "n/a")
        )
        loads = [x["load_avg_1min"] for x in r["rounds"]]
        lines.append(
            f"| {r['config']['name']} | {wall:.1f} | {cpu:.1f} | {ratio[0]} | {ratio[1]} "
            f"| {min(loads):.1f}-{max(loads):.1f} |"
        )
    sa = by.get("fedavg-secagg")
    if sa is not None:
        errs = [x["secagg_relative_error"] for x in sa["rounds"]]
        agg = [x["aggregate_s"] for x in sa["rounds"]]
        lines += [
            "",
            f"SecAgg+ quantisation: relative L2 error of the aggregated update against the "
            f"exact weighted mean {min(errs):.2e}-{max(errs):.2e} per round (clip-range "
            f"{sa['settings']['clip_range']:g}, max-weight {sa['settings']['max_weight']:g}, "
            f"quantisation range 2^22); masking, quantisation and unmasking took "
            f"{min(agg):.2f}-{max(agg):.2f} s a round.",
        ]
    return [*lines, "", DEPLOYMENT_QUOTE, ""]


def _render_targets(records: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "## Figures to reach (issue 9), at this reduced scale",
        "",
        "Round-time ratios are judged on CPU time (the wall time of configurations run one "
        "after the other on the shared machine moves with the others' load).",
        "",
        "| figure | measured | reached |",
        "|---|---|---|",
    ]
    for what, text, ok in targets(records):
        mark = "not measured" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {what} | {text} | {mark} |")
    return [*lines, ""]


def render_latency(latency: Mapping[str, Any]) -> list[str]:
    """The section of ``latency.json``: inference latency during a round against idle."""
    idle, during = latency.get("idle", {}), latency.get("during_round", {})
    keys = [k for k in {**idle, **during} if _scalar(idle.get(k)) or _scalar(during.get(k))]
    lines = ["## Inference latency during a round", ""]
    if latency.get("what"):
        lines += [f"What: {_cell(latency['what'])}.", ""]
    if isinstance(latency.get("settings"), Mapping):
        lines += [f"Settings: {_cell(latency['settings'])}.", ""]
    lines += [
        "| | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        "| idle | " + " | ".join(_cell(idle.get(k)) for k in keys) + " |",
        "| during a round | " + " | ".join(_cell(during.get(k)) for k in keys) + " |",
        "",
        f"p95 during a round / idle: {_cell(latency.get('ratio_p95'))}. Machine: "
        f"{_cell(latency.get('machine'))}. Command: `{_cell(latency.get('command'))}`.",
        "",
    ]
    return lines


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return "n/a" if value is None else str(value)


REFERENCE_TARGETS = {
    "busi": "BUSI",
    "busbra-logiq7": "Logiq 7",
    "busbra-aplio300": "Aplio 300",
    "busbra-usystems": "U-Systems",
}


def render_reference(reference: Mapping[str, Any]) -> list[str]:
    """The shipped model's test figures (`trainer.site_report` JSON): the full-scale
    centralised baseline, measured otherwise (128 px, every training image, masks compared
    at each image's own size), so set beside the table, never compared in it."""
    parts = [
        f"{REFERENCE_TARGETS.get(k, k)} ({t['n']}) Dice {_f(t['segmentation']['dice'])}, "
        f"AUC {_f(t['classification']['auc'])}"
        for k, t in reference.get("targets", {}).items()
    ]
    return [
        f"For scale, the shipped model `{reference.get('model')}` (centralised at full scale: "
        "128 px, every training image of the three sites, measured by `trainer.site_report` "
        f"on {str(reference.get('measured', ''))[:10]}, docs/RESULTS.md): "
        + "; ".join(parts)
        + ".",
        "",
    ]


def render_dir(folder: Path, reference: Path | None = None) -> str:
    records, latency = load_records(folder)
    ref = (
        json.loads(reference.read_text(encoding="utf-8"))
        if reference is not None and reference.is_file()
        else None
    )
    return render(records, latency, ref)
