"""Hostile input on every entry point: a precise error, or acknowledged and ignored -- and nothing written."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

import function_app
from standins.events import as_trigger_input, secret_event, vault_resource_id
from standins.logs import audit_record

pytestmark = pytest.mark.integration

LOOKALIKE = "kv-t\u0435st"  # the "e" is Cyrillic


@pytest.fixture
def armed(estate, app_engine):
    """A linked group on the estate's vault, the function app wired to the estate, every writer watched."""
    engine = app_engine
    estate.kv.set_secret(estate.vault, "db-password")
    group = estate.group("payments-kv", ["db-password"])
    estate.link(engine, group)
    estate.ado.reset_calls()
    estate.table_calls.reset()
    return estate, engine, group


def assert_nothing_written(estate, engine, group) -> None:
    assert estate.ado.writes(estate.org) == []
    assert estate.names(group) == ["db-password"]
    assert [link.group_id for link in engine.registry.links_for_vault(estate.vault)] == [group]


def http(fn, method: str, route: str, *, body: bytes = b"", route_params=None, params=None):
    req = func.HttpRequest(
        method=method,
        url=f"http://localhost/api/{route}",
        body=body,
        route_params=route_params or {},
        params=params or {},
    )
    response = fn(req)
    text = response.get_body().decode()
    return response.status_code, (json.loads(text) if text else None)


class TestHttp:
    @pytest.mark.parametrize(
        "body",
        [
            b"[" * 100_000 + b"]" * 100_000,  # nesting bomb (inside 64 KiB? no: > limit -> 413)
            b"[" * 20_000 + b"]" * 20_000,  # nesting bomb under the size limit
            b'{"organization": "\\u0000org"}',
            b'{"vault": 1e999}',
            b"\xef\xbb\xbf{}",  # a BOM
            json.dumps({"organization": "a" * 10_000}).encode(),
            json.dumps({"organization": ["org"], "vault": {"$ne": None}}).encode(),
        ],
        ids=["deep-oversized", "deep", "nul", "huge-number", "bom", "long", "nosql-ish"],
    )
    def test_bodies(self, armed, body):
        """Malformed, oversized, nested or oddly typed bodies get a 4xx naming the problem, never a 500."""
        estate, engine, group = armed
        status, answer = http(function_app.links, "POST", "links", body=body)
        assert 400 <= status < 500, answer
        assert answer["error"]["code"] and answer["error"]["message"]
        assert_nothing_written(estate, engine, group)

    @pytest.mark.parametrize(
        "organization",
        [
            "evil.example.com",
            "127.0.0.1:8443",
            "user@evil",
            "https:",
            "..",
            "org/../../x",
            "cоntoso",
            "%2e%2e",
            "a" * 51,
            " org",
            "org\r\nHost: evil",
        ],
    )
    def test_organizations_that_are_not_names(self, armed, organization):
        """Anything but an organization name is refused: nothing a caller sends picks the host."""
        estate, engine, group = armed
        body = {"organization": organization, "project": estate.project, "group": "g", "vault": estate.vault}
        status, answer = http(function_app.links, "POST", "links", body=json.dumps(body).encode())
        assert status in (400, 403)
        assert answer["error"]["field"] == "organization"
        assert estate.ado.calls == []
        assert_nothing_written(estate, engine, group)

    @pytest.mark.parametrize(
        ("organization", "project", "group_id"),
        [
            ("..", "p", "1"),
            ("org", "..", "1"),
            ("org", "p", "1;drop"),
            ("org", "p", "0x10"),
            ("org", "a/b", "1"),
            ("org", "p", "99999999999999999999"),
            ("org", "p", "٣"),
        ],
    )
    def test_path_tricks_in_route_parameters(self, armed, organization, project, group_id):
        """Route parameters are validated like body fields; nothing is deleted."""
        estate, engine, group = armed
        route = {"organization": organization, "project": project, "groupId": group_id}
        status, answer = http(function_app.links, "DELETE", "links", route_params=route)
        assert status in (400, 404), answer
        assert_nothing_written(estate, engine, group)

    @pytest.mark.parametrize("vault", [LOOKALIKE, "kv--x", "kv.evil.com", "KV", "kv" * 20, "kv-test/../x"])
    def test_vault_names(self, armed, vault):
        """Vault names outside Key Vault's rules (look-alikes included) are a 400 or 403, never a lookup."""
        estate, engine, group = armed
        status, answer = http(function_app.sync, "POST", "sync", body=json.dumps({"vault": vault}).encode())
        assert status in (400, 403), answer
        assert estate.kv.calls == []
        assert_nothing_written(estate, engine, group)

    def test_list_filters(self, armed):
        """Query filters are validated too."""
        status, answer = http(function_app.links, "GET", "links", params={"vault": "x/../y"})
        assert status == 400 and answer["error"]["field"] == "vault"


class TestEventGrid:
    @pytest.mark.parametrize(
        "mutate",
        [
            lambda e, v: (
                e.update(topic=vault_resource_id("kv-not-allowed"))
                or e["data"].update(VaultName="kv-not-allowed", Id="https://kv-not-allowed.vault.azure.net/secrets/x/1")
            ),
            lambda e, v: e.update(topic=vault_resource_id(LOOKALIKE)),
            lambda e, v: e.update(topic=e["topic"].replace("Microsoft.KeyVault", "Microsoft.Storage")),
            lambda e, v: e["data"].update(Id=f"https://evil.example.com/secrets/{e['subject']}/1"),
            lambda e, v: e.update(subject="../../etc/passwd") or e["data"].clear(),
            lambda e, v: e.update(subject="a" * 200) or e["data"].clear(),
            lambda e, v: e.update(data=["not", "an", "object"]),
            lambda e, v: e.update(eventType="Microsoft.KeyVault.SecretNewVersionCreated\nInjected"),
            lambda e, v: e["data"].update(ObjectName="other-secret"),
        ],
        ids=[
            "vault-not-allowed",
            "lookalike-vault",
            "not-key-vault",
            "id-other-host",
            "path-subject",
            "long-name",
            "data-list",
            "type-injection",
            "name-mismatch",
        ],
    )
    def test_forged_or_malformed_events(self, armed, mutate):
        """Forged and malformed events are acknowledged and ignored: no call to Key Vault or Azure DevOps."""
        estate, engine, group = armed
        version = estate.kv.set_secret(estate.vault, "api-key")
        estate.kv.reset_calls()
        body = secret_event(estate.vault, "api-key", version)
        mutate(body, estate.vault)
        function_app.on_secret_event(as_trigger_input(body))  # returns: no redelivery
        assert estate.kv.calls == []
        assert_nothing_written(estate, engine, group)


class TestEventHub:
    def test_hostile_records(self, armed, captured_logs):
        """Forged, failed and malformed records are skipped with their position; nothing is written."""
        estate, engine, group = armed
        forged = audit_record("kv-not-allowed", "SecretDelete", secret="db-password")
        lookalike = audit_record(LOOKALIKE, "SecretDelete", secret="db-password")
        traversal = audit_record(estate.vault, "SecretDelete", secret="x")
        traversal["properties"]["id"] = f"https://{estate.vault}.vault.azure.net/secrets/../../admin"
        traversal["properties"]["requestUri"] = traversal["properties"]["id"]
        refused = audit_record(estate.vault, "SecretDelete", secret="db-password", status=403)
        bodies = [
            json.dumps({"records": [forged, lookalike, traversal, refused]}).encode(),
            b"[" * 50_000 + b"]" * 50_000,
            b"\xff\xfe\x00garbage",
            json.dumps({"records": "nope"}).encode(),
        ]
        function_app.on_vault_log([func.EventHubEvent(body=b) for b in bodies])
        assert_nothing_written(estate, engine, group)
        assert "message 2" in captured_logs.text and "message 1, record 2" in captured_logs.text
