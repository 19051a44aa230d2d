"""The pipeline's DICOM-out stage: a done DICOM job's SEG and SR into the outbox.

`export_job` turns the job's analyses into `DicomOutInput`, builds the SEG(s) and SR and
writes them durably, before the job is committed done. It answers with the files written
or, when none can be, a note for the job (`ImageMeta.notes`, shown in the GUI and
`result.json`) saying why; the job's own results stand either way. Nothing is written for:

* PNG / JPEG / BMP inputs (no DICOM context: no patient, study or SOP identifiers);
* a job flagged ``uid_conflict``: its SOP Instance UID is carried by another image, so a SEG
  referencing it could be shown over the other image in the PACS.

An OS error while writing (disk full) is raised: the pipeline retries the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.analysis import FrameAnalysis
from appliance.dicom_out.errors import DicomOutError
from appliance.dicom_out.job import build_job_output
from appliance.dicom_out.outbox import write_outbox
from appliance.dicom_out.source import DeviceInfo, DicomOutInput, FrameResult
from appliance.io.types import ImageMeta


@dataclass(frozen=True)
class Exported:
    files: tuple[Path, ...] = ()
    note: str | None = None  # why nothing was written, for the job's notes
    # The SOP Instance UID of each of `files`, in the same order (the send queue's record).
    sop_instance_uids: tuple[str, ...] = ()

    def objects(self) -> list[tuple[str, Path, str]]:
        """(kind ``seg`` / ``sr``, file, SOP Instance UID) of each file written."""
        return [
            ("sr" if path.name.endswith("-sr.dcm") else "seg", path, uid)
            for path, uid in zip(self.files, self.sop_instance_uids, strict=True)
        ]


def export_job(
    outbox: Path,
    job_id: int,
    source: Path,
    meta: ImageMeta,
    analyses: Sequence[FrameAnalysis],
    flags: tuple[str, ...],
    model_version: str,
    device: DeviceInfo,
    *,
    conflict_of: int | None = None,
) -> Exported:
    """Write job `job_id`'s SEG and SR for the PACS; see the module docstring."""
    if meta.source_format != "dicom":
        return Exported()
    if conflict_of is not None:
        return Exported(
            note=f"no DICOM SEG / SR written: job {conflict_of} carries the same SOP Instance "
            "UID, so a result referencing it could be shown over the other image in the PACS"
        )
    frames = tuple(
        FrameResult(
            frame_index=a.frame_index,
            mask=a.findings.mask,
            diagnosis=a.diagnosis.label,
            probabilities=a.diagnosis.probabilities,
            confidence=a.diagnosis.confidence,
            lesion_area_px=a.findings.area_px,
            max_diameter_px=a.findings.max_diameter_px,
            lesion_area_mm2=a.findings.area_mm2,
            max_diameter_mm=a.findings.max_diameter_mm,
            flags=(*a.diagnosis.flags, *flags),
        )
        for a in analyses
    )
    inp = DicomOutInput(job_id, source, meta, frames, model_version, device)
    try:
        output = build_job_output(inp)
    except DicomOutError as exc:
        return Exported(note=f"no DICOM SEG / SR written: {exc.reason}")
    datasets = output.datasets  # SR last already: write_outbox keeps this order
    paths = write_outbox(outbox, job_id, datasets)
    return Exported(
        files=tuple(paths), sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets)
    )
