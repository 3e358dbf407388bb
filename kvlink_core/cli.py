"""``kvlink`` (or ``python -m kvlink_core``): the command line, over the same settings and core as the functions.

Each outcome has its own exit code (:data:`EXIT_CODES`), so a pipeline gate can tell "drift"
from "could not look" and from "called wrongly". Everything the command line can check --
flags, their values, ``--html``'s directory, the settings -- is checked before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from . import __version__
from .app import SDK_LOGGERS  # the SDKs log request and response headers at INFO (redacted, but noise): -vv
from .errors import ConfigError, KvLinkError, RequestError
from .smoke import Waits

# Like `terraform plan -detailed-exitcode` for 0-2; 64 is EX_USAGE from sysexits.h. When several
# apply, the first in this order wins: 64, 1, 2 -- "could not look" outranks "found drift".
EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_USAGE = 0, 1, 2, 64
EXIT_CODES = """\
exit codes:
  0   done: nothing is left to change (applied, or a dry run found nothing)
  1   error, could not look: bad settings, Azure or storage failures, a vault,
      project or organization not reached, a group whose write failed, a
      smoke step that failed or whose wait ran out
  2   changes: a dry run (or KVLINK_MODE=report) found changes to make, or
      drift remains after an applying run (a repair the mass-removal guard
      refused, a group that needs a person)
  64  usage: unknown, missing or conflicting flags, or a flag value kvlink
      refuses (e.g. a vault outside KVLINK_ALLOWED_VAULTS, a --html directory
      that does not exist); nothing was read or written"""

AUDIT_EPILOG = """\
audit writes: it repairs linked groups, and it also prunes Key Vault groups
nobody linked (names of deleted or disabled secrets; KVLINK_UNLINKED_GROUPS).
Use --dry-run to only look, and set KVLINK_MODE=report for the first runs
against a real estate: kvlink then plans and reports, and writes nothing.

"""

SMOKE_WAITS = Waits()
DEFAULT_JOB_WAIT = 1800.0  # host.json's functionTimeout (10 min) for each of a few deliveries
JOB_POLL = 5.0  # seconds between two looks at a queued sync's status
# How the command line waits on a queued sync (tests replace them to drive the wait without sleeping).
_monotonic: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep

# The API's field names, as the command line spells them.
FLAGS = {
    "organization": "--organization",
    "project": "--project",
    "group": "--group",
    "groupId": "--group-id",
    "vault": "--vault",
    "serviceConnection": "--service-connection",
    "include": "--include",
    "exclude": "--exclude",
    "tags": "--tag",
    "mode": "--mode",
    "keepExpired": "--drop-expired",
    "dryRun": "--dry-run",
    "force": "--force",
}


class UsageError(Exception):
    """The command line is wrong (exit 64); ``usage`` is shown above the message (default: the verb's)."""

    def __init__(self, message: str, *, usage: str | None = None) -> None:
        self.usage = usage
        super().__init__(message)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error, which here means "changes found": raise instead."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, usage=self.format_usage())


def build_parser(prog: str = "python -m kvlink_core") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Keep Azure DevOps variable groups linked to Azure Key Vault in step with the vault. "
        "Settings come from the environment (see the README); run `az login` first against real Azure.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kvlink {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: log kvlink's decisions (never values); -vv: also the Azure SDKs' requests",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # -v after the verb too (`link ... -v`); SUPPRESS keeps a count given before the verb.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def verb(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("epilog", EXIT_CODES)
        made: argparse.ArgumentParser = verbs.add_parser(
            name, parents=[verbose], formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
        )
        return made

    link = verb("link", help="create or adopt a Key Vault group, link it, and fill it")
    _group_args(link, with_id=False)
    link.add_argument("--vault", required=True, help="the Key Vault's name")
    link.add_argument(
        "--service-connection",
        help="name or id of the Azure Resource Manager connection (needed only when the group does not exist yet)",
    )
    link.add_argument("--include", nargs="+", metavar="PATTERN", help="secret name globs to map (default *)")
    link.add_argument("--exclude", nargs="+", metavar="PATTERN", default=[], help="secret name globs to skip")
    link.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="a tag the secret must carry (any value unless =VALUE); repeatable",
    )
    link.add_argument(
        "--mode",
        choices=["merge", "mirror"],
        default="merge",
        help="merge keeps names added by hand; mirror maps exactly the matching secrets",
    )
    link.add_argument("--drop-expired", action="store_true", help="remove and do not add expired secrets")
    _common(link, force=True)

    sync = verb("sync", help="reconcile whole groups from a full listing of their vault")
    # Checked in _sync_body, which names every flag that does not belong with the others.
    sync.add_argument("--vault", help="every group linked to this vault (alone)")
    sync.add_argument("--group-id", type=int, help="one group (with --organization and --project)")
    sync.add_argument("--organization", help="the group's organization (with --group-id)")
    sync.add_argument("--project", help="the group's project (with --group-id)")
    sync.add_argument(
        "--async",
        dest="queued",
        action="store_true",
        help="queue the sync for the deployed app's run_sync_job (as POST /api/sync?async=true does) and wait for it",
    )
    sync.add_argument("--job", metavar="ID", help="wait for a queued sync (POST /api/sync's 202 named it), alone")
    sync.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help=f"with --async or --job: give up waiting after this long (default {DEFAULT_JOB_WAIT:.0f}); "
        "the job goes on",
    )
    _common(sync, force=True)

    links = verb(
        "links",
        help="list registered links; `links export` / `links import FILE` move them between environments",
        description="List registered links (alone), or move them between environments: `links export` writes\n"
        "every link with its policy as JSON, `links import FILE` registers the links of such a file.",
    )
    links.add_argument("--vault", help="only links to this vault")
    links.add_argument("--organization", help="only links in this organization")
    links.add_argument("--json", action="store_true", help="print JSON")
    moves = links.add_subparsers(dest="links_verb", metavar="[export | import FILE]", title="subverbs")
    export = moves.add_parser(
        "export",
        parents=[verbose],
        help="write every link with its policy as JSON (stdout, or --file)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--file", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    export.add_argument("--vault", dest="export_vault", metavar="VAULT", help="only links to this vault")
    export.add_argument(
        "--organization", dest="export_organization", metavar="ORGANIZATION", help="only links in this organization"
    )
    import_ = moves.add_parser(
        "import",
        parents=[verbose],
        help="register the links of an export (idempotent; the registry only)",
        description="Register the links of a `links export` file: each entry is checked as POST /api/links\n"
        "checks a link (allow-lists included) before any is saved. A link already registered as it\n"
        "is stays untouched. Only the registry is written; each group gets kvlink's marker at its\n"
        "next sync or write.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    import_.add_argument("file", type=Path, metavar="FILE", help="a `links export` file (- for stdin)")
    import_.add_argument("--dry-run", action="store_true", help="say what would change, write nothing (exit 2)")
    import_.add_argument("--json", dest="import_json", action="store_true", help="print JSON")

    unlink = verb("unlink", help="forget a link (the group itself is left as it is)")
    _group_args(unlink, with_id=True)
    unlink.add_argument("--json", action="store_true", help="print JSON")

    audit = verb(
        "audit",
        help="reconcile every Key Vault group with its vault and report findings; "
        "repairs (writes): use --dry-run to only look",
        description="Discover every Key Vault group in the organizations in scope, reconcile it with its\n"
        "vault, repair what drifted, and report findings. It writes: use --dry-run to only look.",
        epilog=AUDIT_EPILOG + EXIT_CODES,
    )
    audit.add_argument("--dry-run", action="store_true", help="plan and report only; write and store nothing")
    audit.add_argument("--json", action="store_true", help="print the report as JSON (no progress bar)")
    audit.add_argument(
        "--html",
        metavar="FILE",
        type=Path,
        help="also write the report page (the one GET /api/report serves) to FILE",
    )

    smoke = verb(
        "smoke",
        help="prove the deployed app end to end: a canary secret must reach a group and leave it again",
        description="With your own credentials (az login or AZURE_DEVOPS_PAT): create a canary secret with a\n"
        "unique name in --vault, wait until the deployed app maps it into --group (Event Grid ->\n"
        "on_secret_event), delete it and wait until the name leaves the group (audit log -> Event Hub\n"
        "-> on_vault_log), then purge it. Prints each step's time; a wait that runs out says what to\n"
        "check. Needs Set, Delete, List (and Purge) on the vault's secrets and read access to the group.\n"
        "It writes only the canary, never a group.",
        epilog="smoke exits 0 when the canary reached the group and left it, 1 when a step failed or a\n"
        "wait ran out (what it made is removed either way), 64 on a usage error.\n\n" + EXIT_CODES,
    )
    smoke.add_argument("--vault", required=True, help="the Key Vault to put the canary in")
    smoke.add_argument(
        "--group",
        required=True,
        metavar="ORG/PROJECT/ID",
        help="the linked Key Vault group that should receive it (its numeric id)",
    )
    smoke.add_argument(
        "--appear-timeout",
        type=float,
        default=SMOKE_WAITS.appear,
        metavar="SECONDS",
        help=f"how long the name may take to reach the group (default {SMOKE_WAITS.appear:.0f})",
    )
    smoke.add_argument(
        "--leave-timeout",
        type=float,
        default=SMOKE_WAITS.leave,
        metavar="SECONDS",
        help=f"how long it may take to leave it; logs arrive up to ~10 minutes late (default {SMOKE_WAITS.leave:.0f})",
    )
    smoke.add_argument(
        "--poll",
        type=float,
        default=SMOKE_WAITS.poll,
        metavar="SECONDS",
        help=f"seconds between two reads of the group (default {SMOKE_WAITS.poll:.0f})",
    )

    verb(
        "demo",
        help="run the local end-to-end demo against the stand-ins (development checkout only)",
        description="Start local stand-ins for Key Vault, Azure DevOps and Table storage, link a group "
        "through the API, and show vault changes reaching it through the real triggers.",
    )
    return parser


def _group_args(parser: argparse.ArgumentParser, *, with_id: bool) -> None:
    parser.add_argument("--organization", required=True, help="Azure DevOps organization name")
    parser.add_argument("--project", required=True, help="project name")
    if with_id:
        parser.add_argument("--group-id", required=True, type=int, help="variable group id")
    else:
        parser.add_argument("--group", required=True, help="variable group name")


def _common(parser: argparse.ArgumentParser, *, force: bool) -> None:
    parser.add_argument("--dry-run", action="store_true", help="show the plan, write nothing (exit 2 if changes)")
    if force:
        parser.add_argument("--force", action="store_true", help="apply even beyond the mass-removal guard")
    parser.add_argument("--json", action="store_true", help="print JSON (the API's response shape)")


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command line; the exit code is returned, for ``sys.exit``.

    The ``kvlink`` console script (pyproject.toml) and ``python -m kvlink_core`` both call this with
    no arguments, so both behave the same, down to a reader leaving early.
    """
    err = err or sys.stderr
    if out is not None:
        return _main(argv, out, err)
    try:
        try:
            return _main(argv, sys.stdout, err)
        finally:
            # The process ends here: close the clients it opened, or aiohttp reports an "Unclosed client
            # session" on stderr at exit after every audit or sync.
            from .app import reset

            reset()
            sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below (--help exits through here too)
    except BrokenPipeError:
        # The reader went away (`kvlink links | head -1`): stop quietly, as Unix tools do; Python would
        # report the pipe again when it flushes stdout at exit, so point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def _prog() -> str:
    """How the user called kvlink, for usage lines: the installed command, or the module."""
    return "kvlink" if Path(sys.argv[0]).stem == "kvlink" else "python -m kvlink_core"


def _main(argv: Sequence[str] | None, out: TextIO, err: TextIO) -> int:
    parser = build_parser(_prog())
    try:
        args = parser.parse_args(argv)
    except UsageError as problem:
        return _usage(problem, err)
    with _logging(args.verbose, err):
        try:
            return _run(args, out, err)
        except UsageError as problem:
            problem.usage = problem.usage or _verb_parser(parser, args.verb).format_usage()
            return _usage(problem, err)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.verb == "demo":
        return _demo(err)
    commands: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
        "link": _link,
        "sync": lambda parsed, stdout: _sync(parsed, stdout, err),
        "links": _links,
        "unlink": _unlink,
        "audit": lambda parsed, stdout: _audit(parsed, stdout, err),
        "smoke": _smoke,
    }
    try:
        return commands[args.verb](args, out)
    except ConfigError as problem:
        print(f"error: {problem}", file=err)
    except RequestError as problem:
        print(f"error: {_flag_message(problem)}", file=err)
        if problem.details.get("plan"):
            _plan_table(problem.details["plan"], err)
        if problem.code == "MassRemovalRefused":  # kvlink looked: the drift is known and remains
            return EXIT_CHANGES
    except KvLinkError as problem:
        print(f"error: {problem}", file=err)
    return EXIT_ERROR


def _verb_parser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    for action in parser._actions:  # argparse keeps its subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[verb]
            return found
    return parser


def _usage(problem: UsageError, err: TextIO) -> int:
    if problem.usage:
        print(problem.usage.rstrip(), file=err)
    print(f"error: {problem}", file=err)
    return EXIT_USAGE


@contextlib.contextmanager
def _logging(verbosity: int, err: TextIO) -> Iterator[None]:
    """-v: kvlink's own decisions (INFO); -vv: kvlink at DEBUG and the SDKs' request logs (INFO).

    A handler of its own, removed afterwards (with the levels it set): main() may run many
    times in one process (tests), and never duplicates or leaks a handler.
    """
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    levels = {"": logging.WARNING, "kvlink_core": logging.WARNING, **dict.fromkeys(SDK_LOGGERS, logging.WARNING)}
    # Without -v, not the credential chain's many-line warning: kvlink's own error says it in one line.
    levels["azure.identity"] = logging.ERROR
    if verbosity >= 1:
        levels.update({"kvlink_core": logging.INFO, "azure.identity": logging.WARNING})
    if verbosity >= 2:
        levels.update({"kvlink_core": logging.DEBUG, **dict.fromkeys([*SDK_LOGGERS, "azure.identity"], logging.INFO)})
    loggers = {name: logging.getLogger(name or None) for name in levels}
    before = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(levels[name])
    root = loggers[""]
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for name, logger in loggers.items():
            logger.setLevel(before[name])


def _flag_message(problem: RequestError) -> str:
    """The error as the command line says it: ``--group-id``, not the API's ``groupId``."""
    message = str(problem)
    for field, flag in FLAGS.items():
        if field != field.lower():  # camelCase is never prose: always the field's name
            message = re.sub(rf"\b{field}\b", flag, message)
    if problem.field in FLAGS:
        field, flag = problem.field, FLAGS[problem.field]
        # "vault is required", "include needs ...": the field as the sentence's subject.
        message = re.sub(rf"^{re.escape(field)}(?= (is required|must|may|needs)\b)", flag, message)
        if not message.startswith(flag):
            message = f"{flag}: {message}"
    return message


def _request(build: Callable[[], Any]) -> Any:
    """Build a LinkRequest/SyncRequest from the flags: a value it refuses is a usage error."""
    try:
        return build()
    except RequestError as problem:
        raise UsageError(_flag_message(problem)) from None


# -- verbs ------------------------------------------------------------------------------------
def _link(args: argparse.Namespace, out: TextIO) -> int:
    from .app import get_engine
    from .linking import LinkRequest, link_group

    engine = get_engine()
    body: dict[str, Any] = {
        "organization": args.organization,
        "project": args.project,
        "group": args.group,
        "vault": args.vault,
        "serviceConnection": args.service_connection,
        "include": args.include or ["*"],
        "exclude": args.exclude,
        "tags": dict(_tag(t) for t in args.tag),
        "mode": args.mode,
        "keepExpired": not args.drop_expired,
        "dryRun": args.dry_run,
        "force": args.force,
    }
    request = _request(lambda: LinkRequest.from_json(body, engine.settings))
    result = link_group(engine, request, origin="cli")
    if args.json:
        print(json.dumps(result.as_json(), indent=2), file=out)
    else:
        link = result.link
        where = f"{link.organization}/{link.project}"
        group_id = "not created yet" if result.would_create else f"id {link.group_id}"
        print(
            f"group {link.group_name!r} ({where}, {group_id}) <- vault {link.vault}: {result.message()}",
            file=out,
        )
        _plan_table(result.plan.as_dict(), out)
    dry = args.dry_run or engine.settings.mode == "report"
    return EXIT_CHANGES if dry and result.plan.changed else EXIT_OK


def _sync(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .app import get_engine
    from .linking import SyncRequest, links_to_sync, sync

    if args.wait is None:
        args.wait = DEFAULT_JOB_WAIT
    elif not (args.queued or args.job is not None):
        raise UsageError("--wait goes with --async or --job: a plain sync runs here and waits for nothing")
    if args.wait <= 0:
        raise UsageError(f"--wait must be a positive number of seconds, not {args.wait:g}")
    if args.job is not None:
        others = [args.queued, args.vault, args.group_id is not None, args.organization, args.project]
        if any(others) or args.force or args.dry_run:
            raise UsageError("--job waits for a queued sync; it takes no other sync flag but --wait and --json")
        return _await_job(get_engine(), args.job, args, out, err)
    body = _sync_body(args)
    engine = get_engine()
    request = _request(lambda: SyncRequest.from_json(body, engine.settings))
    if args.queued:
        from . import jobs
        from .app import get_sync_queue

        links = links_to_sync(engine, request)
        job = jobs.submit(engine, get_sync_queue(), request, total=len(links), origin="cli")
        return _await_job(engine, job["id"], args, out, err)
    return _sync_result(sync(engine, request, origin="cli").as_json(), args, out)


def _await_job(engine: Any, job_id: str, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Poll a queued sync until it ends or ``--wait`` passes, one progress line on stderr per change."""
    from . import jobs

    started = _monotonic()
    shown = None
    while True:
        job = jobs.status(engine, job_id)
        elapsed = _monotonic() - started
        progress = job["progress"]
        line = f"sync job {job_id}: {job['status']}, {progress['done']}/{progress['total']} groups"
        if line != shown:
            print(f"{line} ({elapsed:.0f}s)", file=err)
            shown = line
        if job["status"] == "done":
            return _sync_result(job["result"], args, out)
        if job["status"] == "failed":
            error = job.get("error") or {}
            print(f"error: sync job {job_id} failed: {error.get('message', 'no reason recorded')}", file=err)
            return EXIT_CHANGES if error.get("code") == "MassRemovalRefused" else EXIT_ERROR
        if elapsed >= args.wait:
            print(
                f"error: sync job {job_id} is still {job['status']} after {elapsed:.0f}s (--wait); it goes on: "
                f"wait again with `python -m kvlink_core sync --job {job_id}`, or GET /api/sync/{job_id}; "
                "if it stays queued, check that the function app runs and run_sync_job is listed",
                file=err,
            )
            return EXIT_ERROR
        _sleep(min(JOB_POLL, max(args.wait - elapsed, 0.0)))


def _sync_result(result: dict[str, Any], args: argparse.Namespace, out: TextIO) -> int:
    """Print a sync's answer (POST /api/sync's 200 body) and pick the exit code."""
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        for entry in result["groups"]:
            link = entry["link"]
            line = f"{link['organization']}/{link['project']} group {link['group']!r} (id {link['groupId']}): "
            message = entry.get("message")
            print(line + entry["outcome"] + (f" -- {message}" if message else ""), file=out)
            if "plan" in entry:
                _plan_table(entry["plan"], out)
    statuses = {g["outcome"] for g in result["groups"]}
    if "failed" in statuses:
        return EXIT_ERROR
    # Refused by the mass-removal guard, or the group changed under kvlink: the drift remains.
    if statuses & {"refused", "group-missing", "not-key-vault", "vault-changed"}:
        return EXIT_CHANGES
    changes = any((g.get("plan") or {}).get("add") or (g.get("plan") or {}).get("remove") for g in result["groups"])
    return EXIT_CHANGES if result["dryRun"] and changes else EXIT_OK


def _sync_body(args: argparse.Namespace) -> dict[str, Any]:
    """``--vault`` alone, or ``--group-id`` with ``--organization`` and ``--project``: never a flag ignored."""
    body: dict[str, Any] = {"dryRun": args.dry_run, "force": args.force}
    by_group = [flag for flag, value in _group_flags(args) if value is not None]
    if args.vault is not None:
        conflicting = (["--group-id"] if args.group_id is not None else []) + by_group
        if conflicting:
            raise UsageError(
                f"--vault syncs every group linked to the vault; {', '.join(conflicting)} cannot go with it"
            )
        body["vault"] = args.vault
        return body
    if args.group_id is None:
        if by_group:
            raise UsageError(f"{', '.join(by_group)} name one group only with --group-id; or give --vault instead")
        raise UsageError("give --vault, or --group-id with --organization and --project")
    missing = [flag for flag, value in _group_flags(args) if value is None]
    if missing:
        raise UsageError(f"--group-id needs {' and '.join(missing)}")
    body.update(organization=args.organization, project=args.project, groupId=args.group_id)
    return body


def _group_flags(args: argparse.Namespace) -> list[tuple[str, Any]]:
    return [("--organization", args.organization), ("--project", args.project)]


def _links(args: argparse.Namespace, out: TextIO) -> int:
    from .app import get_engine
    from .linking import link_json, list_links

    if args.links_verb is not None:
        given = [flag for flag, on in (("--vault", args.vault), ("--organization", args.organization)) if on]
        if args.json:  # `links import FILE --json` takes its own
            given.append("--json")
        if given:
            hint = " (`links export --vault V --organization O` filters)" if args.links_verb == "export" else ""
            raise UsageError(f"{', '.join(given)} before `{args.links_verb}` belong to `links` alone{hint}")
        return _export(args, out) if args.links_verb == "export" else _import(args, out)

    found = list_links(get_engine(), vault=args.vault, organization=args.organization)
    if args.json:
        print(json.dumps({"links": [link_json(link) for link in found]}, indent=2), file=out)
        return EXIT_OK
    if not found:
        print("no links", file=out)
    for link in found:
        policy = link.policy
        rules = f"{link.kind}, {policy.mode}, include {','.join(policy.include)}"
        if policy.exclude:
            rules += f", exclude {','.join(policy.exclude)}"
        where = f"{link.organization}/{link.project}"
        print(f"{where} group {link.group_name!r} (id {link.group_id}) <- {link.vault}  [{rules}]", file=out)
    return EXIT_OK


def _export(args: argparse.Namespace, out: TextIO) -> int:
    from .app import get_engine
    from .linking import export_links

    if args.file:
        _check_writable(args.file, "--file")
    found = export_links(get_engine(), vault=args.export_vault, organization=args.export_organization)
    text = json.dumps(found, indent=2) + "\n"
    if not args.file:
        out.write(text)
        return EXIT_OK
    try:
        args.file.write_text(text, encoding="utf-8")
    except OSError as problem:  # checked before; the disk may still fill up
        raise KvLinkError(f"--file: could not write {args.file}: {problem.strerror or problem}") from None
    return EXIT_OK


def _import(args: argparse.Namespace, out: TextIO) -> int:
    from .app import get_engine
    from .linking import import_links, parse_links

    source = str(args.file)
    try:
        text = sys.stdin.read() if source == "-" else args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise UsageError(f"{source}: cannot read it: {getattr(problem, 'strerror', None) or problem}") from None
    try:
        document = json.loads(text)
    except ValueError as problem:
        raise UsageError(f"{source}: not JSON ({problem})") from None
    engine = get_engine()
    try:
        links = parse_links(document, engine.settings)
    except RequestError as problem:  # nothing is written until every entry is good
        raise UsageError(f"{source}: {problem}") from None
    result = import_links(engine, links, dry_run=args.dry_run)
    if args.import_json:
        print(json.dumps(result.as_json(), indent=2), file=out)
    else:
        verb = "would be " if args.dry_run else ""
        for sign, state, found in (("+", "created", result.created), ("~", "updated", result.updated)):
            for link in found:
                where = f"{link.organization}/{link.project} group {link.group_name!r} (id {link.group_id})"
                print(f"  {sign} {where} <- {link.vault}: {verb}{state}", file=out)
        print(
            f"{'dry run: ' if args.dry_run else ''}{_plural(len(links), 'link')}: {len(result.created)} "
            f"{verb}created, {len(result.updated)} {verb}updated, {len(result.unchanged)} already registered",
            file=out,
        )
    return EXIT_CHANGES if args.dry_run and result.changed else EXIT_OK


def _unlink(args: argparse.Namespace, out: TextIO) -> int:
    from .app import get_engine
    from .linking import link_json, unlink

    link = unlink(get_engine(), args.organization, args.project, args.group_id)
    if args.json:
        print(json.dumps({"unlinked": link_json(link)}, indent=2), file=out)
    else:
        print(
            f"unlinked group {link.group_name!r} (id {link.group_id}); its names are unchanged "
            "(kvlink's marker is out of its description)",
            file=out,
        )
    return EXIT_OK


def _audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .app import get_engine
    from .audit import run_audit

    if args.html:
        _check_writable(args.html, "--html")
    engine = get_engine()
    dry_run = args.dry_run or engine.settings.mode == "report"
    _audit_preamble(engine, dry_run=dry_run, reason="--dry-run" if args.dry_run else "KVLINK_MODE=report", err=err)
    bar = None
    if not args.json and err.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="group", desc="auditing", file=err, leave=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = max(total, done)
            bar.update(done - bar.n)

    stored = not args.dry_run
    try:
        report = run_audit(engine, dry_run=args.dry_run, store=stored, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2), file=out)
    else:
        _findings_table(report, out)
    if report.store_error:
        print(f"warning: the report could not be stored: {report.store_error}", file=err)
    code = _audit_exit(report)
    if args.html:
        from .app import report_page

        page = report_page(engine, unsaved=None if stored else report)
        try:
            args.html.write_text(page, encoding="utf-8")
        except OSError as problem:  # checked before the run; the disk may still fill up
            print(f"error: --html: could not write {args.html}: {problem.strerror or problem}", file=err)
            return EXIT_ERROR
        print(f"report page: {args.html.resolve()}", file=err if args.json else out)
    return code


def _smoke(args: argparse.Namespace, out: TextIO) -> int:
    from .credentials import get_credential
    from .devops import DevOps
    from .keyvault import CanaryVault
    from .names import check_vault
    from .settings import Settings
    from .smoke import Smoke, Target, parse_group

    group = parse_group(args.group)
    if group is None:
        raise UsageError(f"--group must be ORG/PROJECT/ID with the group's numeric id, not {args.group!r}")
    if problem := check_vault(args.vault):
        raise UsageError(f"--vault: {problem}")
    for flag, value in (("--appear-timeout", args.appear_timeout), ("--leave-timeout", args.leave_timeout)):
        if not value > 0:
            raise UsageError(f"{flag} must be a positive number of seconds, not {value:g}")
    if not 0 < args.poll <= 60:
        raise UsageError(f"--poll must be more than 0 and at most 60 seconds, not {args.poll:g}")
    organization, project, group_id = group
    # The operator's shell need not carry the app's allow-lists: the flags name the one vault and organization.
    env = dict(os.environ)
    for name, value in (("KVLINK_DEVOPS_ORGS", organization), ("KVLINK_ALLOWED_VAULTS", args.vault)):
        if not (env.get(name) or "").strip():
            env[name] = value
    settings = Settings.from_env(env)
    if not settings.vault_allowed(args.vault):
        raise UsageError(f"--vault {args.vault} is not in KVLINK_ALLOWED_VAULTS: the app would ignore its events")
    if not settings.org_allowed(organization):
        raise UsageError(f"organization {organization} is not in KVLINK_DEVOPS_ORGS: the app would not touch it")
    credential = get_credential(settings)
    vault = CanaryVault(settings, credential, args.vault)
    devops = DevOps(settings, None if settings.devops_pat else credential, attempts=3, retry_timeout=20.0)
    waits = Waits(appear=args.appear_timeout, leave=args.leave_timeout, purge=SMOKE_WAITS.purge, poll=args.poll)
    try:
        return Smoke(Target(args.vault, organization, project, group_id), vault, devops, out, waits=waits).run()
    finally:
        vault.close()
        devops.close()


# Findings that mean the audit could not see or could not write part of the estate.
_COULD_NOT = frozenset({"vault-unreadable", "write-failed"})


def _audit_exit(report: Any) -> int:
    """1 when part of the estate was not looked at (or not written), else 2 while drift remains."""
    if report.unreached or any(f.kind in _COULD_NOT for f in report.open_findings):
        return EXIT_ERROR
    return EXIT_CHANGES if report.drift_remains else EXIT_OK


def _check_writable(path: Path, flag: str) -> None:
    """Refuse an output file that cannot be written, before anything else is done."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{flag}: {path} is a directory; give a file name")
    if not folder.is_dir():
        raise UsageError(f"{flag}: directory {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag}: {path} is not writable")


def _audit_preamble(engine: Any, *, dry_run: bool, reason: str, err: TextIO) -> None:
    """Say what an applying audit will touch before it touches anything: it writes groups nobody linked."""
    settings = engine.settings
    if dry_run:
        print(f"kvlink audit: dry run ({reason}): nothing is written", file=err)
        return
    links = [link for link in engine.registry.list_links() if settings.org_allowed(link.organization)]
    linked = sum(1 for link in links if not link.prune_only)
    known = len(links) - linked
    if settings.devops_projects:
        projects = ", ".join(f"{org}/{project}" for org, project in settings.devops_projects)
        projects += " (KVLINK_DEVOPS_PROJECTS)"
    else:
        projects = "all (set KVLINK_DEVOPS_PROJECTS to limit them)"
    vaults = (
        "any (KVLINK_ALLOWED_VAULTS=*)"
        if settings.allowed_vaults is None
        else ", ".join(sorted(settings.allowed_vaults)) + " (KVLINK_ALLOWED_VAULTS)"
    )
    if settings.unlinked_groups == "prune":
        unlinked = "KVLINK_UNLINKED_GROUPS=prune: names of deleted or disabled secrets are removed, none are added"
    else:
        unlinked = "KVLINK_UNLINKED_GROUPS=ignore: left as they are, reported only"
    lines = [
        "kvlink audit: this run REPAIRS variable groups (writes); --dry-run or KVLINK_MODE=report only look",
        f"  organizations: {', '.join(settings.devops_orgs)}",
        f"  projects: {projects}",
        f"  vaults: {vaults}",
        f"  linked groups: {linked} in the registry, brought in step with their links' policies",
        f"  unlinked Key Vault groups on allowed vaults ({known} registered so far, more may be discovered): "
        f"{unlinked}",
    ]
    print("\n".join(lines), file=err)


def _pipelines_at_risk(finding: Any) -> str:
    """The count of pipelines a finding stops ("all" when any pipeline may use the group; "?" unknown)."""
    if finding.all_pipelines:
        return "all"
    if finding.pipelines_unknown and not finding.pipelines:
        return "?"
    from .audit import BREAKING

    return str(len(finding.pipelines)) if not finding.repaired and finding.kind in BREAKING else ""


def _findings_table(report: Any, out: TextIO) -> None:
    summary = report.summary()
    rows = []
    for f in report.findings:
        where = "/".join(str(p) for p in (f.organization, f.project, f.group) if p) or f.vault or ""
        detail = ("repaired: " if f.repaired else "") + f.message
        if f.pipelines_unknown:
            detail += f" ({f.pipelines_unknown})"
        rows.append((f.severity, f.kind, where, f.secret or "", _pipelines_at_risk(f), detail))
    if rows:
        header = ("SEVERITY", "FINDING", "GROUP", "SECRET", "PIPELINES")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  DETAIL", file=out)
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5], file=out)
    else:
        print("no findings", file=out)
    for what in summary["unreached"]:
        print(f"not reached: {what}", file=out)
    groups, names, counts = summary["groups"], summary["names"], summary["findingsBySeverity"]
    audited = _plural(groups["linked"] + groups["discovered"], "group")
    # Groups whose organization or project could not be read were not checked: say so beside the count.
    unchecked = f", {groups['unreached']} not reached" if groups.get("unreached") else ""
    print(
        f"{'dry run: ' if summary['dryRun'] else ''}{audited} ({groups['linked']} linked, {groups['discovered']} "
        f"discovered{unchecked}) over {_plural(summary['vaults'], 'vault')}; {groups['changed']} "
        f"{'to change' if summary['dryRun'] else 'changed'} "
        f"(+{names['added']} -{names['removed']}); findings: {_plural(counts['error'], 'error')}, "
        f"{_plural(counts['warning'], 'warning')}, {counts['info']} info; {summary['durationSeconds']}s",
        file=out,
    )


# -- output ------------------------------------------------------------------------------------
def _plan_table(plan: dict[str, Any], out: TextIO) -> None:
    rows = [("+", name) for name in plan.get("add", [])] + [("-", name) for name in plan.get("remove", [])]
    for sign, name in rows:
        print(f"    {sign} {name}", file=out)
    print(
        f"    ({len(plan.get('add', []))} to add, {len(plan.get('remove', []))} to remove, "
        f"{plan.get('unchanged', 0)} unchanged)",
        file=out,
    )


def _plural(count: int, noun: str, plural: str | None = None) -> str:
    """``1 vault``, ``2 vaults``, ``0 vaults``."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _tag(text: str) -> tuple[str, str | None]:
    key, sep, value = text.partition("=")
    return key, (value if sep else None)


def _demo(err: TextIO) -> int:
    # Imported here, never at the top: kvlink_core must work where the stand-ins are not installed.
    try:
        from standins.demo import run
    except ImportError as missing:
        name = missing.name or "a module"
        if name == "standins" or name.startswith("standins."):
            print(
                "error: the demo needs the stand-ins from the kvlink repository (standins/), which are not "
                "installed here; run it from a checkout of the repository: `make demo`",
                file=err,
            )
        else:
            print(
                f"error: the demo's stand-ins need {name}, which is not installed; "
                "run `make setup` (it installs requirements-dev.txt)",
                file=err,
            )
        return EXIT_ERROR
    return run()
