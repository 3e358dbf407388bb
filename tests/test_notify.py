"""Notifications: CloudEvents to an Event Grid topic (the real azure-eventgrid client, an HTTPS stand-in)."""

from __future__ import annotations

import pytest

from kvlink_core.audit import run_audit
from standins.eventgrid import EventGridTopicStandIn
from standins.events import secret_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def topic(ca):
    server = EventGridTopicStandIn(ssl_context=ca.server_context(), token="kvlink-emulator-token").start()
    yield server
    server.stop()


@pytest.fixture
def notifying(estate, topic):
    topic.clear_events()
    topic.clear_faults()
    return estate.engine(KVLINK_NOTIFY_TOPIC_ENDPOINT=topic.endpoint)


def test_group_updated_by_an_event(estate, topic, notifying):
    """A write by the event path publishes kvlink.group.updated with what changed and which path."""
    group = estate.group("payments-kv", ["db-password"])
    estate.link(notifying, group)
    version = estate.kv.set_secret(estate.vault, "api-key")
    notifying.handle_event(secret_event(estate.vault, "api-key", version))

    (event,) = topic.events_of_type("kvlink.group.updated")
    assert event["source"] == "/kvlink"
    assert event["subject"] == f"{estate.org}/{estate.project}/{group}"
    assert event["data"]["added"] == ["api-key"] and event["data"]["origin"] == "event"


def test_no_event_without_a_change(estate, topic, notifying):
    """A rotation (no change to the group) publishes nothing."""
    estate.kv.set_secret(estate.vault, "db-password")
    group = estate.group("payments-kv", ["db-password"])
    estate.link(notifying, group)
    version = estate.kv.set_secret(estate.vault, "db-password")
    notifying.handle_event(secret_event(estate.vault, "db-password", version))
    assert topic.events == []


def test_audit_completed_once(estate, topic, notifying):
    """An audit publishes kvlink.audit.completed once, with its summary."""
    estate.kv.set_secret(estate.vault, "db-password")
    group = estate.group("payments-kv", ["db-password", "gone"])
    estate.link(notifying, group)
    run_audit(notifying, store=False)
    (done,) = topic.events_of_type("kvlink.audit.completed")
    assert done["data"]["names"] == {"added": 0, "removed": 1}
    (updated,) = topic.events_of_type("kvlink.group.updated")
    assert updated["data"]["removed"] == ["gone"] and updated["data"]["origin"] == "audit"


def test_publishing_failure_never_fails_the_sync(estate, topic, notifying, captured_logs):
    """If the topic keeps failing, the group is still written and the failure is logged."""
    topic.inject(503, times=20)
    group = estate.group("payments-kv", ["db-password"])
    estate.link(notifying, group)
    version = estate.kv.set_secret(estate.vault, "api-key")
    notifying.handle_event(secret_event(estate.vault, "api-key", version))
    assert estate.names(group) == ["api-key", "db-password"]
    assert "Could not publish kvlink.group.updated" in captured_logs.text


def test_publisher_honours_timeouts_and_logs_no_noise(estate, topic, captured_logs):
    """Publishing gives up at its read timeout instead of hanging a sync, and logs no option warnings."""
    import time

    from kvlink_core.model import Link
    from kvlink_core.notify import Notifier
    from kvlink_core.plan import Plan

    topic.clear_faults()
    topic.clear_events()
    settings = estate.settings(KVLINK_NOTIFY_TOPIC_ENDPOINT=topic.endpoint)
    notifier = Notifier(settings, None, client_options={"read_timeout": 0.5, "retry_total": 0})
    link = Link(estate.org, estate.project, 1, "g", estate.vault)
    notifier.group_updated(link, Plan(), origin="event")  # a normal publish first
    topic.inject(200, delay=3, passthrough=True)
    started = time.monotonic()
    notifier.group_updated(link, Plan(), origin="event")
    assert time.monotonic() - started < 2
    notifier.close()
    assert "Could not publish" in captured_logs.text
    assert "not a known attribute" not in captured_logs.text
    assert len(topic.events_of_type("kvlink.group.updated")) >= 1
