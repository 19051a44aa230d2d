"""The node's durable state in one SQLite file: the job queue and the results.

Errors::

    StoreError (FameNodeError)   the database cannot do what was asked (`path` attribute)
    ├── SchemaTooNewError        the file was written by a newer FAME Node
    ├── JobNotFoundError         no job has the given id
    └── JobStateError            the job is not in the status the operation needs

`db` owns connections and the schema, `job_types` the job data, `jobs` the queue, `results`
the findings, `model_events` the model history, `reviews` the clinicians' decisions.
"""

from appliance.store.db import SchemaTooNewError, StoreError
from appliance.store.jobs import (
    EnqueueOutcome,
    Job,
    JobNotFoundError,
    JobQueue,
    JobStateError,
    JobStatus,
)
from appliance.store.results import FrameResultRow, ResultRecord, ResultStore, StoredResult
from appliance.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "EnqueueOutcome",
    "FrameResultRow",
    "Job",
    "JobNotFoundError",
    "JobQueue",
    "JobStateError",
    "JobStatus",
    "ResultRecord",
    "ResultStore",
    "SchemaTooNewError",
    "StoreError",
    "StoredResult",
]
