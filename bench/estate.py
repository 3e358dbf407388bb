"""A synthetic estate for the audit benchmark, served by the stand-ins in their own process.

The stand-ins run in a child process so that their CPU (TLS, JSON) does not compete with
the audit's for the GIL; the audit and the baseline run in fresh processes of their own
so that each one's peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from standins.devops import DevOpsStandIn
from standins.keyvault import KeyVaultStandIn
from standins.tls import ThrowawayCA

TOKEN = "kvlink-emulator-token"
PAT = "bench-pat"


@dataclass(frozen=True)
class Shape:
    orgs: int = 1
    projects: int = 50  # per organization
    groups: int = 1000  # in all, spread evenly over the projects
    vaults: int = 200
    secrets: int = 100_000  # in all, spread evenly over the vaults
    drift: float = 0.1  # share of groups that lack one matching secret
    linked: float = 0.8  # share of groups registered as links; the rest are discovered
    latency: float = 0.02  # seconds per stand-in call
    seed: int = 7

    def org(self, i: int) -> str:
        return f"bench-org{i}"

    def vault(self, i: int) -> str:
        return f"kv-bench-{i:03d}"


@dataclass(frozen=True)
class GroupSpec:
    org: str
    project: str
    group_id: int
    name: str
    vault: str
    linked: bool
    drifted: bool


def seed(shape: Shape, kv: KeyVaultStandIn, ado: DevOpsStandIn) -> list[GroupSpec]:
    """Deterministic estate: every group maps all of one vault's secrets, minus one if it drifted."""
    rng = random.Random(shape.seed)
    kv.record_audit = False
    per_vault = shape.secrets // shape.vaults
    names = {v: [f"s{v:03d}-{i:04d}" for i in range(per_vault)] for v in range(shape.vaults)}
    for v in range(shape.vaults):
        for name in names[v]:
            kv.set_secret(shape.vault(v), name)
    specs = []
    per_project = max(1, shape.groups // (shape.orgs * shape.projects))
    n = 0
    for o in range(shape.orgs):
        org = shape.org(o)
        for p in range(shape.projects):
            project = f"project-{p:03d}"
            endpoint = ado.add_service_endpoint(org, project, "kv-connection")
            for _ in range(per_project):
                v = n % shape.vaults
                drifted = rng.random() < shape.drift
                mapped = names[v][1:] if drifted else names[v]
                gid = ado.add_group(
                    org, project, f"group-{n:05d}", vault=shape.vault(v), service_endpoint_id=endpoint, variables=mapped
                )
                specs.append(
                    GroupSpec(org, project, gid, f"group-{n:05d}", shape.vault(v), rng.random() < shape.linked, drifted)
                )
                n += 1
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description="serve a synthetic estate on loopback until stdin closes")
    parser.add_argument("--shape", required=True, help="Shape as JSON")
    args = parser.parse_args()
    shape = Shape(**json.loads(args.shape))
    with tempfile.TemporaryDirectory(prefix="kvlink-bench-") as tmp:
        ca = ThrowawayCA(Path(tmp))
        kv = KeyVaultStandIn(ssl_context=ca.server_context(), token=TOKEN).start()
        ado = DevOpsStandIn(ssl_context=ca.server_context(), pat=PAT).start()
        specs = seed(shape, kv, ado)
        kv.latency = ado.latency = shape.latency
        print(
            json.dumps(
                {
                    "kv": kv.vault_url_template,
                    "ado": ado.base_url,
                    "ca": str(ca.bundle_path),
                    "groups": [asdict(s) for s in specs],
                }
            ),
            flush=True,
        )
        sys.stdin.read()  # serve until the parent closes our stdin
        kv.stop()
        ado.stop()


if __name__ == "__main__":
    main()
