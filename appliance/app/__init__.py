"""The clinician application's model: everything the GUI shows and does, without Qt.

::

    session        ClinicalApp: opens the store, builds and wires the models below
    worklist       entries (one per received file), filter / search / sort, polling
    worklist_source  the entries read from the SQLite store, and its change token
    viewer         a case's frames and masks read back, display state, mask editing
    imaging        pure functions: window / level, mask layers, measures, brush strokes
    mask_editor    brush / eraser strokes with undo
    review         the review service: decisions as a named reviewer, session undo
    models_panel   model history, active model, rollback through the model registry
    node_status    service running?, backend / provider, queue counts
    display        colours (Okabe-Ito), labels and formats shared by every view
    events         `Event`: the observer callbacks views subscribe to

Nothing here imports Qt (a test walks the sources to keep it so); `gui/` is a thin view
that subscribes to these models' events. Errors, all `FameNodeError`s: `viewer.CaseError`,
`review.UndoError`, `models_panel.RegistryUnavailableError`, and the store's `StoreError`.
"""
