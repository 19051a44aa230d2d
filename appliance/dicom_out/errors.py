"""The error of the DICOM output package: why no SEG / SR was written for a source."""

from __future__ import annotations

from pathlib import Path

from appliance.errors import FameNodeError


class DicomOutError(FameNodeError):
    """No DICOM output can be made for this source; `reason` is meant for a person.

    Not an `InputError`: the job's results stand (masks, result.json, database row); only
    their DICOM copy for the PACS is missing, and the caller records why.
    """

    def __init__(self, reason: str, *, path: Path | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(reason)
