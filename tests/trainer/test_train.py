"""Tests of losses, augmentation, metrics, data loading and a tiny end-to-end training run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from appliance.bundle import load_bundle
from appliance.preprocess import PreprocessParams
from trainer.data import (
    AugmentParams,
    DataError,
    augment_batch,
    load_dataset,
    read_manifest,
)
from trainer.losses import (
    dice_bce_loss,
    inverse_frequency_weights,
    lesion_presence_loss,
    soft_dice_loss,
)
from trainer.models import MAUNet
from trainer.train import (
    THRESHOLDS,
    choose_threshold,
    classification_metrics,
    run,
    segmentation_metrics,
)


def disc_batch(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images with one bright disc each, and the disc masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2).astype(np.float32)
        images.append(mask * 2.0 + rng.normal(0, 0.3, (size, size)))
        masks.append(mask)
    return (
        torch.tensor(np.stack(images)[:, None], dtype=torch.float32),
        torch.tensor(np.stack(masks)[:, None]),
    )


# --------------------------------------------------------------------------- losses


def test_dice_loss_near_zero_for_perfect_and_empty() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, 2:5, 2:5] = 1
    logits = (target * 2 - 1) * 50
    assert float(soft_dice_loss(logits, target)) < 1e-3
    assert float(soft_dice_loss(torch.full((1, 1, 8, 8), -50.0), torch.zeros(1, 1, 8, 8))) < 1e-3


def test_dice_loss_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ"):
        soft_dice_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8))


def _blob_on_empty_image(strength: float) -> torch.Tensor:
    """Logits of a 64 x 64 lesion-free image with a confident 100-pixel false lesion."""
    logits = torch.full((1, 1, 64, 64), -8.0)
    logits[..., 10:20, 10:20] = strength
    return logits.requires_grad_(True)


def test_presence_loss_stays_steep_where_soft_dice_is_flat() -> None:
    # A lesion-free image with a confident false lesion: soft Dice is saturated near 1 and
    # barely asks the blob to shrink; the presence term asks it hard.
    empty = torch.zeros(1, 1, 64, 64)
    dice_logits, presence_logits = _blob_on_empty_image(6.0), _blob_on_empty_image(6.0)
    dice = soft_dice_loss(dice_logits, empty)
    presence = lesion_presence_loss(presence_logits, empty)
    dice.backward()
    presence.backward()
    assert dice.item() > 0.98 and presence.item() > 5.0
    blob = (slice(None), slice(None), slice(10, 20), slice(10, 20))
    assert presence_logits.grad is not None and dice_logits.grad is not None
    assert float(presence_logits.grad[blob].sum()) > 50 * float(dice_logits.grad[blob].sum())
    # Without the blob the term is small, and on an image with a lesion the blob is right.
    quiet = lesion_presence_loss(torch.full((1, 1, 64, 64), -8.0), empty)
    lesion = torch.zeros(1, 1, 64, 64)
    lesion[..., 10:20, 10:20] = 1
    assert float(quiet) < 1e-3
    assert float(lesion_presence_loss(_blob_on_empty_image(6.0), lesion)) < 1e-2


def test_presence_loss_checks_its_inputs_and_is_off_by_default() -> None:
    logits, target = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="differ"):
        lesion_presence_loss(logits, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="top_fraction"):
        lesion_presence_loss(logits, target, top_fraction=0.0)
    blob = _blob_on_empty_image(6.0).detach()
    empty = torch.zeros(1, 1, 64, 64)
    plain = dice_bce_loss(blob, empty)
    assert torch.equal(plain, dice_bce_loss(blob, empty, presence_weight=0.0))
    with_term = dice_bce_loss(blob, empty, presence_weight=0.5)
    assert torch.allclose(with_term, plain + 0.5 * lesion_presence_loss(blob, empty))


def test_stage1_pool_draws_lesion_free_images_more_often() -> None:
    from trainer.loops import stage1_pool

    masks = np.zeros((5, 4, 4), np.uint8)
    masks[[0, 2, 3], 1, 1] = 1  # images 1 and 4 are lesion-free
    assert stage1_pool(masks, 1).tolist() == [0, 1, 2, 3, 4]
    pool = stage1_pool(masks, 3)
    assert sorted(pool.tolist()) == [0, 1, 1, 1, 2, 3, 4, 4, 4]
    with pytest.raises(ValueError, match="1 or more"):
        stage1_pool(masks, 0)


def test_inverse_frequency_weights() -> None:
    w = inverse_frequency_weights([100, 300, 200])
    assert torch.allclose(w, torch.tensor([2.0, 2 / 3, 1.0]))
    with pytest.raises(ValueError, match="at least one"):
        inverse_frequency_weights([3, 0, 1])


@pytest.mark.parametrize("presence_weight", [0.0, 1.0])
def test_few_steps_on_discs_reduce_the_loss(presence_weight: float) -> None:
    torch.manual_seed(0)
    images, masks = disc_batch(4, 32)
    masks[3] = 0  # one lesion-free image, as a normal case
    model = MAUNet(base_width=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = dice_bce_loss(model(images), masks, presence_weight=presence_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# --------------------------------------------------------------------------- augmentation


def test_augment_keeps_shape_binary_masks_and_zero_border() -> None:
    images, masks = disc_batch(4, 32)
    images[..., :4] = 0  # a letterbox border
    gen = torch.Generator().manual_seed(1)
    out = augment_batch(torch.cat([images, masks], dim=1), gen, AugmentParams(), mask_channels=1)
    assert out.shape == (4, 2, 32, 32)
    assert set(out[:, 1].unique().tolist()) <= {0.0, 1.0}
    assert out[:, 1].sum() > 0
    assert not torch.allclose(out[:, :1], images)


def test_augment_flip_is_horizontal_only() -> None:
    images, masks = disc_batch(2, 16)
    batch = torch.cat([images, masks], dim=1)
    params = AugmentParams(
        hflip_p=1.0, max_rotation_deg=0.0, zoom=(1.0, 1.0), brightness=0.0, contrast=(1, 1)
    )
    out = augment_batch(batch, torch.Generator().manual_seed(0), params, mask_channels=1)
    assert torch.allclose(out, torch.flip(batch, dims=[3]), atol=1e-5)


# --------------------------------------------------------------------------- metrics


def test_segmentation_metrics_split_lesion_and_normal() -> None:
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2] = 1
    prob = np.zeros((2, 4, 4), np.float32)
    prob[0, :2] = 0.9
    prob[1, 0, 0] = 0.9  # one false-positive pixel on the normal image
    m = segmentation_metrics(prob, masks, 0.5, min_area_px=0)
    assert m["dice"] == pytest.approx(1.0)
    assert m["fp_area_normal"] == pytest.approx(1 / 16)
    assert m["fp_rate_normal"] == pytest.approx(1.0)
    # The node's postprocessing drops components under the minimum area.
    cleaned = segmentation_metrics(prob, masks, 0.5, min_area_px=2)
    assert cleaned["fp_rate_normal"] == 0.0
    assert cleaned["dice"] == pytest.approx(1.0)


def test_choose_threshold_maximises_dice() -> None:
    masks = np.zeros((1, 8, 8), np.uint8)
    masks[0, 2:6, 2:6] = 1
    prob = np.where(masks > 0, 0.62, 0.0).astype(np.float32)
    prob[0, 1, 2:6] = 0.45  # a rim that only low thresholds include
    threshold, sweep = choose_threshold(prob, masks, min_area_px=1)
    assert set(sweep) == set(THRESHOLDS)
    assert 0.45 < threshold <= 0.6
    assert sweep[threshold]["dice"] == pytest.approx(1.0)


def test_classification_metrics() -> None:
    labels = np.array([0, 1, 2, 1])
    probs = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]] * 0.8 + 0.1
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    perfect = classification_metrics(np.eye(3, dtype=np.float32)[labels], labels)
    assert perfect["macro_auc"] == pytest.approx(1.0)
    assert perfect["confusion"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]


# --------------------------------------------------------------------------- data


def write_tiny_busi(root: Path, per_class: int = 4) -> Path:
    """A BUSI-like folder: PNGs (one RGB), masks (one with two parts), all splits, exclude."""
    rng = np.random.default_rng(0)
    rows = []
    for label in ("normal", "benign", "malignant"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            h, w = 40 + 4 * i, 56
            name = f"{label}/{label} ({i}).png"
            pixels = rng.integers(0, 255, (h, w), dtype=np.uint8)
            if i == 0:
                Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(root / name)
            else:
                Image.fromarray(pixels).save(root / name)
            masks = []
            for part in range(2 if i == 1 else 1):
                mask = np.zeros((h, w), np.uint8)
                if label != "normal":
                    mask[5 + 15 * part : 15 + 15 * part, 10:30] = 255
                suffix = f"_mask_{part}" if part else "_mask"
                masks.append(f"{label}/{label} ({i}){suffix}.png")
                Image.fromarray(mask).save(root / masks[-1])
            split = ["train", "train", "val", "test"][i % 4] if i < 4 else "exclude"
            rows.append({"image": name, "label": label, "masks": ";".join(masks), "split": split})
    rows[-1]["split"] = "train"
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "masks", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_read_manifest_and_cache(tmp_path: Path) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=5)
    records = read_manifest(manifest)
    assert len(records) == 3 * 5 - 2  # two 'exclude' rows dropped
    cache = tmp_path / "cache"
    data = load_dataset(manifest, PreprocessParams(size=32), cache)
    assert len(data["train"]) == 7 and len(data["val"]) == 3 and len(data["test"]) == 3
    assert data["train"].images.shape == (7, 32, 32)
    # benign (1) has two mask files: their union has both rectangles.
    index = data["train"].names.index("benign/benign (1).png")
    assert data["train"].masks[index].sum() > 1.5 * data["train"].masks[index - 1].sum()
    assert len(list(cache.glob("*.npz"))) == 1
    again = load_dataset(manifest, PreprocessParams(size=32), cache)
    np.testing.assert_array_equal(again["train"].images, data["train"].images)
    load_dataset(manifest, PreprocessParams(size=48), cache)
    assert len(list(cache.glob("*.npz"))) == 2  # the params are part of the key


def test_read_manifest_rejects_unknown_label(tmp_path: Path) -> None:
    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    text = manifest.read_text().replace(",benign,", ",cyst,", 1)
    manifest.write_text(text)
    with pytest.raises(DataError, match="label 'cyst'"):
        read_manifest(manifest)


def test_tiny_training_run_writes_a_verified_bundle(tmp_path: Path) -> None:
    from tests.trainer.tinybundle import tiny_config  # it imports this module

    manifest = write_tiny_busi(tmp_path / "busi", per_class=4)
    cfg = tiny_config(manifest, tmp_path, epochs_seg=2, epochs_cls=2)
    bundle = load_bundle(run(cfg))
    m = bundle.manifest
    assert m.classes == ["normal", "benign", "malignant"]
    assert set(m.files) == {
        "model.onnx",
        "training_log.json",
        "weights.safetensors",
        "heads.safetensors",
    }
    assert m.postprocessing["mask_threshold"] in THRESHOLDS
    assert m.training["stage1"]["epochs_run"] == 2
    assert set(m.evaluation["busi_val"]) >= {"dice", "iou", "accuracy", "macro_f1", "macro_auc"}
    assert m.preprocess_params() == PreprocessParams(size=32)
