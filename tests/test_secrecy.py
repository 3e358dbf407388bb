"""Secrecy: no path reads a secret value, and no credential reaches a log line, an error body or the CLI's output.

The forbidden patterns are derived from the Authorization headers the stand-ins actually
received, so each of them is known to be a real credential that could leak.
"""

from __future__ import annotations

import base64
import io
import json
import logging

import azure.functions as func
import pytest

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.audit import run_audit
from kvlink_core.cli import main as cli_main
from kvlink_core.credentials import EMULATOR_TOKEN
from standins.events import as_trigger_input, secret_event
from standins.logs import envelopes

pytestmark = pytest.mark.integration


def received_authorization(server, monkeypatch) -> list[str]:
    """The Authorization header values ``server`` receives from now on (its call log keeps only the scheme)."""
    received: list[str] = []
    dispatch = server._dispatch

    def spying(handler):
        if value := handler.headers.get("Authorization"):
            received.append(value)
        dispatch(handler)

    monkeypatch.setattr(server, "_dispatch", spying)
    return received


def credentials_in(headers: list[str]) -> set[str]:
    """Every form of each credential sent: the header value, its credential part and, for Basic, the PAT."""
    patterns: set[str] = set()
    for header in headers:
        scheme, _, credential = header.partition(" ")
        patterns |= {header, credential}
        if scheme == "Basic":
            patterns.add(base64.b64decode(credential).decode().partition(":")[2])
    return {p for p in patterns if len(p) >= 8}


def basic(pat: str) -> str:
    return "Basic " + base64.b64encode(f":{pat}".encode()).decode()


def test_every_path_keeps_credentials_out_of_logs_bodies_and_cli_output(estate, app_engine, monkeypatch, caplog):
    """Events, logs, links, syncs, the audit, the CLI and failures, all at DEBUG: no credential anywhere."""
    caplog.set_level(logging.DEBUG)  # the SDKs' HTTP logging included
    engine = app_engine
    to_devops = received_authorization(estate.ado, monkeypatch)
    to_vault = received_authorization(estate.kv, monkeypatch)
    bodies: list[str] = []
    printed: list[str] = []

    def call(fn, method, route, payload=None):
        req = func.HttpRequest(
            method=method,
            url=f"http://localhost/api/{route}",
            body=json.dumps(payload).encode() if payload is not None else b"",
        )
        bodies.append(fn(req).get_body().decode())

    def cli(*argv: str) -> int:
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(list(argv), out=out, err=err)
        printed.extend([out.getvalue(), err.getvalue()])
        return code

    estate.kv.set_secret(estate.vault, "db-password")
    link = estate.link_body()
    call(function_app.links, "POST", "links", link)
    version = estate.kv.set_secret(estate.vault, "api-key")
    function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "api-key", version)))
    estate.kv.delete_secret(estate.vault, "db-password")
    function_app.on_vault_log([func.EventHubEvent(body=b) for b in envelopes(estate.kv.drain_audit_log())])
    call(function_app.sync, "POST", "sync", {"vault": estate.vault})
    run_audit(engine, store=False)
    where = ["--organization", estate.org, "--project", estate.project]
    connection = ["--service-connection", "kv-connection"]
    assert cli("link", *where, "--group", "cli-kv", "--vault", estate.vault, *connection) == 0
    assert cli("sync", "--vault", estate.vault, "--json") == 0
    assert cli("audit", "--json") in (0, 2)
    assert cli("audit") in (0, 2)
    assert cli("links") == 0
    assert cli("links", "--json") == 0

    # failures: rejected credentials, a throttled upstream, an unexpected error, unusable settings
    bad_pat = "not-" + estate.env["AZURE_DEVOPS_PAT"]
    bad = estate.engine(AZURE_DEVOPS_PAT=bad_pat)
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: bad)
    call(function_app.links, "POST", "links", link)
    assert cli("link", *where, "--group", "payments-kv", "--vault", estate.vault) == 1
    assert cli("sync", "--vault", estate.vault) == 1
    assert cli("audit", "--dry-run") == 1  # every project unreached: could not look
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
    estate.ado.inject(429, retry_after=90, times=10)
    call(function_app.links, "POST", "links", link)
    estate.ado.clear_faults()
    estate.ado.inject(429, retry_after=90, times=10)
    assert cli("sync", "--vault", estate.vault) == 1
    estate.ado.clear_faults()
    estate.kv.inject(500, times=100)
    assert cli("audit", "--json") == 1  # the vault unreached: could not look
    estate.kv.clear_faults()

    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(engine.devops, "list_groups", boom)
    call(function_app.sync, "POST", "sync", {"vault": estate.vault})
    monkeypatch.undo()  # the real get_engine, reading the environment below
    for key, value in {**estate.env, "KVLINK_DEVOPS_URL": "http://insecure.example"}.items():
        monkeypatch.setenv(key, value)
    kvlink_app.reset()
    assert cli("links") == 1
    assert "KVLINK_DEVOPS_URL" in printed[-1]

    # Each pattern is a credential that was really sent: the PAT (good and bad) and the emulator token.
    pat = estate.env["AZURE_DEVOPS_PAT"]
    assert basic(pat) in to_devops and basic(bad_pat) in to_devops
    assert f"Bearer {EMULATOR_TOKEN}" in to_vault
    patterns = credentials_in(to_devops + to_vault)
    assert {pat, bad_pat, EMULATOR_TOKEN} <= patterns

    logs = caplog.text
    assert "HTTP Request" in logs or "Request URL" in logs  # the HTTP logs were really captured
    for name, text in (("logs", logs), ("HTTP bodies", "\n".join(bodies)), ("CLI output", "\n".join(printed))):
        for secret in patterns:
            assert secret not in text, f"{secret[:6]}... leaked into the {name}"
    assert "Traceback" not in "\n".join(bodies + printed)
    assert estate.kv.value_requests == []
