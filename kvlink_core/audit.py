"""The nightly audit: discover every Key Vault group, reconcile it with its vault, report.

Events get lost, logs arrive late, people edit groups by hand; the audit is the
level-triggered backstop. It lists each vault once (however many groups map it) and
each project's variable groups once, plans every group from those listings, and writes
only the groups that drifted -- each re-read under its lease and planned again from that
read (a person may have changed it since the listing), within the mass-removal guard.
Key Vault listings and Azure DevOps calls run concurrently, each within its own bound
(``KVLINK_VAULT_CONCURRENCY``, ``KVLINK_DEVOPS_CONCURRENCY``); one failing vault,
project or organization never stops the rest -- the report says what was not reached.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .devops import Pipeline, PipelineAccess
from .errors import KvLinkError, UpstreamError
from .marker import MarkerError, TooLongError, group_policy, marked_group
from .model import GroupKey, Link, Policy, SecretState, VaultKey
from .names import check_secret
from .plan import Decisions, Plan, decide, plan_group
from .registry import Observation

if TYPE_CHECKING:
    from .devops import VariableGroup
    from .keyvault import Listed
    from .sync import Engine, GroupOutcome

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning", "info"]
Progress = Callable[[int, int], None]  # (groups done, groups found so far)
_SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
GROUP_NAMES_KEPT = 50  # names stored per group in a report: enough to recognise a group, small enough for a row
AUDIT_GC_THRESHOLD = 20_000  # the collector's first-generation threshold during an audit (measured: bench/results.md)
PLAN_NAMES_KEPT = 20  # names per list of a refused plan in its finding; the rest are counted


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    kind: str
    message: str
    organization: str | None = None
    project: str | None = None
    group_id: int | None = None
    group: str | None = None
    vault: str | None = None
    secret: str | None = None
    repaired: bool = False
    # The blast radius, looked up for open breaking findings only (see BREAKING).
    pipelines: tuple[Pipeline, ...] = ()
    all_pipelines: bool = False
    pipelines_unknown: str | None = None  # why the pipelines could not be named

    @classmethod
    def about(cls, link: Link, severity: Severity, kind: str, message: str, secret: str | None = None) -> Finding:
        """A finding about one linked (or discovered) group."""
        return cls(
            severity, kind, message, link.organization, link.project, link.group_id, link.group_name, link.vault, secret
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "message": self.message,
            "organization": self.organization,
            "project": self.project,
            "groupId": self.group_id,
            "group": self.group,
            "vault": self.vault,
            "secret": self.secret,
            "repaired": self.repaired,
            "pipelines": [p.as_json() for p in self.pipelines],
            "allPipelines": self.all_pipelines,
            "pipelinesUnknown": self.pipelines_unknown,
        }


@dataclass
class AuditReport:
    started: datetime
    finished: datetime
    dry_run: bool
    groups_linked: int = 0
    groups_discovered: int = 0
    groups_unreached: int = 0  # of those linked and discovered: Azure DevOps could not be read for them
    new_discovered: int = 0
    groups_changed: int = 0
    vaults: int = 0
    names_added: int = 0
    names_removed: int = 0
    findings: list[Finding] = field(default_factory=list)
    unreached: list[str] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)  # one compact summary per audited group
    stored: str | None = None  # the run id the report was stored under
    store_error: str | None = None  # why it could not be stored
    broken: list[BrokenGroup] = field(default_factory=list)  # groups with open breaking findings
    listing_pages: dict[str, int] = field(default_factory=dict)  # pages per vault listed: the next run's order

    @property
    def open_findings(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]

    @property
    def drift_remains(self) -> bool:
        """Something still needs a person (or a run without --dry-run): the CLI's exit 2."""
        return any(f.severity == "error" or f.kind in _DRIFT for f in self.open_findings) or bool(self.unreached)

    def summary(self) -> dict[str, Any]:
        by_severity = {s: sum(1 for f in self.findings if f.severity == s) for s in _SEVERITIES}
        open_by_severity = {s: sum(1 for f in self.open_findings if f.severity == s) for s in _SEVERITIES}
        return {
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "durationSeconds": round((self.finished - self.started).total_seconds(), 3),
            "dryRun": self.dry_run,
            "groups": {
                "linked": self.groups_linked,
                "discovered": self.groups_discovered,
                "unreached": self.groups_unreached,
                "newlyDiscovered": self.new_discovered,
                "changed": self.groups_changed,
            },
            "vaults": self.vaults,
            "names": {"added": self.names_added, "removed": self.names_removed},
            "findingsBySeverity": by_severity,
            "openFindingsBySeverity": open_by_severity,
            "unreached": list(self.unreached),
            "driftRemains": self.drift_remains,
            "brokenGroups": len(self.broken),
            # Distinct pipelines: one that uses two broken groups is one pipeline at risk.
            "pipelinesAtRisk": len(
                {(b.organization.lower(), b.project.lower(), p.id) for b in self.broken for p in b.pipelines}
            ),
        }

    def storage(self) -> dict[str, Any]:
        """Whether the report was stored, and under which run id (or why not)."""
        stored: dict[str, Any] = {"run": self.stored, "reportStored": self.stored is not None}
        if self.store_error:
            stored["reportError"] = self.store_error
        return stored

    def as_json(self) -> dict[str, Any]:
        # "auditedGroups", not "groups": the summary's "groups" holds the counts API clients read.
        return {
            **self.summary(),
            **self.storage(),
            "findings": [f.as_json() for f in self.findings],
            "auditedGroups": list(self.groups),
        }


# Findings that mean "the group is not what it should be" (repairable drift).
_DRIFT = frozenset({"secret-deleted", "secret-disabled", "secret-missing", "sync-refused"})
# Findings about the policy marker in a linked group's description, settled by the group's write.
_MARKER = frozenset({"link-marked", "link-marker-changed"})
# Findings that, while open, stop pipelines that use the group: the audit names those pipelines.
BREAKING = frozenset(
    {
        "secret-deleted",
        "secret-disabled",
        "unmappable",
        "vault-unreadable",
        "service-connection-missing",
        "service-connection-not-ready",
        "sync-refused",
        "write-failed",
    }
)
PIPELINES_DENIED = (
    "pipelines unknown: kvlink lacks permission to read pipelines "
    "(a PAT needs the scope Build: Read, vso.build; kvlink's Microsoft Entra identity needs "
    "'View build pipeline' in the project, which Project Readers have)"
)


@dataclass(frozen=True, slots=True)
class BrokenGroup:
    """A group with an open breaking finding, and the pipelines it stops."""

    organization: str
    project: str
    group_id: int
    group: str | None
    finding: Finding
    pipelines: tuple[Pipeline, ...] = ()
    all_pipelines: bool = False
    pipelines_unknown: str | None = None

    @property
    def key(self) -> GroupKey:
        return GroupKey(self.organization.lower(), self.group_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "organization": self.organization,
            "project": self.project,
            "groupId": self.group_id,
            "group": self.group,
            "finding": self.finding.as_json(),
            "pipelines": [p.as_json() for p in self.pipelines],
            "allPipelines": self.all_pipelines,
            "pipelinesUnknown": self.pipelines_unknown,
        }


def group_findings(
    link: Link,
    group: VariableGroup,
    listing: Mapping[str, SecretState],
    plan: Plan,
    *,
    now: datetime,
    warning_days: int,
    notable: frozenset[str] | None = None,
) -> list[Finding]:
    """What is wrong or worth knowing about one group, from its vault's full listing (pure).

    ``notable`` (from :func:`notable_secrets`, computed once per listing) spares the audit
    looking closely at the ordinary names, which are nearly all of them.
    """
    findings: list[Finding] = []
    if notable is None:
        notable = notable_secrets(listing, now=now, warning_days=warning_days)

    def finding(severity: Severity, kind: str, message: str, secret: str | None) -> None:
        findings.append(Finding.about(link, severity, kind, message, secret))

    soon = now + timedelta(days=warning_days)
    for name in sorted(group.variables, key=str.lower):
        key = name.lower()
        secret = listing.get(key)
        if secret is not None and key not in notable:
            continue
        if secret is None and check_secret(name):  # a listed name is a valid name
            finding(
                "warning",
                "unmappable",
                f"{name!r} is not a valid Key Vault secret name; no pipeline can fetch it",
                name,
            )
        elif secret is None:
            finding(
                "error",
                "secret-deleted",
                f"{name} is mapped but vault {link.vault} has no such secret: "
                "every run using the group fails at 'Download secrets'",
                name,
            )
        elif not secret.enabled:
            finding(
                "error",
                "secret-disabled",
                f"{name} is mapped but disabled in vault {link.vault}: every run "
                "using the group fails at 'Download secrets'",
                name,
            )
        else:
            if secret.managed:
                finding("warning", "unmappable", f"{name} backs a certificate; Azure DevOps maps secrets only", name)
            if secret.expires is not None and secret.expires <= now:
                finding(
                    "warning",
                    "secret-expired",
                    f"{name} expired on {secret.expires:%Y-%m-%d}; it still works, but it is overdue for rotation",
                    name,
                )
            elif secret.expires is not None and secret.expires <= soon:
                finding("info", "secret-expiring", f"{name} expires on {secret.expires:%Y-%m-%d}", name)
    for secret in plan.add:
        message = f"{secret.name} matches the link's policy but is not in the group"
        finding("warning", "secret-missing", message, secret.name)
    return findings


def group_summary(link: Link, names: Iterable[str] | None, outcome: str, *, ignored: bool = False) -> dict[str, Any]:
    """What a report keeps of one audited group: where it is, its policy, what it maps, the outcome.

    ``outcome`` is what the audit did with the group (the /api/sync vocabulary, plus
    ``vault-unreachable``, ``devops-unreached`` and ``ignored``); only the first names are kept,
    with the full count. ``names`` is None when the group could not be read: nothing is known.
    """
    summary = {**link.where(), "kind": link.kind, "policy": policy_summary(link, ignored=ignored)}
    if names is not None:
        mapped = sorted(names, key=str.lower)
        summary.update(mapped=len(mapped), names=mapped[:GROUP_NAMES_KEPT])
    return {**summary, "outcome": outcome}


def plan_text(plan: Plan, *, keep: int = PLAN_NAMES_KEPT) -> str:
    """A plan as JSON for a finding, each list cut to its first ``keep`` names plus "... and N more".

    A refused plan can name thousands of secrets: in full it would outgrow a Table property.
    """

    def cut(names: list[str]) -> list[str]:
        return names if len(names) <= keep else [*names[:keep], f"... and {len(names) - keep} more"]

    whole = plan.as_dict()
    return json.dumps({**whole, "add": cut(whole["add"]), "remove": cut(whole["remove"])})


def policy_summary(link: Link, *, ignored: bool = False) -> str:
    """A link's policy in a few words, e.g. ``merge; include db-*, api-*; exclude *-old``."""
    if link.prune_only:
        return "discovered: left alone (KVLINK_UNLINKED_GROUPS=ignore)" if ignored else "discovered: prune only"
    policy = link.policy
    parts = [policy.mode, "include " + ", ".join(policy.include)]
    if policy.exclude:
        parts.append("exclude " + ", ".join(policy.exclude))
    if policy.tags:
        parts.append("tags " + ", ".join(k if v is None else f"{k}={v}" for k, v in policy.tags))
    if not policy.keep_expired:
        parts.append("drops expired")
    return "; ".join(parts)


def notable_secrets(listing: Mapping[str, SecretState], *, now: datetime, warning_days: int) -> frozenset[str]:
    """Keys of the secrets whose mapping is worth a finding: disabled, certificate-backed, expiring."""
    soon = now + timedelta(days=warning_days)
    return frozenset(
        key
        for key, secret in listing.items()
        if not secret.enabled or secret.managed or (secret.expires is not None and secret.expires <= soon)
    )


_LISTED: Mapping[str, Any] = MappingProxyType({})  # a listed variable's attributes, which the audit never reads


def _slim(group: VariableGroup) -> VariableGroup:
    """What the audit keeps of a listed group: its variables' names, not their attributes.

    Planning and findings read names only, and a write starts from the group re-read under its
    lease; a dry run plans from the listing but sends nothing. At ~250 bytes a variable, the
    attributes were most of an audit's memory.
    """
    from .devops import VariableGroup

    raw = dict(group.raw)
    raw["variables"] = dict.fromkeys(raw.get("variables") or {}, _LISTED)
    return VariableGroup(raw)


@dataclass
class _Listing:
    states: dict[str, SecretState]
    started: int  # time.time_ns() when the listing began
    notable: frozenset[str] = frozenset()
    pages: int = 0
    decided: dict[tuple[Policy, bool], Decisions] = field(default_factory=dict)  # shared by its groups


class _Run:
    """One audit run's shared state; methods run on the two pools."""

    def __init__(self, engine: Engine, *, dry_run: bool, progress: Progress | None) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.dry_run = dry_run
        self.progress = progress
        self.now = datetime.now(UTC)
        self.report = AuditReport(started=self.now, finished=self.now, dry_run=dry_run)
        self.lock = threading.Lock()
        self.listings: dict[str, Future[_Listing]] = {}
        self.vault_findings: set[str] = set()
        self.failed_orgs: set[str] = set()  # organizations whose projects could not be listed
        self.done = 0
        self.total = 0
        self.started: list[Future[Listed]] = []  # the listings on Key Vault's listing loop
        self.tail_rank = 0  # the rank a listing found late (a discovered group's vault) gets: see start_listings
        # Work threads never wait for a listing (work is handed over when it is in): they wait for
        # one of the Azure DevOps slots, or on Table storage.
        self.work_pool = ThreadPoolExecutor(4 * self.settings.devops_concurrency + 8, thread_name_prefix="kvlink-audit")

    # -- the run ------------------------------------------------------------------------
    def run(self) -> AuditReport:
        self.engine.keyvault.prepare_listings()  # while the links are read
        try:
            # Organizations dropped from KVLINK_DEVOPS_ORGS are out of scope, links and all.
            links = {
                link.key: link
                for link in self.engine.registry.list_links()
                if self.settings.org_allowed(link.organization)
            }
            # Start early: listings are the slow part.
            self.start_listings({link.vault for link in links.values() if self.settings.vault_allowed(link.vault)})
            seen: set[GroupKey] = set()
            reconciles: list[Future[None]] = []
            scanned, failed = self.discover(seen, links, reconciles)
            self.total = len(reconciles)
            reconciles += self.check_unlisted(links, seen, scanned, failed)
            for future in as_completed(reconciles):
                future.result()  # findings are recorded as we go; errors became findings
                self.tick()
            self.clear_vault_work()
            self.clear_stale_queues(links)
            self.blast_radius()
        finally:
            for listing in self.started:
                listing.cancel()  # only those still running: the run failed
            self.work_pool.shutdown(wait=True, cancel_futures=True)
        self.report.listing_pages = {
            vault: f.result().pages
            for vault, f in self.listings.items()
            if f.done() and not f.cancelled() and f.exception() is None
        }
        self.report.vaults = len(self.report.listing_pages)
        self.report.findings.sort(
            key=lambda f: (
                _SEVERITIES.index(f.severity),
                f.organization or "",
                f.project or "",
                f.group or "",
                f.secret or "",
            )
        )
        self.report.groups.sort(
            key=lambda g: (g["organization"].lower(), g["project"].lower(), g["group"].lower(), g["groupId"])
        )
        self.report.finished = datetime.now(UTC)
        return self.report

    def discover(
        self, seen: set[GroupKey], links: Mapping[GroupKey, Link], reconciles: list[Future[None]]
    ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """List every project's groups (once each) and reconcile the allowed Key Vault ones.

        A project's groups are handed to reconciliation as soon as its listing is in (each then
        waits only for its own vault), and let go once planned: the run never holds every group.
        """
        scopes = self.scopes()
        futures = deque((self.work_pool.submit(self.list_groups, *scope), scope) for scope in scopes)
        scanned: set[tuple[str, str]] = set()
        failed: set[tuple[str, str]] = set()
        endpoint_checks = []
        # Results are taken in scope order, not as they complete: a group shared with several
        # projects is then always checked in the same one (its service connection is looked up there).
        while futures:
            future, (org, project) = futures.popleft()  # a listing taken is let go with its future
            try:
                groups = future.result()
            except KvLinkError as err:
                self.unreached(f"project {org}/{project}: {err}")
                failed.add((org.lower(), project.lower()))
                continue
            scanned.add((org.lower(), project.lower()))
            mine = []
            for group in groups:
                key = GroupKey(org.lower(), group.id)
                vault = (group.vault or "").lower()
                if not group.is_key_vault or key in seen or not vault or not self.settings.vault_allowed(vault):
                    continue  # a group shared with several projects is listed by each: one group
                seen.add(key)
                mine.append(group)
                reconciles.append(self.when_listed(vault, self.reconcile_listed, links.get(key), org, project, group))
            if mine:
                endpoint_checks.append(self.work_pool.submit(self.check_endpoints, org, project, mine))
        for check in endpoint_checks:
            check.result()
        return scanned, failed

    def scopes(self) -> list[tuple[str, str]]:
        if self.settings.devops_projects:
            return list(self.settings.devops_projects)
        scopes = []
        for org in self.settings.devops_orgs:
            try:
                scopes += [(org, str(p["name"])) for p in self.engine.devops.list_projects(org)]
            except KvLinkError as err:
                self.unreached(f"organization {org}: {err}")
                self.failed_orgs.add(org.lower())
        return scopes

    def list_groups(self, org: str, project: str) -> list[VariableGroup]:
        """A project's Key Vault groups, slimmed (:func:`_slim`); other groups are never the audit's."""
        return [_slim(group) for group in self.engine.devops.list_groups(org, project) if group.is_key_vault]

    # -- per group ----------------------------------------------------------------------
    def reconcile_listed(self, link: Link | None, org: str, project: str, group: VariableGroup) -> None:
        """One listed Key Vault group: linked (its policy) or discovered (prune, or ignore)."""
        vault = (group.vault or "").lower()
        link = self.restore(link, org, project, group)
        if link is None:
            link = Link(org, project, group.id, group.name, vault, Policy(), kind="discovered")
            with self.lock:
                self.report.new_discovered += 1
            if not self.dry_run:
                self.engine.registry.save_link(link, previous=None)
        elif link.vault != vault:
            self.add(
                Finding.about(
                    link,
                    "error",
                    "vault-changed",
                    f"the link says vault {link.vault} but the group now maps vault {vault}; "
                    "kvlink leaves it alone until it is linked again",
                )
            )
            self.record(link, group.variables, "vault-changed")
            return
        if link.prune_only and self.settings.unlinked_groups == "ignore":
            self.count(link)
            self.record(link, group.variables, "ignored", ignored=True)
            return
        self.reconcile(link, group)

    def restore(self, link: Link | None, org: str, project: str, group: VariableGroup) -> Link | None:
        """A group the registry does not know as linked, carrying kvlink's marker, was linked through
        kvlink: register it again under the policy it carries (the registry was emptied or replaced),
        and say so. A marker kvlink cannot read is reported, never guessed: the group stays discovered."""
        if link is not None and not link.prune_only:
            return link
        vault = (group.vault or "").lower()
        try:
            policy = group_policy(group.raw)
        except MarkerError as err:
            about = link or Link(org, project, group.id, group.name, vault, kind="discovered")
            self.add(
                Finding.about(
                    about,
                    "error",
                    "link-marker-unreadable",
                    f"the group's description holds a kvlink marker that cannot be read ({err}); "
                    "kvlink treats the group as discovered (prune only) until it is linked again",
                )
            )
            return link
        if policy is None:
            return link
        restored = Link(org, project, group.id, group.name, vault, policy)
        if not self.dry_run:
            self.engine.registry.save_link(restored, previous=link)
        logger.warning("Audit: group %s (%s/%s) carries kvlink's marker but was not linked", group.name, org, group.id)
        what = "would register it again" if self.dry_run else "registered it again"
        self.add(
            Finding.about(
                restored,
                "warning",
                "link-restored",
                f"the registry had no link for this group, which carries kvlink's marker; the audit {what} "
                f"under the policy in its description ({policy_summary(restored)})",
            )
        )
        return restored

    def reconcile(self, link: Link, group: VariableGroup) -> None:
        self.count(link)
        try:
            listing = self.listing(link.vault).result()
        except KvLinkError as err:
            self.vault_failed(link.vault, err)
            self.record(link, group.variables, "vault-unreachable")
            return
        plan = plan_group(
            group.variables,
            listing.states,
            link.policy,
            complete=True,
            prune_only=link.prune_only,
            now=self.now,
            decided=self.decisions(listing, link),
        )
        findings = group_findings(
            link,
            group,
            listing.states,
            plan,
            now=self.now,
            warning_days=self.settings.expiry_warning_days,
            notable=listing.notable,
        )
        mark = self.marker_check(link, group)
        if mark is not None and mark.kind == "link-marker-too-long":
            findings.append(mark)  # the write would leave the marker out: nothing to write for it
            mark = None
        if not plan.changed and (mark is None or self.dry_run):
            self.add(*findings, *([mark] if mark else []))
            self.record(link, group.variables, "unchanged")
            return
        if mark is not None:
            findings.append(mark)
        observations = [Observation(state, at=listing.started) for state in listing.states.values()]
        try:
            # The listing only says the group drifted. The write re-reads it under the lease and plans
            # from that read: a PUT from the listing would revert whatever a person changed since.
            outcome = self.engine.write_group(
                link,
                observations,
                complete=True,
                dry_run=self.dry_run,
                known=group if self.dry_run else None,
                origin="audit",
                marker="write" if mark is not None else "keep",
            )
        except KvLinkError as err:
            self.add(
                *findings,
                Finding.about(link, "error", "write-failed", f"could not update the group: {err}"),
            )
            self.record(link, group.variables, "failed")
            return
        self.outcome(link, outcome, findings)
        self.record(link, group.variables if outcome.names is None else outcome.names, outcome.status)

    def marker_check(self, link: Link, group: VariableGroup) -> Finding | None:
        """A linked group whose listed description does not carry its link's policy, as a finding
        (None when it does): the write that follows puts the registry's marker there.

        Links made before kvlink kept markers have none until something writes them; without one, a
        lost registry would turn the group into a discovered one unannounced. A marker edited by hand
        into another policy is overwritten: while the link exists, the registry's policy is the one
        applied. Pure: decided from the listing, so groups in step cost nothing.
        """
        if link.prune_only:
            return None
        try:
            if marked_group(group.raw, link.policy) is None:
                return None
        except TooLongError as err:
            message = (
                f"kvlink cannot keep the link's policy in the group's description ({err}); "
                "if kvlink's registry were lost, the group would come back as discovered (prune only)"
            )
            return Finding.about(link, "warning", "link-marker-too-long", message)
        ours = policy_summary(link)
        done = "would write" if self.dry_run else "writes"
        try:
            carried = group_policy(group.raw)
        except MarkerError as err:
            message = (
                f"the group's kvlink marker cannot be read ({err}); the audit {done} the link's policy "
                f"({ours}) in its place: while the group is linked, the registry's policy applies"
            )
            return Finding.about(link, "warning", "link-marker-changed", message)
        if carried is not None and carried != link.policy:
            theirs = policy_summary(replace(link, policy=carried))
            message = (
                f"the group's description says policy ({theirs}) but its link says ({ours}); the audit {done} "
                "the link's policy back: while the group is linked, the registry's policy applies "
                "(link the group again to change it)"
            )
            return Finding.about(link, "warning", "link-marker-changed", message)
        message = (
            f"the group's description did not carry its link's policy; the audit {done} it ({ours}), "
            "so a lost registry can be rebuilt from Azure DevOps"
        )
        return Finding.about(link, "info", "link-marked", message)

    def outcome(self, link: Link, outcome: GroupOutcome, findings: list[Finding]) -> None:
        plan = outcome.plan or Plan()
        if outcome.status == "applied":
            changed = {n.lower() for n in plan.remove} | {s.key for s in plan.add}
            findings = [
                replace(f, repaired=True)
                if (f.kind in _DRIFT and (f.secret or "").lower() in changed) or f.kind in _MARKER
                else f
                for f in findings
            ]
            if not plan.changed:  # only the marker was written: the group's names are as they were
                self.add(*findings)
                return
            with self.lock:
                self.report.groups_changed += 1
                self.report.names_added += len(plan.add)
                self.report.names_removed += len(plan.remove)
        elif outcome.status == "planned":  # a dry run: what the repair would change, counted alike
            with self.lock:
                self.report.groups_changed += 1
                self.report.names_added += len(plan.add)
                self.report.names_removed += len(plan.remove)
        elif outcome.status == "refused":
            findings.append(
                Finding.about(
                    link,
                    "error",
                    "sync-refused",
                    f"{outcome.message}; plan {plan_text(plan)}",
                )
            )
        elif outcome.status == "unchanged":  # brought in step by hand since the listing: no drift left
            findings = [f for f in findings if f.kind not in _DRIFT and f.kind not in _MARKER]
        elif outcome.status == "vault-changed":  # re-pointed since the listing: its findings are moot
            message = f"{outcome.message}; kvlink leaves it alone until it is linked again"
            findings = [Finding.about(link, "error", "vault-changed", message)]
        elif outcome.status in ("group-missing", "not-key-vault"):
            findings = [Finding.about(link, "error", "group-changed", outcome.message or outcome.status)]
        self.add(*findings)

    def check_unlisted(
        self,
        links: Mapping[GroupKey, Link],
        seen: set[GroupKey],
        scanned: set[tuple[str, str]],
        failed: set[tuple[str, str]],
    ) -> list[Future[None]]:
        """Links whose group no listing showed: gone, unreachable, or outside the scanned projects.

        A link is reported gone only on the word of a listing that succeeded: an organization or
        project kvlink could not read (a wrong PAT, no token, 401/403/203) says nothing about it.
        """
        extra = []
        for key, link in links.items():
            if key in seen:
                continue
            where = (link.organization.lower(), link.project.lower())
            if where in failed or where[0] in self.failed_orgs:
                self.not_reached(link)  # its organization or project is already listed as unreached
                continue
            if where in scanned or not self.settings.devops_projects:
                self.add(
                    Finding.about(
                        link,
                        "error",
                        "link-target-missing",
                        f"linked group {link.group_name} (id "
                        f"{link.group_id}) or its project {link.project} no longer exists",
                    )
                )
                continue
            extra.append(self.work_pool.submit(self.reconcile_one, link))  # outside KVLINK_DEVOPS_PROJECTS
        self.total += len(extra)
        return extra

    def reconcile_one(self, link: Link) -> None:
        try:
            group = self.engine.devops.get_group(link.organization, link.project, link.group_id)
        except KvLinkError as err:
            self.unreached(f"group {link.organization}/{link.project}/{link.group_id}: {err}")
            self.not_reached(link)
            return
        if group is None:
            self.add(
                Finding.about(link, "error", "link-target-missing", f"linked group {link.group_name} no longer exists")
            )
            return
        self.listing(link.vault)
        self.reconcile(link, group)

    def check_endpoints(self, org: str, project: str, groups: list[VariableGroup]) -> None:
        """One call per project: are the groups' service connections there and ready?"""
        ids = {g.service_endpoint_id.lower() for g in groups if g.service_endpoint_id}
        try:
            endpoints = {
                str(e.get("id", "")).lower(): e for e in self.engine.devops.get_service_endpoints(org, project, ids)
            }
        except KvLinkError as err:
            self.unreached(f"service connections of {org}/{project}: {err}")
            return
        for group in groups:
            endpoint = endpoints.get((group.service_endpoint_id or "").lower())
            if endpoint is None:
                message = "its service connection no longer exists: pipelines cannot download its secrets"
                kind = "service-connection-missing"
            elif endpoint.get("isReady") is False:
                message = f"its service connection {endpoint.get('name')!r} is not ready"
                kind = "service-connection-not-ready"
            else:
                continue
            self.add(Finding("error", kind, message, org, project, group.id, group.name, group.vault))

    # -- blast radius --------------------------------------------------------------------
    def blast_radius(self) -> None:
        """Name the pipelines each open breaking finding stops; never fails the audit.

        Only groups with such findings are looked up: one permissions call per group, one pipeline
        listing per project that has a group with named pipelines. A healthy estate costs nothing.
        """
        where: dict[GroupKey, tuple[str, str, str | None]] = {}
        of_finding: dict[int, list[GroupKey]] = {}
        first: dict[GroupKey, Finding] = {}
        for i, f in enumerate(self.report.findings):
            if f.repaired or f.kind not in BREAKING:
                continue
            if f.group_id is not None and f.organization and f.project:
                keys = [GroupKey(f.organization.lower(), f.group_id)]
                where.setdefault(keys[0], (f.organization, f.project, f.group))
            elif f.kind == "vault-unreadable":  # vault-wide: every group of the vault this run could not check
                keys = []
                for g in self.report.groups:
                    if g["outcome"] == "vault-unreachable" and str(g["vault"]).lower() == (f.vault or "").lower():
                        key = GroupKey(str(g["organization"]).lower(), int(g["groupId"]))
                        where.setdefault(key, (g["organization"], g["project"], g["group"]))
                        keys.append(key)
            else:
                continue
            of_finding[i] = keys
            for key in keys:
                first.setdefault(key, f)
        if not where:
            return
        access = {key: self.work_pool.submit(self.pipeline_access, *where[key][:2], key.group_id) for key in where}
        answers = {key: future.result() for key, future in access.items()}
        projects = {
            (where[key][0].lower(), where[key][1].lower()): where[key][:2]
            for key, answer in answers.items()
            if isinstance(answer, PipelineAccess) and answer.pipeline_ids
        }
        listed = {scope: self.work_pool.submit(self.project_pipelines, *names) for scope, names in projects.items()}
        catalog = {scope: future.result() for scope, future in listed.items()}
        radius: dict[GroupKey, tuple[tuple[Pipeline, ...], bool, str | None]] = {}
        for key, answer in answers.items():
            org, project, _ = where[key]
            if isinstance(answer, str):
                radius[key] = ((), False, answer)
                continue
            known = catalog.get((org.lower(), project.lower()))
            if isinstance(known, str):
                radius[key] = (tuple(Pipeline(i) for i in answer.pipeline_ids), answer.all_pipelines, known)
                continue
            named = tuple((known or {}).get(i) or Pipeline(i) for i in answer.pipeline_ids)  # a deleted one: its id
            radius[key] = (named, answer.all_pipelines, None)
        for i, keys in of_finding.items():
            if not keys:
                continue
            pipelines = {p.id: p for key in keys for p in radius[key][0]}
            unknown = next((radius[key][2] for key in keys if radius[key][2]), None)
            self.report.findings[i] = replace(
                self.report.findings[i],
                pipelines=tuple(sorted(pipelines.values(), key=lambda p: ((p.name or "").lower(), p.id))),
                all_pipelines=any(radius[key][1] for key in keys),
                pipelines_unknown=unknown,
            )
        self.report.broken = [
            BrokenGroup(org, project, key.group_id, group, first[key], *radius[key])
            for key, (org, project, group) in sorted(where.items(), key=lambda kv: (kv[0].organization, kv[0].group_id))
        ]

    def pipeline_access(self, org: str, project: str, group_id: int) -> PipelineAccess | str:
        try:
            return self.engine.devops.group_pipeline_access(org, project, group_id)
        except UpstreamError as err:
            if err.status in (401, 403):
                return PIPELINES_DENIED
            return _pipelines_unknown(err)
        except (KvLinkError, ValueError, TypeError, KeyError) as err:  # an odd answer: unknown, never fatal
            return _pipelines_unknown(err)

    def project_pipelines(self, org: str, project: str) -> dict[int, Pipeline] | str:
        try:
            return {p.id: p for p in self.engine.devops.list_pipelines(org, project)}
        except UpstreamError as err:
            if err.status in (401, 403):
                return PIPELINES_DENIED
            return _pipelines_unknown(err)
        except (KvLinkError, ValueError, TypeError, KeyError) as err:  # an odd answer: unknown, never fatal
            return _pipelines_unknown(err)

    # -- vaults ------------------------------------------------------------------------
    def start_listings(self, vaults: Iterable[str]) -> None:
        """Start every listing at once, ranked so that Key Vault's call slots stay full to the end.

        A vault's pages follow each other's nextLink, so its listing cannot be split: the longest
        (by the pages it took last time, from the registry) start first and have the first claim on
        the slots, or the run would end on a long listing running alone. Vaults with no record (new
        links) go first, as they may be long. The last KVLINK_VAULT_CONCURRENCY listings share one
        rank and so the slots, in turn: they end together, all slots busy until then. A vault only
        a group listing names (a discovered group's) joins that share.
        """
        from azure.core.exceptions import AzureError

        try:
            known = self.engine.registry.vault_pages()
        except (KvLinkError, AzureError) as err:  # only an order: the audit goes on without it
            logger.warning("Audit could not read the last listing sizes (vaults listed in name order): %s", err)
            known = {}
        order = sorted(vaults, key=lambda vault: (vault in known, -known.get(vault, 0), vault))
        self.tail_rank = max(0, len(order) - self.settings.vault_concurrency)
        for rank, vault in enumerate(order):
            self.listing(vault, rank=min(rank, self.tail_rank))

    def listing(self, vault: str, *, rank: int | None = None) -> Future[_Listing]:
        """The run's one listing of ``vault``, started on first asking."""
        with self.lock:
            future = self.listings.get(vault)
            if future is not None:
                return future
            future = self.listings[vault] = Future()
        started = self.engine.keyvault.start_listing(vault, rank=self.tail_rank if rank is None else rank)
        self.started.append(started)
        started.add_done_callback(lambda done: self.listed(future, done))
        return future

    def listed(self, future: Future[_Listing], done: Future[Listed]) -> None:
        """A listing is in (runs where it finished: on the listing loop, so it stays brief)."""
        try:
            listed = done.result()
        except BaseException as err:  # noqa: BLE001 -- handed to whoever waits for the listing
            future.set_exception(err)
            return
        notable = notable_secrets(listed.states, now=self.now, warning_days=self.settings.expiry_warning_days)
        future.set_result(_Listing(listed.states, listed.started, notable, listed.pages))

    def when_listed(self, vault: str, job: Callable[..., None], *args: Any) -> Future[None]:
        """``job(*args)`` on the work pool once ``vault``'s listing is in, failed or not.

        No thread waits for a listing: the groups of a vault listed early are written while
        the others are still being listed, in the order the listings end.
        """
        outcome: Future[None] = Future()

        def settle(work: Future[None]) -> None:
            if work.cancelled():
                outcome.cancel()
            elif (err := work.exception()) is not None:
                outcome.set_exception(err)
            else:
                outcome.set_result(None)

        def hand_over(_: Future[_Listing]) -> None:
            try:
                work = self.work_pool.submit(job, *args)
            except RuntimeError as err:  # the pool is shut down: the run failed already
                outcome.set_exception(err)
                return
            work.add_done_callback(settle)

        self.listing(vault).add_done_callback(hand_over)
        return outcome

    def listed_at(self, vault: str) -> int | None:
        """When this run's successful listing of the vault began (ns), or None if it has none."""
        future = self.listings.get(vault)
        if future is None or not future.done() or future.exception() is not None:
            return None
        return future.result().started

    def decisions(self, listing: _Listing, link: Link) -> Decisions:
        """One set of decisions per vault and policy, however many groups share them."""
        key = (link.policy, link.prune_only)
        with self.lock:
            decided = listing.decided.get(key)
        if decided is None:
            decided = decide(listing.states, link.policy, prune_only=link.prune_only, now=self.now)
            with self.lock:
                listing.decided[key] = decided
        return decided

    def vault_failed(self, vault: str, err: KvLinkError) -> None:
        with self.lock:
            if vault in self.vault_findings:
                return
            self.vault_findings.add(vault)
        if isinstance(err, UpstreamError):
            self.add(Finding("error", "vault-unreadable", str(err), vault=vault))
        else:
            self.unreached(f"vault {vault}: {err}")

    def clear_vault_work(self) -> None:
        """The audit read every secret of these vaults: work the log path left before is done."""
        if self.dry_run:
            return
        for vault, rows in self.engine.registry.vault_work().items():
            cutoff = self.listed_at(vault)
            if cutoff is None:
                continue
            done = [row for row in rows if row.queued_at is not None and row.queued_at.timestamp() * 1e9 < cutoff]
            self.engine.registry.remove_vault_work(done)

    def clear_stale_queues(self, links: Mapping[GroupKey, Link]) -> None:
        """Queued observations older than the listing the audit just applied would undo its repairs
        if a later holder wrote them (a holder that died leaves its queue behind): drop them."""
        if self.dry_run:
            return
        for key, rows in self.engine.registry.all_pending().items():
            vault = key.vault if isinstance(key, VaultKey) else getattr(links.get(key), "vault", None)
            started = self.listed_at(vault or "")
            if started is None:
                continue
            stale = [row for row in rows if row.observation.at < started]
            if stale:
                logger.info("Audit dropped %d queued observations of %s older than its listing", len(stale), key)
                self.engine.registry.remove_pending(key, stale)

    # -- bookkeeping ---------------------------------------------------------------------
    def count(self, link: Link) -> None:
        with self.lock:
            if link.prune_only:
                self.report.groups_discovered += 1
            else:
                self.report.groups_linked += 1

    def not_reached(self, link: Link) -> None:
        """A linked group Azure DevOps could not be read for: counted and listed, nothing concluded."""
        self.count(link)
        with self.lock:
            self.report.groups_unreached += 1
        self.record(link, None, "devops-unreached")

    def add(self, *findings: Finding) -> None:
        with self.lock:
            self.report.findings.extend(findings)

    def record(self, link: Link, names: Iterable[str] | None, outcome: str, *, ignored: bool = False) -> None:
        summary = group_summary(link, names, outcome, ignored=ignored)
        with self.lock:
            self.report.groups.append(summary)

    def unreached(self, what: str) -> None:
        logger.warning("Audit could not reach %s", what)
        with self.lock:
            self.report.unreached.append(what)

    def tick(self) -> None:
        with self.lock:
            self.done += 1
            done, total = self.done, self.total
        if self.progress:
            self.progress(done, total)


def _pipelines_unknown(err: Exception) -> str:
    logger.warning("Audit could not name the pipelines of a broken group: %s", err)
    return f"pipelines unknown: {err}"[:300]


def run_audit(
    engine: Engine, *, dry_run: bool = False, store: bool = True, progress: Progress | None = None
) -> AuditReport:
    """Audit every organization; store and log the report, and announce it."""
    dry_run = dry_run or engine.settings.mode == "report"
    with _collector_tuned():
        report = _Run(engine, dry_run=dry_run, progress=progress).run()
    summary = report.summary()
    if store:
        _store(engine, report, summary)
        _remember_pages(engine, report)
    announced = {**summary, **report.storage()}
    logger.info("kvlink audit %s", json.dumps(announced, sort_keys=True))
    engine.notifier.audit_completed(announced)
    if store:
        _announce_broken(engine, report)
    return report


def _announce_broken(engine: Engine, report: AuditReport) -> None:
    """``kvlink.group.broken`` once per group when it first becomes broken, not every night it stays so.

    The registry remembers the broken groups; a group audited this run and no longer broken is
    forgotten (so breaking again is news), one this run did not reach stays remembered."""
    from azure.core.exceptions import AzureError

    broken = {b.key: b for b in report.broken}
    audited = {GroupKey(str(g["organization"]).lower(), int(g["groupId"])) for g in report.groups}
    audited -= {
        GroupKey(str(g["organization"]).lower(), int(g["groupId"]))
        for g in report.groups
        if g["outcome"] == "devops-unreached"
    }
    try:
        known = engine.registry.broken_groups()
        news = [b for key, b in broken.items() if key not in known]
        healed = [key for key in known if key in audited and key not in broken]
        engine.registry.note_broken([b.key for b in news], healed)
    except (KvLinkError, AzureError) as err:
        # Without the memory, announcing would repeat every night: say so, announce nothing.
        logger.warning("Could not read or record the broken groups (no kvlink.group.broken sent): %s", err)
        return
    for b in news:
        engine.notifier.group_broken(b.as_json())


@contextlib.contextmanager
def _collector_tuned() -> Iterator[None]:
    """The garbage collector set for an audit: it builds ~100,000 long-lived objects and few cycles.

    With the default thresholds the collector rescanned the growing listings again and again
    (about 5% of the audit's CPU); a larger first generation scans them far less often, and
    what the process holds already (modules, clients) is frozen out of every scan for the run.
    Both are set back afterwards: a long-lived host must still collect what becomes garbage later.
    """
    thresholds = gc.get_threshold()
    frozen = gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(AUDIT_GC_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if not frozen:  # leave a freeze someone else made alone
            gc.unfreeze()


def _remember_pages(engine: Engine, report: AuditReport) -> None:
    """Each vault's page count, for the next run to start its longest listings first; never fails the audit."""
    from azure.core.exceptions import AzureError

    if not report.listing_pages:
        return
    try:
        engine.registry.save_vault_pages(report.listing_pages)  # a vault not listed this run counts as new next time
    except (KvLinkError, AzureError) as err:
        logger.warning("Could not record the vaults' listing sizes (the next audit lists them in name order): %s", err)


def _store(engine: Engine, report: AuditReport, summary: Mapping[str, Any]) -> None:
    """Store the report; a failure is recorded on it, never raised: the audit's repairs are done,
    and its log line and notification are what tell people about them."""
    try:
        report.stored = engine.registry.save_report(summary, [f.as_json() for f in report.findings], report.groups)
    except Exception as err:
        report.store_error = f"{type(err).__name__}: {err}"[:500]
        logger.exception("The audit report could not be stored: %s", report.store_error)


__all__ = ["AuditReport", "BrokenGroup", "Finding", "group_findings", "run_audit"]
