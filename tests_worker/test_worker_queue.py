"""Queued syncs through the host and the worker: POST /api/sync answers 202, the message kvlink put on
``kvlink-sync`` (Azurite's Queue service) is delivered to run_sync_job as the host delivers it, and
GET /api/sync/{jobId} reports.

The worker's answer decides the message's fate (WorkerHost.deliver): a success deletes it, a failure
releases it to be delivered again, or moves it to kvlink-sync-poison at the fifth dequeue. So every
delivery asserts both the invocation's result and what is left on the queues.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient

from kvlink_core.workqueue import SYNC_QUEUE

pytestmark = pytest.mark.integration

KEY = {"x-functions-key": "not-checked-by-the-worker"}  # the host checks it before the worker runs
POISON = f"{SYNC_QUEUE}-poison"


def client(estate, name: str) -> QueueClient:
    return QueueClient.from_connection_string(
        estate.env["AzureWebJobsStorage"],
        name,
        message_decode_policy=BinaryBase64DecodePolicy(),  # the host's QueuesOptions.MessageEncoding (base64)
        connection_timeout=5,
        read_timeout=10,
    )


def emptied(queue: QueueClient) -> QueueClient:
    try:
        queue.create_queue()
    except ResourceExistsError:  # from an earlier test: the session shares one Azurite
        queue.clear_messages()
    return queue


@pytest.fixture
def queues(estate, app_settings) -> Iterator[tuple[QueueClient, QueueClient]]:
    """kvlink-sync and its poison queue as the host's queue listener sees them, both empty."""
    sync, poison = emptied(client(estate, SYNC_QUEUE)), emptied(client(estate, POISON))
    yield sync, poison
    sync.close()
    poison.close()


def receive(queue: QueueClient, *, within: float = 30.0) -> Any:
    """The next visible message, polled as the listener polls (bounded)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for message in queue.receive_messages(max_messages=1, visibility_timeout=60):
            return message
        time.sleep(0.1)
    pytest.fail(f"no message became visible on {queue.queue_name} within {within:.0f}s")


def left_on(queue: QueueClient) -> list[bytes]:
    return [bytes(m.content) for m in queue.peek_messages(max_messages=32)]


def queue_sync(worker, estate) -> tuple[str, Any]:
    """POST /api/sync?async=true through the worker; the job id from the Location it answers with."""
    function, answer = worker.http(
        "POST",
        "sync",
        query={"async": "true"},
        headers={**KEY, "Content-Type": "application/json"},
        body=json.dumps({"vault": estate.vault}).encode(),
    )
    assert (function, answer.status) == ("sync", 202), answer.body
    location = answer.headers["Location"]
    assert location == f"/api/sync/{answer.json()['id']}"
    return location.removeprefix("/api/"), answer


def status(worker, path: str) -> Any:
    function, answer = worker.http("GET", path, headers=KEY)
    assert function == "sync_status"
    return answer


def failure(worker, response) -> str:
    assert not worker.succeeded(response), "the invocation succeeded"
    return f"{response.result.exception.message}\n{response.result.exception.stack_trace}"


class TestQueuedSync:
    def test_accepted_delivered_and_reported(self, worker, estate, queues):
        """202 + Location; the message kvlink queued reaches run_sync_job through the worker and is deleted;
        GET on the Location answers done with the synchronous answer's shape, and the groups have the names."""
        sync, poison = queues
        groups = estate.linked_groups(2)
        writes = len(estate.ado.writes(estate.org))

        path, accepted = queue_sync(worker, estate)

        assert accepted.json()["status"] == "queued"
        assert accepted.json()["progress"] == {"done": 0, "total": 2}
        assert len(estate.ado.writes(estate.org)) == writes  # accepted, not done
        queued = status(worker, path)
        assert queued.status == 200 and queued.json()["status"] == "queued"
        assert queued.headers["Retry-After"] == "10"

        message = receive(sync)
        assert json.loads(message.content) == {"job": accepted.json()["id"]}
        response = worker.deliver("run_sync_job", sync, message)

        assert worker.succeeded(response), failure(worker, response)
        assert not response.HasField("return_value")  # a queue trigger hands nothing back
        assert left_on(sync) == [] and left_on(poison) == []
        done = status(worker, path)
        assert done.status == 200 and "Retry-After" not in done.headers
        job = done.json()
        assert job["status"] == "done" and job["attempts"] == 1
        assert job["progress"] == {"done": 2, "total": 2}
        result = job["result"]
        assert set(result) == {"dryRun", "vaults", "groups"}  # POST /api/sync's 200 body
        assert result["vaults"] == [estate.vault] and result["dryRun"] is False
        assert sorted(g["link"]["groupId"] for g in result["groups"]) == sorted(groups)
        assert {g["outcome"] for g in result["groups"]} == {"applied"}
        assert all(estate.names(g) == ["api-key", "db-password"] for g in groups)

    def test_transient_failure_fails_the_invocation_and_the_redelivery_finishes(self, worker, estate, queues):
        """Key Vault answers 503: the invocation fails, so the host releases the message rather than delete
        it; the job says running. The redelivery (dequeue count 2) finishes the job."""
        sync, poison = queues
        groups = estate.linked_groups(1)
        path, _ = queue_sync(worker, estate)
        estate.kv.inject(503, path=r"/secrets$", times=1000)

        first = worker.deliver("run_sync_job", sync, receive(sync))

        assert "TransientError" in failure(worker, first)
        assert estate.env["AZURE_DEVOPS_PAT"] not in failure(worker, first)  # the host logs this text
        running = status(worker, path).json()
        assert running["status"] == "running" and running["attempts"] == 1
        assert estate.names(groups[0]) == []
        estate.kv.clear_faults()

        again = receive(sync)  # released with visibilityTimeout 0: visible at once
        assert again.dequeue_count == 2
        second = worker.deliver("run_sync_job", sync, again)

        assert worker.succeeded(second), failure(worker, second)
        assert left_on(sync) == [] and left_on(poison) == []
        job = status(worker, path).json()
        assert job["status"] == "done" and job["attempts"] == 2
        assert estate.names(groups[0]) == ["api-key", "db-password"]

    def test_the_fifth_delivery_ends_the_job_instead_of_poisoning_it(self, worker, estate, queues):
        """Key Vault keeps failing: four failed invocations, each released; the fifth -- the host's
        maxDequeueCount, after which the message would go to kvlink-sync-poison -- succeeds with the job
        failed, so nothing is poisoned and the status says why. The count kvlink sees is the DequeueCount
        the host sends (Json.NET's JSON for a long), not a number the test hands kvlink."""
        sync, poison = queues
        estate.linked_groups(1)
        path, _ = queue_sync(worker, estate)
        estate.kv.inject(503, path=r"/secrets$", times=1000)

        outcomes = []
        for _ in range(5):
            message = receive(sync)
            outcomes.append((message.dequeue_count, worker.succeeded(worker.deliver("run_sync_job", sync, message))))

        assert outcomes == [(1, False), (2, False), (3, False), (4, False), (5, True)]
        assert left_on(sync) == [] and left_on(poison) == []
        job = status(worker, path).json()
        assert job["status"] == "failed" and job["attempts"] == 5
        assert job["httpStatus"] == 502 and job["error"]["code"] == "UpstreamUnavailable"

    def test_an_unexpected_error_ends_in_the_poison_queue(self, worker, estate, queues, monkeypatch):
        """What kvlink does not handle (here: a bug) fails all five deliveries; then the host moves the
        message to kvlink-sync-poison, where docs/http-api.md sends the operator, and the job stays queued
        until its status reports JobLost."""
        import function_app

        sync, poison = queues
        estate.linked_groups(1)
        path, accepted = queue_sync(worker, estate)

        def bug(body: bytes, *, dequeue_count: int) -> None:
            raise RuntimeError("a bug in kvlink")

        monkeypatch.setattr(function_app.kvlink, "run_sync_job", bug)
        counts = []
        for _ in range(5):
            message = receive(sync)
            response = worker.deliver("run_sync_job", sync, message)
            assert "a bug in kvlink" in failure(worker, response)
            counts.append(message.dequeue_count)

        assert counts == [1, 2, 3, 4, 5]
        assert left_on(sync) == []
        assert [json.loads(body) for body in left_on(poison)] == [{"job": accepted.json()["id"]}]
        assert status(worker, path).json()["status"] == "queued"


class TestMessagesThatAreNotJobs:
    @pytest.mark.parametrize(
        "body",
        [
            b'{"job": "0123456789abcdef0123456789abcdef"}',
            b"not json",
            b'{"job": 42}',
            b'["0123456789abcdef0123456789abcdef"]',
            b'{"job": "a/b"}',
            b'{"job": ""}',
        ],
        ids=["unknown-job", "not-json", "job-not-a-string", "not-an-object", "not-a-table-key", "empty-id"],
    )
    def test_acknowledged_and_gone(self, worker, estate, queues, captured_logs, body):
        """A message naming no job kvlink has cannot succeed later: the invocation succeeds (the host deletes
        it), nothing is called, nothing is poisoned, and the drop is logged. An id Table storage cannot take
        as a key ("a/b") used to fail every delivery until the message was poisoned."""
        sync, poison = queues
        sync.send_message(base64.b64encode(body).decode())  # as a producer using the host's base64 encoding
        estate.kv.reset_calls()

        response = worker.deliver("run_sync_job", sync, receive(sync))

        assert worker.succeeded(response), failure(worker, response)
        assert left_on(sync) == [] and left_on(poison) == []
        assert estate.kv.calls == [] and estate.ado.writes(estate.org) == []
        assert "dropped" in captured_logs.text

    def test_a_body_that_is_not_utf8_never_reaches_the_worker(self, worker, estate, queues):
        """The host's strict UTF-8 decode refuses it before any invocation (WorkerHost.queue_message)."""
        sync, _ = queues
        sync.send_message(base64.b64encode(b"\xff\xfe").decode())
        with pytest.raises(UnicodeDecodeError):
            worker.queue_message("run_sync_job", receive(sync))


class TestStatusRoute:
    @pytest.mark.parametrize("job_id", ["0123456789abcdef0123456789abcdef", "not-a-job"])
    def test_unknown_job_is_404(self, worker, estate, app_settings, job_id):
        answer = status(worker, f"sync/{job_id}")
        assert answer.status == 404
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]["code"] == "JobNotFound"

    def test_only_get_reaches_the_status_route(self, worker):
        """The route takes GET only, and needs the id: the host answers anything else itself."""
        assert worker.route("GET", "sync/0123456789abcdef0123456789abcdef") == (
            "sync_status",
            {"jobId": "0123456789abcdef0123456789abcdef"},
        )
        with pytest.raises(LookupError):
            worker.route("DELETE", "sync/0123456789abcdef0123456789abcdef")


class TestWhatTheWorkerHandsOver:
    def test_body_and_dequeue_count_as_run_sync_job_reads_them(self, worker, estate, queues, monkeypatch):
        """The worker builds func.QueueMessage from the string and the trigger metadata the host sends
        (azure.functions queue.py, QueueMessageInConverter.decode): the body as bytes and DequeueCount --
        Json.NET's JSON on the wire -- as an int, which kvlink records as the job's attempts."""
        import function_app

        sync, _ = queues
        seen: list[tuple[bytes, int]] = []
        monkeypatch.setattr(
            function_app.kvlink, "run_sync_job", lambda body, *, dequeue_count: seen.append((body, dequeue_count))
        )
        sync.send_message(base64.b64encode('{"job": "f00d", "note": "caf\u00e9"}'.encode()).decode())
        first = receive(sync)
        sync.update_message(first.id, first.pop_receipt, visibility_timeout=0)  # as if an instance had died

        response = worker.deliver("run_sync_job", sync, receive(sync))

        assert worker.succeeded(response), failure(worker, response)
        assert seen == [('{"job": "f00d", "note": "caf\u00e9"}'.encode(), 2)]
