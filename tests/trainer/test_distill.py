"""Distillation of a fold-ensemble teacher bundle into one student (trainer.distill,
trainer.teacher, ``fame-node train distil``): a real tiny teacher bundle
(`tests.trainer.foldbundle`), real PNG manifests, real ONNX Runtime sessions.

Covers the student bundle (verifies, runs, three outputs, records its teacher), the soft
losses (0 exactly when student equals teacher, positive otherwise, the KL's gradient is
soft-target BCE's), that the soft terms alone pull a student towards the teacher, the
refusal of a tampered or mismatched teacher before any training, and resuming.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from appliance.bundle import load_bundle, sha256_file
from appliance.cli import _parser
from appliance.cli import main as node_main
from appliance.commands.train import distil_argv
from appliance.models.signing import (
    SIGNATURE_NAME,
    generate_keypair,
    load_private_key,
    sign_manifest,
)
from tests.trainer.foldbundle import arrays, export_tiny, tiny_fold_net, tiny_single_net
from tests.trainer.test_train import write_tiny_busi
from tests.trainer.tinybundle import tiny_config
from trainer import distill
from trainer.data import load_datasets
from trainer.loops import Logger, train_segmenter
from trainer.models import FameNodeNet
from trainer.resume import StageCheckpoint
from trainer.run_config import TrainConfig
from trainer.seed import seed_everything
from trainer.teacher import Teacher, bernoulli_kl, kd_loss, soft_map_loss

TINY = ["--size", "32", "--epochs-seg", "1", "--epochs-cls", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def teacher_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified 3-fold tiny teacher bundle (32 px, untrained, folds disagree)."""
    return export_tiny(tiny_fold_net(), tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_busi(tmp_path_factory.mktemp("data") / "busi", per_class=4)


def _images(n: int = 6, seed: int = 3) -> torch.Tensor:
    return torch.from_numpy(arrays(n, seed).images[:, None])


# --------------------------------------------------------------------------- end to end


def test_fame_node_train_distil_writes_a_student_bundle(
    teacher_bundle: Path, manifest: Path, tmp_path: Path
) -> None:
    out, work = tmp_path / "student", tmp_path / "work"
    argv = ["train", "distil", "--teacher", str(teacher_bundle), "--manifest", str(manifest)]
    argv += ["--out", str(out), "--work-dir", str(work), "--cache-dir", str(tmp_path / "c")]
    argv += [*TINY, "--distil-weight", "0.5", "--distil-temperature", "3"]
    assert node_main(argv) == 0
    bundle = load_bundle(out)  # verifies every file
    names = ["lesion_prob", "class_prob", "ood_score"]  # one MAU-Net: no seg_uncertainty
    assert [o.name for o in bundle.manifest.outputs] == names
    session = ort.InferenceSession(bundle.model_bytes, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == names
    image = _images(2).numpy()
    lesion, probs, ood = session.run(None, {session.get_inputs()[0].name: image})
    assert lesion.shape == (2, 1, 32, 32) and ood.shape == (2,)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    record = bundle.manifest.training["distilled_from"]
    assert (record["name"], record["version"]) == ("tiny-folds", "0.0.1")
    assert record["manifest_sha256"] == sha256_file(teacher_bundle / "manifest.json")
    assert (record["weight"], record["temperature"]) == (0.5, 3.0)
    assert record["segmenter"] == "3-fold MAU-Net ensemble"
    assert bundle.manifest.name == "tiny-folds-distilled" and bundle.manifest.version == "0.0.1"
    assert bundle.manifest.training["model"]["segmenter"]["kind"] == "mau-net"
    assert not list(work.glob("*.resume.pt"))  # finished: nothing left to resume


def test_fame_node_arguments_reach_trainer_distill() -> None:
    base = ["train", "distil", "--teacher", "T", "--manifest", "a.csv", "--manifest", "b.csv"]
    more = ["--out", "S", "--distil-temperature", "4", "--trusted-key", "k.pub", "--no-resume"]
    args = _parser().parse_args([*base, *more])
    a = distill.build_parser().parse_args(distil_argv(args))
    assert a.teacher == Path("T") and a.manifest == [Path("a.csv"), Path("b.csv")]
    assert a.distil_temperature == 4.0 and a.distil_weight == 1.0
    assert a.trusted_key == [Path("k.pub")] and a.no_resume
    assert a.work_dir == distill.DEFAULT_WORK_DIR and a.folds == 1


# --------------------------------------------------------------------------- losses


def test_soft_losses_are_zero_at_the_teacher_and_positive_elsewhere() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.rand(3, 1, 16, 16, generator=gen) * 0.98 + 0.01
    assert float(soft_map_loss(torch.logit(q), q)) < 1e-6
    other = torch.logit(q) + torch.randn(q.shape, generator=gen)
    assert float(soft_map_loss(other, q)) > 1e-3
    t = torch.randn(5, 3, generator=gen)
    assert float(kd_loss(t, t, 2.0)) < 1e-7
    assert float(kd_loss(t + torch.randn(5, 3, generator=gen), t, 2.0)) > 1e-3
    with pytest.raises(ValueError, match="differ"):
        soft_map_loss(other, q[:, :, :8])


def test_the_pixel_kl_is_soft_target_bce_less_the_teachers_entropy() -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.rand(2, 1, 8, 8, generator=gen)
    logits = torch.randn(2, 1, 8, 8, generator=gen, requires_grad=True)
    bce = F.binary_cross_entropy_with_logits(logits, q)
    entropy = -(torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q)).mean()
    kl = bernoulli_kl(logits, q)
    torch.testing.assert_close(kl, bce - entropy)
    (g_kl,) = torch.autograd.grad(kl, logits)
    (g_bce,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(logits, q), logits)
    torch.testing.assert_close(g_kl, g_bce)


def test_the_teacher_terms_vanish_for_a_copy_of_the_teacher() -> None:
    teacher = Teacher(tiny_single_net(seed=4))
    copy = tiny_single_net(seed=4)
    images = _images()
    batch = torch.cat([images, torch.zeros_like(images)], dim=1)  # [image, mask]
    with torch.no_grad():
        assert float(teacher.segmentation_term(copy.segmenter(images), batch)) < 1e-6
        maps = teacher.lesion_maps(images)
        batch3 = torch.cat([images, maps, maps], dim=1)
        assert float(teacher.classification_term(copy.classifier(batch3[:, :2]), batch3)) < 1e-7
        folds = Teacher(tiny_fold_net())
        assert float(folds.segmentation_term(copy.segmenter(images), batch)) > 1e-3
        batch3 = torch.cat([images, maps, folds.lesion_maps(images)], dim=1)
        assert float(folds.classification_term(copy.classifier(batch3[:, :2]), batch3)) > 0
    with pytest.raises(ValueError, match="3 channels"):
        teacher.classification_term(torch.zeros(6, 3), batch)


def _map_distance(student: FameNodeNet, teacher: Teacher, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float(soft_map_loss(student.segmenter(images), teacher.segmentation(images)))


def _class_kl(student: FameNodeNet, teacher: Teacher, batch3: torch.Tensor) -> float:
    with torch.no_grad():
        own, theirs = student.classifier(batch3[:, :2]), teacher.class_logits(batch3[:, [0, 2]])
        return float(kd_loss(own, theirs, 1.0))


def test_a_few_steps_of_the_soft_terms_alone_pull_the_student_to_the_teacher() -> None:
    teacher = Teacher(tiny_fold_net(), weight=1.0, temperature=2.0)
    student = tiny_single_net(seed=7)
    images = _images(8)
    batch = torch.cat([images, torch.zeros_like(images)], dim=1)  # the mask is not used
    before = _map_distance(student, teacher, images)
    opt = torch.optim.Adam(student.segmenter.parameters(), lr=1e-2)
    for _ in range(15):
        loss = teacher.segmentation_term(student.segmenter(images), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _map_distance(student, teacher, images)
    assert after < 0.7 * before, (before, after)

    with torch.no_grad():
        own = torch.sigmoid(student.segmenter(images))
    batch3 = torch.cat([images, own, teacher.lesion_maps(images)], dim=1)
    before = _class_kl(student, teacher, batch3)
    opt = torch.optim.Adam(student.classifier.parameters(), lr=1e-2)
    for _ in range(15):
        loss = teacher.classification_term(student.classifier(batch3[:, :2]), batch3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _class_kl(student, teacher, batch3)
    assert after < 0.5 * before, (before, after)


# --------------------------------------------------------------------------- refusals


def _distil_argv(teacher: Path, manifest: Path, root: Path, *more: str) -> list[str]:
    return [
        "--teacher",
        str(teacher),
        "--manifest",
        str(manifest),
        "--out",
        str(root / "student"),
        "--work-dir",
        str(root / "work"),
        "--cache-dir",
        str(root / "cache"),
        *TINY,
        *more,
    ]


def test_a_tampered_teacher_is_refused_before_any_training(
    teacher_bundle: Path, manifest: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(teacher_bundle, tampered)
    weights = tampered / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=r"checksum mismatch for weights\.safetensors"):
        distill.main(_distil_argv(tampered, manifest, tmp_path))
    assert not (tmp_path / "work").exists() and not (tmp_path / "cache").exists()


def test_with_a_trusted_key_only_a_teacher_signed_by_it_is_taken(
    teacher_bundle: Path, manifest: Path, tmp_path: Path
) -> None:
    private, public = generate_keypair(tmp_path / "coordinator")
    with pytest.raises(SystemExit, match="refused"):  # the teacher is unsigned
        distill.main(_distil_argv(teacher_bundle, manifest, tmp_path, "--trusted-key", str(public)))
    assert not (tmp_path / "work").exists()
    signed = tmp_path / "signed"
    shutil.copytree(teacher_bundle, signed)
    manifest_bytes = (signed / "manifest.json").read_bytes()
    (signed / SIGNATURE_NAME).write_bytes(sign_manifest(manifest_bytes, load_private_key(private)))
    bundle, net = distill.load_teacher(signed, [public])
    assert bundle.signature is not None and bundle.signature.trusted
    cfg = TrainConfig(manifest=manifest, out=tmp_path, size=32)
    assert distill.distilled_from(bundle, net, cfg)["signature"] == bundle.signature.fingerprint


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (("--size", "64"), "other preprocessing: size 32"),
        (("--folds", "3"), "--folds: not for a distillation"),
        (("--distil-temperature", "0"), "temperature 0.0: must be > 0"),
    ],
)
def test_a_mismatched_teacher_or_setting_is_refused_before_any_data(
    teacher_bundle: Path, manifest: Path, tmp_path: Path, more: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit, match=message):
        distill.main(_distil_argv(teacher_bundle, manifest, tmp_path, *more))
    assert not (tmp_path / "work").exists() and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- resuming


class _Interrupt(Exception):
    pass


def _stage1(cfg: TrainConfig, log: Logger, teacher: Teacher) -> dict[str, torch.Tensor]:
    gen = seed_everything(cfg.seed, threads=1)
    data = load_datasets(cfg.manifests, cfg.preprocess_params(), cfg.cache_dir)
    model, _ = train_segmenter(cfg, data["train"], data["val"], gen, log, teacher=teacher)
    return model.state_dict()


def test_a_distilling_stage_resumes_exactly_and_not_with_another_teacher(
    teacher_bundle: Path, manifest: Path, tmp_path: Path, capsys: Any
) -> None:
    _, net = distill.load_teacher(teacher_bundle)
    teacher = Teacher(net)
    sha = sha256_file(teacher_bundle / "manifest.json")

    def cfg(work: str, teacher_sha: str = sha) -> TrainConfig:
        return tiny_config(manifest, tmp_path / work, epochs_seg=3, teacher_sha256=teacher_sha)

    straight = cfg("straight")
    expected = _stage1(straight, Logger(tmp_path / "straight.json", straight), teacher)

    resumed = cfg("resumed")

    class Killed(Logger):
        def epoch(self, stage: str, record: dict[str, Any]) -> None:
            super().epoch(stage, record)
            if record["epoch"] == 2:
                raise _Interrupt  # the checkpoint of epoch 1 is on disk, epoch 2's is not

    with pytest.raises(_Interrupt):
        _stage1(resumed, Killed(tmp_path / "resumed.json", resumed), teacher)
    saved = StageCheckpoint(resumed.work_dir, "stage1").load()
    assert saved is not None and saved["epoch"] == 1
    log = Logger(tmp_path / "resumed.json", resumed)
    got = _stage1(resumed, log, teacher)
    assert [r["epoch"] for r in log.data["stage1"]] == [1, 2, 3]
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)

    capsys.readouterr()
    other = cfg("resumed", teacher_sha="0" * 64)  # the same folder, another teacher
    log = Logger(tmp_path / "other.json", other)
    _stage1(other, log, teacher)
    assert "not resuming" in capsys.readouterr().out
    assert [r["epoch"] for r in log.data["stage1"]] == [1, 2, 3]
    # A run without a teacher keeps the fingerprint it had before distillation existed.
    plain = json.loads(tiny_config(manifest, tmp_path / "plain").fingerprint())
    assert not {"teacher_sha256", "distil_weight", "distil_temperature"} & set(plain)
    assert json.loads(straight.fingerprint())["teacher_sha256"] == sha
