"""A per-epoch progress bar for the training loops, without a dependency.

On a terminal (the stream's ``isatty()``) the bar is redrawn in place on stderr after every
batch: stage, epoch, batches done, running loss and seconds. Anywhere else (a log file,
nohup, CI) it writes nothing: the loops print one plain line per finished epoch
(`trainer.loops.Logger`), which is what a log should hold.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def bar_text(
    stage: str, epoch: int, epochs: int, done: int, total: int, loss: float, seconds: float
) -> str:
    """One line of the bar, e.g. ``[stage1] epoch 3/40 |######......| 12/63 loss 0.4321 4 s``."""
    filled = BAR_WIDTH * done // max(1, total)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return (
        f"[{stage}] epoch {epoch}/{epochs} |{bar}| {done}/{total} loss {loss:.4f} {seconds:.0f} s"
    )


class EpochProgress:
    """The bar of one epoch: `update` after each batch, `close` when the epoch ends."""

    def __init__(
        self, stage: str, epoch: int, epochs: int, batches: int, stream: TextIO | None = None
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.active = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stage, self.epoch, self.epochs, self.batches = stage, epoch, epochs, batches
        self.done, self.loss_sum, self.count = 0, 0.0, 0
        self.start = time.monotonic()
        self._width = 0

    def update(self, loss: float, n: int) -> None:
        """One batch of `n` samples with mean loss `loss` is done."""
        self.done += 1
        self.loss_sum += loss * n
        self.count += n
        if self.active:
            text = bar_text(
                self.stage,
                self.epoch,
                self.epochs,
                self.done,
                self.batches,
                self.loss_sum / max(1, self.count),
                time.monotonic() - self.start,
            )
            self._width = max(self._width, len(text))
            self.stream.write("\r" + text.ljust(self._width))
            self.stream.flush()

    def close(self) -> None:
        """Clear the bar's line, so the epoch's log line starts on a clean one."""
        if self.active and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
