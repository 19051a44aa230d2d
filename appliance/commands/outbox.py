"""`fame-node outbox`: the DICOM send queue (SEG / SR for the PACS), and resending.

``fame-node outbox list [--status S] [--job JOB] [--limit N] [--json]`` lists the queued
objects, newest first: id, job, kind, destination, state, attempts, when the next try is
due and why the last one did not succeed (the PACS unreachable, a refusal with its status
code, a warning the PACS stored it with). ``fame-node outbox retry (--all | ID ...)`` puts
``failed`` objects back in the queue, due at once; a running service sends them within
``dicom_send.poll_interval_s``. Both may run beside the service (separate processes over
the same store). Outbox files are named by job (``job-NNNNNN-seg.dcm``) and carry no
patient data in their names.
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.config import NodeConfig
from appliance.privacy import shown
from appliance.results import strict_json
from appliance.store.outbound import OUTBOUND_STATUSES, Outbound, OutboundQueue


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("outbox", help="the DICOM send queue (SEG / SR); resend failed")
    sub = p.add_subparsers(dest="outbox_command", required=True)
    ls = sub.add_parser("list", help="queued objects, newest first, with why they wait")
    ls.add_argument("--status", choices=OUTBOUND_STATUSES, help="only this state")
    ls.add_argument("--job", type=int, default=None, metavar="JOB", help="only this job's")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(handler=_list)
    rt = sub.add_parser("retry", help="put failed objects back in the send queue")
    rt.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="outbox ids")
    rt.add_argument("--all", action="store_true", help="every failed object")
    rt.set_defaults(handler=_retry)


def row_dict(row: Outbound) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "kind": row.kind,
        "file": row.path.name,  # job-NNNNNN-...: no patient data in it
        "sop_instance_uid": row.sop_instance_uid,
        "destination": row.destination,
        "status": row.status,
        "attempts": row.attempts,
        "not_before": None if row.not_before is None else row.not_before.isoformat(),
        "last_error": row.last_error,
        "sent_at": None if row.sent_at is None else row.sent_at.isoformat(),
    }


def _list(config: NodeConfig, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise SystemExit(f"--limit must be >= 0, got {args.limit}")
    with OutboundQueue(config.database_path) as queue:
        rows = queue.list_objects(args.status, job_id=args.job, limit=args.limit)
        counts = queue.counts()
    if args.json:
        for row in rows:
            print(strict_json.dumps(row_dict(row)))
        return 0
    if not config.dicom_send.enabled:
        print("dicom_send is disabled: nothing new is queued or sent")
    for row in rows:
        when = ""
        if row.status == "pending" and row.not_before is not None:
            when = f" next try {row.not_before.isoformat(timespec='seconds')}"
        elif row.status == "sent" and row.sent_at is not None:
            when = f" at {row.sent_at.isoformat(timespec='seconds')}"
        why = f"  {shown(row.last_error)}" if row.last_error else ""
        print(
            f"{row.id:>6}  job {row.job_id:<6} {row.kind.upper():<3} {row.status:<7} "
            f"{row.destination}  attempts {row.attempts}{when}{why}"
        )
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _retry(config: NodeConfig, args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise SystemExit("name the objects to retry (ID ...) or give --all, not both")
    with OutboundQueue(config.database_path) as queue:
        retried = queue.retry(None if args.all else args.ids)
    if not retried:
        print("no failed objects to retry")
        return 0
    for row in retried:
        print(f"outbound {row.id} ({row.kind.upper()} of job {row.job_id}) queued again")
    print(f"{len(retried)} object(s) back in the send queue; a running service sends them")
    return 0
