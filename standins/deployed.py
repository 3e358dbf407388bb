"""The deployed function app's two feeds from Key Vault, played locally into ``function_app``.

In Azure, a change to a vault reaches kvlink twice: Event Grid delivers ``SecretNewVersionCreated``
to ``on_secret_event`` within seconds, and the diagnostic setting streams the ``AuditEvent`` record
through Event Hubs to ``on_vault_log`` minutes later (the only feed that reports deletes). This
stand-in watches the Key Vault stand-in's audit log on a thread of its own and plays both, so a
``smoke`` run against the stand-ins travels the real trigger code: a ``SecretSet`` record becomes an
Event Grid delivery (the worker's own decoding, :func:`standins.events.as_trigger_input`), and every
record of a watched vault goes, in an Event Hubs envelope, to ``on_vault_log``. Either feed can be
switched off, as a missing event subscription or diagnostic setting would.

A delivery that raises is retried on the next round, as Event Grid and the Event Hubs retry policy do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from .events import as_trigger_input, secret_event
from .keyvault import KeyVaultStandIn
from .logs import envelopes

logger = logging.getLogger(__name__)


class DeployedApp:
    """Delivers the Key Vault stand-in's changes on ``vaults`` to ``function_app``'s triggers until stopped."""

    def __init__(
        self,
        kv: KeyVaultStandIn,
        vaults: Iterable[str],
        *,
        event_grid: bool = True,
        logs: bool = True,
        interval: float = 0.05,
    ) -> None:
        self.kv = kv
        self.vaults = {v.lower() for v in vaults}
        self.event_grid = event_grid
        self.logs = logs
        self.interval = interval
        self.events_delivered = 0
        self.log_batches_delivered = 0
        self.failures: list[str] = []
        self._pending_events: list[dict[str, Any]] = []
        self._pending_records: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deployed-app", daemon=True)

    def start(self) -> DeployedApp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> DeployedApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        import azure.functions as func

        import function_app

        while not self._stop.wait(self.interval):
            for record in self.kv.drain_audit_log():
                vault = record["resourceId"].rsplit("/", 1)[-1].lower()
                if vault not in self.vaults:
                    continue
                if self.event_grid and record["operationName"] == "SecretSet":
                    self._pending_events.append(_new_version_event(vault, record))
                if self.logs:
                    self._pending_records.append(record)
            events, self._pending_events = self._pending_events, []
            for event in events:
                try:
                    function_app.on_secret_event(as_trigger_input(event))
                    self.events_delivered += 1
                except Exception as err:  # Event Grid retries a failed delivery
                    self.failures.append(f"on_secret_event: {err}")
                    self._pending_events.append(event)
            records, self._pending_records = self._pending_records, []
            if records:
                try:
                    function_app.on_vault_log([func.EventHubEvent(body=body) for body in envelopes(records)])
                    self.log_batches_delivered += 1
                except Exception as err:  # the retry policy runs the batch again
                    self.failures.append(f"on_vault_log: {err}")
                    self._pending_records = records + self._pending_records


def _new_version_event(vault: str, record: dict[str, Any]) -> dict[str, Any]:
    """The Event Grid event Key Vault sends for a SecretSet: name and version from the record's object id."""
    object_id = record["properties"]["id"]  # https://{vault}.vault.azure.net/secrets/{name}/{version}
    name, version = object_id.rstrip("/").split("/")[-2:]
    return secret_event(vault, name, version)
