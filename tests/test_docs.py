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
    """Every setting the code reads has a row in the configuration table (docs/deploy.md), and no more."""
    page = (ROOT / "docs" / "deploy.md").read_text()
    configuration = page.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
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


# -- links between README and docs/ ----------------------------------------------------------------

DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks, inline code removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(re.sub(r"`[^`]*`", lambda m: m.group(0).strip("`"), line))
    return lines


def anchors(text: str) -> set[str]:
    """The heading anchors GitHub gives a page: lower case, punctuation dropped, each space a hyphen,
    and -1, -2, ... on repeats (github/cmark-gfm, as github-slugger reimplements it)."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(text):
        heading = re.match(r"^#{1,6} (.+?)#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_anchors_are_githubs():
    """The anchor rule gives the anchors GitHub shows for headings of these pages."""
    page = "# Deploy\n## `azd up`\n## The one manual step: let the identity into Azure DevOps\n## Notes\n## Notes\n"
    assert anchors(page) == {
        "deploy",
        "azd-up",
        "the-one-manual-step-let-the-identity-into-azure-devops",
        "notes",
        "notes-1",
    }
    assert anchors("```\n# not a heading\n```\n") == set()


def test_every_relative_link_resolves():
    """Every relative link in README.md and docs/*.md names a file that exists and, after #, a heading
    of that page; the checker finds the links it should (guards the pattern)."""
    broken, checked = [], 0
    for page in DOC_PAGES:
        for line in prose(page.read_text(encoding="utf-8")):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: -- not ours to check
                    continue
                checked += 1
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                if not file.exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                elif anchor and (file.suffix != ".md" or anchor not in anchors(file.read_text(encoding="utf-8"))):
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []
    assert checked >= 30


def test_readme_is_a_front_page_that_reaches_every_docs_page():
    """README stays short and links every page under docs/, so each moved section is one click away."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    linked = {target.partition("#")[0] for line in prose(readme) for target in LINK.findall(line)}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert pages and pages <= linked, pages - linked
    for name in ("deploy", "cli", "http-api", "operations", "troubleshooting", "how-it-works", "benchmarks", "limits"):
        assert (ROOT / "docs" / f"{name}.md").exists()
