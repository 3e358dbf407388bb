"""The Azure Storage queue that carries long syncs to ``run_sync_job`` (the only module importing azure.storage.queue).

A message only names a job; the job itself (request, state, result) is a row in Table storage
(:mod:`kvlink_core.registry`), written before the message is sent. The Functions queue trigger
decodes messages as base64 ("Azure Queue storage trigger for Azure Functions", Encoding:
MicrosoftDocs/azure-docs articles/azure-functions/functions-bindings-storage-queue-trigger.md),
so messages are sent base64-encoded.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, TransientError
from .tls import azure_transport_options

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.queue import QueueClient

    from .settings import Settings

logger = logging.getLogger(__name__)

SYNC_QUEUE = "kvlink-sync"  # function_app's queue trigger and infra/main.bicep use this name
# Sending happens inside an HTTP request that must answer well within 230 s; a queue that does
# not answer within these bounds is reported as unavailable (503) rather than waited on.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0


class SyncQueue:
    """Sends job ids to ``kvlink-sync``; creates the queue on first use where it does not exist (Azurite)."""

    def __init__(self, settings: Settings, credential: TokenCredential | None = None, **client_options: Any) -> None:
        self._settings = settings
        self._credential = credential
        self._client_options = client_options
        self._client: QueueClient | None = None
        self._lock = threading.Lock()

    def send(self, job_id: str) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        client = self._queue()
        body = json.dumps({"job": job_id})
        try:
            try:
                client.send_message(body, connection_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
            except ResourceNotFoundError:  # QueueNotFound: infra creates it in Azure; Azurite starts empty
                client.create_queue(connection_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
                client.send_message(body, connection_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
        except AzureError as err:
            raise TransientError(
                f"the queue {SYNC_QUEUE} could not take the job ({type(err).__name__})", system="storage"
            ) from err

    def _queue(self) -> QueueClient:
        with self._lock:
            if self._client is None:
                from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

                options: dict[str, Any] = {
                    "message_encode_policy": TextBase64EncodePolicy(),
                    "message_decode_policy": TextBase64DecodePolicy(),
                    "retry_total": 2,
                    "connection_timeout": CONNECT_TIMEOUT,
                    "read_timeout": READ_TIMEOUT,
                    "use_env_settings": azure_transport_options(None)["use_env_settings"],
                    **self._client_options,
                }
                storage = self._settings.storage
                if storage.connection_string:
                    _check_queue_endpoint(storage.connection_string)
                    self._client = QueueClient.from_connection_string(storage.connection_string, SYNC_QUEUE, **options)
                else:
                    if not storage.queue_endpoint or self._credential is None:
                        raise ConfigError(
                            ["AzureWebJobsStorage__queueServiceUri (or __accountName) is needed for queued syncs"]
                        )
                    self._client = QueueClient(
                        storage.queue_endpoint, SYNC_QUEUE, credential=self._credential, **options
                    )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _check_queue_endpoint(connection_string: str) -> None:
    """A connection string that names its endpoints but no QueueEndpoint would send the job to
    ``<account>.queue.core.windows.net``: refuse it instead of guessing."""
    keys = {part.partition("=")[0].strip().lower() for part in connection_string.split(";") if part.strip()}
    if "usedevelopmentstorage" in keys or "queueendpoint" in keys:
        return
    if keys & {"tableendpoint", "blobendpoint"}:
        raise ConfigError(
            ["AzureWebJobsStorage names a TableEndpoint but no QueueEndpoint: queued syncs need the Queue service"]
        )
