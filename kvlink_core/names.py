"""Azure's naming rules, checked before a name reaches a URL or a Table key.

Each ``check_*`` returns the problem as a sentence, or ``None`` when the name is fine.
Names are ASCII where Azure requires it, so look-alike characters are refused rather
than normalised.
"""

from __future__ import annotations

import re

_VAULT = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$")
_SECRET = re.compile(r"^[0-9A-Za-z-]{1,127}$")
# A policy's name pattern: secret-name characters and fnmatch's glob characters.
_PATTERN = re.compile(r"^[0-9A-Za-z\-*?\[\]!]{1,128}$")
_ORG = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,48}[A-Za-z0-9])?$")
# Azure DevOps refuses these in project names (and they would need escaping in URLs).
_PROJECT_FORBIDDEN = set('\\/:*?"<>;#${},+=[]|%&')
_PROJECT_RESERVED = {
    "app_browsers",
    "app_code",
    "app_data",
    "app_globalresources",
    "app_localresources",
    "app_themes",
    "app_webresources",
    "bin",
    "web.config",
    "aux",
    "con",
    "nul",
    "prn",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}


def check_vault(name: str) -> str | None:
    if not _VAULT.match(name) or "--" in name:
        return (
            f"vault name {name!r} is not valid: 3-24 characters, letters, digits and single hyphens, "
            "starting with a letter and ending with a letter or digit"
        )
    return None


def check_secret(name: str) -> str | None:
    if not _SECRET.match(name):
        return f"secret name {name!r} is not valid: 1-127 characters, only 0-9, a-z, A-Z and '-'"
    return None


def check_organization(name: str) -> str | None:
    if not _ORG.match(name):
        return (
            f"organization {name!r} is not valid: an Azure DevOps organization name "
            "(1-50 letters, digits and hyphens), not a URL or host"
        )
    return None


def check_project(name: str) -> str | None:
    if not name or len(name) > 64:
        return f"project {name!r} is not valid: 1-64 characters"
    if any(ch in _PROJECT_FORBIDDEN or ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"project {name!r} is not valid: it contains a character Azure DevOps forbids"
    if name[0] in "_." or name.endswith(".") or name.strip() != name:
        return f"project {name!r} is not valid: it may not start with '_' or '.', end with '.', or be padded"
    if name.lower() in _PROJECT_RESERVED:
        return f"project {name!r} is not valid: it is a reserved name"
    return None


def check_group_name(name: str) -> str | None:
    if not name or len(name) > 256 or name.strip() != name:
        return f"variable group name {name!r} is not valid: 1-256 characters without padding"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"variable group name {name!r} is not valid: it contains control characters"
    return None


def check_pattern(pattern: str) -> str | None:
    if not _PATTERN.match(pattern):
        return (
            f"pattern {pattern!r} is not valid: secret-name characters (0-9, a-z, A-Z, -) "
            "and the glob characters * ? [ ] ! only"
        )
    return None


def check_tag(key: str, value: str | None) -> str | None:
    """A required tag: Key Vault's tag names and values are at most 256 characters."""
    if not key or len(key) > 256 or (value is not None and len(value) > 256):
        return f"tag {key!r} must be 1-256 characters, and its value at most 256"
    return None
