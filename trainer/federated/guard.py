"""The mod every reply of this node's ClientApp passes: only an update and named numbers.

A node sends the coordinator a model update and a fixed set of named numbers, nothing
else (issue 9 item 7). `reply_guard` sits innermost in the ClientApp's mods (next to the
handler, inside SecAgg+, which then masks what it let through) and checks each reply:

- records only of the legacy train / evaluate result layout (``fitres.*`` /
  ``evaluateres.*``); any other record is refused;
- metrics: names from `ALLOWED_METRICS`, values int or float (no string, no bytes);
- the status message: one of `STATUS_MESSAGES` (fixed texts, no value of the node's);
- arrays (train replies only): exactly as many, of exactly the shapes, as the global
  model received in the request, float32: an update of that model, not an image.

A reply that breaks a rule is not sent: the mod raises `ReplyRefused` naming the rule
(names of our own records only, never a value), so Flower returns an error instead.

With the node config key ``reply-log`` (a file path), each reply that passed is also
described in one JSON line there (record names, metric values, array shapes and the
sha256 of each array's bytes): what left the node, for its own audit and for tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable

from trainer.federated import FederatedError

ALLOWED_METRICS = frozenset(
    {
        "num_examples",
        "loss",
        "n_examples",
        "declined",
        "decline_code",
        "heldout_n",
        "heldout_dice",
        "heldout_auc",
        "heldout_score",
        "epsilon",
        "epsilon_after",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "train_seconds",
        "clipped_values",
    }
)
STATUS_MESSAGES = frozenset({"ok", "declined"})

_PREFIXES = {MessageType.TRAIN: "fitres", MessageType.EVALUATE: "evaluateres"}
_CONFIG_SUFFIXES = ("metrics", "status")
_METRIC_SUFFIXES = ("num_examples", "loss")


class ReplyRefused(FederatedError):
    """A reply broke a rule of `reply_guard`; it was not sent."""


def reply_guard(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    reply = call_next(msg, ctxt)
    kind = msg.metadata.message_type
    if reply.has_error() or kind not in _PREFIXES:
        return reply
    check_reply(kind, msg, reply)
    log_path = ctxt.node_config.get("reply-log")
    if isinstance(log_path, str) and log_path:
        _append(Path(log_path), describe(kind, reply))
    return reply


def check_reply(kind: str, request: Message, reply: Message) -> None:
    """Raise `ReplyRefused` unless `reply` holds only what a node may send."""
    prefix = _PREFIXES[kind]
    content = reply.content
    for name, config in content.config_records.items():
        if name not in {f"{prefix}.{s}" for s in _CONFIG_SUFFIXES}:
            raise ReplyRefused(f"config record {name!r} is not part of a {prefix} reply")
        for key, value in config.items():
            if name.endswith(".status"):
                if key == "code" and isinstance(value, int):
                    continue
                if key == "message" and value in STATUS_MESSAGES:
                    continue
                raise ReplyRefused(f"status field {key!r} is not a code or a fixed message")
            _check_metric(key, value)
    for name, metrics in content.metric_records.items():
        if name not in {f"{prefix}.{s}" for s in _METRIC_SUFFIXES}:
            raise ReplyRefused(f"metric record {name!r} is not part of a {prefix} reply")
        for key, value in metrics.items():
            _check_metric(key, value)
    arrays = list(content.array_records.items())
    if kind == MessageType.EVALUATE:
        if any(len(record) for _, record in arrays):
            raise ReplyRefused("an evaluate reply carries arrays")
        return
    received = _shapes(request, "fitins.parameters")
    for name, record in arrays:
        if name != f"{prefix}.parameters":
            raise ReplyRefused(f"array record {name!r} is not part of a {prefix} reply")
        decoded = _decoded(record)
        sent = [tuple(a.shape) for a in decoded]
        dtypes = {str(a.dtype) for a in decoded}
        if sent != received:
            raise ReplyRefused(
                f"the reply carries {len(sent)} arrays not of the layout of the "
                f"{len(received)} received: only an update of the global model may be sent"
            )
        if dtypes - {"float32"}:
            raise ReplyRefused(f"the update has arrays of dtype {sorted(dtypes)}, not float32")


def describe(kind: str, reply: Message) -> dict[str, Any]:
    """What the reply carries, as JSON-able values (array bytes only as sha256)."""
    content = reply.content
    return {
        "kind": kind,
        "config": {
            n: {k: _plain(v) for k, v in r.items()} for n, r in content.config_records.items()
        },
        "metrics": {n: dict(r.items()) for n, r in content.metric_records.items()},
        "arrays": {
            n: [
                {
                    "shape": list(a.shape),
                    "dtype": str(a.dtype),
                    "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(),
                }
                for a in _decoded(r)
            ]
            for n, r in content.array_records.items()
        },
    }


def _check_metric(key: str, value: object) -> None:
    if key not in ALLOWED_METRICS:
        raise ReplyRefused(f"metric {key!r} is not one a node may send ({sorted(ALLOWED_METRICS)})")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReplyRefused(f"metric {key!r} is not a number")
    if isinstance(value, float) and not np.isfinite(value):
        raise ReplyRefused(f"metric {key!r} is not finite")


def _shapes(request: Message, name: str) -> list[tuple[int, ...]]:
    record = request.content.array_records.get(name)
    return [] if record is None else [tuple(a.shape) for a in _decoded(record)]


def _decoded(record: ArrayRecord) -> list[np.ndarray]:
    # Legacy (fitins / fitres) arrays are .npy bytes with an empty shape and dtype on the
    # record: their real layout is in the bytes. Array.numpy() loads without pickle.
    try:
        return [a.numpy() for a in record.values()]
    except (TypeError, ValueError) as exc:
        raise ReplyRefused(f"an array cannot be read as a plain numpy array ({exc})") from None


def _plain(value: object) -> object:
    return value if isinstance(value, int | float | str | bool) else repr(type(value))


def _append(path: Path, entry: dict[str, Any]) -> None:
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
