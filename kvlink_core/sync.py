"""Keeping groups in step: the event path and the group writer every path shares.

An event for secret S touches only S: read S once, find the links for its vault in
one query, and for each group whose decision could change, write under the group's
lease -- re-read, plan, and PUT only when something changes. When the lease is busy,
the observation is queued for the holder, which folds every queued observation into
its next write; a burst of events therefore costs a handful of writes per group.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .errors import (
    InvalidEventError,
    KvLinkError,
    LeaseBusyError,
    TransientError,
    UnwantedEventError,
    UpstreamError,
)
from .events import SecretEvent, parse_event
from .logs import parse_log_batch
from .model import LeaseKey, Link, SecretState, VaultKey
from .names import check_secret
from .notify import Notifier
from .plan import Desired, Plan, apply_plan, desired, plan_group, removal_refusal
from .registry import Lease, Observation

if TYPE_CHECKING:
    from .devops import DevOps, VariableGroup
    from .keyvault import KeyVault
    from .registry import Registry
    from .settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

Status = Literal[
    "applied",
    "unchanged",
    "planned",
    "refused",
    "queued",
    "group-missing",
    "not-key-vault",
    "vault-changed",
    "failed",
]


@dataclass(frozen=True, slots=True)
class GroupOutcome:
    link: Link
    status: Status
    plan: Plan | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class EventResult:
    status: Literal["processed", "ignored", "rejected"]
    event: SecretEvent | None = None
    groups: tuple[GroupOutcome, ...] = ()
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class LogBatchResult:
    records: int  # actionable records in the batch
    ignored: int  # well-formed records that needed nothing
    skipped: int  # malformed records
    groups: tuple[GroupOutcome, ...] = ()


@dataclass
class _Round:
    """What one holder round knows: observations keyed by lower-cased secret name."""

    observations: dict[str, Observation] = field(default_factory=dict)
    complete: bool = False
    known: VariableGroup | None = None  # the group as a listing showed it (audit), to spare a read
    gather: bool = False  # read the queue in this first round too

    def merge(self, more: Iterable[Observation]) -> None:
        for obs in more:
            known = self.observations.get(obs.state.key)
            if known is None or obs.at >= known.at:
                self.observations[obs.state.key] = obs


class Engine:
    """The core of kvlink; every trigger and the CLI call into one of its entry points."""

    def __init__(
        self,
        settings: Settings,
        *,
        keyvault: KeyVault,
        devops: DevOps,
        registry: Registry,
        max_wait: float | None = None,
        group_concurrency: int = 4,
        notifier: Notifier | None = None,
        holder_budget: float = 15.0,
        batch_window: float = 0.3,
        max_batch_window: float = 2.4,
    ) -> None:
        self.settings = settings
        self.keyvault = keyvault
        self.devops = devops
        self.registry = registry
        self.notifier = notifier or Notifier(settings, None)
        # A waiter gives up (and lets the event be redelivered) after two lease lifetimes.
        self.max_wait = max_wait if max_wait is not None else 2 * registry.lease_seconds
        self.group_concurrency = group_concurrency
        # How long one invocation keeps writing others' queued work before handing the lease on,
        # and how long a holder lets queued work gather between two writes.
        self.holder_budget = holder_budget
        self.batch_window = batch_window
        self.max_batch_window = max_batch_window

    def close(self) -> None:
        self.keyvault.close()
        self.devops.close()
        self.registry.close()
        self.notifier.close()

    # -- Event Grid ------------------------------------------------------------------
    def handle_event(self, envelope: Mapping[str, Any]) -> EventResult:
        """One Event Grid delivery. Unwanted or malformed events are logged and acknowledged;
        transient failures raise so that Event Grid redelivers."""
        try:
            event = parse_event(envelope)
        except UnwantedEventError as err:
            logger.info("Ignored: %s", err)
            return EventResult("ignored", reason=str(err))
        except InvalidEventError as err:
            logger.warning("Rejected malformed event: %s", err)
            return EventResult("rejected", reason=str(err))
        if not self.settings.vault_allowed(event.vault):
            reason = f"event {event.event_id}: vault {event.vault!r} is not in KVLINK_ALLOWED_VAULTS"
            logger.warning("Ignored: %s", reason)
            return EventResult("ignored", event, reason=reason)
        logger.info("Event %s: %s for secret %s in vault %s", event.event_id, event.kind, event.secret, event.vault)
        if event.kind == "SecretNearExpiry":
            return EventResult("processed", event, tuple(self._warn_near_expiry(event)))
        outcomes = self.sync_secrets(
            event.vault,
            [event.secret],
            origin=f"event {event.event_id}",
            version_hints={event.secret: event.version} if event.version else None,
        )
        return EventResult("processed", event, tuple(outcomes))

    def _warn_near_expiry(self, event: SecretEvent) -> list[GroupOutcome]:
        """Nothing breaks yet (an expired secret still works), but the owners should know which groups."""
        mapping = []
        for link in self._links(event.vault):
            group = self.devops.get_group(link.organization, link.project, link.group_id)
            if group is not None and event.secret.lower() in {n.lower() for n in group.variables}:
                mapping.append(link)
        if mapping:
            when = event.expires.strftime("%Y-%m-%d %H:%M UTC") if event.expires else "soon"
            logger.warning(
                "Secret %s in vault %s expires %s; it is mapped by %s",
                event.secret,
                event.vault,
                when,
                ", ".join(
                    f"{link.organization}/{link.project}/{link.group_name} ({link.group_id})" for link in mapping
                ),
            )
        return [GroupOutcome(link, "unchanged", message="maps a secret near expiry") for link in mapping]

    # -- diagnostic logs (Event Hubs) --------------------------------------------------
    def handle_log_batch(self, bodies: Iterable[bytes | str]) -> LogBatchResult:
        """One Event Hubs batch of ``AuditEvent`` envelopes: deletes, disables, recoveries.

        The work is written to Table storage before anything else, because the trigger
        checkpoints the batch even when this function fails. Then every vault's pending
        secrets -- this batch's and any an earlier failure left -- get one decision each
        from their current state, and each linked group at most one write. A transient
        failure raises (the function's retry policy runs the batch again); the rows stay.
        """
        batch = parse_log_batch(bodies, vault_allowed=self.settings.vault_allowed)
        for position, reason in batch.skipped:
            logger.warning("Skipped malformed log record (%s): %s", position, reason)
        for vault, names in batch.by_vault().items():
            self.registry.add_vault_work(vault, names)
        outcomes: list[GroupOutcome] = []
        failures: list[KvLinkError] = []
        for vault, rows in self.registry.vault_work().items():
            names = [row.name for row in rows]
            try:
                outcomes += self.sync_secrets(vault, names, origin=f"audit log ({len(names)} secrets)", path="log")
            except TransientError as err:
                logger.warning("Vault %s: %s; its %d secrets stay queued", vault, err, len(names))
                failures.append(err)
                continue
            except UpstreamError as err:
                # Retrying cannot fix a missing permission; the audit reports it. Do not loop on it.
                logger.error("Vault %s: %s; dropping %d queued secrets", vault, err, len(names))  # noqa: TRY400
            self.registry.remove_vault_work(rows)
        if failures:
            raise failures[0]
        return LogBatchResult(len(batch.records), batch.ignored, len(batch.skipped), tuple(outcomes))

    # -- edge-triggered: named secrets of one vault ------------------------------------
    def sync_secrets(
        self,
        vault: str,
        names: Iterable[str],
        *,
        origin: str,
        path: str = "event",
        version_hints: Mapping[str, str] | None = None,
    ) -> list[GroupOutcome]:
        """Bring every group linked to ``vault`` in step for the named secrets only.

        ``origin`` names the trigger in log lines; ``path`` (event, log) is recorded with writes."""
        links = self._links(vault)
        if not links:
            logger.info("%s: no group is linked to vault %s", origin, vault)
            return []
        states = self.keyvault.secret_states(vault, names, version_hints=version_hints)
        observations = [Observation(state) for state in states.values()]
        work = _affected(links, states.values())
        skipped = [GroupOutcome(link, "unchanged") for link in links if link not in work]
        if len(work) > 1:
            return skipped + self._write_vault(vault, links, work, observations, origin=origin, path=path)
        return skipped + self.for_each(
            work, lambda link: self.write_group(link, observations, origin=path), origin=origin
        )

    # -- vault-level coalescing ---------------------------------------------------------
    def _write_vault(
        self,
        vault: str,
        links: list[Link],
        work: list[Link],
        observations: list[Observation],
        *,
        origin: str,
        path: str,
    ) -> list[GroupOutcome]:
        """Several groups to update: one holder per vault applies everyone's observations to all of them.

        Without this, a burst of events for a vault mapped by ten groups meets ten contended group
        leases per event; with it, each event costs a lease attempt on the vault, and each round
        of the vault's holder writes every group once for all the observations queued meanwhile.
        """
        key = VaultKey(vault)
        first = _Round()
        first.merge(observations)

        # One lookup serves every round: links change rarely, and the nightly audit reconciles anyway.
        def apply(round_: _Round, is_first: bool) -> list[GroupOutcome]:
            return self._apply_vault(links, round_, origin=origin, path=path)

        lease = self.registry.try_acquire(key)
        if lease is not None:
            # Several groups are about to be written for one secret: let a burst's other events queue
            # first, so this write carries theirs too (a lone event pays this short wait, once).
            time.sleep(self.batch_window)
            first.gather = True
            return self._hold(key, lease, first, apply, [], waiters_poll=False)
        return self._hand_off(
            key,
            first,
            on_lease=lambda lease: self._hold(key, lease, _Round(), apply, [], waiters_poll=False),
            queued=[GroupOutcome(link, "queued") for link in work],
            wait=False,  # a burst must not line its events up behind each other's writes
        )

    def _apply_vault(self, links: list[Link], round_: _Round, *, origin: str, path: str) -> list[GroupOutcome]:
        observations = list(round_.observations.values())
        links = _affected(links, [obs.state for obs in observations])
        return self.for_each(links, lambda link: self.write_group(link, observations, origin=path), origin=origin)

    def _links(self, vault: str) -> list[Link]:
        links = self.registry.links_for_vault(vault)
        if self.settings.unlinked_groups == "ignore":
            links = [link for link in links if link.kind != "discovered"]
        return links

    def for_each(
        self, links: list[Link], job: Any, *, origin: str, collect_failures: bool = False
    ) -> list[GroupOutcome]:
        """Run ``job`` per group, a few at a time. One group's failure does not stop the others;
        it is re-raised afterwards, or (``collect_failures``) reported as that group's outcome
        unless every group failed."""
        outcomes: list[GroupOutcome] = []
        failures: list[KvLinkError] = []

        def settle(link: Link, run: Callable[[], GroupOutcome]) -> None:
            try:
                outcomes.append(run())
            except KvLinkError as err:
                logger.warning("%s: group %s (%s) failed: %s", origin, link.group_name, link.key, err)
                failures.append(err)
                outcomes.append(GroupOutcome(link, "failed", message=str(err)))

        if len(links) == 1:  # the usual event: no thread pool for one group
            settle(links[0], lambda: job(links[0]))
        elif links:
            with ThreadPoolExecutor(max_workers=min(self.group_concurrency, len(links))) as pool:
                futures = [(link, pool.submit(job, link)) for link in links]
                for link, future in futures:
                    settle(link, future.result)
        if failures and (not collect_failures or len(failures) == len(links)):
            raise failures[0]
        return outcomes

    # -- the group writer ------------------------------------------------------------
    def write_group(
        self,
        link: Link,
        observations: Iterable[Observation],
        *,
        complete: bool = False,
        force: bool = False,
        dry_run: bool = False,
        known: VariableGroup | None = None,
        origin: str = "event",
    ) -> GroupOutcome:
        """Apply what kvlink observed to one group, under its lease, coalescing with others.

        ``origin`` (event, log, api, cli, audit) is recorded with each write and its notification.
        """
        first = _Round(complete=complete, known=known)
        first.merge(observations)
        if dry_run or self.settings.mode == "report":
            return self._apply(link, first, force=force, write=False, origin=origin)

        def apply(round_: _Round, is_first: bool) -> GroupOutcome:
            return self._apply(link, round_, force=force and is_first, write=True, origin=origin)

        lease = self.registry.try_acquire(link.key)
        if lease is not None:
            return self._hold(link.key, lease, first, apply, GroupOutcome(link, "unchanged"))
        if complete:
            # A whole-group sync reports its own plan, so it waits for its turn.
            return self._hold(link.key, self._wait_for_lease(link), first, apply, GroupOutcome(link, "unchanged"))
        return self._hand_off(
            link.key,
            first,
            on_lease=lambda lease: self._hold(link.key, lease, _Round(), apply, GroupOutcome(link, "unchanged")),
            queued=GroupOutcome(link, "queued"),
        )

    def _hold(
        self,
        key: LeaseKey,
        lease: Lease,
        first: _Round,
        apply: Callable[[_Round, bool], T],
        default: T,
        *,
        waiters_poll: bool = True,
    ) -> T:
        """Write as the lease holder, round after round, until nothing more is queued.

        Returns what ``apply`` returned for the holder's own (first) round, or for the first
        round that had work, or ``default`` when no round had any.
        """
        result: T | None = None
        current: _Round | None = first
        look_at_queue = lease.took_over or not first.observations or first.gather
        started = time.monotonic()
        window = self.batch_window
        try:
            while True:
                work = current or _Round()
                rows = self.registry.pending(key) if look_at_queue else []
                work.merge(row.observation for row in rows)
                if work.observations:
                    lease = self._keep_alive(lease)
                    outcome = apply(work, work is first)
                    result = outcome if work is first or result is None else result
                if rows:
                    self.registry.remove_pending(key, rows)
                current, look_at_queue = None, True
                if lease.poked:  # seen while renewing, possibly after this round read the queue
                    lease = replace(lease, poked=False)
                    continue
                if self.registry.release(lease):
                    return default if result is None else result
                if waiters_poll and time.monotonic() - started > self.holder_budget:
                    # Under a steady stream this invocation would never finish (and Event Grid wants an
                    # answer within 30 s). Its own work is done; every queued row has a waiter that
                    # polls the lease, so hand it over. (Where waiters hand their work over and leave,
                    # the holder drains the queue: at worst its own event is redelivered, harmlessly.)
                    self.registry.release_quietly(lease)
                    return default if result is None else result
                # Someone queued work. Let more arrive before the next round, a little longer each time
                # the queue refills: in a burst, one write then carries many observations, not one each.
                time.sleep(window)
                window = min(window * 2, self.max_batch_window)
                lease = self.registry.refresh(lease)
        except BaseException:
            self.registry.release_quietly(lease)
            raise

    def _keep_alive(self, lease: Lease) -> Lease:
        if time.monotonic() - lease.renewed > self.registry.lease_seconds / 3:
            return self.registry.refresh(lease)
        return lease

    def _hand_off(
        self, key: LeaseKey, work: _Round, *, on_lease: Callable[[Lease], T], queued: T, wait: bool = True
    ) -> T:
        """Queue the observations for the current holder; by default, wait until they are written.

        Without ``wait`` the queued work is the holder's once a live holder has been poked: it
        writes everything queued before it lets go, and whoever takes the lease next (or the
        nightly audit) finishes what a holder that died left behind.
        """
        rows = self.registry.add_pending(key, work.observations.values())
        deadline = time.monotonic() + self.max_wait
        delay = self.batch_window + 0.1
        while time.monotonic() < deadline:
            if not self.registry.poke(key):
                lease = self.registry.try_acquire(key)
                if lease is not None:
                    return on_lease(lease)
                continue  # another waiter got it first: poke that one
            if not wait:
                if not self.registry.lease_free(key):
                    return queued
                lease = self.registry.try_acquire(key)  # the poked holder had died: take over
                if lease is not None:
                    return on_lease(lease)
                continue
            polls = 0
            while time.monotonic() < deadline:
                # The holder gathers work for a batch window and then writes: no need to poll faster.
                time.sleep(delay * (0.5 + random.random()))  # noqa: S311 -- jitter, not crypto
                delay = min(delay * 1.5, 2.0)
                polls += 1
                if not self.registry.has_pending(key, rows):
                    logger.info("%s: the lease holder wrote our changes", key)
                    return queued
                if polls % 3 or not self.registry.lease_free(key):
                    continue  # one read per poll; the lease itself is looked at every third poll
                lease = self.registry.try_acquire(key)
                if lease is not None:  # the holder finished or died: finish the queue ourselves
                    return on_lease(lease)
        raise LeaseBusyError(
            f"{key} stayed locked for {self.max_wait:.0f}s; its changes stay queued",
            retry_after=self.registry.lease_seconds,
        )

    def _wait_for_lease(self, link: Link) -> Lease:
        deadline = time.monotonic() + self.max_wait
        delay = 0.05
        while time.monotonic() < deadline:
            time.sleep(delay * (0.5 + random.random()))  # noqa: S311 -- jitter, not crypto
            delay = min(delay * 2, 1.0)
            lease = self.registry.try_acquire(link.key)
            if lease is not None:
                return lease
        raise LeaseBusyError(f"group {link.key} stayed locked for {self.max_wait:.0f}s", retry_after=5.0)

    def _apply(self, link: Link, work: _Round, *, force: bool, write: bool, origin: str) -> GroupOutcome:
        """Read the group, plan it, and write it if it changes. The only place groups are written."""
        group = self._current_group(link, work.known, write=write)
        if group is None:
            logger.warning("Group %s (%s) no longer exists in project %s", link.group_name, link.key, link.project)
            return GroupOutcome(link, "group-missing", message="the group or its project is gone")
        if not group.is_key_vault:
            return GroupOutcome(link, "not-key-vault", message="the group is no longer linked to a key vault")
        if (group.vault or "").lower() != link.vault.lower():
            return GroupOutcome(
                link, "vault-changed", message=f"the group now maps vault {group.vault!r}, not {link.vault!r}"
            )
        variables = group.variables
        plan = self._plan(link, group, work)
        if not plan.changed:
            return GroupOutcome(link, "unchanged", plan)
        refusal = None if force else removal_refusal(plan, len(variables), self.settings.max_removal_fraction)
        if refusal:
            logger.warning("Group %s (%s): %s; plan %s", link.group_name, link.key, refusal, plan.as_dict())
            return GroupOutcome(link, "refused", plan, refusal)
        variables_after = apply_plan(variables, plan)
        if not variables_after:
            message = (
                "refused: the plan would leave the group without variables, which Azure DevOps does not "
                f"accept; remove the group or add a secret (would remove {list(plan.remove)})"
            )
            logger.warning("Group %s (%s): %s", link.group_name, link.key, message)
            return GroupOutcome(link, "refused", plan, message)
        if not write:
            logger.info(
                "Group %s (%s): would add %s, remove %s",
                link.group_name,
                link.key,
                plan.added_names,
                list(plan.remove),
            )
            return GroupOutcome(link, "planned", plan)
        updated = self.devops.update_group(link.organization, group, variables_after)
        logger.info(
            "Group %s (%s): added %s, removed %s (%s)",
            link.group_name,
            link.key,
            plan.added_names,
            list(plan.remove),
            origin,
        )
        summary = f"+{len(plan.add)} -{len(plan.remove)}"
        self.registry.note_write(link, modified_on=updated.modified_on, origin=origin, summary=summary)
        self.notifier.group_updated(link, plan, origin=origin)
        return GroupOutcome(link, "applied", plan)

    def _plan(self, link: Link, group: VariableGroup, work: _Round) -> Plan:
        """Plan the group; never remove a name just because a listing older than the group lacks it."""
        secrets = {key: obs.state for key, obs in work.observations.items()}
        plan = plan_group(group.variables, secrets, link.policy, complete=work.complete, prune_only=link.prune_only)
        unlisted = [name for name in plan.remove if name.lower() not in secrets]
        if not (work.complete and unlisted and work.observations):
            return plan
        listed_at = datetime.fromtimestamp(min(obs.at for obs in work.observations.values()) / 1e9, UTC)
        modified = group.modified_on
        # Azure DevOps' clock against ours: a generous margin, since a check costs one read per name.
        if modified is not None and modified < listed_at - timedelta(minutes=5):
            return plan
        # The group changed after the listing began: an unlisted name may be a secret created since.
        # A name Key Vault could never hold is simply gone (and asking about it would be a 400).
        unlisted = [name for name in unlisted if check_secret(name) is None]
        fresh = self.keyvault.secret_states(link.vault, unlisted) if unlisted else {}
        work.merge(Observation(state) for state in fresh.values())
        secrets = {key: obs.state for key, obs in work.observations.items()}
        return plan_group(group.variables, secrets, link.policy, complete=work.complete, prune_only=link.prune_only)

    def _current_group(self, link: Link, known: VariableGroup | None, *, write: bool) -> VariableGroup | None:
        """The group to plan from. A listed group is used as is unless kvlink wrote it after the
        listing (the write marker says so) -- the one way kvlink's own listing can be stale to it."""
        if known is not None:
            if not write:
                return known
            marker = self.registry.written_on(link)
            listed = known.modified_on
            if listed is not None and (marker is None or marker <= listed):
                return known
        return self.devops.get_group(link.organization, link.project, link.group_id)


def _affected(links: list[Link], states: Iterable[SecretState]) -> list[Link]:
    """The links whose group these secrets could change: any decision other than "leave it"."""
    now = datetime.now(UTC)
    states = list(states)
    return [
        link
        for link in links
        if any(desired(s, link.policy, prune_only=link.prune_only, now=now) is not Desired.KEEP for s in states)
    ]
