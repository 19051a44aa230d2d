"""What `fame-node status` and `fame-node results` report, gathered from the store and
the running service's status file (the service may be another process).

File names and folders are shown with `appliance.privacy.shown_name` (the results rows
through `Outcome.to_dict`): a name with a newline or an escape sequence in it cannot
break a line or rewrite the terminal."""

from __future__ import annotations

import os
import socket
from typing import Any

from appliance.app.display import console_diagnosis
from appliance.config import NodeConfig
from appliance.errors import FameNodeError
from appliance.federation.report import federation_report, format_federation
from appliance.models.registry import ModelRegistry
from appliance.nodelock import lock_path, read_holder
from appliance.oneshot import describe
from appliance.privacy import shown, shown_name
from appliance.runtime import create_backend
from appliance.runtime.factory import available_providers, describe_sharing
from appliance.service_status import read_service_status
from appliance.store.jobs import JobQueue
from appliance.store.outbound import OutboundQueue
from appliance.store.results import ResultStore


def gather_status(config: NodeConfig) -> dict[str, Any]:
    queue = JobQueue(config.database_path)
    try:
        counts = queue.counts()
        waiting_jobs = queue.waiting()
    finally:
        queue.close()
    service = read_service_status(config)
    lock = lock_path(config.database_path)
    data: dict[str, Any] = {
        "node_name": config.node_name,
        "database": shown_name(config.database_path),
        "inbox": shown_name(config.folder("inbox")),
        "queue": {str(k): v for k, v in counts.items()},
        "service": service,
        "available_providers": available_providers(),
        # Queued jobs waiting out a passing fault, by what for; and what the running
        # service itself reports it waits for (disk space, the database, ...).
        "waiting_jobs": waiting_jobs,
        "waiting_for": (service or {}).get("waiting_for", []) if service else [],
        "lock_holder": _live_holder(read_holder(lock)),
        "outbox": _outbox_counts(config),
        "federation": federation_report(config),
    }
    if service is not None and service["alive"]:
        data.update(
            model=service["model"], backend=service["backend"], provider=service["provider"]
        )
        data["backend_skipped"] = service.get("backend_skipped", [])
        data["sharing"] = service.get("sharing")
        data["provider_source"] = "the running service"
        return data
    # No service running: report what this machine would run, by really opening a session.
    try:
        registry = ModelRegistry(config)
        bundle = registry.load(registry.active().path)
        workers = config.processing.worker_count()
        backend = create_backend(bundle, config.runtime, workers=workers)
        data.update(model=bundle.version_label, backend=backend.name, provider=backend.device)
        data["sharing"] = describe_sharing(backend, workers)
        # Why faster backends were not used (`appliance.runtime.factory`).
        data["backend_skipped"] = [str(s) for s in getattr(backend, "skipped", ())]
        data["provider_source"] = "probed now (the service is not running)"
    except FameNodeError as exc:
        data.update(model=None, backend=None, provider=None, problem=str(exc))
    return data


def _outbox_counts(config: NodeConfig) -> dict[str, int]:
    """The DICOM send queue by state (pending, sent, failed)."""
    with OutboundQueue(config.database_path) as outbound:
        return outbound.counts()


def _live_holder(holder: dict[str, Any] | None) -> dict[str, Any] | None:
    """The lock file's holder if that process is alive on this host (a killed service
    leaves its line behind; the kernel has dropped its lock)."""
    if not holder or holder.get("host") != socket.gethostname():
        return holder or None
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return None
    except (PermissionError, ValueError, OverflowError):
        return holder
    return holder


def format_status(d: dict[str, Any]) -> str:
    svc = d["service"]
    if svc is None:
        running = "not running (no status file yet)"
    elif svc["alive"]:
        running = f"running, pid {svc['pid']}, since {svc['started_at']}"
    else:
        running = f"not running (last heartbeat {svc['heartbeat_at']})"
    q = d["queue"]
    lines = [
        f"node      {d['node_name']}",
        f"service   {running}",
        f"inbox     {d['inbox']}",
        f"database  {d['database']}",
        "queue     " + ", ".join(f"{k} {v}" for k, v in q.items()),
        f"model     {d.get('model') or '-'}",
        f"backend   {d.get('backend') or '-'} on {d.get('provider') or '-'} "
        f"({d.get('provider_source', '')})",
        f"workers   {d.get('sharing') or '-'}",
        f"ONNX Runtime providers available: {', '.join(d['available_providers'])}",
    ]
    lines += [f"  skipped {reason}" for reason in d.get("backend_skipped") or []]
    if svc is not None and svc["alive"]:
        for w in d.get("waiting_for") or []:
            lines.append(
                f"waiting   {w['scope']} waits for {shown(w['condition'])} since {w['since']}"
            )
    for condition, n in (d.get("waiting_jobs") or {}).items():
        lines.append(f"retrying  {n} job(s) wait for {shown(condition)}; retried by themselves")
    holder = d.get("lock_holder")
    if holder and not (svc and svc["alive"]):
        lines.append(
            f"lock      held by pid {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('since')} (a service that does not report: check it)"
        )
    if q.get("failed"):
        lines.append(f"set aside {q['failed']} failed job(s): `fame-node jobs retry --all`")
    out = d.get("outbox") or {}
    if any(out.values()):
        lines.append("outbox    " + ", ".join(f"{k} {v}" for k, v in out.items()))
    if out.get("failed"):
        lines.append(f"set aside {out['failed']} failed send(s): `fame-node outbox list`")
    if d.get("federation"):
        lines += format_federation(d["federation"])
    if d.get("problem"):
        lines.append(f"problem   {shown(d['problem'])}")
    return "\n".join(lines)


def gather_results(config: NodeConfig, limit: int) -> list[dict[str, Any]]:
    """The newest jobs (of every status, so nothing goes missing) with their findings."""
    queue = JobQueue(config.database_path)
    results = ResultStore(config.database_path)
    try:
        return [
            describe(queue, results, job, str(job.path)).to_dict()
            for job in queue.list_jobs(limit=limit)
        ]
    finally:
        queue.close()
        results.close()


def format_results(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no results yet"
    head = f"{'job':>5}  {'status':<9} {'diagnosis':<12} {'p':>5}  {'lesion':>12}  file / reason"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["frames"]:
            f = r["frames"][0]
            size = (
                f"{f['lesion_area_mm2']:.1f} mm2"
                if f["lesion_area_mm2"] is not None
                else f"{f['lesion_area_px']:.0f} px"
            )
            flags = f"  [{', '.join(f['flags'])}]" if f["flags"] else ""
            if r["duplicate_of"] is not None:
                flags += f"  (same image as job {r['duplicate_of']})"
            shown, p = console_diagnosis(f["diagnosis"], f["confidence"], f["flags"])
            lines.append(
                f"{r['job_id']:>5}  {r['job_status']:<9} {shown:<12} "
                f"{p:>5}  {size:>12}  {r['path']}{flags}"
            )
        else:
            lines.append(
                f"{r['job_id']:>5}  {r['job_status']:<9} {'-':<12} {'':>5}  {'':>12}  "
                f"{r['path']}: {r['reason']}"
            )
    return "\n".join(lines)
