"""Start-up as the host sees it: init, indexing (functions metadata) and each function load."""

from __future__ import annotations

import sys

import pytest

# Every public function, its trigger and the trigger's settings, as DESIGN.md names them.
EXPECTED = {
    "links": ("httpTrigger", {"route": "links/{organization?}/{project?}/{groupId?}", "authLevel": "FUNCTION"}),
    "sync": ("httpTrigger", {"route": "sync", "authLevel": "FUNCTION"}),
    "sync_status": ("httpTrigger", {"route": "sync/{jobId}", "authLevel": "FUNCTION"}),
    "run_sync_job": ("queueTrigger", {"queueName": "kvlink-sync", "connection": "AzureWebJobsStorage"}),
    "audit_latest": ("httpTrigger", {"route": "audit/latest", "authLevel": "FUNCTION"}),
    "report": ("httpTrigger", {"route": "report", "authLevel": "FUNCTION"}),
    "health": ("httpTrigger", {"route": "health", "authLevel": "ANONYMOUS"}),
    "nightly_audit": (
        "timerTrigger",
        {"schedule": "%KVLINK_AUDIT_SCHEDULE%", "useMonitor": True, "runOnStartup": False},
    ),
    "on_secret_event": ("eventGridTrigger", {}),
    "on_vault_log": (
        "eventHubTrigger",
        {"eventHubName": "%KVLINK_EVENTHUB_NAME%", "connection": "KVLINK_EVENTHUB", "cardinality": "MANY"},
    ),
}


def test_runs_on_the_pinned_runtime(worker):
    """The tier runs the worker runtime requirements.txt pins for 3.13+, on 3.13+."""
    from importlib.metadata import version

    lines = (worker.app_dir / "requirements.txt").read_text().splitlines()
    pins = dict(
        line.split(";")[0].replace(" ", "").split("==")
        for line in lines
        if "==" in line and not line.startswith("#") and '>= "3.13"' in line
    )
    assert sys.version_info >= (3, 13)
    assert version("azure-functions-runtime") == pins["azure-functions-runtime"]
    assert version("azure-functions") == pins["azure-functions"]


def test_runs_the_python_azure_runs(worker):
    """This tier runs the Python version the Flex app is deployed with (infra/main.bicep runtimeVersion)."""
    import re

    deployed = re.findall(r"runtimeVersion: '([\d.]+)'", (worker.app_dir / "infra" / "main.bicep").read_text())
    assert deployed == [f"{sys.version_info.major}.{sys.version_info.minor}"]


def test_init_succeeds_and_declares_its_capabilities(worker):
    """Init indexes the app without error; the capabilities shape what the host sends later."""
    init = worker.init_response
    assert worker.succeeded(init), init.result.exception.message
    assert init.worker_metadata.runtime_name == "python"
    assert init.worker_metadata.runtime_version.startswith("3.13")
    # The host sends HTTP bodies as raw bytes, and batches as typed collections, because of these.
    assert {"RawHttpBodyBytes", "RpcHttpBodyOnly", "TypedDataCollection"} <= set(init.capabilities)
    # Not declared: the host drops empty strings from string[] (an empty Event Hubs body) -- see test_worker_events.
    assert "IncludeEmptyEntriesInMessagePayload" not in init.capabilities


def test_indexing_reports_every_public_function(worker):
    """The worker indexes exactly the public functions, each with its trigger as the host will bind it."""
    assert worker.succeeded(worker.metadata_response)
    assert not worker.metadata_response.use_default_metadata_indexing
    assert sorted(worker.functions) == sorted(EXPECTED)
    for name, (trigger_type, settings) in EXPECTED.items():
        trigger = worker.trigger(name)
        assert trigger["type"] == trigger_type, name
        assert trigger["direction"] == "IN"
        assert {k: trigger.get(k) for k in settings} == settings, name


@pytest.mark.parametrize("name", ["links", "sync", "sync_status", "audit_latest", "report", "health"])
def test_http_functions_answer_through_return(worker, name):
    """An HTTP function's answer travels as its $return binding (http out), which the host sends back."""
    bindings = worker.bindings(name)
    assert {"type": "http", "direction": "OUT", "name": "$return"}.items() <= bindings[-1].items()
    assert len(bindings) == 2


def test_only_health_is_anonymous(worker):
    """The host checks keys against these levels before the worker runs: every route needs a function
    key but health. Source: Microsoft Learn, azure-functions Python API "AuthLevel Enum" ("determines
    what keys, if any, need to be present on the request in order to invoke the function")."""
    triggers = {name: worker.trigger(name) for name in worker.functions}
    levels = {name: t["authLevel"] for name, t in triggers.items() if t["type"] == "httpTrigger"}
    assert {name for name, level in levels.items() if level == "ANONYMOUS"} == {"health"}
    assert set(levels.values()) == {"FUNCTION", "ANONYMOUS"}


def test_event_hub_retry_policy_reaches_the_host(worker):
    """on_vault_log's retry policy is sent with its metadata: the host re-runs a failed batch 5 times."""
    retry = worker.functions["on_vault_log"].retry_options
    assert retry.max_retry_count == 5
    assert retry.retry_strategy == type(retry).RetryStrategy.Value("exponential_backoff")
    assert retry.minimum_interval.ToSeconds() == 10
    assert retry.maximum_interval.ToSeconds() == 300
    # Event Grid retries are the subscription's, not the function's (functions-bindings-error-pages, "Retries").
    assert not worker.functions["on_secret_event"].HasField("retry_options")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_function_loads(worker, name):
    """The host loads each function by the id the worker gave it; every load succeeds."""
    load = worker.load_responses[name]
    assert load.function_id == worker.functions[name].function_id
    assert worker.succeeded(load), load.result.exception.message


def test_functions_are_sync_so_they_run_on_the_worker_thread_pool(worker):
    """kvlink's functions are plain ``def``: the worker runs them on its thread pool, not on its event loop,
    so a blocking SDK call never stalls other invocations (azure_functions_runtime ``invocation_request``)."""
    from azure_functions_runtime import handle_event

    for name, metadata in worker.functions.items():
        assert handle_event._functions.get_function(metadata.function_id).is_async is False, name


def test_the_deployed_package_leaves_the_tier_out(worker):
    """azd zips the project for Flex: the 3.13 virtualenv and this tier stay out of the package (.funcignore)."""
    ignored = set((worker.app_dir / ".funcignore").read_text().split())
    assert {".venv313", "tests_worker/", "requirements-worker.txt"} <= ignored
