"""Long syncs: POST /api/sync answers 202 + Location, run_sync_job does the work, GET /api/sync/{id} reports.

Real azure.functions objects (HttpRequest with route_params, the worker's QueueMessage) and a real
Azure Storage queue (Azurite's Queue service): the message is received, left to time out and
delivered again the way the Functions host does it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

import function_app
from kvlink_core import jobs
from kvlink_core.model import GroupKey
from kvlink_core.registry import JobRow
from kvlink_core.settings import Settings
from kvlink_core.workqueue import SYNC_QUEUE

pytestmark = pytest.mark.integration


def request(method: str, route: str, body: Any = None, *, params: dict[str, str] | None = None) -> func.HttpRequest:
    route_params = {"jobId": route.split("/", 1)[1]} if route.startswith("sync/") else {}
    return func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{route}",
        headers={"Content-Type": "application/json"},
        params=params or {},
        route_params=route_params,
        body=b"" if body is None else json.dumps(body).encode(),
    )


def call(fn: Any, req: func.HttpRequest) -> tuple[int, Any, func.HttpResponse]:
    response = fn(req)
    text = response.get_body().decode()
    return response.status_code, (json.loads(text) if text else None), response


@pytest.fixture
def queue(estate, app_engine) -> Iterator[QueueClient]:
    """The kvlink-sync queue as the Functions host reads it (base64), emptied for this test."""
    client = QueueClient.from_connection_string(
        estate.env["AzureWebJobsStorage"],
        SYNC_QUEUE,
        message_decode_policy=TextBase64DecodePolicy(),
        connection_timeout=5,
        read_timeout=10,
    )
    try:
        client.create_queue()
    except ResourceExistsError:  # from an earlier test
        client.clear_messages()
    yield client
    client.close()


def receive(queue: QueueClient, *, visibility: int = 30, within: float = 30.0) -> Any:
    """The next visible message, waiting (bounded) for one that a dead worker left to reappear."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for message in queue.receive_messages(max_messages=1, visibility_timeout=visibility):
            return message
        time.sleep(0.2)
    pytest.fail(f"no message became visible on {SYNC_QUEUE} within {within:.0f}s")


def deliver(queue: QueueClient, message: Any) -> None:
    """What the host does with one message: invoke run_sync_job; delete the message if it returned."""
    trigger_input = QueueMessage(
        id=message.id,
        body=message.content.encode(),
        dequeue_count=message.dequeue_count,
        pop_receipt=message.pop_receipt,
    )
    function_app.run_sync_job(trigger_input)
    queue.delete_message(message)


class TestRegistration:
    def test_status_route_and_queue_trigger(self, registered):
        """GET /api/sync/{jobId} and the queue-triggered worker on kvlink-sync, through AzureWebJobsStorage."""
        status = next(b for b in registered["sync_status"]["bindings"] if b["type"] == "httpTrigger")
        assert status["route"] == "sync/{jobId}" and status["methods"] == ["GET"]
        trigger = next(b for b in registered["run_sync_job"]["bindings"] if b["type"] == "queueTrigger")
        assert trigger["queueName"] == SYNC_QUEUE == "kvlink-sync"
        assert trigger["connection"] == "AzureWebJobsStorage"


class TestSmallSyncStaysSynchronous:
    def test_under_the_threshold_answers_200_with_the_result(self, estate, app_engine, queue):
        """Two groups, threshold 20 (the default): 200 with the result, as before; nothing is queued."""
        groups = estate.linked_groups(2)

        status, body, response = call(function_app.sync, request("POST", "sync", {"vault": estate.vault}))

        assert status == 200 and "Location" not in response.headers
        assert [g["outcome"] for g in body["groups"]] == ["applied", "applied"]
        assert all(estate.names(g) == ["api-key", "db-password"] for g in groups)
        assert queue.peek_messages(max_messages=5) == []


class TestQueuedSync:
    def test_async_answers_202_and_the_worker_finishes_it(self, estate, app_engine, queue):
        """?async=true: 202 + Location + {id, status}; nothing written yet; the worker writes both groups;
        GET on the Location then answers done with the synchronous answer's shape as ``result``."""
        groups = estate.linked_groups(2)
        writes = len(estate.ado.writes(estate.org))

        status, body, response = call(
            function_app.sync, request("POST", "sync", {"vault": estate.vault}, params={"async": "true"})
        )

        assert status == 202
        assert response.headers["Location"] == f"/api/sync/{body['id']}"
        assert body["status"] == "queued" and body["progress"] == {"done": 0, "total": 2}
        assert len(estate.ado.writes(estate.org)) == writes  # accepted, not done

        deliver(queue, receive(queue))

        job_id = response.headers["Location"].rsplit("/", 1)[1]
        status, job, response = call(function_app.sync_status, request("GET", f"sync/{job_id}"))
        assert status == 200 and job["status"] == "done"
        assert job["progress"] == {"done": 2, "total": 2} and job["attempts"] == 1
        result = job["result"]
        assert set(result) == {"dryRun", "vaults", "groups"}  # POST /api/sync's 200 body
        assert result["vaults"] == [estate.vault] and result["dryRun"] is False
        assert sorted(g["link"]["groupId"] for g in result["groups"]) == sorted(groups)
        for g in result["groups"]:
            assert g["outcome"] == "applied" and g["plan"]["add"] == ["api-key", "db-password"]
        assert all(estate.names(g) == ["api-key", "db-password"] for g in groups)

    def test_more_groups_than_the_threshold_go_to_the_queue(self, estate, app_engine, queue, monkeypatch):
        """KVLINK_SYNC_ASYNC_GROUPS=2: a vault with three linked groups is queued without ?async."""
        monkeypatch.setattr(app_engine, "settings", estate.settings(KVLINK_SYNC_ASYNC_GROUPS="2"))
        estate.linked_groups(3)

        status, body, response = call(function_app.sync, request("POST", "sync", {"vault": estate.vault}))

        assert status == 202 and response.headers["Location"] == f"/api/sync/{body['id']}"
        message = receive(queue)
        assert json.loads(message.content) == {"job": body["id"]}

    def test_a_job_whose_worker_died_is_redone(self, estate, app_engine, queue, monkeypatch):
        """The first worker stops mid-job (its process ends: no answer, no cleanup). The message the host
        took becomes visible again; the second delivery runs the sync and the status says done."""
        groups = estate.linked_groups(2)
        _, body, _ = call(function_app.sync, request("POST", "sync", {"vault": estate.vault}, params={"async": "1"}))

        from kvlink_core import linking

        original = linking.sync

        def dies_after_the_first_group(engine, request, **kwargs):
            progress = kwargs.pop("progress")

            def stop(done: int, total: int) -> None:
                progress(done, total)
                raise SystemExit("instance recycled")  # not an Exception: nothing in kvlink catches it

            return original(engine, request, progress=stop, **kwargs)

        monkeypatch.setattr(linking, "sync", dies_after_the_first_group)
        first = receive(queue, visibility=1)
        with pytest.raises(SystemExit):
            deliver(queue, first)
        monkeypatch.setattr(linking, "sync", original)
        _, job, _ = call(function_app.sync_status, request("GET", f"sync/{body['id']}"))
        assert job["status"] == "running" and job["attempts"] == 1

        second = receive(queue)  # the same message, visible again after the 1 s the dead worker held it
        assert second.id == first.id and second.dequeue_count == 2
        deliver(queue, second)

        _, job, _ = call(function_app.sync_status, request("GET", f"sync/{body['id']}"))
        assert job["status"] == "done" and job["attempts"] == 2
        assert {g["outcome"] for g in job["result"]["groups"]} <= {"applied", "unchanged"}
        assert all(estate.names(g) == ["api-key", "db-password"] for g in groups)

    def test_a_repeated_delivery_of_a_done_job_changes_nothing(self, estate, app_engine, queue):
        """At-least-once delivery: a done job's message delivered again is acknowledged without a sync."""
        estate.linked_groups(1)
        call(function_app.sync, request("POST", "sync", {"vault": estate.vault}, params={"async": "1"}))
        message = receive(queue)
        deliver(queue, message)
        estate.kv.reset_calls()
        writes = len(estate.ado.writes(estate.org))

        function_app.run_sync_job(QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=2))

        assert estate.kv.calls == [] and len(estate.ado.writes(estate.org)) == writes

    def test_a_transient_failure_is_delivered_again_and_given_up_on_the_last_delivery(self, estate, app_engine, queue):
        """Key Vault answers 503: the worker raises (the host delivers the message again) and the job stays
        running; on the fifth delivery, the last before kvlink-sync-poison (the trigger's default
        maxDequeueCount: "Azure Queue storage trigger for Azure Functions", Poison messages), the job ends
        failed with the error the synchronous call would have answered."""
        from kvlink_core.errors import TransientError

        estate.linked_groups(1)
        _, body, _ = call(function_app.sync, request("POST", "sync", {"vault": estate.vault}, params={"async": "1"}))
        message = receive(queue)
        estate.kv.inject(503, path=r"/secrets$", times=1000)

        def delivery(count: int) -> None:
            function_app.run_sync_job(QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=count))

        with pytest.raises(TransientError):
            delivery(1)
        _, job, _ = call(function_app.sync_status, request("GET", f"sync/{body['id']}"))
        assert job["status"] == "running" and job["attempts"] == 1

        delivery(5)

        _, job, _ = call(function_app.sync_status, request("GET", f"sync/{body['id']}"))
        assert job["status"] == "failed" and job["attempts"] == 5
        assert job["httpStatus"] == 502 and job["error"]["code"] == "UpstreamUnavailable"
        estate.kv.clear_faults()

    @pytest.mark.parametrize("job_id", ["a/b", "", "0123456789abcdef0123456789abcdef"])
    def test_a_message_naming_no_job_is_acknowledged(self, estate, app_engine, job_id, captured_logs):
        """An id submit() never makes -- one Table storage refuses as a key included -- returns (the host
        deletes the message) instead of failing every delivery until kvlink-sync-poison."""
        body = json.dumps({"job": job_id}).encode()

        function_app.run_sync_job(QueueMessage(id="m", body=body, dequeue_count=1))

        assert "dropped" in captured_logs.text

    def test_a_refused_sync_ends_failed_with_the_synchronous_error(self, estate, app_engine, queue):
        """The links were removed before the worker ran: the job fails with the error the 200 path gives."""
        groups = estate.linked_groups(1)
        _, body, _ = call(function_app.sync, request("POST", "sync", {"vault": estate.vault}, params={"async": "1"}))
        app_engine.registry.delete_link(GroupKey(estate.org, groups[0]))

        deliver(queue, receive(queue))

        _, job, _ = call(function_app.sync_status, request("GET", f"sync/{body['id']}"))
        assert job["status"] == "failed" and job["httpStatus"] == 404
        assert job["error"]["code"] == "NoLinks"


class TestStatus:
    @pytest.mark.parametrize("job_id", ["0123456789abcdef0123456789abcdef", "not-a-job", "a'b"])
    def test_unknown_id_is_404(self, estate, app_engine, job_id):
        status, body, _ = call(function_app.sync_status, request("GET", f"sync/{job_id}"))
        assert status == 404 and body["error"]["code"] == "JobNotFound"

    def test_async_flag_value_is_checked(self, estate, app_engine):
        status, body, _ = call(
            function_app.sync, request("POST", "sync", {"vault": estate.vault}, params={"async": "soon"})
        )
        assert status == 400 and body["error"]["field"] == "async"

    def test_unlinked_vault_is_404_before_anything_is_queued(self, estate, app_engine, queue):
        status, body, _ = call(
            function_app.sync, request("POST", "sync", {"vault": estate.vault}, params={"async": "true"})
        )
        assert status == 404 and body["error"]["code"] == "NoLinks"
        assert queue.peek_messages(max_messages=5) == []

    def test_a_job_nobody_touched_for_long_is_reported_lost(self, estate, app_engine):
        """No worker and no message left (poisoned after five deliveries): the status says failed, not running."""
        long_ago = datetime.now(UTC) - jobs.STALE_AFTER - timedelta(minutes=1)
        row = JobRow("f" * 32, "running", {"vault": "v"}, "api", long_ago, long_ago, attempts=5, total=3)
        body = jobs.status_json(app_engine, row)
        assert body["status"] == "failed" and body["error"]["code"] == "JobLost"
        assert "kvlink-sync-poison" in body["error"]["message"]


class TestSettings:
    def test_threshold_setting(self, estate):
        assert estate.settings().sync_async_groups == 20
        assert estate.settings(KVLINK_SYNC_ASYNC_GROUPS="0").sync_async_groups == 0
        with pytest.raises(Exception, match="KVLINK_SYNC_ASYNC_GROUPS"):
            estate.settings(KVLINK_SYNC_ASYNC_GROUPS="many")

    def test_queue_endpoint_from_the_identity_settings(self):
        base = {"KVLINK_DEVOPS_ORGS": "o", "KVLINK_ALLOWED_VAULTS": "*"}
        by_account = Settings.from_env({**base, "AzureWebJobsStorage__accountName": "stkv"})
        assert by_account.storage.queue_endpoint == "https://stkv.queue.core.windows.net"
        explicit = Settings.from_env(
            {
                **base,
                "AzureWebJobsStorage__tableServiceUri": "https://stkv.table.core.windows.net/",
                "AzureWebJobsStorage__queueServiceUri": "https://stkv.queue.core.windows.net/",
            }
        )
        assert explicit.storage.queue_endpoint == "https://stkv.queue.core.windows.net"


class TestCommandLine:
    """``sync --async`` queues like ``?async=true`` and waits on the status, bounded, showing progress."""

    def test_waits_for_the_worker_and_prints_the_result(self, estate, app_engine, queue, monkeypatch):
        from io import StringIO

        from kvlink_core import cli

        groups = estate.linked_groups(2)
        looks: list[float] = []

        def worker_runs(seconds: float) -> None:  # the CLI's first wait: the deployed worker takes the job
            looks.append(seconds)
            if len(looks) == 1:
                deliver(queue, receive(queue))

        monkeypatch.setattr(cli, "_sleep", worker_runs)
        out, err = StringIO(), StringIO()

        code = cli.main(["sync", "--vault", estate.vault, "--async", "--wait", "60"], out=out, err=err)

        assert code == 0, err.getvalue()
        progress = err.getvalue().splitlines()
        assert progress[0].startswith("sync job ") and ": queued, 0/2 groups" in progress[0]
        assert ": done, 2/2 groups" in progress[-1]
        assert looks == [cli.JOB_POLL]
        assert out.getvalue().count(": applied") == 2
        assert all(estate.names(g) == ["api-key", "db-password"] for g in groups)

    def test_gives_up_after_the_wait_and_says_how_to_resume(self, estate, app_engine, queue, monkeypatch):
        """No worker takes the job: after --wait the CLI exits 1, naming the job and `sync --job`."""
        from io import StringIO

        from kvlink_core import cli

        estate.linked_groups(1)
        now = [0.0]
        monkeypatch.setattr(cli, "_monotonic", lambda: now[0])
        monkeypatch.setattr(cli, "_sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
        err = StringIO()

        code = cli.main(["sync", "--vault", estate.vault, "--async", "--wait", "12"], out=StringIO(), err=err)

        assert code == 1
        job_id = json.loads(queue.peek_messages(max_messages=1)[0].content)["job"]
        assert f"sync job {job_id} is still queued after 12s" in err.getvalue()
        assert f"sync --job {job_id}" in err.getvalue()

    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            (["--job", "f" * 32, "--vault", "kv-x"], "--job waits for a queued sync"),
            (["--vault", "kv-x", "--wait", "60"], "--wait goes with --async or --job"),
            (["--vault", "kv-x", "--async", "--wait", "0"], "--wait must be a positive number"),
        ],
    )
    def test_flags_that_do_not_go_together_are_refused(self, estate, app_engine, flags, message):
        from io import StringIO

        from kvlink_core import cli

        err = StringIO()
        assert cli.main(["sync", *flags], out=StringIO(), err=err) == 64
        assert message in err.getvalue()


def test_a_connection_string_without_a_queue_endpoint_is_refused_not_guessed(estate):
    """Azurite's Table service alone (the demo's and serve's stack): the job is not sent to
    devstoreaccount1.queue.core.windows.net, kvlink says the queue is missing."""
    from kvlink_core.errors import ConfigError
    from kvlink_core.workqueue import SyncQueue

    table_only = estate.env["AzureWebJobsStorage"].split("QueueEndpoint=")[0]
    queue = SyncQueue(estate.settings(AzureWebJobsStorage=table_only))
    with pytest.raises(ConfigError, match="no QueueEndpoint"):
        queue.send("f" * 32)
