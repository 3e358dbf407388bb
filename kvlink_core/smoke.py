"""``python -m kvlink_core smoke``: prove the deployed app works end to end, in the operator's own estate.

With the operator's credentials (``az login`` or ``AZURE_DEVOPS_PAT``; never kvlink's identity) it
creates one canary secret with a unique name in the named vault, waits until Azure DevOps shows the
name in the named group -- put there by the *deployed* app, through Event Grid and
``on_secret_event`` -- deletes the canary and waits until the name leaves the group through the
diagnostic-log path (Event Hubs and ``on_vault_log``), then purges it. It calls no kvlink entry
point that writes: the group is only read, and no name but the canary's is touched.

Each step prints one line with the time it took; the first wait is the event-to-group latency. A
wait that runs out names what to check (the permission or setting that is most likely missing).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO

from .errors import KvLinkError, TransientError

if TYPE_CHECKING:
    from .devops import DevOps
    from .keyvault import CanaryVault

CANARY_PREFIX = "kvlink-smoke-"
CANARY_TAGS: dict[str, str] = {}  # none: a link that requires tags would not admit the canary anyway

APPEAR = "canary name in the group (Event Grid -> on_secret_event)"
LEAVE = "canary name gone from the group (audit log -> Event Hub -> on_vault_log)"
APPEAR_HINTS = (
    "the Event Grid subscription from the vault's system topic to on_secret_event (postdeploy creates it: "
    "re-run `azd hooks run postdeploy`)",
    "the function app is running and on_secret_event is listed (GET /api/health answers 200)",
    "the group is linked in kvlink (`python -m kvlink_core links --vault {vault}`) and its include/exclude "
    f"patterns admit {CANARY_PREFIX}* (the canary carries no tag a link may require)",
    "the vault is in the app's KVLINK_ALLOWED_VAULTS and the organization in KVLINK_DEVOPS_ORGS",
    "kvlink's identity may list the vault's secrets ('List' or 'Key Vault Reader') and edit the group "
    "(Administrator on it in Azure DevOps)",
    "KVLINK_MODE is apply, not report",
)
LEAVE_HINTS = (
    "the vault's diagnostic setting sends the AuditEvent category to kvlink's Event Hub (postdeploy creates it)",
    "on_vault_log is listed and KVLINK_EVENTHUB__fullyQualifiedNamespace / KVLINK_EVENTHUB_NAME point at that hub",
    "kvlink's identity holds 'Azure Event Hubs Data Receiver' on the hub",
    "Key Vault delivers audit logs up to about 10 minutes late: a longer --leave-timeout may be all it needs; "
    "the nightly audit removes the name otherwise",
)


@dataclass(frozen=True, slots=True)
class Target:
    vault: str
    organization: str
    project: str
    group_id: int

    @property
    def group(self) -> str:
        return f"{self.organization}/{self.project}/{self.group_id}"


@dataclass(frozen=True, slots=True)
class Waits:
    appear: float = 180.0  # Event Grid delivers in seconds; a cold Flex app needs some more
    leave: float = 1200.0  # AuditEvent logs reach Event Hubs up to ~10 minutes late
    purge: float = 120.0  # a deletion takes a few seconds before the name can be purged
    poll: float = 3.0


class _Failed(Exception):  # noqa: N818 -- a step that did not complete; the run stops there
    pass


class Smoke:
    def __init__(
        self,
        target: Target,
        vault: CanaryVault,
        devops: DevOps,
        out: TextIO,
        *,
        waits: Waits = Waits(),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self.vault = vault
        self.devops = devops
        self.out = out
        self.waits = waits
        self.clock = clock
        self.sleep = sleep
        self.name = f"{CANARY_PREFIX}{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
        self.timings: dict[str, float] = {}
        self._step = 0

    def run(self) -> int:
        """0 when the canary went in and out of the group; 1 otherwise (what it made is removed either way)."""
        t = self.target
        print(f"kvlink smoke: vault {t.vault}, group {t.group}, canary secret {self.name}", file=self.out)
        created = deleted = False
        try:
            self._do("group is a Key Vault group of the vault", self._check_group)
            self._do(f"create canary secret {self.name}", self._create)
            created = True
            self._wait(APPEAR, True, self.waits.appear, APPEAR_HINTS)
            self._do("delete canary secret", lambda: self.vault.delete(self.name))
            deleted = True
            self._wait(LEAVE, False, self.waits.leave, LEAVE_HINTS)
        except _Failed:
            ok = False
        else:
            ok = True
        if created:
            self._clean_up(deleted=deleted)
        if ok:
            print(
                f"smoke: OK -- event to group {self.timings['appear']:.1f}s, "
                f"delete to group {self.timings['leave']:.1f}s",
                file=self.out,
            )
            return 0
        print("smoke: FAILED (see the step above)", file=self.out)
        return 1

    # -- steps -------------------------------------------------------------------------
    def _check_group(self) -> str:
        t = self.target
        group = self.devops.get_group(t.organization, t.project, t.group_id)
        if group is None:
            raise _Failed(f"group {t.group_id} was not found in {t.organization}/{t.project}")
        if not group.is_key_vault or (group.vault or "").lower() != t.vault.lower():
            where = f"linked to vault {group.vault!r}" if group.is_key_vault else "not a Key Vault group"
            raise _Failed(f"group {group.name!r} is {where}, not to {t.vault!r}")
        if self.name.lower() in {n.lower() for n in group.variables}:
            raise _Failed(f"group {group.name!r} already maps {self.name}")  # cannot happen: the name is new
        return f"{group.name!r}, {len(group.variables)} names"

    def _create(self) -> str:
        value = secrets.token_urlsafe(32)  # random, never printed, never read back
        self.vault.create(self.name, value, tags=CANARY_TAGS)
        return "created"

    def _in_group(self) -> bool:
        t = self.target
        group = self.devops.get_group(t.organization, t.project, t.group_id)
        return group is not None and self.name.lower() in {n.lower() for n in group.variables}

    def _in_group_now(self) -> bool | None:
        """Whether the group maps the canary now; None when Azure DevOps could not say (look again)."""
        try:
            return self._in_group()
        except TransientError:
            return None

    def _clean_up(self, *, deleted: bool) -> None:
        try:
            if not deleted:
                self._do("delete canary secret", lambda: self.vault.delete(self.name))
            self._do("purge canary secret", self._purge)
        except _Failed:
            print(
                f"   the canary {self.name} stays soft-deleted until the vault's retention period (7-90 days) "
                "ends, and Key Vault removes it then; its name is unique and no group maps it. Purge it later "
                f"with: az keyvault secret purge --vault-name {self.target.vault} --name {self.name}",
                file=self.out,
            )

    def _purge(self) -> str:
        deadline = self.clock() + self.waits.purge
        while not self.vault.deleted(self.name):  # a deletion completes after a few seconds
            if self.clock() >= deadline:
                raise _Failed(f"the deletion did not finish within {self.waits.purge:.0f}s")
            self.sleep(self.waits.poll)
        self.vault.purge(self.name)
        return "purged"

    # -- plumbing ------------------------------------------------------------------------
    def _do(self, what: str, action: Callable[[], object]) -> None:
        self._step += 1
        started = self.clock()
        try:
            result = action()
        except KvLinkError as err:
            self._line(what, f"FAILED: {err}", started)
            raise _Failed(str(err)) from err
        except _Failed as failed:
            self._line(what, f"FAILED: {failed}", started)
            raise
        self._line(what, str(result) if isinstance(result, str) else "ok", started)

    def _wait(self, what: str, present: bool, limit: float, hints: tuple[str, ...]) -> None:
        self._step += 1
        started = self.clock()
        try:
            while self._in_group_now() != present:
                if self.clock() - started >= limit:
                    self._line(what, f"TIMED OUT after {limit:g}s", started)
                    print("   check:", file=self.out)
                    for hint in hints:
                        print(f"   - {hint.replace('{vault}', self.target.vault)}", file=self.out)
                    raise _Failed(what)
                self.sleep(self.waits.poll)
        except KvLinkError as err:
            self._line(what, f"FAILED: {err}", started)
            raise _Failed(str(err)) from err
        self.timings["appear" if present else "leave"] = self.clock() - started
        self._line(what, "ok", started)

    def _line(self, what: str, result: str, started: float) -> None:
        print(f"{self._step}. {what}: {result} ({self.clock() - started:.1f}s)", file=self.out)


def parse_group(text: str) -> tuple[str, str, int] | None:
    """``ORG/PROJECT/ID`` (the project may not contain a slash); None when it is not that."""
    organization, _, rest = text.partition("/")
    project, _, group_id = rest.rpartition("/")
    if not organization or not project or not group_id.isdigit() or int(group_id) <= 0:
        return None
    return organization, project, int(group_id)
