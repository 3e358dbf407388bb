"""CPU per Key Vault page: kvlink's listing path, sync (requests) against async (aiohttp), on one vault.

    python -m bench.listing                     # 100 pages of 25 secrets, each path, 5 rounds
    python -m bench.listing --profile async     # cProfile of the async path's loop thread

The stand-in runs in this process but on its own threads; each path's CPU is that of the
threads doing the listing (the caller for sync, the event loop's thread for async), so the
stand-in's own work is not counted. Calls go through the SDK's pipeline exactly as in an audit.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from typing import Any

from bench.lab import Lab
from kvlink_core.credentials import get_credential
from kvlink_core.keyvault import KeyVault
from kvlink_core.settings import Settings

VAULT = "bench-listing"


def _reader(settings: Settings, pipeline: str) -> KeyVault:
    if pipeline == "sync":
        from azure.core.pipeline.transport import RequestsTransport

        from kvlink_core.tls import azure_transport_options, shared_session

        session = shared_session(
            settings.ca_bundle,
            pool_size=4,
            trust_env=bool(azure_transport_options(settings.ca_bundle)["use_env_settings"]),
        )
        # A transport factory alone keeps listings on the sync pipeline (the path before the async one).
        return KeyVault(
            settings,
            get_credential(settings),
            transport_factory=lambda: RequestsTransport(session=session, session_owner=False),
        )
    return KeyVault(settings, get_credential(settings))


def _loop_cpu(kv: KeyVault) -> float:
    return kv._event_loop().run(_thread_time())


async def _thread_time() -> float:
    return time.thread_time()


def measure(settings: Settings, pipeline: str, pages: int, rounds: int, profile: bool) -> dict[str, Any]:
    kv = _reader(settings, pipeline)
    kv.list_secrets(VAULT)  # warm: connection, TLS, the auth challenge
    profiler = cProfile.Profile(time.thread_time) if profile else None
    if pipeline == "async" and profiler is not None:
        kv._event_loop().run(_enable(profiler))
    best = float("inf")
    for _ in range(rounds):
        before = _loop_cpu(kv) if pipeline == "async" else time.thread_time()
        if pipeline == "sync" and profiler is not None:
            profiler.enable()
        kv.list_secrets(VAULT)
        if pipeline == "sync" and profiler is not None:
            profiler.disable()
        after = _loop_cpu(kv) if pipeline == "async" else time.thread_time()
        best = min(best, after - before)
    if pipeline == "async" and profiler is not None:
        kv._event_loop().run(_disable(profiler))
    kv.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return {"pipeline": pipeline, "ms_per_page": round(best * 1000 / pages, 3)}


async def _enable(profiler: cProfile.Profile) -> None:
    profiler.enable()


async def _disable(profiler: cProfile.Profile) -> None:
    profiler.disable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=["sync", "async"], help="cProfile one path instead")
    args = parser.parse_args()
    with Lab() as lab:
        for i in range(args.pages * 25):
            lab.kv.set_secret(VAULT, f"secret-{i:05d}")
        settings = Settings.from_env(lab.env)
        asyncio.set_event_loop(None)
        for pipeline in [args.profile] if args.profile else ["sync", "async"]:
            print(json.dumps(measure(settings, pipeline, args.pages, args.rounds, bool(args.profile))))


if __name__ == "__main__":
    main()
