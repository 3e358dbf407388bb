"""``python -m kvlink_core``: the command line, over the same settings and core as the functions.

Exit codes: 0 success, 1 error (including refused or failed groups), 2 a dry run that
found changes to make -- so ``--dry-run`` can gate a pipeline.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .errors import ConfigError, KvLinkError, RequestError

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kvlink_core",
        description="Keep Azure DevOps variable groups linked to Azure Key Vault in step with the vault. "
        "Settings come from the environment (see the README); run `az login` first against real Azure.",
    )
    parser.add_argument("--version", action="version", version=f"kvlink {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what kvlink does (never values)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    link = verbs.add_parser("link", help="create or adopt a Key Vault group, link it, and fill it")
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

    sync = verbs.add_parser("sync", help="reconcile whole groups from a full listing of their vault")
    target = sync.add_mutually_exclusive_group(required=True)
    target.add_argument("--vault", help="every group linked to this vault")
    target.add_argument("--group-id", type=int, help="one group (with --organization and --project)")
    sync.add_argument("--organization", help="the group's organization (with --group-id)")
    sync.add_argument("--project", help="the group's project (with --group-id)")
    _common(sync, force=True)

    links = verbs.add_parser("links", help="list registered links")
    links.add_argument("--vault", help="only links to this vault")
    links.add_argument("--organization", help="only links in this organization")
    links.add_argument("--json", action="store_true", help="print JSON")

    unlink = verbs.add_parser("unlink", help="forget a link (the group itself is left as it is)")
    _group_args(unlink, with_id=True)
    unlink.add_argument("--json", action="store_true", help="print JSON")

    audit = verbs.add_parser("audit", help="reconcile every Key Vault group with its vault and report findings")
    audit.add_argument("--dry-run", action="store_true", help="plan and report only; write and store nothing")
    audit.add_argument("--json", action="store_true", help="print the report as JSON (no progress bar)")
    audit.add_argument(
        "--html",
        metavar="FILE",
        type=Path,
        help="also write the report page (the one GET /api/report serves) to FILE",
    )

    verbs.add_parser(
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
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=err,
    )
    # Without -v, not the credential chain's many-line warning: kvlink's own error says it in one line.
    logging.getLogger("azure.identity").setLevel(logging.NOTSET if args.verbose else logging.ERROR)
    if args.verb == "demo":
        return _demo(err)
    commands: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
        "link": _link,
        "sync": _sync,
        "links": _links,
        "unlink": _unlink,
        "audit": lambda parsed, stdout: _audit(parsed, stdout, err),
    }
    try:
        return commands[args.verb](args, out)
    except ConfigError as problem:
        print(f"error: {problem}", file=err)
    except RequestError as problem:
        where = f" ({problem.field})" if problem.field else ""
        print(f"error{where}: {problem}", file=err)
        if problem.details.get("plan"):
            _plan_table(problem.details["plan"], err)
    except KvLinkError as problem:
        print(f"error: {problem}", file=err)
    return EXIT_ERROR


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
    result = link_group(engine, LinkRequest.from_json(body, engine.settings), origin="cli")
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


def _sync(args: argparse.Namespace, out: TextIO) -> int:
    from .app import get_engine
    from .linking import SyncRequest, outcome_json, sync

    engine = get_engine()
    body: dict[str, Any] = {"dryRun": args.dry_run, "force": args.force}
    if args.vault:
        body["vault"] = args.vault
    else:
        if not (args.organization and args.project):
            raise RequestError(400, "InvalidField", "--group-id needs --organization and --project", field="group-id")
        body.update(organization=args.organization, project=args.project, groupId=args.group_id)
    result = sync(engine, SyncRequest.from_json(body, engine.settings), origin="cli")
    if args.json:
        print(json.dumps(result.as_json(), indent=2), file=out)
    else:
        for outcome in result.groups:
            entry = outcome_json(outcome)
            link = entry["link"]
            line = f"{link['organization']}/{link['project']} group {link['group']!r} (id {link['groupId']}): "
            print(line + outcome.status + (f" -- {outcome.message}" if outcome.message else ""), file=out)
            if "plan" in entry:
                _plan_table(entry["plan"], out)
    if any(g.status in ("refused", "failed") for g in result.groups):
        return EXIT_ERROR
    changes = any(g.plan is not None and g.plan.changed for g in result.groups)
    return EXIT_CHANGES if result.dry_run and changes else EXIT_OK


def _links(args: argparse.Namespace, out: TextIO) -> int:
    from .app import get_engine
    from .linking import link_json, list_links

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


def _unlink(args: argparse.Namespace, out: TextIO) -> int:
    from .app import get_engine
    from .linking import link_json, unlink

    link = unlink(get_engine(), args.organization, args.project, args.group_id)
    if args.json:
        print(json.dumps({"unlinked": link_json(link)}, indent=2), file=out)
    else:
        print(
            f"unlinked group {link.group_name!r} (id {link.group_id}); the group itself is unchanged",
            file=out,
        )
    return EXIT_OK


def _audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .app import get_engine
    from .audit import run_audit

    engine = get_engine()
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
    if args.html:
        from .app import report_page

        page = report_page(engine, unsaved=None if stored else report)
        args.html.write_text(page, encoding="utf-8")
        print(f"report page: {args.html.resolve()}", file=err if args.json else out)
    return EXIT_CHANGES if report.drift_remains else EXIT_OK


def _findings_table(report: Any, out: TextIO) -> None:
    summary = report.summary()
    rows = []
    for f in report.findings:
        where = "/".join(str(p) for p in (f.organization, f.project, f.group) if p) or f.vault or ""
        detail = ("repaired: " if f.repaired else "") + f.message
        rows.append((f.severity, f.kind, where, f.secret or "", detail))
    if rows:
        header = ("SEVERITY", "FINDING", "GROUP", "SECRET")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  DETAIL", file=out)
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4], file=out)
    else:
        print("no findings", file=out)
    for what in summary["unreached"]:
        print(f"not reached: {what}", file=out)
    groups, names, counts = summary["groups"], summary["names"], summary["findingsBySeverity"]
    print(
        f"{'dry run: ' if summary['dryRun'] else ''}{groups['linked']} linked and {groups['discovered']} "
        f"discovered groups over {summary['vaults']} vaults; {groups['changed']} changed "
        f"(+{names['added']} -{names['removed']}); findings: {counts['error']} errors, "
        f"{counts['warning']} warnings, {counts['info']} info; {summary['durationSeconds']}s",
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
