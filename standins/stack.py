"""The three local services kvlink talks to, started together, and the settings that point kvlink at them.

``demo`` and ``serve`` both run on this: the Key Vault and Azure DevOps stand-ins over HTTPS
(a throwaway CA) and Azurite's Table service, all on loopback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from kvlink_core.credentials import EMULATOR_TOKEN
from kvlink_core.settings import HOSTING_VARIABLES

from .azurite import Azurite
from .devops import DevOpsStandIn
from .keyvault import KeyVaultStandIn
from .tls import ThrowawayCA

PAT = "demo-pat-not-a-secret"  # accepted only by the local Azure DevOps stand-in


@dataclass(frozen=True)
class Stack:
    ca: ThrowawayCA
    kv: KeyVaultStandIn
    ado: DevOpsStandIn
    azurite: Azurite

    def settings(self, orgs: Iterable[str], vaults: Iterable[str]) -> dict[str, str]:
        """The environment that points kvlink (functions or CLI) at this stack, in emulator mode."""
        return {
            "KVLINK_DEVOPS_ORGS": ",".join(orgs),
            "KVLINK_ALLOWED_VAULTS": ",".join(vaults),
            "AZURE_DEVOPS_PAT": PAT,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "KVLINK_DEVOPS_URL": self.ado.base_url,
            "KVLINK_VAULT_URL": self.kv.vault_url_template,
            "KVLINK_CA_BUNDLE": str(self.ca.bundle_path),
            "KVLINK_EMULATOR": "1",
            # Blank (unset, to kvlink): every endpoint is a loopback stand-in, and container
            # runtimes set CONTAINER_NAME on laptops and CI runners too, which refuses the emulator.
            **dict.fromkeys(HOSTING_VARIABLES, ""),
        }


@contextmanager
def local_stack(ca_dir: Path, *, ports: tuple[int, int, int] = (0, 0, 0)) -> Iterator[Stack]:
    """Start the stand-ins and Azurite (ports: Key Vault, Azure DevOps, Azurite; 0 = any free one);
    the CA's bundle is written to ``ca_dir``. Everything is stopped on exit, Azurite's process ended."""
    for port in filter(None, ports):
        _check_free(port)
    kv_port, ado_port, table_port = ports
    ca = ThrowawayCA(ca_dir)
    kv = KeyVaultStandIn(ssl_context=ca.server_context(), token=EMULATOR_TOKEN, port=kv_port)
    ado = DevOpsStandIn(ssl_context=ca.server_context(), pat=PAT, port=ado_port)
    azurite = Azurite(port=table_port or None)
    with ExitStack() as running:
        # Each stop is registered before its start: a signal that interrupts a start (serve's Ctrl-C
        # raises in the main thread) must still end what that start had begun, Azurite's process above all.
        for service in (kv, ado, azurite):
            running.callback(service.stop)
            service.start()
        yield Stack(ca, kv, ado, azurite)


def _check_free(port: int) -> None:
    """Fail now if ``port`` is taken: Azurite's start only waits for *something* to listen there."""
    with socket.socket() as probe:
        # As the servers bind: connections of a previous run in TIME_WAIT do not make the port taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as taken:
            raise OSError(taken.errno, f"port {port} on 127.0.0.1 is in use") from taken
