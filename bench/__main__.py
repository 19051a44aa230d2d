"""``python -m bench``: every benchmark, then docs/PERFORMANCE.md (see bench/README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import ensembles, models, node, report
from bench.common import REPO_ROOT, RESULTS_DIR


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--repeats", type=int, default=7, help="per-model repeats")
    p.add_argument("--node-repeats", type=int, default=5, help="end-to-end repeats")
    p.add_argument("--images", type=int, default=78, help="files dropped into the node")
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    p.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "PERFORMANCE.md")
    p.add_argument("--quick", action="store_true", help="a smoke run: few repeats and images")
    args = p.parse_args(argv)
    m, n = args.results / "models.json", args.results / "node.json"
    e = report.ENSEMBLE_RESULTS
    if args.quick:
        models.run(1, m, quick=True)
        node.run(min(args.images, 6), 1, n)
        e = args.results / "ensembles.json"
        ensembles.run(1, 4, 1, e)
    else:
        models.run(args.repeats, m)
        node.run(args.images, args.node_repeats, n)
        ensembles.run(5, 40, 2, e)
    gpu = report.load_results(report.GPU_RESULTS)
    report.write(
        report.load_results(m), report.load_results(n), args.doc, gpu, report.load_results(e)
    )
    print(f"written: {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
