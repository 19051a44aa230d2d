"""One batch of outbox files to the PACS over one DICOM association (pynetdicom SCU).

`send_batch` is the network half of the sender, with no store in it: it takes the files,
opens one association asking for a presentation context per (SOP class, transfer syntax)
of the files, sends each with C-STORE as it is on disk (pynetdicom reads the file and
sends its dataset bytes; nothing is decoded or re-encoded) and answers one `SendOutcome`
per file. What an outcome means for the queue is `appliance.dicom_send.sender`'s business.

Outcomes, by who is at fault:

* ``sent``: status 0x0000, or a warning (0xB000 coercion, 0xB006 element discarded, 0xB007
  data set does not match SOP class): the PACS stored it; the warning is kept.
* ``refused``: the object's fault or the PACS's verdict on it: a failure status (0xA9xx,
  0xCxxx, 0x0122 SOP class not supported, ...) or no presentation context for its class.
* ``unreachable``: the destination's: no connection, the association rejected or aborted,
  the PACS out of resources (0xA7xx), no answer within the DIMSE timeout. Nothing is
  known about the object; it is sent again later.
* ``gone``: the file is missing or is not the object the queue holds: sending it again
  cannot help.

Log lines name the destination and counts, never a file's name or content.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from appliance.config import DicomSendConfig

log = logging.getLogger("fame_node.dicom_send")

Verdict = Literal["sent", "refused", "unreachable", "gone"]
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})
MAX_CONTEXTS = 128  # the most presentation contexts one association may propose
# Marks where the PACS's own Error Comment starts in a detail: kept in the queue, cut from
# log lines (it is the PACS's free text).
PACS_COMMENT = " -- the PACS says: "


@dataclass(frozen=True)
class SendItem:
    """One object to send: the queue's row id, its file and its SOP Instance UID."""

    row_id: int
    path: Path
    sop_instance_uid: str | None


@dataclass(frozen=True)
class SendOutcome:
    row_id: int
    verdict: Verdict
    detail: str | None = None  # why (refused, unreachable, gone) or the warning (sent)
    status: int | None = None  # the C-STORE status the PACS answered, if it answered


@dataclass(frozen=True)
class _Prepared:
    item: SendItem
    sop_class: str
    transfer_syntax: str


def describe_status(code: int) -> str:
    """``0xA900 (Data Set Does Not Match SOP Class)`` for a C-STORE status code."""
    _, text = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", "unknown status"))
    return f"0x{code:04X} ({text})"


def send_batch(config: DicomSendConfig, items: Sequence[SendItem]) -> list[SendOutcome]:
    """Send `items` to the configured PACS over one association; one outcome per item,
    in order. Never raises for what the network or the PACS does."""
    outcomes: dict[int, SendOutcome] = {}
    ready: list[_Prepared] = []
    for item in items:
        prepared = _prepare(item)
        if isinstance(prepared, SendOutcome):
            outcomes[item.row_id] = prepared
        else:
            ready.append(prepared)
    contexts = list(dict.fromkeys((p.sop_class, p.transfer_syntax) for p in ready))
    if len(contexts) > MAX_CONTEXTS:  # the rest waits for the next batch
        keep = set(contexts[:MAX_CONTEXTS])
        for p in ready:
            if (p.sop_class, p.transfer_syntax) not in keep:
                outcomes[p.item.row_id] = SendOutcome(
                    p.item.row_id,
                    "unreachable",
                    "more classes in one batch than one association takes",
                )
        ready = [p for p in ready if (p.sop_class, p.transfer_syntax) in keep]
        contexts = contexts[:MAX_CONTEXTS]
    if ready:
        for outcome in _send(config, ready, contexts):
            outcomes[outcome.row_id] = outcome
    return [outcomes[item.row_id] for item in items]


def _prepare(item: SendItem) -> _Prepared | SendOutcome:
    """The file's SOP class and transfer syntax, checked against the queue's record."""
    try:
        ds = pydicom.dcmread(item.path, stop_before_pixels=True)
    except FileNotFoundError:
        return SendOutcome(
            item.row_id,
            "gone",
            "the outbox file is gone (removed outside FAME Node); the job's results folder "
            "still holds its mask and result.json",
        )
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as exc:
        return SendOutcome(
            item.row_id, "gone", f"the outbox file cannot be read as DICOM ({type(exc).__name__})"
        )
    meta = getattr(ds, "file_meta", None)
    sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    uid = str(ds.get("SOPInstanceUID", ""))
    if not sop_class or not syntax or not uid:
        return SendOutcome(
            item.row_id,
            "gone",
            "the outbox file has no SOP Class UID, SOP Instance UID or Transfer Syntax UID",
        )
    if item.sop_instance_uid is not None and uid != item.sop_instance_uid:
        return SendOutcome(
            item.row_id,
            "gone",
            f"the outbox file now holds SOP Instance UID {uid}, not the queued "
            f"{item.sop_instance_uid}: it was replaced outside FAME Node; not sent",
        )
    return _Prepared(item, sop_class, syntax)


def _send(
    config: DicomSendConfig, ready: Sequence[_Prepared], contexts: Sequence[tuple[str, str]]
) -> list[SendOutcome]:
    ae = AE(ae_title=config.calling_ae_title)
    ae.acse_timeout = config.acse_timeout_s
    ae.dimse_timeout = config.dimse_timeout_s
    ae.network_timeout = config.network_timeout_s
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    seen: dict[str, str] = {}  # what the association got as far as

    def on_acse(event: Event) -> None:
        primitive = getattr(event, "primitive", None)
        if primitive is not None and getattr(primitive, "result", None) in (0x01, 0x02):
            seen["rejected"] = (
                f"{primitive.result_str}, {primitive.source_str}: {primitive.reason_str}"
            )

    handlers: list[EventHandlerType] = [
        (evt.EVT_ACSE_RECV, on_acse),
        (evt.EVT_CONN_OPEN, lambda _e: seen.setdefault("connected", "yes")),
        (evt.EVT_ACCEPTED, lambda _e: seen.setdefault("accepted", "yes")),
    ]
    where = f"{config.ae_title}@{config.host}:{config.port}"
    try:
        assoc = ae.associate(
            str(config.host), config.port, ae_title=str(config.ae_title), evt_handlers=handlers
        )
    except (OSError, RuntimeError, ValueError) as exc:
        return _all(ready, "unreachable", f"cannot connect to the PACS {where}: {exc}")
    if not assoc.is_established:
        return _all(ready, "unreachable", _why_not(where, seen, config.acse_timeout_s))
    try:
        return [_store_one(assoc, p, where) for p in ready]
    finally:
        if assoc.is_established:
            assoc.release()


def _why_not(where: str, seen: dict[str, str], timeout_s: float) -> str:
    """Why an association with the PACS at `where` was not established."""
    if "rejected" in seen:
        return f"the PACS {where} rejected the association ({seen['rejected']})"
    if "accepted" in seen:
        return (
            f"the PACS {where} accepted the association but none of the SOP classes offered "
            "(SEG / SR storage): configure the PACS to store them"
        )
    if "connected" in seen:
        return (
            f"the PACS {where} ended the association before accepting it (no answer within "
            f"{timeout_s:g} s, or an abort)"
        )
    return (
        f"the PACS {where} cannot be reached (connection refused, or no route to it): is it "
        "running, and are dicom_send.host and port right?"
    )


def _store_one(assoc: Association, p: _Prepared, where: str) -> SendOutcome:
    row = p.item.row_id
    if not assoc.is_established:
        return SendOutcome(row, "unreachable", f"the association with {where} ended mid-batch")
    try:
        answer = assoc.send_c_store(p.item.path)
    except ValueError as exc:  # no accepted presentation context, or not encodable
        return SendOutcome(
            row,
            "refused",
            f"the PACS {where} accepted no presentation context for "
            f"{pydicom.uid.UID(p.sop_class).name} in {pydicom.uid.UID(p.transfer_syntax).name}"
            f" ({exc})",
        )
    except (OSError, AttributeError) as exc:
        return SendOutcome(row, "gone", f"the outbox file cannot be sent ({type(exc).__name__})")
    status = answer.get("Status")
    if status is None:  # no answer: timed out, or the association was aborted
        return SendOutcome(
            row, "unreachable", f"no C-STORE answer from {where} (timed out or aborted)"
        )
    code = int(status)
    comment = str(answer.get("ErrorComment", "") or "").strip()
    text = describe_status(code) + (f"{PACS_COMMENT}{comment}" if comment else "")
    if code == 0x0000:
        return SendOutcome(row, "sent", None, code)
    if code in WARNING_STATUSES:
        return SendOutcome(row, "sent", f"stored with warning {text}", code)
    if 0xA700 <= code <= 0xA7FF:
        busy = f"the PACS {where} is out of resources: {text}"
        return SendOutcome(row, "unreachable", busy, code)
    return SendOutcome(row, "refused", f"the PACS {where} refused it: {text}", code)


def _all(ready: Sequence[_Prepared], verdict: Verdict, detail: str) -> list[SendOutcome]:
    return [SendOutcome(p.item.row_id, verdict, detail) for p in ready]
