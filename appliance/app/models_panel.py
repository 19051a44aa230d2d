"""The models panel's model: the model history, the active model, and rollback.

It reads and acts through a `ModelRegistryLike` (the node's `ModelRegistry`); where no
registry is installed, `EventStoreRegistry` shows the history from the store and refuses
to roll back with a message that says why.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.app.events import Event
from appliance.errors import FameNodeError
from appliance.store.model_events import ModelEvent, ModelEventStore


class ModelRegistryLike(Protocol):
    """What the panel needs of the model registry (`appliance.models.registry`)."""

    def history(self) -> list[ModelEvent]:
        """Model events, newest first."""
        ...

    def active_label(self) -> str:
        """``name@version`` of the active model."""
        ...

    def rollback(self, actor: str, reason: str) -> ModelEvent:
        """Re-activate the previously active model; records a ``rolled_back`` event."""
        ...


class RegistryUnavailableError(FameNodeError):
    """This node has no model registry, so models cannot be changed from here."""


class EventStoreRegistry:
    """A read-only stand-in for the registry: the history from the store, no rollback."""

    def __init__(self, events: ModelEventStore, fallback_label: str) -> None:
        self._events = events
        self._fallback = fallback_label

    def history(self) -> list[ModelEvent]:
        return self._events.history()

    def active_label(self) -> str:
        stack = activation_stack(self.history())
        return stack[-1] if stack else self._fallback

    def rollback(self, actor: str, reason: str) -> ModelEvent:
        raise RegistryUnavailableError(
            "model registry not available on this node: rollback cannot be done from the "
            "GUI. Install a FAME Node version with model management (`fame-node models`)."
        )


def activation_stack(history: Sequence[ModelEvent]) -> list[str]:
    """The models activated in turn (oldest first; the last is active), from the history.

    ``activated`` pushes a model, ``rolled_back`` pops back to the one before, as the
    registry does; `history` is newest first, as the registry returns it.
    """
    stack: list[str] = []
    for event in sorted(history, key=lambda e: e.id):
        if event.action == "activated":
            if not stack or stack[-1] != event.model:
                stack.append(event.model)
        elif event.action == "rolled_back":
            if stack:
                stack.pop()
            if not stack or stack[-1] != event.model:
                stack.append(event.model)
    return stack


@dataclass(frozen=True)
class BackendInfo:
    """What the node runs its models on, and where that was learnt."""

    backend: str | None  # e.g. "onnxruntime"
    provider: str | None  # e.g. "CPUExecutionProvider", "TensorrtExecutionProvider"
    source: str  # "the running service", "the newest result", ...


FIGURE_NAMES: dict[str, str] = {
    "dice": "Dice",
    "iou": "IoU",
    "accuracy": "Accuracy",
    "macro_f1": "Macro F1",
    "macro_auc": "Macro AUC",
    "auc": "AUC",
}


def _section_figures(section: dict[str, Any]) -> dict[str, float]:
    """The known metrics of one evaluation: flat (``{"dice": ..}``) or a `fame-node evaluate`
    report (``{"segmentation": {"dice_lesion": ..}, "classification": {..}, "n_cases": ..}``)."""
    seg, cls = section.get("segmentation"), section.get("classification")
    if isinstance(seg, dict) or isinstance(cls, dict):
        seg, cls = seg or {}, cls or {}
        raw = {
            "dice": seg.get("dice_lesion"),
            "iou": seg.get("iou_lesion"),
            "accuracy": cls.get("accuracy"),
            "macro_f1": cls.get("macro_f1"),
            "macro_auc": cls.get("macro_auc"),
            "n": section.get("n_cases"),
        }
    else:
        raw = section
    return {
        k: float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _one_line(flat: dict[str, float]) -> str:
    parts = [f"{label} {flat[k]:.3f}" for k, label in FIGURE_NAMES.items() if k in flat]
    if parts and "n" in flat:
        parts.append(f"on {flat['n']:.0f} images")
    return ", ".join(parts)


def figures_text(figures: dict[str, Any]) -> str:
    """The measured figures of a model event in one line each evaluation: the known
    metrics and on how many images. Nested evaluations (``{"busi_test": {...}}``) are named,
    test sets first (the figures that count), then the others (e.g. validation)."""
    sections = {k: v for k, v in figures.items() if isinstance(v, dict)}
    if not sections:
        return _one_line(_section_figures(figures))
    top_level = {k: v for k, v in figures.items() if not isinstance(v, dict)}
    ordered = sorted(sections, key=lambda name: (0 if "test" in name else 1, name))
    lines = []
    for name in ordered:
        flat = {**_section_figures(top_level), **_section_figures(sections[name])}
        text = _one_line(flat)
        if text:
            lines.append(f"{name}: {text}")
    return "; ".join(lines)


class ModelsPanelModel:
    """History, active model and backend; `rollback` acts through the registry.

    Events: `changed` after the history or backend was read again and differs.
    """

    def __init__(self, registry: ModelRegistryLike) -> None:
        self._registry = registry
        self._history: list[ModelEvent] = []
        self._active: str = ""
        self._backend = BackendInfo(None, None, "not known yet")
        self._token: Hashable | None = None
        self.changed: Event[ModelsPanelModel] = Event()

    @property
    def history(self) -> list[ModelEvent]:
        return list(self._history)

    @property
    def active_label(self) -> str:
        return self._active

    @property
    def backend(self) -> BackendInfo:
        return self._backend

    @property
    def rollback_target(self) -> str | None:
        """The model a rollback would re-activate, or None when there is none."""
        stack = activation_stack(self._history)
        return stack[-2] if len(stack) >= 2 else None

    def set_backend(self, info: BackendInfo) -> None:
        if info != self._backend:
            self._backend = info
            self.changed.emit(self)

    def poll(self) -> bool:
        """Read the history again; True (and `changed`) when it differs."""
        history = self._registry.history()
        active = self._registry.active_label()
        token = (tuple(e.id for e in history), active)
        if token == self._token:
            return False
        self._token = token
        self._history, self._active = history, active
        self.changed.emit(self)
        return True

    def rollback(self, actor: str, reason: str) -> ModelEvent:
        """Roll back to the previous model (the view asks the user first).

        Raises:
            ValueError: no reason given (the history must say why).
            FameNodeError: the registry refused (nothing to roll back to, no registry, the
                earlier bundle no longer verifies).
        """
        if not reason.strip():
            raise ValueError("a rollback needs a reason for the model history; got ''")
        event = self._registry.rollback(actor, reason.strip())
        self.poll()
        return event
