"""The ServerApp: the strategy of `trainer.federated.strategy` run by Flower's workflow.

The run config (`trainer.federated.settings`) names, on the coordinator's machine, the
bundle whose verified torch weights start the federation (``initial-bundle``), the
Ed25519 key that signs every global model (``signing-key``) and where the signed models
are kept (``out-dir``). With ``secagg = true`` the fit rounds run Flower's SecAgg+
workflow (`SecAggPlusWorkflow`): the coordinator only ever sees the sum of the nodes'
masked, weighted updates; otherwise Flower's default fit workflow. Either waits for
replies at most ``round-timeout-s`` (`trainer.federated.timed_grid`: Flower's default
workflow would otherwise wait forever for a node killed mid-round).

Which guarantee holds with which (see README, Federation): example-level DP is applied on
each node before anything leaves it, so it holds whether or not SecAgg+ runs; SecAgg+
adds that the coordinator never sees one node's update (it assumes an honest-but-curious
coordinator and fewer than ``reconstruction-threshold`` colluding nodes); neither
protects against a node that lies about its own update.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import ServerApp

from appliance.bundle import load_bundle
from appliance.models.signing import load_private_key
from trainer.federated import RunConfigError
from trainer.federated.settings import parse_run_config
from trainer.federated.strategy import SignedDeltaFedAvg
from trainer.federated.timed_grid import TimedGrid
from trainer.federated.wire import state_arrays
from trainer.weights import load_bundle_net

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = parse_run_config(context.run_config)
    if not settings.initial_bundle or not settings.signing_key:
        raise RunConfigError(
            f"initial-bundle = {settings.initial_bundle!r}, signing-key = "
            f"{settings.signing_key!r}: the coordinator needs both (the bundle whose weights "
            "start the federation, the Ed25519 key that signs each global model); give them "
            "with flwr run --run-config"
        )
    net = load_bundle_net(load_bundle(Path(settings.initial_bundle)))
    strategy = SignedDeltaFedAvg(
        settings,
        state_arrays(net),
        load_private_key(Path(settings.signing_key)),
        run_id=context.run_id,
        out_dir=Path(settings.out_dir) if settings.out_dir else None,
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(
            num_rounds=settings.num_server_rounds, round_timeout=settings.round_timeout_s
        ),
        strategy=strategy,
    )
    fit_workflow = (
        SecAggPlusWorkflow(
            num_shares=settings.num_shares,
            reconstruction_threshold=settings.reconstruction_threshold,
            max_weight=settings.max_weight,
            clipping_range=settings.clip_range,
            timeout=settings.round_timeout_s,
        )
        if settings.secagg
        else None
    )
    DefaultWorkflow(fit_workflow=fit_workflow)(TimedGrid(grid, settings.round_timeout_s), legacy)
