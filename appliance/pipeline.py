"""One job through the node: read, analyse, write results, record the outcome.

A thin stage: decoding is the `Decode` callable it is given (the service passes a
sandboxed decoder), analysis is `appliance.analysis`, files are `appliance.results.
writers`, state is the store. The job is read from the node's spool copy, the bytes that
were hashed when it was queued, never from the inbox file again.

Every job ends in exactly one terminal state, or goes back to the queue:

* ``done``: results stored. A DICOM whose SOP Instance UID another job holds for another
  instance (`appliance.store.instances`) is analysed on its own and flagged
  ``uid_conflict``; its results are its own.
* ``rejected``: bad input; the reason says what and what to do. The spool copy goes to
  ``quarantine/`` within its limits.
* ``duplicate``: the same instance as an earlier job (same UID, patient, study, pixels).
* ``failed``: an unexpected internal error, logged with a traceback.
* back to ``queued`` with a backoff: a passing fault (`TransientError`, a database locked
  or full, a results disk full or failing). The job is retried by itself once the wait is
  over; `fame-node status` says what the node waits for.

The model can be swapped while jobs run (`swap_analyzer`): each job takes one snapshot of
the analyzer when it starts and uses it for everything (inference, the backend and the
model version recorded with its results), so a job is never half one model, half another.

Log lines name a job by its id and the file's pseudonym only.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.analysis import Analyzer, FrameAnalysis
from appliance.errors import PASSING_ERRNOS, CorruptFileError, InputError, TransientError
from appliance.health import Conditions
from appliance.ingest.snapshot import Spool
from appliance.io.types import LoadedImage
from appliance.logs import job_context
from appliance.metrics import NodeMetrics
from appliance.privacy import Pseudonymizer
from appliance.quarantine import Quarantine
from appliance.results.writers import job_result_dir, write_frame_files, write_result_json
from appliance.store.db import StoreError
from appliance.store.instances import InstanceIdentity, InstanceVerdict, identity_digest
from appliance.store.jobs import Job, JobQueue
from appliance.store.outbound import OutboundItem
from appliance.store.results import FrameResultRow, ResultStore

if TYPE_CHECKING:  # highdicom is imported only once a DICOM job is exported
    from appliance.dicom_out.stage import Exported

log = logging.getLogger("fame_node.pipeline")

Decode = Callable[[Path, str | None], LoadedImage]
"""Decode the file at the path (the spool copy); the second argument is the suffix of the
name it arrived under (for a "named .png but the content is JPEG" note). Raises
`InputError` for bad input, `TransientError` for a passing fault."""

UID_CONFLICT_FLAG = "uid_conflict"


@dataclass(frozen=True)
class PipelineSettings:
    results_dir: Path
    quarantine_dir: Path
    copy_rejected: bool = True
    quarantine_max_file_bytes: int = 64 << 20
    quarantine_max_bytes: int = 2 << 30
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    # Recording an outcome is retried this often while the database is locked or full.
    record_tries: int = 30
    # DICOM SEG / SR of each DICOM job go here (None: not written); `device_serial` names
    # this node in them.
    outbox_dir: Path | None = None
    device_serial: str = "fame-node"
    # The PACS (``AE@host:port``) the SEG / SR are queued for in the job's done transaction
    # (None: not sent; `appliance.dicom_send`).
    send_destination: str | None = None
    # With the federation on, each done job's spool copy is kept here for training
    # (`appliance.federation.training_spool`), so a case reviewed after its inbox file
    # is gone can still be trained on; None: not kept.
    training_copies: Path | None = None


@dataclass
class Pipeline:
    settings: PipelineSettings
    analyzer: Analyzer
    queue: JobQueue
    results: ResultStore
    pseudonym: Pseudonymizer
    decode: Decode
    spool: Spool
    health: Conditions = field(default_factory=Conditions)
    metrics: NodeMetrics = field(default_factory=NodeMetrics)  # latencies and outcomes
    # Waits up to the given seconds; True when the node is stopping (stop retrying then).
    wait: Callable[[float], bool] = field(default_factory=lambda: threading.Event().wait)

    def __post_init__(self) -> None:
        s = self.settings
        self.quarantine = Quarantine(
            s.quarantine_dir,
            max_file_bytes=s.quarantine_max_file_bytes,
            max_total_bytes=s.quarantine_max_bytes,
        )

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

    def tag(self, job: Job) -> str:
        return f"job {job.id} ({self.pseudonym(Path(job.path).name, 'file')})"

    def process(self, job: Job) -> None:
        """Process one claimed (running) job to its outcome. Never raises."""
        with job_context(job.id):  # JSON log records name the job
            self._run(job)

    def _run(self, job: Job) -> None:
        analyzer = self.analyzer  # the one snapshot this job uses throughout
        tag = self.tag(job)
        try:
            self._process(job, tag, analyzer)
            self.health.ok("processing")
        except Exception as exc:  # the service must survive anything one file does
            passing = _as_passing(exc, self.settings.results_dir)
            if passing is not None:
                self._defer(job, tag, passing)
                return
            log.exception("%s failed with an internal error", tag)
            reason = (
                f"internal error while processing ({type(exc).__name__}: {exc}). The node kept "
                "its copy of the file; report this with the node log, then retry it with "
                f"`fame-node jobs retry {job.id}`."
            )
            self._record(lambda: self.queue.mark_failed(job.id, "internal_error", reason), tag)
            self.metrics.finished(job, "failed")

    # -- stages ----------------------------------------------------------------------------

    def _process(self, job: Job, tag: str, analyzer: Analyzer) -> None:
        try:
            source = self._source(job)
            with self.metrics.decode_seconds.time():
                loaded = self.decode(source, Path(job.path).suffix or None)
        except InputError as exc:
            self._reject(job, exc, tag)
            return
        resent, conflict_of = self._check_instance(job, loaded, tag)
        if resent:
            return
        if conflict_of is not None:
            loaded = _with_note(
                loaded,
                f"SOP Instance UID also carried by job {conflict_of}, another image (other "
                "patient, study or pixels): analysed on its own",
            )
        with self.metrics.inference_seconds.time():
            analyses = analyzer.analyse(
                loaded.frames, loaded.meta.pixel_spacing_mm, loaded.meta.frame_indices
            )
        extra_flags = conflict_flags(conflict_of)
        outbox = self._export_dicom(job, source, loaded, analyses, analyzer, conflict_of)
        if outbox is not None and outbox.note:
            log.warning("%s: %s", tag, outbox.note)
            loaded = _with_note(loaded, outbox.note)
        files = () if outbox is None else outbox.files
        rows = self._write_files(job, loaded, analyses, analyzer, conflict_of, files)
        self.results.save_completed(
            job.id,
            loaded.meta,
            rows,
            analyzer.bundle.version_label,
            analyzer.backend.device,
            outbound=outbound_items(outbox, self.settings.send_destination),
        )
        self.metrics.finished(job, "done")
        self._release(job, reviewable=True)
        first = analyses[0].diagnosis
        log.info(
            "%s done: %d frame(s), first frame %s (p=%.2f)%s",
            tag,
            len(analyses),
            first.label,
            first.confidence,
            f" flags={[*first.flags, *extra_flags]}" if first.flags or extra_flags else "",
        )

    def _check_instance(self, job: Job, loaded: LoadedImage, tag: str) -> tuple[bool, int | None]:
        """Register the DICOM instance; (True, _) when the job was a re-send and is now
        recorded as a duplicate, else (False, the job holding its UID for another image)."""
        meta = loaded.meta
        if not meta.sop_instance_uid:
            return False, None
        identity = InstanceIdentity(
            meta.sop_instance_uid,
            meta.patient_id,
            meta.study_instance_uid,
            identity_digest(loaded.frames, meta.frame_indices),
        )
        claim = self.queue.register_instance(job.id, identity)
        if claim.verdict is InstanceVerdict.RESEND and claim.other is not None:
            self.queue.mark_duplicate(
                job.id,
                claim.other,
                f"the same image as job {claim.other} (same SOP Instance UID, patient, "
                "study and pixels): a re-send from the PACS; not processed again",
            )
            log.info("%s: re-send of job %d (same instance)", tag, claim.other)
            self.metrics.finished(job, "duplicate")
            self._release(job)
            return True, None
        if claim.verdict is InstanceVerdict.CONFLICT:
            log.warning(
                "%s: SOP Instance UID already held by job %s for another instance; "
                "analysed on its own and flagged",
                tag,
                claim.other,
            )
            return False, claim.other
        return False, None

    def _export_dicom(
        self,
        job: Job,
        source: Path,
        loaded: LoadedImage,
        analyses: list[FrameAnalysis],
        analyzer: Analyzer,
        conflict_of: int | None,
    ) -> Exported | None:
        """The job's DICOM SEG / SR in the outbox, durable before the job is done; None
        for an input that gets none (not DICOM, or DICOM output turned off)."""
        s = self.settings
        if s.outbox_dir is None or loaded.meta.source_format != "dicom":
            return None
        from appliance.dicom_out.source import DeviceInfo  # highdicom: only for DICOM jobs
        from appliance.dicom_out.stage import export_job

        return export_job(
            s.outbox_dir,
            job.id,
            source,
            loaded.meta,
            analyses,
            conflict_flags(conflict_of),
            analyzer.bundle.version_label,
            DeviceInfo(serial_number=s.device_serial),
            conflict_of=conflict_of,
        )

    def _source(self, job: Job) -> Path:
        """The bytes this job was queued with: its spool copy, checked against its hash.

        A job queued before the node kept copies (or whose copy was lost) is taken from
        the inbox file only if that still holds the very bytes that were hashed.
        """
        copy = job.spool_path or (self.spool.path_for(job.sha256) if job.sha256 else None)
        if copy is not None and copy.is_file():
            return copy
        if job.sha256:
            try:
                snap = self.spool.take(Path(job.path), max_bytes=job.size or (1 << 30))
            except InputError:
                snap = None
            if snap is not None and snap.sha256 == job.sha256:
                return snap.spool_path
            if snap is not None:
                self._forget_copy(snap.spool_path)
        raise CorruptFileError(
            "the node's copy of this file is gone and the file in the inbox no longer holds "
            "the bytes that were queued (it was changed or removed); drop the image again",
        )

    def _reject(self, job: Job, exc: InputError, tag: str) -> None:
        copy: Path | None = None
        source = job.spool_path
        if self.settings.copy_rejected and source is not None and source.is_file():
            try:
                kept = self.quarantine.keep(job.id, source, Path(job.path).name)
                copy = kept.path
                if kept.note:
                    log.warning("%s: %s", tag, kept.note)
            except OSError as err:
                log.warning("%s: could not copy to quarantine: %s", tag, err.strerror)
        self.queue.mark_rejected(job.id, exc.code, exc.reason, quarantine_path=copy)
        self.metrics.finished(job, "rejected")
        self._release(job)
        log.warning("%s rejected (%s): %s", tag, exc.code, exc.reason)

    def _defer(self, job: Job, tag: str, exc: TransientError) -> None:
        delay = min(
            self.settings.retry_max_s, self.settings.retry_initial_s * (2 ** min(job.retries, 20))
        )
        delay = max(delay, exc.retry_after_s if job.retries == 0 else 0.0)
        self.health.report("processing", exc.condition)
        log.warning("%s waits for %s (%s); retried in %.0f s", tag, exc.condition, exc, delay)
        self._record(lambda: self.queue.defer(job.id, exc.condition, delay), tag)
        self.metrics.finished(job, "deferred")

    def _record(self, action: Callable[[], object], tag: str) -> None:
        """Run a store write, retrying while the database is locked or full.

        If it still cannot be written (or the node stops meanwhile), the job stays
        ``running``: the service puts it back in the queue at stop or at the next start.
        """
        pause = 0.5
        for _ in range(self.settings.record_tries):
            try:
                action()
                return
            except StoreError as exc:
                if not exc.transient:
                    raise
                self.health.report("processing", "the database (locked or full)")
                log.warning("%s: cannot record the outcome yet (%s); trying again", tag, exc)
            if self.wait(pause):
                return
            pause = min(pause * 2, 10.0)

    def _release(self, job: Job, *, reviewable: bool = False) -> None:
        try:
            copy = self.queue.release_spool(job.id)
        except StoreError:
            return  # kept: a later release or `jobs` housekeeping removes it
        if copy is not None:
            folder = self.settings.training_copies
            if reviewable and folder is not None and job.sha256:
                from appliance.federation.training_spool import keep_for_review

                keep_for_review(copy, job.sha256, folder, self._training_shas)
            self._forget_copy(copy)

    def _training_shas(self) -> set[str]:
        from appliance.store.reviews import ReviewStore

        with ReviewStore(self.queue.path) as reviews:
            return {e.sha256 for e in reviews.training_set() if e.sha256}

    def _forget_copy(self, copy: Path) -> None:
        if not self.queue.spool_in_use(copy):
            self.spool.remove(copy)

    def _write_files(
        self,
        job: Job,
        loaded: LoadedImage,
        analyses: list[FrameAnalysis],
        analyzer: Analyzer,
        conflict_of: int | None,
        outbox_files: tuple[Path, ...] = (),
    ) -> list[FrameResultRow]:
        extra_flags = conflict_flags(conflict_of)
        out_dir = job_result_dir(self.settings.results_dir, job.id)
        rows: list[FrameResultRow] = []
        frames_json: list[dict[str, Any]] = []
        for frame, a in zip(loaded.frames, analyses, strict=True):
            # No folder sync per frame: write_result_json syncs the folder once, last.
            files = write_frame_files(
                out_dir, a.frame_index, frame, a.findings.mask, sync_dir=False
            )
            f = a.findings
            flags = [*a.diagnosis.flags, *extra_flags]
            record = {
                "frame_index": a.frame_index,
                "diagnosis": a.diagnosis.label,
                "confidence": a.diagnosis.confidence,
                "probabilities": a.diagnosis.probabilities,
                "flags": flags,
                "ood_score": a.ood_score,  # out_of_distribution above the bundle's threshold
                # A fold ensemble's disagreement in [0, 1] (None: a single model);
                # high_uncertainty above the bundle's uncertainty_threshold.
                "seg_uncertainty": a.seg_uncertainty,
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
                    flags=flags,
                    result_dir=str(out_dir),
                    seg_uncertainty=a.seg_uncertainty,
                )
            )
        meta = loaded.meta
        write_result_json(
            out_dir,
            {
                "job_id": job.id,
                # The file's name stays in the node's database: names carry patient data.
                "source": {"sha256": job.sha256, "size": job.size},
                "image": {
                    "format": meta.source_format,
                    "modality": meta.modality,
                    "study_instance_uid": meta.study_instance_uid,
                    "sop_instance_uid": meta.sop_instance_uid,
                    "uid_conflict_with_job": conflict_of,
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
                "dicom_out": [p.name for p in outbox_files],
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
            frames_json,
        )
        return rows


def outbound_items(exported: Exported | None, destination: str | None) -> list[OutboundItem]:
    """The job's SEG / SR to queue for `destination` (none when nothing is sent)."""
    if exported is None or destination is None:
        return []
    return [OutboundItem(k, p, uid, destination) for k, p, uid in exported.objects()]


def conflict_flags(conflict_of: int | None) -> tuple[str, ...]:
    """The flags a job gets for sharing its SOP Instance UID with job `conflict_of`."""
    return () if conflict_of is None else (UID_CONFLICT_FLAG,)


def _with_note(loaded: LoadedImage, note: str) -> LoadedImage:
    return replace(loaded, meta=replace(loaded.meta, notes=(*loaded.meta.notes, note)))


def _as_passing(exc: BaseException, results_dir: Path) -> TransientError | None:
    """`exc` as the passing fault it is, or None for a real internal error."""
    if isinstance(exc, TransientError):
        return exc
    if isinstance(exc, StoreError) and exc.transient:
        return TransientError(str(exc), condition="the database (locked or full)")
    if isinstance(exc, OSError) and exc.errno in PASSING_ERRNOS:
        what = "disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "its disk"
        return TransientError(
            f"cannot write results ({exc.strerror})",
            condition=f"{what} in {results_dir}",
            retry_after_s=5.0,
        )
    return None
