"""Syncs too long for an HTTP answer: queued by ``POST /api/sync``, run by ``run_sync_job``, watched at
``GET /api/sync/{id}``.

Why a queue: an HTTP-triggered function has 230 s to answer whatever ``functionTimeout`` says
(Microsoft Learn, "Azure Functions hosting options" / "Function app timeout duration", note 1:
MicrosoftDocs/azure-docs includes/functions-timeout-duration.md), while a queue-triggered one runs
up to ``functionTimeout`` (Flex Consumption: 30 minutes by default, no maximum).

Why nothing is lost: the job's row (request, state) is written before its message is sent, and
the message is removed only when ``run_sync_job`` returns. A failed invocation, or an instance
that dies mid-job, leaves the message to become visible again; after five dequeues the host moves
it to ``kvlink-sync-poison`` ("Azure Queue storage trigger for Azure Functions", Poison messages:
MicrosoftDocs/azure-docs articles/azure-functions/functions-bindings-storage-queue-trigger.md). A
redelivered job runs the whole sync again, which is safe: every group write starts from a read
taken inside the group's lease and writes only what differs, so a second run of a finished group
changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import KvLinkError, RequestError, TransientError

if TYPE_CHECKING:
    from .linking import SyncRequest
    from .registry import JobRow
    from .sync import Engine
    from .workqueue import SyncQueue

logger = logging.getLogger(__name__)

# The queue trigger's maxDequeueCount (host.json "queues", default 5): the last delivery a job gets.
MAX_DEQUEUE = 5
# A job nobody has touched for this long has no worker and no message left (both bounds are far
# below it: host.json functionTimeout is 10 minutes, and a dead instance's message is visible again
# after the host's 10-minute visibility timeout): the status says so instead of "running" forever.
STALE_AFTER = timedelta(minutes=45)
PROGRESS_EVERY = 5.0  # seconds between progress writes (each is a Table call)
RETRY_AFTER = "10"  # seconds a client is asked to wait between status polls
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def submit(
    engine: Engine, queue: SyncQueue, request: SyncRequest, *, total: int, origin: str = "api"
) -> dict[str, Any]:
    """Record the job, then queue it; its status (queued). If the queue refuses, the job is marked failed."""
    job_id = uuid.uuid4().hex
    engine.registry.create_job(job_id, request.as_json(), origin=origin, total=total)
    try:
        queue.send(job_id)
    except KvLinkError as err:
        with contextlib.suppress(KvLinkError):
            _fail(engine, job_id, err)
        raise
    logger.info("Queued sync job %s over %d groups (%s)", job_id, total, origin)
    job = engine.registry.job(job_id)
    assert job is not None
    return status_json(engine, job)


def status(engine: Engine, job_id: str) -> dict[str, Any]:
    """The job's status; a finished job carries the synchronous answer's body as ``result``."""
    job = engine.registry.job(job_id) if _JOB_ID.fullmatch(job_id) else None
    if job is None:
        raise RequestError(404, "JobNotFound", f"no sync job {job_id!r}; POST /api/sync answers with its id")
    return status_json(engine, job)


def status_json(engine: Engine, job: JobRow, *, now: datetime | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "request": dict(job.request),
        "createdAt": _iso(job.created_at),
        "startedAt": _iso(job.started_at),
        "finishedAt": _iso(job.finished_at),
        "updatedAt": _iso(job.updated_at),
        "attempts": job.attempts,
        "progress": {"done": job.done, "total": job.total},
    }
    now = now or datetime.now(UTC)
    if job.status in ("queued", "running") and job.updated_at and now - job.updated_at > STALE_AFTER:
        minutes = int((now - job.updated_at).total_seconds() // 60)
        body["status"] = "failed"
        body["error"] = {
            "code": "JobLost",
            "message": f"no worker has touched this job for {minutes} minutes: its message was given up "
            "(see the kvlink-sync-poison queue and the run_sync_job logs); POST /api/sync again",
        }
    elif job.status == "done":
        body["result"] = engine.registry.job_result(job.id)
    elif job.status == "failed" and job.error:
        body["error"] = dict(job.error)
        if job.http_status:
            body["httpStatus"] = job.http_status
    return body


def run(engine: Engine, job_id: str, *, dequeue_count: int) -> None:
    """One delivery of a job's message. Returns when the job is done or failed for good (the message
    is then deleted); raises a TransientError to have the message delivered again."""
    from .linking import SyncRequest, sync

    if not _JOB_ID.fullmatch(job_id):
        # Not an id submit() makes, so no delivery can find its row. Worse, a key with '/', '\\', '#' or '?'
        # is refused by Table storage (Microsoft Learn, "Understanding the Table service data model",
        # Characters disallowed in key fields; Azurite answers 500, read as transient): every delivery
        # would fail until the message reached kvlink-sync-poison.
        logger.error("A kvlink-sync message names %r, not a sync job id; its message is dropped", job_id[:80])
        return
    job = engine.registry.job(job_id)
    if job is None:
        logger.error("Sync job %s has no row; its message is dropped", job_id)
        return
    if job.status in ("done", "failed"):
        logger.info("Sync job %s is already %s; a repeated delivery is acknowledged", job_id, job.status)
        return
    if job.status == "running":
        logger.warning("Sync job %s was running when its worker stopped; running it again (%d)", job_id, dequeue_count)
    now = datetime.now(UTC)
    engine.registry.update_job(job_id, Status="running", StartedAt=job.started_at or now, Attempts=dequeue_count)
    try:
        request = SyncRequest.from_json(dict(job.request), engine.settings)
        result = sync(engine, request, origin=job.origin, progress=_progress(engine, job_id))
    except TransientError as err:
        if dequeue_count >= MAX_DEQUEUE:
            _fail(engine, job_id, err)
            return
        logger.warning("Sync job %s failed for now (delivery %d): %s; it comes again", job_id, dequeue_count, err)
        raise
    except KvLinkError as err:  # refused, not linked any more, settings: running it again changes nothing
        _fail(engine, job_id, err)
        return
    engine.registry.save_job_result(job_id, result.as_json())
    groups = len(result.groups)
    engine.registry.update_job(job_id, Status="done", FinishedAt=datetime.now(UTC), Done=groups, Total=groups)
    logger.info("Sync job %s done: %d groups", job_id, groups)


def _progress(engine: Engine, job_id: str) -> Any:
    """Record done/total now and then; a failure to record is logged, never fails the sync."""
    last = [0.0]

    def record(done: int, total: int) -> None:
        moment = time.monotonic()
        if done < total and moment - last[0] < PROGRESS_EVERY:
            return
        last[0] = moment
        try:
            engine.registry.update_job(job_id, Done=done, Total=total)
        except Exception as err:  # noqa: BLE001 -- progress is a courtesy; the groups' writes matter
            logger.warning("Could not record the progress of sync job %s: %s", job_id, type(err).__name__)

    return record


def _fail(engine: Engine, job_id: str, err: KvLinkError) -> None:
    from .api import error_response

    answer = error_response(err)
    logger.error("Sync job %s failed: %s", job_id, err)
    engine.registry.update_job(
        job_id,
        Status="failed",
        FinishedAt=datetime.now(UTC),
        Error=answer.body["error"],
        HttpStatus=answer.status,
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None
