"""Secrecy: no path reads a secret value, and no credential reaches a log line or an error body."""

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


def forbidden(estate) -> list[str]:
    pat = estate.env["AZURE_DEVOPS_PAT"]
    return [pat, base64.b64encode(f":{pat}".encode()).decode(), EMULATOR_TOKEN, "Bearer ey", "Basic Ok"]


def test_every_path_keeps_credentials_out_of_logs_and_bodies(estate, app_engine, monkeypatch, caplog):
    """Events, logs, links, syncs, the audit, the CLI and failures, all at DEBUG: no credential anywhere."""
    caplog.set_level(logging.DEBUG)  # the SDKs' HTTP logging included
    engine = app_engine
    bodies: list[str] = []

    def call(fn, method, route, payload=None):
        req = func.HttpRequest(
            method=method,
            url=f"http://localhost/api/{route}",
            body=json.dumps(payload).encode() if payload is not None else b"",
        )
        bodies.append(fn(req).get_body().decode())

    estate.kv.set_secret(estate.vault, "db-password")
    link = {
        "organization": estate.org,
        "project": estate.project,
        "group": "payments-kv",
        "vault": estate.vault,
        "serviceConnection": "kv-connection",
    }
    call(function_app.links, "POST", "links", link)
    version = estate.kv.set_secret(estate.vault, "api-key")
    function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "api-key", version)))
    estate.kv.delete_secret(estate.vault, "db-password")
    function_app.on_vault_log([func.EventHubEvent(body=b) for b in envelopes(estate.kv.drain_audit_log())])
    call(function_app.sync, "POST", "sync", {"vault": estate.vault})
    run_audit(engine, store=False)
    cli_main(["links", "--json"], out=io.StringIO(), err=io.StringIO())
    # failures: rejected credentials, a throttled upstream, an unexpected error
    estate.ado.unauthenticated_status = 401
    bad = estate.engine(AZURE_DEVOPS_PAT="not-" + estate.env["AZURE_DEVOPS_PAT"])
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: bad)
    call(function_app.links, "POST", "links", link)
    monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
    estate.ado.inject(429, retry_after=90, times=10)
    call(function_app.links, "POST", "links", link)
    estate.ado.clear_faults()

    text = caplog.text + "\n".join(bodies)
    assert "HTTP Request" in caplog.text or "Request URL" in caplog.text  # the HTTP logs were really captured
    for secret in forbidden(estate):
        assert secret not in text, f"{secret[:6]}... leaked"
    assert "Traceback" not in "\n".join(bodies)
    assert estate.kv.value_requests == []
