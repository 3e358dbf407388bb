"""pipelines/kvlink-audit.yml, the scheduled audit for Azure Pipelines: its structure, and its audit
step's script run with bash around a stand-in `kvlink`. It was never run in Azure Pipelines; the rules
it follows are cited beside each check (Microsoft Learn pages, read in MicrosoftDocs/azure-devops-docs
and MicrosoftDocs/azure-devops-yaml-schema)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from kvlink_core.devops import _Auth
from kvlink_core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipelines" / "kvlink-audit.yml"
SETTINGS_SOURCE = (ROOT / "kvlink_core" / "settings.py").read_text()
KVLINK_SETTINGS = set(re.findall(r'"((?:KVLINK|AZURE)_[A-Za-z_]+|AzureWebJobsStorage[A-Za-z_]*)"', SETTINGS_SOURCE))
REPORT_DIR = "kvlink-report"


@pytest.fixture(scope="module")
def pipeline() -> dict:
    loaded = yaml.safe_load(PIPELINE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def steps(pipeline: dict) -> list[dict]:
    (job,) = pipeline["jobs"]
    return job["steps"]


def task(pipeline: dict, name: str) -> dict:
    (found,) = [step for step in steps(pipeline) if step.get("task") == name]
    return found


def test_runs_nightly_whatever_was_pushed(pipeline):
    """One schedule, 02:00 UTC on main, `always: true` (without it a scheduled run is skipped when
    nothing changed since the last successful one); no CI or PR trigger. Source: "Configure schedules
    for pipelines" (docs/pipelines/process/scheduled-triggers.md): schedules.cron/branches/always."""
    (schedule,) = pipeline["schedules"]
    assert schedule["cron"] == "0 2 * * *"
    assert schedule["always"] is True
    assert schedule["branches"] == {"include": ["main"]}
    assert pipeline["trigger"] == "none" and pipeline["pr"] == "none"
    (job,) = pipeline["jobs"]
    assert 0 < job["timeoutInMinutes"] <= 60


def test_parameters_have_non_empty_defaults(pipeline):
    """A scheduled run takes every parameter's default, and an empty string default makes the parameter
    required on a manual run (MicrosoftDocs/azure-devops-docs issue 7865): so each default is non-empty."""
    for parameter in pipeline["parameters"]:
        assert parameter["type"] == "string"
        assert parameter["default"] != "", parameter["name"]


def test_steps_install_kvlink_then_audit_then_publish_the_report(pipeline):
    """Install from the repository, audit inside AzureCLI@2, publish the report even when the audit
    failed. Inputs as the AzureCLI@2 and PublishPipelineArtifact@1 task references name them
    (MicrosoftDocs/azure-devops-yaml-schema task-reference/azure-cli-v2.md, publish-pipeline-artifact-v1.md)."""
    names = [
        step.get("task") or next(iter(key for key in step if key in ("bash", "checkout"))) for step in steps(pipeline)
    ]
    assert names == ["checkout", "UsePythonVersion@0", "bash", "AzureCLI@2", "PublishPipelineArtifact@1"]

    install = steps(pipeline)[2]["bash"]
    assert "pip install" in install and '"$BUILD_SOURCESDIRECTORY"' in install and "--timeout" in install
    assert "##vso[task.prependpath]$AGENT_TEMPDIRECTORY/kvlink/bin" in install  # `kvlink` on PATH for the next steps

    audit = task(pipeline, "AzureCLI@2")
    inputs = audit["inputs"]
    assert inputs["azureSubscription"] == "${{ parameters.serviceConnection }}"
    assert (inputs["scriptType"], inputs["scriptLocation"]) == ("bash", "inlineScript")
    assert inputs["failOnStandardError"] is False  # kvlink's stderr carries progress, not failure
    assert "addSpnToEnvironment" not in inputs  # kvlink reaches Azure through `az login` (AzureCliCredential)
    assert "kvlink audit --dry-run --json --html" in inputs["inlineScript"]

    publish = task(pipeline, "PublishPipelineArtifact@1")
    assert publish["condition"] == "always()"
    assert publish["inputs"] == {
        "targetPath": f"$(Build.ArtifactStagingDirectory)/{REPORT_DIR}",
        "artifact": REPORT_DIR,
        "publishLocation": "pipeline",
    }
    # The script writes where the publish step reads: Build.ArtifactStagingDirectory as the agent
    # exports it to scripts (BUILD_ARTIFACTSTAGINGDIRECTORY).
    assert f'out="$BUILD_ARTIFACTSTAGINGDIRECTORY/{REPORT_DIR}"' in inputs["inlineScript"]


def test_settings_reach_kvlink_by_the_names_it_reads(pipeline):
    """Every variable the audit step sets is a setting kvlink reads (a misspelt one would be silently
    ignored), and the job's token is mapped explicitly: secret variables such as System.AccessToken
    reach a script only through `env` ("Logging commands", SetVariable: secrets are not passed as
    environment variables)."""
    env = task(pipeline, "AzureCLI@2")["env"]
    assert set(env) <= KVLINK_SETTINGS, set(env) - KVLINK_SETTINGS
    assert {"KVLINK_DEVOPS_ORGS", "KVLINK_ALLOWED_VAULTS", "AZURE_DEVOPS_PAT"} <= set(env)
    assert env["AZURE_DEVOPS_PAT"] == "$(System.AccessToken)"


def test_the_job_token_is_sent_as_the_azure_devops_cli_sends_it():
    """The token mapped to AZURE_DEVOPS_PAT goes out as Basic auth with an empty user name: the header
    the Azure DevOps CLI builds from AZURE_DEVOPS_EXT_PAT (Azure/azure-devops-cli-extension
    azure-devops/azext_devops/dev/common/services.py, _get_credentials: BasicAuthentication('', pat)),
    into which Microsoft's "Azure DevOps CLI in Azure Pipeline YAML" maps $(System.AccessToken)."""
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.job-token-stand-in.c2lnbmF0dXJl"  # shaped like a job JWT
    settings = Settings.from_env(
        {"KVLINK_DEVOPS_ORGS": "contoso", "KVLINK_ALLOWED_VAULTS": "*", "AZURE_DEVOPS_PAT": token}
    )
    assert settings.devops_pat == token
    request = next(_Auth(settings.devops_pat, None).auth_flow(httpx.Request("GET", "https://dev.azure.com/contoso")))
    scheme, _, credential = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic" and base64.b64decode(credential).decode() == f":{token}"


# -- the audit step's script, run with bash ----------------------------------------------------------


FAKE_KVLINK = """#!/bin/bash
# Stands in for kvlink: records how it was called, writes what kvlink writes, exits with FAKE_CODE.
printf '%s\\n' "$@" > "$FAKE_LOG/argv"
printf '%s\\n' "${AZURE_DEVOPS_PAT:-}" > "$FAKE_LOG/pat"
echo '<html>report</html>' > "$5"
echo '{"driftRemains": true}'
echo "report page: $5" >&2
exit "$FAKE_CODE"
"""

FAKE_NPX = """#!/bin/bash
# Stands in for npx: records how it was called, then fails the way a missing package would.
printf '%s\\n' "$@" > "$FAKE_LOG/npx"
echo "npm ERR! could not fetch azurite" >&2
exit 1
"""


@pytest.fixture
def agent(tmp_path: Path) -> dict[str, Path]:
    """A stand-in agent: a bin folder on PATH with `kvlink` and `npx`, and the folders the agent names."""
    places = {name: tmp_path / name for name in ("bin", "staging", "temp", "log")}
    for place in places.values():
        place.mkdir()
    for name, text in (("kvlink", FAKE_KVLINK), ("npx", FAKE_NPX)):
        (places["bin"] / name).write_text(text)
        (places["bin"] / name).chmod(0o755)
    return places


def run_audit_step(
    pipeline: dict, agent: dict[str, Path], *, code: int, table_uri: str
) -> subprocess.CompletedProcess[str]:
    script = task(pipeline, "AzureCLI@2")["inputs"]["inlineScript"]
    # Run as the agent would: it replaces $(Variable) macros first, so the script must hold none.
    assert not re.search(r"\$\([A-Za-z_][\w.]*\)", script) and "${{" not in script
    env = {
        "PATH": f"{agent['bin']}:/usr/bin:/bin",
        "BUILD_ARTIFACTSTAGINGDIRECTORY": str(agent["staging"]),
        "AGENT_TEMPDIRECTORY": str(agent["temp"]),
        "AzureWebJobsStorage__tableServiceUri": table_uri,
        "AZURE_DEVOPS_PAT": "job-token",
        "FAKE_LOG": str(agent["log"]),
        "FAKE_CODE": str(code),
    }
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False)


LINKED = "https://stkvlink.table.core.windows.net"


def issues(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("##vso[")]


def test_exit_0_passes_quietly(pipeline, agent):
    done = run_audit_step(pipeline, agent, code=0, table_uri=LINKED)
    assert done.returncode == 0, done.stderr
    assert issues(done.stdout) == []
    report = agent["staging"] / REPORT_DIR
    assert (agent["log"] / "argv").read_text().splitlines() == [
        "audit", "--dry-run", "--json", "--html", str(report / "kvlink-report.html"),
    ]  # fmt: skip
    assert (report / "kvlink-audit.json").read_text() == '{"driftRemains": true}\n'
    assert (report / "kvlink-report.html").exists()
    assert (agent["log"] / "pat").read_text() == "job-token\n"
    assert not (agent["log"] / "npx").exists()  # a deployment's registry: no Azurite


def test_exit_2_warns_and_succeeds_with_issues(pipeline, agent):
    """Drift is a warning and a partially succeeded run ("Logging commands": LogIssue type=warning;
    Complete result=SucceededWithIssues), not a failure; the script then exits 0."""
    done = run_audit_step(pipeline, agent, code=2, table_uri=LINKED)
    assert done.returncode == 0, done.stderr
    logged = issues(done.stdout)
    assert len(logged) == 2
    assert logged[0].startswith("##vso[task.logissue type=warning]") and "exit 2" in logged[0]
    assert logged[1].startswith("##vso[task.complete result=SucceededWithIssues;]")


@pytest.mark.parametrize("code", [1, 64])
def test_exit_1_and_usage_errors_fail_the_step(pipeline, agent, code):
    """Could not look (1) and a usage error (64) fail the step with an error issue and kvlink's code."""
    done = run_audit_step(pipeline, agent, code=code, table_uri=LINKED)
    assert done.returncode == code
    (logged,) = issues(done.stdout)
    assert logged.startswith("##vso[task.logissue type=error]") and f"exit {code}" in logged


def test_without_a_deployment_an_azurite_that_does_not_start_fails_fast(pipeline, agent):
    """No table endpoint (the parameter's blank default): the step starts Azurite on Table storage's
    development port for a throwaway registry; when Azurite dies, the step says so and fails, and kvlink
    never runs against no storage -- even when another process answers on Azurite's port."""
    done = run_audit_step(pipeline, agent, code=0, table_uri=" ")
    assert done.returncode == 1
    (logged,) = issues(done.stdout)
    assert logged.startswith("##vso[task.logissue type=error]Azurite")
    npx = (agent["log"] / "npx").read_text().splitlines()
    assert "--package=azurite@3.35.0" in npx and "azurite-table" in npx
    assert npx[npx.index("--tablePort") + 1] == "10002" and "--inMemoryPersistence" in npx
    assert not (agent["log"] / "argv").exists()


def test_a_foreign_listener_on_azurites_port_is_not_taken_for_azurite(pipeline, agent):
    """Something else answers on 127.0.0.1:10002 (here the test itself, or whatever holds the port) while
    the step's own Azurite dies: the step must fail, not run kvlink against that listener."""
    foreign = socket.socket()
    try:
        foreign.bind(("127.0.0.1", 10002))
        foreign.listen()
    except OSError:  # another process holds the port: the same case
        pass
    try:
        done = run_audit_step(pipeline, agent, code=0, table_uri=" ")
    finally:
        foreign.close()
    assert done.returncode == 1
    (logged,) = issues(done.stdout)
    assert logged.startswith("##vso[task.logissue type=error]Azurite")
    assert not (agent["log"] / "argv").exists()


def test_azurite_version_is_the_one_the_tests_use(pipeline):
    """The pipeline's Azurite is the version tools/package.json pins for the tests."""

    pinned = json.loads((ROOT / "tools" / "package.json").read_text())["dependencies"]["azurite"]
    assert f"--package=azurite@{pinned}" in task(pipeline, "AzureCLI@2")["inputs"]["inlineScript"]


def test_shellcheck_is_clean_on_the_pipeline_scripts(pipeline, tmp_path):
    """The two bash scripts pass shellcheck, like every other script in the repository."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make test installs it: scripts/install-shellcheck.sh)")
    paths = []
    for name, text in (
        ("install.sh", steps(pipeline)[2]["bash"]),
        ("audit.sh", task(pipeline, "AzureCLI@2")["inputs"]["inlineScript"]),
    ):
        path = tmp_path / name
        path.write_text("#!/bin/bash\n" + text)
        paths.append(str(path))
    done = subprocess.run(["shellcheck", *paths], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stdout


@pytest.mark.integration
def test_without_a_deployment_the_real_audit_runs_on_a_throwaway_azurite(pipeline, agent, estate):
    """The zero-infrastructure path end to end, minus Azure Pipelines: the step starts Azurite (npx stands
    in to run the tests' own copy, same version), the real kvlink audits the stand-ins with the
    default UseDevelopmentStorage=true, finds the drift, the step warns, and Azurite ends with the step."""
    import sys

    from standins.azurite import azurite_binary

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 10002)) == 0:
            pytest.skip("something listens on 127.0.0.1:10002 here, where the step expects its own Azurite")
    (agent["bin"] / "npx").write_text(
        "#!/bin/bash\n"
        "# npx as the step calls it, running the tests' own Azurite instead of fetching one\n"
        'args=(); for a in "$@"; do case $a in --yes|--package=*|azurite-table) ;; *) args+=("$a");; esac; done\n'
        f'exec {azurite_binary()} "${{args[@]}}"\n'
    )
    (agent["bin"] / "kvlink").write_text(f'#!/bin/bash\nexec {sys.executable} -m kvlink_core "$@"\n')
    estate.kv.set_secret(estate.vault, "db-password")
    estate.group("payments-kv", ["db-password", "retired-key"])  # maps a secret the vault does not have

    script = task(pipeline, "AzureCLI@2")["inputs"]["inlineScript"]
    settings = {key: value for key, value in estate.env.items() if key != "AzureWebJobsStorage"}
    env = {
        **settings,
        "PATH": f"{agent['bin']}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "BUILD_ARTIFACTSTAGINGDIRECTORY": str(agent["staging"]),
        "AGENT_TEMPDIRECTORY": str(agent["temp"]),
        "AzureWebJobsStorage__tableServiceUri": " ",
        **dict.fromkeys(("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME", "WEBSITE_SKU", "CONTAINER_NAME"), ""),
    }
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + (agent["temp"] / "azurite.log").read_text()
    assert [line.split("]")[0] for line in issues(done.stdout)] == [
        "##vso[task.logissue type=warning",
        "##vso[task.complete result=SucceededWithIssues;",
    ]
    report = json.loads((agent["staging"] / REPORT_DIR / "kvlink-audit.json").read_text())
    assert [(f["kind"], f["group"], f["secret"]) for f in report["findings"]] == [
        ("secret-deleted", "payments-kv", "retired-key")
    ]
    assert report["groups"]["discovered"] == 1  # nothing linked in a throwaway registry
    assert "payments-kv" in (agent["staging"] / REPORT_DIR / "kvlink-report.html").read_text()
    with socket.socket() as probe:  # the step's trap ended Azurite
        assert probe.connect_ex(("127.0.0.1", 10002)) != 0
