"""Record a `fame-node evaluate --json` report in a bundle's manifest (before signing).

    fame-node evaluate --manifest ../shared/data/busi/manifest.csv --split test --json \
        | python -m exporters.record_evaluation --bundle models/default --name busi_test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from appliance.errors import FameNodeError
from exporters.bundle import record_evaluation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--name", required=True, help="key under manifest.evaluation, e.g. busi_test")
    p.add_argument("--report", type=Path, help="the JSON report (default: standard input)")
    args = p.parse_args(argv)
    text = args.report.read_text(encoding="utf-8") if args.report else sys.stdin.read()
    try:
        report = json.loads(text)
        figures = {
            "dataset": report["dataset"],
            "split": report["split"],
            "n_cases": report["n_cases"],
            "model": report["model"],
            "segmentation": report["segmentation"],
            "classification": report["classification"],
        }
        record_evaluation(args.bundle, args.name, figures)
    except (json.JSONDecodeError, KeyError) as exc:
        print(
            f"record_evaluation: not a `fame-node evaluate --json` report: {exc}", file=sys.stderr
        )
        return 2
    except FameNodeError as exc:
        print(f"record_evaluation: {exc}", file=sys.stderr)
        return 1
    print(f"recorded evaluation {args.name!r} in {args.bundle / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
