"""The `fame-node` command line: run, process, status, results, evaluate, demo, config.

Every command runs with a umask of at least 0o027 (`_node_umask`): the database, its WAL,
results, quarantine copies, logs and work files it creates are readable by the node's
user and group only, whoever starts it, as the service unit's ``UMask=0027`` does. JSON
output is strict (`appliance.results.strict_json`); names are shown safely
(`appliance.privacy.shown_name`), never with raw control characters.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from appliance import __version__
from appliance.config import NodeConfig, check_config, load_config
from appliance.errors import ConfigError, FameNodeError
from appliance.logs import setup_logging
from appliance.privacy import shown_name
from appliance.results import strict_json

# Files the node creates (database, results, logs, quarantine copies, work) hold patient
# data: no permission bit for "other". The node's group is the GUI's (packaging/install.sh).
NODE_UMASK = 0o027

# Commands contributed by other modules, registered explicitly here. Each module has
# `register(subparsers)`, which adds its parser(s) with `set_defaults(handler=fn)`, where
# `fn(config: NodeConfig, args: argparse.Namespace) -> int` (the exit code).
COMMAND_MODULES: tuple[str, ...] = (
    "appliance.commands.models",
    "appliance.commands.gui",
    "appliance.commands.export",
    "appliance.commands.jobs",
    "appliance.commands.doctor",
    "appliance.commands.outbox",
    "appliance.commands.audit",
    "appliance.commands.train",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fame-node",
        description="FAME Node: breast ultrasound segmentation and classification at the PACS.",
    )
    p.add_argument("--version", action="version", version=f"fame-node {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        help="TOML config file (default: $FAME_NODE_CONFIG, else built-in defaults)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="watch the inbox and process files until stopped (SIGTERM)")

    pr = sub.add_parser("process", help="process files or folders now, print one line each")
    pr.add_argument("paths", nargs="+", type=Path)
    pr.add_argument("--json", action="store_true", help="one JSON object per input on stdout")

    st = sub.add_parser("status", help="queue counts, active model, backend really in use")
    st.add_argument("--json", action="store_true")

    rs = sub.add_parser("results", help="list recent results")
    rs.add_argument("--json", action="store_true")
    rs.add_argument("--limit", type=int, default=50)

    ev = sub.add_parser("evaluate", help="measure the installed bundle on a labelled data set")
    ev.add_argument("--manifest", type=Path, required=True, help="CSV: image,label,masks,split")
    ev.add_argument("--split", default="test", help="rows of this split ('all' for every row)")
    ev.add_argument("--site", default=None, help="rows of this site only (column 'site')")
    ev.add_argument("--json", action="store_true")

    de = sub.add_parser("demo", help="set up a demo node, feed it real and broken files, run it")
    de.add_argument("--dir", type=Path, default=Path("demo-node"), help="demo node folder")
    de.add_argument(
        "--busi", type=Path, default=None, help="BUSI folder (default: ../shared/data/busi)"
    )
    de.add_argument("--timeout", type=float, default=900.0, help="give up after this long (s)")

    cf = sub.add_parser("config", help="show or check a configuration")
    cf.add_argument("action", choices=["check", "show"])
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


@contextlib.contextmanager
def _node_umask() -> Iterator[None]:
    """Run with `NODE_UMASK` added to the process umask (a stricter one is kept), and put
    the umask back afterwards, so a caller of `main` in the same process is not changed."""
    previous = os.umask(NODE_UMASK)
    os.umask(previous | NODE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with _node_umask():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "demo":
            from appliance.demo import run_demo

            return run_demo(args.dir, busi=args.busi, timeout_s=args.timeout)
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"fame-node: {exc}", file=sys.stderr)
            return 2
        if args.command == "config":
            return _config(config, args.action)
        setup_logging(
            config.log_level,
            config.folder("work") / "logs" if args.command == "run" else None,
            fmt=config.logging.format,
        )
        builtin = {
            "run": _run,
            "process": _process,
            "status": _status,
            "results": _results,
            "evaluate": _evaluate,
        }
        handler = builtin.get(args.command) or args.handler
        code: int = handler(config, args)
        return code
    except FameNodeError as exc:
        print(f"fame-node: {exc}", file=sys.stderr)
        return 1


def _config(config: NodeConfig, action: str) -> int:
    if action == "show":
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    problems = check_config(config)
    if problems:
        print("configuration problems:")
        for line in problems:
            print(f"  - {line}")
        return 1
    inbox, bundle = shown_name(config.folder("inbox")), shown_name(config.models.bundle)
    print(f"configuration OK (inbox {inbox}, model {bundle})")
    return 0


def _run(config: NodeConfig, args: argparse.Namespace) -> int:
    from appliance.service import Node

    if args.config is not None:  # the federation's ClientApp reads the same file
        os.environ["FAME_NODE_CONFIG"] = str(Path(args.config).resolve())
    node = Node(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        node.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        node.start()  # NodeLockedError when another service runs on this store
    except BaseException:
        node.parts.close()
        raise
    node.wait_stopped()
    if not node.stop():
        # A worker is still inside a job (its job is back in the queue). Leave now rather
        # than at interpreter teardown, which can abort inside a native library mid-call.
        # Its decoder is killed first: a decode with no node to bound it must not go on.
        node.parts.decoder.kill_all()
        logging.shutdown()
        os._exit(0)
    node.parts.close()
    return 0


def _process(config: NodeConfig, args: argparse.Namespace) -> int:
    from appliance.oneshot import process_paths
    from appliance.service import build_parts

    parts = build_parts(config, workers=1)  # one file after another, in this thread
    try:
        outcomes = process_paths(parts, args.paths)
    finally:
        parts.close()
    for o in outcomes:
        if args.json:
            print(strict_json.dumps(o.to_dict()), flush=True)
        else:
            print(_outcome_line(o.to_dict()))
    return 0 if all(o.status == "done" for o in outcomes) else 3


def _outcome_line(o: dict[str, Any]) -> str:
    from appliance.app.display import console_diagnosis

    if o["status"] != "done":
        return f"{o['status']:<9} {o['path']}: {o['reason']}"
    f = o["frames"][0]
    size = (
        f"{f['lesion_area_mm2']:.1f} mm2"
        if f["lesion_area_mm2"] is not None
        else f"{f['lesion_area_px']:.0f} px"
    )
    more = f" (+{len(o['frames']) - 1} frames)" if len(o["frames"]) > 1 else ""
    shown, p = console_diagnosis(f["diagnosis"], f["confidence"], f["flags"])
    flags = f" [{', '.join(f['flags'])}]" if f["flags"] else ""
    return f"done      {o['path']}: {shown} p={p}, lesion {size}{more}{flags} -> {o['result_dir']}"


def _status(config: NodeConfig, args: argparse.Namespace) -> int:
    from appliance.status import format_status, gather_status

    data = gather_status(config)
    print(strict_json.dumps(data, indent=2) if args.json else format_status(data))
    return 0


def _results(config: NodeConfig, args: argparse.Namespace) -> int:
    from appliance.status import format_results, gather_results

    rows = gather_results(config, args.limit)
    if args.json:
        for r in rows:
            print(strict_json.dumps(r))
    else:
        print(format_results(rows))
    return 0


def _evaluate(config: NodeConfig, args: argparse.Namespace) -> int:
    from appliance.analysis import Analyzer
    from appliance.evaluate import evaluate, format_report
    from appliance.models.registry import ModelRegistry
    from appliance.runtime import create_backend

    registry = ModelRegistry(config)  # the model the node runs now, verified
    bundle = registry.load(registry.active().path)
    backend = create_backend(bundle, config.runtime)
    analyzer = Analyzer(bundle, backend, config.thresholds, config.runtime.batch_size)
    split = None if args.split == "all" else args.split
    report = evaluate(analyzer, args.manifest, split, site=args.site)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
