"""The inbox watcher with real watchdog observers on real temporary folders."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.ingest import InboxError, InboxWatcher, Intake, is_candidate
from appliance.ingest.snapshot import Spool
from appliance.store import JobQueue, JobStatus

DEADLINE_S = 5.0


class Collector:
    """A thread-safe on_candidate that remembers every call."""

    def __init__(self, fail_on: Callable[[Path], bool] = lambda p: False) -> None:
        self.paths: list[Path] = []
        self._fail_on = fail_on
        self._cond = threading.Condition()

    def __call__(self, path: Path) -> None:
        with self._cond:
            self.paths.append(path)
            self._cond.notify_all()
        if self._fail_on(path):
            raise RuntimeError(f"cannot take {path.name}")

    def wait_for(self, *expected: Path, timeout: float = DEADLINE_S) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: set(expected) <= set(self.paths), timeout)
        assert ok, f"expected {expected} within {timeout} s, got {self.paths}"

    def snapshot(self) -> list[Path]:
        with self._cond:
            return list(self.paths)


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def make_watcher(inbox: Path) -> Iterator[Callable[..., InboxWatcher]]:
    started: list[InboxWatcher] = []

    def make(on_candidate: Callable[[Path], None], **kwargs: float | bool) -> InboxWatcher:
        options: dict[str, float | bool] = {
            "rescan_interval_s": 60.0,
            "settle_s": 0.1,
            "close_settle_s": 0.1,
        }
        options.update(kwargs)
        watcher = InboxWatcher(inbox, on_candidate, **options)  # type: ignore[arg-type]
        started.append(watcher)
        return watcher

    yield make
    for watcher in started:
        watcher.stop()


def write(path: Path, data: bytes = b"image bytes", *, age_s: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if age_s:
        past = time.time() - age_s
        os.utime(path, (past, past))
    return path


def settle_marker(inbox: Path, collector: Collector) -> None:
    """Events arrive in order: once a later file is seen, earlier events were handled."""
    marker = write(inbox / f"zz-marker-{time.monotonic_ns()}.png")
    collector.wait_for(marker)


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("a.dcm", True),
        ("study/series/IM0001", True),
        ("a.png.part", False),
        ("a.PART", False),
        ("a.tmp", False),
        ("a.partial", False),
        ("a.crdownload", False),
        ("a.dcm~", False),
        (".hidden.dcm", False),
        (".incoming/a.dcm", False),
    ],
)
def test_is_candidate(relative: str, expected: bool) -> None:
    inbox = Path("/srv/inbox")
    assert is_candidate(inbox / relative, inbox) is expected


def test_is_candidate_is_false_outside_the_inbox() -> None:
    assert not is_candidate(Path("/elsewhere/a.dcm"), Path("/srv/inbox"))
    assert not is_candidate(Path("/srv/inbox"), Path("/srv/inbox"))


# -- events --------------------------------------------------------------------------------


def test_files_present_at_start_are_submitted(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    old = write(inbox / "old.dcm", age_s=60)
    nested = write(inbox / "2024" / "study" / "IM1", age_s=60)
    young = write(inbox / "young.png")  # written just before start: taken once settled
    write(inbox / ".hidden.dcm", age_s=60)
    collector = Collector()
    with make_watcher(collector, settle_s=0.2, rescan_interval_s=0.3):
        collector.wait_for(old, nested, young)
    assert sorted(collector.snapshot()) == sorted([old, nested, young])


def test_a_file_is_submitted_once_after_it_is_closed(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    collector = Collector()
    path = inbox / "IM0001.dcm"
    with make_watcher(collector, settle_s=30.0):  # no scan may take it: only the event
        with open(path, "wb") as f:
            f.write(b"first half")
            f.flush()
            os.fsync(f.fileno())
            time.sleep(0.3)  # a slow writer: created / modified events meanwhile
            assert collector.snapshot() == []
            f.write(b"second half")
        collector.wait_for(path)
        settle_marker(inbox, collector)
    assert collector.snapshot().count(path) == 1


def test_a_renamed_part_file_is_submitted_once_under_its_final_name(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    collector = Collector()
    with make_watcher(collector):
        part = write(inbox / "x.png.part", b"png bytes")
        final = inbox / "x.png"
        os.rename(part, final)
        collector.wait_for(final)
        settle_marker(inbox, collector)
    assert collector.snapshot().count(final) == 1
    assert part not in collector.snapshot()


def test_a_file_moved_in_from_outside_is_submitted(
    tmp_path: Path, inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    staging = write(tmp_path / "staging" / "a.dcm")
    folder = tmp_path / "staging" / "study"
    inside = write(folder / "IM1")
    collector = Collector()
    with make_watcher(collector):
        os.rename(staging, inbox / "a.dcm")
        os.rename(folder, inbox / "study")  # a whole folder, already complete
        collector.wait_for(inbox / "a.dcm", inbox / "study" / inside.name)


def test_hidden_and_temporary_files_are_ignored(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    collector = Collector()
    with make_watcher(collector):
        for name in (".a.dcm", "b.part", "c.tmp", "d.partial", "e.crdownload", "f.dcm~"):
            write(inbox / name)
        write(inbox / ".incoming" / "g.dcm")
        settle_marker(inbox, collector)
    (only,) = collector.snapshot()
    assert only.name.startswith("zz-marker")


def test_files_in_new_nested_folders_are_submitted(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    collector = Collector()
    # A short rescan as well: a file written the instant its folder appears can come
    # before inotify watches the folder, and then only a scan finds it.
    with make_watcher(collector, rescan_interval_s=0.5):
        deep = write(inbox / "a" / "b" / "c" / "IM1")
        collector.wait_for(deep)
        later = write(inbox / "a" / "b" / "c" / "IM2")
        collector.wait_for(later)
    assert collector.snapshot().count(deep) == 1


def test_an_on_candidate_error_is_logged_and_the_watcher_goes_on(
    inbox: Path, make_watcher: Callable[..., InboxWatcher], caplog: pytest.LogCaptureFixture
) -> None:
    bad_once = {"bad.dcm"}

    def fail_first_time(path: Path) -> bool:
        if path.name in bad_once:
            bad_once.discard(path.name)
            return True
        return False

    collector = Collector(fail_first_time)
    with (
        caplog.at_level(logging.ERROR, logger="fame_node.ingest"),
        make_watcher(collector, rescan_interval_s=0.3, settle_s=0.05),
    ):
        bad = write(inbox / "bad.dcm")
        good = write(inbox / "good.dcm")
        collector.wait_for(bad, good)
        wait_until(lambda: collector.snapshot().count(bad) == 2)  # retried by a scan
    errors = [r for r in caplog.records if r.name == "fame_node.ingest"]
    assert errors and any(r.exc_info for r in errors)
    # File names may be patients' names: the watcher's own lines never carry them.
    assert not any("bad.dcm" in r.getMessage() for r in errors)


def test_stop_returns_promptly(inbox: Path, make_watcher: Callable[..., InboxWatcher]) -> None:
    watcher = make_watcher(Collector(), rescan_interval_s=30.0)
    watcher.start()
    write(inbox / "a.dcm")
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 2.0
    watcher.stop()  # twice is harmless


def test_a_missing_inbox_is_refused(tmp_path: Path) -> None:
    watcher = InboxWatcher(tmp_path / "nope", Collector())
    with pytest.raises(InboxError, match="does not exist"):
        watcher.start()


# -- scans ---------------------------------------------------------------------------------


def test_a_scan_takes_a_new_file_only_once_it_is_stable(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    collector = Collector()
    watcher = make_watcher(collector, settle_s=0.2, use_observer=False)
    assert watcher.scan_once() == []  # the first scan: an empty inbox
    path = write(inbox / "share" / "a.dcm")
    assert watcher.scan_once() == []  # just written, and never seen before
    time.sleep(0.25)
    with open(path, "ab") as f:  # the copy goes on: changed since the last look
        f.write(b"more")
    assert watcher.scan_once() == []
    wait_until(lambda: time.time_ns() - path.stat().st_mtime_ns > 0.25e9)
    assert watcher.scan_once() == [path]
    assert watcher.scan_once() == []  # offered once
    assert collector.snapshot() == [path]


def test_a_scan_only_watcher_finds_files_in_its_own_thread(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    collector = Collector()
    with make_watcher(collector, rescan_interval_s=0.2, settle_s=0.1, use_observer=False):
        path = write(inbox / "a.dcm")
        collector.wait_for(path)
        settled = write(inbox / "b.dcm")
        collector.wait_for(settled)
    assert sorted(collector.snapshot()) == [path, settled]


def test_a_file_is_offered_again_after_it_changed(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    collector = Collector()
    watcher = make_watcher(collector, settle_s=0.0, use_observer=False)
    path = write(inbox / "a.dcm", b"v1", age_s=10)
    assert watcher.scan_once() == [path]
    write(path, b"version 2", age_s=5)
    assert watcher.scan_once() == []  # first look at the new version
    assert watcher.scan_once() == [path]


# -- with the real queue -------------------------------------------------------------------


def test_watcher_and_intake_queue_each_file_once_and_leave_the_inbox_alone(
    tmp_path: Path, inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    existing = write(inbox / "existing.dcm", b"one", age_s=60)
    with JobQueue(tmp_path / "node.sqlite3") as queue:
        intake = Intake(queue, Spool(tmp_path / "spool"), inbox=inbox)
        with make_watcher(intake.submit, rescan_interval_s=0.2, settle_s=0.05):
            wait_until(lambda: queue.counts()["queued"] == 1)  # the first scan took it
            new = write(inbox / "new.png", b"two")
            copy = write(inbox / "copy.dcm", b"one")
            wait_until(lambda: sum(queue.counts().values()) == 3)
            before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in inbox.rglob("*")}
            time.sleep(0.5)  # a few more scans: nothing new may be recorded
        assert sum(queue.counts().values()) == 3
        jobs = {j.path: j for j in queue.list_jobs()}
    assert jobs[existing].status is JobStatus.QUEUED and jobs[new].status is JobStatus.QUEUED
    assert jobs[copy].duplicate_of == jobs[existing].id
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in inbox.rglob("*")}
    assert after == before and set(after) == {existing, new, copy}


def test_a_file_gone_before_its_close_event_is_handled_is_still_handed_on(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    """The intake must see it, to record that it vanished, rather than nothing at all."""
    collector = Collector()
    path = inbox / "vanished.dcm"
    with make_watcher(collector, settle_s=30.0) as watcher:
        watcher._offer_event(path)  # the event thread's call, for a file already removed
        collector.wait_for(path)
        watcher._offer_event(inbox / ".hidden.dcm")  # not a candidate: still ignored
    assert collector.snapshot() == [path]


def test_a_writer_that_closes_and_reopens_to_append_gives_one_offer(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    """A slow writer closing after every chunk must not give one job per chunk."""
    collector = Collector()
    path = inbox / "slow.dcm"
    with make_watcher(collector, settle_s=30.0, close_settle_s=0.5):
        for i in range(6):
            with open(path, "ab") as f:
                f.write(b"chunk %d " % i)
            time.sleep(0.15)  # shorter than close_settle_s: the writer is still at work
        collector.wait_for(path)
        settle_marker(inbox, collector)
    assert collector.snapshot().count(path) == 1
    assert path.read_bytes().endswith(b"chunk 5 ")


def test_links_and_special_files_are_offered_never_followed(
    tmp_path: Path, inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    outside = tmp_path / "outside"
    write(outside / "inner.dcm", age_s=60)
    (inbox / "to-file.dcm").symlink_to(outside / "inner.dcm")
    (inbox / "to-folder").symlink_to(outside)
    (inbox / "loop.dcm").symlink_to(inbox / "loop.dcm")
    os.mkfifo(inbox / "pipe.dcm")
    collector = Collector()
    watcher = make_watcher(collector, settle_s=0.0, use_observer=False)
    offered = watcher.scan_once()
    names = sorted(p.name for p in offered)
    assert names == ["loop.dcm", "pipe.dcm", "to-file.dcm", "to-folder"]
    assert all(p.parent == inbox for p in offered)  # nothing below the linked folder


def test_an_inbox_deleted_and_created_again_is_watched_again(
    inbox: Path, make_watcher: Callable[..., InboxWatcher]
) -> None:
    collector = Collector()
    with make_watcher(collector, settle_s=30.0):  # no scan may take it: only events
        first = write(inbox / "before.dcm")
        collector.wait_for(first)
        first.unlink()
        inbox.rmdir()
        time.sleep(0.5)
        inbox.mkdir()
        time.sleep(0.6)  # the watcher looks at the folder itself every 0.2 s
        after = write(inbox / "after.dcm")
        collector.wait_for(after)
