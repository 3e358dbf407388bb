"""Azure naming rules, enforced before a name reaches a URL or a Table key."""

from __future__ import annotations

import pytest

from kvlink_core.names import check_organization, check_project, check_secret, check_vault


@pytest.mark.parametrize("name", ["kv1", "my-vault", "A" * 24, "kv-prod-01"])
def test_valid_vault_names(name):
    """Names within Key Vault's rules pass."""
    assert check_vault(name) is None


@pytest.mark.parametrize(
    "name",
    ["kv", "a" * 25, "1vault", "my--vault", "vault-", "my_vault", "kv.prod", "kv/../x", "kvé"],
    ids=[
        "short",
        "long",
        "digit-first",
        "double-hyphen",
        "trailing-hyphen",
        "underscore",
        "dot",
        "path",
        "accent",
    ],
)
def test_invalid_vault_names(name):
    """Names outside Key Vault's rules are refused with a sentence naming the rule."""
    assert "3-24 characters" in (check_vault(name) or "")


@pytest.mark.parametrize("name", ["a", "db-password", "X" * 127, "123"])
def test_valid_secret_names(name):
    """Secret names of 1-127 letters, digits and hyphens pass."""
    assert check_secret(name) is None


@pytest.mark.parametrize("name", ["", "x" * 128, "db_password", "a b", "../etc", "pässword"])
def test_invalid_secret_names(name):
    """Anything else is refused."""
    assert check_secret(name) is not None


@pytest.mark.parametrize("name", ["contoso", "fabrikam-2", "a"])
def test_valid_organizations(name):
    """Plain organization names pass."""
    assert check_organization(name) is None


@pytest.mark.parametrize("name", ["evil.com", "https://x", "org/", "contoso:443", "соntoso", "a" * 51])
def test_organizations_are_not_hosts(name):
    """Hosts, URLs and look-alikes are not organization names."""
    assert check_organization(name) is not None


@pytest.mark.parametrize("name", ["Payments", "Team Alpha", "Projekt Ü"])
def test_valid_projects(name):
    """Project names may have spaces and letters beyond ASCII."""
    assert check_project(name) is None


@pytest.mark.parametrize("name", ["", "a/b", "_hidden", "name.", "CON", "x" * 65, "semi;colon", " padded"])
def test_invalid_projects(name):
    """Project names with characters Azure DevOps forbids are refused."""
    assert check_project(name) is not None
