"""``fame-node run`` for what-if benchmarks: the node, with one cost changed by the bench.

``FAME_BENCH_PNG_COMPRESS_LEVEL=N`` makes the result writers encode PNGs at zlib level N
instead of Pillow's default (6). Used only by `bench.node`'s ``node_png_level1`` variant, to
measure how much of the node's time the result files take; the node itself is unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray


def _patch_png_level(level: int) -> None:
    from PIL import Image

    from appliance.results import writers

    def write_png(path: Path, array: NDArray[np.uint8]) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(array).save(tmp, format="PNG", compress_level=level)
        os.replace(tmp, path)

    writers._write_png = write_png


def main() -> int:
    level = os.environ.get("FAME_BENCH_PNG_COMPRESS_LEVEL")
    if level is not None:
        _patch_png_level(int(level))
    from appliance.cli import main as cli

    return cli(["run", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
