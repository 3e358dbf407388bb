"""The Key Vault reader against the HTTPS stand-in, with the real SDK."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kvlink_core.credentials import StaticTokenCredential
from kvlink_core.errors import TransientError, UpstreamError
from kvlink_core.keyvault import KeyVault, _origin
from kvlink_core.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def reader(estate):
    kv = KeyVault(
        estate.settings(),
        StaticTokenCredential("kvlink-emulator-token"),
        retry_total=2,
        retry_backoff_factor=0.01,
    )
    yield kv
    kv.close()


class TestListing:
    def test_full_listing_across_pages(self, estate, reader):
        """60 secrets come back across three pages, with their attributes, and no value is read."""
        expires = datetime(2031, 1, 1, tzinfo=UTC)
        for i in range(60):
            estate.kv.set_secret(estate.vault, f"s-{i:02d}", content_type="text", tags={"n": str(i)})
        estate.kv.set_secret(estate.vault, "off", enabled=False, expires=expires)
        estate.kv.set_secret(estate.vault, "cert", managed=True)

        states = reader.list_secrets(estate.vault)

        assert len(states) == 62
        assert states["s-07"].tags == {"n": "7"} and states["s-07"].content_type == "text"
        assert (states["off"].enabled, states["off"].expires) == (False, expires)
        assert states["cert"].managed is True
        pages = [c for c in estate.kv.calls if c.path.endswith("/secrets") and c.status == 200]
        assert len(pages) == 3  # 25 + 25 + 12; the first 401 challenge is not a page

    def test_listing_failing_on_a_later_page_is_an_error(self, estate, reader):
        """A listing that fails on page 2 raises; it is never returned as a shorter vault."""
        for i in range(30):
            estate.kv.set_secret(estate.vault, f"s-{i:02d}")
        estate.kv.inject(503, path=r"/secrets$", skip=1, times=10)
        with pytest.raises(TransientError, match="answered HTTP 503"):
            reader.list_secrets(estate.vault)

    def test_missing_permission_says_which(self, estate, reader):
        """A 403 names the List permission / Key Vault Reader role it needs, never Get."""
        estate.kv.deny(estate.vault)
        try:
            with pytest.raises(UpstreamError, match=r"'List'.*'Key Vault Reader'") as info:
                reader.list_secrets(estate.vault)
        finally:
            estate.kv.allow(estate.vault)
        assert info.value.status == 403

    def test_unknown_vault(self, estate, reader):
        """A vault that does not exist is an upstream error, not an empty vault."""
        with pytest.raises(UpstreamError, match="not found"):
            reader.list_secrets("kv-does-not-exist")


class TestOneSecret:
    def test_newest_version_wins(self, estate, reader):
        """The current version is the newest; its attributes are what count."""
        estate.kv.set_secret(estate.vault, "rotated", enabled=True, content_type="v1")
        version = estate.kv.set_secret(estate.vault, "rotated", enabled=False, content_type="v2")
        state = reader.secret_state(estate.vault, "rotated", version_hint=version)
        assert (state.enabled, state.content_type) == (False, "v2")

    def test_deleted_secret_is_missing(self, estate, reader):
        """A deleted secret reads as missing (not an error)."""
        estate.kv.set_secret(estate.vault, "gone")
        estate.kv.delete_secret(estate.vault, "gone")
        state = reader.secret_state(estate.vault, "gone")
        assert (state.exists, state.enabled) == (False, False)

    def test_many_names_use_one_listing(self, estate, reader):
        """Reading more than eight secrets lists the vault once instead of once per secret."""
        for i in range(12):
            estate.kv.set_secret(estate.vault, f"s-{i}", expires=datetime.now(UTC) + timedelta(days=1))
        estate.kv.reset_calls()
        states = reader.secret_states(estate.vault, [f"s-{i}" for i in range(10)] + ["absent"])
        assert sum(s.exists for s in states.values()) == 10
        assert states["absent"].exists is False
        assert estate.kv.count("GET", "/versions") == 0


class TestNextLinkOrigin:
    """The token follows a nextLink only to the vault itself; default ports are the same origin."""

    @pytest.mark.parametrize(
        ("vault_url", "next_link"),
        [
            ("https://myvault.vault.azure.net", "https://myvault.vault.azure.net:443/secrets?$skiptoken=x"),
            ("https://myvault.vault.azure.net:443", "https://myvault.vault.azure.net/secrets?$skiptoken=x"),
            ("https://MyVault.Vault.Azure.NET", "HTTPS://myvault.vault.azure.net:443/secrets"),
            ("http://127.0.0.1", "http://127.0.0.1:80/kv/secrets"),
            ("https://127.0.0.1:8443/kv", "https://127.0.0.1:8443/kv/secrets?$skiptoken=x"),
        ],
    )
    def test_same_vault(self, vault_url, next_link):
        assert _origin(next_link) == _origin(vault_url)

    @pytest.mark.parametrize(
        "next_link",
        [
            "https://othervault.vault.azure.net:443/secrets",  # another host
            "http://myvault.vault.azure.net:443/secrets",  # another scheme
            "http://myvault.vault.azure.net/secrets",  # another scheme, default ports
            "https://myvault.vault.azure.net:8443/secrets",  # another port
            "https://myvault.vault.azure.net:80/secrets",  # http's default port, on https
            "https://myvault.vault.azure.net:x/secrets",  # no port at all
            "/secrets?$skiptoken=x",  # no origin
        ],
    )
    def test_foreign(self, next_link):
        assert _origin(next_link) != _origin("https://myvault.vault.azure.net")


def test_official_list_example_is_followed_to_its_443_page():
    """The GetSecrets 7.5 example, unmodified: its ``:443`` nextLink is requested verbatim, the listing is whole."""
    import json
    from pathlib import Path

    from azure.keyvault.secrets._shared import http_challenge_cache
    from kvreplay import RecordingCredential, ReplayTransport, recording

    example = json.loads((Path(__file__).parent / "payloads" / "keyvault-GetSecrets-example.7.5.json").read_text())
    first = example["responses"]["200"]["body"]
    challenge = recording("js-purge-all-secrets.json")[0]  # Key Vault's recorded 401 on GET /secrets
    # The example documents one page; the page behind its nextLink is written here: a last page, no nextLink.
    last = {
        "value": [{"id": "https://myvault.vault.azure.net/secrets/listsecrettest1", "attributes": {"enabled": False}}]
    }
    entries = [
        challenge,
        {"RequestUri": "https://myvault.vault.azure.net/secrets", "RequestMethod": "GET", "StatusCode": 200,
         "ResponseHeaders": {"Content-Type": "application/json; charset=utf-8"}, "ResponseBody": first},
        {"RequestUri": first["nextLink"], "RequestMethod": "GET", "StatusCode": 200,
         "ResponseHeaders": {"Content-Type": "application/json; charset=utf-8"}, "ResponseBody": last},
    ]  # fmt: skip
    transport = ReplayTransport(entries)
    settings = Settings(devops_orgs=("contoso",), allowed_vaults=None)  # Azure's URLs, real challenge checks
    kv = KeyVault(settings, RecordingCredential(), retry_total=0, transport_factory=lambda: transport)
    http_challenge_cache.clear()
    try:
        states = kv.list_secrets("myvault")
    finally:
        http_challenge_cache.clear()

    assert first["nextLink"].startswith("https://myvault.vault.azure.net:443/secrets?api-version=7.2&$skiptoken=")
    assert [seen.url for seen in transport.seen][-1] == first["nextLink"]
    assert transport.exhausted
    assert list(states) == ["listsecrettest0", "listsecrettest1"]
    state = states["listsecrettest0"]
    assert (state.enabled, state.content_type, state.managed) == (True, "plainText", False)
    assert states["listsecrettest1"].enabled is False


def test_the_event_path_does_not_import_the_async_listing_machinery():
    """Cold start: importing the app (what every first event pays) loads neither aiohttp nor the SDK's aio client."""
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        "import sys, function_app\n"
        "loaded = [m for m in ('aiohttp', 'azure.keyvault.secrets.aio', 'azure.core.pipeline.transport._aiohttp')"
        " if m in sys.modules]\n"
        "print(','.join(loaded))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_one_secret_takes_the_sync_pipeline(estate, reader):
    """An event's version list never starts the listing loop (the event path stays on requests)."""
    estate.kv.set_secret(estate.vault, "app-one")

    assert reader.secret_state(estate.vault, "app-one").exists
    assert reader._loop is None


class TestCallSlots:
    """The listing loop's call slots: a bound on calls in flight, handed to the lowest rank waiting."""

    def test_a_freed_slot_goes_to_the_lowest_rank_then_first_come(self):
        import asyncio

        from kvlink_core.keyvault import _CallSlots

        async def scenario() -> tuple[list[str], int]:
            slots = _CallSlots(2)
            served: list[str] = []
            in_flight = peak = 0
            release: dict[str, asyncio.Event] = {}

            async def call(name: str, rank: int) -> None:
                nonlocal in_flight, peak
                release[name] = asyncio.Event()
                await slots.acquire(rank)
                served.append(name)
                in_flight += 1
                peak = max(peak, in_flight)
                await release[name].wait()
                in_flight -= 1
                slots.release()

            tasks = [asyncio.create_task(call(name, rank)) for name, rank in (("a", 5), ("b", 5))]
            await asyncio.sleep(0)  # both hold a slot now
            # Waiting, in this order of arrival: two of rank 3, one of rank 1, one of rank 3.
            for name, rank in (("c", 3), ("d", 3), ("e", 1), ("f", 3)):
                tasks.append(asyncio.create_task(call(name, rank)))
                await asyncio.sleep(0)
            for name in "abecdf":  # each holder lets go in turn; a freed slot passes straight on
                release[name].set()
                for _ in range(3):
                    await asyncio.sleep(0)
            await asyncio.gather(*tasks)
            return served, peak

        served, peak = asyncio.run(scenario())
        assert served == ["a", "b", "e", "c", "d", "f"]
        assert peak == 2
