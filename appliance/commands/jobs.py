"""`fame-node jobs`: what the queue holds, and bringing set-aside jobs back.

``fame-node jobs list [--status S] [--limit N] [--json]`` lists jobs, newest first, with
their state, attempts, retries, what a waiting job waits for and why a job ended as it
did. ``fame-node jobs retry (--all | JOB ...)`` puts ``failed`` jobs (an internal error,
or set aside after the node stopped on them `ingest.max_attempts` times) back in the
queue; a running service takes them within a second. The node kept its copy of each
queued file, so a retry analyses the very bytes that were queued. Both may run beside the
service (they are separate processes over the same store). Names are shown escaped
(`appliance.privacy.shown_name`): this is the CLI, for IT staff, not a log.
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.config import NodeConfig
from appliance.privacy import shown, shown_name
from appliance.results import strict_json
from appliance.store.job_types import JobStatus
from appliance.store.jobs import Job, JobQueue


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("jobs", help="list jobs; retry the ones set aside (failed)")
    sub = p.add_subparsers(dest="jobs_command", required=True)
    ls = sub.add_parser("list", help="jobs, newest first, with their state and reason")
    ls.add_argument("--status", choices=[s.value for s in JobStatus], help="only this state")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(handler=_list)
    rt = sub.add_parser("retry", help="put failed jobs back in the queue")
    rt.add_argument("ids", nargs="*", type=int, default=[], metavar="JOB", help="job ids")
    rt.add_argument("--all", action="store_true", help="every failed job")
    rt.set_defaults(handler=_retry)


def _row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": str(job.status),
        "file": shown_name(job.path),
        "attempts": job.attempts,
        "retries": job.retries,
        "waiting_for": job.waiting_for,
        "not_before": None if job.not_before is None else job.not_before.isoformat(),
        "error_code": job.error_code,
        "reason": job.reason,
        "duplicate_of": job.duplicate_of,
        "conflict_of": job.conflict_of,
    }


def _list(config: NodeConfig, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise SystemExit(f"--limit must be >= 0, got {args.limit}")
    with JobQueue(config.database_path) as queue:
        jobs = queue.list_jobs(args.status, limit=args.limit)
    for job in jobs:
        row = _row(job)
        if args.json:
            print(strict_json.dumps(row))
            continue
        why = (job.waiting_for and f"waiting for {job.waiting_for}") or job.reason or ""
        print(f"{job.id:>7}  {job.status:<9} {row['file']}  {shown(why)}".rstrip())
    return 0


def _retry(config: NodeConfig, args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise SystemExit("name the jobs to retry (JOB ...) or give --all, not both")
    with JobQueue(config.database_path) as queue:
        retried = queue.retry(None if args.all else args.ids)
    if not retried:
        print("no failed jobs to retry")
        return 0
    for job in retried:
        print(f"job {job.id} queued again ({shown_name(job.path)})")
    print(f"{len(retried)} job(s) back in the queue; a running service takes them at once")
    return 0
