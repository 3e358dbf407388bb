"""The registry in Table storage (Azurite): links, leases and queued work."""

from __future__ import annotations

import pytest

from kvlink_core.errors import TransientError
from kvlink_core.model import GroupKey, Link, Policy, SecretState
from kvlink_core.registry import LeaseLostError, Observation, Registry
from kvlink_core.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(estate, fake_time):
    reg = Registry(estate.settings(), lease_seconds=60.0, clock=fake_time.clock())
    yield reg
    reg.close()


def make_link(estate, group_id=1, vault=None, **kw) -> Link:
    return Link(estate.org, estate.project, group_id, f"g{group_id}", vault or estate.vault, **kw)


class TestLinks:
    def test_round_trip_with_policy(self, estate, registry):
        """A saved link reads back with its whole policy."""
        policy = Policy(
            include=("app-*",),
            exclude=("*-old",),
            tags=(("env", "prod"), ("team", None)),
            keep_expired=False,
            mode="mirror",
        )
        link = make_link(estate, policy=policy)
        registry.save_link(link)
        assert registry.links_for_vault(estate.vault.upper()) == [link]
        assert registry.find_link(link.key) == link

    def test_relinking_to_another_vault_moves_the_link(self, estate, registry):
        """A group links to one vault: saving it with a new vault removes the old entry."""
        registry.save_link(make_link(estate))
        registry.save_link(make_link(estate, vault="kv-elsewhere"))
        assert registry.links_for_vault(estate.vault) == []
        assert [link.vault for link in registry.list_links(organization=estate.org)] == ["kv-elsewhere"]

    def test_delete(self, estate, registry):
        """Deleting a link reports whether there was one."""
        link = make_link(estate)
        registry.save_link(link)
        assert registry.delete_link(link.key) is True
        assert registry.delete_link(link.key) is False

    def test_link_records_carry_the_last_change(self, estate):
        """link_records() lists every link with kvlink's last write of its group, in one table scan."""
        registry = estate.engine().registry
        written, untouched = make_link(estate, group_id=11), make_link(estate, group_id=12)
        registry.save_link(written)
        registry.save_link(untouched)
        registry.note_write(written, origin="event", summary="+2 -1")
        estate.table_calls.reset()
        everything = registry.link_records()
        # one scan: a GET per page of 1,000 entities (other tests' links share this Azurite), never one per link
        assert set(estate.table_calls.by_method) == {"GET"}
        assert estate.table_calls.total <= 1 + len(everything) // 1000
        records = {r.link.group_id: r for r in everything if r.link.organization == estate.org}
        assert records[11].link == written and records[12].link == untouched
        assert (records[11].last_change_by, records[11].last_change) == ("event", "+2 -1")
        assert records[11].last_change_at is not None and records[11].last_change_at.tzinfo is not None
        assert (records[12].last_change_at, records[12].last_change_by, records[12].last_change) == (None, None, None)


class TestLeases:
    def test_one_holder_at_a_time(self, estate, registry):
        """While one instance holds a group's lease, another cannot take it."""
        key = GroupKey(estate.org, 1)
        lease = registry.try_acquire(key)
        assert lease is not None
        assert registry.try_acquire(key) is None
        assert registry.release(lease) is True
        assert registry.try_acquire(key) is not None

    def test_poke_makes_release_fail(self, estate, registry):
        """Queued work (a poke) makes the holder's release fail so it looks again."""
        key = GroupKey(estate.org, 2)
        lease = registry.try_acquire(key)
        assert registry.poke(key) is True
        assert registry.release(lease) is False
        fresh = registry.refresh(lease)
        assert fresh.poked is True
        assert registry.release(fresh) is True
        assert registry.poke(key) is False  # nobody holds it now

    def test_expired_lease_is_taken_over(self, estate, registry, fake_time):
        """A dead holder's lease can be taken once it expires (by the injected clock), and the old holder
        learns it lost it."""
        key = GroupKey(estate.org, 3)
        dead = registry.try_acquire(key)
        fake_time.advance(59.0)
        assert registry.try_acquire(key) is None and not registry.lease_free(key)
        fake_time.advance(1.5)
        assert registry.lease_free(key)
        taker = registry.try_acquire(key)
        assert taker is not None and taker.took_over
        with pytest.raises(LeaseLostError):
            registry.refresh(dead)
        assert registry.release(dead) is False  # the dead holder cannot free someone else's lease


class TestPending:
    def test_queue_is_batched_and_cleared(self, estate, registry):
        """Over a hundred observations queue in batches and clear completely."""
        key = GroupKey(estate.org, 4)
        rows = registry.add_pending(key, [Observation(SecretState(f"s-{i}")) for i in range(150)])
        assert len(registry.pending(key)) == 150
        assert registry.has_pending(key, rows[:1])
        registry.remove_pending(key, registry.pending(key))
        assert registry.pending(key) == []

    def test_observation_round_trip(self, estate, registry):
        """A queued observation keeps every attribute that planning uses."""
        from datetime import UTC, datetime

        state = SecretState(
            "db",
            exists=True,
            enabled=False,
            content_type="pem",
            expires=datetime(2030, 1, 1, tzinfo=UTC),
            tags={"a": "b"},
            managed=True,
        )
        key = GroupKey(estate.org, 5)
        registry.add_pending(key, [Observation(state, at=42)])
        (row,) = registry.pending(key)
        assert row.observation == Observation(state, at=42)


def test_table_storage_unavailable_is_transient():
    """Table storage that cannot be reached is a transient failure (retry later), not a crash."""
    settings = Settings.from_env(
        {
            "KVLINK_DEVOPS_ORGS": "org",
            "KVLINK_ALLOWED_VAULTS": "*",
            "AzureWebJobsStorage": (
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
            ),
        }
    )
    registry = Registry(settings, client_options={"retry_total": 0})
    with pytest.raises(TransientError, match="Table storage unavailable"):
        registry.links_for_vault("kv")
