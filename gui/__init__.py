"""The clinician's desktop (PyQt6): worklist, overlay viewer, review, models panel.

A thin view over `appliance.app`, the application model: widgets show its state and
subscribe to its events; every decision and every query goes through it. ``fame-node
gui`` starts `gui.app.run_gui`; ``python -m gui.screenshots`` renders the documentation's
screenshots from the real application.
"""
