"""The appliance's exception hierarchy.

::

    FameNodeError                 base of every error the node raises on purpose
    ├── ConfigError               a config key has a bad value (key, value, expected)
    ├── InputError                an input file cannot be processed: the job is `rejected`
    │   ├── EmptyFileError        zero bytes
    │   ├── UnreadableFileError   vanished, permission denied, I/O error
    │   ├── UnsupportedFormatError  not DICOM / PNG / JPEG / BMP (or lies about it)
    │   ├── CorruptFileError      truncated or undecodable content
    │   ├── NoPixelDataError      a DICOM without an image (SR, KO, ...)
    │   ├── NotUltrasoundError    a DICOM of another modality (MR, CT, ...)
    │   └── ImageTooLargeError    dimensions beyond the configured limit
    ├── BundleError               a model bundle is missing, malformed or fails its checksums
    └── BackendError              an inference backend cannot be created or run

Every `InputError` carries a `reason` meant for a person: what was received, what was
expected, and what to do.
"""

from __future__ import annotations

from pathlib import Path


class FameNodeError(Exception):
    """Base class of the node's own errors."""


class ConfigError(FameNodeError):
    """A config value is invalid. `problems` lists one human-readable line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class InputError(FameNodeError):
    """An input file cannot be processed; the job ends as `rejected` with `reason`."""

    code = "input_error"

    def __init__(self, reason: str, *, path: Path | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(reason)


class EmptyFileError(InputError):
    code = "empty_file"


class UnreadableFileError(InputError):
    code = "unreadable"


class UnsupportedFormatError(InputError):
    code = "unsupported_format"


class CorruptFileError(InputError):
    code = "corrupt"


class NoPixelDataError(InputError):
    code = "no_pixel_data"


class NotUltrasoundError(InputError):
    code = "not_ultrasound"

    def __init__(self, reason: str, *, modality: str, path: Path | None = None) -> None:
        self.modality = modality
        super().__init__(reason, path=path)


class ImageTooLargeError(InputError):
    code = "too_large"


class BundleError(FameNodeError):
    """A model bundle cannot be used (missing file, bad manifest, checksum mismatch)."""


class BackendError(FameNodeError):
    """An inference backend could not be created or failed to run."""
