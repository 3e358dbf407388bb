"""``python -m standins``: the local stand-ins from the command line (development checkout only)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m standins", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    serve = verbs.add_parser(
        "serve",
        help="run the stand-ins with a small seeded estate until Ctrl-C, and print the settings for the CLI",
        description="Start the Key Vault and Azure DevOps stand-ins and Azurite on loopback, seed a small "
        "estate (linked, unlinked and drifted groups), and print `export` lines for python -m kvlink_core. "
        "Runs until Ctrl-C (SIGINT) or SIGTERM.",
    )
    from .serve import DEFAULT_DIR

    serve.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help=f"folder for the throwaway CA's bundle and the lock (default {DEFAULT_DIR})",
    )
    serve.add_argument("--env-file", type=Path, help="also write the export lines to this file (for `source`)")
    serve.add_argument(
        "--port",
        type=int,
        default=0,
        metavar="BASE",
        help="listen on BASE (Key Vault), BASE+1 (Azure DevOps), BASE+2 (Azurite), so the settings stay "
        "valid across restarts; default: free ports",
    )
    args = parser.parse_args(argv)
    from .serve import serve as run

    return run(args.dir.resolve(), env_file=args.env_file, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
