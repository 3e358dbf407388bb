"""Keeping groups in step: the event path and the group writer every path shares.

An event for secret S touches only S: read S once, find the links for its vault in
one query, and for each group whose decision could change, write under the group's
lease -- read the group, plan, renew the lease, and PUT only when something changes.
Every path writes that way, the audit too: a PUT never starts from a listing. When the
lease is busy, the observation is queued for the holder, which folds every queued
observation into its next write; a burst of events therefore costs a handful of writes
per group. *When* a writer may write is :mod:`kvlink_core.leases`' business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from .errors import (
    InvalidEventError,
    KvLinkError,
    TransientError,
    UnwantedEventError,
    UpstreamError,
)
from .events import SecretEvent, parse_event
from .leases import Holding, Leases, Round
from .logs import parse_log_batch
from .marker import TooLongError, marked_group, unmarked_group
from .model import Link, SecretState, VaultKey
from .names import check_secret
from .notify import Notifier
from .plan import Desired, Plan, apply_plan, desired, plan_group, removal_refusal
from .registry import Observation

if TYPE_CHECKING:
    from .devops import DevOps, VariableGroup
    from .keyvault import KeyVault
    from .registry import Registry
    from .settings import Settings

logger = logging.getLogger(__name__)

# What a write does with kvlink's marker in the group's description (see write_group).
MarkerWork = Literal["keep", "write", "remove"]
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
    names: tuple[str, ...] | None = None  # the group's names after this outcome, when it was read


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
        self.group_concurrency = group_concurrency
        self.leases = Leases(
            registry,
            max_wait=max_wait,
            holder_budget=holder_budget,
            batch_window=batch_window,
            max_batch_window=max_batch_window,
        )

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
        first = Round()
        first.merge(observations)

        # One lookup serves every round: links change rarely, and the nightly audit reconciles anyway.
        def apply(round_: Round, holding: Holding) -> list[GroupOutcome]:
            return self._apply_vault(links, round_, origin=origin, path=path)

        return self.leases.run(
            VaultKey(vault),
            first,
            apply,
            default=[],
            queued=[GroupOutcome(link, "queued") for link in work],
            busy="queue",  # a burst must not line its events up behind each other's writes
        )

    def _apply_vault(self, links: list[Link], round_: Round, *, origin: str, path: str) -> list[GroupOutcome]:
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
        marker: MarkerWork = "keep",
    ) -> GroupOutcome:
        """Apply what kvlink observed to one group, under its lease, coalescing with others.

        ``origin`` (event, log, api, cli, audit) is recorded with each write and its notification.
        ``marker`` (see :mod:`kvlink_core.marker`): ``keep`` brings the policy's marker in step only
        when the group is written anyway; ``write`` writes it even if no name changes (linking);
        ``remove`` takes it out (unlinking)
        ``known`` (the group as a listing showed it) serves a dry run only: a write always starts
        from a read under the lease, since whatever a person changed since the listing would be lost.
        """
        first = Round(complete=complete, always=marker == "remove")
        first.merge(observations)
        if dry_run or self.settings.mode == "report":
            group = known or self.devops.get_group(link.organization, link.project, link.group_id)
            return self._apply(link, group, first, force=force, holding=None, origin=origin, marker=marker)

        def apply(round_: Round, holding: Holding) -> GroupOutcome:
            # The read is the first call under the lease, and it must end in time for the renewal.
            group = self.devops.get_group(link.organization, link.project, link.group_id, budget=holding.budget())
            return self._apply(
                link, group, round_, force=force and round_.own, holding=holding, origin=origin, marker=marker
            )

        return self.leases.run(
            link.key,
            first,
            apply,
            default=GroupOutcome(link, "unchanged"),
            queued=GroupOutcome(link, "queued"),
            # A whole-group sync reports its own plan, and a marker is the caller's own work: they wait.
            busy="wait" if complete or marker != "keep" else "hand-off",
        )

    def _apply(
        self,
        link: Link,
        group: VariableGroup | None,
        work: Round,
        *,
        force: bool,
        holding: Holding | None,
        origin: str,
        marker: MarkerWork = "keep",
    ) -> GroupOutcome:
        """Plan ``group`` (read under the lease, unless this is a dry run) and write it if it changes.

        The only place groups are written: the lease is renewed between the read and the PUT, and
        the PUT gets what is left of it as its budget; a lost lease means no PUT.
        """
        if group is None:
            logger.warning("Group %s (%s) no longer exists in project %s", link.group_name, link.key, link.project)
            return GroupOutcome(link, "group-missing", message="the group or its project is gone")
        variables = group.variables
        names = tuple(variables)
        if not group.is_key_vault:
            return GroupOutcome(
                link, "not-key-vault", message="the group is no longer linked to a key vault", names=names
            )
        if (group.vault or "").lower() != link.vault.lower():
            return GroupOutcome(
                link,
                "vault-changed",
                message=f"the group now maps vault {group.vault!r}, not {link.vault!r}",
                names=names,
            )
        plan = self._plan(link, group, work)
        marked = self._marked(link, group, marker if plan.changed or marker != "keep" else None)
        if not plan.changed and (marked is None or not variables):
            return GroupOutcome(link, "unchanged", plan, names=names)
        refusal = None if force else removal_refusal(plan, len(variables), self.settings.max_removal_fraction)
        if refusal:
            logger.warning("Group %s (%s): %s; plan %s", link.group_name, link.key, refusal, plan.as_dict())
            return GroupOutcome(link, "refused", plan, refusal, names=names)
        variables_after = apply_plan(variables, plan)
        if not variables_after:
            message = (
                "refused: the plan would leave the group without variables, which Azure DevOps does not "
                f"accept; remove the group or add a secret (would remove {list(plan.remove)})"
            )
            logger.warning("Group %s (%s): %s", link.group_name, link.key, message)
            return GroupOutcome(link, "refused", plan, message, names=names)
        if holding is None:
            if not plan.changed:  # only the marker would change: nothing to show in a plan
                return GroupOutcome(link, "unchanged", plan, names=names)
            logger.info(
                "Group %s (%s): would add %s, remove %s",
                link.group_name,
                link.key,
                plan.added_names,
                list(plan.remove),
            )
            return GroupOutcome(link, "planned", plan, names=names)
        # Planning may have taken a while (it can ask Key Vault about names): prove the lease is still
        # ours and make the PUT, retries and Retry-After waits included, fit in what is left of it.
        budget = holding.renew()
        self.devops.update_group(link.organization, marked or group, variables_after, budget=budget)
        if not plan.changed:
            logger.info("Group %s (%s): kvlink's marker %s (%s)", link.group_name, link.key, marker, origin)
            return GroupOutcome(link, "applied", plan, names=tuple(variables_after))
        logger.info(
            "Group %s (%s): added %s, removed %s (%s)",
            link.group_name,
            link.key,
            plan.added_names,
            list(plan.remove),
            origin,
        )
        summary = f"+{len(plan.add)} -{len(plan.remove)}"
        self.registry.note_write(link, origin=origin, summary=summary)
        self.notifier.group_updated(link, plan, origin=origin)
        return GroupOutcome(link, "applied", plan, names=tuple(variables_after))

    @staticmethod
    def _marked(link: Link, group: VariableGroup, work: MarkerWork | None) -> VariableGroup | None:
        """The group as it should be sent with the link's marker (written or removed), or None when its
        description stays as read. A marker that would not fit is left out: the names matter more."""
        from .devops import VariableGroup

        if work is None or (link.prune_only and work != "remove"):
            return None  # discovered groups are not kvlink's to label
        if work == "remove":
            raw = unmarked_group(group.raw)
        else:
            try:
                raw = marked_group(group.raw, link.policy)
            except TooLongError as err:
                logger.warning("Group %s (%s): kvlink's marker left out: %s", link.group_name, link.key, err)
                return None
        return None if raw is None else VariableGroup(raw)

    def _plan(self, link: Link, group: VariableGroup, work: Round) -> Plan:
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


def _affected(links: list[Link], states: Iterable[SecretState]) -> list[Link]:
    """The links whose group these secrets could change: any decision other than "leave it"."""
    now = datetime.now(UTC)
    states = list(states)
    return [
        link
        for link in links
        if any(desired(s, link.policy, prune_only=link.prune_only, now=now) is not Desired.KEEP for s in states)
    ]
