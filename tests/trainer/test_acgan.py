"""The ACGAN (trainer.models.acgan, trainer.acgan): shapes and ranges, the losses, a tiny
real training run on the train split that resumes to the same weights, its sample grids,
and the rebalancing of the classifier's training set (``TrainConfig.acgan``).
A few seconds each at 32 px on the tiny BUSI-like manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from appliance.preprocess import PreprocessParams
from tests.trainer.test_train import write_tiny_busi
from tests.trainer.tinybundle import tiny_config
from trainer.acgan import (
    ACGANConfig,
    ACGANError,
    acgan_losses,
    balance_counts,
    check_same_data,
    generator_loss,
    grid_image,
    load_generator,
    synthesize,
    train_acgan,
)
from trainer.data import load_datasets
from trainer.loops import Logger, train_classifier
from trainer.models import CLASSES, MAUNet
from trainer.models.acgan import IMAGE_SCALE, ACGANDiscriminator, ACGANGenerator
from trainer.seed import seed_everything


def _cfg(tmp_path: Path, manifest: Path, name: str, epochs: int = 2) -> ACGANConfig:
    return ACGANConfig(
        manifests=(manifest,),
        out=tmp_path / f"{name}-out",
        work_dir=tmp_path / f"{name}-work",
        cache_dir=tmp_path / "cache",
        size=32,
        latent_dim=16,
        width=8,
        batch_size=4,
        epochs=epochs,
        grid_rows=2,
        grid_cols=3,
    )


def test_generator_and_discriminator_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    g, d = ACGANGenerator(latent_dim=8, size=32, width=4), ACGANDiscriminator(size=32, width=4)
    with torch.no_grad():
        images = g(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    assert images.shape == (5, 1, 32, 32) and float(images.abs().max()) <= 1.0
    adv, cls = d(images)
    assert adv.shape == (5, 1) and cls.shape == (5, len(CLASSES))
    with pytest.raises(ValueError, match="power of two"):
        ACGANGenerator(size=48)
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        d(torch.zeros(1, 1, 64, 64))
    # The class changes the image: the conditioning is not ignored.
    z = torch.randn(1, 8).repeat(3, 1)
    with torch.no_grad():
        out = g(z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


def test_losses_reward_the_right_answers() -> None:
    torch.manual_seed(0)
    d = ACGANDiscriminator(size=16, width=4)
    real, fake = torch.rand(4, 1, 16, 16), torch.rand(4, 1, 16, 16) - 1
    labels = torch.tensor([0, 1, 2, 1])
    loss, stats = acgan_losses(d, real, labels, fake, labels, torch.ones(3))
    assert loss.item() > 0 and set(stats) == {"d_real_acc", "d_fake_acc", "aux_real_acc"}
    g_loss, g_stats = generator_loss(d, fake, labels)
    assert g_loss.item() > 0 and 0.0 <= g_stats["aux_fake_acc"] <= 1.0


def test_balance_counts_and_grid() -> None:
    assert balance_counts([103, 832, 418]) == [729, 0, 414]
    with pytest.raises(ValueError, match="non-negative"):
        balance_counts([1, -1, 2])
    grid = grid_image(torch.zeros(6, 1, 8, 8), rows=2, cols=3)
    assert grid.shape == (2 * 8 + 2, 3 * 8 + 4) and grid.dtype == np.uint8
    with pytest.raises(ValueError, match="needs 6 images"):
        grid_image(torch.zeros(5, 1, 8, 8), rows=2, cols=3)


class _Interrupt(Exception):
    pass


def test_trains_on_the_train_split_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    straight = _cfg(tmp_path, manifest, "straight")
    summary = train_acgan(straight)
    train = load_datasets([manifest], PreprocessParams(size=32), None)["train"]
    assert summary["train_images"] == len(train)  # the train split only, never val / test
    assert list(summary["train_per_class"].values()) == train.class_counts()
    assert summary["epochs_run"] == 2
    for name in CLASSES:
        grid = np.asarray(Image.open(straight.out / f"samples_{name}.png"))
        assert grid.shape == (2 * 32 + 2, 3 * 32 + 4)
    assert not list(straight.work_dir.glob("*.resume.pt"))

    resumed = _cfg(tmp_path, manifest, "resumed")

    def kill_after_first(record: dict[str, Any]) -> None:
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_acgan(resumed, on_epoch=kill_after_first)
    assert (resumed.work_dir / "acgan.resume.pt").is_file()
    again = train_acgan(resumed)
    assert again["epochs_run"] == 2
    a, _ = load_generator(straight.out)
    b, _ = load_generator(resumed.out)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key
    log = json.loads((resumed.out / "acgan_log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2]


def test_classifier_training_is_balanced_with_synthetic_images(tmp_path: Path) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    acgan = _cfg(tmp_path, manifest, "gan", epochs=1)
    train_acgan(acgan)
    g, summary = load_generator(acgan.out)
    images, labels = synthesize(g, [2, 0, 1], size=64, seed=1)  # resized to the run's size
    assert images.shape == (3, 1, 64, 64) and labels.tolist() == [0, 0, 2]
    assert float(images.abs().max()) <= IMAGE_SCALE
    again, _ = synthesize(g, [2, 0, 1], size=64, seed=1)
    assert torch.equal(images, again)  # seeded: a resumed epoch draws the same images

    cfg = tiny_config(manifest, tmp_path, epochs_cls=2, acgan=acgan.out)
    gen = seed_everything(cfg.seed, threads=1)
    data = load_datasets([manifest], cfg.preprocess_params(), cfg.cache_dir)
    log = Logger(tmp_path / "log.json", cfg)
    _, result = train_classifier(
        cfg, MAUNet(base_width=4), data["train"], data["val"], gen, log, deadline=1e12
    )
    expected = balance_counts(data["train"].class_counts())
    assert sum(expected) > 0
    synthetic = result["synthetic"]
    assert list(synthetic["per_class_per_epoch"].values()) == expected
    assert synthetic["acgan_epochs"] == 1 and synthetic["acgan_size"] == 32
    assert json.loads(log.path.read_text())["stage2_summary"]["synthetic"] == synthetic
    assert result["class_weights"] == [1.0, 1.0, 1.0]  # balanced: equal weights

    # An ACGAN trained on another manifest could have seen this run's val / test images.
    other = write_tiny_busi(tmp_path / "other", per_class=5)
    with pytest.raises(ACGANError, match="does not train on"):
        check_same_data(summary, [other])
    with pytest.raises(ACGANError, match="no trained ACGAN"):
        load_generator(tmp_path / "nowhere")
