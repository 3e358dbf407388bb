"""Table storage that refuses, or falls silent: every invocation ends inside a lease and is redelivered.

A relay (standins/tcpproxy.py) sits between kvlink and Azurite. *Refuses* resets every connection
(a front end restarting); *silent* accepts connections and answers nothing (a network partition).
Storage bounds here are short (StorageTimeouts) so the suite stays quick; what is checked is not the
numbers but the behaviour: the invocation ends while storage is still silent, well inside the lease
life of the engine under test, raises (so Event Grid redelivers), and a redelivery once storage
answers again lands every name.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait

import azure.functions as func
import pytest

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.errors import TransientError
from kvlink_core.model import Policy
from kvlink_core.registry import StorageTimeouts
from standins.events import as_trigger_input, secret_event
from standins.tcpproxy import FlakyProxy

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)  # the measured times, for bench/results and the docs

SHORT = StorageTimeouts(connect=0.5, read=1.0, call=1.5, scan=3.0)


@pytest.fixture
def relay(azurite):
    proxy = FlakyProxy(azurite.port)
    yield proxy
    proxy.close()  # also frees any connection still stranded in a silence


def engine_behind(estate, relay, monkeypatch, *, lease_seconds: float):
    """The function app's engine, with Table storage reached through the relay."""
    storage = estate.env["AzureWebJobsStorage"].replace(f":{relay.target_port}/", f":{relay.port}/")
    for key, value in {**estate.env, "AzureWebJobsStorage": storage}.items():
        monkeypatch.setenv(key, value)
    engine = estate.engine(lease_seconds=lease_seconds, storage_timeouts=SHORT, AzureWebJobsStorage=storage)
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
    return engine


def deliver(event) -> None:
    function_app.on_secret_event(as_trigger_input(event))


class Invocation:
    """One function invocation on its own thread, so the test can see whether (and how) it ended."""

    def __init__(self, call) -> None:
        self.error: BaseException | None = None
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call) -> None:
        started = time.monotonic()
        try:
            call()
        except BaseException as err:  # the outcome under test
            self.error = err
        finally:
            self.seconds = time.monotonic() - started

    def ended_within(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return not self._thread.is_alive()


def test_an_event_gives_up_on_a_silent_account_and_is_redelivered(estate, relay, monkeypatch):
    """Storage accepts and says nothing: the event raises inside one lease's life, writes nothing, and
    lands on redelivery once storage answers. (Before: the invocation was still running after 120 s.)"""
    engine = engine_behind(estate, relay, monkeypatch, lease_seconds=10.0)
    estate.kv.set_secret(estate.vault, "seed")
    group = estate.group("payments-kv", ["seed"])
    estate.link(engine, group)  # through the relay while it still forwards: connections are pooled
    event = secret_event(estate.vault, "new-key", estate.kv.set_secret(estate.vault, "new-key"))

    relay.silent = True
    invocation = Invocation(lambda: deliver(event))
    assert invocation.ended_within(engine.registry.lease_seconds), "the invocation outlived a lease"
    assert relay.silent  # it ended while storage still said nothing
    assert isinstance(invocation.error, TransientError), invocation.error  # not acknowledged: redelivered
    assert estate.names(group) == ["seed"]
    logger.warning("silent storage: the event gave up after %.2fs", invocation.seconds)

    relay.silent = False
    deliver(event)  # Event Grid's redelivery
    assert estate.names(group) == ["new-key", "seed"]


def test_silence_inside_the_lease_ends_the_writer_before_the_lease(estate, relay, monkeypatch):
    """Storage falls silent after the group was read under its lease: the renewal before the PUT gives
    up, no PUT is made, the invocation raises inside the lease; the redelivery writes the name."""
    engine = engine_behind(estate, relay, monkeypatch, lease_seconds=4.0)
    estate.kv.set_secret(estate.vault, "seed")
    group = estate.group("payments-kv", ["seed"])
    estate.link(engine, group)
    event = secret_event(estate.vault, "new-key", estate.kv.set_secret(estate.vault, "new-key"))
    read = engine.devops.get_group

    def read_then_partition(*args, **kwargs):
        found = read(*args, **kwargs)
        relay.silent = True
        return found

    monkeypatch.setattr(engine.devops, "get_group", read_then_partition)
    invocation = Invocation(lambda: deliver(event))
    assert invocation.ended_within(engine.registry.lease_seconds), "the invocation outlived its lease"
    assert relay.silent
    assert isinstance(invocation.error, TransientError), invocation.error
    assert estate.ado.writes(estate.org, group) == []  # no PUT without a renewed lease
    logger.warning("silent inside the lease: the writer gave up after %.2fs", invocation.seconds)

    monkeypatch.setattr(engine.devops, "get_group", read)
    relay.silent = False
    deliver(event)  # redelivered; the dead holder's lease expires and is taken over
    assert estate.names(group) == ["new-key", "seed"]


def test_a_partition_in_the_middle_of_a_burst(estate, relay, monkeypatch):
    """20 events over 3 groups; storage falls silent once 8 have started. Every invocation ends while it
    is silent, inside one lease; failed ones are redelivered once it answers; every name lands once."""
    lease_seconds = 10.0
    engine = engine_behind(estate, relay, monkeypatch, lease_seconds=lease_seconds)
    estate.kv.set_secret(estate.vault, "a-seed")
    policies = {"all": Policy(), "b": Policy(include=("b-*",)), "c": Policy(include=("c-*",))}
    groups = {}
    for label, policy in policies.items():
        groups[label] = estate.group(f"g-{label}", ["a-seed"] if label == "all" else [])
        estate.link(engine, groups[label], policy)
    events = []
    for i in range(20):
        name = f"{'abc'[i % 3]}-new-{i:02d}"
        events.append((name, secret_event(estate.vault, name, estate.kv.set_secret(estate.vault, name))))

    lock = threading.Lock()
    started = 0
    silence_began: list[float] = []

    def first_attempt(item) -> tuple[float, float, TransientError | None]:
        nonlocal started
        with lock:
            started += 1
            if started == 8:
                relay.silent = True
                silence_began.append(time.monotonic())
        began, error = time.monotonic(), None
        try:
            deliver(item[1])
        except TransientError as err:
            error = err
        return began, time.monotonic(), error

    pool = ThreadPoolExecutor(max_workers=6)
    futures = [pool.submit(first_attempt, item) for item in events]
    # Nobody resumes storage until every first attempt has ended: an invocation stuck on the silence
    # would hold this wait, and fail the test (before the fix: 300 s a read).
    _, running = wait(futures, timeout=4 * lease_seconds)
    ended = not running
    still_silent = relay.silent
    relay.silent = False
    pool.shutdown(wait=True)  # nothing is left running
    assert ended, "an invocation was still running while storage stayed silent"
    assert still_silent
    first = [f.result() for f in futures]
    partition = silence_began[0]
    overruns = [end - max(began, partition) for began, end, _ in first if end > partition]
    failed = [item for item, (*_, error) in zip(events, first, strict=True) if error is not None]
    assert failed, "the partition should have failed some invocations (it began after 8 of 20)"
    assert max(overruns) < lease_seconds, f"an invocation ran {max(overruns):.1f}s into the silence"

    def redeliver(item) -> int:
        """Event Grid redelivers a failed event later (10 s, 30 s, 1 min...); here: once storage answers."""
        for attempt in range(1, 6):
            try:
                deliver(item[1])
                return attempt
            except TransientError:
                if attempt == 5:
                    raise
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(max_workers=6) as again:
        redeliveries = list(again.map(redeliver, failed))
    logger.warning(
        "burst: %d of 20 first attempts failed; the longest ran %.2fs into the silence; redeliveries took %s",
        len(failed),
        max(overruns),
        sorted(redeliveries),
    )

    for label, gid in groups.items():
        wanted = sorted(
            [name for name, _ in events if label == "all" or name.startswith(f"{label}-")]
            + (["a-seed"] if label == "all" else []),
        )
        assert estate.names(gid) == wanted, label


@pytest.mark.parametrize("route", ["links", "audit/latest"])
@pytest.mark.parametrize("how", ["refuses", "silent"])
def test_http_api_answers_503_when_storage_is_down(estate, relay, monkeypatch, route, how):
    """GET /api/links and /api/audit/latest answer 503 with a clear JSON body, refused or silent alike."""
    engine_behind(estate, relay, monkeypatch, lease_seconds=10.0)
    if how == "refuses":
        relay.broken = True
    else:
        relay.silent = True
    handler = function_app.links if route == "links" else function_app.audit_latest
    request = func.HttpRequest(method="GET", url=f"http://localhost/api/{route}", body=b"", route_params={})
    answered: list = []
    invocation = Invocation(lambda: answered.append(handler(request)))
    assert invocation.ended_within(10.0) and invocation.error is None
    (response,) = answered
    assert response.status_code == 503 and response.mimetype == "application/json"
    error = json.loads(response.get_body())["error"]
    assert error["code"] == "Busy" and "Table storage unavailable" in error["message"]
    assert response.headers["Retry-After"] == "5"
    logger.warning("%s: /api/%s answered 503 in %.2fs", how, route, invocation.seconds)


@pytest.fixture
def vault_relay(vault_server):
    proxy = FlakyProxy(vault_server.port)
    yield proxy
    proxy.close()


def silent_vault(estate, engine, vault_relay):
    """The engine's Key Vault client, behind the relay, with short bounds (connect, read, whole request)."""
    from kvlink_core.credentials import get_credential
    from kvlink_core.keyvault import KeyVault

    template = estate.env["KVLINK_VAULT_URL"].replace(f":{vault_relay.target_port}/", f":{vault_relay.port}/")
    settings = estate.settings(KVLINK_VAULT_URL=template)
    engine.keyvault.close()
    engine.keyvault = KeyVault(
        settings,
        get_credential(settings),
        retry_total=3,
        retry_backoff_factor=0.01,
        connect_timeout=0.5,
        timeout=1.0,
        total_timeout=1.5,
    )
    return engine.keyvault


def test_a_silent_key_vault_fails_the_event_in_time_and_it_is_redelivered(estate, vault_relay, app_engine):
    """Key Vault accepts and says nothing (the event's version read, the sync pipeline): the event raises
    inside a lease's life, writes nothing, and lands on redelivery. Before: 300 s per attempt."""
    estate.kv.set_secret(estate.vault, "seed")
    group = estate.group("payments-kv", ["seed"])
    estate.link(app_engine, group)
    vault = silent_vault(estate, app_engine, vault_relay)
    vault.secret_state(estate.vault, "seed")  # a pooled connection, TLS done: the silence meets a read
    event = secret_event(estate.vault, "new-key", estate.kv.set_secret(estate.vault, "new-key"))

    vault_relay.silent = True
    invocation = Invocation(lambda: deliver(event))
    assert invocation.ended_within(app_engine.registry.lease_seconds), "the invocation outlived a lease"
    assert vault_relay.silent and vault_relay.accepted_while_silent
    assert isinstance(invocation.error, TransientError) and invocation.error.system == "keyvault"
    assert estate.names(group) == ["seed"]
    logger.warning("silent Key Vault: the event gave up after %.2fs", invocation.seconds)

    vault_relay.silent = False
    deliver(event)
    assert estate.names(group) == ["new-key", "seed"]


def test_a_silent_key_vault_fails_a_listing_in_time(estate, vault_relay, app_engine):
    """The same through the async pipeline, which whole-vault listings (sync, link, audit) take."""
    estate.kv.set_secret(estate.vault, "seed")
    vault = silent_vault(estate, app_engine, vault_relay)
    vault.list_secrets(estate.vault)  # a pooled connection, TLS done: the silence meets a read
    vault_relay.silent = True
    invocation = Invocation(lambda: vault.list_secrets(estate.vault))
    assert invocation.ended_within(app_engine.registry.lease_seconds), "the listing outlived a lease"
    assert isinstance(invocation.error, TransientError) and invocation.error.system == "keyvault"
    logger.warning("silent Key Vault: a listing gave up after %.2fs", invocation.seconds)


def test_a_cold_instance_in_a_partition_does_not_queue_its_invocations(estate, relay, monkeypatch):
    """A fresh instance meets a silent account: 8 events at once, none waits behind the others' attempts
    to open the tables (one by one, 8 bounds in a row, they would outlive the lease)."""
    setup = estate.engine()  # straight to Azurite: the link exists, the instance under test opened nothing
    estate.kv.set_secret(estate.vault, "seed")
    estate.link(setup, estate.group("payments-kv", ["seed"]))
    engine = engine_behind(estate, relay, monkeypatch, lease_seconds=6.0)
    events = [secret_event(estate.vault, f"new-{i}", estate.kv.set_secret(estate.vault, f"new-{i}")) for i in range(8)]

    relay.silent = True
    lease_ends = time.monotonic() + engine.registry.lease_seconds
    invocations = [Invocation(lambda e=e: deliver(e)) for e in events]
    ended = [i.ended_within(max(0.0, lease_ends - time.monotonic())) for i in invocations]
    assert all(ended), f"{ended.count(False)} of 8 invocations outlived the lease they started in"
    assert all(isinstance(i.error, TransientError) for i in invocations)
    logger.warning(
        "cold instance, silent storage: 8 events gave up after at most %.2fs", max(i.seconds for i in invocations)
    )
