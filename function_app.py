"""kvlink's Azure Functions: triggers only. Each one hands its input to ``kvlink_core``."""

from __future__ import annotations

from typing import Any, List  # noqa: UP035 -- the worker needs typing.List (on_vault_log)

import azure.functions as func

from kvlink_core import api
from kvlink_core import app as kvlink

# The worker logs at INFO; the SDKs' per-request lines stay out unless KVLINK_SDK_LOG_LEVEL asks for them.
kvlink.configure_host_logging()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="links/{organization?}/{project?}/{groupId?}", methods=["GET", "POST", "DELETE"])
def links(req: func.HttpRequest) -> func.HttpResponse:
    """Link a group to a vault (POST), list links (GET), or forget one (DELETE)."""
    return _http(api.links(req.method, req.route_params, req.params, req.get_body()))


@app.route(route="sync", methods=["POST"])
def sync(req: func.HttpRequest) -> func.HttpResponse:
    """Reconcile whole groups -- every group of a vault, or one group -- from a full listing."""
    return _http(api.sync(req.get_body(), req.params))


@app.route(route="sync/{jobId}", methods=["GET"])
def sync_status(req: func.HttpRequest) -> func.HttpResponse:
    """A queued sync's status (POST /api/sync answered 202 with this Location)."""
    return _http(api.sync_status(req.route_params.get("jobId", "")))


@app.queue_trigger(arg_name="message", queue_name="kvlink-sync", connection="AzureWebJobsStorage")
def run_sync_job(message: func.QueueMessage) -> None:
    """A sync too long for an HTTP answer. Raising leaves the message to be delivered again (after
    five deliveries the host moves it to kvlink-sync-poison); the job's row says how far it got."""
    kvlink.run_sync_job(message.get_body(), dequeue_count=message.dequeue_count or 1)


@app.route(route="audit/latest", methods=["GET"])
def audit_latest(req: func.HttpRequest) -> func.HttpResponse:
    """The newest audit report: summary and findings."""
    return _http(api.audit_latest())


@app.route(route="report", methods=["GET"])
def report(req: func.HttpRequest) -> func.HttpResponse:
    """The estate at a glance: an HTML page from the latest audit, the links and the last 30 runs."""
    return _http(api.report())


@app.timer_trigger(arg_name="timer", schedule="%KVLINK_AUDIT_SCHEDULE%", use_monitor=True, run_on_startup=False)
def nightly_audit(timer: func.TimerRequest) -> None:
    """Reconcile every Key Vault group with its vault, discover unlinked ones, report and notify.

    use_monitor keeps the schedule across restarts, so a missed run is run once when the host
    comes back (past_due), not skipped.
    """
    kvlink.run_nightly_audit(past_due=timer.past_due)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness and version; nothing sensitive."""
    return _http(api.health())


@app.event_grid_trigger(arg_name="event")
def on_secret_event(event: func.EventGridEvent) -> None:
    """A Key Vault event: bring every group linked to the vault in step for that secret.

    Malformed and unwanted events are logged and acknowledged; a transient failure
    raises, so Event Grid redelivers (its retry policy, then dead-lettering).
    """
    kvlink.handle_event_grid(_envelope(event))


@app.retry(
    strategy="exponential_backoff",
    max_retry_count="5",
    minimum_interval="00:00:10",
    maximum_interval="00:05:00",
)
@app.event_hub_message_trigger(
    arg_name="events",
    event_hub_name="%KVLINK_EVENTHUB_NAME%",
    connection="KVLINK_EVENTHUB",
    cardinality="many",
)
def on_vault_log(events: List[func.EventHubEvent]) -> None:  # noqa: UP006 -- see below
    """Key Vault audit logs: deletes, disables, recoveries and restores, which Event Grid never sends.

    ``typing.List``, not ``list``: the Python worker refuses a builtin generic annotation
    (``list[...]``) as "invalid non-type annotation" and then loads no function of the app at all
    (azure_functions_runtime ``functions.py``; the 3.11 worker's ``typing_inspect`` is the same);
    tests_worker/test_worker_lifecycle.py pins it.

    Event Hubs checkpoints a batch even when this fails, so the core persists the work first;
    the retry policy above re-runs a failed batch, and what is still queued after that is
    finished by the next batch or the nightly audit.
    """
    kvlink.handle_log_batch([event.get_body() for event in events])


def _http(response: api.ApiResponse) -> func.HttpResponse:
    return func.HttpResponse(
        body=response.text(),
        status_code=response.status,
        headers=dict(response.headers),
        mimetype=response.mimetype,
        charset=response.charset,
    )


def _envelope(event: Any) -> dict[str, Any]:
    # The binding hands over a CloudEvent object when the subscription uses that schema.
    if isinstance(event, func.CloudEvent):
        return {
            "specversion": event.specversion,
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "subject": event.subject,
            "time": event.time,
            "data": event.get_json(),
        }
    return {
        "id": event.id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": event.event_time,
        "data": event.get_json(),
        "dataVersion": event.data_version,
    }
