"""``fame-node train``: train the node's models from manifests, a thin layer over `trainer`.

``train seg --manifest CSV... --out DIR [--profile edge|paper]``
    Stage 1: MAU-Net (or the fold ensemble with ``--folds``), saved as ``DIR/segmenter.pt``
    with ``DIR/training_log.json``; a per-epoch checkpoint in DIR resumes a killed run.
``train cls --manifest CSV... --segmenter DIR --out DIR2 [--profile edge|paper]``
    Stage 2: the classifier on the frozen segmenter of a ``train seg`` folder, saved as
    ``DIR2/checkpoint.pt``; ``python -m trainer.train --from-checkpoint`` exports it.
``train bundle --manifest CSV... --out BUNDLE [--work-dir DIR]``
    Both stages and the export: a complete, verified bundle (``python -m trainer.train``).
``train distil --teacher BUNDLE --manifest CSV... --out BUNDLE [--work-dir DIR]``
    One MAU-Net and the default classifier trained on the labels and the soft targets of a
    verified teacher bundle (the fold ensemble), exported as a bundle
    (``python -m trainer.distill``; ``--distil-weight``, ``--distil-temperature``,
    ``--trusted-key``).

Every form takes ``--schedule default|paper``, ``--augment``, ``--size``, ``--seed``,
``--threads``, ``--epochs-seg`` / ``--epochs-cls``, ``--max-minutes``, ``--cache-dir`` and
``--no-resume``, passed on unchanged; all but ``distil`` also ``--acgan DIR`` (synthetic
images of the minority classes, `trainer.acgan`), ``--folds`` (the MAU-Net fold ensemble)
and ``--profile edge|paper``, which sizes the FAME dual-stage ensemble classifier
(`trainer.profiles`) and selects it (``--classifier dual-stage``) unless ``--classifier``
says otherwise.

torch is not a dependency of the node: without the ``train`` extra the command says what
to install and exits 2. Exit codes: 0 trained; 2 missing extra or bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from appliance.config import NodeConfig

INSTALL_HINT = (
    "fame-node train needs the training extra (torch, onnx): "
    "pip install 'fame-node[train]' (torch is pinned to the tested CPU build)"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train MAU-Net, the classifier, or a whole bundle")
    sub = p.add_subparsers(dest="train_action", required=True, metavar="STAGE")
    seg = sub.add_parser("seg", help="stage 1: MAU-Net, saved with its log")
    cls = sub.add_parser("cls", help="stage 2: the classifier on a saved segmenter")
    bundle = sub.add_parser("bundle", help="both stages and the export: a complete bundle")
    distil = sub.add_parser("distil", help="one student distilled from a teacher bundle")
    for parser in (seg, cls, bundle):
        _common(parser)
        parser.set_defaults(handler=_train)
    _manifests(distil)
    _run_flags(distil)
    distil.set_defaults(handler=_distil)
    seg.add_argument("--out", type=Path, required=True, help="folder for segmenter.pt and log")
    cls.add_argument("--out", type=Path, required=True, help="folder for checkpoint.pt and log")
    cls.add_argument(
        "--segmenter", type=Path, required=True, help="the folder of a 'train seg' run"
    )
    bundle.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    bundle.add_argument(
        "--work-dir", type=Path, default=None, help="checkpoints and log (default: .cache/train)"
    )
    distil.add_argument("--teacher", type=Path, required=True, help="the teacher bundle")
    distil.add_argument("--out", type=Path, required=True, help="the student bundle to write")
    distil.add_argument(
        "--work-dir", type=Path, default=None, help="checkpoints and log (default: .cache/distil)"
    )
    distil.add_argument("--distil-weight", type=float, default=None, help="soft terms' weight")
    distil.add_argument("--distil-temperature", type=float, default=None, help="KL temperature")
    distil.add_argument(
        "--trusted-key", type=Path, action="append", default=[], help="teacher's signing key"
    )


def _manifests(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest",
        type=Path,
        action="append",
        required=True,
        help="manifest.csv (image,label,masks,split); repeat it for several sites",
    )


def _common(p: argparse.ArgumentParser) -> None:
    _manifests(p)
    p.add_argument(
        "--profile",
        choices=("edge", "paper"),
        default=None,
        help="size of the dual-stage classifier (trainer.profiles)",
    )
    p.add_argument(
        "--classifier",
        choices=("preact-resnet", "dual-stage"),
        default=None,
        help="the classifier (default: dual-stage with --profile, else preact-resnet)",
    )
    p.add_argument("--folds", type=int, default=None, help="MAU-Net fold ensemble (3: FAME)")
    p.add_argument("--acgan", type=Path, default=None, metavar="DIR", help="trained ACGAN")
    _run_flags(p)


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The options of every form: schedule, augmentation, size, budget, resuming."""
    p.add_argument("--schedule", choices=("default", "paper"), default="default")
    p.add_argument("--augment", choices=("default", "site-shift"), default="default")
    p.add_argument("--size", type=int, default=None, help="network input side (x16)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--device", default=None, help="cpu (default), cuda (cuda:N) or auto (a GPU if any)"
    )
    p.add_argument("--epochs-seg", type=int, default=None)
    p.add_argument("--epochs-cls", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--cache-dir", type=Path, default=None, help="preprocessed arrays")
    p.add_argument("--no-resume", action="store_true", help="start over in --out")


def trainer_argv(args: argparse.Namespace) -> list[str]:
    """The ``python -m trainer.train`` arguments of a ``fame-node train`` command."""
    argv: list[str] = []
    for manifest in args.manifest:
        argv += ["--manifest", str(manifest)]
    action = args.train_action
    if action == "bundle":
        argv += ["--out", str(args.out)]
        if args.work_dir is not None:
            argv += ["--work-dir", str(args.work_dir)]
    else:  # the stage's folder holds its checkpoints, log and result
        argv += ["--stage", action, "--work-dir", str(args.out), "--out", str(args.out / "bundle")]
        if action == "cls":
            argv += ["--segmenter", str(args.segmenter)]
    argv += _run_argv(args, ("folds", "acgan"))
    classifier = args.classifier or ("dual-stage" if args.profile is not None else None)
    if classifier is not None:
        argv += ["--classifier", classifier]
    if args.profile is not None:
        argv += ["--profile", args.profile]
    return argv


def distil_argv(args: argparse.Namespace) -> list[str]:
    """The ``python -m trainer.distill`` arguments of a ``fame-node train distil``."""
    argv = ["--teacher", str(args.teacher), "--out", str(args.out)]
    for manifest in args.manifest:
        argv += ["--manifest", str(manifest)]
    for key in args.trusted_key:
        argv += ["--trusted-key", str(key)]
    return argv + _run_argv(args, ("work_dir", "distil_weight", "distil_temperature"))


def _run_argv(args: argparse.Namespace, more: tuple[str, ...]) -> list[str]:
    """The `_run_flags` (and the flags `more`) given, as trainer arguments."""
    argv = ["--schedule", args.schedule, "--augment", args.augment]
    flags = (
        "size",
        "seed",
        "threads",
        "device",
        "epochs_seg",
        "epochs_cls",
        "max_minutes",
        "cache_dir",
    )
    for flag in (*flags, *more):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    if args.no_resume:
        argv.append("--no-resume")
    return argv


def _fail(message: str) -> int:
    print(f"fame-node train: {message}", file=sys.stderr)
    return 2


def _train(config: NodeConfig, args: argparse.Namespace) -> int:
    return _run_trainer("train", trainer_argv(args))


def _distil(config: NodeConfig, args: argparse.Namespace) -> int:
    return _run_trainer("distill", distil_argv(args))


def _run_trainer(module: str, argv: list[str]) -> int:
    """``trainer.<module>.main(argv)``, its refusals as exit codes and messages."""
    try:
        import torch  # noqa: F401  (only to say what is missing, before any work)
    except ImportError:
        return _fail(INSTALL_HINT)
    import importlib

    trainer = importlib.import_module(f"trainer.{module}")
    _, unknown = trainer.build_parser().parse_known_args(argv)
    if unknown:
        return _fail(f"trainer.{module} does not take {unknown}")
    try:
        code: int = trainer.main(argv)
    except SystemExit as exc:  # trainer.train's own refusals (data, segmenter, settings)
        if isinstance(exc.code, int):
            return exc.code
        return _fail(str(exc.code))
    return code
