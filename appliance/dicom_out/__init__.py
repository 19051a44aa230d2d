"""DICOM output of a job's results: a Segmentation (SEG) of the lesion and a Structured
Report (SR, TID 1500) of the diagnosis and measurements, written with highdicom into an
outbox for the PACS.

Modules:

- `source`: the typed input (`DicomOutInput`, `FrameResult`), reading the source's header
  (`read_source`), and the pure geometry helpers (`pad_to_stored`, `crop_from_stored`).
- `seg`: `build_segs` / `build_seg`, pure builders of `highdicom.seg.Segmentation`.
- `sr`: `build_sr`, the pure builder of a `highdicom.sr.Comprehensive3DSR`.
- `outbox`: `write_outbox`, the one writer (atomic, durable, named by job only).
- `build_job_output`: the one call the pipeline makes for a DICOM job.

Errors::

    FameNodeError
    └── DicomOutError   no SEG / SR can be written for this source: `reason` says why

PNG / JPEG / BMP inputs have no DICOM context (no patient, study or SOP identifiers to
file a result under): nothing is written to the outbox for them; the results folder's
mask PNGs and result.json remain the record. `read_source` refuses such a file with a
`DicomOutError` that says so.
"""

from __future__ import annotations

from appliance.dicom_out.errors import DicomOutError
from appliance.dicom_out.job import JobOutput, build_job_output
from appliance.dicom_out.outbox import write_outbox
from appliance.dicom_out.seg import build_seg, build_segs
from appliance.dicom_out.source import (
    DeviceInfo,
    DicomOutInput,
    FrameResult,
    crop_from_stored,
    load_mask_png,
    pad_to_stored,
    read_source,
)
from appliance.dicom_out.sr import build_sr

__all__ = [
    "DeviceInfo",
    "DicomOutError",
    "DicomOutInput",
    "FrameResult",
    "JobOutput",
    "build_job_output",
    "build_seg",
    "build_segs",
    "build_sr",
    "crop_from_stored",
    "load_mask_png",
    "pad_to_stored",
    "read_source",
    "write_outbox",
]
