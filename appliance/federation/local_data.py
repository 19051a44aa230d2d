"""The node's local training data: reviewed cases, and labelled manifests, as arrays.

`load_local_data(config)` gives `LocalData`: ``train`` and ``heldout``, two
`trainer.data.ArraySet` (images preprocessed with the active bundle's own parameters, the
masks letterboxed the same way, labels as indices into `CLASSES`, and names that are
opaque ids such as ``job-12/frame-0``: never file names).

Where the cases come from:

* `ReviewStore.training_set()`: every frame whose current review is confirmed or
  corrected, with the clinician's label and mask (the model's mask when it was confirmed).
  The image is read only from bytes whose sha256 is the job's, the bytes that were
  analysed and reviewed: the node's kept training copy (``work/federation/cases/<sha256>``),
  else the job's spool copy, else the inbox file copied there while hashed
  (`appliance.ingest.snapshot.Spool`: no links, no special files). The pipeline keeps
  every done job's spool copy there (`appliance.federation.training_spool`), so a case
  reviewed after its inbox file was removed is still trained on. An inbox path may hold
  other content by now (a PACS re-export under the same name): such a case is skipped and
  counted, never trained on. Copies are kept while their case is in the training set,
  else for the review window, within a size bound (`training_spool.prune`).
* the manifests in ``federation.manifests``: split ``train`` is trained on, ``val`` is
  held out, ``test`` is never read (the site's own test set stays untouched).

Reviewed cases are split by `appliance.federation.heldout` (by patient where the DICOM
names one, else by job; assigned once and stored). A frame that cannot be used (bytes
gone or changed, the mask missing or of another size, an unknown label, a decoding error)
is skipped and counted in ``LocalData.skipped`` by reason; nothing names the file.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from appliance.config import NodeConfig
from appliance.errors import FameNodeError, InputError, TransientError
from appliance.federation.heldout import HeldoutAssignments
from appliance.federation.training_spool import CASES_FOLDER, prune
from appliance.ingest.snapshot import Spool
from appliance.io.reader import read_file
from appliance.preprocess import PreprocessParams, letterbox_mask, preprocess
from appliance.privacy import Pseudonymizer
from appliance.service import read_limits
from appliance.store.db import Database
from appliance.store.reviews import ReviewStore, TrainingExample
from trainer.data import ArraySet, DataError, load_example, load_grey, read_manifest
from trainer.models.classifier import CLASSES


@dataclass(frozen=True)
class LocalData:
    """What this node can train on now, and what it keeps to validate global models."""

    train: ArraySet
    heldout: ArraySet
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> frames
    reason: str = ""  # why there is nothing to train on (empty when there is)

    @property
    def empty(self) -> bool:
        """True when there is nothing to train on; `reason` says why."""
        return len(self.train) == 0


@dataclass(frozen=True)
class _Case:
    image: NDArray[np.float32]
    mask: NDArray[np.uint8]
    label: int
    name: str
    group: str


def load_local_data(config: NodeConfig, *, params: PreprocessParams | None = None) -> LocalData:
    """The node's train / held-out arrays (see the module docstring).

    `params` defaults to the active model's preprocessing (`ModelRegistry`), so training
    sees what that model's inference sees.

    Raises:
        StoreError: the store cannot be read.
        BundleError: no `params` given and the active model cannot be verified.
        DataError: a configured manifest is malformed or names a missing file.
    """
    params = params or _active_params(config)
    skipped: Counter[str] = Counter()
    reviewed = _reviewed_cases(config, params, skipped)
    with HeldoutAssignments(config.database_path) as assignments:
        held = assignments.assign((c.group for c in reviewed), config.federation.heldout_share)
    train = [c for c in reviewed if not held[c.group]]
    heldout = [c for c in reviewed if held[c.group]]
    for i, manifest in enumerate(config.federation.manifests):
        m_train, m_val = _manifest_cases(_under_root(config, manifest), i, params)
        train += m_train
        heldout += m_val
    reason = ""
    if not train:
        reason = (
            "no training cases: no result has been confirmed or corrected by a clinician"
            if not reviewed and not skipped
            else f"no training cases: {len(reviewed)} reviewed case(s) usable, all held "
            "out" + (f"; {sum(skipped.values())} skipped ({_said(skipped)})" if skipped else "")
        )
        if config.federation.manifests and not reviewed:
            reason += "; the configured manifests have no train split"
    return LocalData(
        train=_arrays(train, params.size),
        heldout=_arrays(heldout, params.size),
        skipped=dict(skipped),
        reason=reason,
    )


def _active_params(config: NodeConfig) -> PreprocessParams:
    from appliance.models.registry import ModelRegistry  # the registry imports much

    with ModelRegistry(config) as registry:
        bundle = registry.load(registry.active().path)
    return bundle.manifest.preprocess_params()


def _under_root(config: NodeConfig, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else config.paths.root.expanduser() / path


def _reviewed_cases(
    config: NodeConfig, params: PreprocessParams, skipped: Counter[str]
) -> list[_Case]:
    with ReviewStore(config.database_path) as reviews:
        examples = reviews.training_set()
    jobs = _job_facts(config.database_path, sorted({e.job_id for e in examples}))
    pseudonym = Pseudonymizer.from_dir(config.folder("work"))
    kept = Spool(config.folder("work") / CASES_FOLDER)
    spool = Spool(config.folder("work") / "spool")
    cases: list[_Case] = []
    for ex in examples:
        spool_path, size, patient = jobs.get(ex.job_id, (None, None, None))
        source = _verified_source(ex, spool_path, size, kept, spool, config)
        if source is None:
            skipped["its bytes are gone or changed since it was analysed"] += 1
            continue
        try:
            case = _case(ex, source, params, config)
        except _Skip as why:
            skipped[str(why)] += 1
            continue
        group = pseudonym(patient, "patient") if patient else f"job:{ex.job_id}"
        cases.append(
            _Case(case[0], case[1], case[2], f"job-{ex.job_id}/frame-{ex.frame_index}", group)
        )
    prune(kept.folder, {ex.sha256 for ex in examples if ex.sha256})
    return cases


def _job_facts(
    db_path: Path, job_ids: Sequence[int]
) -> dict[int, tuple[Path | None, int | None, str | None]]:
    """Per job: its spool copy, its size and the DICOM Patient ID (None where not given)."""
    if not job_ids:
        return {}
    marks = ", ".join("?" for _ in job_ids)
    with Database(db_path) as db, db.read() as conn:
        rows = conn.execute(
            f"SELECT j.id, j.spool_path, j.size, i.patient_id FROM jobs j "
            f"LEFT JOIN images i ON i.job_id = j.id WHERE j.id IN ({marks})",
            tuple(job_ids),
        ).fetchall()
    return {
        int(r[0]): (
            None if r[1] is None else Path(r[1]),
            None if r[2] is None else int(r[2]),
            (r[3] or "").strip() or None,
        )
        for r in rows
    }


def _verified_source(
    ex: TrainingExample,
    spool_path: Path | None,
    size: int | None,
    kept: Spool,
    spool: Spool,
    config: NodeConfig,
) -> Path | None:
    """A file holding exactly the bytes the job analysed (sha256), or None."""
    if not ex.sha256:
        return None
    for candidate in (kept.path_for(ex.sha256), spool_path, spool.path_for(ex.sha256)):
        if candidate is not None and _sha256_of(candidate) == ex.sha256:
            return candidate
    try:
        snap = kept.take(ex.image_path, max_bytes=size or config.ingest.max_input_bytes)
    except (InputError, TransientError):
        return None
    if snap.sha256 != ex.sha256:
        kept.remove(snap.spool_path)  # other content under the old name: not this case
        return None
    return snap.spool_path


def _sha256_of(path: Path) -> str | None:
    """The file's sha256, read without following a link; None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Skip(Exception):
    """This frame cannot be trained on; the message is the counted reason (no names)."""


def _case(
    ex: TrainingExample, source: Path, params: PreprocessParams, config: NodeConfig
) -> tuple[NDArray[np.float32], NDArray[np.uint8], int]:
    if ex.label not in CLASSES:
        raise _Skip(f"label {ex.label!r} is not one of the model's classes {CLASSES}")
    try:
        # The same limits the service reads with; the copy has lost its suffix.
        loaded = read_file(source, limits=read_limits(config), claimed_suffix=ex.image_path.suffix)
    except FameNodeError:
        raise _Skip("it can no longer be decoded within the node's limits") from None
    if ex.frame_index not in loaded.meta.frame_indices:
        raise _Skip("its frame is not among those read under processing.max_frames")
    frame = loaded.frames[loaded.meta.frame_indices.index(ex.frame_index)]
    try:
        mask = load_grey(ex.mask_path) > 0
    except OSError:
        raise _Skip("its mask file is missing or unreadable") from None
    if mask.shape != frame.shape[:2]:
        raise _Skip("its mask does not have the frame's size")
    image, _ = preprocess(frame, params)
    return image, letterbox_mask(mask, params.size), CLASSES.index(ex.label)


def _manifest_cases(
    manifest: Path, index: int, params: PreprocessParams
) -> tuple[list[_Case], list[_Case]]:
    train: list[_Case] = []
    val: list[_Case] = []
    for record in read_manifest(manifest):
        if record.split not in ("train", "val"):
            continue  # the test split is never read
        image, mask = load_example(record, params)
        name = f"manifest-{index}/line-{record.line}"
        case = _Case(image, mask, CLASSES.index(record.label), name, name)
        (train if record.split == "train" else val).append(case)
    return train, val


def _arrays(cases: Sequence[_Case], size: int) -> ArraySet:
    if not cases:
        return ArraySet(
            images=np.zeros((0, size, size), np.float32),
            masks=np.zeros((0, size, size), np.uint8),
            labels=np.zeros((0,), np.int64),
            names=(),
        )
    return ArraySet(
        images=np.stack([c.image for c in cases]).astype(np.float32, copy=False),
        masks=np.stack([c.mask for c in cases]).astype(np.uint8, copy=False),
        labels=np.asarray([c.label for c in cases], dtype=np.int64),
        names=tuple(c.name for c in cases),
    )


def _said(counts: Counter[str]) -> str:
    return "; ".join(f"{n} {why}" for why, n in counts.most_common())


__all__ = ["DataError", "LocalData", "load_local_data"]
