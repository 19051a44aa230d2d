"""The DICOM C-STORE receiver: a scanner or PACS pushes images straight into the inbox.

Optional (``dicom_net.enabled``, off by default). A pynetdicom application entity listens
on ``dicom_net.bind_address`` (127.0.0.1 unless the config says otherwise) as a Storage
SCP for the ultrasound SOP classes (and Secondary Capture), in the common transfer
syntaxes. A caller whose AE title is not in ``dicom_net.allowed_callers`` is rejected at
association (unless ``dicom_net.allow_any_caller``); the log names the AE title and
address, never anything from a dataset.

Each received dataset is written exactly as it arrived (`Event.encoded_dataset`: the file
meta from the request, the dataset bytes never decoded or re-encoded) to a hidden file in
``<inbox>/.incoming/`` (hidden folders are ignored by the watcher), fsync'd, renamed into
the inbox as ``dicom-<32 random hex>.dcm`` (a name carrying nothing from the dataset) and
the inbox folder fsync'd; only then is success (0x0000) answered. The rename is a move
event, which the watcher takes at once, so from there the file goes the way of a dropped
one: intake, durable queue, dedup, sandboxed decoding. A failure before that answers a
failure status (0xA700 out of resources: disk full, unwritable, larger than
``ingest.max_input_bytes``; 0xC000 cannot understand: the dataset cannot be written as a
file) and leaves nothing in the inbox. An association aborted mid-transfer never reaches
the handler: nothing is stored.

pynetdicom keeps a dataset in memory while it arrives; ``ingest.max_input_bytes`` bounds
what is written, not what one association may send.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

from pydicom import uid
from pynetdicom import AE, evt, register_uid
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

from appliance.config import DicomNetConfig
from appliance.results.durable import sync_folder

log = logging.getLogger("fame_node.dicom_net")

INCOMING = ".incoming"

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

STORAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
)

# pynetdicom knows no service for the retired ones: registered as storage (`_register`).
RETIRED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6": "UltrasoundImageStorageRetired",
    "1.2.840.10008.5.1.4.1.1.3": "UltrasoundMultiFrameImageStorageRetired",
}

TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,  # retired, but old scanners still send it
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)


class DicomReceiver:
    """A Storage SCP that writes what it receives into `inbox` (see the module docstring).

    Args:
        config: the ``dicom_net`` section.
        inbox: the watched drop folder; ``.incoming/`` is created inside it.
        max_bytes: largest dataset written (``ingest.max_input_bytes``).
    """

    def __init__(self, config: DicomNetConfig, inbox: Path, *, max_bytes: int) -> None:
        self.config = config
        self.inbox = inbox
        self.incoming = inbox / INCOMING
        self.max_bytes = max_bytes
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (the real one when the config says 0)."""
        if self._server is None:
            raise RuntimeError("the DICOM receiver is not running; call start() first")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen (returns at once; associations are served on pynetdicom's threads).

        Raises:
            OSError: the address cannot be bound (in use, not this machine's).
        """
        self.incoming.mkdir(mode=0o700, exist_ok=True)
        self._clear_incoming()
        register_retired_sop_classes()
        c = self.config
        ae = AE(ae_title=c.ae_title)
        ae.maximum_pdu_size = c.max_pdu
        ae.acse_timeout = c.acse_timeout_s
        ae.dimse_timeout = c.dimse_timeout_s
        ae.network_timeout = c.network_timeout_s
        ae.maximum_associations = c.max_associations
        # An empty list would let anyone in; the config refuses that combination unless
        # allow_any_caller says so.
        ae.require_calling_aet = [] if c.allow_any_caller else list(c.allowed_callers)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        self._server = ae.start_server(
            (c.bind_address, c.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_reject)],
        )
        log.info(
            "DICOM receiver %s listening on %s:%d (callers: %s), storing into %s",
            c.ae_title,
            c.bind_address,
            self.port,
            "any" if c.allow_any_caller else ", ".join(c.allowed_callers),
            self.inbox,
        )

    def stop(self) -> None:
        """Stop listening and end the open associations."""
        if self._server is None:
            return
        port = self.port
        self._server.shutdown()
        self._server = None
        log.info("DICOM receiver %s on port %d stopped", self.config.ae_title, port)

    # -- handlers (pynetdicom's threads) -----------------------------------------------
    def _on_reject(self, event: Event) -> None:
        caller = event.assoc.requestor.ae_title
        address = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
        allowed = self.config.allow_any_caller or caller in self.config.allowed_callers
        reason = (
            "too many associations open (dicom_net.max_associations)"
            if allowed
            else "its AE title is not in dicom_net.allowed_callers"
        )
        log.warning("DICOM association from %r at %s rejected: %s", caller, address, reason)

    def _on_store(self, event: Event) -> int:
        caller = event.assoc.requestor.ae_title
        request = event.request
        if not isinstance(request, C_STORE):  # bound only to EVT_C_STORE
            raise TypeError(f"expected a C-STORE request, received {type(request).__name__}")
        size = len(request.DataSet.getvalue()) if request.DataSet is not None else 0
        if size > self.max_bytes:
            log.warning(
                "C-STORE from %r refused: dataset of %d bytes is over ingest.max_input_bytes = %d",
                caller,
                size,
                self.max_bytes,
            )
            return STATUS_OUT_OF_RESOURCES
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # whatever pydicom says about the file meta: not storable
            log.warning("C-STORE from %r refused: cannot be written as a file (%s)", caller, exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            name = self.store(data)
        except OSError as exc:
            log.error("C-STORE from %r refused: cannot store it (%s)", caller, exc.strerror)
            return STATUS_OUT_OF_RESOURCES
        log.info("C-STORE from %r: %d bytes stored as %s", caller, len(data), name)
        return STATUS_SUCCESS

    # -- storing -----------------------------------------------------------------------
    def store(self, data: bytes) -> str:
        """Write `data` durably into the inbox under a fresh random name; returns the name.

        Raises:
            OSError: it could not be written; nothing is left in the inbox or .incoming.
        """
        token = secrets.token_hex(16)
        tmp = self.incoming / f"{token}.dcm"
        final = self.inbox / f"dicom-{token}.dcm"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # A rename within one file system: the watcher sees a move and takes it whole.
            os.rename(tmp, final)
        except OSError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        try:
            sync_folder(self.inbox)
        except OSError:
            # Not durable, so not acknowledged: the sender sends it again (the queue takes
            # the same content once, should the watcher already have taken this copy).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final)
            raise
        return final.name

    def _clear_incoming(self) -> None:
        # Left by a crash between write and rename: never acknowledged, so the sender
        # still has them and will send again.
        for leftover in self.incoming.iterdir():
            if leftover.is_file() and not leftover.is_symlink():
                leftover.unlink()
                log.warning("removed %s, an unacknowledged partial transfer", leftover.name)


def register_retired_sop_classes() -> None:
    """Make pynetdicom serve C-STORE for the retired ultrasound SOP classes (idempotent)."""
    for sop_class, keyword in RETIRED_SOP_CLASSES.items():
        if uid_to_service_class(sop_class) is not StorageServiceClass:
            register_uid(sop_class, keyword, StorageServiceClass)
