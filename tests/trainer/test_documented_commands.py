"""The training commands the Makefile documents (`make train`, `make train-paper`) parse into
the settings they say: a renamed or dropped trainer option fails here, not after hours."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from trainer.train import parse_args

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def trainer_commands(target: str) -> list[list[str]]:
    """The ``python -m trainer.train`` arguments of each such line of `target`'s recipe."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^([A-Z_]+) :?= (.*)$", text, flags=re.M))
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert recipe is not None, f"no target {target} in {MAKEFILE}"
    out = []
    for line in recipe.group(1).splitlines():
        line = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)
        words = shlex.split(line)
        if "trainer.train" in words:
            out.append(words[words.index("trainer.train") + 1 :])
    return out


def test_make_train_builds_the_shipped_recipe() -> None:
    (argv,) = trainer_commands("train")
    cfg, _ = parse_args(argv)
    assert (cfg.classifier, cfg.folds, cfg.size) == ("preact-resnet", 1, 128)
    assert len(cfg.manifests) == 2
    # The seed is the shipped bundle's, and the probe is fitted to the network it trains.
    shipped = json.loads((MAKEFILE.parent / "models" / "default" / "manifest.json").read_text())
    assert cfg.seed == shipped["training"]["seed"]
    recipe = MAKEFILE.read_text().replace("\\\n", " ")
    assert f"trainer.probe --bundle {cfg.out}" in " ".join(recipe.split())


def test_make_train_paper_builds_the_paper_profile_on_a_gpu_where_there_is_one() -> None:
    (argv,) = trainer_commands("train-paper")
    cfg, _ = parse_args(argv)
    assert (cfg.classifier, cfg.profile, cfg.folds) == ("dual-stage", "paper", 3)
    assert (cfg.schedule, cfg.lr_seg, cfg.lr_cls, cfg.weight_decay) == ("paper", 1e-4, 1e-4, 1e-5)
    assert cfg.device == "auto" and len(cfg.manifests) == 2
    assert str(cfg.out).startswith(".cache/"), "paper bundles are never committed"


def test_an_unknown_target_is_said() -> None:
    with pytest.raises(AssertionError, match="no target"):
        trainer_commands("train-nothing")


def test_the_shipped_bundles_report_is_the_one_make_train_writes_and_is_committed() -> None:
    from trainer.federated.experiments import shipped_report

    root = MAKEFILE.parent
    text = MAKEFILE.read_text().replace("\\\n", " ")
    recipe = re.search(r"^train:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert recipe is not None
    written = re.search(
        r"trainer\.site_report --bundle models/default --out (\S+)", recipe.group(1)
    )
    assert written is not None
    report = shipped_report(root / "models" / "default")
    assert Path(written.group(1)) == report
    assert (root / report).is_file(), f"{report}: the shipped bundle's figures are not committed"
