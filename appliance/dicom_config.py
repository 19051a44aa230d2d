"""The DICOM sections of the node's config: SEG / SR out, the C-STORE receiver, the sender.

Part of `appliance.config.NodeConfig` (``[dicom_out]``, ``[dicom_net]``, ``[dicom_send]``);
kept here so each module stays one thing.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from appliance.config_section import Section as _Section
from appliance.errors import ConfigError


class DicomOutConfig(_Section):
    enabled: bool = Field(
        True,
        description="write a DICOM Segmentation and Structured Report of every analysed DICOM "
        "image into paths.outbox (PNG / JPEG inputs have no DICOM context: none)",
    )
    device_serial: str | None = Field(
        None, description="Device Serial Number in the SEG / SR; None: the node's name"
    )


_AE_TITLE = r"^[ -~]{1,16}$"  # DICOM AE: 1-16 printable ASCII characters


class DicomNetConfig(_Section):
    enabled: bool = Field(
        False,
        description="listen for DICOM C-STORE: a scanner or PACS pushes images straight "
        "into the inbox",
    )
    bind_address: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address listened on; 127.0.0.1: only this machine (the LAN address: pushes)",
    )
    port: int = Field(11112, ge=0, le=65535, description="TCP port listened on")
    ae_title: str = Field(
        "FAMENODE", pattern=_AE_TITLE, description="this node's AE title (1-16 characters)"
    )
    allowed_callers: tuple[str, ...] = Field(
        (),
        description="AE titles allowed to send; any other caller is rejected at association",
    )
    allow_any_caller: bool = Field(
        False, description="accept every calling AE title (allowed_callers is then unused)"
    )
    max_pdu: int = Field(16382, ge=0, description="largest PDU received (bytes); 0: no limit")
    max_associations: int = Field(
        4, ge=1, le=64, description="associations served at the same time"
    )
    acse_timeout_s: float = Field(
        30.0, gt=0, description="seconds to wait for association messages"
    )
    dimse_timeout_s: float = Field(30.0, gt=0, description="seconds to wait for DIMSE messages")
    network_timeout_s: float = Field(
        60.0, gt=0, description="an association silent this long is aborted"
    )

    @field_validator("allowed_callers")
    @classmethod
    def _ae_titles(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for title in v:
            if not 1 <= len(title.strip()) <= 16 or not title.isascii() or not title.isprintable():
                raise ValueError(
                    f"{title!r} is not an AE title; expected 1-16 printable ASCII characters"
                )
        return tuple(t.strip() for t in v)

    @model_validator(mode="after")
    def _someone_may_send(self) -> DicomNetConfig:
        if self.enabled and not self.allowed_callers and not self.allow_any_caller:
            raise ValueError(
                "dicom_net.enabled = true with no allowed_callers: list the AE titles that "
                'may send (allowed_callers = ["SCANNER1"]), or set allow_any_caller = true'
            )
        return self


class DicomSendConfig(_Section):
    enabled: bool = Field(
        False,
        description="send every SEG / SR written to paths.outbox to the PACS below (DICOM "
        "C-STORE), from a durable queue in the store that survives restarts",
    )
    ae_title: str | None = Field(
        None, pattern=_AE_TITLE, description="the PACS's AE title (called AE); needed when enabled"
    )
    host: str | None = Field(
        None, min_length=1, description="the PACS's host name or address; needed when enabled"
    )
    port: int = Field(104, ge=1, le=65535, description="the PACS's DICOM port")
    calling_ae_title: str = Field(
        "FAMENODE", pattern=_AE_TITLE, description="this node's AE title when it sends"
    )
    acse_timeout_s: float = Field(
        30.0, gt=0, description="seconds to wait for the PACS to accept an association"
    )
    dimse_timeout_s: float = Field(
        60.0, gt=0, description="seconds to wait for the PACS to answer one C-STORE"
    )
    network_timeout_s: float = Field(
        60.0, gt=0, description="an association silent this long is aborted"
    )
    retry_initial_s: float = Field(
        10.0, gt=0, description="first wait before a failed send is tried again"
    )
    retry_max_s: float = Field(
        900.0, gt=0, description="longest wait between tries (the backoff doubles up to it)"
    )
    max_attempts: int = Field(
        10,
        ge=1,
        description="an object the PACS refused this many times is set aside as failed "
        "(`fame-node outbox retry`); a PACS that cannot be reached is waited out instead",
    )
    batch_size: int = Field(32, ge=1, le=1000, description="objects sent per association")
    poll_interval_s: float = Field(
        2.0, gt=0, le=60, description="how often the queue is checked for objects due"
    )

    @model_validator(mode="after")
    def _has_destination(self) -> DicomSendConfig:
        if self.enabled and (not self.ae_title or not self.host):
            missing = [k for k in ("ae_title", "host") if not getattr(self, k)]
            raise ValueError(
                f"dicom_send.enabled = true but dicom_send.{' and '.join(missing)} is not set: "
                'name the PACS to send to (ae_title = "PACS", host = "pacs.example.org", '
                "port = 104), or set enabled = false"
            )
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(
                f"dicom_send.retry_max_s = {self.retry_max_s} is below retry_initial_s = "
                f"{self.retry_initial_s}: the backoff cap must be at least the first wait"
            )
        return self

    def queued_for(self) -> str | None:
        """The destination a done job's SEG / SR are queued for; None when not sending."""
        return self.destination() if self.enabled else None

    def destination(self) -> str:
        """The PACS as the send queue names it: ``AE@host:port``."""
        if not self.ae_title or not self.host:
            raise ConfigError(["dicom_send: no destination configured (ae_title, host)"])
        return f"{self.ae_title}@{self.host}:{self.port}"
