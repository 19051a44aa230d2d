"""The table `fame-node demo` prints: what happened to every file it dropped."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.app.display import console_diagnosis
from appliance.oneshot import describe

if TYPE_CHECKING:
    from appliance.demo import Dropped
    from appliance.service import Node


def _size(frame: dict[str, object]) -> str:
    mm2 = frame["lesion_area_mm2"]
    if isinstance(mm2, float):
        return f"{mm2:.0f} mm2"
    return f"{frame['lesion_area_px']:.0f} px"


def report(node: Node, plan: list[tuple[Path, Dropped]], elapsed_s: float) -> int:
    """Print the summary; 0 when every file ended as expected, else 1."""
    queue, results = node.parts.queue, node.parts.results
    jobs = {j.path.name: j for j in queue.list_jobs(limit=100_000)}
    names = {j.id: j.path.name for j in jobs.values()}
    unexpected: list[str] = []
    busi_total = busi_right = 0
    tally: Counter[str] = Counter()
    print()
    print(
        f"{'file':<34} {'kind':<14} {'outcome':<10} {'diagnosis':<12} {'p':>5} "
        f"{'lesion':>9} {'truth':>10}  note"
    )
    print("-" * 120)
    for _, d in plan:
        job = jobs.get(d.name)
        if job is None:
            unexpected.append(f"{d.name}: never reached the queue")
            print(f"{d.name[:34]:<34} {d.kind:<14} {'MISSING':<10}")
            continue
        o = describe(queue, results, job, d.name)
        outcome = "duplicate" if job.status == "duplicate" else o.status
        tally[outcome] += 1
        if o.status != d.expect:
            unexpected.append(f"{d.name}: expected {d.expect}, got {o.status} ({o.reason})")
        note = ""
        if job.status == "duplicate" and job.duplicate_of is not None:
            note = f"same image as {names.get(job.duplicate_of, job.duplicate_of)}"
        elif o.status != "done":
            note = o.reason or ""
        if o.frames:
            f = o.frames[0]
            if len(o.frames) > 1:
                note = f"{len(o.frames)} frames analysed; " + note
            if f["flags"]:
                note = f"flags: {', '.join(f['flags'])}; " + note
            if d.kind == "busi":
                busi_total += 1
                busi_right += f["diagnosis"] == d.truth
            # As the GUI shows it: no class or confidence for an image unlike the training
            # images (`appliance.app.display`); result.json and the store keep both.
            shown, p = console_diagnosis(f["diagnosis"], f["confidence"], f["flags"])
            print(
                f"{d.name[:34]:<34} {d.kind:<14} {outcome:<10} {shown:<12} "
                f"{p:>5} {_size(f):>9} {d.truth:>10}  {note[:70]}"
            )
        else:
            print(
                f"{d.name[:34]:<34} {d.kind:<14} {outcome:<10} {'':<12} {'':>5} {'':>9} "
                f"{d.truth:>10}  {note[:110]}"
            )
    print("-" * 120)
    total = sum(tally.values())
    print(
        f"{total} files in {elapsed_s:.1f}s ({total / max(elapsed_s, 1e-9):.1f} files/s): "
        + ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
    )
    if busi_total:
        print(
            f"BUSI test images: diagnosis equals the expert label for {busi_right} of "
            f"{busi_total} ({100 * busi_right / busi_total:.0f}%)"
        )
    print(f"results: {node.config.folder('results')}   database: {node.config.database_path}")
    print(f"log: {node.config.folder('work') / 'logs' / 'fame-node.log'}")
    print(f"see them: fame-node --config {node.config.paths.root / 'config.toml'} results")
    if unexpected:
        print("\nUNEXPECTED:")
        for line in unexpected:
            print(f"  - {line}")
        return 1
    print("every good file was processed and every bad one rejected with its reason.")
    return 0
