"""The estate at a glance: one self-contained HTML page from the latest audit, the registry and recent runs.

:func:`render_report` is pure (no I/O): callers pass the stored report, the run history and
the links, and get the page back. The page needs nothing else -- inline CSS, an SVG trend
chart drawn here, no script, no external asset -- so it can be served by the function app,
written by the CLI, mailed or archived. Every value that came from Azure goes through
Jinja2's autoescaping; this module never builds markup itself.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .audit import BREAKING, policy_summary
from .model import parse_timestamp

if TYPE_CHECKING:
    import jinja2

    from .registry import LinkRecord

HISTORY_RUNS = 30
STALE_AFTER = timedelta(hours=24)
TEMPLATE = "report.html.j2"
MINUS = "\u2212"  # a typographic minus sign: it lines up with "+" in "+3 -2"

# What a reader should do about each kind of finding (kinds from kvlink_core/audit.py).
ADVICE: Mapping[str, str] = {
    "secret-deleted": "Recover the secret in the vault if the delete was a mistake; "
    "otherwise let kvlink drop the name (sync the group).",
    "secret-disabled": "Enable the secret again if pipelines still need it; otherwise let kvlink drop the name.",
    "secret-missing": "Sync the group so kvlink maps the secret, or narrow the link's include patterns.",
    "secret-expired": "Rotate the secret: set a new version with a later expiry date.",
    "secret-expiring": "Plan the rotation: set a new version before the expiry date.",
    "unmappable": "Remove the name from the group by hand: Azure DevOps cannot fetch it from Key Vault.",
    "sync-refused": "Check the plan: if the removals are intended, sync the group with force; "
    "if not, restore the secrets in the vault.",
    "vault-unreadable": "Give kvlink's identity List on the vault's secrets (access policy) "
    "or the Key Vault Reader role (RBAC).",
    "vault-changed": "Link the group again with the vault it now maps, or point it back at the linked vault.",
    "write-failed": "Check kvlink's Administrator role on the project's Library; the next audit tries again.",
    "group-changed": "The group was deleted or no longer maps a vault: link it again, or unlink it.",
    "link-target-missing": "The group or its project was deleted: unlink it, or create the group again.",
    "service-connection-missing": "Edit the group in the Library and choose an existing Azure Resource "
    "Manager service connection.",
    "service-connection-not-ready": "Open the service connection in Project settings and fix its "
    "authorization (Verify).",
    "link-restored": "kvlink's registry had lost this link (a new or emptied storage account): it was "
    "registered again from the policy in the group's description. Check that policy; keep a copy of the "
    "registry with `kvlink links export`.",
    "link-marked": "Nothing to do: kvlink wrote the link's policy into the group's description, so a lost "
    "registry can be rebuilt from Azure DevOps. Leave the [kvlink ...] line as it is.",
    "link-marker-changed": "Someone edited the [kvlink ...] line of a linked group: kvlink put the link's "
    "policy back. To change the policy, link the group again with the new one.",
    "link-marker-too-long": "Shorten the group's description (Library) so kvlink can add its [kvlink ...] "
    "line, or the group comes back as discovered if kvlink's registry is lost.",
    "link-marker-unreadable": "Fix or delete the [kvlink ...] line in the group's description (Library), "
    "then link the group again: kvlink writes a fresh marker.",
}
DEFAULT_ADVICE = "Read the message; docs/how-it-works.md, Nightly audit, explains each finding."

SEVERITIES: tuple[tuple[str, str], ...] = (("error", "Errors"), ("warning", "Warnings"), ("info", "Info"))
_DRIFT = frozenset({"secret-deleted", "secret-disabled", "secret-missing", "write-failed"})
_MISSING = frozenset({"link-target-missing", "group-changed"})
_INCOMPLETE = frozenset({"vault-unreadable", "write-failed"})  # errors that mean the run could not finish its work
_DEVOPS_SCOPES = ("organization ", "project ", "group ")  # how the audit names what it could not read there

# Group status: key -> (label, tone). Rows sort in this order, the worst first.
STATUSES: Mapping[str, tuple[str, str]] = {
    "devops-unreached": ("not checked: Azure DevOps not reached", "bad"),
    "unreachable": ("vault unreachable", "bad"),
    "refused": ("refused by the guard", "bad"),
    "missing": ("group missing", "bad"),
    "drifted": ("drifted", "warn"),
    "attention": ("needs attention", "warn"),
    "ignored": ("not managed", "muted"),
    "unaudited": ("not audited yet", "muted"),
    "ok": ("in sync", "ok"),
}
_STATUS_ORDER = {key: i for i, key in enumerate(STATUSES)}

# Which path made a group's last change (LastChangeBy in the registry): short label, hover text.
PATHS: Mapping[str, tuple[str, str]] = {
    "event": ("event", "an Event Grid event (on_secret_event)"),
    "log": ("log", "the vault's audit log (on_vault_log)"),
    "api": ("API", "the HTTP API (/api/links, /api/sync)"),
    "cli": ("CLI", "the command line (python -m kvlink_core)"),
    "audit": ("audit", "the nightly audit"),
}


# -- the view: plain values the template lays out ------------------------------------------------
@dataclass(frozen=True, slots=True)
class Banner:
    tone: str  # "bad" or "warn"
    title: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Stat:
    key: str
    label: str
    value: str
    note: str = ""
    tone: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    at: str  # "27 Nov 2026 02:00 UTC"
    ago: str
    path: str
    path_title: str
    what: str
    recent: bool  # since the previous audit run


@dataclass(frozen=True, slots=True)
class GroupRow:
    organization: str
    project: str
    group: str
    group_id: int
    url: str
    vault: str
    policy: str
    kind: str
    mapped: int | None
    names: tuple[str, ...]
    status: str
    status_label: str
    tone: str
    change: Change | None


@dataclass(frozen=True, slots=True)
class PipelineView:
    name: str
    folder: str
    url: str  # "" unless an http(s) address: a name from Azure DevOps never becomes a script link


@dataclass(frozen=True, slots=True)
class FindingView:
    kind: str
    kind_label: str
    message: str
    organization: str
    project: str
    group: str
    url: str
    vault: str
    secret: str
    repaired: bool
    advice: str
    at_risk: bool = False  # an open breaking finding: its "Pipelines at risk" cell says who it stops
    pipelines: tuple[PipelineView, ...] = ()
    all_pipelines: bool = False
    pipelines_unknown: str = ""


@dataclass(frozen=True, slots=True)
class SeverityGroup:
    severity: str
    label: str
    findings: tuple[FindingView, ...]
    open: int


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    title: str


@dataclass(frozen=True, slots=True)
class Series:
    key: str
    label: str
    points: tuple[Point, ...]

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    top: float
    bottom: float
    ticks: tuple[tuple[float, str], ...]
    series: tuple[Series, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: float
    right: float
    runs: int
    panels: tuple[Panel, ...]
    labels: tuple[tuple[float, str, str], ...]  # x, date, text-anchor: along the bottom axis
    legend: tuple[tuple[str, str], ...]  # series key, label


# -- rendering -----------------------------------------------------------------------------------
def render_report(
    latest: Mapping[str, Any] | None,
    history: Sequence[Mapping[str, Any]],
    links: Sequence[LinkRecord],
    *,
    now: datetime,
    devops_url: str,
) -> str:
    """The page for the latest audit report (None before the first run).

    ``history`` holds run summaries newest first, as :meth:`Registry.report_history` returns
    them; ``links`` the registry's links with their last change. ``devops_url`` is the Azure
    DevOps base URL (``KVLINK_DEVOPS_URL``): group names link to their Library page there.
    """
    from . import __version__

    base = devops_url.rstrip("/")
    runs = list(history[:HISTORY_RUNS])
    previous = parse_timestamp(runs[1].get("finished")) if len(runs) > 1 else None
    findings = [f for f in (latest or {}).get("findings") or [] if isinstance(f, Mapping)]
    rows = group_rows(latest, links, now=now, devops_url=base, since=previous)
    context = {
        "version": __version__,
        "generated": _stamp(now),
        "banners": banners(latest, now=now),
        "latest": latest,
        "stats": stats(latest, rows, previous=previous, now=now),
        "rows": rows,
        "status_counts": status_counts(rows),
        "severities": finding_groups(findings, devops_url=base),
        "chart": trend_chart(runs),
        "history_runs": HISTORY_RUNS,
    }
    return _environment().get_template(TEMPLATE).render(context)


@functools.cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every name in the page came from Azure: escape all of it
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# -- summary -------------------------------------------------------------------------------------
def banners(latest: Mapping[str, Any] | None, *, now: datetime) -> list[Banner]:
    """What a reader must know before trusting the page: no audit, a stale one, an incomplete one."""
    if latest is None:
        return [
            Banner(
                "warn",
                "No audit has run yet",
                (
                    "The report appears after the first nightly_audit run (KVLINK_AUDIT_SCHEDULE, "
                    "02:00 UTC by default), or after python -m kvlink_core audit.",
                ),
            )
        ]
    found: list[Banner] = []
    finished = parse_timestamp(latest.get("finished"))
    if finished is None or now - finished > STALE_AFTER:
        when = f"finished {_ago(finished, now)}, on {_stamp(finished)}" if finished else "has no finish time"
        found.append(
            Banner(
                "bad",
                f"The last audit is out of date: it {when}",
                ("The nightly audit should run every day: check nightly_audit's runs in the function app's logs.",),
            )
        )
    unreached = [str(u) for u in latest.get("unreached") or []]
    groups = latest.get("groups")
    not_checked = _int(groups.get("unreached")) if isinstance(groups, Mapping) else 0
    # Organizations and projects whose listing failed (a wrong PAT, no token, 401/403/203): each line says why.
    devops = [u for u in unreached if u.startswith(_DEVOPS_SCOPES)] if not_checked else []
    if devops:
        found.append(
            Banner(
                "bad",
                f"{not_checked} linked {'group was' if not_checked == 1 else 'groups were'} not checked: "
                "kvlink could not read Azure DevOps for them. They stay linked, and nothing is concluded "
                "about them until an audit reads them.",
                tuple(devops),
            )
        )
        unreached = [u for u in unreached if u not in devops]
    failed = [
        f"group {f.get('group')}: {f.get('message')}"
        if f.get("group")
        else f"vault {f.get('vault')}: {f.get('message')}"
        for f in latest.get("findings") or []
        if isinstance(f, Mapping) and f.get("kind") in _INCOMPLETE and not f.get("repaired")
    ]
    if unreached or failed:
        count = len(unreached) + len(failed)
        found.append(
            Banner(
                "bad",
                f"The last audit could not complete: {count} {'part' if count == 1 else 'parts'} of the estate "
                "not reached or not written",
                tuple(unreached + failed),
            )
        )
    return found


def stats(
    latest: Mapping[str, Any] | None, rows: Sequence[GroupRow], *, previous: datetime | None, now: datetime
) -> list[Stat]:
    """The summary cards, left to right."""
    if latest is None:
        linked = sum(1 for r in rows if r.kind == "linked")
        return [
            Stat("groups", "Groups", f"{linked} / {len(rows) - linked}", "linked / discovered"),
            Stat("last-audit", "Last audit", "never", "no report yet", "warn"),
        ]
    groups = latest.get("groups")
    counts = groups if isinstance(groups, Mapping) else {}  # the summary's group counts
    names = latest.get("names") or {}
    total = latest.get("findingsBySeverity") or {}
    open_ = latest.get("openFindingsBySeverity") or total
    recent = [r.change for r in rows if r.change is not None and r.change.recent]
    by_path = Counter(c.path for c in recent)
    since = "the previous audit" if previous is not None else "the last 24 h"
    finished = parse_timestamp(latest.get("finished"))
    started = parse_timestamp(latest.get("started"))
    result = [
        Stat("vaults", "Vaults", str(latest.get("vaults", 0)), "listed by the audit"),
        Stat(
            "groups",
            "Groups",
            f"{_int(counts.get('linked'))} / {_int(counts.get('discovered'))}",
            "linked / discovered"
            + (f" · {counts['newlyDiscovered']} new" if counts.get("newlyDiscovered") else "")
            + (f" · {counts['unreached']} not reached" if counts.get("unreached") else ""),
            "bad" if counts.get("unreached") else "",
        ),
        Stat(
            "names",
            "Names",
            f"+{names.get('added', 0)} {MINUS}{names.get('removed', 0)}",
            "added / removed by the audit",
        ),
        Stat(
            "changed",
            "Changed",
            str(len(recent)),
            f"{'group' if len(recent) == 1 else 'groups'} since {since}"
            + "".join(f" · {path} {n}" for path, n in sorted(by_path.items())),
        ),
    ]
    for severity, label in SEVERITIES:
        n = _int(total.get(severity))
        still = _int(open_.get(severity))
        tone = {"error": "bad", "warning": "warn", "info": "info"}[severity] if still else ""
        note = f"{still} open" if still else "all repaired" if n else "none"
        result.append(Stat(f"findings-{severity}", label, str(n), note, tone))
    duration = latest.get("durationSeconds")
    result.append(
        Stat(
            "last-audit",
            "Last audit",
            _ago(finished, now) if finished else "unknown",
            (_stamp(started) if started else "")
            + (f" · took {_duration(float(duration))}" if isinstance(duration, int | float) else "")
            + (" · dry run" if latest.get("dryRun") else ""),
            "bad" if finished is None or now - finished > STALE_AFTER else "",
        )
    )
    return result


# -- groups --------------------------------------------------------------------------------------
def group_rows(
    latest: Mapping[str, Any] | None,
    links: Sequence[LinkRecord],
    *,
    now: datetime,
    devops_url: str,
    since: datetime | None,
) -> list[GroupRow]:
    """One row per group the registry or the latest audit knows, the unhealthy ones first."""
    report = latest or {}
    audited = {
        (str(g.get("organization", "")).lower(), _int(g.get("groupId"))): g
        for g in _group_list(report)
        if isinstance(g, Mapping)
    }
    records = {(r.link.organization.lower(), r.link.group_id): r for r in links}
    by_group: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    by_vault: dict[str, list[Mapping[str, Any]]] = {}  # vault-wide findings (vault-unreadable) have no group
    for f in report.get("findings") or []:
        if not isinstance(f, Mapping):
            continue
        if f.get("organization") is None:
            by_vault.setdefault(str(f.get("vault") or "").lower(), []).append(f)
        else:
            by_group.setdefault((str(f["organization"]).lower(), _int(f.get("groupId"))), []).append(f)
    unreached = [str(u).lower() for u in report.get("unreached") or []]
    recent_since = since or now - STALE_AFTER
    # A report stored before reports kept groups: a group without findings counts as audited.
    seen_default = "" if "auditedGroups" in report else "unchanged"
    rows = []
    for key in {*audited, *records}:
        record = records.get(key)
        group = audited.get(key, {})
        if record is not None:
            link = record.link
            org, project, name, gid = link.organization, link.project, link.group_name, link.group_id
            vault, kind = link.vault, str(link.kind)
        else:
            org, project = str(group.get("organization", "")), str(group.get("project", ""))
            name, gid = str(group.get("group", "")), _int(group.get("groupId"))
            vault, kind = str(group.get("vault", "")), str(group.get("kind", "linked"))
        status = group_status(
            [*by_group.get(key, []), *by_vault.get(vault.lower(), [])],
            vault=vault,
            unreached=unreached,
            outcome=None if latest is None else str(group.get("outcome") or seen_default),
        )
        label, tone = STATUSES[status]
        rows.append(
            GroupRow(
                organization=org,
                project=project,
                group=name,
                group_id=gid,
                url=library_url(devops_url, org, project, gid),
                vault=vault,
                policy=str(group.get("policy") or "") or (policy_summary(record.link) if record else ""),
                kind=kind,
                mapped=_int(group["mapped"]) if "mapped" in group else None,
                names=tuple(str(n) for n in group.get("names") or []),
                status=status,
                status_label=label,
                tone=tone,
                change=_change(record, now=now, since=recent_since) if record else None,
            )
        )
    rows.sort(key=lambda r: (_STATUS_ORDER[r.status], r.organization.lower(), r.project.lower(), r.group.lower()))
    return rows


def status_counts(rows: Sequence[GroupRow]) -> list[tuple[str, str, int]]:
    """(label, tone, count) per status present, worst first: the line above the table."""
    counts = Counter(row.status for row in rows)
    return [(label, tone, counts[key]) for key, (label, tone) in STATUSES.items() if counts[key]]


def group_status(
    findings: Iterable[Mapping[str, Any]], *, vault: str, unreached: Sequence[str], outcome: str | None
) -> str:
    """A group's status from the latest audit's findings for it (and its vault).

    ``outcome`` is what the audit did with the group: its stored status, "" when the audit
    did not see the group, None when there is no audit at all.
    """
    open_kinds = {str(f.get("kind")) for f in findings if not f.get("repaired")}
    severities = {str(f.get("severity")) for f in findings if not f.get("repaired")}
    if outcome == "devops-unreached":
        return "devops-unreached"
    if (
        "vault-unreadable" in open_kinds
        or outcome == "vault-unreachable"
        or any(u.startswith(f"vault {vault.lower()}:") for u in unreached)
    ):
        return "unreachable"
    if "sync-refused" in open_kinds or outcome == "refused":
        return "refused"
    if open_kinds & _MISSING:
        return "missing"
    if open_kinds & _DRIFT:
        return "drifted"
    if "error" in severities:
        return "attention"
    if outcome == "ignored":
        return "ignored"
    if not outcome:
        return "unaudited"
    return "ok"


def _group_list(report: Mapping[str, Any]) -> list[Any]:
    groups = report.get("auditedGroups")
    return list(groups) if isinstance(groups, list) else []


def library_url(devops_url: str, organization: str, project: str, group_id: int) -> str:
    """The group's page in Azure DevOps (Pipelines > Library)."""
    return (
        f"{devops_url}/{quote(organization, safe='')}/{quote(project, safe='')}/_library"
        f"?itemType=VariableGroups&view=VariableGroupView&variableGroupId={group_id}"
    )


def _change(record: LinkRecord, *, now: datetime, since: datetime) -> Change | None:
    if record.last_change_at is None:
        return None
    by = record.last_change_by or ""
    label, title = PATHS.get(by, (by or "unknown", by or "unknown"))
    return Change(
        at=_stamp(record.last_change_at),
        ago=_ago(record.last_change_at, now),
        path=label,
        path_title=f"changed through {title}",
        what=(record.last_change or "").replace("-", MINUS),
        recent=record.last_change_at >= since,
    )


# -- findings ------------------------------------------------------------------------------------
def finding_groups(findings: Iterable[Mapping[str, Any]], *, devops_url: str) -> list[SeverityGroup]:
    """Findings by severity, open ones first; each with what to do about it."""
    views: dict[str, list[FindingView]] = {severity: [] for severity, _ in SEVERITIES}
    for f in findings:
        severity = str(f.get("severity"))
        if severity not in views:
            continue
        kind = str(f.get("kind") or "")
        org, project = str(f.get("organization") or ""), str(f.get("project") or "")
        gid = f.get("groupId")
        views[severity].append(
            FindingView(
                kind=kind,
                kind_label=kind.replace("-", " "),
                message=str(f.get("message") or ""),
                organization=org,
                project=project,
                group=str(f.get("group") or ""),
                url=library_url(devops_url, org, project, _int(gid)) if org and project and gid is not None else "",
                vault=str(f.get("vault") or ""),
                secret=str(f.get("secret") or ""),
                repaired=bool(f.get("repaired")),
                advice=ADVICE.get(kind, DEFAULT_ADVICE),
                at_risk=not f.get("repaired") and kind in BREAKING and "pipelines" in f,
                pipelines=tuple(_pipeline_view(p) for p in f.get("pipelines") or [] if isinstance(p, Mapping)),
                all_pipelines=bool(f.get("allPipelines")),
                pipelines_unknown=str(f.get("pipelinesUnknown") or ""),
            )
        )
    return [
        SeverityGroup(
            severity,
            label,
            tuple(sorted(views[severity], key=lambda v: v.repaired)),  # stable: the audit's order otherwise
            sum(1 for v in views[severity] if not v.repaired),
        )
        for severity, label in SEVERITIES
        if views[severity]
    ]


def _pipeline_view(pipeline: Mapping[str, Any]) -> PipelineView:
    url = str(pipeline.get("url") or "")
    folder = str(pipeline.get("folder") or "").strip("\\")
    return PipelineView(
        name=str(pipeline.get("name") or f"pipeline {pipeline.get('id')}"),
        folder=folder,
        url=url if url.lower().startswith(("https://", "http://")) else "",
    )


# -- the trend chart -----------------------------------------------------------------------------
_WIDTH, _HEIGHT = 960, 330
_LEFT, _RIGHT = 48.0, 940.0
_PANELS = (("Findings", 34.0, 150.0), ("Names changed by the audit", 204.0, 290.0))


def trend_chart(history: Sequence[Mapping[str, Any]]) -> Chart | None:
    """Findings by severity and names added/removed per run, oldest run on the left (None: no runs)."""
    runs = list(reversed(history[:HISTORY_RUNS]))
    if not runs:
        return None
    step = (_RIGHT - _LEFT) / max(len(runs) - 1, 1)
    xs = [(_LEFT + _RIGHT) / 2] if len(runs) == 1 else [_LEFT + i * step for i in range(len(runs))]
    days = [parse_timestamp(run.get("started")) for run in runs]
    stamps = [_stamp(day) if day else "unknown time" for day in days]

    def values(section: str, key: str) -> list[int]:
        return [_int((run.get(section) or {}).get(key)) for run in runs]

    findings = {severity: values("findingsBySeverity", severity) for severity in ("error", "warning", "info")}
    names = {"added": values("names", "added"), "removed": values("names", "removed")}
    panels = []
    for (title, top, bottom), data, names_of in (
        (_PANELS[0], findings, {"error": "errors", "warning": "warnings", "info": "info"}),
        (_PANELS[1], names, {"added": "names added", "removed": "names removed"}),
    ):
        peak = _nice(max((v for series in data.values() for v in series), default=0))
        scale = (bottom - top) / peak

        def y(value: int, bottom: float = bottom, scale: float = scale) -> float:
            return bottom - value * scale

        series = tuple(
            Series(
                key,
                names_of[key],
                tuple(
                    Point(x, y(v), f"{stamp}: {v} {names_of[key]}")
                    for x, v, stamp in zip(xs, vals, stamps, strict=True)
                ),
            )
            for key, vals in data.items()
        )
        ticks = tuple((y(v), str(v)) for v in sorted({0, peak // 2, peak}))
        panels.append(Panel(title, top, bottom, ticks, series))
    every = max(1, math.ceil(len(runs) / 6))
    marks = sorted({*range(0, len(runs), every), len(runs) - 1})
    anchors = {0: "start", len(runs) - 1: "end"} if len(runs) > 1 else {}  # keep the end labels inside
    labels = tuple((xs[i], f"{days[i]:%d %b}" if days[i] else "?", anchors.get(i, "middle")) for i in marks)
    legend = (
        ("error", "errors"),
        ("warning", "warnings"),
        ("info", "info"),
        ("added", "names added"),
        ("removed", "names removed"),
    )
    return Chart(_WIDTH, _HEIGHT, _LEFT, _RIGHT, len(runs), tuple(panels), labels, legend)


def _nice(peak: int) -> int:
    """An even axis maximum at or above ``peak`` (at least 2, so the middle tick is a whole number)."""
    if peak <= 2:
        return 2
    magnitude = int(10 ** (len(str(peak)) - 1))
    for factor in (1, 2, 4, 5, 10):
        if factor * magnitude >= peak and (factor * magnitude) % 2 == 0:
            return factor * magnitude
    return 10 * magnitude


# -- small helpers -------------------------------------------------------------------------------
def _stamp(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%d %b %Y %H:%M} UTC"


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    if seconds < 90:
        return "just now"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min ago"
    if seconds < 36 * 3600:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} days ago"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


__all__ = ["ADVICE", "render_report"]
