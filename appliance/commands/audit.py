"""`fame-node audit`: read and verify the node's audit log (`appliance.store.audit`).

``fame-node audit [--since ISO] [--action A] [--limit N] [--json]`` prints the newest
entries, oldest first: a table for a person, or one JSON object per line (``--json``) for
a tool. ``--verify`` walks the whole hash chain instead: exit code 0 with the number of
rows and the newest digest (keep it with a backup: a shorter log shows against it), or 4
naming the first row that was changed or removed. It may run beside the service (reads
never wait for its writes). The log holds no patient data or file names; text is still
shown escaped (`appliance.privacy.shown`).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from appliance.config import NodeConfig
from appliance.privacy import shown
from appliance.results import strict_json
from appliance.store.audit import AuditEntry, AuditLog

TAMPERED_EXIT = 4


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit", help="the audit log: results, reviews, model changes, federation rounds"
    )
    p.add_argument(
        "--since", type=_since, help="entries at or after this time (ISO 8601; UTC if no zone)"
    )
    p.add_argument("--action", help="only this action (result, review, model_activated, ...)")
    p.add_argument("--limit", type=_limit, default=50, help="the newest N entries (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--verify", action="store_true", help="check the hash chain; exit 4 if it is broken"
    )
    p.set_defaults(handler=_audit)


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time; expected e.g. 2026-03-01 or "
            "2026-03-01T08:00:00+01:00"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def entry_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "subject": entry.subject,
        "detail": entry.detail,
        "prev_sha256": entry.prev_sha256,
        "sha256": entry.sha256,
    }


def _audit(config: NodeConfig, args: argparse.Namespace) -> int:
    with AuditLog(config.database_path) as log:
        if args.verify:
            report = log.verify()
            if args.json:
                print(strict_json.dumps(report.__dict__))
            elif report.ok:
                print(f"audit log intact: {report.rows} row(s), newest sha256 {report.last_sha256}")
            else:
                print(
                    f"audit log BROKEN at row {report.broken_id}: {report.problem}. The rows "
                    f"before it ({report.rows - 1}) are intact; compare the database with a "
                    "backup and find out who had write access to it."
                )
            return 0 if report.ok else TAMPERED_EXIT
        entries = log.read(args.since, args.action, args.limit)
    if args.json:
        for entry in entries:
            print(strict_json.dumps(entry_dict(entry)))
        return 0
    if not entries:
        print("no audit entries" + (" match" if args.since or args.action else ""))
        return 0
    print(f"{'id':>6}  {'at (UTC)':<19}  {'actor':<12} {'action':<16} {'subject':<18} detail")
    for e in entries:
        detail = json.dumps(e.detail, sort_keys=True, separators=(",", ":"))
        when = e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{e.id:>6}  {when:<19}  {shown(e.actor):<12} {e.action:<16} "
            f"{shown(e.subject or '-'):<18} {shown(detail)}"
        )
    return 0
