"""Shared fixtures: the HTTPS stand-ins and Azurite (once per run), and a fresh estate per test."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stamina

from kvlink_core import app as kvlink_app
from kvlink_core.credentials import EMULATOR_TOKEN, get_credential
from kvlink_core.devops import DevOps
from kvlink_core.keyvault import KeyVault
from kvlink_core.model import Clock, Link, Policy
from kvlink_core.registry import Registry, StorageTimeouts
from kvlink_core.settings import HOSTING_VARIABLES, Settings
from kvlink_core.sync import Engine
from standins.azurite import Azurite
from standins.devops import DevOpsStandIn
from standins.keyvault import KeyVaultStandIn
from standins.tls import ThrowawayCA

PAT = "kvlink-test-pat-0123456789"
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def vault_server(ca: ThrowawayCA) -> Iterator[KeyVaultStandIn]:
    server = KeyVaultStandIn(ssl_context=ca.server_context(), token=EMULATOR_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vault_server_443(ca: ThrowawayCA) -> Iterator[KeyVaultStandIn]:
    """The Key Vault stand-in on port 443, addressed like Azure: port-less vault URLs, ``:443`` nextLinks.

    Test runs (and other checkouts) share this machine, so it takes the first loopback address in
    127.0.0.2-250 whose port 443 is free; the throwaway CA certifies that address.
    """
    server = None
    for last in range(2, 251):
        host = f"127.0.0.{last}"
        candidate = KeyVaultStandIn(ssl_context=ca.server_context(host), token=EMULATOR_TOKEN, host=host, port=443)
        try:
            server = candidate.start()
            break
        except PermissionError as err:
            pytest.skip(f"binding port 443 needs root or CAP_NET_BIND_SERVICE (CI runs as root): {err}")
        except OSError as err:
            if err.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise
    if server is None:
        pytest.fail("port 443 is taken on every loopback address 127.0.0.2-250")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def devops_server(ca: ThrowawayCA) -> Iterator[DevOpsStandIn]:
    server = DevOpsStandIn(ssl_context=ca.server_context(), pat=PAT, bearer_token=EMULATOR_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite(queue=True) as service:
        yield service


@pytest.fixture(scope="session")
def registered() -> dict[str, Any]:
    """The app's functions by name. get_functions() validates names and cannot be called twice."""
    import function_app

    return {
        f.get_function_name(): {
            **json.loads(f.get_function_json()),
            "retry": f.get_settings_dict("retry_policy"),
        }
        for f in function_app.app.get_functions()
    }


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Cached settings/engine never leak between tests; retries do not sleep for real.

    The hosting variables are cleared because they refuse KVLINK_EMULATOR=1, and the machine
    running the tests may set one itself (container runtimes often set CONTAINER_NAME).
    """
    # Its own MonkeyPatch: the test's is undone before this teardown, with get_engine restored.
    with pytest.MonkeyPatch.context() as patch:
        for name in HOSTING_VARIABLES:
            patch.delenv(name, raising=False)
        kvlink_app.reset()
        # Importing function_app quiets the SDKs' loggers (as in the host); tests see every record
        # unless they ask for the host's levels (tests/test_function_app.py does).
        for name in kvlink_app.SDK_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        yield
        kvlink_app.reset()


def mark_group(ado: DevOpsStandIn, org: str, group_id: int, policy: Policy) -> None:
    """Put a link's policy marker in a group's descriptions, as linking through kvlink leaves them:
    seeds a steady-state estate, whose audit has no marker to write."""
    from kvlink_core.marker import with_marker

    def mark(group: dict[str, Any]) -> None:
        for holder in (group, *(group.get("variableGroupProjectReferences") or [])):
            holder["description"] = with_marker(holder.get("description"), policy)

    ado.edit_group(org, group_id, mark)


class TableCalls:
    """Counts Table storage requests by HTTP method (raw_request_hook)."""

    def __init__(self) -> None:
        self.by_method: Counter[str] = Counter()

    def __call__(self, request: Any) -> None:
        self.by_method[request.http_request.method] += 1

    @property
    def total(self) -> int:
        return sum(self.by_method.values())

    def reset(self) -> None:
        self.by_method.clear()


class FakeTime:
    """An injected clock for the lease protocol: time moves only when a test, or a fake sleep, moves it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._start = datetime.now(UTC)  # ExpiresAt stays near the real time of day
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        """The default fake sleep: the sleeper's time passes at once."""
        with self._lock:
            self.sleeps.append(seconds)
        self.advance(seconds)

    def clock(self, sleep: Callable[[float], None] | None = None) -> Clock:
        """A clock on this time; ``sleep`` lets a test order an instance's waits (e.g. on an event)."""
        return Clock(
            monotonic=lambda: self.now,
            wall=lambda: self._start + timedelta(seconds=self.now),
            sleep=sleep or self.sleep,
            jitter=lambda: 0.5,
        )


class Estate:
    """One test's slice of the stand-ins: its own organization, vault and project."""

    def __init__(
        self, vault_server: KeyVaultStandIn, devops_server: DevOpsStandIn, azurite: Azurite, ca: ThrowawayCA
    ) -> None:
        n = next(_counter)
        self.kv = vault_server
        self.ado = devops_server
        self.org = f"org{n}"
        self.vault = f"kv-test{n}"
        self.project = "Payments"
        self.project_id = devops_server.add_project(self.org, self.project)
        self.endpoint_id = devops_server.add_service_endpoint(self.org, self.project, "kv-connection")
        self.kv.create_vault(self.vault)
        self.table_calls = TableCalls()
        self.env = {
            "KVLINK_DEVOPS_ORGS": self.org,
            "KVLINK_ALLOWED_VAULTS": self.vault,
            "AZURE_DEVOPS_PAT": PAT,
            "AzureWebJobsStorage": azurite.connection_string,
            "KVLINK_DEVOPS_URL": devops_server.base_url,
            "KVLINK_VAULT_URL": vault_server.vault_url_template,
            "KVLINK_CA_BUNDLE": str(ca.bundle_path),
            "KVLINK_EMULATOR": "1",
        }
        self._engines: list[Engine] = []

    def settings(self, **overrides: str) -> Settings:
        return Settings.from_env({**self.env, **overrides})

    def engine(
        self,
        *,
        lease_seconds: float = 10.0,
        max_wait: float | None = None,
        devops_timeout: float = 20.0,
        holder_budget: float = 15.0,
        clock: Clock | None = None,
        storage_timeouts: StorageTimeouts | None = None,
        **overrides: str,
    ) -> Engine:
        """An engine wired to the stand-ins, with retries tuned to test speed; ``clock`` drives its leases."""
        settings = self.settings(**overrides)
        credential = get_credential(settings)
        engine = Engine(
            settings,
            keyvault=KeyVault(settings, credential, retry_total=3, retry_backoff_factor=0.01),
            devops=DevOps(
                settings, None, attempts=4, retry_timeout=5.0, wait_initial=0.01, wait_max=0.05, timeout=devops_timeout
            ),
            registry=Registry(
                settings,
                lease_seconds=lease_seconds,
                **({"clock": clock} if clock is not None else {}),
                **({"timeouts": storage_timeouts} if storage_timeouts is not None else {}),
                client_options={"raw_request_hook": self.table_calls, "retry_total": 1, "retry_backoff_factor": 0.05},
            ),
            max_wait=max_wait,
            holder_budget=holder_budget,
        )
        self._engines.append(engine)
        return engine

    def group(self, name: str, names: list[str] | None = None, *, vault: str | None = None) -> int:
        return self.ado.add_group(
            self.org,
            self.project,
            name,
            vault=vault or self.vault,
            service_endpoint_id=self.endpoint_id,
            variables=list(names or []),
        )

    def link(
        self, engine: Engine, group_id: int, policy: Policy | None = None, *, marked: bool = True, **kwargs: Any
    ) -> Link:
        """Register a link in the registry only; the group carries its policy marker as a link made
        through kvlink does (``marked=False``: a link made before kvlink kept markers)."""
        fields: dict[str, Any] = {
            "organization": self.org,
            "project": self.project,
            "group_id": group_id,
            "group_name": self.ado.group(self.org, group_id)["name"],
            "vault": self.vault,
            "policy": policy or Policy(),
            **kwargs,
        }
        link = Link(**fields)
        engine.registry.save_link(link)
        if marked and not link.prune_only:
            mark_group(self.ado, self.org, group_id, link.policy)
        return link

    def linked_groups(self, count: int) -> list[int]:
        """``count`` groups linked to this estate's vault, each missing the vault's two secrets."""
        self.kv.set_secret(self.vault, "db-password")
        self.kv.set_secret(self.vault, "api-key")
        engine = self.engine()
        groups = [self.group(f"group-{i}") for i in range(count)]
        for group in groups:
            self.link(engine, group)
        return groups

    def link_body(self, **overrides: Any) -> dict[str, Any]:
        """The usual ``POST /api/links`` body: group "payments-kv" on this estate's vault (None drops a field)."""
        body = {
            "organization": self.org,
            "project": self.project,
            "group": "payments-kv",
            "vault": self.vault,
            "serviceConnection": "kv-connection",
            **overrides,
        }
        return {k: v for k, v in body.items() if v is not None}

    def link_argv(self, *extra: str) -> list[str]:
        """The same link as CLI arguments."""
        return [
            "link",
            "--organization",
            self.org,
            "--project",
            self.project,
            "--group",
            "payments-kv",
            "--vault",
            self.vault,
            "--service-connection",
            "kv-connection",
            *extra,
        ]

    def names(self, group_id: int) -> list[str]:
        return sorted(self.ado.variable_names(self.org, group_id), key=str.lower)

    def empty_tables(self) -> None:
        """As after a redeploy into a new storage account: kvlink's tables are gone and come back empty.

        The engines made so far are closed (their clients point at the old tables): make new ones."""
        from azure.data.tables import TableServiceClient

        from kvlink_core import registry

        self.close()
        names = ("LINKS", "LEASES", "PENDING", "WORK", "AUDIT", "BROKEN")
        with TableServiceClient.from_connection_string(self.env["AzureWebJobsStorage"]) as service:
            for name in names:
                service.delete_table(getattr(registry, f"{name}_TABLE"))

    def close(self) -> None:
        for engine in self._engines:
            engine.close()
        self._engines.clear()


@pytest.fixture
def estate(
    vault_server: KeyVaultStandIn, devops_server: DevOpsStandIn, azurite: Azurite, ca: ThrowawayCA
) -> Iterator[Estate]:
    vault_server.clear_faults()
    devops_server.clear_faults()
    vault_server.latency = devops_server.latency = 0.0
    vault_server.reset_calls()
    devops_server.reset_calls()
    made = Estate(vault_server, devops_server, azurite, ca)
    yield made
    made.close()
    vault_server.clear_faults()
    devops_server.clear_faults()
    vault_server.latency = devops_server.latency = 0.0
    vault_server.assert_no_value_reads()


@pytest.fixture
def app_engine(estate: Estate, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The function app and the CLI wired to the estate: its settings in the environment, its engine."""
    for key, value in estate.env.items():
        monkeypatch.setenv(key, value)
    engine = estate.engine()
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
    return engine


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def fast_retries() -> Iterator[None]:
    """stamina's test mode: DevOps retries happen without waiting."""
    stamina.set_testing(True, attempts=4)
    yield
    stamina.set_testing(False)


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
