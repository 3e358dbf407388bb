"""kvlink's real Key Vault client fed real recorded Key Vault responses (Azure SDK test recordings).

A stand-in agrees with the code written beside it; these recordings agree with Azure. Sources and
what was trimmed: ``recordings/keyvault/README.md``. Production settings (no emulator), so the SDK's
challenge policy verifies the recorded resource against the recorded ``*.vault.azure.net`` URL.
Every test runs twice: vault listings on the sync pipeline (``SecretClient``) and on the async one
(``AsyncSecretClient``, what kvlink lists with by default), both over the same recording.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kvreplay import AsyncReplayTransport, RecordingCredential, ReplayTransport, recording

from kvlink_core.errors import UpstreamError
from kvlink_core.keyvault import KeyVault
from kvlink_core.model import SecretState
from kvlink_core.settings import Settings

VAULT = "keyvault_name"  # the recordings' sanitized vault name
TENANT = "12345678-1234-1234-1234-123456789012"  # the recordings' sanitized tenant
VAULT_SCOPE = ("https://vault.azure.net/.default",)


@pytest.fixture(autouse=True)
def _no_cached_challenge() -> Iterator[None]:
    """The SDK caches each vault's challenge per process: every replay starts from the 401."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.clear()
    yield
    http_challenge_cache.clear()


@pytest.fixture(autouse=True, params=["sync", "async"])
def _pipeline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which pipeline the vault listings take (version lists always take the sync one)."""
    monkeypatch.setattr(Replay, "pipeline", request.param)


class Replay:
    """One recording, kvlink's KeyVault over it, and what was asked of the transport and credential."""

    pipeline = "sync"

    def __init__(self, entries: list[dict]) -> None:
        self.transport = ReplayTransport(entries)
        self.credential = RecordingCredential()
        settings = Settings(devops_orgs=("contoso",), allowed_vaults=None)  # Azure's vault URL template
        assert not settings.emulator
        listed_async = self.pipeline == "async"
        self.kv = KeyVault(
            settings,
            self.credential,
            retry_total=0,
            transport_factory=lambda: self.transport,
            async_transport_factory=(lambda: AsyncReplayTransport(self.transport)) if listed_async else None,
        )

    @property
    def urls(self) -> list[str]:
        return [seen.url for seen in self.transport.seen]

    def next_links(self, entries: list[dict]) -> list[str]:
        return [
            e["ResponseBody"]["nextLink"] for e in entries if e["StatusCode"] == 200 and e["ResponseBody"]["nextLink"]
        ]


def replay(name: str) -> tuple[Replay, list[dict]]:
    entries = recording(name)
    return Replay(entries), entries


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class TestChallenge:
    def test_challenge_is_answered_with_a_token_for_the_vault_scope(self):
        """The recorded 401 on GET /secrets: one token for vault.azure.net in the recorded tenant, then Bearer."""
        run, _ = replay("js-purge-all-secrets.json")

        run.kv.list_secrets(VAULT)

        assert run.credential.requests == [(VAULT_SCOPE, {"claims": None, "tenant_id": TENANT, "enable_cae": True})]
        first, *rest = run.transport.seen
        assert (first.method, first.authorization) == ("GET", None)
        assert first.url.startswith(f"https://{VAULT}.vault.azure.net/secrets?")
        assert rest and all(seen.authorization == f"Bearer {RecordingCredential.token}" for seen in rest)


class TestListSecrets:
    def test_disabled_and_expiring_secrets_across_the_443_next_link(self):
        """17 secrets on page one, an empty last page behind a ``:443`` nextLink: the whole listing."""
        run, entries = replay("js-purge-all-secrets.json")

        states = run.kv.list_secrets(VAULT)

        assert len(states) == 17
        assert sorted(s.name for s in states.values() if not s.enabled) == [
            "CRUDSecretName-cantgetadisabledsecret-34224521523724083",
            "CRUDSecretName-canupdateadisabledsecret-43489861748801983",
        ]
        expiring = {s.name: s.expires for s in states.values() if s.expires}
        assert expiring == dict.fromkeys(
            [
                "CRUDSecretName-cansetasecretwithattributes-5777280545818102",
                "CRUDSecretName-canupdateadisabledsecret-43489861748801983",
                "CRUDSecretName-canupdateasecret-33335702886898533",
            ],
            at(32503680000),
        )
        assert not any(s.managed or s.content_type for s in states.values())
        (next_link,) = run.next_links(entries)
        assert next_link.startswith(f"https://{VAULT}.vault.azure.net:443/secrets?")
        assert run.urls[2] == next_link  # followed verbatim, port and all
        assert len(run.urls) == 3 and run.transport.exhausted  # challenge + two pages, to the end

    def test_many_pages_including_empty_ones(self):
        """Seven ``maxresults=1`` pages, some empty but with a nextLink: kvlink reads to the last one."""
        run, entries = replay("js-list-secrets-by-page.json")

        states = run.kv.list_secrets(VAULT)

        assert sorted(s.name for s in states.values()) == [
            "listSecretName-canlistsecretproperties-51074815250816990",
            "listSecretName-canlistsecretproperties-51074815250816991",
            "listSecretName-canlistsecretsbypage-0",
            "listSecretName-canlistsecretsbypage-1",
        ]
        assert all(s.enabled and not s.managed for s in states.values())
        links = run.next_links(entries)
        assert len(links) == 6 and all(link.startswith(f"https://{VAULT}.vault.azure.net:443/") for link in links)
        assert run.urls[2:] == links  # after the challenge and the first page, each nextLink in turn
        assert len(run.urls) == 8 and run.transport.exhausted

    def test_certificate_backed_secrets_content_types_dates_and_tags(self):
        """Certificate-backed secrets come back managed, with their content type, nbf/exp and tags."""
        run, _ = replay("js-list-secret-properties.json")

        states = run.kv.list_secrets(VAULT)

        assert len(states) == 21
        plain = sorted(s.name for s in states.values() if not s.managed)
        assert plain == ["listSecretName-canlistsecretproperties-0", "listSecretName-canlistsecretproperties-1"]
        certs = [s for s in states.values() if s.managed]
        assert len(certs) == 19 and {s.content_type for s in certs} == {"application/x-pkcs12"}
        cert = states["listcertificatename-canretrieveallversionsofacertificate-8426486803415174"]
        assert (cert.not_before, cert.expires) == (at(1668123187), at(1699659787))
        assert cert.tags == {"tag": "tag03"}
        assert states["listsecretname-canlistsecretproperties-0"].content_type is None
        assert len(run.urls) == 2 and run.transport.exhausted

    def test_untagged_secrets_share_one_empty_mapping_and_lower_case_names_their_key(self):
        """An audit holds every secret of every vault: no per-secret empty dict, no second copy of the name."""
        run, _ = replay("js-list-secret-properties.json")

        states = run.kv.list_secrets(VAULT)

        untagged = [s for s in states.values() if not s.tags]
        assert len(untagged) >= 2 and len({id(s.tags) for s in untagged}) == 1
        mixed = next(iter(states.values()))
        assert mixed.key == mixed.name.lower() != mixed.name
        lower = SecretState("db-password")
        assert lower.key is lower.name


class TestVersions:
    def test_version_list_followed_across_443_next_links(self):
        """A secret's three versions come one per page behind ``:443`` nextLinks; all are read."""
        run, entries = replay("js-list-versions-by-page.json")
        name = "listSecretName-canretrieveallversionsofasecretbypage-"

        state = run.kv.secret_state(VAULT, name, version_hint="85e14505e93b4995bce85d446734357f")

        assert (state.name, state.exists, state.enabled, state.managed) == (name, True, True, False)
        links = run.next_links(entries)
        assert len(links) == 2 and all(f"{VAULT}.vault.azure.net:443/secrets/{name}/versions?" in x for x in links)
        assert run.urls[0].startswith(f"https://{VAULT}.vault.azure.net/secrets/{name}/versions?")
        assert run.urls[2:] == links
        assert len(run.urls) == 4 and run.transport.exhausted


class TestForeignNextLink:
    @pytest.mark.parametrize(
        "origin",
        [
            "https://elsewhere.vault.azure.net:443",  # another vault
            "https://attacker.example",  # another host
            "http://keyvault_name.vault.azure.net:443",  # another scheme
            "https://keyvault_name.vault.azure.net:8443",  # another port
        ],
    )
    def test_a_next_link_leaving_the_vault_is_refused(self, origin):
        """Derived from a recording (nextLink's origin swapped): the token never follows it."""
        entries = copy.deepcopy(recording("js-purge-all-secrets.json"))
        page = entries[1]["ResponseBody"]
        page["nextLink"] = page["nextLink"].replace(f"https://{VAULT}.vault.azure.net:443", origin)
        run = Replay(entries)

        with pytest.raises(UpstreamError, match="nextLink leaves the vault"):
            run.kv.list_secrets(VAULT)
        assert not any(url.startswith(origin) for url in run.urls)
