"""Planning: what a group should contain, as pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kvlink_core.model import Policy, SecretState
from kvlink_core.plan import Plan, apply_plan, plan_group, removal_refusal

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def secrets(*states: SecretState) -> dict[str, SecretState]:
    return {s.key: s for s in states}


def kv_var(**extra) -> dict:
    return {"isSecret": True, "value": None, "enabled": True, "contentType": "", "expires": None, **extra}


class TestMerge:
    def test_new_matching_secret_is_added(self):
        """A new secret matching the include patterns is added with its attributes."""
        expires = NOW + timedelta(days=90)
        plan = plan_group(
            {"db": kv_var()},
            secrets(SecretState("api-key", content_type="text", expires=expires)),
            Policy(),
            complete=False,
            now=NOW,
        )
        assert plan.added_names == ["api-key"]
        assert plan.remove == ()
        variables = apply_plan({"db": kv_var()}, plan)
        assert variables["api-key"] == {
            "isSecret": True,
            "value": None,
            "enabled": True,
            "contentType": "text",
            "expires": "2027-02-25T00:00:00Z",
        }

    def test_already_mapped_is_unchanged(self):
        """A new version of a mapped secret (any casing) changes nothing."""
        plan = plan_group({"DB-Password": kv_var()}, secrets(SecretState("db-password")), Policy(), complete=False)
        assert not plan.changed
        assert plan.unchanged == 1

    def test_hand_added_name_is_kept(self):
        """In merge mode a name added by hand stays while its secret exists and is enabled."""
        plan = plan_group(
            {"manual": kv_var()}, secrets(SecretState("manual")), Policy(include=("app-*",)), complete=True
        )
        assert not plan.changed

    @pytest.mark.parametrize(
        "state",
        [SecretState.missing("gone"), SecretState("gone", enabled=False)],
        ids=["deleted", "disabled"],
    )
    def test_broken_names_are_removed(self, state):
        """A mapped name whose secret is deleted or disabled is removed: it breaks pipelines."""
        plan = plan_group({"gone": kv_var(), "ok": kv_var()}, secrets(state), Policy(), complete=False)
        assert plan.remove == ("gone",)

    def test_complete_listing_removes_unlisted(self):
        """With a complete listing, a mapped name absent from the vault is removed."""
        plan = plan_group({"gone": kv_var(), "ok": kv_var()}, secrets(SecretState("ok")), Policy(), complete=True)
        assert plan.remove == ("gone",)

    def test_partial_knowledge_keeps_unknown(self):
        """Without a complete listing, names kvlink knows nothing about are kept."""
        plan = plan_group({"other": kv_var()}, secrets(SecretState("new")), Policy(), complete=False)
        assert plan.remove == ()
        assert plan.added_names == ["new"]

    def test_disabled_secret_never_added(self):
        """A disabled secret is never mapped."""
        plan = plan_group({}, secrets(SecretState("off", enabled=False)), Policy(), complete=True)
        assert not plan.changed

    def test_certificate_backed_never_added(self):
        """A certificate-backed secret (managed) is never mapped."""
        plan = plan_group({}, secrets(SecretState("tls-cert", managed=True)), Policy(), complete=True)
        assert not plan.changed


class TestPolicy:
    def test_include_exclude_globs(self):
        """Include and exclude patterns are globs, matched case-insensitively."""
        policy = Policy(include=("app-*", "DB-*"), exclude=("*-old",))
        plan = plan_group(
            {},
            secrets(SecretState("app-one"), SecretState("db-two"), SecretState("app-old"), SecretState("other")),
            policy,
            complete=True,
        )
        assert plan.added_names == ["app-one", "db-two"]

    def test_required_tags(self):
        """Required tags must be present; a None value accepts any value."""
        policy = Policy(tags=(("env", "prod"), ("owner", None)))
        plan = plan_group(
            {},
            secrets(
                SecretState("a", tags={"env": "prod", "owner": "x"}),
                SecretState("b", tags={"env": "dev", "owner": "x"}),
                SecretState("c", tags={"ENV": "prod"}),
            ),
            policy,
            complete=True,
        )
        assert plan.added_names == ["a"]

    def test_expired_kept_by_default(self):
        """An expired but enabled secret still works in pipelines, so by default it stays and is added."""
        plan = plan_group(
            {}, secrets(SecretState("old", expires=NOW - timedelta(days=1))), Policy(), complete=True, now=NOW
        )
        assert plan.added_names == ["old"]

    def test_expired_removed_when_policy_says(self):
        """keepExpired false removes expired names and does not add them."""
        policy = Policy(keep_expired=False)
        past = NOW - timedelta(days=1)
        plan = plan_group(
            {"old": kv_var()},
            secrets(SecretState("old", expires=past), SecretState("old2", expires=past)),
            policy,
            complete=True,
            now=NOW,
        )
        assert plan.remove == ("old",)
        assert plan.added_names == []


class TestMirror:
    def test_mirror_is_exactly_the_matching_secrets(self):
        """Mirror mode removes hand-added and non-matching names and adds matching ones."""
        policy = Policy(include=("app-*",), mode="mirror")
        variables = {"app-a": kv_var(), "manual": kv_var(), "app-cert": kv_var()}
        plan = plan_group(
            variables,
            secrets(
                SecretState("app-a"),
                SecretState("manual"),
                SecretState("app-b"),
                SecretState("app-cert", managed=True),
            ),
            policy,
            complete=True,
        )
        assert plan.added_names == ["app-b"]
        assert plan.remove == ("app-cert", "manual")


class TestDiscovered:
    def test_prune_only_never_adds(self):
        """A discovered group only loses names of deleted or disabled secrets, and gains none."""
        plan = plan_group(
            {"keep": kv_var(), "gone": kv_var(), "off": kv_var()},
            secrets(SecretState("keep"), SecretState("new"), SecretState("off", enabled=False)),
            Policy(),
            complete=True,
            prune_only=True,
        )
        assert plan.added_names == []
        assert plan.remove == ("gone", "off")


class TestGuard:
    @pytest.mark.parametrize(
        ("removing", "total", "refused"),
        [(2, 2, False), (3, 4, True), (3, 6, False), (4, 6, True), (0, 0, False)],
    )
    def test_mass_removal(self, removing, total, refused):
        """More than the fraction of a group's names, and more than two names, is refused."""
        plan = Plan(remove=tuple(f"n{i}" for i in range(removing)))
        assert (removal_refusal(plan, total, 0.5) is not None) is refused


class TestApply:
    def test_other_variables_untouched(self):
        """apply_plan keeps every attribute of variables it does not change."""
        variables = {
            "keep": kv_var(contentType="pem", expires="2030-01-01T00:00:00Z", extra="x"),
            "drop": kv_var(),
        }
        result = apply_plan(variables, Plan(remove=("DROP",)))
        assert result == {"keep": variables["keep"]}
