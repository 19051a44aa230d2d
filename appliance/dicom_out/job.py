"""The one call the pipeline makes for a DICOM job: its SEG(s) and SR from its results.

`build_job_output(inp)` reads the source's header, checks the results against the
`ImageMeta` the node analysed, and builds the SEGs then the SR that references them; the
caller writes `JobOutput.datasets` with `write_outbox`. Any refusal is a `DicomOutError`
whose `reason` the caller records (the job's own results stand either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset

from appliance.dicom_out.errors import DicomOutError
from appliance.dicom_out.seg import build_segs
from appliance.dicom_out.source import DicomOutInput, read_source
from appliance.dicom_out.sr import build_sr


@dataclass(frozen=True)
class JobOutput:
    segs: tuple[hd.seg.Segmentation, ...]
    sr: hd.sr.Comprehensive3DSR

    @property
    def datasets(self) -> list[Dataset]:
        """Every dataset to write, the SR last."""
        return [*self.segs, self.sr]


def build_job_output(inp: DicomOutInput) -> JobOutput:
    """The SEG(s) and SR of job `inp.job_id`.

    Raises:
        DicomOutError: a non-DICOM source, a source highdicom refuses, or results that do
            not belong to the analysed frames; `reason` says which.
    """
    analysed = set(inp.meta.frame_indices)
    stray = [f.frame_index for f in inp.frames if f.frame_index not in analysed]
    if stray:
        raise DicomOutError(
            f"results for frames {stray}, which the node did not analyse (frames "
            f"{sorted(analysed)}): the results do not belong to this ImageMeta"
        )
    source = read_source(inp.source_path, inp.meta)
    segs = build_segs(
        source,
        inp.frames,
        crop=inp.meta.crop,
        model_version=inp.model_version,
        device=inp.device,
    )
    sr = build_sr(
        source,
        inp.frames,
        segs,
        model_version=inp.model_version,
        device=inp.device,
        calibrated=inp.meta.pixel_spacing_mm is not None,
    )
    return JobOutput(segs=tuple(segs), sr=sr)
