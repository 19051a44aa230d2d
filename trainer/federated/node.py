"""What a ClientApp needs of the node it runs on, opened from the node's config file.

The SuperNode is started with ``--node-config 'fame-config="/path/config.toml"'``
(`appliance.federation.supervisor`); the ClientApp reads that key and opens, through the
node's own installed code:

- the config (`appliance.config.load_config`), whose ``federation`` section holds the
  node's privacy settings and budget, its held-out share and its trusted federation keys;
- the *active* model (`appliance.models.registry.ModelRegistry`), verified
  (`appliance.bundle.load_bundle`), and its torch model from the bundle's verified
  weights (`trainer.weights.load_bundle_net`; a bundle without weights raises
  `WeightsError`, and the node sits the round out);
- its local data (`appliance.federation.local_data.load_local_data`) with the active
  model's preprocessing;
- its privacy ledger (`appliance.federation.ledger.PrivacyLedger`) in its store.

Also here: where a node keeps its own last weights (FLAMES) and the verified global
models it received (for validation and deployment), both under ``paths.work``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from appliance.bundle import Bundle
from appliance.config import NodeConfig, load_config
from appliance.federation.ledger import PrivacyLedger
from appliance.federation.local_data import LocalData, load_local_data
from appliance.models.signing import TrustedKey
from trainer.federated import FederatedError
from trainer.federated.signing import trusted_keys_in
from trainer.federated.wire import Arrays
from trainer.models import FameNodeNet
from trainer.weights import load_bundle_net, weights_bytes

CONFIG_KEY = "fame-config"
GROUP_KEY = "model-group"
STATE_FOLDER = Path("federation") / "state"  # under paths.work


def config_path_of(node_config: dict[str, object]) -> Path:
    value = node_config.get(CONFIG_KEY)
    if not isinstance(value, str) or not value:
        raise FederatedError(
            f"the SuperNode was started without the node config key {CONFIG_KEY!r}: start it "
            f"with --node-config '{CONFIG_KEY}=\"/etc/fame-node/config.toml\"' (fame-node run "
            "does this when federation.enabled = true)"
        )
    return Path(value)


@dataclass
class Node:
    config: NodeConfig
    bundle: Bundle

    @classmethod
    def open(cls, config_path: Path) -> Node:
        from appliance.models.registry import ModelRegistry  # imports much: only here

        config = load_config(config_path)
        with ModelRegistry(config) as registry:
            bundle = registry.load(registry.active().path)
        return cls(config, bundle)

    def running_net(self) -> FameNodeNet:
        """A fresh copy of the active model's torch model (WeightsError without weights)."""
        return load_bundle_net(self.bundle)

    def local_data(self) -> LocalData:
        return load_local_data(self.config, params=self.bundle.manifest.preprocess_params())

    def ledger(self) -> PrivacyLedger:
        return PrivacyLedger(self.config.database_path)

    def trusted_keys(self) -> list[TrustedKey]:
        folder = self.config.federation.trusted_federation_keys
        if folder is None:
            raise FederatedError(
                "federation.trusted_federation_keys is not set: this node trusts no "
                "coordinator key and refuses every global model; set it to the folder "
                "holding the coordinator's model-signing public key"
            )
        return trusted_keys_in(folder.expanduser())

    @property
    def postprocessing(self) -> tuple[float, float]:
        post = self.bundle.manifest.postprocessing
        return float(post.get("mask_threshold", 0.5)), float(post.get("min_lesion_area_px", 0))

    # -- what the node keeps between rounds -------------------------------------------------
    def state_dir(self) -> Path:
        path = self.config.folder("work") / STATE_FOLDER
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def own_weights(self, n_arrays: int) -> Arrays | None:
        """The node's own weights after its last local training (FLAMES), if they fit."""
        path = self.state_dir() / "own-weights.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[f"a{i}"] for i in range(len(data.files))]
        return arrays if len(arrays) == n_arrays else None

    def keep_own_weights(self, arrays: Arrays) -> None:
        _write_atomic(
            self.state_dir() / "own-weights.npz",
            lambda fh: np.savez(fh, **{f"a{i}": a for i, a in enumerate(arrays)}),  # type: ignore[arg-type]
        )

    def keep_global(
        self,
        net: FameNodeNet,
        run_id: int,
        label: int,
        digest: str,
        signer: TrustedKey,
        sig: bytes,
        about: Mapping[str, str | int | float | bool] | None = None,
    ) -> Path:
        """Store a verified global model (safetensors + what verified it) for deployment.

        `about` is what the run config and the coordinator said of the run (strategy,
        SecAgg+, nodes that trained): recorded with the deployed bundle, not verified."""
        folder = self.state_dir() / "received"
        folder.mkdir(exist_ok=True, mode=0o700)
        stem = f"run-{run_id}-round-{label}"
        _write_atomic(folder / f"{stem}.safetensors", lambda fh: fh.write(weights_bytes(net)))
        record = {
            "run_id": run_id,
            "model_round": label,
            "digest": digest,
            "signature": base64.b64encode(sig).decode("ascii"),
            "signer": signer.fingerprint,
            "about": dict(about or {}),
        }
        _write_atomic(folder / f"{stem}.json", lambda fh: fh.write(json.dumps(record).encode()))
        return folder / f"{stem}.safetensors"


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
