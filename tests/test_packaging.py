"""The `kvlink` command: the package builds offline, installs into a clean virtualenv, and behaves as
`python -m kvlink_core` does -- same verbs, same output, same exit codes."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from kvlink_core import api

ROOT = Path(__file__).resolve().parent.parent
# Variables whose presence makes kvlink refuse KVLINK_EMULATOR=1 (docs/deploy.md, Configuration).
HOSTING = ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME", "WEBSITE_SKU", "CONTAINER_NAME")
# The Functions host's library: only function_app.py imports it, and function_app.py is not packaged.
# The Functions host's library and, from Python 3.13, the worker runtime the app pins: only
# function_app.py (not packaged) needs them.
FUNCTIONS_ONLY = {"azure-functions", "azure-functions-runtime"}


def requirement_name(line: str) -> str:
    return line.split(";", maxsplit=1)[0].split("==", maxsplit=1)[0].strip()


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    # A bound for each step: a wheel build or an install that hangs must fail the test, not the run.
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, check=False, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built offline from the installed setuptools (no build isolation, no index), from a
    copy of the checkout: a build writes build/ and *.egg-info/ beside its sources. tests/, standins/,
    bench/ and function_app.py come along so that leaving them out of the wheel is checked."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "requirements.txt", "function_app.py"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("kvlink_core", "standins", "bench", "tests"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    built = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "-w", dist, src,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = dist.glob("kvlink-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed, and nothing of the checkout on its path. Its
    dependencies come from this test run's own site-packages through a .pth file, so no network is
    needed; the wheel is installed with --no-deps, as pipx would install it with them."""
    home = tmp_path_factory.mktemp("venv")
    made = run(sys.executable, "-m", "venv", "--without-pip", home)
    assert made.returncode == 0, made.stderr
    python = home / "bin" / "python"
    installed = run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-deps",
        "--disable-pip-version-check", wheel,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    # Where this run's copies of the wheel's dependencies live (one site-packages, or more).
    _, metadata, _ = wheel_metadata(wheel)
    places = {
        str(importlib.metadata.distribution(line.split(" ")[1].split("==")[0]).locate_file(""))
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    }
    (Path(purelib) / "kvlink-test-dependencies.pth").write_text("".join(f"{place}\n" for place in sorted(places)))
    return home


def clean_env(**settings: str) -> dict[str, str]:
    """The environment without any kvlink setting or PYTHONPATH, plus ``settings``."""
    drop = ("KVLINK_", "AZURE_DEVOPS_PAT", "AzureWebJobsStorage", "PYTHONPATH")
    env = {key: value for key, value in os.environ.items() if not key.startswith(drop)}
    return {**env, **dict.fromkeys(HOSTING, ""), **settings}


def wheel_metadata(wheel: Path) -> tuple[list[str], str, str]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        return names, archive.read(info).decode(), archive.read(points).decode()


def test_wheel_holds_kvlink_core_and_its_template_only(wheel):
    """The wheel carries kvlink_core with the report template, the `kvlink` command and Python >= 3.11,
    and none of the checkout's tests, stand-ins, benchmarks or function app."""
    names, metadata, entry_points = wheel_metadata(wheel)
    packaged = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packaged == {"kvlink_core"}
    assert "kvlink_core/templates/report.html.j2" in names
    assert "kvlink_core/cli.py" in names and "kvlink_core/__main__.py" in names
    assert "Requires-Python: >=3.11" in metadata.splitlines()
    assert re.search(r"^kvlink = kvlink_core\.cli:main$", entry_points, flags=re.MULTILINE)


def test_dependency_lists_agree(wheel):
    """The package depends on exactly requirements.txt (what the Functions app deploys from), pins
    included, less the Functions host's library and worker runtime -- which kvlink_core never imports."""
    deployed = requirement_lines(ROOT / "requirements.txt")
    assert {requirement_name(line) for line in deployed} >= FUNCTIONS_ONLY
    expected = sorted(line for line in deployed if requirement_name(line) not in FUNCTIONS_ONLY)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(declared) == expected
    _, metadata, _ = wheel_metadata(wheel)
    required = sorted(
        line.removeprefix("Requires-Dist: ") for line in metadata.splitlines() if line.startswith("Requires-Dist: ")
    )
    assert required == expected
    for module in (ROOT / "kvlink_core").glob("*.py"):
        assert not re.search(r"^\s*(import|from) azure\.functions\b", module.read_text(), flags=re.MULTILINE), module


def test_build_tools_are_pinned_for_an_offline_build():
    """The suite builds without build isolation, so requirements-dev.txt installs a setuptools that
    reads pyproject.toml's [project] table and builds wheels itself (setuptools >= 70.1)."""
    pins = dict(line.split("==") for line in requirement_lines(ROOT / "requirements-dev.txt") if "==" in line)
    major, minor = (int(part) for part in pins["setuptools"].split(".")[:2])
    assert (major, minor) >= (70, 1)


def test_installed_command_help_and_version(venv, wheel, tmp_path):
    """`kvlink --help` names the installed command and the exit codes; `kvlink --version` prints the
    version GET /api/health reports, which is also the wheel's."""
    kvlink = venv / "bin" / "kvlink"
    helped = run(kvlink, "--help", cwd=tmp_path, env=clean_env())
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: kvlink ") and "exit codes:" in helped.stdout
    for verb in ("link", "sync", "links", "unlink", "audit", "demo"):
        assert verb in helped.stdout

    health_version = api.health().body["version"]
    assert wheel.name.startswith(f"kvlink-{health_version}-")
    version = run(kvlink, "--version", cwd=tmp_path, env=clean_env())
    assert (version.returncode, version.stdout) == (0, f"kvlink {health_version}\n")
    module = run(sys.executable, "-m", "kvlink_core", "--version", cwd=ROOT, env=clean_env())
    assert (module.returncode, module.stdout) == (0, version.stdout)

    # The command runs the installed package, not a checkout found on a path.
    where = run(
        venv / "bin" / "python", "-c", "import kvlink_core; print(kvlink_core.__file__)", cwd=tmp_path, env=clean_env()
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr


@pytest.mark.integration
def test_installed_command_runs_the_verbs_with_the_modules_exit_codes(venv, estate, tmp_path):
    """Against the stand-ins, from outside the checkout: link, links, a drifted audit (--dry-run
    --json --html: the template is in the package), a usage error and missing settings give the
    same exit codes and output as `python -m kvlink_core` run from the checkout."""
    kvlink = venv / "bin" / "kvlink"
    env = clean_env(**estate.env)

    def both(*argv: str, settings: dict[str, str] = env) -> tuple[subprocess.CompletedProcess[str], ...]:
        installed = run(kvlink, *argv, cwd=tmp_path, env=settings)
        module = run(sys.executable, "-m", "kvlink_core", *argv, cwd=ROOT, env=settings)
        assert installed.returncode == module.returncode, (installed.stderr, module.stderr)
        return installed, module

    estate.kv.set_secret(estate.vault, "db-password")
    linked = run(kvlink, *estate.link_argv(), cwd=tmp_path, env=env)
    assert linked.returncode == 0 and "created group 'payments-kv' with 1 name" in linked.stdout, linked.stderr
    estate.kv.set_secret(estate.vault, "api-key")  # drift: a secret the group does not map yet

    installed, module = both("links")
    assert installed.returncode == 0 and installed.stdout == module.stdout
    assert f"{estate.org}/{estate.project} group 'payments-kv'" in installed.stdout

    page = tmp_path / "report.html"
    installed, module = both("audit", "--dry-run", "--json", "--html", str(page))
    assert installed.returncode == 2, installed.stderr  # changes found, nothing written
    found, expected = json.loads(installed.stdout), json.loads(module.stdout)
    assert found["findings"] == expected["findings"]
    assert [(f["kind"], f["secret"]) for f in found["findings"]] == [("secret-missing", "api-key")]
    assert found["dryRun"] is True and found["reportStored"] is False
    assert "payments-kv" in page.read_text(encoding="utf-8")
    # The process closes what it opened: aiohttp complains on stderr at exit about a session left open.
    for run_ in (installed, module):
        assert "Unclosed" not in run_.stderr, run_.stderr

    installed, _ = both("sync", "--vault", estate.vault, "--organization", estate.org)
    assert installed.returncode == 64 and installed.stderr.startswith("usage: kvlink sync")

    unset = {key: value for key, value in env.items() if key != "KVLINK_DEVOPS_ORGS"}
    installed, _ = both("links", settings=unset)
    assert installed.returncode == 1 and "KVLINK_DEVOPS_ORGS" in installed.stderr
