"""The decoder child: `python -m appliance.io.sandbox_child LIMITS_JSON MEMORY_MB`.

Started by `appliance.io.sandbox.Decoder` as a fresh interpreter (never a fork of the
node, which has threads and ONNX Runtime loaded); it imports only what reading needs.
After its imports it caps its own address space (`RLIMIT_AS` = MEMORY_MB MiB), says it
is ready, then serves requests one at a time until its input closes (or its node dies: it
exits within half a second of being re-parented): a request is a
length-prefixed JSON ``{"path": ..., "claimed_suffix": ...}``; the reply is in the
format of `appliance.io.wire`. The protocol runs on the original stdin/stdout; fd 1 is
then pointed at stderr, so that a stray print from a library cannot corrupt a reply.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO

import numpy as np

from appliance.errors import InputError
from appliance.io.reader import read_file
from appliance.io.types import ReadLimits
from appliance.io.wire import LENGTH, failure_for, frame_message, header_for, refusal_for


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _write_all(out: IO[bytes], data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:  # an unbuffered write to a pipe may be partial
        written = out.write(view)
        view = view[written or 0 :]


def _send(out: IO[bytes], payload: bytes | memoryview) -> None:
    _write_all(out, frame_message(payload))
    _write_all(out, payload)


def _serve_one(out: IO[bytes], request: dict[str, object], limits: ReadLimits) -> None:
    path, suffix = request.get("path"), request.get("claimed_suffix")
    if not isinstance(path, str) or not (suffix is None or isinstance(suffix, str)):
        _send(out, failure_for("internal", TypeError("bad request")))
        return
    try:
        loaded = read_file(Path(path), limits=limits, claimed_suffix=suffix)
    except InputError as exc:
        _send(out, refusal_for(exc))
        return
    except MemoryError:
        _send(out, failure_for("out_of_memory"))
        return
    except Exception as exc:  # a reader bug: reported by type, the parent fails the job
        _send(out, failure_for("internal", exc))
        return
    _send(out, header_for(loaded))
    for frame in loaded.frames:
        _send(out, np.ascontiguousarray(frame).data.cast("B"))


PARENT_CHECK_S = 0.5


def _exit_with_parent(parent: int) -> None:
    # The node's time limit on a decode lives in the node: a child whose node died (SIGKILL,
    # os._exit with a job past its grace) would decode on unbounded, beside the restarted
    # node's own children. It leaves as soon as it is re-parented, even mid-decode.
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(3)


def main(argv: list[str]) -> int:
    limits = ReadLimits(**json.loads(argv[1]))
    threading.Thread(
        target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True
    ).start()
    memory_bytes = int(argv[2]) << 20
    warnings.simplefilter("ignore")  # pydicom's warnings would only go to /dev/null
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    stdin = os.fdopen(os.dup(0), "rb", buffering=0)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    _send(out, b'{"ok": true, "ready": true}')
    while True:
        prefix = _read_exact(stdin, LENGTH.size)
        if prefix is None:
            return 0  # the node closed the pipe: shut down
        body = _read_exact(stdin, LENGTH.unpack(prefix)[0])
        if body is None:
            return 0
        _serve_one(out, json.loads(body), limits)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
