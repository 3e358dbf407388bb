"""The HTTP routes, called with real azure.functions.HttpRequest objects against the stand-ins."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

import function_app
from kvlink_core import __version__
from kvlink_core import app as kvlink_app

pytestmark = pytest.mark.integration


def request(method: str, route: str, body=None, *, params=None, raw: bytes | None = None) -> func.HttpRequest:
    """What the Functions host builds for ``/api/{route}``, with route parameters filled in."""
    parts = route.split("/")
    route_params = {}
    if parts[0] == "links" and len(parts) == 4:
        route_params = dict(zip(("organization", "project", "groupId"), parts[1:], strict=True))
    payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{route}",
        headers={"Content-Type": "application/json"},
        params=params or {},
        route_params=route_params,
        body=payload,
    )


def call(fn, req: func.HttpRequest) -> tuple[int, dict | None, func.HttpResponse]:
    response = fn(req)
    text = response.get_body().decode()
    return response.status_code, (json.loads(text) if text else None), response


@pytest.fixture
def api(app_engine):
    """The routes use the estate's engine (retries tuned for tests) and its settings."""
    return app_engine


def link_body(estate, **overrides) -> dict:
    return estate.link_body(**overrides)


def post_link(estate, **overrides):
    return call(function_app.links, request("POST", "links", link_body(estate, **overrides)))


def seed(estate, *names, **attrs) -> None:
    for name in names:
        estate.kv.set_secret(estate.vault, name, **attrs)


class TestRegistration:
    def test_public_function_names_and_routes(self, registered):
        """The HTTP functions are registered with the public names, routes and auth levels."""
        functions = registered
        assert {"on_secret_event", "links", "sync", "health"} <= set(functions)
        routes = {name: b for name, fn in functions.items() for b in fn["bindings"] if b["type"] == "httpTrigger"}
        assert routes["links"]["route"] == "links/{organization?}/{project?}/{groupId?}"
        assert routes["sync"]["route"] == "sync"
        assert routes["health"]["authLevel"].lower() == "anonymous"
        assert routes["links"]["authLevel"].lower() == "function"


class TestCreate:
    def test_creates_a_key_vault_group(self, estate, api):
        """POST creates the group as the UI would, fills it with matching names, registers the link: 201."""
        seed(estate, "db-password", "api-key", "legacy-token")
        estate.kv.set_secret(estate.vault, "disabled-one", enabled=False)

        status, body, _ = post_link(estate, exclude=["legacy-*"])

        assert status == 201
        assert body["applied"] is True and body["created"] is True
        assert body["plan"] == {"add": ["api-key", "db-password"], "remove": [], "unchanged": 0}
        group_id = body["link"]["groupId"]
        group = estate.ado.group(estate.org, group_id)
        assert group["type"] == "AzureKeyVault"
        assert group["providerData"]["vault"] == estate.vault
        assert group["providerData"]["serviceEndpointId"] == estate.endpoint_id
        assert group["variableGroupProjectReferences"][0]["projectReference"] == {
            "id": estate.project_id,
            "name": estate.project,
        }
        assert sorted(group["variables"]) == ["api-key", "db-password"]
        assert body["link"] == {
            "organization": estate.org,
            "project": estate.project,
            "groupId": group_id,
            "group": "payments-kv",
            "vault": estate.vault,
            "include": ["*"],
            "exclude": ["legacy-*"],
            "tags": {},
            "mode": "merge",
            "keepExpired": True,
            "kind": "linked",
        }
        assert [link.group_id for link in api.registry.links_for_vault(estate.vault)] == [group_id]

    def test_service_connection_by_id(self, estate, api):
        """serviceConnection may be the connection's id instead of its name."""
        seed(estate, "db-password")
        status, body, _ = post_link(estate, serviceConnection=estate.endpoint_id)
        assert status == 201
        assert estate.ado.group(estate.org, body["link"]["groupId"])["providerData"]["serviceEndpointId"] == (
            estate.endpoint_id
        )

    def test_new_secrets_then_follow_by_event(self, estate, api):
        """Once linked through the API, the group follows Event Grid events."""
        from standins.events import as_trigger_input, secret_event

        seed(estate, "db-password")
        _, body, _ = post_link(estate)
        version = estate.kv.set_secret(estate.vault, "api-key")
        function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "api-key", version)))
        assert estate.names(body["link"]["groupId"]) == ["api-key", "db-password"]


class TestAdoptAndRepeat:
    def test_adopts_existing_group(self, estate, api):
        """An existing Key Vault group on the same vault is adopted and filled in: 200."""
        seed(estate, "db-password", "api-key")
        group = estate.group("payments-kv", ["db-password", "manual-entry"])
        estate.kv.set_secret(estate.vault, "manual-entry")

        status, body, _ = post_link(estate, serviceConnection=None)

        assert status == 200
        assert body["link"]["groupId"] == group
        assert body["plan"] == {"add": ["api-key"], "remove": [], "unchanged": 2}
        assert body["applied"] is True and body["created"] is False
        assert estate.names(group) == ["api-key", "db-password", "manual-entry"]

    def test_repeating_changes_nothing_and_says_so(self, estate, api):
        """The same request twice: the second writes nothing and says nothing changed."""
        seed(estate, "db-password")
        post_link(estate)
        writes = len(estate.ado.writes(estate.org))

        status, body, _ = post_link(estate)

        assert status == 200
        assert body["applied"] is False and body["changed"] is False
        assert body["plan"]["add"] == [] and body["plan"]["remove"] == []
        assert "nothing changed" in body["message"]
        assert len(estate.ado.writes(estate.org)) == writes

    def test_policy_change(self, estate, api):
        """Changing the policy to mirror with an exclude removes what no longer matches."""
        seed(estate, "db-password", "api-key", "legacy-token")
        _, first, _ = post_link(estate)
        group = first["link"]["groupId"]

        status, body, _ = post_link(estate, mode="mirror", exclude=["legacy-*"])

        assert status == 200
        assert body["plan"]["remove"] == ["legacy-token"]
        assert estate.names(group) == ["api-key", "db-password"]
        (link,) = api.registry.links_for_vault(estate.vault)
        assert link.policy.mode == "mirror" and link.policy.exclude == ("legacy-*",)


class TestDryRun:
    def test_dry_run_create_writes_nothing_anywhere(self, estate, api):
        """dryRun shows the plan of a create, creates no group and registers no link."""
        seed(estate, "db-password")
        status, body, _ = post_link(estate, dryRun=True)
        assert status == 200
        assert body["link"]["groupId"] is None
        assert body["plan"]["add"] == ["db-password"]
        assert body["applied"] is False and body["created"] is False
        assert estate.ado.writes(estate.org) == []
        assert api.registry.links_for_vault(estate.vault) == []

    def test_report_mode_adopt_writes_nothing(self, estate, api, monkeypatch):
        """KVLINK_MODE=report makes every request a dry run."""
        engine = estate.engine(KVLINK_MODE="report")
        monkeypatch.setattr(kvlink_app, "get_engine", lambda: engine)
        seed(estate, "db-password", "api-key")
        estate.group("payments-kv", ["db-password"])
        status, body, _ = post_link(estate)
        assert status == 200
        assert body["plan"]["add"] == ["api-key"] and body["applied"] is False
        assert estate.ado.writes(estate.org) == []
        assert engine.registry.links_for_vault(estate.vault) == []


class TestListAndUnlink:
    def test_list_filter_and_unlink(self, estate, api):
        """GET lists links by vault/organization; DELETE forgets a link (204), then 404; the group stays."""
        seed(estate, "db-password")
        _, body, _ = post_link(estate)
        group = body["link"]["groupId"]

        status, listed, _ = call(function_app.links, request("GET", "links", params={"vault": estate.vault}))
        assert status == 200 and [link["groupId"] for link in listed["links"]] == [group]
        status, listed, _ = call(function_app.links, request("GET", "links", params={"organization": "other-org"}))
        assert listed == {"links": []}
        status, one, _ = call(function_app.links, request("GET", f"links/{estate.org}/{estate.project}/{group}"))
        assert status == 200 and one["link"]["groupId"] == group

        status, body, _ = call(function_app.links, request("DELETE", f"links/{estate.org}/{estate.project}/{group}"))
        assert (status, body) == (204, None)
        status, body, _ = call(function_app.links, request("DELETE", f"links/{estate.org}/{estate.project}/{group}"))
        assert status == 404 and body["error"]["code"] == "LinkNotFound"
        assert estate.names(group) == ["db-password"]


class TestSync:
    def test_vault_linked_to_groups_in_two_projects(self, estate, api):
        """Syncing a vault lists it once and reconciles every linked group, in every project."""
        seed(estate, *(f"s-{i:02d}" for i in range(30)))
        estate.ado.add_project(estate.org, "Platform")
        estate.ado.add_service_endpoint(estate.org, "Platform", "kv-connection")
        _, a, _ = post_link(estate)
        _, b, _ = post_link(estate, project="Platform", group="platform-kv")
        for i in range(30, 33):
            estate.kv.set_secret(estate.vault, f"s-{i:02d}")  # no events: the sync must find them
        estate.kv.delete_secret(estate.vault, "s-00")
        estate.kv.reset_calls()

        status, body, _ = call(function_app.sync, request("POST", "sync", {"vault": estate.vault}))

        assert status == 200
        assert [g["outcome"] for g in body["groups"]] == ["applied", "applied"]
        for g in body["groups"]:
            assert g["plan"]["add"] == ["s-30", "s-31", "s-32"] and g["plan"]["remove"] == ["s-00"]
        pages = [c for c in estate.kv.calls if c.path.endswith("/secrets") and c.status == 200]
        assert len(pages) == 2  # 32 secrets, listed once for both groups
        for group in (a["link"]["groupId"], b["link"]["groupId"]):
            assert estate.names(group) == [f"s-{i:02d}" for i in range(1, 33)]

    def test_one_group_and_dry_run(self, estate, api):
        """A group sync on a dry run reports the plan and writes nothing."""
        seed(estate, "db-password")
        _, body, _ = post_link(estate)
        group = body["link"]["groupId"]
        estate.kv.set_secret(estate.vault, "api-key")
        before = len(estate.ado.writes(estate.org))

        payload = {"organization": estate.org, "project": estate.project, "groupId": group, "dryRun": True}
        status, body, _ = call(function_app.sync, request("POST", "sync", payload))

        assert status == 200 and body["dryRun"] is True
        assert body["groups"][0]["outcome"] == "planned"
        assert body["groups"][0]["plan"]["add"] == ["api-key"]
        assert len(estate.ado.writes(estate.org)) == before

    def test_mass_removal_guard_and_force(self, estate, api):
        """A sync that would remove most names is refused with the plan shown; force applies it."""
        seed(estate, *(f"s-{i}" for i in range(6)))
        _, body, _ = post_link(estate)
        group = body["link"]["groupId"]
        for i in range(4):
            estate.kv.delete_secret(estate.vault, f"s-{i}")

        status, body, _ = call(function_app.sync, request("POST", "sync", {"vault": estate.vault}))
        assert status == 200
        refused = body["groups"][0]
        assert refused["outcome"] == "refused"
        assert refused["plan"]["remove"] == ["s-0", "s-1", "s-2", "s-3"]
        assert "KVLINK_MAX_REMOVAL_FRACTION" in refused["message"]
        assert len(estate.names(group)) == 6

        status, body, _ = call(function_app.sync, request("POST", "sync", {"vault": estate.vault, "force": True}))
        assert body["groups"][0]["outcome"] == "applied"
        assert estate.names(group) == ["s-4", "s-5"]

    def test_link_refused_by_the_guard_keeps_the_old_policy(self, estate, api):
        """A policy change that would empty most of the group is refused (409) and not saved."""
        seed(estate, *(f"app-{i}" for i in range(5)), "db-password")
        post_link(estate)
        status, body, _ = post_link(estate, mode="mirror", include=["db-*"])
        assert status == 409 and body["error"]["code"] == "MassRemovalRefused"
        assert len(body["error"]["plan"]["remove"]) == 5
        (link,) = api.registry.links_for_vault(estate.vault)
        assert link.policy.mode == "merge"
        status, body, _ = post_link(estate, mode="mirror", include=["db-*"], force=True)
        assert status == 200 and body["applied"] is True


class TestErrors:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"vault": "kv"}, "vault"),
            ({"vault": "kv--double"}, "vault"),
            ({"organization": "https://evil.example.com"}, "organization"),
            ({"organization": "cоntoso"}, "organization"),
            ({"project": "a/b"}, "project"),
            ({"group": ""}, "group"),
            ({"include": ["db_*"]}, "include"),
            ({"include": "db-*"}, "include"),
            ({"include": []}, "include"),
            ({"exclude": ["../x"]}, "exclude"),
            ({"mode": "sync"}, "mode"),
            ({"keepExpired": "yes"}, "keepExpired"),
            ({"tags": ["env"]}, "tags"),
            ({"dryRun": 1}, "dryRun"),
            ({"inclde": ["*"]}, "inclde"),
            ({"group": 12}, "group"),
        ],
        ids=str,
    )
    def test_invalid_fields(self, estate, api, overrides, field):
        """Each bad field is a 400 naming the field; nothing is called."""
        status, body, _ = post_link(estate, **overrides)
        assert status == 400
        assert body["error"]["field"] == field
        assert estate.ado.calls == []

    @pytest.mark.parametrize(
        "raw",
        [b"{not json", b"[1, 2]", b"", b"\xff\xfe", b'{"organization": NaN}'],
        ids=["syntax", "array", "empty", "bytes", "nan"],
    )
    def test_invalid_bodies(self, estate, api, raw):
        """Bodies that are not a JSON object are a 400."""
        status, body, _ = call(function_app.links, request("POST", "links", raw=raw))
        assert status == 400
        assert body["error"]["code"] in {"InvalidJson", "InvalidBody"}

    def test_body_too_large(self, estate, api):
        """A body over 64 KiB is a 413 and is not parsed."""
        status, body, _ = call(function_app.links, request("POST", "links", raw=b"{" + b" " * 70_000 + b"}"))
        assert status == 413 and body["error"]["code"] == "BodyTooLarge"

    @pytest.mark.parametrize(
        ("overrides", "code"),
        [
            ({"organization": "not-ours"}, "OrganizationNotAllowed"),
            ({"vault": "kv-not-allowed"}, "VaultNotAllowed"),
        ],
    )
    def test_outside_allow_lists(self, estate, api, overrides, code):
        """Organizations and vaults outside the allow-lists are a 403."""
        status, body, _ = post_link(estate, **overrides)
        assert status == 403 and body["error"]["code"] == code

    def test_unknown_project(self, estate, api):
        """An unknown project is a 404 on the project field."""
        status, body, _ = post_link(estate, project="Nope")
        assert status == 404 and body["error"]["field"] == "project"

    def test_unknown_service_connection(self, estate, api):
        """An unknown service connection is a 404; without one, a new group is a 400."""
        seed(estate, "db-password")
        status, body, _ = post_link(estate, serviceConnection="nope")
        assert status == 404 and body["error"]["code"] == "ServiceConnectionNotFound"
        status, body, _ = post_link(estate, serviceConnection=None)
        assert status == 400 and body["error"]["field"] == "serviceConnection"

    def test_group_not_key_vault(self, estate, api):
        """A plain group with the requested name is a 409."""
        estate.ado.add_group(estate.org, estate.project, "payments-kv", variables={"a": {"value": "1"}})
        status, body, _ = post_link(estate)
        assert status == 409 and body["error"]["code"] == "GroupNotKeyVault"

    def test_group_on_another_vault(self, estate, api):
        """A Key Vault group linked to another vault is a 409."""
        estate.group("payments-kv", ["a"], vault="kv-other")
        status, body, _ = post_link(estate)
        assert status == 409 and body["error"]["code"] == "GroupLinkedToAnotherVault"

    def test_no_matching_secret(self, estate, api):
        """Creating a group no secret matches is a 409: Azure DevOps refuses empty groups."""
        seed(estate, "db-password")
        status, body, _ = post_link(estate, include=["app-*"])
        assert status == 409 and body["error"]["code"] == "NoMatchingSecrets"

    def test_upstream_throttling_is_429_with_retry_after(self, estate, api):
        """Azure DevOps throttling beyond the retry budget is a 429 with its Retry-After."""
        estate.ado.inject(429, method="GET", retry_after=90, times=5)
        status, body, response = post_link(estate)
        assert status == 429 and body["error"]["code"] == "UpstreamThrottled"
        assert response.headers["Retry-After"] == "90"

    def test_upstream_failure_is_502(self, estate, api):
        """Azure DevOps failing persistently is a 502."""
        estate.ado.inject(503, method="GET", times=50)
        status, body, _ = post_link(estate)
        assert status == 502 and body["error"]["code"] == "UpstreamUnavailable"

    def test_busy_group_is_503(self, estate, api):
        """A group whose lease stays busy is a 503 with Retry-After."""
        seed(estate, "db-password")
        _, body, _ = post_link(estate)
        from kvlink_core.model import GroupKey

        engine = estate.engine(max_wait=0.3)
        assert engine.registry.try_acquire(GroupKey(estate.org, body["link"]["groupId"])) is not None
        api.leases.max_wait = 0.3
        status, body, response = call(function_app.sync, request("POST", "sync", {"vault": estate.vault}))
        assert status == 503 and "Retry-After" in response.headers

    def test_no_stack_traces_or_credentials(self, estate, api, monkeypatch):
        """An unexpected failure is a 500 with an incident id, no trace and no credential."""

        def boom(*args, **kwargs):
            raise RuntimeError(f"kaboom with {estate.env['AZURE_DEVOPS_PAT']}")

        monkeypatch.setattr(api.devops, "list_groups", boom)
        status, body, _ = post_link(estate)
        text = json.dumps(body)
        assert status == 500 and body["error"]["code"] == "InternalError"
        assert "Traceback" not in text and "kaboom" not in text
        assert estate.env["AZURE_DEVOPS_PAT"] not in text

    @pytest.mark.parametrize("path", ["links/org/proj/abc", "links/org/proj/-1", "links/org/proj/٣"])
    def test_bad_group_ids_in_the_path(self, estate, api, path):
        """Route parameters are checked like body fields."""
        status, body, _ = call(function_app.links, request("DELETE", path))
        assert status == 400 and body["error"]["field"] in {"groupId", "organization"}

    def test_method_not_allowed(self, estate, api):
        """POST with a path is a 405."""
        status, body, _ = call(function_app.links, request("POST", f"links/{estate.org}/p/1", {}))
        assert status == 405 and body["error"]["code"] == "MethodNotAllowed"


class TestHealth:
    def test_health(self, estate, api):
        """Health says ok and the version, and nothing else."""
        status, body, _ = call(function_app.health, request("GET", "health"))
        assert (status, body) == (200, {"status": "ok", "version": __version__})

    def test_health_with_bad_settings(self, monkeypatch):
        """With unusable settings, health is a 503 that still reveals nothing."""
        monkeypatch.delenv("KVLINK_DEVOPS_ORGS", raising=False)
        kvlink_app.reset()
        status, body, _ = call(function_app.health, request("GET", "health"))
        assert status == 503 and set(body) == {"status", "version"}


def reset_counts(estate) -> None:
    estate.kv.reset_calls()
    estate.ado.reset_calls()
    estate.table_calls.reset()


class TestCallCounts:
    """What a link and a sync cost, against the minimum each needs."""

    @staticmethod
    def devops_calls(estate) -> list[tuple[str, str]]:
        return [(c.method, c.path.split("/_apis/")[-1]) for c in estate.ado.calls]

    @staticmethod
    def vault_pages(estate) -> int:
        return sum(1 for c in estate.kv.calls if c.status == 200)

    def test_create_costs(self, estate, api):
        """A create: 3 lookups and one POST in Azure DevOps, one vault listing, one Table write."""
        seed(estate, *(f"s-{i:02d}" for i in range(30)))
        api.registry.links_for_vault(estate.vault)  # open the table once, as a warm process has
        estate.kv.reset_calls()
        estate.table_calls.reset()
        post_link(estate)
        assert self.devops_calls(estate) == [
            ("GET", "distributedtask/variablegroups"),
            ("GET", "projects/Payments"),
            ("GET", "serviceendpoint/endpoints"),
            ("POST", "distributedtask/variablegroups"),
        ]
        assert self.vault_pages(estate) == 2  # 30 secrets, 25 per page
        assert estate.table_calls.by_method == {"PATCH": 1}  # link saved with its write marker

    def test_adopt_and_vault_sync_costs(self, estate, api):
        """Adopt: find + read under the lease + write; sync: one listing for all groups, one read each."""
        seed(estate, *(f"s-{i:02d}" for i in range(30)))
        post_link(estate)
        estate.ado.add_project(estate.org, "Platform")
        estate.ado.add_service_endpoint(estate.org, "Platform", "kv-connection")
        post_link(estate, project="Platform", group="platform-kv")
        call(function_app.sync, request("POST", "sync", {"vault": estate.vault}))  # warm: opens the lease table
        estate.kv.set_secret(estate.vault, "new-one")
        reset_counts(estate)

        post_link(estate)  # adopt the first group again: it is missing new-one
        assert [m for m, _ in self.devops_calls(estate)] == ["GET", "GET", "PUT"]
        assert self.vault_pages(estate) == 2
        # link lookup, lease create + renewal before the PUT + release, write marker, link upsert
        assert estate.table_calls.by_method == {"GET": 1, "POST": 1, "PUT": 1, "DELETE": 1, "PATCH": 2}

        reset_counts(estate)
        call(function_app.sync, request("POST", "sync", {"vault": estate.vault}))
        assert sorted(m for m, _ in self.devops_calls(estate)) == ["GET", "GET", "PUT"]  # only platform-kv changes
        assert self.vault_pages(estate) == 2  # listed once for both groups
        # links query; per group lease create + release; for the changed one, renewal + write marker
        assert estate.table_calls.by_method == {"GET": 1, "POST": 2, "PUT": 1, "DELETE": 2, "PATCH": 1}


class TestMarker:
    """The link's policy travels in the group's description (kvlink_core.marker); people's text stays."""

    @staticmethod
    def edit_description(estate, group: int, change) -> None:
        """A person edits the description in the Library (the group's and its project reference's)."""

        def edit(g: dict) -> None:
            for holder in (g, *g["variableGroupProjectReferences"]):
                holder["description"] = change(holder["description"])

        estate.ado.edit_group(estate.org, group, edit)

    def test_peoples_text_survives_every_kvlink_write(self, estate, api):
        from standins.events import as_trigger_input, secret_event

        seed(estate, "app-1")
        _, body, _ = post_link(estate, include=["app-*"])
        group = body["link"]["groupId"]
        first = "[kvlink v1 mode=merge include=app-* expired=keep]"
        assert estate.ado.group(estate.org, group)["description"] == (
            f"Secrets of Key Vault {estate.vault}, kept in step by kvlink\n{first}"
        )
        mine = f"Owned by payments.\n{first}\nOn call: #payments"
        self.edit_description(estate, group, lambda _: mine)

        version = estate.kv.set_secret(estate.vault, "app-2")  # an event write
        function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "app-2", version)))
        stored = estate.ado.group(estate.org, group)
        assert estate.names(group) == ["app-1", "app-2"]
        assert stored["description"] == mine
        assert [r["description"] for r in stored["variableGroupProjectReferences"]] == [mine]

        # The marker deleted by hand comes back with the next write, after the person's text.
        self.edit_description(estate, group, lambda text: text.replace(f"{first}\n", ""))
        version = estate.kv.set_secret(estate.vault, "app-3")
        function_app.on_secret_event(as_trigger_input(secret_event(estate.vault, "app-3", version)))
        assert estate.ado.group(estate.org, group)["description"] == (
            f"Owned by payments.\nOn call: #payments\n{first}"
        )

        # A new policy replaces the marker where it stands: never a second one.
        status, _, _ = post_link(estate, include=["app-*"], exclude=["app-3"], serviceConnection=None)
        assert status == 200
        assert estate.ado.group(estate.org, group)["description"] == (
            "Owned by payments.\nOn call: #payments\n[kvlink v1 mode=merge include=app-* exclude=app-3 expired=keep]"
        )

    def test_adopting_in_step_writes_the_marker(self, estate, api):
        """Linking a group whose names are already right still writes the marker: it is the link's backup."""
        seed(estate, "db-password")
        group = estate.group("payments-kv", ["db-password"])

        status, body, _ = post_link(estate, serviceConnection=None)

        assert status == 200 and body["plan"]["add"] == [] and body["applied"] is True
        assert estate.ado.group(estate.org, group)["description"] == "[kvlink v1 mode=merge include=* expired=keep]"

    def test_a_policy_too_long_for_the_marker_is_refused_at_link_time(self, estate, api):
        seed(estate, "db-password")
        patterns = [f"team-{n:03d}-secrets-*" for n in range(50)]

        status, body, _ = post_link(estate, include=patterns)

        assert status == 400 and body["error"]["code"] == "PolicyTooLong"
        assert "too long to keep in the group's description" in body["error"]["message"]
        assert estate.ado.writes(estate.org) == [] and api.registry.links_for_vault(estate.vault) == []

    def test_a_description_with_no_room_for_the_marker_is_refused(self, estate, api):
        seed(estate, "db-password")
        group = estate.group("payments-kv", ["db-password"])
        self.edit_description(estate, group, lambda _: "x" * 1000)  # 1000 + the 46-character marker > 1024

        status, body, _ = post_link(estate, serviceConnection=None)

        assert status == 409 and body["error"]["code"] == "DescriptionTooLong"
        assert "shorten the description" in body["error"]["message"]
        assert estate.ado.writes(estate.org) == [] and api.registry.links_for_vault(estate.vault) == []

    def test_unlink_takes_the_marker_out_so_the_audit_does_not_link_again(self, estate, api):
        from kvlink_core.audit import run_audit

        seed(estate, "app-1")
        _, body, _ = post_link(estate, include=["app-*"])
        group = body["link"]["groupId"]
        self.edit_description(estate, group, lambda text: f"Team payments\n{text}")

        status, _, _ = call(function_app.links, request("DELETE", f"links/{estate.org}/{estate.project}/{group}"))

        assert status == 204
        stored = estate.ado.group(estate.org, group)
        text = f"Team payments\nSecrets of Key Vault {estate.vault}, kept in step by kvlink"
        assert stored["description"] == text
        assert estate.names(group) == ["app-1"]
        estate.kv.set_secret(estate.vault, "app-2")
        report = run_audit(api, store=False)
        assert not [f for f in report.findings if f.kind == "link-restored"]
        assert [link.kind for link in api.registry.links_for_vault(estate.vault)] == ["discovered"]
        assert estate.names(group) == ["app-1"]
