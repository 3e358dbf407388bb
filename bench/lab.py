"""What the benchmarks share: an engine whose every client counts its calls, and an in-process lab."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from kvlink_core.settings import HOSTING_VARIABLES
from standins.azurite import Azurite
from standins.devops import DevOpsStandIn
from standins.keyvault import KeyVaultStandIn
from standins.tls import ThrowawayCA

TOKEN = "kvlink-emulator-token"  # accepted only by the local stand-ins
PAT = "bench-pat"  # accepted only by the local stand-in


class CountingTransport(httpx.HTTPTransport):
    def __init__(self, counter: Counter[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counter = counter

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.counter[f"devops {request.method}"] += 1
        return super().handle_request(request)


def counting_engine(counter: Counter[str], env: dict[str, str] | None = None, **engine_options: Any) -> Any:
    """kvlink's engine on the environment's settings, with every client counting its calls.

    Key Vault's one-time 401 auth challenges are counted apart from real calls.
    """
    from kvlink_core.credentials import get_credential
    from kvlink_core.devops import DevOps
    from kvlink_core.keyvault import KeyVault
    from kvlink_core.registry import Registry
    from kvlink_core.settings import Settings
    from kvlink_core.sync import Engine
    from kvlink_core.tls import ssl_context

    settings = Settings.from_env(env)

    def on_kv(response: Any) -> None:
        status = response.http_response.status_code
        counter["keyvault challenge" if status == 401 else f"keyvault {response.http_request.method}"] += 1

    def on_table(request: Any) -> None:
        counter[f"table {request.http_request.method}"] += 1

    transport = CountingTransport(counter, verify=ssl_context(settings.ca_bundle))
    return Engine(
        settings,
        keyvault=KeyVault(settings, get_credential(settings), client_options={"raw_response_hook": on_kv}),
        devops=DevOps(settings, None, transport=transport),
        registry=Registry(settings, client_options={"raw_request_hook": on_table}),
        **engine_options,
    )


def by_system(counter: Counter[str]) -> dict[str, int]:
    """Calls per system, auth challenges left out."""
    totals: Counter[str] = Counter()
    for key, value in counter.items():
        system, _, what = key.partition(" ")
        if what != "challenge":
            totals[system] += value
    return {system: totals.get(system, 0) for system in ("keyvault", "devops", "table")}


class Lab:
    """Stand-ins and Azurite in this process, for benchmarks that count calls rather than time them."""

    def __init__(self, orgs: str = "bench-org", vaults: str = "*") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="kvlink-lab-")
        ca = ThrowawayCA(Path(self._tmp.name))
        self.kv = KeyVaultStandIn(ssl_context=ca.server_context(), token=TOKEN).start()
        self.ado = DevOpsStandIn(ssl_context=ca.server_context(), pat=PAT).start()
        self.azurite = Azurite().start()
        self.env = {
            **os.environ,
            "KVLINK_DEVOPS_ORGS": orgs,
            "KVLINK_ALLOWED_VAULTS": vaults,
            "AZURE_DEVOPS_PAT": PAT,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "KVLINK_DEVOPS_URL": self.ado.base_url,
            "KVLINK_VAULT_URL": self.kv.vault_url_template,
            "KVLINK_CA_BUNDLE": str(ca.bundle_path),
            "KVLINK_EMULATOR": "1",
            **dict.fromkeys(HOSTING_VARIABLES, ""),  # a container's CONTAINER_NAME would refuse the emulator
        }

    def close(self) -> None:
        self.kv.stop()
        self.ado.stop()
        self.azurite.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
