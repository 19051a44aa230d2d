"""The clinician application, without its windows: every model the GUI shows, wired to
the node's store.

`ClinicalApp` opens the store (creating an empty one where there is none yet, so the GUI
starts cleanly on a fresh node), builds the worklist, viewer, review, models and status
models, and connects them: a decision refreshes the viewer and the worklist, the status
tells the models panel what the node runs on. The GUI (`gui/`) is a view over this.
"""

from __future__ import annotations

import getpass
import os

from appliance.app.models_panel import ModelRegistryLike, ModelsPanelModel
from appliance.app.node_status import NodeStatus, NodeStatusModel
from appliance.app.review import ReviewService
from appliance.app.viewer import CaseLoader, Change, ViewerModel
from appliance.app.worklist import WorklistModel
from appliance.app.worklist_source import StoreWorklistSource
from appliance.config import NodeConfig
from appliance.service_status import read_service_status
from appliance.store.jobs import JobQueue
from appliance.store.results import ResultStore
from appliance.store.reviews import ReviewStore


def default_reviewer() -> str:
    """The signed-in user's name: who the decisions of this session are recorded as."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME / USER
        return f"uid-{os.getuid()}"


class ClinicalApp:
    """The application model of one GUI session over the node configured by `config`."""

    def __init__(
        self, config: NodeConfig, registry: ModelRegistryLike, reviewer: str | None = None
    ) -> None:
        self.config = config
        db = config.database_path
        db.parent.mkdir(parents=True, exist_ok=True)
        self.queue = JobQueue(db)
        self.results = ResultStore(db)
        self.reviews = ReviewStore(db)
        self._source = StoreWorklistSource(db)
        self.worklist = WorklistModel(self._source)
        loader = CaseLoader(
            self.queue,
            self.results,
            self.reviews,
            max_frames=config.processing.max_frames,
            max_pixels=config.processing.max_image_pixels,
        )
        self.viewer = ViewerModel(loader.load, loader.with_reviews)
        self.review = ReviewService(self.reviews, reviewer or default_reviewer())
        self.models = ModelsPanelModel(registry)
        self.status = NodeStatusModel(
            config.node_name,
            lambda: read_service_status(config),
            self.queue.counts,
            self._last_backend,
        )
        self.review.reviewed.connect(self._on_reviewed)
        self.worklist.changed.connect(self._on_worklist)
        self.status.changed.connect(self._on_status)

    @property
    def reviewer(self) -> str:
        return self.review.reviewer

    def start(self) -> None:
        """Read everything once (the GUI then polls)."""
        self.worklist.reload()
        self.status.poll()
        self.models.poll()

    def poll(self) -> None:
        """Pick up what changed in the store (new results, reviews, model events)."""
        self.worklist.poll()
        self.status.poll()
        self.models.poll()

    def close(self) -> None:
        self._source.close()
        for store in (self.queue, self.results, self.reviews):
            store.close()

    def _on_reviewed(self, job_id: int) -> None:
        case = self.viewer.case
        if case is not None and case.job.id == job_id:
            self.viewer.stop_editing()
            self.viewer.refresh_reviews()
        self.worklist.poll()

    def _on_worklist(self, worklist: WorklistModel) -> None:
        # Another reviewer (another GUI on the same node) decided on the open case.
        case = self.viewer.case
        if case is None or self.viewer.editor is not None:
            return
        entry = worklist.entry(case.job.id)
        if entry is None:
            return
        stored = tuple((f.frame_index, f.decision, f.reviewed_diagnosis) for f in entry.frames)
        shown = tuple(
            (
                f.frame_index,
                None if f.review is None else f.review.decision,
                None if f.review is None else f.review.diagnosis,
            )
            for f in case.frames
        )
        if stored != shown:
            self.viewer.refresh_reviews()

    def _on_status(self, status: NodeStatus) -> None:
        self.models.set_backend(status.backend)

    def _last_backend(self) -> str | None:
        newest = self.results.list_results(limit=1)
        return newest[0].result.backend if newest else None


__all__ = ["Change", "ClinicalApp", "default_reviewer"]
