"""`RunSettings`: the run config of a federated run, parsed once, on both sides.

Flower hands the ServerApp and every ClientApp the same run config: the app's
``[tool.flwr.app.config]`` with ``flwr run --run-config`` overrides on top. It is parsed
here into one frozen object; an unknown key, a value of the wrong type or out of range is a
`RunConfigError` that names the key, the value received and what is expected, raised before
anything trains.

What the node decides itself is not here: its privacy mode, noise, clipping norm, delta
and budget come from its own config (``federation.privacy``), never from the coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainer.federated import RunConfigError

Strategy = Literal["fedavg", "fedprox", "flames"]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class RunSettings(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_kebab, populate_by_name=True
    )

    num_server_rounds: int = Field(3, ge=1, le=10_000, description="rounds of this run")
    strategy: Strategy = Field(
        "fedavg",
        description="fedavg: mean of the updates weighted by examples; fedprox: the same "
        "with a proximal pull to the global model in local training; flames: each node "
        "starts from keep-own-share of its own last weights mixed with the global model",
    )
    proximal_mu: float = Field(0.01, ge=0, le=10, description="FedProx's mu")
    keep_own_share: float = Field(
        0.3, ge=0, lt=1, description="FLAMES: share of a node's own weights it keeps"
    )
    model_group: str = Field(
        "",
        max_length=64,
        description="FLAMES: the group (modality / task) whose model this run trains; "
        "a node takes part only when its own group is the same ('' : every node)",
    )
    local_epochs: int = Field(1, ge=1, le=100, description="local passes over the data")
    batch_size: int = Field(8, ge=1, le=1024, description="expected batch size (Poisson)")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="local SGD learning rate")
    fraction_train: float = Field(1.0, gt=0, le=1, description="share of nodes per round")
    min_nodes: int = Field(2, ge=1, description="nodes needed before a round starts")
    secagg: bool = Field(False, description="SecAgg+: the coordinator sees only the sum")
    num_shares: int = Field(3, ge=2, description="SecAgg+ key shares per node")
    reconstruction_threshold: int = Field(2, ge=2, description="SecAgg+ shares to rebuild")
    clip_range: float = Field(
        8.0, gt=0, le=1e6, description="every update value within +-clip-range (SecAgg+'s)"
    )
    max_weight: float = Field(
        10_000.0, gt=0, description="SecAgg+: the largest example count weighting a node"
    )
    round_timeout_s: float = Field(600.0, gt=0, description="wait for replies at most this")
    client_dp_noise_multiplier: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="client-level DP (trainer/federated/client_dp.py): Gaussian noise of this "
        "times client-dp-clipping-norm over the nodes that trained, added to the mean update; "
        "every update clipped to that L2 norm and weighted equally; 0: off",
    )
    client_dp_clipping_norm: float = Field(
        1.0, gt=0, le=1e6, description="client-level DP: L2 norm each node's update is clipped to"
    )
    initial_bundle: str = Field(
        "", description="coordinator: the bundle whose weights start the federation"
    )
    signing_key: str = Field(
        "", description="coordinator: the Ed25519 private key that signs global models"
    )
    out_dir: str = Field("", description="coordinator: folder for each round's signed global model")

    @model_validator(mode="after")
    def _coherent(self) -> RunSettings:
        if self.reconstruction_threshold > self.num_shares:
            raise ValueError(
                f"reconstruction-threshold {self.reconstruction_threshold} exceeds num-shares "
                f"{self.num_shares}: a node's key could never be rebuilt"
            )
        return self


def parse_run_config(run_config: Mapping[str, object]) -> RunSettings:
    """`RunSettings` from Flower's ``context.run_config``; RunConfigError on a bad value."""
    try:
        return RunSettings.model_validate(dict(run_config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(run config)"
            received = err.get("input")
            problems.append(f"{key} = {received!r}: {err['msg']}")
        raise RunConfigError(
            "the run config is malformed: "
            + "; ".join(problems)
            + ". Fix it in the app's [tool.flwr.app.config] or the `flwr run --run-config` "
            "override"
        ) from None
