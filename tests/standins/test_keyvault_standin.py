"""The Key Vault stand-in, driven by the real azure-keyvault-secrets SecretClient."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets._shared import HttpChallengeCache

from standins.keyvault import DEFAULT_TOKEN, KeyVaultStandIn, static_credential
from standins.tls import ThrowawayCA

ClientFactory = Callable[..., SecretClient]


def _factory(kv: KeyVaultStandIn, ca: ThrowawayCA) -> ClientFactory:
    def make(vault: str, *, token: str = DEFAULT_TOKEN, **kwargs: Any) -> SecretClient:
        options: dict[str, Any] = {"retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}
        options.update(kwargs)
        return SecretClient(
            kv.vault_url(vault),
            static_credential(token),
            verify_challenge_resource=False,
            connection_verify=str(ca.bundle_path),
            **options,
        )

    return make


@pytest.fixture(scope="module")
def kv(ca: ThrowawayCA) -> Iterator[KeyVaultStandIn]:
    with KeyVaultStandIn(ssl_context=ca.server_context()) as server:
        # Settle the SDK's process-wide challenge cache for this port once, so tests that
        # count requests or skip matching ones never see the bare challenge request.
        server.create_vault("warmup")
        list(_factory(server, ca)("warmup").list_properties_of_secrets())
        yield server


@pytest.fixture
def stand_in(kv: KeyVaultStandIn) -> Iterator[KeyVaultStandIn]:
    kv.reset_calls()
    kv.reset_value_requests()
    kv.clear_faults()
    yield kv
    kv.clear_faults()


@pytest.fixture
def client(stand_in: KeyVaultStandIn, ca: ThrowawayCA) -> Iterator[ClientFactory]:
    made: list[SecretClient] = []
    make = _factory(stand_in, ca)

    def tracked(vault: str, **kwargs: Any) -> SecretClient:
        made.append(make(vault, **kwargs))
        return made[-1]

    yield tracked
    for secrets in made:
        secrets.close()


@pytest.fixture
def fresh(ca: ThrowawayCA) -> Iterator[KeyVaultStandIn]:
    """A stand-in on its own port: the SDK has no cached challenge for it yet."""
    with KeyVaultStandIn(ssl_context=ca.server_context()) as server:
        # The SDK caches challenges per host:port for the whole process, and the kernel may
        # hand this port out again to a later stand-in; forget it on both sides of the test.
        HttpChallengeCache.remove_challenge_for_url(server.base_url)
        yield server
        HttpChallengeCache.remove_challenge_for_url(server.base_url)


def _get(kv: KeyVaultStandIn, ca: ThrowawayCA, path: str, *, auth: bool = True) -> requests.Response:
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"} if auth else {}
    return requests.get(f"{kv.base_url}{path}", headers=headers, verify=str(ca.bundle_path), timeout=5)


# -- listing -------------------------------------------------------------------------


def test_lists_sixty_secrets_over_three_pages(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """Sixty secrets come back in name order over three pages linked by nextLink."""
    names = [f"app-secret-{i:02d}" for i in range(60)]
    for name in reversed(names):
        stand_in.set_secret("paging", name)

    listed = list(client("paging").list_properties_of_secrets())

    assert [p.name for p in listed] == names
    pages = [c for c in stand_in.calls if c.path == "/paging/secrets" and c.status == 200]
    assert len(pages) == 3
    assert ["$skiptoken" in c.query for c in pages] == [False, True, True]
    assert all(p.version is None and p.vault_url == "https://paging.vault.azure.net" for p in listed)
    stand_in.assert_no_value_reads()


def test_max_page_size_becomes_maxresults(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """``max_page_size`` travels as maxresults and is kept on every nextLink."""
    for i in range(7):
        stand_in.set_secret("small-pages", f"s{i}")

    listed = list(client("small-pages").list_properties_of_secrets(max_page_size=3))

    assert len(listed) == 7
    pages = [c for c in stand_in.calls if c.path == "/small-pages/secrets"]
    assert [c.query.get("maxresults") for c in pages] == ["3", "3", "3"]


def test_lists_versions_with_versioned_ids(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """Each of three versions is listed with its own versioned id."""
    versions = [stand_in.set_secret("versions", "Db-Password") for _ in range(3)]

    listed = list(client("versions").list_properties_of_secret_versions("db-password"))

    assert sorted(str(p.version) for p in listed) == sorted(versions)
    assert {p.name for p in listed} == {"Db-Password"}
    assert all(p.id == f"https://versions.vault.azure.net/secrets/Db-Password/{p.version}" for p in listed)
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in versions)


def test_attributes_round_trip(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """enabled, content type, tags, expiry, not-before and managed reach SecretProperties."""
    expires = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    not_before = datetime(2030, 1, 1, tzinfo=UTC)
    stand_in.set_secret(
        "attrs",
        "cert-backed",
        enabled=False,
        content_type="application/x-pkcs12",
        tags={"owner": "team-a", "kvlink": "sync"},
        expires=expires,
        not_before=not_before,
        managed=True,
    )
    stand_in.set_secret("attrs", "plain")

    props = {p.name: p for p in client("attrs").list_properties_of_secrets()}

    cert = props["cert-backed"]
    assert cert.enabled is False
    assert cert.content_type == "application/x-pkcs12"
    assert cert.tags == {"owner": "team-a", "kvlink": "sync"}
    assert cert.expires_on == expires
    assert cert.not_before == not_before
    assert cert.managed is True
    assert cert.recovery_level == "Recoverable+Purgeable"
    assert cert.recoverable_days == 90
    plain = props["plain"]
    assert (plain.enabled, plain.content_type, plain.tags, plain.expires_on, plain.managed) == (
        True,
        None,
        None,
        None,
        None,
    )
    assert isinstance(plain.created_on, datetime)


def test_list_item_shows_current_version_and_updates(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """The list item carries the newest version's attributes, including update_secret changes."""
    stand_in.set_secret("current", "rotated", content_type="old")
    stand_in.set_secret("current", "rotated", content_type="new", tags={"v": "2"})
    stand_in.update_secret("current", "rotated", enabled=False, tags=None, expires=1_900_000_000)

    (props,) = client("current").list_properties_of_secrets()

    assert (props.content_type, props.enabled, props.tags) == ("new", False, None)
    assert props.expires_on == datetime.fromtimestamp(1_900_000_000, UTC)


def test_deleted_secret_disappears_and_can_be_recovered(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """A soft-deleted secret leaves the list, its versions 404, and recovery brings it back."""
    stand_in.set_secret("deletes", "keep")
    stand_in.set_secret("deletes", "gone")
    secrets = client("deletes")

    stand_in.delete_secret("deletes", "GONE")

    assert [p.name for p in secrets.list_properties_of_secrets()] == ["keep"]
    with pytest.raises(ResourceNotFoundError) as info:
        list(secrets.list_properties_of_secret_versions("gone"))
    assert "A secret with (name/id) gone was not found in this key vault" in str(info.value)
    assert [d.name for d in secrets.list_deleted_secrets()] == ["gone"]
    with pytest.raises(ValueError, match="deleted but recoverable"):
        stand_in.set_secret("deletes", "gone")

    stand_in.recover_secret("deletes", "gone")
    assert stand_in.secret_names("deletes") == ["gone", "keep"]
    stand_in.delete_secret("deletes", "gone")
    stand_in.purge_secret("deletes", "gone")
    assert stand_in.deleted_secret_names("deletes") == []
    stand_in.assert_no_value_reads()


# -- authentication ------------------------------------------------------------------


def test_challenge_happens_once_then_bearer(fresh: KeyVaultStandIn, ca: ThrowawayCA) -> None:
    """The first request is challenged with 401; every later one carries the Bearer token."""
    fresh.set_secret("auth", "one")
    secrets = _factory(fresh, ca)("auth")

    list(secrets.list_properties_of_secrets())
    list(secrets.list_properties_of_secrets())

    assert [(c.status, c.auth_scheme) for c in fresh.calls] == [(401, ""), (200, "Bearer"), (200, "Bearer")]


def test_wrong_token_is_client_authentication_error(fresh: KeyVaultStandIn, ca: ThrowawayCA) -> None:
    """A token the vault does not accept ends in ClientAuthenticationError."""
    fresh.create_vault("auth")

    with pytest.raises(ClientAuthenticationError):
        list(_factory(fresh, ca)("auth", token="someone-elses-token").list_properties_of_secrets())

    # The bare challenge request, then one try with the refused token; no endless loop.
    assert [(c.status, c.auth_scheme) for c in fresh.calls] == [(401, ""), (401, "Bearer")]


def test_unauthenticated_request_gets_key_vault_challenge(stand_in: KeyVaultStandIn, ca: ThrowawayCA) -> None:
    """Without Authorization the answer is 401 with Key Vault's WWW-Authenticate challenge."""
    stand_in.create_vault("raw")

    response = _get(stand_in, ca, "/raw/secrets?api-version=7.5", auth=False)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", '
        'resource="https://vault.azure.net"'
    )
    assert response.json()["error"]["code"] == "Unauthorized"


# -- faults and retries --------------------------------------------------------------


def test_throttled_request_is_retried(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """An injected 429 with Retry-After 0 is retried by azure-core and the list succeeds."""
    stand_in.set_secret("throttle", "a")
    stand_in.inject(429, method="GET", path=r"^/throttle/secrets$", retry_after=0)

    assert [p.name for p in client("throttle").list_properties_of_secrets()] == ["a"]
    assert [c.status for c in stand_in.calls] == [429, 200]


def test_unavailable_second_page_is_retried(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """A 503 on page two is retried and the listing is complete."""
    for i in range(30):
        stand_in.set_secret("flaky", f"s{i:02d}")
    stand_in.inject(503, method="GET", path=r"^/flaky/secrets$", skip=1)

    listed = list(client("flaky").list_properties_of_secrets())

    assert len(listed) == 30
    assert [c.status for c in stand_in.calls] == [200, 503, 200]
    assert "$skiptoken" in stand_in.calls[1].query


def test_connection_reset_is_retried(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """A connection reset without an answer is retried by azure-core."""
    stand_in.set_secret("resets", "a")
    stand_in.inject(method="GET", path=r"^/resets/secrets$", reset=True)

    assert [p.name for p in client("resets").list_properties_of_secrets()] == ["a"]
    assert [c.status for c in stand_in.calls] == [0, 200]


def test_injected_faults_have_key_vault_error_bodies(stand_in: KeyVaultStandIn, ca: ThrowawayCA) -> None:
    """Injected 429, 500 and 503 answer with Key Vault error codes."""
    stand_in.create_vault("bodies")
    for status in (429, 500, 503):
        stand_in.inject(status, path=r"^/bodies/")
    codes = [_get(stand_in, ca, "/bodies/secrets?api-version=7.5").json()["error"]["code"] for _ in range(3)]
    assert codes == ["Throttled", "InternalServerError", "ServiceUnavailable"]


# -- permissions and the value guard -------------------------------------------------


def test_denied_vault_answers_forbidden(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """deny() makes the vault answer 403 until allow()."""
    stand_in.set_secret("locked", "a")
    stand_in.deny("locked")

    with pytest.raises(HttpResponseError) as info:
        list(client("locked").list_properties_of_secrets())
    assert info.value.status_code == 403
    assert "does not have secrets list permission" in str(info.value)

    stand_in.allow("locked")
    assert [p.name for p in client("locked").list_properties_of_secrets()] == ["a"]


def test_rbac_denial_names_the_missing_action(stand_in: KeyVaultStandIn, ca: ThrowawayCA) -> None:
    """deny(rbac=True) words the 403 like an RBAC vault."""
    stand_in.deny("rbac-locked", rbac=True)

    error = _get(stand_in, ca, "/rbac-locked/secrets?api-version=7.5").json()["error"]

    assert "Microsoft.KeyVault/vaults/secrets/readMetadata/action" in error["message"]
    assert error["innererror"]["code"] == "ForbiddenByRbac"


def test_value_reads_are_recorded_and_refused(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """get_secret fails with 403 and lands in value_requests."""
    version = stand_in.set_secret("values", "db-password")
    secrets = client("values")

    with pytest.raises(HttpResponseError) as latest:
        secrets.get_secret("db-password")
    with pytest.raises(HttpResponseError):
        secrets.get_secret("db-password", version)

    assert latest.value.status_code == 403
    assert stand_in.value_requests == [
        "/values/secrets/db-password/",
        f"/values/secrets/db-password/{version}",
    ]
    with pytest.raises(AssertionError, match="db-password"):
        stand_in.assert_no_value_reads()


# -- request validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/checks/secrets", 400, "BadParameter"),
        ("/checks/secrets?api-version=", 400, "BadParameter"),
        ("/checks/secrets?api-version=7.5&maxresults=0", 400, "BadParameter"),
        ("/checks/secrets?api-version=7.5&maxresults=26", 400, "BadParameter"),
        ("/checks/secrets?api-version=7.5&$skiptoken=not-a-token", 400, "BadParameter"),
        ("/no-such-vault/secrets?api-version=7.5", 404, "VaultNotFound"),
        ("/checks/keys?api-version=7.5", 404, "NotFound"),
        ("/checks/secrets/missing/versions?api-version=7.5", 404, "SecretNotFound"),
    ],
)
def test_bad_requests_get_key_vault_errors(
    stand_in: KeyVaultStandIn, ca: ThrowawayCA, path: str, status: int, code: str
) -> None:
    """Malformed or misdirected requests get Key Vault-shaped errors."""
    stand_in.create_vault("checks")

    response = _get(stand_in, ca, path)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_other_writes_are_not_emulated(stand_in: KeyVaultStandIn, ca: ThrowawayCA) -> None:
    """Writes beyond the smoke run's three (update, recover, backup...) answer 405 and leave the vault alone."""
    stand_in.set_secret("writes", "a")

    response = requests.patch(
        f"{stand_in.vault_url('writes')}/secrets/a/?api-version=7.5",
        headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
        json={"attributes": {"enabled": False}},
        verify=str(ca.bundle_path),
        timeout=5,
    )

    assert response.status_code == 405
    assert stand_in.secret_names("writes") == ["a"]


def test_set_delete_and_purge_through_the_sdk(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """The operator's writes of a smoke run: the real SecretClient sets (the value is echoed as Key Vault
    does, and not stored or counted as a read), deletes without waiting, and purges; each is logged."""
    vault = client("operator")
    stand_in.create_vault("operator")
    stand_in.drain_audit_log()

    made = vault.set_secret("canary", "not-kept", tags={"kind": "canary"})
    assert made.value == "not-kept" and made.properties.tags == {"kind": "canary"}
    assert stand_in.secret_names("operator") == ["canary"]
    vault.begin_delete_secret("canary")  # the DELETE is sent now; the poller is never waited on
    assert stand_in.deleted_secret_names("operator") == ["canary"]
    assert [d.name for d in vault.list_deleted_secrets()] == ["canary"]
    vault.purge_deleted_secret("canary")
    assert stand_in.deleted_secret_names("operator") == []

    assert [r["operationName"] for r in stand_in.drain_audit_log()] == ["SecretSet", "SecretDelete", "SecretPurge"]
    assert stand_in.value_requests == []
    with pytest.raises(ResourceNotFoundError):
        vault.purge_deleted_secret("canary")


def test_a_forbidden_write_is_403_and_changes_nothing(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    vault = client("no-set")
    stand_in.forbid("no-set", "set")
    try:
        with pytest.raises(HttpResponseError) as refused:
            vault.set_secret("canary", "x")
        assert refused.value.status_code == 403 and "secrets set permission" in str(refused.value)
        assert stand_in.secret_names("no-set") == []
    finally:
        stand_in.allow("no-set")


def test_seeding_validates_names(stand_in: KeyVaultStandIn) -> None:
    """Secret and vault names follow Key Vault's rules."""
    with pytest.raises(ValueError, match="secret name"):
        stand_in.set_secret("names", "under_score")
    with pytest.raises(ValueError, match="secret name"):
        stand_in.set_secret("names", "x" * 128)
    with pytest.raises(ValueError, match="Key Vault name"):
        stand_in.create_vault("a--b")
    with pytest.raises(ValueError, match="tags"):
        stand_in.set_secret("names", "many-tags", tags={f"t{i}": "v" for i in range(16)})


def test_vault_and_secret_names_are_case_insensitive(stand_in: KeyVaultStandIn, client: ClientFactory) -> None:
    """Vault and secret names match case-insensitively; ids keep the first casing."""
    stand_in.set_secret("MixedCase", "Api-Key")
    stand_in.set_secret("mixedcase", "API-KEY", expires=datetime.now(UTC) + timedelta(days=1))

    (props,) = client("MIXEDCASE").list_properties_of_secrets()

    assert props.id == "https://mixedcase.vault.azure.net/secrets/Api-Key"
    assert len(list(client("mixedcase").list_properties_of_secret_versions("api-key"))) == 2
    assert stand_in.vault_url_template == f"{stand_in.base_url}/{{vault}}"


def test_static_credential_speaks_both_protocols(tmp_path: Path) -> None:
    """static_credential hands out the same token through get_token and get_token_info."""
    credential = static_credential("abc")

    with credential:
        assert credential.get_token("https://vault.azure.net/.default").token == "abc"
        assert credential.get_token_info("https://vault.azure.net/.default").token == "abc"
    assert credential.scopes == [("https://vault.azure.net/.default",)] * 2
