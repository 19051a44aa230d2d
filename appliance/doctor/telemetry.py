"""Doctor check that nothing the node loads reports home: ONNX Runtime's and Flower's
usage telemetry.

ONNX Runtime's Linux wheels from 1.29 on carry Microsoft's 1DS telemetry: on import they
write a device id and an event cache under ``~/.cache/Microsoft/DeveloperTools/`` and send
usage events, unless ``ORT_DISABLE_TELEMETRY=1`` is in the environment before the library
loads (measured with onnxruntime 1.32: with it, nothing is written). Flower sends usage
events to telemetry.flower.ai unless ``FLWR_TELEMETRY_ENABLED=0``. The installed units set
both; this check reads the environment of the process running doctor (the unit's, when
doctor is run as install.sh does) and looks for a device id already written.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from appliance.config import NodeConfig
from appliance.doctor.findings import Finding

ORT_FIRST_WITH_TELEMETRY = (1, 29)


def check_telemetry(config: NodeConfig) -> Iterator[Finding]:
    ort = _version("onnxruntime") or _version("onnxruntime-gpu")
    if ort is not None and _tuple(ort) >= ORT_FIRST_WITH_TELEMETRY:
        if os.environ.get("ORT_DISABLE_TELEMETRY") == "1":
            yield Finding("telemetry", "ok", f"ONNX Runtime {ort}: telemetry off")
        else:
            yield Finding(
                "telemetry",
                "warn",
                f"ONNX Runtime {ort} sends usage telemetry to Microsoft unless "
                "ORT_DISABLE_TELEMETRY=1 is set before it loads (not set here)",
                "the installed units set it; where the node runs otherwise (by hand, the "
                "GUI): export ORT_DISABLE_TELEMETRY=1",
            )
    cache = Path.home() / ".cache" / "Microsoft" / "DeveloperTools" / ".onnxruntime"
    if (cache / "deviceid").exists():
        yield Finding(
            "telemetry",
            "warn",
            f"ONNX Runtime has written a telemetry device id in {cache}",
            f"rm -r {cache} (after setting ORT_DISABLE_TELEMETRY=1 it is not written again)",
        )
    if importlib.util.find_spec("flwr") is not None:
        if os.environ.get("FLWR_TELEMETRY_ENABLED", "1") == "0":
            yield Finding("telemetry", "ok", "Flower: telemetry off")
        else:
            yield Finding(
                "telemetry",
                "warn",
                "Flower sends usage events to telemetry.flower.ai unless "
                "FLWR_TELEMETRY_ENABLED=0 (not set here)",
                "the installed units set it; elsewhere: export FLWR_TELEMETRY_ENABLED=0",
            )


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
