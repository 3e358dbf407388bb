"""The values kvlink reasons about: secrets as listed, link policies, links."""

from __future__ import annotations

import fnmatch
import functools
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

Mode = Literal["merge", "mirror"]
LinkKind = Literal["linked", "discovered"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Clock:
    """The time as the lease protocol sees it; tests inject one to drive expiry without sleeping.

    ``monotonic`` measures how long a lease has been held, ``wall`` stamps ExpiresAt (which
    other instances compare with their own wall clock), ``sleep`` and ``jitter`` pace the waits.
    """

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = _utc_now
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random


SYSTEM_CLOCK = Clock()


NO_TAGS: Mapping[str, str] = MappingProxyType({})  # shared by every untagged secret (most of them)


@dataclass(frozen=True, slots=True)
class SecretState:
    """What Key Vault says about a secret's current version -- never its value.

    An audit holds one per secret of every vault (100,000 on the benchmark estate): untagged
    secrets share one empty mapping, and ``key`` is ``name`` itself when that is lower-case already.
    """

    name: str
    exists: bool = True
    enabled: bool = True
    content_type: str | None = None
    expires: datetime | None = None
    not_before: datetime | None = None
    tags: Mapping[str, str] = field(default_factory=lambda: NO_TAGS)
    managed: bool = False  # backs a certificate; Azure DevOps cannot map those

    @classmethod
    def missing(cls, name: str) -> SecretState:
        """A secret that is deleted, purged or was never there."""
        return cls(name=name, exists=False, enabled=False)

    key: str = field(init=False, repr=False, compare=False)  # lower-cased name: Key Vault is case-insensitive

    def __post_init__(self) -> None:
        key = self.name.lower()
        object.__setattr__(self, "key", self.name if key == self.name else key)

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True, slots=True)
class Policy:
    """Which secrets a linked group should map, and how hand-made entries are treated."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    tags: tuple[tuple[str, str | None], ...] = ()  # (key, value); None = any value
    keep_expired: bool = True
    mode: Mode = "merge"

    def matches(self, secret: SecretState) -> bool:
        """Name patterns and required tags; case-insensitive like Key Vault itself."""
        name = secret.key
        if not _globs(self.include).match(name) or _globs(self.exclude).match(name):
            return False
        if not self.tags:
            return True
        tags = {k.lower(): v for k, v in secret.tags.items()}
        for key, value in self.tags:
            actual = tags.get(key.lower())
            if actual is None or (value is not None and actual != value):
                return False
        return True


@functools.cache
def _globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled, case-insensitive regex for a tuple of globs (planning runs it per secret per group)."""
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(p.lower())})" for p in patterns))


@dataclass(frozen=True, slots=True)
class GroupKey:
    """A variable group's identity: ids are unique per organization."""

    organization: str
    group_id: int

    def __str__(self) -> str:
        return f"{self.organization}/{self.group_id}"

    @property
    def lease_partition(self) -> str:
        return self.organization

    @property
    def lease_row(self) -> str:
        return str(self.group_id)


@dataclass(frozen=True, slots=True)
class VaultKey:
    """A vault's own lease and queue: events for a vault that several groups map coalesce there."""

    vault: str

    def __str__(self) -> str:
        return f"vault {self.vault}"

    @property
    def lease_partition(self) -> str:
        return "~vault"  # organization names cannot start with "~"

    @property
    def lease_row(self) -> str:
        return self.vault.lower()


LeaseKey = GroupKey | VaultKey


@dataclass(frozen=True, slots=True)
class Link:
    """One variable group kept in step with one vault."""

    organization: str
    project: str
    group_id: int
    group_name: str
    vault: str
    policy: Policy = Policy()
    kind: LinkKind = "linked"

    @property
    def key(self) -> GroupKey:
        return GroupKey(self.organization.lower(), self.group_id)

    @property
    def prune_only(self) -> bool:
        """Discovered groups were never linked: only names that break pipelines are removed."""
        return self.kind == "discovered"

    def where(self) -> dict[str, Any]:
        """The group's place, in the field names every response and report uses."""
        return {
            "organization": self.organization,
            "project": self.project,
            "groupId": self.group_id,
            "group": self.group_name,
            "vault": self.vault,
        }


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp from Azure (``Z`` and 7 fraction digits: Python 3.11 reads both); naive = UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
