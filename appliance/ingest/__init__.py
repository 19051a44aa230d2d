"""Ingest: find complete files in the inbox (`InboxWatcher`) and queue them (`Intake`).

Errors::

    InboxError (FameNodeError)   the inbox folder is missing or not a folder

Storage errors come from `appliance.store` (`StoreError`).
"""

from appliance.ingest.intake import Intake
from appliance.ingest.watcher import InboxError, InboxWatcher, is_candidate

__all__ = ["InboxError", "InboxWatcher", "Intake", "is_candidate"]
