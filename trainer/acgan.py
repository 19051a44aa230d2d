"""Training the ACGAN on a site's *train* split, its sample grids, and the synthetic images
that rebalance the classifier's training set (``trainer.train --acgan DIR``).

The ACGAN (`trainer.models.acgan`) is trained on the train split of every manifest given,
never on val or test, seeded, with a checkpoint after every epoch (`trainer.resume`): a
killed run started again with the same settings continues where it stopped. Losses as in
the ACGAN paper (Odena et al. 2017) and FAME: the discriminator maximises the log-likelihood
of the right source (real / fake) and of the right class on both real and generated images;
the generator maximises the likelihood of "real" and of its intended class on its fakes
(non-saturating form). The class loss on real images is weighted by inverse class frequency,
and fakes are drawn for all classes equally, so the minority classes are learnt as well.

Output folder (``--out``): ``generator.safetensors`` and ``acgan.json`` (the settings, the
sha256 of every manifest, the epochs and seconds), one ``samples_<class>.png`` per class
(rows of samples), and ``acgan_log.json`` (the per-epoch losses and accuracies).

    python -m trainer.acgan --manifest ../shared/data/busi/manifest.csv \\
        --manifest ../shared/data/busbra/manifest.csv --size 64 --epochs 200 \\
        --max-minutes 30 --threads 1 --out .cache/acgan
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from appliance.bundle import sha256_file
from appliance.preprocess import PreprocessParams
from trainer.data import load_datasets
from trainer.losses import inverse_frequency_weights
from trainer.models import CLASSES
from trainer.models.acgan import (
    ACGANDiscriminator,
    ACGANGenerator,
    from_gan_range,
    to_gan_range,
)
from trainer.progress import EpochProgress
from trainer.resume import StageCheckpoint, last_epoch
from trainer.seed import seed_everything

GENERATOR_FILE = "generator.safetensors"
SETTINGS_FILE = "acgan.json"
STAGE = "acgan"
# Settings a resumed run may change: where it writes, its budget, its threads.
_RESUMABLE = frozenset({"out", "work_dir", "cache_dir", "max_minutes", "threads", "resume"})


class ACGANError(ValueError):
    """A saved ACGAN cannot be used (missing files, other data, other image size)."""


@dataclass(frozen=True)
class ACGANConfig:
    """Every setting of one ACGAN run; recorded in ``acgan.json``."""

    manifests: tuple[Path, ...]
    out: Path
    work_dir: Path = Path(".cache/acgan-work")
    cache_dir: Path = Path(".cache")
    size: int = 64
    latent_dim: int = 64
    width: int = 32
    batch_size: int = 32
    epochs: int = 100
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 2026
    threads: int = 1
    max_minutes: float = 30.0
    grid_rows: int = 4
    grid_cols: int = 8
    resume: bool = True

    def fingerprint(self) -> str:
        keep = {k: v for k, v in asdict(self).items() if k not in _RESUMABLE}
        return json.dumps(keep, default=str, sort_keys=True)


# --------------------------------------------------------------------------- pure parts


def acgan_losses(
    d: ACGANDiscriminator,
    real: Tensor,
    real_labels: Tensor,
    fake: Tensor,
    fake_labels: Tensor,
    class_weights: Tensor,
) -> tuple[Tensor, dict[str, float]]:
    """The discriminator's loss on a real and a (detached) fake batch, and its accuracies."""
    adv_real, cls_real = d(real)
    adv_fake, cls_fake = d(fake)
    loss = (
        F.binary_cross_entropy_with_logits(adv_real, torch.ones_like(adv_real))
        + F.binary_cross_entropy_with_logits(adv_fake, torch.zeros_like(adv_fake))
        + F.cross_entropy(cls_real, real_labels, weight=class_weights)
        + F.cross_entropy(cls_fake, fake_labels)
    )
    stats = {
        "d_real_acc": float((adv_real > 0).float().mean()),
        "d_fake_acc": float((adv_fake < 0).float().mean()),
        "aux_real_acc": float((cls_real.argmax(1) == real_labels).float().mean()),
    }
    return loss, stats


def generator_loss(
    d: ACGANDiscriminator, fake: Tensor, fake_labels: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Non-saturating generator loss: fakes judged real, and of their intended class."""
    adv, cls = d(fake)
    loss = F.binary_cross_entropy_with_logits(adv, torch.ones_like(adv)) + F.cross_entropy(
        cls, fake_labels
    )
    return loss, {"aux_fake_acc": float((cls.argmax(1) == fake_labels).float().mean())}


def balance_counts(counts: Sequence[int]) -> list[int]:
    """How many synthetic images per class bring every class up to the largest one."""
    if not counts or min(counts) < 0:
        raise ValueError(f"class counts must be non-negative, got {list(counts)}")
    top = max(counts)
    return [top - c for c in counts]


def grid_image(images: Tensor, rows: int, cols: int) -> NDArray[np.uint8]:
    """(rows*cols, 1, S, S) images in [-1, 1] as one uint8 grid, 2-pixel black gutters."""
    n, _, s, _ = images.shape
    if n != rows * cols:
        raise ValueError(f"grid of {rows}x{cols} needs {rows * cols} images, got {n}")
    pix = ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    gap = 2
    grid = np.zeros((rows * (s + gap) - gap, cols * (s + gap) - gap), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (s + gap) : r * (s + gap) + s, c * (s + gap) : c * (s + gap) + s] = pix[i]
    return grid


# --------------------------------------------------------------------------- training


def train_acgan(
    cfg: ACGANConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train on the train split of `cfg.manifests`, write the output folder; returns the
    summary written to ``acgan.json``. `on_epoch` is called with each epoch's record after
    its checkpoint is saved (a progress hook; an exception there stops the run resumably)."""
    start = time.monotonic()
    gen = seed_everything(cfg.seed, threads=cfg.threads)
    data = load_datasets(cfg.manifests, PreprocessParams(size=cfg.size), cfg.cache_dir)
    train = data["train"]  # never val or test: the synthetic images join training only
    if not len(train):
        raise SystemExit(f"{[str(m) for m in cfg.manifests]}: no train rows to learn from")
    counts = train.class_counts()
    x = to_gan_range(torch.from_numpy(train.images[:, None]))
    y = torch.from_numpy(train.labels)
    g = ACGANGenerator(latent_dim=cfg.latent_dim, size=cfg.size, width=cfg.width)
    d = ACGANDiscriminator(size=cfg.size, width=cfg.width)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    weights = inverse_frequency_weights([max(1, c) for c in counts])
    records: list[dict[str, Any]] = []
    epochs_run, spent = 0, 0.0
    ckpt = StageCheckpoint(cfg.work_dir, STAGE)
    saved = ckpt.load() if cfg.resume else None
    if saved is not None and saved.get("fingerprint") != cfg.fingerprint():
        print(f"[acgan] not resuming: {ckpt.path} is from other settings", flush=True)
        saved = None
    if saved is not None:
        g.load_state_dict(saved["generator"])
        d.load_state_dict(saved["discriminator"])
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        gen.set_state(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        records = json.loads(saved["log"])
        epochs_run, spent = int(saved["epoch"]), float(saved["seconds"])
        print(f"[acgan] resuming after epoch {epochs_run} ({spent:.0f} s spent)", flush=True)
    deadline = start - spent + 60.0 * cfg.max_minutes
    last = last_epoch(saved, cfg.epochs, False, deadline, records)
    n_batches = -(-len(train) // cfg.batch_size)
    for epoch in range(epochs_run + 1, last + 1):
        t0 = time.monotonic()
        g.train()
        d.train()
        sums: dict[str, float] = {}
        bar = EpochProgress(STAGE, epoch, cfg.epochs, n_batches)
        order = torch.randperm(len(train), generator=gen)
        for b in range(0, len(train), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            real, labels = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # the only augmentation
            real = torch.where(flip.view(-1, 1, 1, 1), real.flip(3), real)
            noise = torch.randn(len(idx), cfg.latent_dim, generator=gen)
            fake_labels = torch.randint(0, len(CLASSES), (len(idx),), generator=gen)
            fake = g(noise, fake_labels)
            loss_d, stats_d = acgan_losses(d, real, labels, fake.detach(), fake_labels, weights)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g, stats_g = generator_loss(d, fake, fake_labels)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            step = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), **stats_d, **stats_g}
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            bar.update(step["loss_d"], len(idx))
        bar.close()
        epochs_run = epoch
        seconds = time.monotonic() - t0
        record = {"epoch": epoch, **{k: round(v / len(train), 4) for k, v in sums.items()}}
        record["seconds"] = round(seconds, 1)
        records.append(record)
        print("[acgan] " + " ".join(f"{k}={v}" for k, v in record.items()), flush=True)
        stop = time.monotonic() + seconds > deadline
        ckpt.save(
            {
                "epoch": epoch,
                "generator": g.state_dict(),
                "discriminator": d.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "log": json.dumps(records),
                "seconds": time.monotonic() - start + spent,
                "fingerprint": cfg.fingerprint(),
                "done": stop,
            }
        )
        if on_epoch is not None:
            on_epoch(record)
        if stop:
            print(f"[acgan] stopping after epoch {epoch}: --max-minutes budget", flush=True)
            break
    summary = {
        "settings": json.loads(json.dumps(asdict(cfg), default=str)),
        "manifests": {f"{m.parent.name}/{m.name}": sha256_file(m) for m in cfg.manifests},
        "train_images": len(train),
        "train_per_class": dict(zip(CLASSES, counts, strict=True)),
        "epochs_run": epochs_run,
        "seconds": round(time.monotonic() - start + spent, 1),
        "last_epoch": records[-1] if records else None,
        "machine": f"{platform.machine()} CPU, {cfg.threads} torch thread(s), torch "
        f"{torch.__version__}",
    }
    write_outputs(cfg, g, summary, records)
    ckpt.clear()  # the run is complete: nothing left to resume
    return summary


def write_outputs(
    cfg: ACGANConfig, g: ACGANGenerator, summary: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    """The generator's weights, its settings, the log and one sample grid per class."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in g.state_dict().items()}, cfg.out / GENERATOR_FILE)
    (cfg.out / SETTINGS_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (cfg.out / "acgan_log.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    save_grids(g, cfg.out, cfg.grid_rows, cfg.grid_cols, seed=cfg.seed)


def save_grids(g: ACGANGenerator, out: Path, rows: int, cols: int, seed: int) -> list[Path]:
    """``samples_<class>.png`` per class: rows x cols samples from fixed, seeded noise."""
    paths = []
    for k, name in enumerate(CLASSES):
        rng = torch.Generator().manual_seed(seed + k)
        images = g.sample(torch.full((rows * cols,), k, dtype=torch.long), rng)
        path = out / f"samples_{name}.png"
        Image.fromarray(grid_image(images, rows, cols)).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- use in training


def load_generator(folder: Path) -> tuple[ACGANGenerator, dict[str, Any]]:
    """The generator saved by `train_acgan` in `folder`, in eval mode, and its summary."""
    weights, settings = folder / GENERATOR_FILE, folder / SETTINGS_FILE
    if not weights.is_file() or not settings.is_file():
        raise ACGANError(
            f"{folder}: no trained ACGAN ({GENERATOR_FILE} and {SETTINGS_FILE} expected); "
            "train one with: python -m trainer.acgan --manifest CSV --out DIR"
        )
    summary = json.loads(settings.read_text(encoding="utf-8"))
    s = summary["settings"]
    g = ACGANGenerator(latent_dim=int(s["latent_dim"]), size=int(s["size"]), width=int(s["width"]))
    g.load_state_dict(load_file(weights), strict=True)
    return g.eval().requires_grad_(False), summary


def check_same_data(summary: dict[str, Any], manifests: Sequence[Path]) -> None:
    """Refuse an ACGAN trained on a manifest the classifier does not train on: its train
    split could hold the classifier's val or test images."""
    ours = {sha256_file(m) for m in manifests}
    foreign = [name for name, sha in summary["manifests"].items() if sha not in ours]
    if foreign:
        raise ACGANError(
            f"the ACGAN was trained on {foreign}, which this run does not train on (other "
            "manifest or version): its train split could hold this run's val / test images; "
            "train the ACGAN on this run's manifests"
        )


def synthesize(
    g: ACGANGenerator, per_class: Sequence[int], size: int, seed: int
) -> tuple[Tensor, Tensor]:
    """`per_class[k]` images of class k from seeded noise, as preprocessed (N, 1, size, size)
    z-score images (bilinear resize where the ACGAN's size differs), and their labels."""
    labels = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(per_class)])
    if not len(labels):
        return torch.zeros(0, 1, size, size), labels
    rng = torch.Generator().manual_seed(seed)
    images = torch.cat([g.sample(labels[i : i + 256], rng) for i in range(0, len(labels), 256)])
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return from_gan_range(images), labels


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> ACGANConfig:
    d = ACGANConfig(manifests=(), out=Path())
    p = argparse.ArgumentParser(
        prog="python -m trainer.acgan", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--manifest", type=Path, action="append", required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for weights and grids")
    p.add_argument("--work-dir", type=Path, default=d.work_dir, help="per-epoch checkpoint")
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir)
    p.add_argument("--size", type=int, default=d.size, help="image side (power of two)")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--width", type=int, default=d.width, help="channel width of G and D")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--max-minutes", type=float, default=d.max_minutes)
    p.add_argument("--no-resume", action="store_true")
    a = p.parse_args(argv)
    return ACGANConfig(
        manifests=tuple(a.manifest),
        out=a.out,
        work_dir=a.work_dir,
        cache_dir=a.cache_dir,
        size=a.size,
        latent_dim=a.latent_dim,
        width=a.width,
        batch_size=a.batch_size,
        epochs=a.epochs,
        lr=a.lr,
        seed=a.seed,
        threads=a.threads,
        max_minutes=a.max_minutes,
        resume=not a.no_resume,
    )


def main(argv: list[str] | None = None) -> int:
    summary = train_acgan(parse_args(argv))
    print(f"acgan: {summary['epochs_run']} epochs in {summary['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
