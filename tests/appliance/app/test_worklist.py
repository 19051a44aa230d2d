"""The worklist model: entries from the store, summaries, filter / search / sort, polling."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from appliance.app.display import ReviewState
from appliance.app.worklist import (
    Column,
    FrameSummary,
    WorklistEntry,
    WorklistFilter,
    WorklistModel,
    matches,
    review_state,
    sort_entries,
    summarise_frames,
)
from appliance.app.worklist_source import StoreWorklistSource
from appliance.config import NodeConfig
from appliance.store.reviews import ReviewStore
from tests.appliance.app.nodedata import add_done_job, add_rejected_job, node_config


def frame(i: int, diagnosis: str, p: dict[str, float], flags=(), decision=None) -> FrameSummary:
    return FrameSummary(i, diagnosis, p[diagnosis], p, tuple(flags), decision)


def entry(job_id: int, **kw) -> WorklistEntry:
    base = dict(path=Path(f"/inbox/{job_id}.dcm"), status="done", received=datetime.now(UTC))
    base.update(kw)
    return WorklistEntry(job_id=job_id, **base)  # type: ignore[arg-type]


def test_summary_of_a_clip_is_the_mean_and_flags_frames_that_disagree() -> None:
    frames = [
        frame(0, "benign", {"normal": 0.1, "benign": 0.6, "malignant": 0.3}, ["low_confidence"]),
        frame(5, "malignant", {"normal": 0.0, "benign": 0.3, "malignant": 0.7}),
    ]
    diagnosis, confidence, probs, flags = summarise_frames(frames)
    assert diagnosis == "malignant" and confidence == pytest.approx(0.5)
    assert probs["benign"] == pytest.approx(0.45)
    assert flags == ("low_confidence", "frames_disagree")
    assert summarise_frames(frames[:1])[0] == "benign"
    assert summarise_frames([]) == (None, None, {}, ())


def test_review_state_of_an_image_from_its_frames() -> None:
    p = {"benign": 1.0}
    assert review_state("queued", []) is ReviewState.PROCESSING
    assert review_state("rejected", []) is ReviewState.NOT_ANALYSED
    assert review_state("done", [frame(0, "benign", p)]) is ReviewState.UNREVIEWED
    two = [frame(0, "benign", p, decision="confirmed"), frame(1, "benign", p)]
    assert review_state("done", two) is ReviewState.PARTIAL
    done = [
        frame(0, "benign", p, decision="confirmed"),
        frame(1, "benign", p, decision="corrected"),
    ]
    assert review_state("done", done) is ReviewState.CORRECTED


def test_filter_search_and_sort_are_pure() -> None:
    now = datetime.now(UTC)
    p = {"normal": 0.2, "benign": 0.2, "malignant": 0.6}
    a = entry(1, patient_name="Doe^Jane", patient_id="P1", frames=(frame(0, "malignant", p),))
    b = entry(
        2,
        patient_name="Roe^Richard",
        received=now - timedelta(days=10),
        frames=(frame(0, "malignant", p, ["low_confidence"], decision="confirmed"),),
    )
    c = entry(3, status="rejected", reason="CT (Computed Tomography) is not ultrasound")
    assert matches(a, WorklistFilter(text="doe, jane"))  # the displayed form of the name
    assert matches(a, WorklistFilter(text="jane p1"))
    assert not matches(b, WorklistFilter(text="jane"))
    assert matches(c, WorklistFilter(text="computed"))
    assert [e.job_id for e in (a, b, c) if matches(e, WorklistFilter(flagged_only=True))] == [2]
    states = frozenset({ReviewState.NOT_ANALYSED})
    assert [e.job_id for e in (a, b, c) if matches(e, WorklistFilter(states=states))] == [3]
    week = WorklistFilter(received_from=date.today() - timedelta(days=6))
    assert [e.job_id for e in (a, b, c) if matches(e, week)] == [1, 3]
    only_benign = WorklistFilter(diagnoses=frozenset({"benign"}))
    assert not any(matches(e, only_benign) for e in (a, b, c))
    assert [e.job_id for e in sort_entries([a, b, c], Column.PATIENT)] == [1, 2, 3]
    assert [e.job_id for e in sort_entries([a, b, c], Column.PATIENT, True)] == [2, 1, 3]
    assert [e.job_id for e in sort_entries([a, b, c], Column.RECEIVED)] == [2, 1, 3]
    assert [e.job_id for e in sort_entries([a, b, c], Column.REVIEW)] == [1, 2, 3]
    # Out of distribution: shown "Not assessed", so no diagnosis filter or search finds it
    # by the model's class; once a clinician gives it one, that one does.
    ood = entry(4, frames=(frame(0, "malignant", p, ["out_of_distribution"]),))
    malignant = WorklistFilter(diagnoses=frozenset({"malignant"}))
    assert matches(a, malignant) and not matches(ood, malignant)
    assert not matches(ood, WorklistFilter(text="malignant"))
    assert matches(ood, WorklistFilter(flagged_only=True))
    flags = ("out_of_distribution",)
    corrected = FrameSummary(0, "malignant", 0.6, p, flags, "corrected", "benign")
    given = entry(5, frames=(corrected,))
    assert matches(given, WorklistFilter(diagnoses=frozenset({"benign"})))
    assert not matches(given, malignant)


@pytest.fixture
def node(tmp_path: Path) -> NodeConfig:
    return node_config(tmp_path / "node")


def test_store_source_lists_done_and_rejected_jobs_with_identifiers_out_of_repr(
    node: NodeConfig,
) -> None:
    done = add_done_job(node, "a.png", diagnosis="malignant", flags=["low_confidence"])
    rejected = add_rejected_job(node, "notes.png", "the content is not an image")
    source = StoreWorklistSource(node.database_path)
    entries = {e.job_id: e for e in source.load()}
    a = entries[done]
    assert (a.diagnosis, a.flags, a.review_state) == (
        "malignant",
        ("low_confidence",),
        ReviewState.UNREVIEWED,
    )
    assert (a.patient_display, a.patient_id, a.study_date) == (
        "Doe, Jane",
        "PID-0001",
        date(2024, 1, 31),
    )
    assert a.model_version == "test-model@1.0" and a.backend == "CPUExecutionProvider"
    assert "Doe" not in repr(a) and "PID-0001" not in repr(a)
    r = entries[rejected]
    assert (r.status, r.reason, r.review_state) == (
        "rejected",
        "the content is not an image",
        ReviewState.NOT_ANALYSED,
    )


def test_model_polls_cheaply_and_reloads_on_new_jobs_and_reviews(node: NodeConfig) -> None:
    model = WorklistModel(StoreWorklistSource(node.database_path))
    events: list[int] = []
    model.changed.connect(lambda m: events.append(len(m.visible)))
    assert model.poll() is True and model.visible == []  # the empty store
    assert model.poll() is False
    job = add_done_job(node, "a.png")
    assert model.poll() is True and [e.job_id for e in model.visible] == [job]
    ReviewStore(node.database_path).correct_diagnosis(job, 0, "malignant", "alice")
    assert model.poll() is True
    e = model.entry(job)
    assert e is not None and e.review_state is ReviewState.CORRECTED
    assert e.reviewed_diagnosis == "malignant"
    model.set_filter(states=frozenset({ReviewState.UNREVIEWED}))
    assert model.visible == []
    model.set_filter(WorklistFilter())
    assert events == [0, 1, 1, 0, 1]
    assert model.counts()[ReviewState.CORRECTED] == 1
