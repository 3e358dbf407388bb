"""kvlink's settings: read once from the environment into an immutable value.

Every setting has one name everywhere -- the code, the Configuration table in docs/deploy.md,
``local.settings.example.json`` and the Bicep app settings.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .errors import ConfigError
from .names import check_organization, check_project, check_vault

DEFAULT_DEVOPS_URL = "https://dev.azure.com"
DEFAULT_VAULT_URL = "https://{vault}.vault.azure.net"
DEVELOPMENT_STORAGE = "UseDevelopmentStorage=true"
# Set by the Functions platform, never by Core Tools (`func start`). App Service plans set
# WEBSITE_INSTANCE_ID; Flex and Linux Consumption do not, but set the other three.
HOSTING_VARIABLES = ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME", "CONTAINER_NAME", "WEBSITE_SKU")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_SDK_LOG_LEVEL = "WARNING"

Mode = Literal["apply", "report"]


@dataclass(frozen=True, slots=True)
class StorageTarget:
    """Where the registry lives: a connection string, or an endpoint reached with an identity."""

    connection_string: str | None = None
    table_endpoint: str | None = None
    queue_endpoint: str | None = None  # the async sync's queue (AzureWebJobsStorage__queueServiceUri)


@dataclass(frozen=True, slots=True)
class Settings:
    devops_orgs: tuple[str, ...]
    allowed_vaults: frozenset[str] | None  # None means "*": any vault
    devops_pat: str | None = None
    azure_client_id: str | None = None
    storage: StorageTarget = StorageTarget(connection_string=DEVELOPMENT_STORAGE)
    mode: Mode = "apply"
    devops_url: str = DEFAULT_DEVOPS_URL
    vault_url_template: str = DEFAULT_VAULT_URL
    ca_bundle: str | None = None
    emulator: bool = False
    max_removal_fraction: float = 0.5
    unlinked_groups: Literal["prune", "ignore"] = "prune"
    devops_projects: tuple[tuple[str, str], ...] = ()  # (org, project); empty = every project
    expiry_warning_days: int = 30
    vault_concurrency: int = 32
    devops_concurrency: int = 4
    notify_topic_endpoint: str | None = None
    running_in_azure: bool = False
    sdk_log_level: str = DEFAULT_SDK_LOG_LEVEL
    sync_async_groups: int = 20  # a POST /api/sync over more groups than this answers 202 and runs queued

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse and check every setting; report all problems in one :class:`ConfigError`."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        orgs = _split(get("KVLINK_DEVOPS_ORGS"))
        if not orgs:
            problems.append("KVLINK_DEVOPS_ORGS is required: the Azure DevOps organizations kvlink may touch")
        problems += [f"KVLINK_DEVOPS_ORGS: {p}" for p in map(check_organization, orgs) if p]

        vaults_raw = _split(get("KVLINK_ALLOWED_VAULTS"))
        allowed: frozenset[str] | None = None
        if not vaults_raw:
            problems.append("KVLINK_ALLOWED_VAULTS is required: vault names, or * for any vault")
        elif vaults_raw == ["*"]:
            allowed = None
        else:
            problems += [f"KVLINK_ALLOWED_VAULTS: {p}" for p in map(check_vault, vaults_raw) if p]
            allowed = frozenset(v.lower() for v in vaults_raw)

        mode = (get("KVLINK_MODE") or "apply").lower()
        if mode not in ("apply", "report"):
            problems.append(f"KVLINK_MODE must be 'apply' or 'report', not {mode!r}")

        hosting = [name for name in HOSTING_VARIABLES if get(name) is not None]
        # Only the WEBSITE_* variables mean Azure: container runtimes and dev containers set
        # CONTAINER_NAME too, and there the emulator and az login are the right ones. Flex always sets
        # WEBSITE_SITE_NAME and WEBSITE_SKU beside CONTAINER_NAME, so it is still refused there.
        running_in_azure = any(name.startswith("WEBSITE_") for name in hosting)
        emulator = _flag(get("KVLINK_EMULATOR"), "KVLINK_EMULATOR", problems)
        if emulator and running_in_azure:
            problems.append(
                f"KVLINK_EMULATOR=1 is refused when running in Azure ({', '.join(hosting)} set): "
                "it sends a fixed token and skips the challenge-resource check, meant only for local stand-ins"
            )

        devops_url = (get("KVLINK_DEVOPS_URL") or DEFAULT_DEVOPS_URL).rstrip("/")
        problems += _check_url("KVLINK_DEVOPS_URL", devops_url, template=False)
        vault_url = (get("KVLINK_VAULT_URL") or DEFAULT_VAULT_URL).rstrip("/")
        problems += _check_url("KVLINK_VAULT_URL", vault_url, template=True)

        ca_bundle = get("KVLINK_CA_BUNDLE")
        if ca_bundle and not os.path.isfile(ca_bundle):
            problems.append(f"KVLINK_CA_BUNDLE points to {ca_bundle!r}, which is not a file")

        fraction = _fraction(get("KVLINK_MAX_REMOVAL_FRACTION"), problems)
        unlinked = (get("KVLINK_UNLINKED_GROUPS") or "prune").lower()
        if unlinked not in ("prune", "ignore"):
            problems.append(f"KVLINK_UNLINKED_GROUPS must be 'prune' or 'ignore', not {unlinked!r}")

        projects = _projects(get("KVLINK_DEVOPS_PROJECTS"), orgs, problems)
        warning_days = _integer(get, "KVLINK_EXPIRY_WARNING_DAYS", default=30, low=0, high=3650, problems=problems)
        vault_concurrency = _integer(get, "KVLINK_VAULT_CONCURRENCY", default=32, low=1, high=256, problems=problems)
        devops_concurrency = _integer(get, "KVLINK_DEVOPS_CONCURRENCY", default=4, low=1, high=64, problems=problems)
        sync_async_groups = _integer(
            get, "KVLINK_SYNC_ASYNC_GROUPS", default=20, low=0, high=100_000, problems=problems
        )
        notify = get("KVLINK_NOTIFY_TOPIC_ENDPOINT")
        if notify:
            problems += _check_url("KVLINK_NOTIFY_TOPIC_ENDPOINT", notify, template=False)

        sdk_log_level = sdk_log_level_of(get("KVLINK_SDK_LOG_LEVEL"))
        if sdk_log_level is None:
            problems.append(
                f"KVLINK_SDK_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {get('KVLINK_SDK_LOG_LEVEL')!r}"
            )

        storage = _storage(env, problems)
        if problems:
            raise ConfigError(problems)
        return cls(
            devops_orgs=tuple(orgs),
            allowed_vaults=allowed,
            devops_pat=get("AZURE_DEVOPS_PAT"),
            azure_client_id=get("AZURE_CLIENT_ID"),
            storage=storage,
            mode="report" if mode == "report" else "apply",
            devops_url=devops_url,
            vault_url_template=vault_url,
            ca_bundle=ca_bundle,
            emulator=emulator,
            max_removal_fraction=fraction,
            unlinked_groups="ignore" if unlinked == "ignore" else "prune",
            devops_projects=projects,
            expiry_warning_days=warning_days,
            vault_concurrency=vault_concurrency,
            devops_concurrency=devops_concurrency,
            notify_topic_endpoint=notify,
            running_in_azure=running_in_azure,
            sdk_log_level=sdk_log_level or DEFAULT_SDK_LOG_LEVEL,
            sync_async_groups=sync_async_groups,
        )

    def vault_allowed(self, vault: str) -> bool:
        return self.allowed_vaults is None or vault.lower() in self.allowed_vaults

    def org_allowed(self, organization: str) -> bool:
        return organization.lower() in {o.lower() for o in self.devops_orgs}

    def vault_url(self, vault: str) -> str:
        # replace(), not format(): a template is configuration, a vault name is data.
        return self.vault_url_template.replace("{vault}", vault.lower())

    def org_url(self, organization: str) -> str:
        return f"{self.devops_url}/{organization}"


@functools.cache
def get_settings() -> Settings:
    """The process's settings, parsed on first use (never at import time)."""
    return Settings.from_env()


def sdk_log_level_of(value: str | None) -> str | None:
    """KVLINK_SDK_LOG_LEVEL as a logging level name (unset: WARNING), or None when it is not one."""
    level = (value or DEFAULT_SDK_LOG_LEVEL).strip().upper()
    return level if level in LOG_LEVELS else None


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _flag(value: str | None, name: str, problems: list[str]) -> bool:
    if value is None:
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    problems.append(f"{name} must be 1 or 0, not {value!r}")
    return False


def _fraction(value: str | None, problems: list[str]) -> float:
    if value is None:
        return 0.5
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        problems.append(f"KVLINK_MAX_REMOVAL_FRACTION must be a number from 0 to 1, not {value!r}")
        return 0.5
    return fraction


def _integer(
    get: Callable[[str], str | None], name: str, *, default: int, low: int, high: int, problems: list[str]
) -> int:
    value = get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        problems.append(f"{name} must be a whole number from {low} to {high}, not {value!r}")
        return default
    return number


def _projects(value: str | None, orgs: list[str], problems: list[str]) -> tuple[tuple[str, str], ...]:
    """``org/project,...``: the projects the audit scans; every project of every org when unset."""
    projects = []
    known = {o.lower() for o in orgs}
    for entry in _split(value):
        org, sep, project = entry.partition("/")
        if not sep or not org or not project:
            problems.append(f"KVLINK_DEVOPS_PROJECTS: {entry!r} is not org/project")
            continue
        if org.lower() not in known:
            problems.append(f"KVLINK_DEVOPS_PROJECTS: organization {org!r} is not in KVLINK_DEVOPS_ORGS")
        elif problem := check_project(project):
            problems.append(f"KVLINK_DEVOPS_PROJECTS: {problem}")
        else:
            projects.append((org, project))
    return tuple(projects)


def _check_url(name: str, url: str, *, template: bool) -> list[str]:
    probe = url.replace("{vault}", "vault") if template else url
    parts = urlsplit(probe)
    problems = []
    if parts.scheme != "https" or not parts.hostname:
        problems.append(f"{name} must be an https:// URL, not {url!r}")
    if parts.query or parts.fragment:
        problems.append(f"{name} must not carry a query or fragment: {url!r}")
    if template and "{vault}" not in url:
        problems.append(f"{name} must contain the placeholder {{vault}}: {url!r}")
    return problems


def _storage(env: Mapping[str, str], problems: list[str]) -> StorageTarget:
    connection = (env.get("AzureWebJobsStorage") or "").strip()
    if connection:
        return StorageTarget(connection_string=connection)
    account = (env.get("AzureWebJobsStorage__accountName") or "").strip()
    endpoints: dict[str, str | None] = {}
    # The names spelled out, so a search for a setting finds where it is read.
    for service, name in (
        ("table", "AzureWebJobsStorage__tableServiceUri"),
        ("queue", "AzureWebJobsStorage__queueServiceUri"),
    ):
        endpoint = (env.get(name) or "").strip()
        if endpoint and not endpoint.startswith("https://"):
            problems.append(f"{name} must be an https:// URL, not {endpoint!r}")
        if not endpoint and account:
            endpoint = f"https://{account}.{service}.core.windows.net"
        endpoints[service] = endpoint.rstrip("/") or None
    if endpoints["table"]:
        return StorageTarget(table_endpoint=endpoints["table"], queue_endpoint=endpoints["queue"])
    return StorageTarget(connection_string=DEVELOPMENT_STORAGE)
