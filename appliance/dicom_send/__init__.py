"""Sending the node's DICOM SEG / SR to the PACS (C-STORE), from a durable queue.

Optional (``dicom_send.enabled``, off by default). A done DICOM job's SEG(s) and SR are
queued in the store (``outbound``, `appliance.store.outbound`) in the transaction that
marks the job done; the service's sender thread sends them:

- `scu`: `send_batch`, one association per batch, one `SendOutcome` per file (sent,
  refused, unreachable, gone);
- `sender`: `DicomSender`, the thread that takes due rows, sends them and records each
  outcome with its backoff.

``fame-node outbox list|retry`` (`appliance.commands.outbox`) shows and resends them.
"""

from appliance.dicom_send.scu import SendItem, SendOutcome, send_batch
from appliance.dicom_send.sender import DicomSender, RoundReport

__all__ = ["DicomSender", "RoundReport", "SendItem", "SendOutcome", "send_batch"]
