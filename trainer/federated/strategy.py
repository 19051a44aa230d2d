"""The ServerApp's strategy: FedAvg (or FedProx / FLAMES) over weight deltas, signed.

`SignedDeltaFedAvg` is Flower's legacy `FedAvg` (the API SecAgg+ runs on) with three
changes:

- it holds the global model itself and sends it with its digest and the coordinator's
  Ed25519 signature over (run, model round, digest) in every train and evaluate
  instruction (`trainer.federated.signing`); the model after round r has label r, the
  initial model label 0;
- nodes reply with deltas; the new global model is the old one plus the mean delta
  weighted by the examples each node trained on (FedAvg). Under SecAgg+ Flower's workflow
  has already summed the masked, weighted deltas and hands every result the same mean,
  which the weighted mean leaves as it is. A round in which no node trained (all
  declined) leaves the model unchanged;
- with client-level DP (``client-dp-noise-multiplier`` z > 0): every trained node weighs
  the same, and Gaussian noise of z * ``client-dp-clipping-norm`` / m is added to the mean
  of the m clipped deltas before it becomes the global model that is signed and sent
  (`trainer.federated.client_dp`);
- each global model is written to ``out-dir`` (``round-N.npz`` and ``round-N.json``
  with digest, signature and the round's aggregated figures) when one is configured.

FedProx and FLAMES differ from FedAvg on the node only (the proximal step; starting from
a share of the node's own weights), so the aggregation is the same for all three.
Federated evaluation runs once, after the last round: it delivers the final signed model
to every node, which scores it on its held-out cases and keeps it for deployment.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from trainer.federated.client_dp import noise_mean, noise_stddev
from trainer.federated.settings import RunSettings
from trainer.federated.signing import sign_global
from trainer.federated.wire import Arrays, add, arrays_digest

log = logging.getLogger("fame_node.federation.server")

DIGEST, SIGNATURE, MODEL_ROUND = "model-digest", "model-signature", "model-round"
NODES = "model-nodes"  # nodes that trained in the round that made the model


class SignedDeltaFedAvg(FedAvg):
    def __init__(
        self,
        settings: RunSettings,
        initial: Arrays,
        key: Ed25519PrivateKey,
        run_id: int,
        out_dir: Path | None = None,
    ) -> None:
        super().__init__(
            fraction_fit=settings.fraction_train,
            fraction_evaluate=1.0,
            min_fit_clients=settings.min_nodes,
            min_evaluate_clients=settings.min_nodes,
            min_available_clients=settings.min_nodes,
            accept_failures=True,
            initial_parameters=ndarrays_to_parameters(initial),
        )
        self.settings = settings
        self.current: Arrays = [np.asarray(a, np.float32) for a in initial]
        self.label = 0
        self._key = key
        self.run_id = run_id
        self.out_dir = out_dir
        self.round_figures: dict[int, dict[str, Scalar]] = {}
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._write(0, {})

    # -- what is sent ------------------------------------------------------------------------
    def signed_config(self) -> dict[str, Scalar]:
        digest = arrays_digest(self.current)
        signature = sign_global(self._key, self.run_id, self.label, digest)
        return {DIGEST: digest, SIGNATURE: signature, MODEL_ROUND: self.label}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        del parameters  # the strategy's own copy is the one signed and sent
        pairs = super().configure_fit(server_round, self._parameters(), client_manager)
        ins = FitIns(self._parameters(), self.signed_config())
        return [(client, ins) for client, _ in pairs]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if server_round != self.settings.num_server_rounds:
            return []
        pairs = super().configure_evaluate(server_round, self._parameters(), client_manager)
        last = self.round_figures.get(self.label, {})
        # Recorded with a node's deployed bundle (not part of what is signed).
        nodes = {NODES: int(last.get("nodes_trained", 0))}
        ins = EvaluateIns(self._parameters(), {**self.signed_config(), **nodes})
        return [(client, ins) for client, _ in pairs]

    # -- what comes back ---------------------------------------------------------------------
    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        trained = [(r.num_examples, parameters_to_ndarrays(r.parameters)) for _, r in results]
        client_dp = self.settings.client_dp_noise_multiplier > 0
        if client_dp:  # each clipped update weighs the same, whatever count a node claims
            trained = [(min(n, 1), delta) for n, delta in trained]
        total = sum(n for n, _ in trained if n > 0)
        figures = _fit_figures(results, len(failures))
        if total > 0:
            mean = [np.zeros_like(a) for a in self.current]
            for n, delta in trained:
                if n > 0:
                    for acc, d in zip(mean, delta, strict=True):
                        acc += (n / total) * np.asarray(d, np.float32)
            if client_dp:  # client-level DP: the noise is in the model that is signed and sent
                z, c = (
                    self.settings.client_dp_noise_multiplier,
                    self.settings.client_dp_clipping_norm,
                )
                mean = noise_mean(mean, z, c, total)
                figures["client_dp_stddev"] = noise_stddev(z, c, total)
            self.current = add(self.current, mean)
        else:
            log.warning("round %d: no node trained; the global model is unchanged", server_round)
        self.label = server_round
        self.round_figures[server_round] = figures
        self._write(server_round, figures)
        log.info("round %d: %s", server_round, figures)
        return self._parameters(), figures

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        figures = _weighted(
            [(r.num_examples, r.metrics) for _, r in results],
            ("heldout_dice", "heldout_auc", "heldout_score"),
        )
        figures["nodes_evaluated"] = sum(1 for _, r in results if r.num_examples > 0)
        figures["failures"] = len(failures)
        if self.out_dir is not None:
            (self.out_dir / "final-evaluation.json").write_text(json.dumps(figures, indent=1))
        return None, figures

    def _parameters(self) -> Parameters:
        return ndarrays_to_parameters(self.current)

    def _write(self, label: int, figures: dict[str, Scalar]) -> None:
        if self.out_dir is None:
            return
        np.savez(self.out_dir / f"round-{label}.npz", *self.current)
        config = self.signed_config()
        record = {
            "run_id": self.run_id,
            "model_round": label,
            "digest": config[DIGEST],
            "signature": base64.b64encode(config[SIGNATURE]).decode("ascii"),  # type: ignore[arg-type]
            "figures": figures,
            "written_at": time.time(),  # round times are the gaps between these
        }
        (self.out_dir / f"round-{label}.json").write_text(json.dumps(record, indent=1))


def _fit_figures(results: list[tuple[ClientProxy, FitRes]], failures: int) -> dict[str, Scalar]:
    joined = [(r.num_examples, r.metrics) for _, r in results if r.num_examples > 0]
    figures = _weighted(joined, ("heldout_dice", "heldout_auc"))
    figures["nodes_trained"] = len(joined)
    figures["nodes_declined"] = sum(1 for _, r in results if r.num_examples == 0)
    figures["failures"] = failures
    figures["n_examples"] = sum(n for n, _ in joined)
    eps = [float(m["epsilon"]) for _, m in joined if "epsilon" in m]
    if eps:
        figures["epsilon_max"] = max(eps)
    return figures


def _weighted(
    pairs: list[tuple[int, dict[str, Scalar]]], names: tuple[str, ...]
) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {}
    for name in names:
        have = [(n, float(m[name])) for n, m in pairs if name in m and n > 0]
        if have:
            out[name] = sum(n * v for n, v in have) / sum(n for n, _ in have)
    return out
