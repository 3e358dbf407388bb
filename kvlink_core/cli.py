"""``python -m kvlink_core``: the command line, over the same core as the functions."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kvlink_core",
        description="Keep Azure DevOps variable groups linked to Azure Key Vault in step with the vault.",
    )
    parser.add_argument("--version", action="version", version=f"kvlink {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what kvlink does (never values)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser(
        "demo",
        help="run the local end-to-end demo against the stand-ins (development checkout only)",
        description="Start local stand-ins for Key Vault, Azure DevOps and Table storage, and show "
        "new secrets reaching a linked variable group through the real Event Grid trigger.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verb == "demo":
        return _demo()
    return 1  # argparse rejects unknown verbs before this point


def _demo() -> int:
    try:
        from standins.demo import run
    except ImportError:
        print("The demo needs a development checkout with its tools: run `make demo`.", file=sys.stderr)
        return 1
    return run()
