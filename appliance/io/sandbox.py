"""Decode inputs in child processes that can be stopped: `Decoder`.

Reading runs `appliance.io.reader.read_file` in a small pool of persistent children
(`appliance.io.sandbox_child`), one per worker thread of the node, so that no input can
hold a worker or exhaust the node:

* **time**: each input has `timeout_s` of wall time; past it the child is killed
  (SIGKILL), replaced, and the input rejected (`InputTooCostlyError`);
* **memory**: each child caps its address space at `memory_mb` MiB (`RLIMIT_AS`); a
  `MemoryError` there is `InputTooCostlyError` too (the child is replaced);
* **crashes**: a child killed by a signal while decoding rejects the input:
  `InputTooCostlyError` for SIGKILL / SIGXCPU (the kernel's OOM killer, a CPU limit),
  `CorruptFileError` for any other signal (SIGSEGV, SIGBUS, SIGABRT...): a decoder crashes
  on damaged or crafted content, and the reason says so; the job is not retried;
* **start failures**: a child that cannot be started (EAGAIN, ENOMEM) or dies before it
  is ready is a `TransientError`: the node is short of resources, not the input bad.

Children are started with `subprocess` as fresh interpreters (fork + exec in C, like
multiprocessing's "spawn": the node's threads and ONNX Runtime are never forked), and
RLIMIT_CPU is not used: it counts a persistent child's whole life, not one input.
What comes back is untrusted (`appliance.io.wire`): no pickle, every field validated.

The lead's node builds one `Decoder(workers, limits, timeout_s, memory_mb)` at start,
calls `decode(path, claimed_suffix=...)` from any worker thread, and `close()`s it at
shutdown (or uses it as a context manager).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import appliance
from appliance.closing import Closing
from appliance.errors import CorruptFileError, InputError, InputTooCostlyError, TransientError
from appliance.io.types import LoadedImage, ReadLimits
from appliance.io.wire import (
    LENGTH,
    MAX_HEADER_BYTES,
    WireError,
    loads,
    parse_header,
    parse_refusal,
)

START_TIMEOUT_S = 60.0
"""Longest wait for a new child to import its readers and report ready."""
_PIPE_BYTES = 1 << 20  # a larger pipe: a 600 x 500 frame in one or two reads, not five
_PACKAGE_ROOT = str(Path(appliance.__file__).resolve().parent.parent)


class _Timeout(Exception):
    """The child did not answer within the input's time."""


class _Died(Exception):
    """The child's pipe closed: it exited or was killed."""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # one input at a time: thread pools only cost address space
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return env


class _Child:
    """One decoder process and its pipes; used by one thread at a time."""

    def __init__(self, limits: ReadLimits, memory_mb: int) -> None:
        argv = [sys.executable, "-m", "appliance.io.sandbox_child"]
        argv += [json.dumps(dataclasses.asdict(limits)), str(memory_mb)]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=_child_env(),
                close_fds=True,
                start_new_session=True,  # a Ctrl-C at the node's terminal is the node's
            )
        except OSError as exc:
            raise TransientError(
                f"a decoder process could not be started ({exc.strerror or exc}); the node "
                "is short of processes or memory: the job is retried",
                condition="resources to start a decoder process",
                retry_after_s=5.0,
            ) from exc
        if self.proc.stdin is None or self.proc.stdout is None:  # cannot happen: PIPE given
            raise RuntimeError("the decoder process was started without its pipes")
        self._in = self.proc.stdin
        self._fd = self.proc.stdout.fileno()
        with contextlib.suppress(OSError, AttributeError):  # Linux only; a hint
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self.ready = False

    def _read_into(self, view: memoryview, deadline: float) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise _Timeout
            n = os.readv(self._fd, [view])
            if n == 0:
                raise _Died
            view = view[n:]

    def _message_length(self, deadline: float) -> int:
        prefix = bytearray(LENGTH.size)
        self._read_into(memoryview(prefix), deadline)
        return int(LENGTH.unpack(prefix)[0])

    def read_json(self, deadline: float) -> dict[str, object]:
        n = self._message_length(deadline)
        if n > MAX_HEADER_BYTES:
            raise WireError(f"header of {n} bytes")
        body = bytearray(n)
        self._read_into(memoryview(body), deadline)
        return loads(bytes(body))

    def read_frame(self, rows: int, cols: int, deadline: float) -> np.ndarray:
        if self._message_length(deadline) != rows * cols:
            raise WireError("frame length does not match its shape")
        frame = np.empty((rows, cols), dtype=np.uint8)
        self._read_into(frame.data.cast("B"), deadline)
        return frame

    def send(self, request: dict[str, object]) -> None:
        body = json.dumps(request).encode()
        try:
            self._in.write(LENGTH.pack(len(body)) + body)
            self._in.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _Died from exc

    def wait_ready(self) -> None:
        try:
            hello = self.read_json(time.monotonic() + START_TIMEOUT_S)
        except (_Timeout, _Died, WireError) as exc:
            self.kill()
            raise TransientError(
                "a decoder process started but did not become ready (exit status "
                f"{self.proc.returncode}); the job is retried",
                condition="a working decoder process",
                retry_after_s=5.0,
            ) from exc
        if hello != {"ok": True, "ready": True}:
            self.kill()
            raise TransientError(
                "a decoder process answered its start with something else; the job is retried",
                condition="a working decoder process",
            )
        self.ready = True

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> int | None:
        """SIGKILL the child and reap it; its exit status (None if it would not die)."""
        self.ready = False
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()  # a no-op once reaped: never a reused pid
        with contextlib.suppress(OSError):
            self._in.close()
        with contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def exit_status(self) -> int | None:
        """The status of a child whose pipe closed (waits briefly for it to be reaped)."""
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return self.kill()


def _signal_name(status: int | None) -> str:
    if status is None or status >= 0:
        return f"exit status {status}"
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


class Decoder(Closing):
    """A pool of `workers` decoder children; `decode` is safe to call from any thread."""

    def __init__(self, workers: int, limits: ReadLimits, timeout_s: float, memory_mb: int) -> None:
        if workers < 1 or timeout_s <= 0 or memory_mb < 64:
            raise ValueError(
                f"Decoder needs workers >= 1, timeout_s > 0 and memory_mb >= 64; got "
                f"{workers}, {timeout_s}, {memory_mb}"
            )
        self.limits, self.timeout_s, self.memory_mb = limits, timeout_s, memory_mb
        self._idle: queue.SimpleQueue[_Child | None] = queue.SimpleQueue()
        self._all: set[_Child] = set()
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(workers):  # started now, so that they import while the node starts
            try:
                self._idle.put(self._start())
            except TransientError:
                self._idle.put(None)  # tried again by the first decode that needs it

    def _start(self) -> _Child:
        child = _Child(self.limits, self.memory_mb)
        with self._lock:
            self._all.add(child)
        return child

    def kill_all(self) -> None:
        """SIGKILL every child now, busy or idle: the node is leaving without a teardown."""
        self._closed = True
        with self._lock:
            children = list(self._all)
            self._all.clear()
        for child in children:
            child.kill()

    def _retire(self, child: _Child) -> int | None:
        status = child.kill()
        with self._lock:
            self._all.discard(child)
        return status

    def decode(self, path: Path, *, claimed_suffix: str | None = None) -> LoadedImage:
        """`read_file(path, limits=..., claimed_suffix=...)`, in a child, within the bounds.

        Raises
        ------
        InputError
            A subclass with a reason for a person (see the module docstring).
        TransientError
            No decoder process could be started.
        RuntimeError
            The reader failed with an unexpected error (a bug), or the decoder is closed.
        """
        if self._closed:
            raise RuntimeError("the Decoder is closed")
        child = self._idle.get()
        try:
            if child is not None and not child.alive():  # died while idle: not this input's
                self._retire(child)
                child = None
            if child is None:
                child = self._start()
            if not child.ready:
                child.wait_ready()
            return self._run(child, Path(path), claimed_suffix)
        finally:  # a child retired on the way (kill() clears ready) is replaced next time
            self._idle.put(child if child is not None and child.ready else None)

    def _run(self, child: _Child, path: Path, claimed_suffix: str | None) -> LoadedImage:
        started = time.monotonic()
        deadline = started + self.timeout_s
        try:
            child.send({"path": str(path), "claimed_suffix": claimed_suffix})
            header = child.read_json(deadline)
            if header["ok"] is True:
                meta, shapes = parse_header(header, self.limits)
                frames = [child.read_frame(r, c, deadline) for r, c in shapes]
                return LoadedImage(frames=frames, meta=meta)
        except _Timeout:
            self._retire(child)
            raise InputTooCostlyError(
                f"decoding ran for more than {self.timeout_s:g} s, the limit for one input "
                "(processing.decode_timeout_s), and was stopped: the image is too costly to "
                "decode (for example a progressive JPEG with very many scans, or a damaged "
                "compressed stream); export it again as baseline JPEG, PNG or uncompressed "
                "DICOM",
                path=path,
            ) from None
        except _Died:
            raise self._crash(child, path, time.monotonic() - started) from None
        except WireError as exc:
            self._retire(child)
            raise CorruptFileError(
                "the decoder returned a result outside its format while reading this file "
                "(it may have been subverted by crafted content); it was stopped and the "
                "file was not analysed: export the image again",
                path=path,
            ) from exc
        code = header.get("code")
        if code == "out_of_memory":
            self._retire(child)  # a fresh heap for the next input
            raise InputTooCostlyError(self._memory_reason(), path=path)
        if code == "internal":
            name = str(header.get("type"))[:64]
            raise RuntimeError(f"the image reader failed with {name} (in its decoder process)")
        try:
            error: InputError = parse_refusal(header, path)
        except WireError as exc:
            self._retire(child)
            raise CorruptFileError(
                "the decoder returned an unknown refusal for this file; it was stopped and "
                "the file was not analysed: export the image again",
                path=path,
            ) from exc
        raise error

    def _memory_reason(self) -> str:
        return (
            f"decoding needed more than the {self.memory_mb} MiB a decoder may use "
            "(processing.decode_memory_mb) and was stopped: the image is too large once "
            "decompressed (or crafted to look small); export it at a lower resolution or "
            "with fewer frames"
        )

    def _crash(self, child: _Child, path: Path, ran_s: float) -> InputError:
        status = child.exit_status()
        self._retire(child)
        if status in (-signal.SIGKILL, -signal.SIGXCPU):  # the OOM killer, a CPU limit
            return InputTooCostlyError(self._memory_reason(), path=path)
        return CorruptFileError(
            f"the image decoder crashed on this file after {ran_s:.1f} s "
            f"({_signal_name(status)}): the file is damaged or crafted (or needed more than "
            f"the {self.memory_mb} MiB a decoder may use); it was not analysed: export the "
            "image again",
            path=path,
        )

    def close(self) -> None:
        """Stop every child; decodes in progress fail; later calls raise RuntimeError."""
        self._closed = True
        with self._lock:
            children = list(self._all)
            self._all.clear()
        for child in children:
            child.kill()
