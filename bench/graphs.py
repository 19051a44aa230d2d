"""Two or more bundles' graphs side by side: is a new bundle's graph slower than the old one's?

``python -m bench.graphs --bundle OLD --bundle NEW [--threads 1] [--repeats 9] [--calls 100]``
verifies each bundle (`appliance.bundle.load_bundle`: every file's sha256, no unlisted file),
opens an ONNX Runtime CPU session on its verified ``model.onnx`` and times them interleaved
(`bench.common.interleaved`: each repeat runs every graph, the order rotating) at batch 1 on
the same preprocessed image (the BUSI test split's first, or a phantom without it). It
prints one JSON object: the machine, the load average at the start, each graph's median
images/s, and each graph's speed against the first's, the median of the per-repeat ratios
with their range. A ratio under 1 is slower than the first bundle.

This is the check of a graph change that leaves the network alone (0.2.6's lesion means,
five weighted sums more than 0.2.5's graph); the node end to end is `python -m bench.node`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import input_images, interleaved, machine, preprocessed_batch


def _runner(session: Any, x: Any) -> Callable[[], object]:
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def run(bundles: list[Path], threads: int, repeats: int, calls: int) -> dict[str, Any]:
    from appliance.bundle import load_bundle
    from bench.models import ort_session

    load = os.getloadavg()
    graphs: dict[str, Any] = {}
    for path in bundles:
        bundle = load_bundle(path)  # verified before its graph is opened
        label = f"{bundle.manifest.name}@{bundle.manifest.version}"
        if label in graphs:
            raise ValueError(f"{label} is given twice: compare different bundles")
        session = ort_session(path / "model.onnx", ["CPUExecutionProvider"], threads)
        graphs[label] = (bundle, session)
    with tempfile.TemporaryDirectory() as scratch:
        paths, what = input_images(Path(scratch), 1)
        size = int(next(iter(graphs.values()))[0].manifest.preprocess_params().size)
        x = preprocessed_batch(paths, size)
    contenders = {label: _runner(session, x) for label, (_, session) in graphs.items()}
    timings = interleaved(contenders, repeats=repeats, calls=calls, warmup=10)
    first = next(iter(graphs))
    return {
        "command": "python -m bench.graphs",
        "settings": {
            "threads": threads,
            "repeats": repeats,
            "calls_per_repeat": calls,
            "batch": 1,
            "input": what,
        },
        "machine": machine(),
        "load_average_at_start": [round(v, 2) for v in load],
        "images_per_s_median": {k: round(1.0 / timings.median(k), 1) for k in graphs},
        # seconds(first) / seconds(k): above 1 is faster than the first bundle
        "speed_against_first": {
            k: {m: round(v, 3) for m, v in timings.ratio(first, k).items()}
            for k in graphs
            if k != first
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.graphs", description=__doc__)
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--calls", type=int, default=100)
    a = parser.parse_args(argv)
    if len(a.bundle) < 2:
        print("error: give at least two --bundle to compare", file=sys.stderr)
        return 2
    from appliance.errors import BundleError

    try:
        print(json.dumps(run(a.bundle, a.threads, a.repeats, a.calls), indent=1))
    except (BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
