"""Entry points for the triggers and the CLI, over one engine per process."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .settings import DEFAULT_SDK_LOG_LEVEL, Settings, get_settings, sdk_log_level_of

if TYPE_CHECKING:
    from .audit import AuditReport
    from .sync import Engine, EventResult, LogBatchResult
    from .workqueue import SyncQueue


# The loggers of the libraries kvlink calls through. azure-core's HTTP logging policy and httpx write a
# record per request at INFO, and the Python worker sets the root logger to INFO
# (Azure/azure-functions-python-worker#1342): every listing page and PUT would be a trace row.
SDK_LOGGERS = ("azure", "httpx", "httpcore", "urllib3", "aiohttp")


def configure_host_logging(environ: Mapping[str, str] | None = None) -> str:
    """Keep the SDKs' loggers at KVLINK_SDK_LOG_LEVEL (WARNING unless set) in the Functions host.

    Called when function_app is imported, before any settings are parsed, so it reads the one
    setting itself; an unknown level falls back to WARNING here and is refused, by name, when the
    settings are parsed on the first invocation. Returns the level applied.
    """
    env = os.environ if environ is None else environ
    level = sdk_log_level_of(env.get("KVLINK_SDK_LOG_LEVEL")) or DEFAULT_SDK_LOG_LEVEL
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(level)
    return level


def build_engine(settings: Settings) -> Engine:
    """Wire the engine to real endpoints (Azure, or stand-ins when the settings say so)."""
    from .credentials import get_credential
    from .devops import DevOps
    from .keyvault import KeyVault
    from .notify import Notifier
    from .registry import Registry
    from .sync import Engine

    credential = get_credential(settings)
    return Engine(
        settings,
        keyvault=KeyVault(settings, credential),
        devops=DevOps(settings, None if settings.devops_pat else credential),
        registry=Registry(settings, credential),
        notifier=Notifier(settings, credential),
    )


@functools.cache
def get_engine() -> Engine:
    """The process's engine, built on first use from the environment's settings."""
    return build_engine(get_settings())


@functools.cache
def get_sync_queue() -> SyncQueue:
    """The queue that carries long syncs to ``run_sync_job``, in AzureWebJobsStorage's account."""
    from .credentials import get_credential
    from .workqueue import SyncQueue

    settings = get_settings()
    return SyncQueue(settings, None if settings.storage.connection_string else get_credential(settings))


def reset() -> None:
    """Forget the cached settings and engine (tests, and the CLI after changing settings)."""
    if get_engine.cache_info().currsize:
        get_engine().close()
    if get_sync_queue.cache_info().currsize:
        get_sync_queue().close()
    get_engine.cache_clear()
    get_sync_queue.cache_clear()
    get_settings.cache_clear()


def handle_event_grid(envelope: Mapping[str, Any]) -> EventResult:
    """One Event Grid delivery, in either schema (see :meth:`Engine.handle_event`)."""
    return get_engine().handle_event(envelope)


def handle_log_batch(bodies: list[bytes]) -> LogBatchResult:
    """One Event Hubs batch of Key Vault audit-log envelopes (see :meth:`Engine.handle_log_batch`)."""
    return get_engine().handle_log_batch(bodies)


def run_sync_job(body: bytes, *, dequeue_count: int) -> None:
    """One delivery of a ``kvlink-sync`` message (see :func:`kvlink_core.jobs.run`)."""
    import json
    import logging

    from . import jobs

    try:
        job_id = json.loads(body.decode("utf-8")).get("job")
    except (ValueError, AttributeError):
        job_id = None
    if not isinstance(job_id, str):  # not kvlink's message: delivering it again cannot help
        logging.getLogger(__name__).error("A kvlink-sync message is not a job; dropped")
        return
    jobs.run(get_engine(), job_id, dequeue_count=dequeue_count)


def report_page(engine: Engine, *, unsaved: AuditReport | None = None) -> str:
    """The estate report page: the latest stored audit (or ``unsaved``, a dry run's report that was
    not stored), the links of the organizations in scope, and the last 30 runs."""
    from datetime import UTC, datetime

    from .report_page import HISTORY_RUNS, render_report

    registry = engine.registry
    history = registry.report_history(limit=HISTORY_RUNS)
    if unsaved is None:
        latest = registry.latest_report()
    else:
        latest = unsaved.as_json()
        history = [unsaved.summary(), *history][:HISTORY_RUNS]
    links = [r for r in registry.link_records() if engine.settings.org_allowed(r.link.organization)]
    return render_report(latest, history, links, now=datetime.now(UTC), devops_url=engine.settings.devops_url)


def run_nightly_audit(*, past_due: bool = False) -> AuditReport:
    """The timer's audit: reconcile, discover, store the report, notify."""
    import logging

    from .audit import run_audit

    if past_due:
        logging.getLogger(__name__).warning("The nightly audit is past due; running it once now")
    return run_audit(get_engine())
