"""A synthetic estate for the audit benchmark, served by the stand-ins in their own process.

The stand-ins run in a child process so that their CPU (TLS, JSON) does not compete with
the audit's for the GIL; the audit and the baselines run in fresh processes of their own
so that each one's peak memory is its own.

The generator is also the judge. When it builds the estate it records, from the secrets it
created and deleted, which groups it drifted and what every group must map once an audit has
run -- by DESIGN.md's rules, never by asking kvlink's planner:

* a *linked* (managed, default policy: merge, every name) group must map every live, enabled
  secret of its vault: one it lacks is added, one whose secret was deleted is removed;
* a *discovered* group (never linked) is only pruned: a name whose secret was deleted is
  removed, a secret it lacks is **not** added (so that group must not be written at all).

After a contender ran, :func:`check` compares the Azure DevOps stand-in's groups with that
record and counts, from the stand-in's own call log, which groups were written.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from standins._http import Call
from standins.devops import DevOpsStandIn
from standins.keyvault import KeyVaultStandIn
from standins.tls import ThrowawayCA

TOKEN = "kvlink-emulator-token"
PAT = "bench-pat"
# The default policy's marker (merge, every name, expired kept), spelled out from the v1 format in
# docs/how-it-works.md rather than asked of kvlink: the generator describes the estate, kvlink is the contender.
MARKER = "[kvlink v1 mode=merge include=* expired=keep]"
_PUT_PATH = re.compile(r"/([^/]+)/_apis/distributedtask/variablegroups/(\d+)")

# The kinds of drift the generator makes, and whether an audit must write the group.
MUST_WRITE = {
    None: False,
    "lacks-secret": True,  # linked group without one of its vault's secrets: add it
    "maps-deleted": True,  # any group mapping a secret that was deleted: remove it
    "discovered-lacks-secret": False,  # discovered group without a secret: never added, left alone
}


@dataclass(frozen=True)
class Shape:
    orgs: int = 1
    projects: int = 20  # per organization
    groups: int = 1000  # in all, spread evenly over the projects
    vaults: int = 200
    secrets: int = 100_000  # in all, spread evenly over the vaults
    drift: float = 0.1  # share of groups the generator drifts (some drift must be left alone)
    linked: float = 0.8  # share of groups registered as links; the rest are discovered
    latency: float = 0.15  # seconds per stand-in call: a round trip to Azure (tens to hundreds of ms)
    seed: int = 7
    edited_ago: float = 86_400.0  # seconds since a person last edited each group (0: just now)
    # Linked groups carry their policy's marker in their description, as linking through kvlink leaves
    # them (steady state); False: links made before kvlink kept markers, which the first audit marks.
    marked: bool = True

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
    drift: str | None  # a key of MUST_WRITE
    secret: str | None  # the secret the drift is about

    @property
    def must_write(self) -> bool:
        return MUST_WRITE[self.drift]

    def expected(self, live: list[str]) -> list[str]:
        """What the group must map after an audit, given its vault's live secrets."""
        if self.drift == "discovered-lacks-secret":
            return sorted(n for n in live if n != self.secret)
        return sorted(live)


def seed(shape: Shape, kv: KeyVaultStandIn, ado: DevOpsStandIn) -> tuple[list[GroupSpec], dict[str, list[str]]]:
    """Deterministic estate; returns the groups and each vault's live secret names."""
    rng = random.Random(shape.seed)
    kv.record_audit = False
    per_vault = max(1, shape.secrets // shape.vaults)
    live = {shape.vault(v): [f"s{v:03d}-{i:04d}" for i in range(per_vault)] for v in range(shape.vaults)}
    for vault, names in live.items():
        for name in names:
            kv.set_secret(vault, name)
    specs = []
    per_project = max(1, shape.groups // (shape.orgs * shape.projects))
    n = 0
    for o in range(shape.orgs):
        org = shape.org(o)
        for p in range(shape.projects):
            project = f"project-{p:03d}"
            endpoint = ado.add_service_endpoint(org, project, "kv-connection")
            for _ in range(per_project):
                vault = shape.vault(n % shape.vaults)
                names = live[vault]
                linked = rng.random() < shape.linked
                drift: str | None = None
                secret: str | None = None
                mapped = list(names)
                if rng.random() < shape.drift:
                    if rng.random() < 0.5:  # the group maps a secret someone deleted since
                        drift, secret = "maps-deleted", f"gone-{n:05d}"
                        kv.set_secret(vault, secret)
                        kv.delete_secret(vault, secret)
                        mapped.append(secret)
                    else:  # the group lacks a secret (created after the group, an event lost)
                        drift = "lacks-secret" if linked else "discovered-lacks-secret"
                        secret = names[rng.randrange(len(names))]
                        mapped.remove(secret)
                name = f"group-{n:05d}"
                description = MARKER if linked and shape.marked else ""
                gid = ado.add_group(
                    org,
                    project,
                    name,
                    vault=vault,
                    service_endpoint_id=endpoint,
                    variables=mapped,
                    description=description,
                )
                if shape.edited_ago:
                    _backdate(ado, org, gid, shape.edited_ago)
                specs.append(GroupSpec(org, project, gid, name, vault, linked, drift, secret))
                n += 1
    return specs, live


def _backdate(ado: DevOpsStandIn, org: str, group_id: int, seconds: float) -> None:
    """Make a group look last edited ``seconds`` ago, as most groups of an estate were.

    The stand-in stamps every group "now"; a group edited moments before an audit makes
    kvlink double-check each name it would remove (one Key Vault call each), since the
    listing may predate a secret the person just mapped. That is the rare case, not the
    nightly one. (The stand-in has no public way to backdate, hence its private state.)
    """
    stamp = (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with ado._state_lock:
        group = ado._orgs[org.lower()].groups[group_id]
        group["createdOn"] = group["modifiedOn"] = stamp


def check(
    specs: list[GroupSpec], live: dict[str, list[str]], ado: DevOpsStandIn, only: set[str] | None = None
) -> dict[str, Any]:
    """The stand-in's groups against the generator's record; ``only`` limits it to some ``org/id`` keys."""
    put_counts: Counter[str] = Counter()
    for call in ado.writes():
        match = _PUT_PATH.fullmatch(call.path)
        if call.method == "PUT" and call.status == 200 and match:
            put_counts[f"{match.group(1).lower()}/{match.group(2)}"] += 1
    wrong, right, expected_written = [], 0, 0
    for spec in specs:
        key = f"{spec.org.lower()}/{spec.group_id}"
        if only is not None and key not in only:
            continue
        expected_written += spec.must_write
        want = spec.expected(live[spec.vault])
        have = ado.variable_names(spec.org, spec.group_id)
        if have == want:
            right += 1
        else:
            wrong.append(
                {
                    "group": key,
                    "drift": spec.drift,
                    "missing": sorted(set(want) - set(have))[:5],
                    "unexpected": sorted(set(have) - set(want))[:5],
                }
            )
    written = {k for k in put_counts if only is None or k in only}
    must = {f"{s.org.lower()}/{s.group_id}" for s in specs if s.must_write}
    return {
        "groups_checked": right + len(wrong),
        "groups_right": right,
        "groups_wrong": len(wrong),
        "wrong_examples": wrong[:10],
        "groups_written": len(written),
        "groups_to_write": expected_written,
        "written_not_drifted": sorted(written - must)[:10],
        "max_writes_per_group": max(put_counts.values(), default=0),
        "standin_calls": {
            "devops": dict(Counter(c.method for c in ado.calls)),
            "devops_by_kind": dict(Counter(_kind(c.method, c.path) for c in ado.calls)),
        },
    }


def _kind(method: str, path: str) -> str:
    """What an Azure DevOps call was for, from its method and path (the stand-in's view, not kvlink's)."""
    if path.endswith("/_apis/projects"):
        return "project listing"
    if "/serviceendpoint/" in path:
        return "service connections"
    if "/pipelinepermissions/" in path:
        return "pipeline permissions"
    if path.endswith("/_apis/pipelines"):
        return "pipeline listing"
    if "/distributedtask/variablegroups" in path:
        if method != "GET":
            return f"group {method}"
        return "group read" if re.search(r"/variablegroups/\d+$", path) else "group listing"
    return f"other {method}"


def timeline(kv_calls: list[Call], ado_calls: list[Call]) -> dict[str, Any]:
    """What was in flight at the stand-ins, second by second, from their own start/end stamps.

    Per second of the run (from the first call): the mean number of Key Vault calls in flight,
    of Key Vault *chains* in flight (a vault's listing, from its first page's start to its last
    page's end: the pages of one listing follow each other's ``nextLink``), and of Azure DevOps
    calls in flight. A second whose numbers sit below the limits is capacity the run left idle.
    Key Vault's 401 auth challenges are left out.
    """
    kv = [(c.started, c.finished, c.path.strip("/").split("/", 1)[0]) for c in kv_calls if c.status != 401]
    ado = [(c.started, c.finished) for c in ado_calls]
    if not kv and not ado:
        return {"seconds": [], "span": {}}
    t0 = min(start for start, *_ in kv + ado)
    end = max(finish for _, finish, *_ in kv + ado)
    chains: dict[str, list[float]] = {}
    for start, finish, vault in kv:
        chain = chains.setdefault(vault, [start, finish])
        chain[0], chain[1] = min(chain[0], start), max(chain[1], finish)
    buckets = max(1, math.ceil(end - t0))

    def busy(intervals: list[tuple[float, float]]) -> list[float]:
        """Mean concurrency per one-second bucket: interval time overlapping it, summed."""
        out = [0.0] * buckets
        for start, finish in intervals:
            a, b = start - t0, finish - t0
            i = int(a)
            while i < buckets and i < b:
                out[i] += max(0.0, min(b, i + 1) - max(a, i))
                i += 1
        return [round(x, 2) for x in out]

    kv_calls_busy = busy([(s, f) for s, f, _ in kv])
    kv_chains_busy = busy([(s, f) for s, f in chains.values()])
    ado_busy = busy(ado)
    spans = {
        "total": round(end - t0, 2),
        "keyvault first/last": [round(min(s for s, _, _ in kv) - t0, 2), round(max(f for _, f, _ in kv) - t0, 2)]
        if kv
        else None,
        "devops first/last": [round(min(s for s, _ in ado) - t0, 2), round(max(f for _, f in ado) - t0, 2)]
        if ado
        else None,
        "keyvault call-seconds": round(sum(f - s for s, f, _ in kv), 2),
        "devops call-seconds": round(sum(f - s for s, f in ado), 2),
        "clock first/last": [t0, end],  # time.monotonic, for the contender's own phases
    }
    return {
        "seconds": [
            {"t": i, "kv_calls": kv_calls_busy[i], "kv_chains": kv_chains_busy[i], "devops_calls": ado_busy[i]}
            for i in range(buckets)
        ],
        "span": spans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="serve a synthetic estate on loopback until stdin closes")
    parser.add_argument("--shape", required=True, help="Shape as JSON")
    args = parser.parse_args()
    shape = Shape(**json.loads(args.shape))
    with tempfile.TemporaryDirectory(prefix="kvlink-bench-") as tmp:
        ca = ThrowawayCA(Path(tmp))
        kv = KeyVaultStandIn(ssl_context=ca.server_context(), token=TOKEN).start()
        ado = DevOpsStandIn(ssl_context=ca.server_context(), pat=PAT).start()
        specs, live = seed(shape, kv, ado)
        kv.latency = ado.latency = shape.latency
        kv.reset_calls()
        ado.reset_calls()
        print(
            json.dumps(
                {
                    "kv": kv.vault_url_template,
                    "ado": ado.base_url,
                    "ca": str(ca.bundle_path),
                    "groups": [{**asdict(s), "must_write": s.must_write} for s in specs],
                    "live_secrets": {vault: len(names) for vault, names in live.items()},
                }
            ),
            flush=True,
        )
        # Commands on stdin, one per line, until it closes: "check" or "check org/id,org/id,...".
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "check":
                result = check(specs, live, ado, set(arg.split(",")) if arg else None)
                result["standin_calls"]["keyvault"] = dict(Counter(c.method for c in kv.calls if c.status != 401))
                result["timeline"] = timeline(kv.calls, ado.calls)
                print(json.dumps(result), flush=True)
        kv.stop()
        ado.stop()


if __name__ == "__main__":
    main()
