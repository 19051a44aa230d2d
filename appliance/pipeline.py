"""One job through the node: read, analyse, write results, record the outcome.

A thin stage: reading is `appliance.io.reader`, analysis is `appliance.analysis`, files
are `appliance.results.writers`, state is the store. Every job ends in exactly one
terminal state: ``done``, ``rejected`` (bad input: the reason says what and what to do),
``duplicate`` (same content or SOP Instance UID as an earlier job) or ``failed`` (an
unexpected internal error; logged with a traceback). The inbox file is never changed;
a rejected one is copied to ``quarantine/``.

The model can be swapped while jobs run (`swap_analyzer`): each job takes one snapshot of
the analyzer when it starts and uses it for everything (inference, the backend and the
model version recorded with its results), so a job is never half one model, half another.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.analysis import Analyzer, FrameAnalysis
from appliance.errors import InputError
from appliance.io.reader import read_file
from appliance.io.types import LoadedImage
from appliance.privacy import Pseudonymizer
from appliance.results.writers import job_result_dir, write_frame_files, write_result_json
from appliance.store.jobs import Job, JobQueue
from appliance.store.results import FrameResultRow, ResultStore

log = logging.getLogger("fame_node.pipeline")


@dataclass(frozen=True)
class PipelineSettings:
    results_dir: Path
    quarantine_dir: Path
    max_frames: int
    max_image_pixels: int
    copy_rejected: bool = True


class Pipeline:
    def __init__(
        self,
        settings: PipelineSettings,
        analyzer: Analyzer,
        queue: JobQueue,
        results: ResultStore,
        pseudonym: Pseudonymizer,
    ) -> None:
        self.settings = settings
        self.analyzer = analyzer
        self.queue = queue
        self.results = results
        self.pseudonym = pseudonym

    @property
    def model_version(self) -> str:
        return self.analyzer.bundle.version_label

    def swap_analyzer(self, analyzer: Analyzer) -> Analyzer:
        """Make `analyzer` the one new jobs use; returns the previous one.

        One attribute assignment (atomic in CPython): jobs already running keep the
        analyzer they took, the next `process` call takes this one.
        """
        previous = self.analyzer
        self.analyzer = analyzer
        return previous

    def process(self, job: Job) -> None:
        """Process one claimed (running) job to a terminal state. Never raises."""
        analyzer = self.analyzer  # the one snapshot this job uses throughout
        tag = f"job {job.id} ({self.pseudonym(Path(job.path).name, 'file')})"
        try:
            self._process(job, tag, analyzer)
        except Exception as exc:  # the service must survive anything one file does
            log.exception("%s failed with an internal error", tag)
            self.queue.mark_failed(
                job.id,
                "internal_error",
                f"internal error while processing ({type(exc).__name__}: {exc}). The file is "
                "still in the inbox; report this with the node log.",
            )

    def _process(self, job: Job, tag: str, analyzer: Analyzer) -> None:
        path = Path(job.path)
        try:
            loaded = read_file(
                path,
                max_frames=self.settings.max_frames,
                max_pixels=self.settings.max_image_pixels,
            )
        except InputError as exc:
            self._reject(job, path, exc, tag)
            return
        uid = loaded.meta.sop_instance_uid
        if uid:
            earlier = self.queue.claim_sop_uid(job.id, uid)
            if earlier is not None and earlier != job.id:
                self.queue.mark_duplicate(
                    job.id,
                    earlier,
                    f"same SOP Instance UID as job {earlier}: this image was already "
                    "received (a re-send from the PACS); not processed again",
                )
                log.info("%s: duplicate of job %d (same SOP Instance UID)", tag, earlier)
                return
        analyses = analyzer.analyse(
            loaded.frames, loaded.meta.pixel_spacing_mm, loaded.meta.frame_indices
        )
        rows = self._write_files(job, loaded, analyses, analyzer)
        self.results.save_completed(
            job.id, loaded.meta, rows, analyzer.bundle.version_label, analyzer.backend.device
        )
        first = analyses[0].diagnosis
        log.info(
            "%s done: %d frame(s), first frame %s (p=%.2f)%s",
            tag,
            len(analyses),
            first.label,
            first.confidence,
            f" flags={list(first.flags)}" if first.flags else "",
        )

    def _reject(self, job: Job, path: Path, exc: InputError, tag: str) -> None:
        copy: str | None = None
        if self.settings.copy_rejected and path.is_file():
            dest = self.settings.quarantine_dir / f"job-{job.id:06d}{path.suffix}"
            try:
                self.settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
                copy = str(dest)
            except OSError as err:
                log.warning("%s: could not copy to quarantine: %s", tag, err.strerror)
        self.queue.mark_rejected(job.id, exc.code, exc.reason, quarantine_path=copy)
        log.warning("%s rejected (%s): %s", tag, exc.code, exc.reason)

    def _write_files(
        self, job: Job, loaded: LoadedImage, analyses: list[FrameAnalysis], analyzer: Analyzer
    ) -> list[FrameResultRow]:
        out_dir = job_result_dir(self.settings.results_dir, job.id)
        rows: list[FrameResultRow] = []
        frames_json: list[dict[str, Any]] = []
        for frame, a in zip(loaded.frames, analyses, strict=True):
            files = write_frame_files(out_dir, a.frame_index, frame, a.findings.mask)
            f = a.findings
            record = {
                "frame_index": a.frame_index,
                "diagnosis": a.diagnosis.label,
                "confidence": a.diagnosis.confidence,
                "probabilities": a.diagnosis.probabilities,
                "flags": list(a.diagnosis.flags),
                "n_lesions": f.n_lesions,
                "lesion_area_px": f.area_px,
                "lesion_area_mm2": f.area_mm2,
                "max_diameter_px": f.max_diameter_px,
                "max_diameter_mm": f.max_diameter_mm,
                "mask": files.mask.name,
                "overlay": files.overlay.name,
            }
            frames_json.append(record)
            rows.append(
                FrameResultRow(
                    frame_index=a.frame_index,
                    diagnosis=a.diagnosis.label,
                    probabilities=a.diagnosis.probabilities,
                    confidence=a.diagnosis.confidence,
                    lesion_area_px=f.area_px,
                    lesion_area_mm2=f.area_mm2,
                    max_diameter_px=f.max_diameter_px,
                    max_diameter_mm=f.max_diameter_mm,
                    n_lesions=f.n_lesions,
                    flags=list(a.diagnosis.flags),
                    result_dir=str(out_dir),
                )
            )
        meta = loaded.meta
        write_result_json(
            out_dir,
            {
                "job_id": job.id,
                "source": {"file": Path(job.path).name, "sha256": job.sha256},
                "image": {
                    "format": meta.source_format,
                    "modality": meta.modality,
                    "study_instance_uid": meta.study_instance_uid,
                    "sop_instance_uid": meta.sop_instance_uid,
                    "pixel_spacing_mm": meta.pixel_spacing_mm,
                    "crop": meta.crop,
                    "frames_total": meta.n_frames_total,
                    "frames_analysed": list(meta.frame_indices),
                    "notes": list(meta.notes),
                },
                "model": analyzer.bundle.version_label,
                "backend": analyzer.backend.device,
                "mask_threshold": analyzer.threshold,
                "lesion_size_units": "mm" if meta.pixel_spacing_mm else "px",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            frames_json,
        )
        return rows
