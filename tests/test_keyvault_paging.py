"""Listings longer than one page, end to end, against the stand-in speaking Azure's exact form.

Key Vault writes ``nextLink`` with an explicit default port (``https://{vault}.vault.azure.net:443/...``)
while vault URLs carry none. Each scenario below broke when kvlink took the two for different
origins (issue 11): a vault of more than 25 secrets, a log batch naming more than 8 secrets of
one vault, a secret with more than 25 versions. They run against the stand-in on port 443 (the
exact form) and against the ordinary one (explicit non-default port on both sides).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import azure.functions as func
import pytest
import requests
from conftest import Estate

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.audit import run_audit
from kvlink_core.credentials import EMULATOR_TOKEN
from kvlink_core.sync import Engine
from standins.events import as_trigger_input, secret_event
from standins.keyvault import KeyVaultStandIn
from standins.logs import audit_record, envelopes

pytestmark = pytest.mark.integration

SERVERS = ["port-443", "ordinary"]


@pytest.fixture(params=SERVERS)
def kv_server(request: pytest.FixtureRequest) -> KeyVaultStandIn:
    name = "vault_server_443" if request.param == "port-443" else "vault_server"
    server: KeyVaultStandIn = request.getfixturevalue(name)
    return server


@pytest.fixture
def paged(kv_server, devops_server, azurite, ca) -> Iterator[Estate]:
    """An estate on the chosen Key Vault stand-in (the shared ``estate`` fixture uses the ordinary one)."""
    for server in (kv_server, devops_server):
        server.clear_faults()
        server.latency = 0.0
        server.reset_calls()
    made = Estate(kv_server, devops_server, azurite, ca)
    yield made
    made.close()
    kv_server.assert_no_value_reads()


@pytest.fixture
def wired(paged: Estate, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The function app wired to the estate, as ``app_engine`` does for ``estate``."""
    for key, value in paged.env.items():
        monkeypatch.setenv(key, value)
    engine = paged.engine()
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
    return engine


def seed(estate: Estate, count: int) -> list[str]:
    names = [f"s-{i:02d}" for i in range(count)]
    for name in names:
        estate.kv.set_secret(estate.vault, name)
    return names


def listing_pages(estate: Estate) -> list[str]:
    """The ``/secrets`` pages the stand-in served, by their ``$skiptoken`` (None for the first)."""
    return [c.query.get("$skiptoken") for c in estate.kv.calls if c.path.endswith("/secrets") and c.status == 200]


def http(method: str, route: str, body: dict) -> tuple[int, dict]:
    req = func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{route}",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={},
        body=json.dumps(body).encode(),
    )
    fn = function_app.links if route == "links" else function_app.sync
    response = fn(req)
    return response.status_code, json.loads(response.get_body().decode())


class TestAzureForm:
    def test_port_443_stand_in_writes_nextlink_like_key_vault(self, vault_server_443, ca):
        """On port 443 the vault URL has no port and nextLink carries ``:443``, as Key Vault writes them."""
        server = vault_server_443
        server.create_vault("kv-form")
        for i in range(3):
            server.set_secret("kv-form", f"s-{i}")
        vault_url = server.vault_url("kv-form")
        host = urlsplit(vault_url).hostname
        assert vault_url == f"https://{host}/kv-form"

        page = requests.get(
            f"{vault_url}/secrets?api-version=7.5&maxresults=2",
            headers={"Authorization": f"Bearer {EMULATOR_TOKEN}"},
            verify=str(ca.bundle_path),
            timeout=30,
        ).json()

        assert page["nextLink"].startswith(f"https://{host}:443/kv-form/secrets?api-version=7.5&$skiptoken=")

    def test_nextlink_is_the_stand_ins_own_address_not_the_host_header(self, vault_server, ca):
        """nextLink is built from the stand-in's address, whatever Host the client sent."""
        vault_server.create_vault("kv-host")
        for i in range(3):
            vault_server.set_secret("kv-host", f"s-{i}")
        page = requests.get(
            f"{vault_server.vault_url('kv-host')}/secrets?api-version=7.5&maxresults=2",
            headers={"Authorization": f"Bearer {EMULATOR_TOKEN}", "Host": "elsewhere.example:8443"},
            verify=str(ca.bundle_path),
            timeout=30,
        ).json()
        assert page["nextLink"].startswith(f"{vault_server.base_url}/kv-host/secrets?")


class TestLongListings:
    def test_audit_of_a_vault_with_60_secrets(self, paged):
        """The audit reads all three pages of a 60-secret vault and fills the linked group."""
        engine = paged.engine()
        names = seed(paged, 60)
        group = paged.group("payments-kv", names[:10])
        paged.link(engine, group)
        paged.kv.reset_calls()

        report = run_audit(engine)

        assert report.unreached == []
        assert paged.names(group) == names
        assert len(listing_pages(paged)) == 3  # 25 + 25 + 10, listed once

    def test_post_links_on_a_vault_with_60_secrets(self, paged, wired):
        """POST /api/links creates the group with every one of the 60 names: 201, not 502."""
        names = seed(paged, 60)
        status, body = http(
            "POST",
            "links",
            paged.link_body(),
        )
        assert status == 201, body
        assert paged.names(body["link"]["groupId"]) == names

    def test_post_sync_on_a_vault_with_60_secrets(self, paged, wired):
        """POST /api/sync reconciles a linked group from the whole 60-secret listing: 200, not 502."""
        names = seed(paged, 60)
        group = paged.group("payments-kv", names[:40])
        paged.link(wired, group)
        paged.kv.delete_secret(paged.vault, "s-00")

        status, body = http("POST", "sync", {"vault": paged.vault})

        assert status == 200, body
        (result,) = body["groups"]
        assert result["outcome"] == "applied"
        assert result["plan"]["add"] == names[40:] and result["plan"]["remove"] == ["s-00"]
        assert paged.names(group) == names[1:]

    def test_log_batch_naming_more_than_8_secrets_of_one_vault(self, paged, wired):
        """A batch naming 9 secrets of a 30-secret vault is applied from one whole listing, not dropped."""
        names = seed(paged, 30)
        group = paged.group("payments-kv", names)
        paged.link(wired, group)
        paged.kv.drain_audit_log()
        gone = names[:9]
        for name in gone:
            paged.kv.update_secret(paged.vault, name, enabled=False)
        records = [audit_record(paged.vault, "SecretUpdate", secret=name) for name in gone]
        paged.kv.reset_calls()

        function_app.on_vault_log(
            [
                func.EventHubEvent(
                    body=body, enqueued_time=datetime.now(UTC), partition_key=None, sequence_number=i, offset=str(i)
                )
                for i, body in enumerate(envelopes(records, per_message=10))
            ]
        )

        assert paged.names(group) == names[9:]
        assert len(listing_pages(paged)) == 2  # one listing of 25 + 5, not one version list per name

    def test_event_for_a_secret_with_30_versions(self, paged, wired):
        """The newest of 30 versions sits on the second page of the version list; the event applies it."""
        group = paged.group("payments-kv", [])
        paged.link(wired, group)
        for _ in range(29):
            paged.kv.set_secret(paged.vault, "rotated", enabled=False)
        newest = paged.kv.set_secret(paged.vault, "rotated", enabled=True)
        paged.kv.reset_calls()

        function_app.on_secret_event(as_trigger_input(secret_event(paged.vault, "rotated", newest)))

        assert paged.names(group) == ["rotated"]
        pages = [c for c in paged.kv.calls if c.path.endswith("/versions") and c.status == 200]
        assert len(pages) == 2  # 25 + 5
