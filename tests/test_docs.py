"""The docs match the code: every setting is documented and in the example settings file."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_SOURCE = (ROOT / "kvlink_core" / "settings.py").read_text()
CODE_SETTINGS = set(re.findall(r'"((?:KVLINK|AZURE)_[A-Z_]+|AzureWebJobsStorage)"', SETTINGS_SOURCE))
# Settings the Functions host resolves for bindings: connection names and %EXPRESSIONS%.
BINDING_SOURCE = (ROOT / "function_app.py").read_text()
CODE_SETTINGS |= set(re.findall(r'connection="([A-Za-z_]+)"', BINDING_SOURCE))
CODE_SETTINGS |= set(re.findall(r'"%([A-Za-z_]+)%"', BINDING_SOURCE))


def test_code_reads_the_documented_settings():
    """The settings module reads the settings this test expects to check (guards the regex)."""
    assert {
        "KVLINK_DEVOPS_ORGS",
        "KVLINK_ALLOWED_VAULTS",
        "AZURE_DEVOPS_PAT",
        "AzureWebJobsStorage",
    } <= CODE_SETTINGS


def test_readme_table_lists_every_setting():
    """Every setting the code reads has a row in the README's configuration table, and no more."""
    readme = (ROOT / "README.md").read_text()
    configuration = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([A-Za-z_]+)` \|", configuration, flags=re.MULTILINE))
    assert rows == CODE_SETTINGS


def test_example_settings_file_lists_every_setting():
    """local.settings.example.json names every setting the code reads."""
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    assert set(values) >= CODE_SETTINGS


def test_ci_runs_the_readme_test_command():
    """.ci/run calls the README's test command."""
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
