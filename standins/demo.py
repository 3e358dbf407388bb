"""The local end-to-end demo: real clients, real trigger objects, local stand-ins.

Starts the Key Vault and Azure DevOps stand-ins (HTTPS, throwaway CA) and Azurite,
seeds a vault and a linked variable group, changes the vault, delivers the
resulting Event Grid events through ``on_secret_event``, and checks the group; then a
second group breaks and the audit names the two pipelines it stops.
Nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .azurite import Azurite
from .devops import DevOpsStandIn
from .events import as_trigger_input, secret_event
from .keyvault import KeyVaultStandIn
from .logs import envelopes
from .stack import local_stack

ORG, PROJECT, VAULT, GROUP = "demo-org", "Payments", "kv-demo", "payments-kv"
BATCH_GROUP = "payments-batch-kv"  # the group that breaks in step 7
PIPELINES = ("payments-deploy", "payments-nightly")  # the two pipelines authorized to use it


class _Out:
    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def step(self, n: int, text: str) -> None:
        self.write(f"\n{n}. {text}")

    def line(self, text: str = "") -> None:
        self.write(f"   {text}" if text else "")


def run(write: Callable[[str], None] = print, *, report_path: Path | None = None) -> int:
    """Run the demo; returns the process exit code (0 when the group ends up right).

    The audit's report page is written to ``report_path`` (default: ./kvlink-report.html).
    """
    out = _Out(write)
    page = (report_path or Path("kvlink-report.html")).resolve()
    with tempfile.TemporaryDirectory(prefix="kvlink-demo-") as tmp, local_stack(Path(tmp)) as stack:
        kv, ado, azurite = stack.kv, stack.ado, stack.azurite
        env = stack.settings([ORG], [VAULT])
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            return _scenario(out, kv, ado, azurite, page)
        finally:
            from kvlink_core import app

            app.reset()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _scenario(out: _Out, kv: KeyVaultStandIn, ado: DevOpsStandIn, azurite: Azurite, page: Path) -> int:
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    import function_app

    out.write("kvlink demo: Key Vault -> Azure DevOps variable groups, against local stand-ins")
    out.line(f"Key Vault stand-in     {kv.vault_url_template}  (HTTPS, throwaway CA)")
    out.line(f"Azure DevOps stand-in  {ado.base_url}/{ORG}")
    out.line(f"Table storage          Azurite on 127.0.0.1:{azurite.port}")

    kv.set_secret(VAULT, "db-password", content_type="text/plain")
    kv.set_secret(VAULT, "api-key")
    ado.add_project(ORG, PROJECT)
    ado.add_service_endpoint(ORG, PROJECT, "kv-demo-connection")
    link_body = {
        "organization": ORG,
        "project": PROJECT,
        "group": GROUP,
        "vault": VAULT,
        "serviceConnection": "kv-demo-connection",
        "exclude": ["legacy-*"],
    }
    out.step(1, f"Vault {VAULT} holds 2 secrets. Linking a new group through the API:")
    out.line(f"POST /api/links {json.dumps(link_body)}")
    response = function_app.links(_post("links", link_body))
    answer = json.loads(response.get_body())
    out.line(f"-> {response.status_code}: {answer.get('message') or answer}")
    if response.status_code != 201:
        return 1
    group_id = int(answer["link"]["groupId"])
    out.line(f"group '{GROUP}' (id {group_id}) created in {ORG}/{PROJECT}, type AzureKeyVault")
    out.line(f"group now: {_names(ado, group_id)}")

    changes: list[tuple[str, str, dict[str, Any]]] = [
        ("storage-key", "new secret", {}),
        ("smtp-password", "new secret", {"content_type": "text/plain"}),
        ("db-password", "new version of a mapped secret", {}),
        ("legacy-token", "new secret the policy excludes", {}),
        ("tls-cert", "certificate-backed secret", {"managed": True}),
        ("old-password", "new secret, created disabled", {"enabled": False}),
    ]
    out.step(2, "Changes in the vault, each announced by Event Grid (SecretNewVersionCreated):")
    events = []
    for name, what, attrs in changes:
        version = kv.set_secret(VAULT, name, **attrs)
        events.append((name, what, secret_event(VAULT, name, version)))
        out.line(f"{name:<15} {what}")
    events.append(("storage-key", "the same event again (Event Grid delivers at least once)", events[0][2]))

    out.step(3, "Delivering the events through the on_secret_event function:")
    kv.reset_calls()
    ado.reset_calls()
    for name, _what, body in events:
        before = set(_names(ado, group_id))
        function_app.on_secret_event(as_trigger_input(body))
        after = set(_names(ado, group_id))
        delta = [f"+{n}" for n in sorted(after - before)] + [f"-{n}" for n in sorted(before - after)]
        out.line(f"{name:<15} -> {' '.join(delta) or 'no change'}")

    after_events = _names(ado, group_id)
    listings = sum(1 for c in kv.calls if c.status == 200)  # not the one-time 401 auth challenge
    out.step(4, f"group after the events: {after_events}")
    out.line(
        f"calls for {len(events)} events: Key Vault {listings} version listings; "
        f"Azure DevOps {ado.count('GET')} group reads, {ado.count('PUT')} writes; "
        f"secret values requested: {len(kv.value_requests)}"
    )

    out.step(5, "Changes Event Grid never announces, seen only in the vault's audit log:")
    kv.drain_audit_log()  # the history so far was announced by Event Grid
    kv.delete_secret(VAULT, "smtp-password")
    kv.update_secret(VAULT, "api-key", enabled=False)
    kv.log_failed(VAULT, "SecretDelete", "db-password", 403)
    out.line("smtp-password   deleted")
    out.line("api-key         disabled")
    out.line("db-password     delete attempt refused (403; the log still says resultType Success)")
    records = kv.drain_audit_log()
    bodies = envelopes(records, per_message=2)
    out.line(f"-> {len(records)} AuditEvent records in {len(bodies)} Event Hub messages, through on_vault_log")
    before = set(_names(ado, group_id))
    function_app.on_vault_log([func.EventHubEvent(body=body) for body in bodies])
    after_log = _names(ado, group_id)
    delta = [f"-{n}" for n in sorted(before - set(after_log))] + [f"+{n}" for n in sorted(set(after_log) - before)]
    out.line(f"group: {' '.join(delta) or 'no change'}")

    out.step(6, "Someone edits the group by hand; then the nightly audit runs (nightly_audit, timer trigger):")
    ado.edit_group(ORG, group_id, _hand_edit)
    out.line("hand edit: maps 'retired-key' (no such secret in the vault) and drops 'storage-key'")
    function_app.nightly_audit(TimerRequest(past_due=False))
    report = json.loads(function_app.audit_latest(_get("audit/latest")).get_body())
    for finding in report["findings"]:
        state = "repaired" if finding["repaired"] else "open"
        out.line(f"{finding['severity']:<8} {finding['kind']:<16} {finding['secret'] or '':<14} {state}")
    names = report["names"]
    out.line(
        f"audit: {report['groups']['changed']} group changed (+{names['added']} -{names['removed']}), "
        f"{report['vaults']} vault listed, {report['durationSeconds']}s; GET /api/audit/latest serves it"
    )
    response = function_app.report(_get("report"))
    if response.status_code != 200:
        out.line(f"GET /api/report -> {response.status_code}: {response.get_body().decode()}")
        return 1
    page.write_bytes(response.get_body())
    out.line(f"report page (GET /api/report): {page}")

    if not _blast_radius(out, ado, page):
        return 1

    final = _names(ado, group_id)
    out.step(8, f"group at the end: {final}")
    expected = ["db-password", "storage-key"]
    if after_events != ["api-key", "db-password", "smtp-password", "storage-key"] or final != expected:
        out.write(f"\nFAILED: expected {expected} at the end and no value reads")
        return 1
    if kv.value_requests:
        out.write("\nFAILED: a secret value was requested")
        return 1
    out.write(
        "\nOK: new secrets reached the group; rotations, excluded, certificate-backed and disabled "
        "secrets did not;\n    the deleted and the disabled secret left it, the refused delete changed "
        "nothing, and the audit undid the bad hand edit."
    )
    return 0


def _blast_radius(out: _Out, ado: DevOpsStandIn, page: Path) -> bool:
    """A second group breaks (its service connection is no longer ready): the audit names its pipelines."""
    from azure.functions.timer import TimerRequest

    import function_app

    out.step(7, "Another team's group breaks; the next audit names the pipelines it stops:")
    broken = ado.add_service_endpoint(ORG, PROJECT, "kv-batch-connection", is_ready=False)
    batch = ado.add_group(ORG, PROJECT, BATCH_GROUP, vault=VAULT, service_endpoint_id=broken, variables=["db-password"])
    pipelines = [ado.add_pipeline(ORG, PROJECT, name, folder="\\payments") for name in PIPELINES]
    ado.authorize_pipelines(ORG, PROJECT, batch, pipelines)
    out.line(f"group '{BATCH_GROUP}' maps {VAULT} through 'kv-batch-connection', whose authorization failed")
    out.line(f"pipelines authorized to use it: {', '.join(PIPELINES)}")
    function_app.nightly_audit(TimerRequest(past_due=False))
    report = json.loads(function_app.audit_latest(_get("audit/latest")).get_body())
    shown = [f for f in report["findings"] if f.get("pipelines") and not f["repaired"]]
    for finding in shown:
        out.line(
            f"{finding['severity']:<8} {finding['kind']} in {finding['group']}: "
            f"stops {len(finding['pipelines'])} pipelines"
        )
        for pipeline in finding["pipelines"]:
            out.line(f"         {pipeline['folder']}\\{pipeline['name']}")
    out.line(
        f"audit: {report['brokenGroups']} broken group, {report['pipelinesAtRisk']} pipelines at risk; "
        "the report page lists them under 'Pipelines at risk'"
    )
    response = function_app.report(_get("report"))
    if response.status_code != 200 or [p["name"] for f in shown for p in f["pipelines"]] != list(PIPELINES):
        out.write(f"\nFAILED: expected the audit to name {list(PIPELINES)}")
        return False
    page.write_bytes(response.get_body())
    return True


def _hand_edit(group: dict[str, Any]) -> None:
    group["variables"].pop("storage-key", None)
    group["variables"]["retired-key"] = {"isSecret": True, "value": None, "enabled": True}


def _get(route: str) -> Any:
    import azure.functions as func

    return func.HttpRequest(method="GET", url=f"http://localhost:7071/api/{route}", body=b"")


def _post(route: str, body: dict[str, Any]) -> Any:
    import azure.functions as func

    return func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/{route}",
        headers={"Content-Type": "application/json"},
        body=json.dumps(body).encode(),
    )


def _names(ado: DevOpsStandIn, group_id: int) -> list[str]:
    return sorted(ado.variable_names(ORG, group_id), key=str.lower)
