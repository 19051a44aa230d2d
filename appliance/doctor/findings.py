"""What a doctor check reports: a `Finding` (ok / warn / fail, what was found, what to do).

``warn``: the node runs, but something deserves attention; ``fail``: it blocks the node (or
a part the configuration turns on). A check is a `Check`: a function of the node's config
that yields findings; `appliance.doctor` lists them in the order they run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from appliance.config import NodeConfig

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "level": self.level, "detail": self.detail, "fix": self.fix}


Check = Callable[[NodeConfig], Iterator[Finding]]
