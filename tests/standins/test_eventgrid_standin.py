"""The Event Grid topic stand-in, driven by the real azure-eventgrid EventGridPublisherClient."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from azure.core.credentials import AzureKeyCredential, AzureSasCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient, generate_sas

from standins.eventgrid import (
    API_VERSION,
    DEFAULT_TOKEN,
    MAX_BATCH_BYTES,
    SCOPE,
    EventGridTopicStandIn,
    static_credential,
)
from standins.tls import ThrowawayCA

KEY = base64.b64encode(b"kvlink-eventgrid-test-key-32byte").decode()  # shaped like a real access key
SOURCE = "/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/rg-kvlink"


@pytest.fixture(scope="module")
def topic(ca: ThrowawayCA) -> Iterator[EventGridTopicStandIn]:
    with EventGridTopicStandIn(ssl_context=ca.server_context(), key=KEY) as server:
        yield server


@pytest.fixture
def stand_in(topic: EventGridTopicStandIn) -> Iterator[EventGridTopicStandIn]:
    topic.clear_events()
    topic.reset_calls()
    topic.clear_faults()
    yield topic
    topic.clear_faults()


@pytest.fixture
def raw(ca: ThrowawayCA) -> Iterator[httpx.Client]:
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca.bundle_path))) as client:
        yield client


def publish(client: Any, events: Any, ca: ThrowawayCA) -> None:
    # azure-eventgrid 4.22.1 drops constructor kwargs for basic topics (see the last test),
    # so transport and retry options go with each send().
    client.send(events, connection_verify=str(ca.bundle_path), retry_backoff_factor=0.01)


def cloud_events(count: int, kind: str = "Kvlink.Secret.Synced") -> list[CloudEvent[Any]]:
    return [
        CloudEvent(source=SOURCE, type=kind, subject=f"secret-{i}", data={"secret": f"secret-{i}", "n": i})
        for i in range(count)
    ]


def post(raw: httpx.Client, url: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {
        "Authorization": f"Bearer {DEFAULT_TOKEN}",
        "Content-Type": "application/cloudevents-batch+json; charset=utf-8",
        **headers,
    }
    return raw.post(url, content=content, headers=sent)


def good_event(**overrides: Any) -> dict[str, Any]:
    event = {"specversion": "1.0", "id": "e1", "source": SOURCE, "type": "Kvlink.Test", "data": {"a": 1}}
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


def test_publishes_cloudevents_with_a_bearer_token(stand_in: EventGridTopicStandIn, ca: ThrowawayCA) -> None:
    """Three CloudEvents from the real client are recorded with their data, in one batch."""
    credential = static_credential()
    with EventGridPublisherClient(stand_in.endpoint, credential) as client:
        publish(client, cloud_events(3), ca)

    events = stand_in.events
    assert [e["data"] for e in events] == [{"secret": f"secret-{i}", "n": i} for i in range(3)]
    assert {e["specversion"] for e in events} == {"1.0"}
    assert [e["subject"] for e in events] == ["secret-0", "secret-1", "secret-2"]
    assert all(e["source"] == SOURCE and e["id"] and e["time"] for e in events)
    assert stand_in.events_of_type("Kvlink.Secret.Synced") == events
    [batch] = stand_in.batches
    assert (batch.schema, batch.auth) == ("cloudevents", "bearer")
    assert batch.content_type == "application/cloudevents-batch+json; charset=utf-8"
    [call] = stand_in.calls
    assert (call.method, call.path, call.status) == ("POST", "/api/events", 200)
    assert call.query == {"api-version": API_VERSION}
    assert call.auth_scheme == "Bearer"
    assert set(credential.scopes) == {(SCOPE,)}


def test_bytes_data_travels_as_data_base64(stand_in: EventGridTopicStandIn, ca: ThrowawayCA) -> None:
    """A CloudEvent with bytes data arrives as data_base64 and is accepted."""
    with EventGridPublisherClient(stand_in.endpoint, static_credential()) as client:
        publish(client, CloudEvent(source=SOURCE, type="Kvlink.Blob", data=b"\x00\x01kv"), ca)
    [event] = stand_in.events_of_type("Kvlink.Blob")
    assert base64.b64decode(event["data_base64"]) == b"\x00\x01kv"
    assert "data" not in event


def test_wrong_token_is_refused(stand_in: EventGridTopicStandIn, ca: ThrowawayCA) -> None:
    """A token that is not the stand-in's gives 401, which the client raises as ClientAuthenticationError."""
    with (
        EventGridPublisherClient(stand_in.endpoint, static_credential("not-the-token")) as client,
        pytest.raises(ClientAuthenticationError) as caught,
    ):
        publish(client, cloud_events(1), ca)
    assert caught.value.status_code == 401
    assert caught.value.error is not None and caught.value.error.code == "Unauthorized"
    assert stand_in.events == []
    [call] = stand_in.calls  # the refused batch stays in the call log
    assert (call.status, len(call.body)) == (401, 1)


def test_key_credential_with_the_configured_key(stand_in: EventGridTopicStandIn, ca: ThrowawayCA) -> None:
    """AzureKeyCredential sends aeg-sas-key; the configured key is accepted, another one is not."""
    with EventGridPublisherClient(stand_in.endpoint, AzureKeyCredential(KEY)) as client:
        publish(client, cloud_events(2), ca)
    assert [b.auth for b in stand_in.batches] == ["key"]
    assert len(stand_in.events) == 2

    with (
        EventGridPublisherClient(stand_in.endpoint, AzureKeyCredential("d3JvbmcK")) as client,
        pytest.raises(ClientAuthenticationError),
    ):
        publish(client, cloud_events(1), ca)
    assert len(stand_in.events) == 2


def test_sas_token_from_generate_sas(stand_in: EventGridTopicStandIn, ca: ThrowawayCA) -> None:
    """A token from azure.eventgrid.generate_sas is verified against the key; an expired one is not."""
    expires = datetime.now(UTC) + timedelta(minutes=5)
    sas = generate_sas(stand_in.endpoint, KEY, expires)
    with EventGridPublisherClient(stand_in.endpoint, AzureSasCredential(sas)) as client:
        publish(client, cloud_events(1), ca)
    assert [b.auth for b in stand_in.batches] == ["sas"]

    expired = generate_sas(stand_in.endpoint, KEY, datetime.now(UTC) - timedelta(seconds=1))
    with (
        EventGridPublisherClient(stand_in.endpoint, AzureSasCredential(expired)) as client,
        pytest.raises(ClientAuthenticationError),
    ):
        publish(client, cloud_events(1), ca)
    assert len(stand_in.events) == 1


@pytest.mark.parametrize("status", [503, 429])
def test_injected_fault_is_retried(stand_in: EventGridTopicStandIn, ca: ThrowawayCA, status: int) -> None:
    """An injected 503 or 429 is retried by azure-core and the second attempt is recorded once."""
    stand_in.inject(status, method="POST", path="^/api/events$", retry_after=0)
    with EventGridPublisherClient(stand_in.endpoint, static_credential()) as client:
        publish(client, cloud_events(3), ca)
    assert [c.status for c in stand_in.calls] == [status, 200]
    assert len(stand_in.events) == 3


def test_batch_over_1_mb_is_413(stand_in: EventGridTopicStandIn, ca: ThrowawayCA) -> None:
    """A batch over 1 MB is refused with 413 and not retried."""
    big = [CloudEvent(source=SOURCE, type="Kvlink.Big", data="x" * (MAX_BATCH_BYTES // 2)) for _ in range(2)]
    with (
        EventGridPublisherClient(stand_in.endpoint, static_credential()) as client,
        pytest.raises(HttpResponseError) as caught,
    ):
        publish(client, big, ca)
    assert caught.value.status_code == 413
    assert caught.value.error is not None and caught.value.error.code == "RequestEntityTooLarge"
    assert stand_in.count("POST") == 1
    assert stand_in.events == []


def test_event_missing_type_is_400(stand_in: EventGridTopicStandIn, raw: httpx.Client) -> None:
    """A raw batch whose second event lacks `type` is refused whole, with an Event Grid error body."""
    response = post(raw, f"{stand_in.endpoint}?api-version={API_VERSION}", [good_event(), good_event(type=None)])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "BadRequest"
    assert "'type'" in error["message"] and "Event 1" in error["message"]
    assert stand_in.events == []


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"[{not json", "application/cloudevents-batch+json", "not valid JSON"),
        (good_event(), "application/cloudevents-batch+json", "JSON array"),
        ([], "application/cloudevents-batch+json", "at least one event"),
        ([good_event(specversion="0.3")], "application/cloudevents-batch+json", "specversion"),
        ([good_event(specversion=None)], "application/cloudevents-batch+json", "'specversion'"),
        ([good_event(id="")], "application/cloudevents-batch+json", "'id'"),
        ([good_event(time="yesterday")], "application/cloudevents-batch+json", "RFC 3339"),
        ([good_event(data_base64="AAE=")], "application/cloudevents-batch+json", "mutually exclusive"),
        ([good_event(Bad_Name="x")], "application/cloudevents-batch+json", "Bad_Name"),
        ([good_event()], "text/plain", "Content-Type"),
        (
            [{"id": "1", "subject": "s", "eventType": "t", "eventTime": "2024-01-01T00:00:00Z"}],
            "application/json",
            "'dataVersion'",
        ),
    ],
)
def test_malformed_batches_are_400(
    stand_in: EventGridTopicStandIn, raw: httpx.Client, body: Any, content_type: str, fragment: str
) -> None:
    """Malformed bodies and events missing required attributes get 400 naming the problem."""
    response = post(raw, f"{stand_in.endpoint}?api-version={API_VERSION}", body, **{"Content-Type": content_type})
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
    assert stand_in.events == []


def test_single_structured_cloudevent(stand_in: EventGridTopicStandIn, raw: httpx.Client) -> None:
    """application/cloudevents+json carries one event object, not an array."""
    response = post(
        raw,
        f"{stand_in.endpoint}?api-version={API_VERSION}",
        good_event(id="solo"),
        **{"Content-Type": "application/cloudevents+json; charset=utf-8"},
    )
    assert (response.status_code, response.content) == (200, b"")
    assert [e["id"] for e in stand_in.events] == ["solo"]


def test_eventgrid_schema_events(stand_in: EventGridTopicStandIn, ca: ThrowawayCA) -> None:
    """EventGridEvents go as application/json and are recorded under the Event Grid schema."""
    event = EventGridEvent(subject="secret-a", event_type="Kvlink.Secret.Synced", data={"a": 1}, data_version="1")
    with EventGridPublisherClient(stand_in.endpoint, static_credential()) as client:
        publish(client, [event], ca)
    [batch] = stand_in.batches
    assert batch.schema == "eventgrid"
    assert batch.content_type.startswith("application/json")
    [recorded] = stand_in.events_of_type("Kvlink.Secret.Synced")
    assert (recorded["subject"], recorded["data"], recorded["dataVersion"]) == ("secret-a", {"a": 1}, "1")


def test_routes_api_version_and_auth(stand_in: EventGridTopicStandIn, raw: httpx.Client) -> None:
    """No api-version or an unknown one is 400, other paths and methods 404, no credential 401."""
    url = stand_in.endpoint
    assert post(raw, url, [good_event()]).status_code == 400
    assert post(raw, f"{url}?api-version=2099-01-01", [good_event()]).status_code == 400
    assert post(raw, f"{stand_in.base_url}/api/other?api-version={API_VERSION}", [good_event()]).status_code == 404
    assert raw.get(f"{url}?api-version={API_VERSION}").status_code == 404
    anonymous = raw.post(
        f"{url}?api-version={API_VERSION}",
        content=json.dumps([good_event()]).encode(),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "Unauthorized"
    assert stand_in.events == []


def test_clear_events_and_events_of_type(stand_in: EventGridTopicStandIn, raw: httpx.Client) -> None:
    """events_of_type filters by type; clear_events forgets events and batches but not calls."""
    body = [good_event(id="a", type="A"), good_event(id="b", type="B"), good_event(id="c", type="A")]
    assert post(raw, f"{stand_in.endpoint}?api-version={API_VERSION}", body).status_code == 200
    assert [e["id"] for e in stand_in.events_of_type("A")] == ["a", "c"]
    assert stand_in.events_of_type("missing") == []
    stand_in.clear_events()
    assert (stand_in.events, stand_in.batches, stand_in.count()) == ([], [], 1)


def test_sdk_drops_constructor_transport_options(stand_in: EventGridTopicStandIn, ca: ThrowawayCA) -> None:
    """Pins an azure-eventgrid 4.22.1 quirk: connection_verify given to the constructor never reaches TLS."""
    client = EventGridPublisherClient(
        stand_in.endpoint, static_credential(), connection_verify=str(ca.bundle_path), retry_total=0
    )
    with client, pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        client.send(cloud_events(1))
    assert stand_in.calls == []
