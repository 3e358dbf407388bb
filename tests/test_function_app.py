"""The registered functions, called with the objects the Functions worker builds."""

from __future__ import annotations

import importlib
import logging

import pytest

import function_app
from kvlink_core import app as kvlink_app
from kvlink_core.errors import TransientError
from standins.events import as_trigger_input, secret_event


class TestRegistration:
    def test_on_secret_event_is_an_event_grid_trigger(self, registered):
        """on_secret_event is registered under its public name with an Event Grid trigger."""
        bindings = registered["on_secret_event"]["bindings"]
        assert [(b["type"], b["direction"].lower()) for b in bindings] == [("eventGridTrigger", "in")]


@pytest.fixture
def env_engine(estate, monkeypatch):
    """The function app's own engine, configured from the environment like in Azure."""
    for key, value in estate.env.items():
        monkeypatch.setenv(key, value)
    kvlink_app.reset()
    yield
    kvlink_app.reset()


@pytest.mark.integration
class TestOnSecretEvent:
    @pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
    def test_new_secret_through_the_trigger(self, estate, env_engine, schema):
        """A delivery in either schema, decoded by the worker's converter, updates the linked group."""
        group = estate.group("payments-kv", ["db-password"])
        estate.link(estate.engine(), group)
        version = estate.kv.set_secret(estate.vault, "api-key")

        function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "api-key", version, schema=schema)))

        assert estate.names(group) == ["api-key", "db-password"]

    def test_malformed_event_is_acknowledged(self, estate, env_engine, captured_logs):
        """A malformed delivery returns normally (no Event Grid retry) and nothing is called."""
        body = secret_event(estate.vault, "api-key")
        body["topic"] = "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z"

        function_app.on_secret_event(as_trigger_input(body))

        assert "not a Key Vault resource id" in captured_logs.text
        assert estate.kv.calls == []
        assert estate.ado.calls == []

    def test_key_event_is_acknowledged(self, estate, env_engine):
        """A key event from the same vault is ignored without any call."""
        body = secret_event(estate.vault, "signing-key", kind="KeyNewVersionCreated")
        body["data"]["ObjectType"] = "Key"
        function_app.on_secret_event(as_trigger_input(body))
        assert estate.kv.calls == []

    def test_transient_failure_raises_for_redelivery(self, estate, env_engine):
        """When Key Vault keeps failing, the function raises so that Event Grid redelivers."""
        group = estate.group("payments-kv", ["db-password"])
        estate.link(estate.engine(), group)
        estate.kv.inject(503, path="/versions", times=100)

        with pytest.raises(TransientError):
            function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "api-key")))
        assert estate.names(group) == ["db-password"]

    def test_secrets_never_reach_the_logs(self, estate, env_engine, captured_logs):
        """The PAT and tokens never appear in log lines, even with DEBUG logging on."""
        group = estate.group("payments-kv", [])
        estate.link(estate.engine(), group)
        version = estate.kv.set_secret(estate.vault, "api-key")
        function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "api-key", version)))
        assert estate.env["AZURE_DEVOPS_PAT"] not in captured_logs.text
        assert "kvlink-emulator-token" not in captured_logs.text


FLEX_CONSUMPTION = {"WEBSITE_SITE_NAME": "func-kvlink", "WEBSITE_SKU": "FlexConsumption", "CONTAINER_NAME": "c-1"}


@pytest.fixture
def outgoing(monkeypatch):
    """Every request any Azure SDK client sends (Table storage included), counted at its transport."""
    from azure.core.pipeline.transport import RequestsTransport

    sent: list[str] = []
    send = RequestsTransport.send

    def counting(self, request, **kwargs):
        sent.append(f"{request.method} {request.url}")
        return send(self, request, **kwargs)

    monkeypatch.setattr(RequestsTransport, "send", counting)
    return sent


@pytest.mark.integration
class TestEmulatorRefusedOnFlexConsumption:
    """Flex Consumption sets no WEBSITE_INSTANCE_ID: its own variables must still refuse KVLINK_EMULATOR=1."""

    @pytest.fixture
    def flex(self, estate, env_engine, monkeypatch, outgoing):
        group = estate.group("payments-kv", ["db-password"])
        estate.link(estate.engine(), group)  # a registry row, so a working app would have work to do
        estate.kv.set_secret(estate.vault, "api-key")
        estate.kv.reset_calls()
        estate.ado.reset_calls()
        outgoing.clear()
        for key, value in FLEX_CONSUMPTION.items():
            monkeypatch.setenv(key, value)
        kvlink_app.reset()
        yield group
        assert estate.kv.calls == []
        assert estate.ado.calls == []
        assert outgoing == []  # Table storage, Key Vault and Event Grid clients alike
        assert estate.names(group) == ["db-password"]

    @pytest.mark.parametrize(
        ("function", "method", "route", "body"),
        [
            (function_app.links, "GET", "links", None),
            (function_app.links, "POST", "links", {"organization": "o", "project": "p", "group": "g", "vault": "v"}),
            (function_app.sync, "POST", "sync", {"vault": "v"}),
        ],
        ids=["list-links", "link", "sync"],
    )
    def test_http_answers_a_configuration_error(self, estate, flex, function, method, route, body):
        """The HTTP routes answer 500 ConfigurationError naming KVLINK_EMULATOR, and call nothing."""
        import json

        import azure.functions as func

        if body and "vault" in body:
            body["vault"] = estate.vault
        req = func.HttpRequest(
            method=method,
            url=f"http://localhost/api/{route}",
            body=json.dumps(body).encode() if body else b"",
        )
        response = function(req)
        error = json.loads(response.get_body())["error"]
        assert response.status_code == 500
        assert error["code"] == "ConfigurationError"
        assert error["settings"] == ["KVLINK_EMULATOR"]
        assert "KVLINK_EMULATOR" in error["message"]

    def test_health_says_misconfigured(self, flex):
        """The anonymous health route says misconfigured (and, being anonymous, nothing more)."""
        import json

        import azure.functions as func

        response = function_app.health(func.HttpRequest(method="GET", url="http://localhost/api/health", body=b""))
        assert response.status_code == 503
        assert json.loads(response.get_body())["status"] == "misconfigured"

    def test_event_raises_the_configuration_error(self, estate, flex):
        """A vault event raises the refusal (the host logs it; Event Grid redelivers once it is fixed)."""
        from kvlink_core.errors import ConfigError

        event = as_trigger_input(secret_event(estate.vault, "api-key"))
        with pytest.raises(ConfigError, match="refused when running in Azure") as info:
            function_app.on_secret_event(event)
        assert all(name in str(info.value) for name in FLEX_CONSUMPTION)


# The libraries kvlink calls through, written out here (not read from the code): azure-core (every azure-*
# client, azure-identity included), httpx/httpcore (Azure DevOps), urllib3 and aiohttp (transports).
SDK_LOGGER_ROOTS = {"azure", "httpx", "httpcore", "urllib3", "aiohttp"}


@pytest.mark.integration
class TestHostLogging:
    """The Python worker sets the root logger to INFO (Azure/azure-functions-python-worker#1342), and
    host.json keeps traces unsampled: a per-request line from the SDKs would be a billed trace row each."""

    def handle_one_event(self, estate, monkeypatch, caplog, level):
        if level is None:
            monkeypatch.delenv("KVLINK_SDK_LOG_LEVEL", raising=False)
        else:
            monkeypatch.setenv("KVLINK_SDK_LOG_LEVEL", level)
        importlib.reload(function_app)  # what the worker does first: import function_app
        caplog.set_level(logging.INFO)  # the worker's root level
        group = estate.group("payments-kv", ["db-password"])
        estate.link(estate.engine(), group)
        version = estate.kv.set_secret(estate.vault, "api-key")
        caplog.clear()

        function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "api-key", version)))

        assert estate.names(group) == ["api-key", "db-password"]
        return caplog.records

    def test_one_event_logs_kvlink_lines_and_no_sdk_request_lines(self, estate, env_engine, monkeypatch, caplog):
        """At the worker's INFO, an event handled end to end writes kvlink's lines and none per SDK request."""
        records = self.handle_one_event(estate, monkeypatch, caplog, level=None)

        sdk = [f"{r.name}: {r.getMessage()[:80]}" for r in records if r.name.split(".")[0] in SDK_LOGGER_ROOTS]
        assert sdk == []
        own = [r.getMessage() for r in records if r.name.startswith("kvlink_core")]
        assert any(f"for secret api-key in vault {estate.vault}" in line for line in own), own
        assert any(line.startswith("Group payments-kv") and "added ['api-key']" in line for line in own), own

    def test_the_setting_lets_the_request_lines_through(self, estate, env_engine, monkeypatch, caplog):
        """KVLINK_SDK_LOG_LEVEL=INFO brings azure-core's and httpx's request lines back, for a diagnosis."""
        records = self.handle_one_event(estate, monkeypatch, caplog, level="info")

        roots = {r.name.split(".")[0] for r in records if r.levelno == logging.INFO}
        assert {"azure", "httpx"} <= roots
