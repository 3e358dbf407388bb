"""``python -m standins serve``: a small local estate to try the CLI on, running until Ctrl-C.

Starts the Key Vault and Azure DevOps stand-ins (HTTPS, a throwaway CA whose bundle is written
to a stable folder) and Azurite, seeds one organization with two projects, three vaults and five
variable groups -- some linked, some only discoverable, two of them drifted -- registers the
linked ones, and prints the ``export`` lines that point ``python -m kvlink_core`` at it.
"""

from __future__ import annotations

import errno
import fcntl
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from kvlink_core.marker import render
from kvlink_core.model import Link, Policy
from kvlink_core.registry import Registry
from kvlink_core.settings import Settings

from .azurite import REPO
from .stack import Stack, local_stack

DEFAULT_DIR = REPO / ".kvlink-serve"
ORG = "contoso"
VAULTS = ("kv-payments", "kv-shared", "kv-storefront")


@dataclass(frozen=True)
class Seeded:
    """One seeded variable group, as the banner describes it."""

    project: str
    group: str
    group_id: int
    vault: str | None
    linked: bool
    note: str


def seed(stack: Stack, env: dict[str, str]) -> list[Seeded]:
    """Fill the stand-ins with the estate and register its linked groups; return the groups."""
    kv, ado = stack.kv, stack.ado
    kv.set_secret("kv-payments", "db-password", content_type="text/plain")
    kv.set_secret("kv-payments", "payments-api-key")
    kv.set_secret("kv-shared", "smtp-password", content_type="text/plain")
    kv.set_secret("kv-shared", "sentry-dsn")
    kv.set_secret("kv-storefront", "cdn-key")
    kv.set_secret("kv-storefront", "session-secret")
    kv.set_secret("kv-storefront", "search-api-key")

    connection = {
        project: ado.add_service_endpoint(ORG, project, f"{project.lower()}-azure")
        for project in ("Payments", "Storefront")
    }

    def group(project: str, name: str, vault: str, names: list[str], *, linked: bool = False) -> int:
        # A group linked through kvlink carries its link's policy in its description (kvlink_core/marker.py).
        description = render(Policy()) if linked else ""
        return ado.add_group(
            ORG,
            project,
            name,
            vault=vault,
            service_endpoint_id=connection[project],
            variables=names,
            description=description,
        )

    groups = [
        Seeded(
            "Payments",
            "payments-kv",
            group("Payments", "payments-kv", "kv-payments", ["db-password", "payments-api-key"], linked=True),
            "kv-payments",
            linked=True,
            note="drifted: the vault's new secret payments-webhook-secret is not mapped yet",
        ),
        Seeded(
            "Payments",
            "payments-shared",
            group("Payments", "payments-shared", "kv-shared", ["smtp-password", "sentry-dsn"]),
            "kv-shared",
            linked=False,
            note="in step; not linked (the audit discovers it)",
        ),
        Seeded(
            "Storefront",
            "storefront-kv",
            group("Storefront", "storefront-kv", "kv-storefront", ["cdn-key", "session-secret"], linked=True),
            "kv-storefront",
            linked=True,
            note="in step",
        ),
        Seeded(
            "Storefront",
            "storefront-legacy",
            group("Storefront", "storefront-legacy", "kv-storefront", ["cdn-key", "search-api-key"]),
            "kv-storefront",
            linked=False,
            note="drifted: maps search-api-key, deleted from the vault; not linked",
        ),
        Seeded(
            "Storefront",
            "storefront-settings",
            ado.add_group(ORG, "Storefront", "storefront-settings", variables={"LOG_LEVEL": "info"}),
            None,
            linked=False,
            note="plain variables: not a Key Vault group, kvlink leaves it alone",
        ),
    ]
    # The drift: changes made in the vaults after the groups were last filled.
    kv.set_secret("kv-payments", "payments-webhook-secret")
    kv.delete_secret("kv-storefront", "search-api-key")

    registry = Registry(Settings.from_env(env))
    try:
        for seeded in groups:
            if seeded.linked and seeded.vault:
                link = Link(ORG, seeded.project, seeded.group_id, seeded.group, seeded.vault, Policy())
                registry.save_link(link)
    finally:
        registry.close()
    return groups


def export_lines(env: dict[str, str]) -> list[str]:
    """``export NAME=value`` for a POSIX shell; a blank value unsets the setting for kvlink."""
    return [f"export {name}={shlex.quote(value) if value else ''}" for name, value in env.items()]


class Stopped(Exception):  # noqa: N818 -- not an error: how a signal unwinds the running stack
    """SIGINT or SIGTERM arrived: unwind, stopping everything on the way out."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    # Ignore any further signal: the cleanup that follows (stand-ins, Azurite) must not be cut short.
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise Stopped(signal.Signals(signum).name)


@contextmanager
def _only_one(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s lock: a second ``serve`` on the same folder would replace the CA bundle
    under the first one's clients."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "serve.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"error: another `python -m standins serve` is using {directory}; stop it, or pass --dir"
            ) from None
        yield


def serve(
    directory: Path = DEFAULT_DIR,
    *,
    env_file: Path | None = None,
    port: int = 0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run until SIGINT or SIGTERM (exit 0), or until Azurite dies (exit 1)."""
    out, err = out or sys.stdout, err or sys.stderr
    if port and not 0 < port <= 65533:
        err.write(f"error: --port must be between 1 and 65533 (three ports from it), not {port}\n")
        return 1
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in (signal.SIGINT, signal.SIGTERM)}
    ports = (port, port + 1, port + 2) if port else (0, 0, 0)
    try:
        with _only_one(directory), local_stack(directory, ports=ports) as stack:
            env = stack.settings([ORG], VAULTS)
            groups = seed(stack, env)
            lines = _banner(stack, groups)
            if env_file is not None:
                env_file.parent.mkdir(parents=True, exist_ok=True)
                env_file.write_text("".join(f"{line}\n" for line in export_lines(env)), encoding="utf-8")
                lines.append(f"# Settings for kvlink (also in {env_file}: `source {env_file}`):")
            else:
                lines.append("# Settings for kvlink: paste these lines into another shell:")
            lines += export_lines(env)
            lines.append("# ready: try `python -m kvlink_core links`; Ctrl-C stops the stand-ins")
            out.write("".join(f"{line}\n" for line in lines))
            out.flush()
            status = stack.azurite.wait()
    except OSError as problem:
        if problem.errno != errno.EADDRINUSE:
            raise
        err.write(f"error: {problem.strerror}: pick another --port, or leave it out\n")
        return 1
    except RuntimeError as problem:  # Azurite missing, or it could not start
        err.write(f"error: {problem}\n")
        return 1
    except Stopped as stopped:
        out.write(f"# {stopped}: stand-ins stopped, Azurite ended\n")
        out.flush()
        return 0
    else:
        err.write(f"error: Azurite exited unexpectedly (status {status}); stand-ins stopped\n")
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _banner(stack: Stack, groups: list[Seeded]) -> list[str]:
    lines = [
        "# kvlink's local estate, on loopback only:",
        f"#   Key Vault stand-in     {stack.kv.vault_url_template}  (HTTPS, throwaway CA)",
        f"#   Azure DevOps stand-in  {stack.ado.base_url}/{ORG}",
        f"#   Table storage          Azurite on 127.0.0.1:{stack.azurite.port}",
        f"#   organization {ORG}: projects Payments, Storefront; vaults {', '.join(VAULTS)}",
    ]
    width = max(len(f"{g.project}/{g.group} (id {g.group_id})") for g in groups)
    for g in groups:
        where = f"{g.project}/{g.group} (id {g.group_id})"
        vault = f"<- {g.vault}" if g.vault else ""
        state = "" if g.vault is None else "linked" if g.linked else "unlinked"
        lines.append(f"#   {where:<{width}}  {vault:<16} {state:<8}  {g.note}")
    return lines
