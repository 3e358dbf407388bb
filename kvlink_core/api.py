"""The HTTP API as plain values: method, route, query and body in; status, JSON and headers out.

``function_app.py`` only converts between these and ``azure.functions`` objects. Every
error becomes ``{"error": {"code", "message", "field"?}}`` with a precise status; no
stack trace and no credential ever reaches a response.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .errors import ConfigError, KvLinkError, RequestError, TransientError, UpstreamError

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
# The report page is self-contained: inline CSS, no script, nothing loaded from anywhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: Any = None  # JSON-serializable, or the text itself for other media types
    headers: Mapping[str, str] = field(default_factory=dict)
    mimetype: str = "application/json"
    charset: str = "utf-8"

    @property
    def content_type(self) -> str:
        return f"{self.mimetype}; charset={self.charset}" if self.mimetype.startswith("text/") else self.mimetype

    def json(self) -> str | None:
        return None if self.body is None else json.dumps(self.body)

    def text(self) -> str | None:
        """The body as sent: JSON serialized, or a page as it is."""
        if self.mimetype == "application/json":
            return self.json()
        return None if self.body is None else str(self.body)


def links(method: str, route: Mapping[str, str], query: Mapping[str, str], body: bytes) -> ApiResponse:
    """``/api/links[/{organization}/{project}/{groupId}]``: POST links, GET lists, DELETE forgets."""
    return _guarded(lambda: _links(method.upper(), route, query, body))


def sync(body: bytes, query: Mapping[str, str] | None = None) -> ApiResponse:
    """``POST /api/sync[?async=true]``: reconcile whole groups from a full vault listing.

    200 with the result when it covers at most ``KVLINK_SYNC_ASYNC_GROUPS`` groups; otherwise (or
    with ``?async=true``) 202 with a ``Location`` to poll, and the sync runs in ``run_sync_job``.
    """
    return _guarded(lambda: _sync(body, query or {}))


def sync_status(job_id: str) -> ApiResponse:
    """``GET /api/sync/{id}``: a queued sync's status; when done, the synchronous answer as ``result``."""
    return _guarded(lambda: _sync_status(job_id))


def audit_latest() -> ApiResponse:
    """``GET /api/audit/latest``: the newest audit report (summary and findings)."""
    return _guarded(_audit_latest)


def _audit_latest() -> ApiResponse:
    from .app import get_engine

    report = get_engine().registry.latest_report()
    if report is None:
        raise RequestError(404, "NoAuditYet", "no audit has run yet; the nightly audit runs on KVLINK_AUDIT_SCHEDULE")
    return ApiResponse(200, report)


def report() -> ApiResponse:
    """``GET /api/report``: the estate report page (HTML); errors stay JSON."""
    return _guarded(_report)


def _report() -> ApiResponse:
    from .app import get_engine, report_page

    return ApiResponse(200, report_page(get_engine()), PAGE_HEADERS, mimetype="text/html")


def health() -> ApiResponse:
    """``GET /api/health``: alive, which version, and whether the settings parse (nothing else)."""
    from .settings import get_settings

    try:
        get_settings()
    except ConfigError:
        return ApiResponse(503, {"status": "misconfigured", "version": __version__})
    return ApiResponse(200, {"status": "ok", "version": __version__})


# -- routes -------------------------------------------------------------------------------
def _links(method: str, route: Mapping[str, str], query: Mapping[str, str], body: bytes) -> ApiResponse:
    from . import linking
    from .app import get_engine

    parts = [route.get(k) for k in ("organization", "project", "groupId")]
    if method == "POST":
        if any(parts):
            raise RequestError(405, "MethodNotAllowed", "POST goes to /api/links, without a path")
        engine = get_engine()
        request = linking.LinkRequest.from_json(_json_body(body), engine.settings)
        result = linking.link_group(engine, request)
        return ApiResponse(201 if result.created else 200, result.as_json())
    if method == "GET":
        engine = get_engine()
        if any(parts):
            return _one_link(engine, parts)
        found = linking.list_links(
            engine, vault=query.get("vault") or None, organization=query.get("organization") or None
        )
        return ApiResponse(200, {"links": [linking.link_json(link) for link in found]})
    if method == "DELETE":
        if not all(parts):
            raise RequestError(405, "MethodNotAllowed", "DELETE needs /api/links/{organization}/{project}/{groupId}")
        organization, project, group_id = (str(p) for p in parts)
        linking.unlink(get_engine(), organization, project, group_id)
        return ApiResponse(204)
    raise RequestError(405, "MethodNotAllowed", f"{method} is not supported on /api/links")


def _one_link(engine: Any, parts: list[str | None]) -> ApiResponse:
    from . import linking
    from .model import GroupKey
    from .names import check_organization

    if not all(parts):
        raise RequestError(404, "NotFound", "use /api/links or /api/links/{organization}/{project}/{groupId}")
    organization, project, group_id = (str(p) for p in parts)
    if problem := check_organization(organization):
        raise RequestError(400, "InvalidField", problem, field="organization")
    link = engine.registry.find_link(GroupKey(organization.lower(), linking.parse_group_id(group_id)))
    if link is None or link.project.lower() != project.lower():
        raise RequestError(404, "LinkNotFound", f"group {organization}/{group_id} is not linked in {project!r}")
    return ApiResponse(200, {"link": linking.link_json(link)})


def _sync(body: bytes, query: Mapping[str, str]) -> ApiResponse:
    from . import jobs, linking
    from .app import get_engine, get_sync_queue

    asked = _query_flag(query, "async")
    engine = get_engine()
    request = linking.SyncRequest.from_json(_json_body(body), engine.settings)
    links = linking.links_to_sync(engine, request)  # 404 now, not in a job
    if asked or len(links) > engine.settings.sync_async_groups:
        job = jobs.submit(engine, get_sync_queue(), request, total=len(links))
        headers = {"Location": f"/api/sync/{job['id']}", "Retry-After": jobs.RETRY_AFTER}
        return ApiResponse(202, job, headers)
    return ApiResponse(200, linking.sync(engine, request, links=links).as_json())


def _sync_status(job_id: str) -> ApiResponse:
    from . import jobs
    from .app import get_engine

    job = jobs.status(get_engine(), job_id)
    headers = {"Retry-After": jobs.RETRY_AFTER} if job["status"] in ("queued", "running") else {}
    return ApiResponse(200, job, headers)


def _query_flag(query: Mapping[str, str], name: str) -> bool:
    value = (query.get(name) or "").strip().lower()
    if value in ("", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes"):
        return True
    raise RequestError(400, "InvalidQuery", f"?{name}= takes true or false, not {value!r}", field=name)


def _json_body(body: bytes) -> Any:
    if len(body) > MAX_BODY:
        raise RequestError(413, "BodyTooLarge", f"the request body is {len(body)} bytes; the limit is {MAX_BODY}")
    if not body.strip():
        raise RequestError(400, "InvalidBody", "the request body is empty; send a JSON object")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as err:
        raise RequestError(400, "InvalidJson", f"the request body is not valid JSON: {err}") from None
    except RecursionError:  # thousands of nested brackets: hostile, not an internal error
        raise RequestError(400, "InvalidJson", "the request body nests too deeply") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- errors -------------------------------------------------------------------------------
def _guarded(handler: Callable[[], ApiResponse]) -> ApiResponse:
    try:
        return handler()
    except KvLinkError as err:
        return error_response(err)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        logger.exception("Unexpected error handling an API request (incident %s)", incident)
        return _error(500, "InternalError", f"unexpected error; the function logs have incident {incident}")


def error_response(err: KvLinkError) -> ApiResponse:
    """The precise status for each kind of failure."""
    if isinstance(err, RequestError):
        return _error(err.status, err.code, str(err), field=err.field, details=err.details)
    if isinstance(err, TransientError):
        headers = {"Retry-After": str(math.ceil(err.retry_after))} if err.retry_after is not None else {}
        if err.system in ("devops", "keyvault"):
            if err.status == 429:
                return _error(429, "UpstreamThrottled", str(err), headers=headers)
            return _error(502, "UpstreamUnavailable", str(err), headers=headers)
        return _error(503, "Busy", str(err), headers=headers or {"Retry-After": "5"})
    if isinstance(err, UpstreamError):
        if err.system == "keyvault" and err.status == 404:
            return _error(404, "VaultNotFound", str(err), field="vault")
        return _error(502, "UpstreamRejected", str(err))
    if isinstance(err, ConfigError):
        logger.error("%s", err)
        names = ", ".join(err.settings) or "see the function logs"
        return _error(
            500,
            "ConfigurationError",
            f"kvlink's settings are invalid ({names}); the function logs say why",
            details={"settings": list(err.settings)},
        )
    return _error(500, "InternalError", str(err))


def _error(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> ApiResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    error.update(details or {})
    return ApiResponse(status, {"error": error}, headers or {})
