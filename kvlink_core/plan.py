"""What a group should contain: pure decisions, no I/O.

Everything that changes a variable group goes through :func:`plan_group`, so the
event path, the API and the audit agree on one set of rules.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .model import Policy, SecretState


class Desired(enum.Enum):
    PRESENT = "present"
    ABSENT = "absent"
    KEEP = "keep"  # leave the group as it is for this name


def desired(secret: SecretState, policy: Policy, *, prune_only: bool, now: datetime) -> Desired:
    """The decision for one secret in one group, from the secret's current state."""
    if not secret.exists or not secret.enabled:
        return Desired.ABSENT  # a mapped name that is gone or disabled fails every pipeline run
    if prune_only:
        return Desired.KEEP
    if secret.expired(now) and not policy.keep_expired:
        return Desired.ABSENT
    if policy.matches(secret) and not secret.managed:
        return Desired.PRESENT
    return Desired.ABSENT if policy.mode == "mirror" else Desired.KEEP


@dataclass(frozen=True, slots=True)
class Plan:
    add: tuple[SecretState, ...] = ()
    remove: tuple[str, ...] = ()
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.add or self.remove)

    @property
    def added_names(self) -> list[str]:
        return [s.name for s in self.add]

    def as_dict(self) -> dict[str, Any]:
        return {"add": self.added_names, "remove": list(self.remove), "unchanged": self.unchanged}


@dataclass(frozen=True, slots=True)
class Decisions:
    """Every secret's decision under one policy: computed once, shared by every group that needs it."""

    present: Mapping[str, SecretState]  # key -> secret that belongs in the group
    absent: frozenset[str]  # keys that must not be in the group


def decide(
    secrets: Mapping[str, SecretState], policy: Policy, *, prune_only: bool = False, now: datetime | None = None
) -> Decisions:
    now = now or datetime.now(UTC)
    present: dict[str, SecretState] = {}
    absent: set[str] = set()
    for key, secret in secrets.items():
        decision = desired(secret, policy, prune_only=prune_only, now=now)
        if decision is Desired.PRESENT:
            present[key] = secret
        elif decision is Desired.ABSENT:
            absent.add(key)
    return Decisions(present, frozenset(absent))


def plan_group(
    variables: Mapping[str, Any],
    secrets: Mapping[str, SecretState],
    policy: Policy,
    *,
    complete: bool,
    prune_only: bool = False,
    now: datetime | None = None,
    decided: Decisions | None = None,
) -> Plan:
    """Plan one group against the secrets kvlink knows about.

    ``secrets`` is keyed by lower-cased name. With ``complete`` it is the vault's full
    listing, so a mapped name it lacks belongs to a deleted secret; without it, names
    kvlink knows nothing about are left alone. ``decided`` may carry :func:`decide`'s
    result for these secrets and this policy, when many groups share them (the audit).
    """
    decided = decided or decide(secrets, policy, prune_only=prune_only, now=now)
    current = {name.lower(): name for name in variables}
    add = [secret for key, secret in decided.present.items() if key not in current]
    remove = [name for key, name in current.items() if key in decided.absent]
    if complete:
        remove += [name for key, name in current.items() if key not in secrets]
    add.sort(key=lambda s: s.key)
    remove.sort(key=str.lower)
    return Plan(add=tuple(add), remove=tuple(remove), unchanged=len(current) - len(remove))


def removal_refusal(plan: Plan, current_count: int, max_fraction: float) -> str | None:
    """The mass-removal guard: a reason to refuse the plan, or None."""
    removing = len(plan.remove)
    if removing > 2 and removing > max_fraction * current_count:
        return (
            f"refused: the plan removes {removing} of {current_count} names, more than "
            f"{max_fraction:.0%} (KVLINK_MAX_REMOVAL_FRACTION); re-run with force to apply it"
        )
    return None


def apply_plan(variables: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    """The group's new variables: every entry kvlink does not change is kept as it was."""
    removing = {name.lower() for name in plan.remove}
    result = {name: value for name, value in variables.items() if name.lower() not in removing}
    for secret in plan.add:
        result[secret.name] = new_variable(secret)
    return result


def new_variable(secret: SecretState) -> dict[str, Any]:
    """A Key Vault variable as the Azure DevOps UI writes it: a name, never a value."""
    return {
        "isSecret": True,
        "value": None,
        "enabled": secret.enabled,
        "contentType": secret.content_type or "",
        "expires": _iso(secret.expires),
    }


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
