"""The clinician's desktop (PyQt6): worklist, overlay viewer, review, models panel.

A thin view over `appliance.app`, the application model: widgets show its state and
subscribe to its events; every decision and every query goes through it. ``fame-node
gui`` starts `gui.app.run_gui`; ``python -m gui.screenshots`` renders the documentation's
screenshots from the real application.
"""


def qt_load_error() -> str | None:
    """Why PyQt6 cannot be used here (not installed, or a Qt system library missing), or
    None when it loads. Imports Qt only inside, so ``import gui`` itself stays cheap."""
    try:
        import PyQt6.QtWidgets  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None
