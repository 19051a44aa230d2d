"""`fame-node doctor`: what IT staff need to know about this machine and this node.

Each check yields `Finding`s: ``ok``, ``warn`` (the node runs, but something deserves
attention) or ``fail`` (it blocks the node, or a part the config turns on), each with
what was found and what to do. `run_checks` runs them in the order of `CHECKS`; a check
that crashes is a ``fail`` of its own, never the end of the report.

Modules: `findings` (the types), `node` (Python and packages, config, folders and free
space, store, service, model, decoding sandbox, engine cache), `install` (what
install.sh recorded, logs, logrotate, units), `accel` (GPU, CUDA, TensorRT, ONNX Runtime
providers, the backend against the config), `telemetry` (ONNX Runtime's and Flower's usage
reports off), `network` + `ports` (the DICOM receiver's and the metrics' ports, the DICOM
destination), `federation` (address and certificates).
"""

from __future__ import annotations

from appliance.config import NodeConfig
from appliance.doctor.accel import check_accelerators, check_backend
from appliance.doctor.federation import check_federation
from appliance.doctor.findings import Check, Finding, Level
from appliance.doctor.install import check_install, check_logs
from appliance.doctor.network import check_dicom_receiver, check_dicom_send, check_metrics
from appliance.doctor.node import (
    check_config_values,
    check_decoder,
    check_engine_cache,
    check_folders,
    check_model,
    check_python,
    check_service,
    check_store,
)
from appliance.doctor.telemetry import check_telemetry

__all__ = ["CHECKS", "Check", "Finding", "Level", "run_checks"]

CHECKS: tuple[Check, ...] = (
    check_python,
    check_config_values,
    check_folders,
    check_logs,
    check_store,
    check_service,
    check_install,
    check_model,
    check_accelerators,
    check_backend,
    check_telemetry,
    check_decoder,
    check_engine_cache,
    check_dicom_receiver,
    check_dicom_send,
    check_metrics,
    check_federation,
)


def run_checks(config: NodeConfig, checks: tuple[Check, ...] | None = None) -> list[Finding]:
    """Every check's findings; a check that crashes is a ``fail`` of its own, never fatal."""
    findings: list[Finding] = []
    for check in checks or CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            findings.extend(check(config))
        except Exception as exc:  # a doctor that dies on a sick machine is useless
            findings.append(
                Finding(
                    name,
                    "fail",
                    f"the check itself failed: {type(exc).__name__}: {exc}",
                    "report this with the output of `fame-node doctor --json`",
                )
            )
    return findings
