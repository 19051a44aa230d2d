"""The ``federation`` section of the node's config (`FederationConfig`).

It lives here, beside the code that reads it, and `appliance.config` puts it on
`NodeConfig` as ``federation``. It imports nothing of `appliance.config` (which imports
it), so it defines its own strict, frozen base like every other section.

What the section says: whether the node joins a federation at all; the SuperLink it talks
to and with which certificates and key; when and how gently its SuperNode may train (a
daily time window in local time, a thread count, a niceness); the privacy budget the node
enforces on itself (`FederationPrivacyConfig`); the share of its reviewed cases it keeps
out of training to judge global models (``heldout_share``) and how much worse a global
model may be on them before it is refused (``deploy_margin``); and whose signatures on a
global model it trusts (``trusted_federation_keys``).
"""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from appliance.config_section import Section as _Section


class FederationPrivacyConfig(_Section):
    mode: Literal["example", "client"] = Field(
        "example",
        description="example: DP-SGD in local training (each training image protected); "
        "client: the node's whole update clipped, noise added to the aggregate",
    )
    epsilon_budget: float = Field(
        8.0,
        gt=0,
        description="the most epsilon this node ever spends, over every round of every run; "
        "a round that would pass it is declined before training",
    )
    delta: float = Field(
        1e-5, gt=0, lt=1, description="the delta every epsilon is computed at (below 1/N)"
    )
    noise_multiplier: float = Field(
        1.0, gt=0, description="Gaussian noise standard deviation over the clipping norm"
    )
    max_grad_norm: float = Field(
        1.0, gt=0, description="per-example gradient (or per-update) clipping norm"
    )


class FederationConfig(_Section):
    enabled: bool = Field(
        False, description="run a Flower SuperNode beside the service (`fame-node run`)"
    )
    superlink: str | None = Field(
        None,
        pattern=r"^\S+:\d{1,5}$",
        description="the federation's SuperLink Fleet API, host:port; needed when enabled",
    )
    insecure: bool = Field(
        False,
        description="talk to the SuperLink without TLS: only for a SuperLink on this machine",
    )
    root_certificates: Path | None = Field(
        None, description="PEM CA bundle the SuperLink's TLS certificate must chain to"
    )
    private_key: Path | None = Field(
        None,
        description="this node's SuperNode authentication key (ssh-keygen -t ecdsa -b 384), "
        "registered at the coordinator; None: no node authentication",
    )
    supernode_port: int = Field(
        9094,
        ge=1,
        le=65535,
        description="the SuperNode's own local API port (on 127.0.0.1; one per node per host)",
    )
    supernode_command: Path | None = Field(
        None,
        description="the flower-supernode program; None: the one installed beside this "
        "Python (the node's own virtual environment)",
    )
    window_start: time | None = Field(
        None,
        description='local time training may start (e.g. "22:00"); None with window_end '
        "None: at any time",
    )
    window_end: time | None = Field(
        None, description='local time the SuperNode is stopped (e.g. "06:00"; may be after 0:00)'
    )
    max_threads: int = Field(
        1, ge=1, le=64, description="CPU threads local training may use (torch, OpenMP, BLAS)"
    )
    niceness: int = Field(
        10, ge=0, le=19, description="added to the SuperNode's scheduling niceness (19: lowest)"
    )
    restart_initial_s: float = Field(
        5.0, gt=0, description="first wait before a SuperNode that ended is started again"
    )
    restart_max_s: float = Field(
        300.0, gt=0, description="longest wait between restarts (the backoff doubles up to it)"
    )
    heldout_share: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="share of reviewed cases (by patient where the DICOM says, else by job) "
        "kept out of training to validate global models; assigned once, never changed",
    )
    deploy_margin: float = Field(
        0.01,
        ge=0,
        le=1,
        description="a global model is deployed only if its held-out score is at most this "
        "much below the running model's",
    )
    trusted_federation_keys: Path | None = Field(
        None,
        description="folder of ed25519 public keys whose signatures on a global model's "
        "digest this node accepts; None: no global model is ever deployed",
    )
    manifests: tuple[Path, ...] = Field(
        (),
        description="labelled CSV manifests (image,label,masks,split) to train on as well: "
        "split train is trained on, val is held out, test is never used",
    )
    privacy: FederationPrivacyConfig = FederationPrivacyConfig()

    @model_validator(mode="after")
    def _can_connect(self) -> FederationConfig:
        if self.enabled and not self.superlink:
            raise ValueError(
                "federation.enabled = true but federation.superlink is not set: give the "
                'coordinator\'s address (superlink = "fl.example.org:9092"), or set '
                "enabled = false"
            )
        if self.enabled and not self.insecure and self.root_certificates is None:
            raise ValueError(
                "federation.enabled = true over TLS needs federation.root_certificates (the "
                "CA of the SuperLink's certificate); insecure = true only for a SuperLink "
                "on this machine"
            )
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError(
                f"federation.window_start = {self.window_start} and window_end = "
                f"{self.window_end}: give both (a daily window in local time) or neither "
                "(at any time)"
            )
        if self.window_start is not None and self.window_start == self.window_end:
            raise ValueError(
                f"federation.window_start and window_end are both {self.window_start}: an "
                "empty window; leave both out to train at any time"
            )
        if self.restart_max_s < self.restart_initial_s:
            raise ValueError(
                f"federation.restart_max_s = {self.restart_max_s} is below restart_initial_s "
                f"= {self.restart_initial_s}: the backoff cap must be at least the first wait"
            )
        return self

    def in_window(self, now: datetime) -> bool:
        """True when `now` (local wall-clock time) lies in the training window."""
        start, end = self.window_start, self.window_end
        if start is None or end is None:
            return True
        t = now.time().replace(tzinfo=None)
        if start < end:
            return start <= t < end
        return t >= start or t < end  # the window runs past midnight

    def seconds_to_window_edge(self, now: datetime) -> float | None:
        """Seconds from `now` to the next start or end of the window; None: no window."""
        start, end = self.window_start, self.window_end
        if start is None or end is None:
            return None
        edge = end if self.in_window(now) else start
        t = now.time().replace(tzinfo=None)
        seconds = _seconds(edge) - _seconds(t)
        return seconds if seconds > 0 else seconds + 86400.0


def _seconds(t: time) -> float:
    return t.hour * 3600.0 + t.minute * 60.0 + t.second + t.microsecond / 1e6
