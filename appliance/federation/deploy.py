"""Validate, re-export and deploy a received global model, or refuse it and say why.

For each global model the ClientApp kept (`appliance.federation.received`) and no decision
was recorded on yet, `deploy_pending` (called by the ClientApp right after it keeps the
final model of a run; ``python -m appliance.federation.deploy --config CONFIG`` catches
up by hand) does, trusting nothing in the files:

1. reads the weights by the running model's own tensor names and shapes (other names,
   shapes, dtypes or non-finite values: refused), recomputes their digest
   (`trainer.federated.wire.arrays_digest`) and verifies the coordinator's signature over
   (run, round, digest) against ``federation.trusted_federation_keys``
   (`trainer.federated.signing.verify_global`);
2. scores the global model and the running one on the node's held-out cases
   (`load_local_data(...).heldout`, `trainer.federated.evaluate.evaluate_heldout`, the
   client's own evaluation): refused if the global model's score (mean of held-out Dice
   and AUC) is below the running one's by more than ``federation.deploy_margin``, or if
   there is no held-out case to judge on;
3. exports it (`exporters.fame_bundle.export_fame_bundle`: OOD head fitted on the node's
   local train cases, threshold and temperature on its held-out ones; the running model's
   mask threshold and minimum area) as ``<name>@<version>+fl.<run>.<round>``, whose manifest
   records the federation (coordinator key, SuperLink), run, round, nodes, strategy, privacy
   mode, epsilon and delta this node has spent, the digest of the aggregated weights and the
   held-out figures of both models; signs it with the node's own key
   (`appliance.models.node_key`). Before it is signed the export gets the optimised variants
   the rest of the project builds (`add_variants`): its FP16 ONNX
   (`exporters.variants.add_fp16`, checked against the FP32 graph in ONNX Runtime) and,
   where this machine has a CUDA GPU and TensorRT, the TensorRT engine for
   ``runtime.precision`` (`exporters.engines.engine_for`, into the engine cache and the
   bundle's ``engines/``); the manifest lists each with its sha256. Where one cannot be
   built (no GPU or TensorRT here; an FP16 graph that moves an output past its tolerance)
   the model deploys without it and the manifest's ``evaluation.variants`` says why; the
   runtime then runs the FP32 ONNX.
4. runs the export and the running model on the 24 ultrasound phantoms a shipped model
   must flag out of distribution (`appliance.ood_phantoms`): refused, and the export
   deleted, if the export lets one through to a diagnosis that the running model flags.
   Its OOD head is fitted on the new network's own features, and a network can move what
   the head flags (seed 2027's network of the shipped recipe let 3 of the 24 through,
   docs/RESULTS.md); both counts are in the decision's figures;
5. installs and activates it through the registry (``actor = "federation"``), which the
   running service swaps in live.

Every decision is one row of ``federation_models`` and a model-history event (``activated``
or ``refused`` with the reason), which the audit log records with it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy

from appliance.analysis import Analyzer
from appliance.bundle import MANIFEST_NAME, Bundle, load_bundle
from appliance.config import NodeConfig, load_config
from appliance.errors import FameNodeError
from appliance.federation.ledger import PrivacyLedger
from appliance.federation.local_data import LocalData, load_local_data
from appliance.federation.received import (
    ModelDecision,
    ReceivedFile,
    ReceivedModelStore,
    received_files,
)
from appliance.models.node_key import node_signing_key
from appliance.models.registry import ModelRegistry
from appliance.models.signing import SIGNATURE_NAME, sign_manifest
from appliance.ood_phantoms import check_phantoms, describe
from appliance.runtime import create_backend
from exporters.fame_bundle import BundleIdentity, export_fame_bundle
from trainer.federated import FederatedError, GlobalModelError
from trainer.federated.evaluate import HeldoutScore, evaluate_heldout
from trainer.federated.signing import trusted_keys_in, verify_global
from trainer.federated.wire import arrays_digest, load_arrays
from trainer.models import FameNodeNet
from trainer.weights import load_bundle_net

log = logging.getLogger("fame_node.federation.deploy")

ACTOR = "federation"
EXPORTS_FOLDER = Path("federation") / "exports"  # under paths.work


class Refused(FameNodeError):
    """Why a received model is not deployed; `figures` what was measured before."""

    def __init__(self, reason: str, figures: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = dict(figures or {})


@dataclass(frozen=True)
class _Verified:
    net: FameNodeNet
    digest: str
    signer: str
    about: dict[str, Any]


def deploy_pending(config: NodeConfig) -> list[ModelDecision]:
    """Decide on every received global model without a decision yet; the decisions."""
    out = []
    with ReceivedModelStore(config.database_path) as store:
        for received in received_files(config.folder("work")):
            if store.decided(received.run_id, received.model_round) is None:
                out.append(deploy_received(config, received, store))
    return out


def deploy_received(
    config: NodeConfig, received: ReceivedFile, store: ReceivedModelStore
) -> ModelDecision:
    """Validate `received` and deploy it, or refuse it; the decision, recorded."""
    with ModelRegistry(config) as registry:
        running = registry.load(registry.active().path)
        label = f"{running.manifest.name}@{fl_version(running, received)}"
        digest = _file_digest(received)
        try:
            verified = _verify(config, running, received)
            digest = verified.digest
            figures, data = _judge(config, running, verified.net)
            bundle = _export(config, running, received, verified, label, figures, data)
            _check_phantoms(config, registry, running, bundle, figures)
            registry.install(bundle, ACTOR, _reason("installed", received))
            registry.activate(label, ACTOR, _reason("validated and activated", received))
        except Refused as why:
            return _refuse(registry, store, received, digest, label, str(why), why.figures)
        except FameNodeError as exc:  # the export or the registry refused the bundle
            return _refuse(registry, store, received, digest, label, str(exc), {})
        log.info("global model of run %s round %d deployed as %s", *_which(received), label)
        return store.record(
            received.run_id,
            received.model_round,
            digest,
            "deployed",
            f"held-out score {figures['global']['score']:.4f} against the running "
            f"{running.version_label}'s {figures['running']['score']:.4f} (margin "
            f"{config.federation.deploy_margin})",
            model=label,
            figures=figures,
        )


def fl_version(running: Bundle, received: ReceivedFile) -> str:
    """``<base version>+fl.<run>.<round>``: the base without an earlier ``+fl`` part."""
    base = running.manifest.version.split("+", 1)[0]
    return f"{base}+fl.{received.run_id}.{received.model_round}"


def _verify(config: NodeConfig, running: Bundle, received: ReceivedFile) -> _Verified:
    try:
        record = json.loads(received.record.read_text(encoding="utf-8"))
        run_id, model_round = int(record["run_id"]), int(record["model_round"])
        signature = base64.b64decode(str(record["signature"]), validate=True)
        digest_sent = str(record["digest"])
        about = dict(record.get("about") or {})
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise Refused(
            f"the record of the received model ({received.record.name}) cannot be read or "
            f"lacks run, round, digest or signature ({exc}): refused, nothing exported"
        ) from None
    if (str(run_id), model_round) != (received.run_id, received.model_round):
        raise Refused(
            f"the record says run {run_id} round {model_round}, its file name run "
            f"{received.run_id} round {received.model_round}: refused"
        )
    net = load_bundle_net(running)  # the running architecture, to hold the global weights
    try:
        tensors = load_numpy(received.weights.read_bytes())
        names = list(net.state_dict())
        if sorted(tensors) != sorted(names):
            raise GlobalModelError(
                f"the received weights hold {len(tensors)} tensors, not the {len(names)} of "
                "the running model's architecture (other names): another model"
            )
        arrays = [tensors[name] for name in names]
        load_arrays(net, arrays)  # shapes, dtype, finite values
        digest = arrays_digest(arrays)
        signer = verify_global(
            trusted_keys_in(_trusted_folder(config)),
            run_id,
            model_round,
            digest_sent,
            digest,
            signature,
        )
    except (OSError, SafetensorError) as exc:
        raise Refused(f"the received weights cannot be read: {exc}; refused") from None
    except (GlobalModelError, FederatedError) as exc:
        raise Refused(f"{exc}") from None
    return _Verified(net.eval(), digest, signer.fingerprint, about)


def _trusted_folder(config: NodeConfig) -> Path:
    folder = config.federation.trusted_federation_keys
    if folder is None:
        raise Refused(
            "federation.trusted_federation_keys is not set: no global model is deployed; "
            "set it to the folder with the coordinator's model-signing public key"
        )
    return folder.expanduser()


def _judge(
    config: NodeConfig, running: Bundle, net: FameNodeNet
) -> tuple[dict[str, Any], LocalData]:
    data = load_local_data(config, params=running.manifest.preprocess_params())
    post = running.manifest.postprocessing
    threshold = float(post.get("mask_threshold", 0.5))
    area = float(post.get("min_lesion_area_px", 0))
    new = evaluate_heldout(net, data.heldout, threshold, area)
    old = evaluate_heldout(load_bundle_net(running), data.heldout, threshold, area)
    margin = config.federation.deploy_margin
    figures = {
        "global": _shown(new),
        "running": _shown(old),
        "running_model": running.version_label,
        "margin": margin,
        "n_train": len(data.train),
    }
    if new.score() is None or old.score() is None:
        why = data.reason if data.empty else f"{len(data.heldout)} held-out case(s)"
        raise Refused(
            f"no held-out figure to judge the global model on ({why}): the running model "
            "stays; review more cases (confirmed or corrected) to validate global models",
            figures,
        )
    if float(new.score() or 0.0) < float(old.score() or 0.0) - margin:
        raise Refused(
            f"held-out score {new.score():.4f} (Dice {new.dice}, AUC {new.auc}) is below the "
            f"running {running.version_label}'s {old.score():.4f} by more than the margin "
            f"{margin} (federation.deploy_margin): the running model stays",
            figures,
        )
    return figures, data


def _export(
    config: NodeConfig,
    running: Bundle,
    received: ReceivedFile,
    verified: _Verified,
    label: str,
    figures: dict[str, Any],
    data: LocalData,
) -> Path:
    train, heldout = data.train, data.heldout
    privacy = config.federation.privacy
    with PrivacyLedger(config.database_path) as ledger:
        epsilon = ledger.spent(privacy.delta)
    version = label.split("@", 1)[1]
    out = config.folder("work") / EXPORTS_FOLDER / label
    shutil.rmtree(out, ignore_errors=True)  # a half-written export of an earlier attempt
    federation = {
        "id": verified.signer,  # the coordinator's model-signing key names the federation
        "superlink": config.federation.superlink,
        "run": received.run_id,
        "round": received.model_round,
        "nodes": verified.about.get("nodes"),
        "strategy": verified.about.get("strategy"),
        "secagg": verified.about.get("secagg"),
        "model_group": verified.about.get("model_group"),
        "aggregated_weights_sha256": verified.digest,
        "base_model": running.version_label,
    }
    dp = {"mode": privacy.mode, "epsilon_spent": round(epsilon, 6), "delta": privacy.delta}
    bundle = export_fame_bundle(
        verified.net,
        out,
        identity=BundleIdentity(
            name=running.manifest.name,
            version=version,
            preprocessing=running.manifest.preprocess_params().to_dict(),
            mask_threshold=float(running.manifest.postprocessing.get("mask_threshold", 0.5)),
            min_lesion_area_px=float(running.manifest.postprocessing.get("min_lesion_area_px", 0)),
        ),
        train=train,
        val=heldout,
        work_dir=out.with_name(out.name + ".work"),
        val_name="heldout",
        training={
            "data": (
                f"federated fine-tuning of {running.version_label}; OOD statistics fitted on "
                f"this node's {len(train)} local training cases, OOD threshold and "
                f"temperature on its {len(heldout)} held-out cases; mask threshold and "
                "minimum area those of the running model"
            ),
            "federation": federation,
            "dp": dp,
            "rounds": received.model_round,
        },
        evaluation={"federation_heldout": figures},
    )
    add_variants(config, bundle)
    manifest = (bundle / MANIFEST_NAME).read_bytes()
    (bundle / SIGNATURE_NAME).write_bytes(sign_manifest(manifest, node_signing_key(config)))
    shutil.rmtree(out.with_name(out.name + ".work"), ignore_errors=True)
    return bundle


def _check_phantoms(
    config: NodeConfig,
    registry: ModelRegistry,
    running: Bundle,
    exported: Path,
    figures: dict[str, Any],
) -> None:
    """Refuse the export (and delete it) if its out-of-distribution flag lets through one
    of the ultrasound phantoms the running model flags (`appliance.ood_phantoms`); the
    counts of both go into `figures`."""
    before = check_phantoms(_cpu_analyzer(config, running))
    after = check_phantoms(_cpu_analyzer(config, registry.load(exported)))
    figures["phantoms"] = {
        "running": None if before is None else before.to_dict(),
        "global": None if after is None else after.to_dict(),
    }
    if before is None:
        return  # the running model flags nothing out of distribution: nothing to lose
    lost = before.missed if after is None else after.lost_against(before)
    if lost:
        shutil.rmtree(exported, ignore_errors=True)  # signed by this node: leave no copy
        raise Refused(
            f"re-exported with its out-of-distribution head fitted on its own features, the "
            f"global model lets {len(lost)} of the {len(before.specs)} ultrasound phantoms "
            f"through to a diagnosis that the running {running.version_label} flags out of "
            f"distribution ({[describe(s) for s in lost]}): it would diagnose images that are "
            "not breast ultrasound from a known scanner; the running model stays",
            figures,
        )


def _cpu_analyzer(config: NodeConfig, bundle: Bundle) -> Analyzer:
    """`bundle` on ONNX Runtime CPU at the federation's thread cap: the phantom check runs
    beside the node's own work and does not depend on a GPU being free."""
    runtime = config.runtime.model_copy(
        update={
            "backend": "onnxruntime-cpu",
            "intra_op_threads": config.federation.max_threads,
            "micro_batch_on_cpu": False,
        }
    )
    return Analyzer(bundle, create_backend(bundle, runtime), config.thresholds)


def add_variants(config: NodeConfig, bundle_dir: Path) -> dict[str, Any]:
    """Add the FP16 ONNX and, where a GPU and TensorRT are here, the TensorRT engine to
    the (unsigned) export; what was added or why not, also in ``evaluation.variants``."""
    from appliance.runtime.engine_cache import EngineCache
    from exporters.engines import engine_for
    from exporters.fp16 import Fp16Error
    from exporters.tensorrt import EngineBuildError, machine_key
    from exporters.variants import add_engine, add_files, add_fp16

    done: dict[str, Any] = {}
    try:
        report = add_fp16(bundle_dir)
        done["fp16"] = report.path.name
    except Fp16Error as exc:
        log.warning("the deployed model gets no FP16 ONNX: %s", exc)
        done["fp16"] = f"not built: {exc}"
    rt = config.runtime
    try:
        bundle = load_bundle(bundle_dir)
        sha = bundle.manifest.files[bundle.manifest.model_file]
        key = machine_key(sha, rt.precision, max(rt.batch_size, rt.micro_batch_max))
        engine = engine_for(bundle, key, EngineCache(rt.engine_dir()))
        add_engine(bundle_dir, engine.name, engine.data)
        done["engines"] = [engine.name]
    except EngineBuildError as exc:
        log.info("no TensorRT engine for the deployed model on this machine: %s", exc)
        done["engines"] = []
        done["engines_not_built"] = str(exc)
    add_files(bundle_dir, {}, evaluation={"variants": done})
    return done


def _refuse(
    registry: ModelRegistry,
    store: ReceivedModelStore,
    received: ReceivedFile,
    digest: str,
    label: str,
    reason: str,
    figures: Mapping[str, Any],
) -> ModelDecision:
    shown = dict(figures)
    log.warning("global model of run %s round %d refused: %s", *_which(received), reason)
    registry.events.record(label, "refused", ACTOR, reason=reason, figures=shown)
    return store.record(
        received.run_id, received.model_round, digest, "refused", reason, model=label, figures=shown
    )


def _shown(score: HeldoutScore) -> dict[str, Any]:
    return {"n": score.n, "dice": score.dice, "auc": score.auc, "score": score.score()}


def _file_digest(received: ReceivedFile) -> str:
    """Before it verifies, a received model is named by the sha256 of its file."""
    try:
        return hashlib.sha256(received.weights.read_bytes()).hexdigest()
    except OSError:
        return "0" * 64


def _reason(what: str, received: ReceivedFile) -> str:
    return f"federated global model of run {received.run_id} round {received.model_round} {what}"


def _which(received: ReceivedFile) -> tuple[str, int]:
    return received.run_id, received.model_round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.federation.deploy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", type=Path, required=True, help="the node's config.toml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for decision in deploy_pending(load_config(args.config)):
        print(
            f"run {decision.run_id} round {decision.model_round}: {decision.decision} "
            f"({decision.model}): {decision.reason}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "ACTOR",
    "Refused",
    "add_variants",
    "deploy_pending",
    "deploy_received",
    "fl_version",
    "main",
]
