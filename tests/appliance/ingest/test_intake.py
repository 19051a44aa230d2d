"""Intake: copy a candidate file into the spool while hashing it, and queue the copy; or
record why it cannot be taken."""

from __future__ import annotations

import getpass
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import TransientError
from appliance.ingest import Intake
from appliance.ingest.snapshot import FileStillChangingError, Spool
from appliance.store import EnqueueOutcome, Job, JobQueue, JobStatus


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    with JobQueue(tmp_path / "node.sqlite3") as q:
        yield q


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "work" / "spool")


@pytest.fixture
def intake(queue: JobQueue, spool: Spool, inbox: Path) -> Intake:
    return Intake(queue, spool, inbox=inbox)


def outcome_of(result: EnqueueOutcome | Job) -> EnqueueOutcome:
    assert isinstance(result, EnqueueOutcome), result
    return result


def rejection_of(result: EnqueueOutcome | Job, code: str = "unreadable") -> Job:
    assert isinstance(result, Job), result
    assert result.status is JobStatus.REJECTED and result.error_code == code, result
    return result


def test_a_file_is_copied_and_hashed_in_chunks_and_queued(
    queue: JobQueue, inbox: Path, tmp_path: Path
) -> None:
    content = os.urandom(10_000)
    path = inbox / "a.dcm"
    path.write_bytes(content)
    spool = Spool(tmp_path / "spool", chunk_size=4096)
    outcome = outcome_of(Intake(queue, spool, inbox=inbox).submit(path))
    assert outcome.queued
    job = outcome.job
    assert job.sha256 == hashlib.sha256(content).hexdigest()
    assert (job.path, job.size, job.mtime_ns) == (path, 10_000, path.stat().st_mtime_ns)
    assert job.spool_path == spool.path_for(job.sha256)
    assert job.spool_path.read_bytes() == content
    assert [p.name for p in spool.folder.iterdir()] == [job.sha256]  # no .tmp left


def test_the_copy_keeps_the_bytes_queued_when_the_inbox_file_is_replaced(
    intake: Intake, inbox: Path
) -> None:
    path = inbox / "US0001.dcm"
    path.write_bytes(b"patient A's image")
    first = outcome_of(intake.submit(path)).job
    path.write_bytes(b"patient B's image, re-exported under the same name")
    second = outcome_of(intake.submit(path)).job
    assert second.id != first.id and second.sha256 != first.sha256  # new content, new job
    assert first.spool_path is not None and second.spool_path is not None
    assert first.spool_path.read_bytes() == b"patient A's image"
    assert second.spool_path.read_bytes().startswith(b"patient B's")


def test_same_content_under_another_name_is_a_duplicate_without_a_second_copy(
    intake: Intake, inbox: Path, spool: Spool
) -> None:
    (inbox / "a.png").write_bytes(b"same bytes")
    (inbox / "b.png").write_bytes(b"same bytes")
    first = outcome_of(intake.submit(inbox / "a.png"))
    second = outcome_of(intake.submit(inbox / "b.png"))
    assert second.duplicate_of == first.id and second.status is JobStatus.DUPLICATE
    assert second.job.spool_path is None
    assert first.job.spool_path is not None and first.job.spool_path.is_file()
    assert len(list(spool.folder.iterdir())) == 1


def test_the_same_file_again_records_nothing_new(intake: Intake, inbox: Path) -> None:
    path = inbox / "a.png"
    path.write_bytes(b"bytes")
    first = outcome_of(intake.submit(path))
    again = outcome_of(intake.submit(path))  # e.g. the scan at the next start
    assert again.already_seen and not again.queued and again.id == first.id
    assert sum(intake.queue.counts().values()) == 1
    path.write_bytes(b"new bytes")  # rewritten in place: a new file
    assert outcome_of(intake.submit(path)).queued


def test_a_zero_byte_file_is_queued_for_the_reader_to_judge(intake: Intake, inbox: Path) -> None:
    path = inbox / "empty.dcm"
    path.touch()
    outcome = outcome_of(intake.submit(path))
    assert outcome.queued and outcome.job.size == 0
    assert outcome.job.sha256 == hashlib.sha256(b"").hexdigest()


def test_a_vanished_file_is_recorded_as_rejected(intake: Intake, inbox: Path) -> None:
    job = rejection_of(intake.submit(inbox / "gone.dcm"))
    assert "no longer exists" in str(job.reason) and "deleted" in str(job.reason)
    assert "drop it again" in str(job.reason)
    # When it comes back it is queued: an unreadable rejection does not block it.
    (inbox / "gone.dcm").write_bytes(b"back")
    assert outcome_of(intake.submit(inbox / "gone.dcm")).queued


def test_an_unreadable_file_names_the_user_to_grant_access(intake: Intake, inbox: Path) -> None:
    path = inbox / "secret.dcm"
    path.write_bytes(b"x")
    path.chmod(0)
    try:
        try:
            path.read_bytes()
        except PermissionError:
            pass
        else:  # root, or CAP_DAC_OVERRIDE: permissions cannot be denied here
            pytest.skip("this process reads files whatever their permissions (root)")
        job = rejection_of(intake.submit(path))
    finally:
        path.chmod(0o644)
    assert f"'{getpass.getuser()}'" in str(job.reason)
    assert "read access" in str(job.reason) and "again" in str(job.reason)


def test_a_folder_is_recorded_as_rejected(intake: Intake, inbox: Path) -> None:
    (inbox / "study").mkdir()
    job = rejection_of(intake.submit(inbox / "study"), "not_regular_file")
    assert "a folder" in str(job.reason)


def test_a_symlink_is_refused_and_its_target_never_read(
    intake: Intake, inbox: Path, tmp_path: Path, spool: Spool
) -> None:
    secret = tmp_path / "work" / "pseudonym.key"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(b"SECRET-KEY-BYTES")
    (inbox / "key.dcm").symlink_to(secret)
    job = rejection_of(intake.submit(inbox / "key.dcm"), "not_regular_file")
    assert "symbolic link" in str(job.reason) and "copy the image file itself" in str(job.reason)
    assert "SECRET" not in str(job.reason) and job.sha256 is None
    assert not spool.folder.exists() or not any(spool.folder.iterdir())
    # Recorded once: a rescan of the same link records nothing new.
    again = intake.submit(inbox / "key.dcm")
    assert isinstance(again, EnqueueOutcome) and again.already_seen


def test_a_file_in_a_folder_that_links_out_of_the_inbox_is_refused(
    intake: Intake, inbox: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.png").write_bytes(b"not the inbox's")
    (inbox / "linked").symlink_to(outside)
    job = rejection_of(intake.submit(inbox / "linked" / "a.png"), "not_regular_file")
    assert "links out of the inbox" in str(job.reason)


def test_a_fifo_is_refused_at_once_without_blocking(intake: Intake, inbox: Path) -> None:
    fifo = inbox / "x.dcm"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    job = rejection_of(intake.submit(fifo), "not_regular_file")
    assert time.monotonic() - t0 < 2.0
    assert "named pipe" in str(job.reason)


def test_a_file_over_the_size_limit_is_refused_unread(
    queue: JobQueue, inbox: Path, spool: Spool
) -> None:
    path = inbox / "huge.dcm"
    with open(path, "wb") as f:
        f.truncate(10 << 20)  # sparse: 10 MiB of nothing
    job = rejection_of(
        Intake(queue, spool, inbox=inbox, max_bytes=1 << 20).submit(path), "too_large"
    )
    assert "10,485,760 bytes" in str(job.reason) and "ingest.max_input_bytes" in str(job.reason)
    assert not spool.folder.exists() or not any(spool.folder.iterdir())


def test_a_file_still_being_written_is_not_taken(
    queue: JobQueue, inbox: Path, tmp_path: Path
) -> None:
    path = inbox / "slow.dcm"
    path.write_bytes(b"x" * 200_000)
    stop = threading.Event()

    def append() -> None:
        with open(path, "ab") as f:
            while not stop.is_set():
                f.write(b"y")
                f.flush()
                time.sleep(0.0005)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        intake = Intake(queue, Spool(tmp_path / "spool", chunk_size=64), inbox=inbox)
        with pytest.raises(FileStillChangingError):
            intake.submit(path)
    finally:
        stop.set()
        writer.join()
    assert sum(queue.counts().values()) == 0  # nothing recorded: offered again later
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "spool").iterdir())


def test_a_spool_that_cannot_be_written_is_a_passing_fault(
    queue: JobQueue, inbox: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "work"
    blocker.write_bytes(b"a file where the spool's folder should be")
    (inbox / "a.png").write_bytes(b"good")
    with pytest.raises(TransientError) as info:
        Intake(queue, Spool(blocker / "spool"), inbox=inbox).submit(inbox / "a.png")
    assert str(blocker / "spool") in info.value.condition
    assert sum(queue.counts().values()) == 0


def test_submit_is_thread_safe(queue: JobQueue, inbox: Path, tmp_path: Path) -> None:
    for i in range(8):
        (inbox / f"{i}.png").write_bytes(b"identical content" * 1000)
    intake = Intake(queue, Spool(tmp_path / "spool", chunk_size=1000), inbox=inbox)
    barrier = threading.Barrier(8)
    results: list[EnqueueOutcome | Job] = []

    def submit(i: int) -> None:
        barrier.wait(timeout=10)
        results.append(intake.submit(inbox / f"{i}.png"))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    outcomes = [outcome_of(r) for r in results]
    assert len(outcomes) == 8
    assert sum(o.queued for o in outcomes) == 1
    assert queue.counts()["queued"] == 1 and queue.counts()["duplicate"] == 7
    queued = next(o.job for o in outcomes if o.queued)
    assert queued.spool_path is not None and queued.spool_path.is_file()


def test_the_inbox_file_is_left_as_it_was(intake: Intake, inbox: Path) -> None:
    path = inbox / "a.dcm"
    path.write_bytes(b"content")
    before = path.stat()
    intake.submit(path)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_mode) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_mode,
    )
    assert path.read_bytes() == b"content"
