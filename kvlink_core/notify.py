"""Optional notifications: CloudEvents to an Event Grid custom topic, with ``azure-eventgrid``.

``kvlink.group.updated`` for every group kvlink changes, by any path, and
``kvlink.audit.completed`` once per audit run (with ``pipelinesAtRisk``), and
``kvlink.group.broken`` once when a group first becomes broken (with the finding and the
pipelines it stops), so teams can route them to chat or
tickets. Publishing is best effort: a failure is logged and never fails a sync.
This is the only module that imports ``azure.eventgrid``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .tls import azure_transport_options

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.eventgrid._legacy import EventGridPublisherClient

    from .model import Link
    from .plan import Plan
    from .settings import Settings

logger = logging.getLogger(__name__)

SOURCE = "/kvlink"
GROUP_UPDATED = "kvlink.group.updated"
AUDIT_COMPLETED = "kvlink.audit.completed"
GROUP_BROKEN = "kvlink.group.broken"


class Notifier:
    """Publishes kvlink's CloudEvents when ``KVLINK_NOTIFY_TOPIC_ENDPOINT`` is set; otherwise does nothing."""

    def __init__(
        self,
        settings: Settings,
        credential: TokenCredential | None,
        *,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._endpoint = settings.notify_topic_endpoint
        self._settings = settings
        self._credential = credential
        # Publishing happens after a group write, while its lease is still held: bounded, never the SDK's
        # defaults (azure-core: connection_timeout=300 and read_timeout=300 s per attempt, in
        # ConnectionConfiguration, azure/core/configuration.py, 1.41.0; RetryPolicy timeout=604,800 s).
        # The client builds its own transport here, so these reach it (tests/test_timeouts.py checks).
        self._options: dict[str, Any] = {
            "retry_total": 2,
            "retry_backoff_factor": 0.5,
            "retry_backoff_max": 2,
            "timeout": 15,  # the request and its retries; the attempt running then may take one read more
            "connection_timeout": 5,
            "read_timeout": 10,
            **azure_transport_options(settings.ca_bundle),
            **(client_options or {}),
        }
        self._client: EventGridPublisherClient | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._endpoint)

    def group_updated(self, link: Link, plan: Plan, *, origin: str) -> None:
        self._publish(
            GROUP_UPDATED,
            subject=f"{link.organization}/{link.project}/{link.group_id}",
            data={
                **link.where(),
                "added": plan.added_names,
                "removed": list(plan.remove),
                "origin": origin,
            },
        )

    def audit_completed(self, summary: Mapping[str, Any]) -> None:
        self._publish(AUDIT_COMPLETED, subject="audit", data=dict(summary))

    def group_broken(self, broken: Mapping[str, Any]) -> None:
        """A group that just became broken: where it is, the finding, the pipelines it stops."""
        subject = f"{broken['organization']}/{broken['project']}/{broken['groupId']}"
        self._publish(GROUP_BROKEN, subject=subject, data=dict(broken))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _publish(self, event_type: str, *, subject: str, data: dict[str, Any]) -> None:
        if not self._endpoint:
            return
        from azure.core.exceptions import AzureError
        from azure.core.messaging import CloudEvent

        event = CloudEvent(source=SOURCE, type=event_type, subject=subject, data=data)
        try:
            self._publisher().send([event])
        except (AzureError, OSError, ValueError) as err:
            # Never fail a sync because a notification could not be delivered.
            logger.warning("Could not publish %s for %s: %s", event_type, subject, type(err).__name__)

    def _publisher(self) -> EventGridPublisherClient:
        with self._lock:
            if self._client is None:
                # The public EventGridPublisherClient of azure-eventgrid 4.22 builds its basic-topic client
                # without the caller's transport options (timeouts, retries, CA bundle), and options
                # passed to send() are logged as unknown CloudEvent attributes; the client it wraps
                # takes them. Pinned in requirements.txt; tests/test_notify.py checks the behaviour.
                from azure.eventgrid._legacy import EventGridPublisherClient

                from .credentials import get_credential

                assert self._endpoint is not None
                credential = self._credential or get_credential(self._settings)
                self._client = EventGridPublisherClient(self._endpoint, credential, **self._options)
            return self._client
