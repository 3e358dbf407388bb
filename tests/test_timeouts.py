"""Every client kvlink builds carries its own time bounds, never the SDK defaults.

azure-core's transports default to connection_timeout=300 and read_timeout=300 s per attempt
(``ConnectionConfiguration`` in azure/core/configuration.py, azure-core 1.41.0), and its RetryPolicy
to an operation ``timeout`` of 604,800 s; azure-data-tables' TablesRetryPolicy too
(azure/data/tables/_policies.py, 12.7.0). A client's own ``connection_timeout`` reaches only a
transport the client builds itself (azure/core/_pipeline_client.py: ``RequestsTransport(**kwargs)``
only when no transport is given), so each client is built here through kvlink's own code and its
*transport* is inspected -- where the bound takes effect. Behaviour under a silent peer is in
tests/test_storage_outage.py.
"""

from __future__ import annotations

import httpx
from azure.core.pipeline.policies import RetryPolicy

from kvlink_core.credentials import StaticTokenCredential
from kvlink_core.devops import DevOps
from kvlink_core.keyvault import KeyVault
from kvlink_core.notify import Notifier
from kvlink_core.registry import Registry, StorageTimeouts
from kvlink_core.settings import Settings

AZURE_CORE_DEFAULT = 300  # seconds, per attempt


def settings(**overrides) -> Settings:
    return Settings(devops_orgs=("acme",), allowed_vaults=None, emulator=True, **overrides)


def transport_of(client) -> object:
    transport = client._client._client._pipeline._transport
    while hasattr(transport, "_transport"):  # azure-data-tables wraps the service's transport
        transport = transport._transport
    return transport


def retry_policy_of(client) -> RetryPolicy:
    return next(p for p in client._client._client._pipeline._impl_policies if isinstance(p, RetryPolicy))


def test_table_storage_transport_is_bounded():
    registry = Registry(settings())
    service = registry._service_client()
    config = transport_of(service).connection_config
    defaults = StorageTimeouts()
    assert (config.timeout, config.read_timeout) == (defaults.connect, defaults.read)
    assert max(config.timeout, config.read_timeout) < AZURE_CORE_DEFAULT
    # The call bound (retries and waits included) answers an event inside Event Grid's 30 s and a
    # lease's life (60 s by default), whatever the SDK's 7-day operation timeout says.
    assert defaults.call < 30 < registry.lease_seconds
    registry.close()


def test_key_vault_sync_transport_is_bounded():
    kv = KeyVault(settings(), StaticTokenCredential("t"))
    client = kv._client("v1")
    config = transport_of(client).connection_config
    assert (config.timeout, config.read_timeout) == (5.0, 10.0)
    assert retry_policy_of(client).timeout == 20.0
    kv.close()


def test_key_vault_async_transport_is_bounded():
    kv = KeyVault(settings(), StaticTokenCredential("t"))

    async def build():
        return await kv._async_client("v1")

    loop = kv._event_loop()
    client = loop.run(build())
    config = client._client._client._pipeline._transport.connection_config
    assert (config.timeout, config.read_timeout) == (5.0, 10.0)
    kv.close()


def test_event_grid_publisher_is_bounded():
    notifier = Notifier(settings(notify_topic_endpoint="https://127.0.0.1:1/api/events"), StaticTokenCredential("t"))
    publisher = notifier._publisher()
    config = transport_of(publisher).connection_config
    assert (config.timeout, config.read_timeout) == (5, 10)
    assert retry_policy_of(publisher).timeout == 15
    notifier.close()


def test_devops_httpx_client_is_bounded():
    devops = DevOps(settings(), None)
    timeout = devops._http.timeout
    assert isinstance(timeout, httpx.Timeout)
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (10.0, 20.0, 20.0, 20.0)
    devops.close()


def test_sync_queue_client_is_bounded():
    """The queue a long sync is sent to answers inside the HTTP request's 230 s, or the request gets a 503."""
    from kvlink_core.workqueue import SyncQueue

    queue = SyncQueue(settings())  # emulator settings: Azurite's development connection string
    client = queue._queue()
    config = client._client._client._pipeline._transport.connection_config
    assert (config.timeout, config.read_timeout) == (5.0, 10.0)
    assert max(config.timeout, config.read_timeout) < AZURE_CORE_DEFAULT
    queue.close()
