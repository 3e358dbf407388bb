"""On-demand linking and whole-group sync: what the HTTP API and the CLI call.

``link_group`` replaces the manual UI steps: it creates a Key Vault group (or adopts an
existing one linked to the same vault), registers the link with its policy, and fills
the group with the matching secret names. ``sync`` reconciles whole groups from one
full listing per vault. Both write only under the group's lease, refuse mass removals
unless forced, and write nothing at all on a dry run (or with ``KVLINK_MODE=report``).
Every link's policy also goes into its group's description (:mod:`kvlink_core.marker`);
``export_links`` / ``parse_links`` / ``import_links`` move the registry between environments.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .devops import KEY_VAULT_TYPE, VariableGroup
from .errors import RequestError, UpstreamError
from .marker import TooLongError, marked_group, render, with_marker
from .model import GroupKey, Link, Policy
from .names import check_group_name, check_organization, check_pattern, check_project, check_vault
from .plan import Plan, apply_plan, plan_group
from .registry import Observation, write_marker
from .sync import GroupOutcome

if TYPE_CHECKING:
    from .settings import Settings
    from .sync import Engine

logger = logging.getLogger(__name__)

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_LINK_FIELDS = frozenset(
    {
        "organization",
        "project",
        "group",
        "vault",
        "serviceConnection",
        "include",
        "exclude",
        "tags",
        "mode",
        "keepExpired",
        "dryRun",
        "force",
    }
)
_SYNC_FIELDS = frozenset({"vault", "organization", "project", "groupId", "dryRun", "force"})


# -- requests ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LinkRequest:
    organization: str
    project: str
    group: str
    vault: str
    policy: Policy
    service_connection: str | None = None
    dry_run: bool = False
    force: bool = False

    @classmethod
    def from_json(cls, body: Any, settings: Settings) -> LinkRequest:
        """Check a ``POST /api/links`` body; the first problem is raised as a :class:`RequestError`."""
        fields = _object(body, _LINK_FIELDS)
        organization = _organization(fields, settings)
        vault = _vault(fields, settings)
        project = _name(fields, "project", check_project)
        group = _name(fields, "group", check_group_name)
        connection = _optional_text(fields, "serviceConnection")
        include = _patterns(fields, "include", default=["*"])
        if not include:
            raise _bad("include", 'include needs at least one pattern (use ["*"] for every secret)')
        policy = Policy(
            include=tuple(include),
            exclude=tuple(_patterns(fields, "exclude", default=[])),
            tags=_tags(fields),
            keep_expired=_flag(fields, "keepExpired", default=True),
            mode=_mode(fields),
        )
        _check_marker(policy)
        return cls(
            organization=organization,
            project=project,
            group=group,
            vault=vault,
            policy=policy,
            service_connection=connection,
            dry_run=_flag(fields, "dryRun", default=False),
            force=_flag(fields, "force", default=False),
        )


@dataclass(frozen=True, slots=True)
class SyncRequest:
    vault: str | None = None
    group: GroupKey | None = None
    project: str | None = None
    dry_run: bool = False
    force: bool = False

    @classmethod
    def from_json(cls, body: Any, settings: Settings) -> SyncRequest:
        """Check a ``POST /api/sync`` body: a vault, or one group (organization, project, groupId)."""
        fields = _object(body, _SYNC_FIELDS)
        dry_run = _flag(fields, "dryRun", default=False)
        force = _flag(fields, "force", default=False)
        by_group = {"organization", "project", "groupId"} & set(fields)
        if "vault" in fields and by_group:
            raise _bad("vault", "give either vault, or organization + project + groupId, not both")
        if "vault" in fields:
            return cls(vault=_vault(fields, settings), dry_run=dry_run, force=force)
        if not by_group:
            raise _bad("vault", "give a vault, or organization + project + groupId")
        organization = _organization(fields, settings)
        project = _name(fields, "project", check_project)
        group_id = parse_group_id(fields.get("groupId"))
        return cls(group=GroupKey(organization.lower(), group_id), project=project, dry_run=dry_run, force=force)

    def as_json(self) -> dict[str, Any]:
        """The body that asks for this sync again (a queued job stores it, and it is checked again when run)."""
        body: dict[str, Any] = {"dryRun": self.dry_run, "force": self.force}
        if self.vault:
            body["vault"] = self.vault
        elif self.group is not None:
            body.update(organization=self.group.organization, project=self.project, groupId=self.group.group_id)
        return body


# -- results -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LinkResult:
    link: Link
    plan: Plan
    applied: bool
    created: bool = False
    would_create: bool = False
    changed: bool = False  # the link's policy or the group changed (or would)

    def as_json(self) -> dict[str, Any]:
        link = link_json(self.link)
        if self.would_create:
            link["groupId"] = None
        return {
            "link": link,
            "plan": self.plan.as_dict(),
            "applied": self.applied,
            "created": self.created,
            "changed": self.changed,
            "message": self.message(),
        }

    def message(self) -> str:
        names = _names(self.plan)
        if self.would_create:
            return f"dry run: would create group {self.link.group_name!r} with {names}"
        if self.created:
            return f"created group {self.link.group_name!r} with {names} and linked it"
        if not self.changed:
            return "already linked with this policy; the group is in step; nothing changed"
        if not self.applied:
            return "dry run: nothing was written" if self.plan.changed else "dry run: would link it (group in step)"
        return "linked; the group now matches the vault" if self.plan.changed else "linked; the group was in step"


@dataclass(frozen=True, slots=True)
class SyncResult:
    vaults: tuple[str, ...]
    groups: tuple[GroupOutcome, ...]
    dry_run: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "vaults": list(self.vaults),
            "groups": [outcome_json(g) for g in self.groups],
        }


def link_json(link: Link) -> dict[str, Any]:
    policy = link.policy
    return {
        **link.where(),
        "include": list(policy.include),
        "exclude": list(policy.exclude),
        "tags": dict(policy.tags),
        "mode": policy.mode,
        "keepExpired": policy.keep_expired,
        "kind": link.kind,
    }


def outcome_json(outcome: GroupOutcome) -> dict[str, Any]:
    body: dict[str, Any] = {"link": link_json(outcome.link), "outcome": outcome.status}
    if outcome.plan is not None:
        body["plan"] = outcome.plan.as_dict()
    if outcome.message:
        body["message"] = outcome.message
    return body


# -- operations ----------------------------------------------------------------------------
def link_group(engine: Engine, request: LinkRequest, *, origin: str = "api") -> LinkResult:
    """Create or adopt the group, register the link, and bring the group in step."""
    dry_run = request.dry_run or engine.settings.mode == "report"
    existing = _find_group(engine, request)
    if existing is None:
        return _create(engine, request, dry_run=dry_run, origin=origin)
    if not existing.is_key_vault:
        raise RequestError(
            409,
            "GroupNotKeyVault",
            f"group {existing.name!r} exists in {request.project} but is a {existing.type or 'plain'} group, "
            "not linked to a key vault; kvlink will not convert it",
            field="group",
        )
    if (existing.vault or "").lower() != request.vault.lower():
        raise RequestError(
            409,
            "GroupLinkedToAnotherVault",
            f"group {existing.name!r} is linked to vault {existing.vault!r}, not {request.vault!r}",
            field="vault",
        )
    try:
        marked_group(existing.raw, request.policy)  # the marker must fit beside what people wrote
    except TooLongError as err:
        raise RequestError(409, "DescriptionTooLong", f"group {existing.name!r}: {err}", field="group") from None
    link = Link(
        organization=request.organization,
        project=request.project,
        group_id=existing.id,
        group_name=existing.name,
        vault=request.vault.lower(),
        policy=request.policy,
    )
    previous = engine.registry.find_link(link.key)
    outcome = _sync_links(engine, [link], force=request.force, dry_run=dry_run, origin=origin)[0]
    if outcome.status == "refused":
        assert outcome.plan is not None
        raise RequestError(
            409, "MassRemovalRefused", outcome.message or "refused", details={"plan": outcome.plan.as_dict()}
        )
    if outcome.status in ("group-missing", "not-key-vault", "vault-changed"):
        raise RequestError(409, "GroupChanged", f"the group changed while kvlink linked it: {outcome.message}")
    plan = outcome.plan or Plan()
    if not dry_run:
        engine.registry.save_link(link, previous=previous)
        logger.info("Linked group %s (%s) to vault %s", link.group_name, link.key, link.vault)
    return LinkResult(link, plan, applied=outcome.status == "applied", changed=previous != link or plan.changed)


def _create(engine: Engine, request: LinkRequest, *, dry_run: bool, origin: str) -> LinkResult:
    if not request.service_connection:
        raise _bad(
            "serviceConnection",
            f"group {request.group!r} does not exist yet: give serviceConnection "
            "(name or id of the Azure Resource Manager connection that can read the vault)",
        )
    devops = engine.devops
    project = devops.get_project(request.organization, request.project)
    if project is None:
        raise _project_not_found(request)
    endpoint = _find_endpoint(engine, request)
    listing = engine.keyvault.list_secrets(request.vault)
    plan = plan_group({}, listing, request.policy, complete=True)
    if not plan.add:
        raise RequestError(
            409,
            "NoMatchingSecrets",
            f"no enabled secret in vault {request.vault!r} matches the policy, and Azure DevOps "
            "does not accept a variable group without variables",
            field="include",
        )
    reference = {"id": str(project["id"]), "name": str(project.get("name") or request.project)}
    link = Link(request.organization, reference["name"], 0, request.group, request.vault.lower(), request.policy)
    if dry_run:
        return LinkResult(link, plan, applied=False, would_create=True, changed=True)
    # The policy travels with the group (kvlink_core.marker): the registry can be rebuilt from it.
    description = with_marker(f"Secrets of Key Vault {request.vault}, kept in step by kvlink", request.policy)
    body = {
        "name": request.group,
        "description": description,
        "type": KEY_VAULT_TYPE,
        "providerData": {"serviceEndpointId": str(endpoint["id"]), "vault": request.vault.lower()},
        "variables": apply_plan({}, plan),
        "variableGroupProjectReferences": [
            {"name": request.group, "description": description, "projectReference": reference}
        ],
    }
    try:
        # A create whose answer was lost comes back as the group found by name, so the link is saved.
        created = devops.create_group(request.organization, body)
    except UpstreamError as err:
        if err.status == 409:  # someone else's group of that name appeared since _find_group
            raise RequestError(
                409,
                "GroupExists",
                f"group {request.group!r} was created meanwhile; repeat the request to adopt it",
                field="group",
            ) from err
        raise
    link = replace(link, group_id=created.id, group_name=created.name or request.group)
    marker = write_marker(origin=origin, summary=f"created +{len(plan.add)}")
    engine.registry.save_link(link, previous=None, written=marker)  # a new group id has no link yet
    engine.notifier.group_updated(link, plan, origin=origin)
    logger.info("Created group %s (%s) with %s from vault %s", link.group_name, link.key, _names(plan), link.vault)
    return LinkResult(link, plan, applied=True, created=True, changed=True)


def links_to_sync(engine: Engine, request: SyncRequest) -> list[Link]:
    """The links a sync covers: every group linked to the vault, or the one group (404 when none)."""
    if request.vault:
        links = engine.registry.links_for_vault(request.vault)
        if not links:
            raise RequestError(404, "NoLinks", f"no group is linked to vault {request.vault!r}", field="vault")
        return links
    assert request.group is not None
    found = engine.registry.find_link(request.group)
    if found is None or (request.project and found.project.lower() != request.project.lower()):
        raise RequestError(404, "LinkNotFound", f"group {request.group} is not linked", field="groupId")
    return [found]


def sync(
    engine: Engine,
    request: SyncRequest,
    *,
    origin: str = "api",
    links: list[Link] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SyncResult:
    """Reconcile whole groups: every group linked to a vault, or one group.

    ``progress(done, total)`` is called as each group finishes (a queued job records it).
    """
    dry_run = request.dry_run or engine.settings.mode == "report"
    if links is None:
        links = links_to_sync(engine, request)
    outcomes = _sync_links(engine, links, force=request.force, dry_run=dry_run, origin=origin, progress=progress)
    return SyncResult(tuple(sorted({link.vault for link in links})), tuple(outcomes), dry_run)


def list_links(engine: Engine, *, vault: str | None = None, organization: str | None = None) -> list[Link]:
    if vault and (problem := check_vault(vault)):
        raise _bad("vault", problem)
    if organization and (problem := check_organization(organization)):
        raise _bad("organization", problem)
    return engine.registry.list_links(vault=vault, organization=organization)


def unlink(engine: Engine, organization: str, project: str, group_id: str | int) -> Link:
    """Forget a link; the group itself stays as it is."""
    for field, problem in (
        ("organization", check_organization(organization)),
        ("project", check_project(project)),
    ):
        if problem:
            raise _bad(field, problem)
    key = GroupKey(organization.lower(), parse_group_id(group_id))
    link = engine.registry.find_link(key)
    if link is None or link.project.lower() != project.lower():
        raise RequestError(404, "LinkNotFound", f"group {key} is not linked in project {project!r}", field="groupId")
    if engine.settings.mode == "report":
        logger.warning(
            "KVLINK_MODE=report: group %s (%s) keeps kvlink's marker; the next audit would link it again",
            link.group_name,
            key,
        )
    else:
        # Take the marker out first: a group still carrying it would be linked again by the next audit.
        engine.write_group(link, [], origin="unlink", marker="remove")
    engine.registry.delete_link(key)
    logger.info("Unlinked group %s (%s); its names are unchanged", link.group_name, key)
    return link


# -- moving links between environments -------------------------------------------------------
EXPORT_VERSION = 1
_EXPORT_FIELDS = frozenset(
    {
        "organization",
        "project",
        "groupId",
        "group",
        "vault",
        "include",
        "exclude",
        "tags",
        "mode",
        "keepExpired",
        "kind",
    }
)


@dataclass(frozen=True, slots=True)
class ImportResult:
    created: tuple[Link, ...]
    updated: tuple[Link, ...]
    unchanged: tuple[Link, ...]
    dry_run: bool

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def as_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "created": [link_json(link) for link in self.created],
            "updated": [link_json(link) for link in self.updated],
            "unchanged": [link_json(link) for link in self.unchanged],
        }


def export_links(engine: Engine, *, vault: str | None = None, organization: str | None = None) -> dict[str, Any]:
    """Every link (of a vault, of an organization) with its policy, in the shape :func:`parse_links` reads
    (the links are those ``GET /api/links`` lists)."""
    links = list_links(engine, vault=vault, organization=organization)
    return {"version": EXPORT_VERSION, "links": [link_json(link) for link in links]}


def parse_links(document: Any, settings: Settings) -> list[Link]:
    """The links of an export, every entry checked as ``POST /api/links`` checks a link (allow-lists
    included) before any is used; a :class:`RequestError` names the first bad entry."""
    entries = document.get("links") if isinstance(document, Mapping) else document
    if isinstance(document, Mapping):
        version = document.get("version", EXPORT_VERSION)
        if version != EXPORT_VERSION:
            raise RequestError(
                400, "InvalidImport", f"version {version!r} is not one this kvlink reads ({EXPORT_VERSION})"
            )
    if not isinstance(entries, list):
        raise RequestError(400, "InvalidImport", 'expected {"links": [...]} as `kvlink links export` writes it')
    links: list[Link] = []
    seen: dict[GroupKey, int] = {}
    for n, entry in enumerate(entries):
        try:
            link = _link_entry(entry, settings)
        except RequestError as err:
            raise RequestError(err.status, err.code, f"{_entry_name(n, entry)}: {err}", field=err.field) from None
        if link.key in seen:
            raise RequestError(
                400, "InvalidImport", f"{_entry_name(n, entry)}: the same group as links[{seen[link.key]}]"
            )
        seen[link.key] = n
        links.append(link)
    return links


def import_links(engine: Engine, links: list[Link], *, dry_run: bool = False) -> ImportResult:
    """Register the links (idempotent: a link already registered as it is stays untouched).

    Only the registry is written; the groups get their markers at their next sync or write."""
    created: list[Link] = []
    updated: list[Link] = []
    unchanged: list[Link] = []
    for link in links:
        previous = engine.registry.find_link(link.key)
        if previous == link:
            unchanged.append(link)
            continue
        (created if previous is None else updated).append(link)
        if not dry_run:
            engine.registry.save_link(link, previous=previous)
    if not dry_run:
        logger.info("Imported links: %d created, %d updated, %d unchanged", len(created), len(updated), len(unchanged))
    return ImportResult(tuple(created), tuple(updated), tuple(unchanged), dry_run)


def _link_entry(entry: Any, settings: Settings) -> Link:
    fields = _object(entry, _EXPORT_FIELDS)
    include = _patterns(fields, "include", default=["*"])
    if not include:
        raise _bad("include", 'include needs at least one pattern (use ["*"] for every secret)')
    policy = Policy(
        include=tuple(include),
        exclude=tuple(_patterns(fields, "exclude", default=[])),
        tags=_tags(fields),
        keep_expired=_flag(fields, "keepExpired", default=True),
        mode=_mode(fields),
    )
    _check_marker(policy)
    kind = fields.get("kind") or "linked"
    if kind not in ("linked", "discovered"):
        raise _bad("kind", "kind must be 'linked' or 'discovered'")
    return Link(
        organization=_organization(fields, settings),
        project=_name(fields, "project", check_project),
        group_id=parse_group_id(fields.get("groupId")),
        group_name=_name(fields, "group", check_group_name),
        vault=_vault(fields, settings),
        policy=policy,
        kind="discovered" if kind == "discovered" else "linked",
    )


def _entry_name(n: int, entry: Any) -> str:
    """``links[3] (contoso/App group 'kv' id 7)``: enough to find the entry in the file."""
    if not isinstance(entry, Mapping):
        return f"links[{n}]"
    where = "/".join(str(entry[k]) for k in ("organization", "project") if isinstance(entry.get(k), str))
    group = f"group {entry['group']!r}" if isinstance(entry.get("group"), str) else ""
    number = f"id {entry['groupId']}" if isinstance(entry.get("groupId"), int | str) else ""
    detail = " ".join(part for part in (where, group, number) if part)
    return f"links[{n}] ({detail})" if detail else f"links[{n}]"


# -- helpers ---------------------------------------------------------------------------------
def _sync_links(
    engine: Engine,
    links: list[Link],
    *,
    force: bool,
    dry_run: bool,
    origin: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[GroupOutcome]:
    """Each vault listed once, however many of the groups link to it; each group written under its lease,
    with its link's marker (a link made before kvlink kept markers gets its marker here)."""
    outcomes: list[GroupOutcome] = []
    finished = itertools.count(1)
    counting = threading.Lock()

    def write(link: Link, observations: list[Observation]) -> GroupOutcome:
        try:
            return engine.write_group(
                link, observations, complete=True, force=force, dry_run=dry_run, origin=origin, marker="write"
            )
        finally:
            if progress is not None:
                with counting:
                    done = next(finished)
                progress(done, len(links))

    by_vault: dict[str, list[Link]] = {}
    for link in links:
        by_vault.setdefault(link.vault.lower(), []).append(link)
    for vault, vault_links in by_vault.items():
        started = time.time_ns()  # what was queued after the listing began stays newer than it
        listing = engine.keyvault.list_secrets(vault)
        observations = [Observation(state, at=started) for state in listing.values()]
        outcomes += engine.for_each(
            vault_links,
            lambda link, obs=observations: write(link, obs),
            origin=f"sync of vault {vault}",
            collect_failures=len(links) > 1,
        )
    return outcomes


def _find_group(engine: Engine, request: LinkRequest) -> VariableGroup | None:
    try:
        groups = engine.devops.list_groups(request.organization, request.project, name=request.group)
        matches = [g for g in groups if g.name.lower() == request.group.lower()]
    except UpstreamError as err:
        if err.status == 404:
            raise _project_not_found(request) from err
        raise
    return matches[0] if matches else None


def _find_endpoint(engine: Engine, request: LinkRequest) -> Mapping[str, Any]:
    name = request.service_connection or ""
    if _GUID.match(name):
        endpoint = engine.devops.get_service_endpoint(request.organization, request.project, name)
    else:
        endpoint = engine.devops.find_service_endpoint(request.organization, request.project, name)
    if endpoint is None:
        raise RequestError(
            404,
            "ServiceConnectionNotFound",
            f"service connection {name!r} was not found in project {request.project!r}",
            field="serviceConnection",
        )
    kind = str(endpoint.get("type") or "")
    if kind.lower() != "azurerm":
        raise _bad(
            "serviceConnection",
            f"service connection {name!r} is a {kind!r} connection; a Key Vault "
            "group needs an Azure Resource Manager connection",
        )
    if endpoint.get("isReady") is False:
        raise RequestError(
            409,
            "ServiceConnectionNotReady",
            f"service connection {name!r} is not ready",
            field="serviceConnection",
        )
    return endpoint


def _names(plan: Plan) -> str:
    count = len(plan.add)
    return f"{count} name{'' if count == 1 else 's'}"


def _project_not_found(request: LinkRequest) -> RequestError:
    return RequestError(404, "ProjectNotFound", f"project {request.project!r} was not found", field="project")


def _bad(field: str, message: str) -> RequestError:
    return RequestError(400, "InvalidField", message, field=field)


def _object(body: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise RequestError(400, "InvalidBody", "the request body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise _bad(str(key), f"unknown field {key!r}; expected some of {sorted(allowed)}")
    return body


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is None:
        raise _bad(name, f"{name} is required")
    if not isinstance(value, str):
        raise _bad(name, f"{name} must be a string")
    return value


def _name(fields: Mapping[str, Any], name: str, check: Any) -> str:
    value = _text(fields, name)
    if problem := check(value):
        raise _bad(name, problem)
    return value


def _organization(fields: Mapping[str, Any], settings: Settings) -> str:
    organization = _name(fields, "organization", check_organization)
    if not settings.org_allowed(organization):
        raise RequestError(
            403,
            "OrganizationNotAllowed",
            f"organization {organization!r} is not in KVLINK_DEVOPS_ORGS",
            field="organization",
        )
    return organization


def _vault(fields: Mapping[str, Any], settings: Settings) -> str:
    vault = _name(fields, "vault", check_vault)
    if not settings.vault_allowed(vault):
        raise RequestError(403, "VaultNotAllowed", f"vault {vault!r} is not in KVLINK_ALLOWED_VAULTS", field="vault")
    return vault.lower()


def _optional_text(fields: Mapping[str, Any], name: str) -> str | None:
    if fields.get(name) is None:
        return None
    value = _text(fields, name).strip()
    if not value or len(value) > 256 or any(ord(ch) < 32 for ch in value):
        raise _bad(name, f"{name} must be 1-256 printable characters")
    return value


def _check_marker(policy: Policy) -> None:
    """The policy must fit in the marker the group carries (kvlink_core.marker)."""
    try:
        render(policy)
    except TooLongError as err:
        raise RequestError(400, "PolicyTooLong", str(err)) from None


def _patterns(fields: Mapping[str, Any], name: str, *, default: list[str]) -> list[str]:
    value = fields.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise _bad(name, f"{name} must be a list of name patterns")
    if len(value) > 50:
        raise _bad(name, f"{name} may hold at most 50 patterns")
    for pattern in value:
        if problem := check_pattern(pattern):
            raise _bad(name, problem)
    return list(value)


def _tags(fields: Mapping[str, Any]) -> tuple[tuple[str, str | None], ...]:
    value = fields.get("tags") or {}
    if not isinstance(value, Mapping):
        raise _bad("tags", 'tags must be an object of required tag values, e.g. {"env": "prod", "team": null}')
    if len(value) > 15:
        raise _bad("tags", "tags may require at most 15 tags (a secret has at most 15)")
    for key, tag in value.items():
        if not key or len(key) > 256 or (tag is not None and (not isinstance(tag, str) or len(tag) > 256)):
            raise _bad("tags", f"tag {key!r} must map to a string of at most 256 characters, or null for any value")
    return tuple(sorted((str(k), v) for k, v in value.items()))


def _flag(fields: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = fields.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, f"{name} must be true or false")
    return value


def _mode(fields: Mapping[str, Any]) -> Any:
    mode = fields.get("mode") or "merge"
    if mode not in ("merge", "mirror"):
        raise _bad("mode", "mode must be 'merge' or 'mirror'")
    return mode


def parse_group_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _bad("groupId", "groupId must be a positive integer")
    try:
        number = int(value)
    except ValueError:
        raise _bad("groupId", f"groupId {value!r} is not a number") from None
    if number <= 0 or number > 2**31 - 1 or (isinstance(value, str) and not (value.isascii() and value.isdigit())):
        raise _bad("groupId", f"groupId {value!r} is not a positive integer")
    return number
