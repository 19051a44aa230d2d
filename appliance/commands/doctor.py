"""`fame-node doctor [--json]`: check this machine and node, and say what to do.

Prints one line per finding (``ok``, ``warn``, ``FAIL``) with the fix where there is one
(`appliance.doctor`); exit code 1 when something blocks the node, else 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.config import NodeConfig
from appliance.privacy import shown
from appliance.results import strict_json

_MARK = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check packages, folders, store, model, GPU and backend, decoder, ports, "
        "federation certificates, the installation; say what to do",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per finding")
    p.set_defaults(handler=run)


def run(config: NodeConfig, args: argparse.Namespace) -> int:
    from appliance.doctor import run_checks

    findings = run_checks(config)
    for f in findings:
        if args.json:
            print(strict_json.dumps(f.to_dict()))
            continue
        line = f"{_MARK[f.level]}  {f.check:<11} {shown(f.detail)}"
        print(line + (f"\n{'':18}-> {shown(f.fix)}" if f.fix and f.level != "ok" else ""))
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    if not args.json:
        verdict = "the node can run" if not failed else "something blocks the node"
        print(f"\n{failed} problem(s), {warned} warning(s): {verdict}")
    return 1 if failed else 0
