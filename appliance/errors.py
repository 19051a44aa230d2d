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
    │   ├── ImageTooLargeError    dimensions (or decoded size) beyond the configured limit
    │   ├── InputTooCostlyError   decoding ran past its time or memory bound (killed)
    │   ├── NoContentError        too small to judge, or blank (no image content)
    │   └── NotRegularFileError   a symlink, FIFO, device or socket in the inbox
    ├── TransientError            a passing fault (disk full, database locked, I/O error on
    │                             the node's own folders): the job is retried, not rejected
    ├── BundleError               a model bundle is missing, malformed or fails its checksums
    └── BackendError              an inference backend cannot be created or run

Every `InputError` carries a `reason` meant for a person: what was received, what was
expected, and what to do.
"""

from __future__ import annotations

import errno
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


class InputTooCostlyError(InputError):
    """Decoding this input ran past the time or memory it may cost; the decoder was stopped."""

    code = "too_costly"


class NoContentError(InputError):
    """Too small for a model to judge (a side below the minimum) or blank (no content)."""

    code = "no_content"


class NotRegularFileError(InputError):
    """A symlink, FIFO, device or socket: the node reads regular files of the inbox only."""

    code = "not_regular_file"


# OS errors of the node's own folders that pass (space freed, a remount, a flaky disk):
# met while writing its own files, they make a `TransientError`, not a failed job.
PASSING_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EAGAIN}
)


class TransientError(FameNodeError):
    """A passing fault, not the input's: the job goes back to the queue and is retried.

    `condition` names what the node waits for, for `fame-node status` (e.g. "disk space in
    /srv/fame/results"); `retry_after_s` is a hint for the first retry.
    """

    def __init__(self, message: str, *, condition: str, retry_after_s: float = 2.0) -> None:
        self.condition = condition
        self.retry_after_s = retry_after_s
        super().__init__(message)


class BundleError(FameNodeError):
    """A model bundle cannot be used (missing file, bad manifest, checksum mismatch)."""


class BackendError(FameNodeError):
    """An inference backend could not be created or failed to run."""
