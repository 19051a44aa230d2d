"""The outbox writer: a job's SEG / SR files, each whole on disk or absent, named by job.

Names carry the job id only, never patient data (names end up in listings, logs and the
sender's queue): ``job-NNNNNN-seg.dcm`` for the SEG of a still image,
``job-NNNNNN-seg-frame_FFF.dcm`` for the SEG of frame FFF (0-based, as the results
folder's ``frame_FFF_mask.png``) of a cine, ``job-NNNNNN-sr.dcm`` for the SR. Each file is
written with `write_atomic` (temporary name, fsync, rename) and the folder synced once
after the last, so a sender that lists the outbox sees complete files only, and they are
all on disk when this returns. The SR is written last: it references the SEGs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset

from appliance.dicom_out.errors import DicomOutError
from appliance.results.durable import make_folder, sync_folder, write_atomic


def outbox_name(job_id: int, ds: Dataset) -> str:
    """The file name of `ds` (a SEG or SR of job `job_id`) in the outbox.

    Raises:
        DicomOutError: `ds` is neither a SEG nor an SR, or the job id is negative.
    """
    if job_id < 0:
        raise DicomOutError(f"job_id must be >= 0, got {job_id}")
    stem = f"job-{job_id:06d}"
    modality = str(ds.get("Modality", ""))
    if modality == "SR":
        return f"{stem}-sr.dcm"
    if modality == "SEG":
        frame = _referenced_frame(ds)
        return f"{stem}-seg.dcm" if frame is None else f"{stem}-seg-frame_{frame - 1:03d}.dcm"
    raise DicomOutError(f"the outbox takes SEG and SR datasets only, got Modality {modality!r}")


def write_outbox(folder: Path, job_id: int, datasets: Sequence[Dataset]) -> list[Path]:
    """Write `datasets` (SEGs and an SR of one job) into `folder`; their paths, in order.

    The folder (and missing parents) is created durably. An existing file of the same
    name (a retried job) is replaced whole.

    Raises:
        DicomOutError: a dataset is not a SEG / SR, or two would get the same name.
        OSError: the file system refuses (disk full, permissions): nothing half-written
            stays under a final name.
    """
    ordered = sorted(datasets, key=lambda ds: str(ds.get("Modality", "")) == "SR")
    names = [outbox_name(job_id, ds) for ds in ordered]
    if len(set(names)) != len(names):
        raise DicomOutError(f"two datasets of job {job_id} would share a name: {names}")
    make_folder(folder)
    paths = []
    for name, ds in zip(names, ordered, strict=True):
        path = folder / name
        write_atomic(path, _saver(ds), sync_dir=False)
        paths.append(path)
    sync_folder(folder)
    return paths


def _saver(ds: Dataset) -> Callable[[BinaryIO], None]:
    def save(fh: BinaryIO) -> None:
        ds.save_as(fh, enforce_file_format=True)

    return save


def _referenced_frame(ds: Dataset) -> int | None:
    """The source frame number a one-frame SEG of a cine refers to, else None."""
    groups = ds.get("PerFrameFunctionalGroupsSequence") or []
    for group in groups:
        for derivation in group.get("DerivationImageSequence") or []:
            for src in derivation.get("SourceImageSequence") or []:
                if "ReferencedFrameNumber" in src:
                    return int(src.ReferencedFrameNumber)
    return None
