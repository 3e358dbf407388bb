"""The worker tier: kvlink driven through azure_functions_runtime on Python 3.13, as the host drives it.

Run with the 3.13 venv and the main suite's fixtures loaded as a plugin (``make test-worker``)::

    PYTHONPATH=. .venv313/bin/python -m pytest -p tests.conftest tests_worker

The stand-ins, Azurite and the ``estate`` fixture are the main suite's (tests/conftest.py); this file
adds one worker per session -- like one worker process per instance in Azure -- and the app settings.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvlink_core import app as kvlink_app
from tests_worker.host import WorkerHost, compile_protos

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    if sys.version_info < (3, 13):
        raise pytest.UsageError(
            f"the worker tier runs on Python 3.13+ (azure-functions-runtime needs it), not {sys.version.split()[0]}; "
            "`make test-worker` builds .venv313 and runs it"
        )
    if not config.pluginmanager.has_plugin("tests.conftest"):
        raise pytest.UsageError("load the main suite's fixtures: pytest -p tests.conftest tests_worker")


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerHost]:
    """The worker after init, indexing and every function load -- once per session, as per process in Azure."""
    host = WorkerHost(compile_protos(tmp_path_factory.mktemp("protos")), ROOT).start()
    yield host
    host.close()


@pytest.fixture
def app_settings(estate, monkeypatch: pytest.MonkeyPatch):
    """The estate's settings as app settings; the app builds its own engine from them, as in Azure."""
    for key, value in estate.env.items():
        monkeypatch.setenv(key, value)
    kvlink_app.reset()
    yield estate.env
    kvlink_app.reset()
