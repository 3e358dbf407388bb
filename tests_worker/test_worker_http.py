"""The HTTP API as a caller sees it through the host and the worker: routes, status, headers, body."""

from __future__ import annotations

import json

import pytest

from kvlink_core import __version__

pytestmark = pytest.mark.integration

KEY = {"x-functions-key": "not-checked-by-the-worker"}  # the host checks it before the worker runs


def post_link(worker, estate, **overrides):
    return worker.http(
        "POST",
        "links",
        headers={**KEY, "Content-Type": "application/json"},
        body=json.dumps(estate.link_body(**overrides)).encode(),
    )


class TestLinks:
    def test_link_list_show_unlink(self, worker, estate, app_settings):
        """POST creates and links the group (201); GET lists it, by query and by path; DELETE forgets it (204)."""
        for name in ("db-password", "api-key"):
            estate.kv.set_secret(estate.vault, name)

        function, answer = post_link(worker, estate)
        assert function == "links"
        assert answer.status == 201, answer.body
        assert answer.headers["content-type"] == "application/json"
        created = answer.json()
        group_id = created["link"]["groupId"]
        assert estate.names(group_id) == ["api-key", "db-password"]

        _, listed = worker.http("GET", "links", query={"organization": estate.org, "vault": ""}, headers=KEY)
        assert listed.status == 200
        assert [link["groupId"] for link in listed.json()["links"]] == [group_id]

        path = f"links/{estate.org}/{estate.project}/{group_id}"
        _, shown = worker.http("GET", path, headers=KEY)
        assert shown.status == 200
        assert shown.json()["link"] == created["link"]

        function, gone = worker.http("DELETE", path, headers=KEY)
        assert (function, gone.status, gone.body) == ("links", 204, b"")
        _, missing = worker.http("GET", path, headers=KEY)
        assert missing.status == 404
        assert missing.json()["error"]["code"] == "LinkNotFound"
        assert estate.names(group_id) == ["api-key", "db-password"]  # unlinking leaves the group alone

    @pytest.mark.parametrize(
        ("body", "code"),
        [(b"", "InvalidBody"), (b"{not json", "InvalidJson"), (b"{}", "InvalidField")],
        ids=["empty", "not-json", "no-fields"],
    )
    def test_bad_body_is_400_json(self, worker, estate, app_settings, body, code):
        """A bad request body is a 400 with a JSON error naming what is wrong (an empty body arrives as no body)."""
        _, answer = worker.http("POST", "links", headers=KEY, body=body)
        assert answer.status == 400
        assert answer.json()["error"]["code"] == code

    def test_post_with_a_path_is_405(self, worker, estate, app_settings):
        """The route takes POST with a path (optional segments), and kvlink refuses it precisely."""
        function, answer = worker.http("POST", f"links/{estate.org}/{estate.project}/7", headers=KEY, body=b"{}")
        assert function == "links"
        assert answer.status == 405
        assert answer.json()["error"]["code"] == "MethodNotAllowed"

    def test_methods_outside_the_route_never_reach_the_worker(self, worker):
        """PUT is not among the route's methods: the host answers 404 itself."""
        with pytest.raises(LookupError):
            worker.route("PUT", "links")
        with pytest.raises(LookupError):
            worker.route("GET", "sync")

    def test_upstream_throttling_keeps_retry_after(self, worker, estate, app_engine):
        """Azure DevOps throttling beyond the retry budget is a 429 whose Retry-After reaches the caller."""
        estate.kv.set_secret(estate.vault, "db-password")
        estate.ado.inject(429, method="GET", retry_after=90, times=5)

        _, answer = post_link(worker, estate)

        assert answer.status == 429
        assert answer.headers["Retry-After"] == "90"
        assert answer.json()["error"]["code"] == "UpstreamThrottled"


class TestOtherRoutes:
    def test_sync_reconciles_the_vault(self, worker, estate, app_settings):
        """POST /api/sync maps a secret no event announced."""
        estate.kv.set_secret(estate.vault, "db-password")
        group = estate.group("payments-kv", ["db-password"])
        estate.link(estate.engine(), group)
        estate.kv.set_secret(estate.vault, "api-key")

        function, answer = worker.http("POST", "sync", headers=KEY, body=json.dumps({"vault": estate.vault}).encode())

        assert (function, answer.status) == ("sync", 200)
        assert estate.names(group) == ["api-key", "db-password"]

    def test_health_is_anonymous_and_says_ok(self, worker, app_settings):
        """GET /api/health needs no key and answers status and version only."""
        function, answer = worker.http("GET", "health")
        assert (function, answer.status) == ("health", 200)
        assert answer.json() == {"status": "ok", "version": __version__}

    def test_report_page_keeps_its_charset_and_headers(self, worker, estate, app_settings):
        """The HTML page arrives as text/html; charset=utf-8 with its security headers; JSON stays application/json.

        The worker writes Content-Type itself from mimetype and charset, adding the charset for text/*
        only (azure.functions http.py, HttpResponseConverter.encode); JSON is UTF-8 by definition (RFC 8259).
        """
        function, answer = worker.http("GET", "report", headers=KEY)
        assert (function, answer.status) == ("report", 200)
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.body.decode("utf-8").lstrip().lower().startswith("<!doctype html>")

    def test_audit_latest_after_a_timer_tick(self, worker, estate, app_settings):
        """What the nightly audit stored is what GET /api/audit/latest answers."""
        group = estate.group("payments-kv", [])
        estate.link(estate.engine(), group)
        estate.kv.set_secret(estate.vault, "db-password")
        assert worker.succeeded(worker.timer("nightly_audit", past_due=False))

        function, answer = worker.http("GET", "audit/latest", headers=KEY)

        assert (function, answer.status) == ("audit_latest", 200)
        report = answer.json()
        assert estate.org in json.dumps(report)
        assert estate.names(group) == ["db-password"]
