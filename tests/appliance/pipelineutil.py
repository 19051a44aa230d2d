"""Helpers for the in-process pipeline tests: a node's parts on a temporary root, and one
file taken through intake and the pipeline as `fame-node process` does."""

from __future__ import annotations

from pathlib import Path

from appliance.config import load_config
from appliance.service import NodeParts, build_parts


def node_parts(root: Path, *, workers: int | None = None, **env: str) -> NodeParts:
    """`build_parts` on a fresh node root; `env` adds FAME_NODE_* settings."""
    config = load_config(env={"FAME_NODE_PATHS__ROOT": str(root), **env})
    return build_parts(config, workers=workers)


def process_file(parts: NodeParts, path: Path) -> int:
    """Queue `path` (from anywhere, as `fame-node process` does), run it; its job id."""
    outcome = parts.intake.submit(path, inside_inbox=False)
    job = parts.queue.claim(outcome.id)
    assert job is not None, f"job {outcome.id} was not queued: {outcome.status}"
    parts.pipeline.process(job)
    return outcome.id
