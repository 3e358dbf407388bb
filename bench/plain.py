"""The plain concurrent audit: what a person would write with a thread pool per service, nothing more.

Nothing here comes from ``kvlink_core``. The script makes exactly the minimum calls of an audit
(no findings, no registry, no leases): it lists the organization's projects, each project's
variable groups (at most ``DEVOPS_LIMIT`` Azure DevOps calls at once), each Key Vault group's
vault once (at most ``KV_LIMIT`` listings at once, the Key Vault SDK's ``list_properties_of_secrets``),
and, as each vault's listing comes in, re-reads every drifted group of that vault and PUTs it back.
It is the reference every run of ``bench.audit_scale`` measures kvlink against, at the same limits.

The rules are :mod:`bench.baseline`'s (DESIGN.md's, written out plainly).
"""

from __future__ import annotations

import os
import threading
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

import httpx

from bench.baseline import _pages, _rewrite, _wanted
from bench.lab import CountingTransport

# The same limits kvlink runs with in the benchmark (KVLINK_VAULT_CONCURRENCY, KVLINK_DEVOPS_CONCURRENCY).
KV_LIMIT = 32
DEVOPS_LIMIT = 4


def run(*, managed: set[tuple[str, int]], counter: Counter[str]) -> dict[str, Any]:
    """Audit every organization in KVLINK_DEVOPS_ORGS with the two pools; returns what it wrote."""
    from azure.keyvault.secrets import SecretClient

    from bench.estate import TOKEN
    from standins.keyvault import static_credential

    base = os.environ["KVLINK_DEVOPS_URL"].rstrip("/")
    vault_url = os.environ["KVLINK_VAULT_URL"]
    ca = os.environ["KVLINK_CA_BUNDLE"]
    credential = static_credential(TOKEN)
    count_lock = threading.Lock()

    def on_kv(response: Any) -> None:
        if response.http_response.status_code != 401:  # the SDK's one-time auth challenge
            with count_lock:
                counter[f"keyvault {response.http_request.method}"] += 1

    def list_vault(vault: str) -> dict[str, Any]:
        with SecretClient(
            vault_url.format(vault=vault),
            credential,
            connection_verify=ca,
            verify_challenge_resource=False,  # the stand-in is not on *.vault.azure.net
            raw_response_hook=on_kv,
        ) as client:
            return {
                p.name.lower(): p for p in client.list_properties_of_secrets() if p.enabled and not p.managed and p.name
            }

    class Counting(CountingTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            with count_lock:
                counter[f"devops {request.method}"] += 1
            return httpx.HTTPTransport.handle_request(self, request)

    http = httpx.Client(auth=("", os.environ["AZURE_DEVOPS_PAT"]), transport=Counting(counter, verify=ca), timeout=60)

    def list_groups(org: str, project: str) -> list[dict[str, Any]]:
        url = f"{base}/{org}/{project}/_apis/distributedtask/variablegroups"
        return list(_pages(http, url, {"queryOrder": "IdAscending"}))

    def rewrite(org: str, project: str, group_id: int, usable: dict[str, Any], is_managed: bool) -> None:
        _rewrite(http, base, org, project, group_id, usable=usable, is_managed=is_managed)

    kv_pool = ThreadPoolExecutor(KV_LIMIT)
    devops_pool = ThreadPoolExecutor(DEVOPS_LIMIT)
    listings: dict[str, Future[dict[str, Any]]] = {}
    waiting: dict[str, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)  # vault -> its groups
    writes: list[Future[None]] = []
    scopes = [
        (org, project["name"])
        for org in os.environ["KVLINK_DEVOPS_ORGS"].split(",")
        for project in _pages(http, f"{base}/{org}/_apis/projects", {})
    ]
    groups_by_future = {devops_pool.submit(list_groups, *scope): scope for scope in scopes}
    try:
        for listed in as_completed(groups_by_future):
            org, project = groups_by_future[listed]
            for group in listed.result():
                vault = ((group.get("providerData") or {}).get("vault") or "").lower()
                if group.get("type") != "AzureKeyVault" or not vault:
                    continue
                if vault not in listings:
                    listings[vault] = kv_pool.submit(list_vault, vault)
                waiting[vault].append((org, project, group))
        vault_of = {future: vault for vault, future in listings.items()}
        for done in as_completed(vault_of):
            vault = vault_of[done]
            usable = done.result()
            for org, project, group in waiting.pop(vault):
                is_managed = (org.lower(), int(group["id"])) in managed
                variables = group.get("variables") or {}
                if set(_wanted(variables, usable, is_managed)) != set(variables):
                    writes.append(devops_pool.submit(rewrite, org, project, int(group["id"]), usable, is_managed))
        for write in writes:
            write.result()
    finally:
        kv_pool.shutdown(wait=True, cancel_futures=True)
        devops_pool.shutdown(wait=True, cancel_futures=True)
        http.close()
    return {"written": len(writes), "audited": None}
