"""Distillation of a trained teacher bundle (the FAME three-fold MAU-Net ensemble) into
one student of the shipped architecture: one MAU-Net and the pre-activation classifier.

The fold ensemble runs three MAU-Nets per image; the student runs one, at the speed of
the single model (issue 10). It is trained as ``trainer.train --folds 1`` trains the
shipped model, with the teacher's soft targets added (`trainer.teacher`):

- stage 1: Dice + BCE against the ground-truth mask plus ``--distil-weight`` x the soft
  loss against the teacher's averaged fold map on the same augmented batch;
- stage 2: the class-weighted cross-entropy plus ``--distil-weight`` x T^2 x
  KL(teacher || student) at ``--distil-temperature`` T, the teacher's classifier given
  the teacher's own lesion map, augmented with the batch.

Selection on val, the mask threshold on val, calibration, the OOD head and the export are
`trainer.train`'s (`export_checkpoint`). Every epoch checkpoints; the fingerprint of a
resumed stage includes the teacher's manifest sha256, weight and temperature, so a resume
with another teacher or other settings starts over instead of continuing.

The teacher is untrusted until verified: it is read through `appliance.bundle.load_bundle`
(every file's sha256, no links or unlisted files, the signature where present; with
``--trusted-key`` a signature by one of those keys is required) and rebuilt from its
verified ``weights.safetensors`` (`trainer.weights.load_bundle_net`). A bundle that fails
verification, has no weights, other classes or another preprocessing than the student's
is refused before any data is read.

    python -m trainer.distill --teacher .cache/bundles/folds-0.3.0 \\
        --manifest ../shared/data/busi/manifest.csv \\
        --manifest ../shared/data/busbra/manifest.csv --augment site-shift \\
        --out .cache/bundles/distilled-0.3.0 --work-dir .cache/train-distil

Every flag of ``python -m trainer.train`` applies, except those that would change the
student's architecture (``--folds``, ``--classifier``) or its stage 2 (``--acgan``,
``--stage``, ``--segmenter``). The bundle's name defaults to ``<teacher>-distilled``, its
version to the teacher's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from appliance.bundle import Bundle, BundleError, load_bundle, sha256_bytes
from trainer.loops import Logger, train_classifier, train_segmenter
from trainer.models import CLASSES, FameNodeNet, FoldEnsemble
from trainer.resume import StageCheckpoint
from trainer.run_config import TrainConfig
from trainer.seed import seed_everything
from trainer.teacher import Teacher
from trainer.train import _save_checkpoint, export_checkpoint, load_train_val
from trainer.train_cli import build_parser as train_parser
from trainer.train_cli import config_from
from trainer.weights import WEIGHTS_FILE

DEFAULT_WORK_DIR = Path(".cache/distill")
SOFT_LOSSES = {
    "stage1": (
        "weight x (per-pixel Bernoulli KL(teacher || student) + squared-form soft Dice "
        "distance) against the teacher's lesion probability on the same augmented batch"
    ),
    "stage2": (
        "weight x T^2 x KL(teacher || student) of the class distributions at temperature T "
        "(Hinton et al. 2015), the teacher's raw classifier logits on the same augmented "
        "batch with its own lesion map"
    ),
}


def load_teacher(path: Path, trusted_keys: Sequence[Path] = ()) -> tuple[Bundle, FameNodeNet]:
    """The verified teacher bundle and its torch model; SystemExit saying what was wrong.

    With `trusted_keys` the bundle must be signed by one of them; without, a signature
    present must still verify (a bad one is always refused)."""
    from appliance.models.signing import load_trusted_keys
    from trainer.weights import load_bundle_net

    try:
        keys = load_trusted_keys(trusted_keys)
        bundle = load_bundle(path, trusted_keys=keys, require_signature=bool(keys))
    except (BundleError, OSError) as exc:
        raise SystemExit(
            f"teacher {path} is refused: {str(exc).rstrip('.')}. Distil only from a bundle "
            "that verifies (fame-node models verify); re-export or copy it again"
        ) from None
    if not bundle.has(WEIGHTS_FILE):
        raise SystemExit(
            f"teacher {bundle.version_label} ({path}) carries no {WEIGHTS_FILE}: a teacher "
            "needs its torch weights; export it with this trainer (python -m trainer.train)"
        )
    if list(bundle.manifest.classes) != list(CLASSES):
        raise SystemExit(
            f"teacher {bundle.version_label} has classes {bundle.manifest.classes}, the "
            f"student {list(CLASSES)}: distil from a FAME Node bundle of these classes"
        )
    try:
        net = load_bundle_net(bundle)
    except BundleError as exc:
        raise SystemExit(f"teacher {bundle.version_label} ({path}): {exc}") from None
    return bundle, net


def check_preprocessing(bundle: Bundle, cfg: TrainConfig) -> None:
    """SystemExit where the teacher was trained on other preprocessed images than the
    student's (its soft targets would be of images it never saw)."""
    theirs = bundle.manifest.preprocess_params().to_dict()
    ours = cfg.preprocess_params().to_dict()
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if differ:
        shown = ", ".join(f"{k} {theirs.get(k)!r} (student {ours.get(k)!r})" for k in differ)
        raise SystemExit(
            f"teacher {bundle.version_label} was trained with other preprocessing: {shown}. "
            "Train the student with the teacher's settings (e.g. --size "
            f"{theirs.get('size')}), or distil from a teacher of this preprocessing"
        )


def segmenter_kind(bundle: Bundle, seg: object) -> str:
    """What the teacher's segmenter is, in words: one MAU-Net, or an ensemble of folds (the
    FAME cross-validation) or of seeds (`trainer.seed_ensemble`)."""
    if not isinstance(seg, FoldEnsemble):
        return "MAU-Net"
    of = "seed" if "seed_ensemble" in bundle.manifest.training else "fold"
    return f"{seg.k}-{of} MAU-Net ensemble"


def distilled_from(bundle: Bundle, net: FameNodeNet, cfg: TrainConfig) -> dict[str, Any]:
    """What the student bundle's manifest records of its teacher and the soft terms."""
    seg = net.segmenter
    return {
        "name": bundle.manifest.name,
        "version": bundle.manifest.version,
        "manifest_sha256": sha256_bytes(bundle.manifest_bytes),
        "segmenter": segmenter_kind(bundle, seg),
        "signature": None if bundle.signature is None else bundle.signature.fingerprint,
        "weight": cfg.distil_weight,
        "temperature": cfg.distil_temperature,
        "soft_losses": SOFT_LOSSES,
    }


def run(cfg: TrainConfig, teacher: Teacher, record: dict[str, Any]) -> Path:
    """Train the student on `cfg`'s data with `teacher`'s soft targets, save the checkpoint,
    export the bundle; returns the bundle path. `record` is the `distilled_from` entry."""
    if cfg.folds != 1 or cfg.classifier != "preact-resnet" or cfg.acgan is not None:
        raise SystemExit(
            "the student is one MAU-Net and the pre-activation classifier without ACGAN "
            f"images; got folds {cfg.folds}, classifier {cfg.classifier!r}, acgan {cfg.acgan}"
        )
    if cfg.teacher_sha256 != record["manifest_sha256"]:
        raise SystemExit("the run's teacher_sha256 is not the teacher's: build cfg with it")
    start = time.monotonic()
    gen = seed_everything(cfg.seed, threads=cfg.threads)
    train, val = load_train_val(cfg)
    print(
        f"data: train {len(train)} {train.class_counts()}, val {len(val)} "
        f"{val.class_counts()}; teacher {record['name']}@{record['version']} "
        f"({record['segmenter']}), weight {cfg.distil_weight}, T {cfg.distil_temperature}",
        flush=True,
    )
    log = Logger(cfg.work_dir / "training_log.json", cfg)
    log.data["distilled_from"] = record
    segmenter, _ = train_segmenter(cfg, train, val, gen, log, teacher=teacher)
    deadline = start + 60.0 * cfg.max_minutes
    classifier, _ = train_classifier(
        cfg, segmenter, train, val, gen, log, deadline=deadline, teacher=teacher
    )
    checkpoint = _save_checkpoint(cfg, log, segmenter, classifier, (len(train), len(val)), start)
    bundle = export_checkpoint(cfg, checkpoint, log.path)
    for stage in ("stage1", "stage2"):  # the run is complete: nothing to resume
        StageCheckpoint(cfg.work_dir, stage).clear()
    return bundle


def build_parser() -> argparse.ArgumentParser:
    """``python -m trainer.train``'s options plus the teacher and the soft terms."""
    parser = train_parser()
    parser.prog = "python -m trainer.distill"
    parser.description = (
        "Distil a verified teacher bundle (the fold ensemble) into one student bundle."
    )
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher bundle")
    parser.add_argument(
        "--distil-weight",
        type=float,
        default=TrainConfig.distil_weight,
        help="weight of the soft terms of both stages (0: the labels alone)",
    )
    parser.add_argument(
        "--distil-temperature",
        type=float,
        default=TrainConfig.distil_temperature,
        help="temperature T of the classifier's KL term (scaled by T^2)",
    )
    parser.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        help="public key (.pub) the teacher must be signed by; repeat for several",
    )
    parser.set_defaults(work_dir=DEFAULT_WORK_DIR, name=None, version=None)
    return parser


def parse(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace, Bundle, Teacher]:
    """The student's settings, the arguments, and the verified teacher (before any data)."""
    a = build_parser().parse_args(argv)
    refused = {
        "--folds": a.folds != 1,
        "--classifier": a.classifier != "preact-resnet",
        "--acgan": a.acgan is not None,
        "--stage": a.stage != "all",
        "--segmenter": a.segmenter is not None,
    }
    if any(refused.values()):
        flags = ", ".join(k for k, v in refused.items() if v)
        raise SystemExit(
            f"{flags}: not for a distillation; the student is one MAU-Net and the "
            "pre-activation classifier, trained in both stages (drop the flag)"
        )
    bundle, net = load_teacher(a.teacher, a.trusted_key)
    a.name = a.name or f"{bundle.manifest.name}-distilled"
    a.version = a.version or bundle.manifest.version
    cfg = replace(
        config_from(a),
        teacher_sha256=sha256_bytes(bundle.manifest_bytes),
        distil_weight=a.distil_weight,
        distil_temperature=a.distil_temperature,
    )
    check_preprocessing(bundle, cfg)
    try:
        teacher = Teacher(net, cfg.distil_weight, cfg.distil_temperature)
    except ValueError as exc:
        raise SystemExit(f"{exc}: pass another --distil-weight / --distil-temperature") from None
    return cfg, a, bundle, teacher


def main(argv: list[str] | None = None) -> int:
    cfg, a, bundle, teacher = parse(argv)
    record = distilled_from(bundle, teacher.net, cfg)
    if a.from_checkpoint is not None:  # export a finished distillation without training
        log_path = a.from_checkpoint.parent / "training_log.json"
        logged = json.loads(log_path.read_text(encoding="utf-8")).get("distilled_from", {})
        if logged.get("manifest_sha256") != record["manifest_sha256"]:
            raise SystemExit(
                f"{a.from_checkpoint} was not distilled from {bundle.version_label}: pass "
                "its own teacher, or export it with python -m trainer.train --from-checkpoint"
            )
        out = export_checkpoint(cfg, a.from_checkpoint, log_path)
    else:
        torch.set_num_threads(cfg.threads)
        out = run(cfg, teacher, record)
    print(f"student bundle written and verified: {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
