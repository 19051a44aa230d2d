"""Strict JSON for everything the node writes or prints: no ``NaN`` / ``Infinity``.

Python's `json` writes non-finite floats as the bare words ``NaN`` and ``Infinity``,
which are not JSON: strict parsers (browsers, jq, most languages' standard libraries,
PACS integrations) reject the whole document. A measurement that is not a finite number
(a diameter in mm from a missing or broken pixel spacing, a probability from a model that
overflowed) means "not known", so `finite` maps it to ``null``, here and nowhere else, and
`dumps` then writes with ``allow_nan=False`` so nothing non-finite can slip through.

NumPy scalars and arrays are written as the Python numbers and lists they hold, since
analysis results come from NumPy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def finite(value: Any) -> Any:
    """`value` with every non-finite float (also inside dicts, lists, tuples) as None.

    Raises:
        TypeError: a value JSON cannot hold (names the type), e.g. a set or an object.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):  # numpy scalars: float32, int64, bool_ ...
        return finite(value.item())
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be str, got {type(k).__name__} {k!r}")
            out[k] = finite(v)
        return out
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    raise TypeError(
        f"cannot write a {type(value).__name__} as JSON; expected None, bool, int, float, "
        "str, or a dict / list of those"
    )


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON text of `value`, non-finite numbers written as null (`finite`)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False)
