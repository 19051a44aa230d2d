"""``fame-node gui``: the clinician's desktop over the configured node's store.

PyQt6 is an optional extra: the node runs without it, and this command says how to
install it when it is missing. The models panel acts through the node's model registry.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from appliance.config import NodeConfig

GUI_EXTRA_HINT = (
    "the clinician GUI cannot load PyQt6 ({error}). Install the 'gui' extra: pip install "
    "'fame-node[gui]' (from a checkout: pip install -e '.[gui]'); where PyQt6 is installed "
    "but a system library is missing, install Qt's (Debian: apt-get install libgl1 libegl1 "
    "libxkbcommon0 libfontconfig1 libglib2.0-0 libdbus-1-3)"
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gui", help="the clinician GUI: worklist, overlay viewer, review, models panel"
    )
    p.add_argument(
        "--reviewer",
        default=None,
        help="name decisions are recorded under (default: the signed-in user)",
    )
    p.set_defaults(handler=run)


def run(config: NodeConfig, args: argparse.Namespace) -> int:
    from gui import qt_load_error  # the Qt probe lives with the view: nothing here imports Qt

    error = qt_load_error()
    if error is not None:
        print(f"fame-node: {GUI_EXTRA_HINT.format(error=error)}", file=sys.stderr)
        return 2
    from appliance.models.registry import ModelRegistry
    from gui.app import run_gui

    registry = ModelRegistry(config)
    try:
        return run_gui(config, registry, reviewer=args.reviewer)
    finally:
        registry.close()
