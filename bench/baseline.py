"""The audit's baselines: what a person would write by hand with the Key Vault SDK and the REST API.

Nothing here comes from ``kvlink_core``: no planner, no client, no registry. The script is
given the groups it manages (a list in its own configuration -- here the estate's record of
which groups are linked) and, one thing at a time, for every project of every organization:
lists the variable groups, lists each Key Vault group's vault (``list_properties_of_secrets``),
compares names, and when they differ reads the group again (the PUT has no ETag: writing
from the listing would revert whatever a person changed since) and PUTs it back.

* ``cached=False``: the straightforward audit, which lists a group's vault for each group.
* ``cached=True``: the same audit remembering each vault's listing, so each vault is listed once.

The rules are DESIGN.md's, written out plainly: a managed group maps every enabled secret of
its vault that is not certificate-backed (names it already maps are kept while they are
such a secret); any other Key Vault group only loses names whose secret is gone or disabled.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import httpx

from bench.lab import CountingTransport

API = {"api-version": "7.1"}


def _pages(http: httpx.Client, url: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Follow x-ms-continuationtoken until the service sends none."""
    while True:
        response = http.get(url, params={**API, **params})
        response.raise_for_status()
        yield from response.json()["value"]
        token = response.headers.get("x-ms-continuationtoken")
        if not token:
            return
        params = {**params, "continuationToken": token}


def _variable(secret: Any) -> dict[str, Any]:
    expires = secret.expires_on.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if secret.expires_on else None
    return {
        "isSecret": True,
        "value": None,
        "enabled": True,
        "contentType": secret.content_type or "",
        "expires": expires,
    }


def _wanted(variables: dict[str, Any], usable: dict[str, Any], managed: bool) -> dict[str, Any]:
    """The group's variables as they should be: keep names of usable secrets; a managed group gets all of them."""
    kept = {name: value for name, value in variables.items() if name.lower() in usable}
    if managed:
        have = {name.lower() for name in kept}
        kept.update({s.name: _variable(s) for key, s in usable.items() if key not in have})
    return kept


def run(
    *, cached: bool, managed: set[tuple[str, int]], counter: Counter[str], limit: int | None = None
) -> dict[str, Any]:
    """Audit every organization in KVLINK_DEVOPS_ORGS; ``limit`` stops after that many Key Vault groups."""
    from azure.keyvault.secrets import SecretClient

    from bench.estate import TOKEN
    from standins.keyvault import static_credential  # the stand-in's bearer token, as a credential

    base = os.environ["KVLINK_DEVOPS_URL"].rstrip("/")
    vault_url = os.environ["KVLINK_VAULT_URL"]
    ca = os.environ["KVLINK_CA_BUNDLE"]
    credential = static_credential(TOKEN)

    def on_kv(response: Any) -> None:
        if response.http_response.status_code != 401:  # the SDK's one-time auth challenge
            counter[f"keyvault {response.http_request.method}"] += 1

    clients: dict[str, SecretClient] = {}

    def list_vault(vault: str) -> dict[str, Any]:
        if vault not in clients:
            clients[vault] = SecretClient(
                vault_url.format(vault=vault),
                credential,
                connection_verify=ca,
                verify_challenge_resource=False,  # the stand-in is not on *.vault.azure.net
                raw_response_hook=on_kv,
            )
        return {
            p.name.lower(): p
            for p in clients[vault].list_properties_of_secrets()
            if p.enabled and not p.managed and p.name
        }

    http = httpx.Client(
        auth=("", os.environ["AZURE_DEVOPS_PAT"]),
        transport=CountingTransport(counter, verify=ca),
        timeout=60,
    )
    listings: dict[str, dict[str, Any]] = {}
    audited: list[str] = []
    written = 0
    for org in os.environ["KVLINK_DEVOPS_ORGS"].split(","):
        for project in _pages(http, f"{base}/{org}/_apis/projects", {}):
            if limit is not None and len(audited) >= limit:
                break
            groups_url = f"{base}/{org}/{project['name']}/_apis/distributedtask/variablegroups"
            for group in _pages(http, groups_url, {"queryOrder": "IdAscending"}):
                vault = ((group.get("providerData") or {}).get("vault") or "").lower()
                if group.get("type") != "AzureKeyVault" or not vault:
                    continue
                if limit is not None and len(audited) >= limit:
                    break
                audited.append(f"{org.lower()}/{group['id']}")
                if vault not in listings or not cached:
                    listings[vault] = list_vault(vault)
                usable = listings[vault]
                is_managed = (org.lower(), int(group["id"])) in managed
                variables = group.get("variables") or {}
                if set(_wanted(variables, usable, is_managed)) == set(variables):
                    continue
                _rewrite(http, base, org, project["name"], int(group["id"]), usable=usable, is_managed=is_managed)
                written += 1
    http.close()
    for client in clients.values():
        client.close()
    return {"groups_audited": len(audited), "audited": audited, "written": written}


def _rewrite(
    http: httpx.Client, base: str, org: str, project: str, group_id: int, *, usable: dict[str, Any], is_managed: bool
) -> None:
    """Read the group afresh, then PUT it whole with the names it should map (what a careful script does)."""
    fresh = http.get(f"{base}/{org}/{project}/_apis/distributedtask/variablegroups/{group_id}", params=API)
    fresh.raise_for_status()
    body = fresh.json()
    put = {
        key: body[key]
        for key in ("name", "description", "type", "providerData", "variableGroupProjectReferences")
        if key in body
    }
    put["variables"] = _wanted(body.get("variables") or {}, usable, is_managed)
    http.put(f"{base}/{org}/_apis/distributedtask/variablegroups/{group_id}", params=API, json=put).raise_for_status()
