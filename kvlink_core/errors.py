"""kvlink's error hierarchy: one leaf per decision a caller makes differently."""

from __future__ import annotations

import re
from typing import Any


class KvLinkError(Exception):
    """Base class of every error kvlink raises on purpose."""


class ConfigError(KvLinkError):
    """The settings are unusable; every problem is listed at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid kvlink settings:\n  - " + "\n  - ".join(problems))

    @property
    def settings(self) -> tuple[str, ...]:
        """The names of the settings at fault, never their values: safe to show a caller.

        Every problem starts with the name of its setting.
        """
        found = (re.match(r"[A-Za-z_][A-Za-z0-9_]*", problem) for problem in self.problems)
        return tuple(dict.fromkeys(match.group() for match in found if match))


class InvalidEventError(KvLinkError):
    """An event kvlink must not act on. Permanent: acknowledge it, never retry."""

    def __init__(self, message: str, *, event_id: str | None = None) -> None:
        self.event_id = event_id
        super().__init__(message)


class UnwantedEventError(InvalidEventError):
    """A well-formed event that is not kvlink's business (a key, a vault outside the allow-list)."""


class RequestError(KvLinkError):
    """A caller's request is wrong or not allowed; carries the HTTP status to answer with."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.field = field
        self.details = details or {}  # e.g. the refused plan, shown to the caller
        super().__init__(message)


class UpstreamError(KvLinkError):
    """Azure answered with a failure that retrying will not fix (401, 403, 400)."""

    def __init__(self, system: str, status: int | None, message: str) -> None:
        self.system = system
        self.status = status
        super().__init__(message)


class TransientError(KvLinkError):
    """Try again later: throttling, 5xx, timeouts, resets, a busy lease.

    ``system`` is "devops", "keyvault" or "storage"; ``status`` is the HTTP status that
    system last answered, when it answered at all.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        system: str | None = None,
        status: int | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.system = system
        self.status = status
        super().__init__(message)


class LeaseBusyError(TransientError):
    """Another kvlink instance holds the group's lease and did not finish in time."""
