"""kvlink's own state in Azure Table storage: links, per-group leases, pending work.

* **links** -- partition = vault, so an event finds every affected group in one query.
* **leases** -- one entity per group (or vault), created, renewed, taken over (once
  ExpiresAt has passed) and deleted with ETag matches. Releasing only succeeds if the ETag
  is unchanged, which is how a holder learns that someone queued work meanwhile. *Who*
  may write and *when* is decided in :mod:`kvlink_core.leases`; this module stores the rows.
* **pending** -- append-only observations of secrets, queued for a group (or vault) whose
  lease is busy; the holder folds them into its next write, so a burst of events costs a
  few group writes instead of one read-modify-write each.
* **vault work** -- secrets the diagnostic-log path must still decide, written before it acts.
* **audit** -- the last 30 audit runs: summary, findings and per-group summaries.
* **jobs** -- queued syncs (``POST /api/sync`` answered 202): request, state, progress, result.

This is the only module that imports ``azure.data.tables``.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import TransientError
from .model import SYSTEM_CLOCK, Clock, GroupKey, LeaseKey, Link, Policy, SecretState, VaultKey, parse_timestamp
from .tls import azure_transport_options

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.transport import HttpRequest, HttpResponse, RequestsTransport
    from azure.data.tables import TableClient, TableServiceClient

    from .settings import Settings

logger = logging.getLogger(__name__)

LINKS_TABLE = "kvlinklinks"
LEASES_TABLE = "kvlinkleases"
PENDING_TABLE = "kvlinkpending"
WORK_TABLE = "kvlinkvaultwork"
AUDIT_TABLE = "kvlinkaudit"
BROKEN_TABLE = "kvlinkbroken"  # groups announced as broken (kvlink.group.broken goes out once)
JOBS_TABLE = "kvlinkjobs"
KEEP_RUNS = 30
_BATCH = 100  # entities per Table transaction
_BATCH_BYTES = 3 * 1024 * 1024  # a transaction's estimated size; the limit is 4 MiB
_PART_CHARS = 30_000  # characters per report property: 60 KB in UTF-16, under the 64 KiB limit
_PARTS_PER_ROW = 15  # report properties per entity: 900 KB, under the 1 MiB limit
# The audit's memory of listing sizes, in the audit table beside the runs ("vaults" sorts after "findings|~").
_SIZES_PARTITION = "vaults"
REPORT_GROUPS_PER_ROW = 50  # group summaries per report row (~1 KiB each: well inside an entity's 1 MiB)
_REPORT_WRITERS = 4  # a report's transactions in flight at once
_SIZES_ROW = "pages"
_LOOK_UP = object()  # save_link: find the previous link first


class LeaseLostError(TransientError):
    """The lease expired and another instance took the group over."""


@dataclass(frozen=True, slots=True)
class Lease:
    key: LeaseKey
    owner: str
    etag: str
    renewed: float  # the clock's monotonic time just before the lease row was last written
    took_over: bool = False  # the previous holder died; its queued work may be waiting
    poked: bool = False  # somebody queued work since the holder last looked


@dataclass(frozen=True, slots=True)
class Observation:
    """A secret's state as read from Key Vault at ``at`` (ns since 1970)."""

    state: SecretState
    at: int = field(default_factory=time.time_ns)


@dataclass(frozen=True, slots=True)
class WorkRow:
    vault: str
    name: str
    etag: str
    queued_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PendingRow:
    row_key: str
    observation: Observation


@dataclass(frozen=True, slots=True)
class JobRow:
    """A queued sync as stored: ``status`` is queued, running, done or failed."""

    id: str
    status: str
    request: Mapping[str, Any]
    origin: str
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    done: int = 0
    total: int = 0
    error: Mapping[str, Any] | None = None
    http_status: int | None = None  # the status the synchronous answer would have had, when it failed


@dataclass(frozen=True, slots=True)
class LinkRecord:
    """A link with kvlink's last write of its group (see :func:`write_marker`), if any: the report page shows it."""

    link: Link
    last_change_at: datetime | None = None
    last_change_by: str | None = None  # event, log, api, cli or audit
    last_change: str | None = None  # "+N -M", or "created +N"


@dataclass(frozen=True, slots=True)
class StorageTimeouts:
    """How long Table storage may take, in seconds: set from what each call guards, never the SDK's.

    The SDK's own defaults would apply otherwise: azure-core's transport gives every attempt
    ``connection_timeout=300`` and ``read_timeout=300`` (``ConnectionConfiguration`` in
    azure/core/configuration.py, azure-core 1.41.0), and azure-data-tables' ``TablesRetryPolicy``
    gives an operation and its retries ``timeout=604800`` -- seven days (azure/data/tables/_policies.py,
    12.7.0). A storage account that accepts connections and then says nothing would hold an event's
    invocation until the host's functionTimeout (10 minutes) ends it. Do not remove these bounds.

    * ``connect``/``read`` bound one attempt: refused connections fail at once anyway; a silent
      account costs ``read`` per attempt.
    * ``call`` bounds one operation, its retries and their waits included: an event that meets a
      silent account answers (and is redelivered) well inside Event Grid's 30 s, and far inside
      one lease's life (60 s). Calls under a lease are cut further, to what is left of the lease.
    * ``scan`` bounds the audit's multi-request blocks (a report's transactions, a table scan).
    """

    connect: float = 3.0
    read: float = 8.0
    call: float = 12.0
    scan: float = 120.0


# The owners of the leases this process's holders hold now. A lease row owned by this process
# (host:pid:...) but not in here belongs to a holder that gave up -- typically because storage
# failed under it and the release failed too -- so nobody here will come back for its queue.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


def _process_prefix() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:"


# The deadline of the storage operation running on this thread (time.monotonic()); see _DeadlineTransport.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("kvlink_storage_deadline", default=None)


class Registry:
    def __init__(
        self,
        settings: Settings,
        credential: TokenCredential | None = None,
        *,
        lease_seconds: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
        client_options: Mapping[str, Any] | None = None,
        timeouts: StorageTimeouts = StorageTimeouts(),
    ) -> None:
        self._settings = settings
        self.timeouts = timeouts
        self._credential = credential
        self.lease_seconds = lease_seconds
        self.clock = clock  # stamps and judges ExpiresAt; the lease protocol shares it
        # e.g. raw_request_hook, so tests and benchmarks can count Table calls
        self._client_options = dict(client_options or {})
        self._service: TableServiceClient | None = None
        self._tables: dict[str, TableClient] = {}
        self._lock = threading.Lock()

    # -- links ---------------------------------------------------------------------
    def links_for_vault(self, vault: str) -> list[Link]:
        """Every link to one vault: a single partition query."""
        table = self._table(LINKS_TABLE)
        with self._storage("read links"):
            entities = table.query_entities("PartitionKey eq @pk", parameters={"pk": vault.lower()})
            return [_link_from(e) for e in entities]

    def list_links(self, *, vault: str | None = None, organization: str | None = None) -> list[Link]:
        if vault:
            links = self.links_for_vault(vault)
        else:
            table = self._table(LINKS_TABLE)
            with self._storage("read links"):
                links = [_link_from(e) for e in table.list_entities()]
        if organization:
            links = [link for link in links if link.organization.lower() == organization.lower()]
        return sorted(links, key=lambda link: (link.organization.lower(), link.vault, link.group_id))

    def link_records(self) -> list[LinkRecord]:
        """Every link with its last-change marker, in one table scan (the report page's groups)."""
        table = self._table(LINKS_TABLE)
        with self._storage("read links"):
            records = [
                LinkRecord(
                    _link_from(e),
                    parse_timestamp(e.get("LastChangeAt")),
                    str(e["LastChangeBy"]) if e.get("LastChangeBy") else None,
                    str(e["LastChange"]) if e.get("LastChange") else None,
                )
                for e in table.list_entities()
            ]
        return sorted(records, key=lambda r: (r.link.organization.lower(), r.link.vault, r.link.group_id))

    def find_link(self, key: GroupKey) -> Link | None:
        table = self._table(LINKS_TABLE)
        with self._storage("read links"):
            found = list(table.query_entities("RowKey eq @rk", parameters={"rk": _group_row(key)}))
        return _link_from(found[0]) if found else None

    def save_link(
        self,
        link: Link,
        *,
        previous: Link | object | None = _LOOK_UP,
        written: Mapping[str, Any] | None = None,
    ) -> None:
        """Create or replace a link; a group links to one vault, so an older link moves.

        Callers that already looked the link up (or just created the group) pass ``previous``;
        a caller that just wrote the group passes the write marker (see :func:`write_marker`).
        """
        from azure.data.tables import UpdateMode

        table = self._table(LINKS_TABLE)
        if previous is _LOOK_UP:
            previous = self.find_link(link.key)
        with self._storage("save link"):
            # MERGE keeps the write marker (LastChange*) of a link whose policy changes.
            table.upsert_entity({**_link_entity(link), **(written or {})}, mode=UpdateMode.MERGE)
            if isinstance(previous, Link) and previous.vault != link.vault.lower():
                table.delete_entity(previous.vault, _group_row(link.key))

    def delete_link(self, key: GroupKey) -> bool:
        link = self.find_link(key)
        if link is None:
            return False
        table = self._table(LINKS_TABLE)
        with self._storage("delete link"):
            table.delete_entity(link.vault, _group_row(key))
        return True

    def note_write(self, link: Link, *, origin: str, summary: str) -> None:
        """Record kvlink's last write of the group -- when, by which path, what -- for the report page."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        entity = {
            "PartitionKey": link.vault.lower(),
            "RowKey": _group_row(link.key),
            **write_marker(origin=origin, summary=summary),
        }
        table = self._table(LINKS_TABLE)
        with self._storage("note write"), contextlib.suppress(ResourceNotFoundError):
            table.update_entity(entity, mode=UpdateMode.MERGE)  # the link may be gone: nothing to note

    # -- leases --------------------------------------------------------------------
    @property
    def lease_margin(self) -> float:
        """A call under a lease ends this long before the lease would: other instances judge
        ExpiresAt by their own clocks, and a request may still be on its way when we give up."""
        return self.lease_seconds / 4

    def lease_budget(self, lease: Lease) -> float:
        """Seconds a storage call under ``lease`` may take: what is left of it before its margin.

        When that is spent the call still gets half the margin -- it ends before the lease could
        expire by anyone's clock, and its ETag condition makes it harmless if the lease was taken
        over meanwhile (a renewal then fails, and no group is written: see :mod:`kvlink_core.leases`).
        Never less than 2 s (or the call bound, if shorter): leases of a few seconds, on an injected
        clock, exist only in tests, and a storage round trip needs real time whatever that clock says.
        """
        left = lease.renewed + self.lease_seconds - self.clock.monotonic() - self.lease_margin
        return max(left, self.lease_margin / 2, min(self.timeouts.call, 2.0))

    def try_acquire(self, key: LeaseKey) -> Lease | None:
        """The group's lease, or None while someone else holds it."""
        table = self._table(LEASES_TABLE)
        owner = f"{_process_prefix()}{uuid.uuid4().hex[:8]}"
        with _HELD_LOCK:
            _HELD.add(owner)  # before the row exists: a holder is never mistaken for one that gave up
        try:
            lease = self._try_acquire(key, table, owner)
        except BaseException:
            self.forget(owner)  # a create whose answer was lost leaves a row nobody here holds
            raise
        if lease is None:
            self.forget(owner)
        return lease

    @staticmethod
    def forget(owner: str) -> None:
        """This process no longer holds the lease ``owner`` names (released, given up or lost)."""
        with _HELD_LOCK:
            _HELD.discard(owner)

    def lease_holder(self, key: LeaseKey) -> str | None:
        """Who holds the lease (its Owner), or None when it is absent or expired: one read."""
        from azure.core.exceptions import ResourceNotFoundError

        table = self._table(LEASES_TABLE)
        try:
            with self._storage("read lease"):
                current = table.get_entity(key.lease_partition, key.lease_row, select=["ExpiresAt", "Owner"])
        except ResourceNotFoundError:
            return None
        return None if _expired(current, self.clock.wall()) else str(current.get("Owner") or "")

    @staticmethod
    def given_up_here(owner: str) -> bool:
        """Whether ``owner`` is a holder of this process that gave up without releasing its lease."""
        with _HELD_LOCK:
            return owner.startswith(_process_prefix()) and owner not in _HELD

    def _try_acquire(self, key: LeaseKey, table: TableClient, owner: str) -> Lease | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        for _ in range(3):
            started = self.clock.monotonic()
            try:
                with self._storage("take lease"):
                    meta = table.create_entity(self._lease_entity(key, owner, poke=""))
                return Lease(key, owner, meta["etag"], started)
            except ResourceExistsError:
                pass
            try:
                with self._storage("read lease"):
                    current = table.get_entity(key.lease_partition, key.lease_row)
            except ResourceNotFoundError:
                continue  # released in between: try to create it again
            if not _expired(current, self.clock.wall()):
                return None
            started = self.clock.monotonic()
            try:
                with self._storage("take over lease"):
                    meta = table.update_entity(
                        self._lease_entity(key, owner, poke=current.get("PokeId", "")),
                        mode=UpdateMode.REPLACE,
                        etag=current.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
            except (ResourceModifiedError, ResourceNotFoundError):
                return None
            logger.warning("Took over the expired lease on group %s from %s", key, current.get("Owner"))
            return Lease(key, owner, meta["etag"], started, took_over=True)
        return None

    def refresh(self, lease: Lease) -> Lease:
        """Extend the lease; the result says whether work was queued since the last look."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        table = self._table(LEASES_TABLE)
        poked = lease.poked
        etag = lease.etag
        deadline = self.clock.monotonic() + self.lease_seconds / 3  # pokes may keep changing the ETag
        while self.clock.monotonic() < deadline:
            started = self.clock.monotonic()
            try:
                with self._storage("renew lease", within=self.lease_budget(lease)):
                    meta = table.update_entity(
                        self._lease_entity(lease.key, lease.owner, poke=""),
                        mode=UpdateMode.REPLACE,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                return replace(lease, etag=meta["etag"], renewed=started, poked=poked)
            except ResourceModifiedError:
                pass  # a poke (or a takeover): look at who holds it now
            except ResourceNotFoundError as err:
                raise LeaseLostError(f"the lease on group {lease.key} vanished") from err
            try:
                with self._storage("read lease", within=self.lease_budget(lease)):
                    current = table.get_entity(lease.key.lease_partition, lease.key.lease_row)
            except ResourceNotFoundError as err:
                raise LeaseLostError(f"the lease on group {lease.key} vanished") from err
            if current.get("Owner") != lease.owner:
                raise LeaseLostError(f"the lease on group {lease.key} expired and was taken over")
            poked = poked or bool(current.get("PokeId"))
            etag = str(current.metadata["etag"])
        raise LeaseLostError(f"could not renew the lease on group {lease.key}")

    def release(self, lease: Lease) -> bool:
        """Give the lease up. False when work was queued meanwhile: the holder must look again."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        table = self._table(LEASES_TABLE)
        try:
            with self._storage("release lease", within=self.lease_budget(lease)):
                table.delete_entity(
                    lease.key.lease_partition,
                    lease.key.lease_row,
                    etag=lease.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except ResourceModifiedError:
            return False
        except ResourceNotFoundError:
            pass
        self.forget(lease.owner)
        return True

    def release_quietly(self, lease: Lease) -> None:
        """Best effort on the way out of a failure; the lease expires anyway.

        All of it within half a call's bound: on a silent account the failure that brought us here
        was often a timeout, and waiting as long again for a release only delays the redelivery.
        """
        try:
            with self._deadline(min(self.timeouts.call / 2, self.lease_budget(lease))):
                if not self.release(lease):
                    fresh = self.refresh(lease)
                    self.release(fresh)
        except Exception:  # noqa: BLE001 -- never mask the failure that brought us here
            logger.warning("Could not release the lease on group %s; it expires by itself", lease.key)
        finally:
            self.forget(lease.owner)  # given up: a waiter here takes it over once it expires

    def poke(self, key: LeaseKey) -> bool:
        """Tell the current holder that work is queued. False when nobody holds the lease."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        table = self._table(LEASES_TABLE)
        entity = {"PartitionKey": key.lease_partition, "RowKey": key.lease_row, "PokeId": uuid.uuid4().hex}
        try:
            with self._storage("poke lease"):
                table.update_entity(entity, mode=UpdateMode.MERGE)  # If-Match: * -- 404 when absent
        except ResourceNotFoundError:
            return False
        return True

    def lease_free(self, key: LeaseKey) -> bool:
        """Whether nobody holds the group's lease (it is absent or expired): one read."""
        from azure.core.exceptions import ResourceNotFoundError

        table = self._table(LEASES_TABLE)
        try:
            with self._storage("read lease"):
                current = table.get_entity(key.lease_partition, key.lease_row, select=["ExpiresAt"])
        except ResourceNotFoundError:
            return True
        return _expired(current, self.clock.wall())

    def _lease_entity(self, key: LeaseKey, owner: str, *, poke: str) -> dict[str, Any]:
        return {
            "PartitionKey": key.lease_partition,
            "RowKey": key.lease_row,
            "Owner": owner,
            "ExpiresAt": self.clock.wall() + timedelta(seconds=self.lease_seconds),
            "PokeId": poke,
        }

    # -- pending work ----------------------------------------------------------------
    def add_pending(self, key: LeaseKey, observations: Iterable[Observation]) -> list[str]:
        """Queue observations for the group's lease holder; returns their row keys."""
        rows = [_pending_entity(key, o) for o in observations]
        table = self._table(PENDING_TABLE)
        with self._storage("queue work"):
            _in_batches(table, [("create", e) for e in rows])
        return [r["RowKey"] for r in rows]

    def pending(self, key: LeaseKey, *, within: float | None = None) -> list[PendingRow]:
        """The work queued for ``key``; a holder passes its lease's budget as ``within``."""
        table = self._table(PENDING_TABLE)
        with self._storage("read queued work", within=within):
            entities = list(table.query_entities("PartitionKey eq @pk", parameters={"pk": _queue(key)}))
        return [PendingRow(e["RowKey"], _observation_from(e)) for e in entities]

    def remove_pending(self, key: LeaseKey, rows: Iterable[PendingRow], *, within: float | None = None) -> None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import TableTransactionError

        table = self._table(PENDING_TABLE)
        keys = [r.row_key for r in rows]
        pk = _queue(key)
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start : start + _BATCH]
            try:
                with self._storage("clear queued work", within=within):
                    table.submit_transaction([("delete", {"PartitionKey": pk, "RowKey": rk}) for rk in chunk])
            except TableTransactionError:
                for rk in chunk:  # one row was already gone: delete the rest one by one
                    with self._storage("clear queued work", within=within), contextlib.suppress(ResourceNotFoundError):
                        table.delete_entity(pk, rk)

    def all_pending(self) -> dict[LeaseKey, list[PendingRow]]:
        """Every queue with work in it (one scan; normally all but empty)."""
        table = self._table(PENDING_TABLE)
        queues: dict[LeaseKey, list[PendingRow]] = {}
        with self._storage("read queued work", within=self.timeouts.scan):
            for entity in table.list_entities():
                key = _key_of_queue(entity["PartitionKey"])
                if key is not None:
                    queues.setdefault(key, []).append(PendingRow(entity["RowKey"], _observation_from(entity)))
        return queues

    def has_pending(self, key: LeaseKey, row_keys: Iterable[str]) -> bool:
        wanted = set(row_keys)
        return any(row.row_key in wanted for row in self.pending(key))

    # -- audit reports ---------------------------------------------------------------------
    def save_report(
        self,
        summary: Mapping[str, Any],
        findings: list[Mapping[str, Any]],
        groups: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """Store one audit run (summary, findings, per-group summaries) and keep only the newest runs.

        Group rows share the findings' partition (row keys ``g000000``...), so reading a run and
        pruning it stay one partition query each; each group row holds REPORT_GROUPS_PER_ROW group
        summaries in order ("Groups"; reports stored before hold one each, "Group"), since every
        entity of a transaction costs the client and the service far more than its bytes: one row
        per group made storing a large estate's report the last second of the audit. Each value is
        stored as JSON cut into parts that fit Table storage's limits (see :func:`_pack`); the run's
        own row is written last, so a reader never sees a run whose rows are not all there.
        """
        table = self._table(AUDIT_TABLE)
        run = _run_key(datetime.now(UTC))
        partition = f"findings|{run}"
        rows: list[dict[str, Any]] = []
        for i, value in enumerate(findings):
            rows += _report_rows(partition, f"{i:06d}", "Finding", value)
        listed = list(groups or [])
        for i in range(0, len(listed), REPORT_GROUPS_PER_ROW):
            rows += _report_rows(partition, f"g{i:06d}", "Groups", listed[i : i + REPORT_GROUPS_PER_ROW])
        head, *more = _pack("Summary", summary)  # what the run's row cannot hold goes beside the findings
        rows += [{"PartitionKey": partition, "RowKey": f"s.{n:04d}", **part} for n, part in enumerate(more, 1)]
        try:
            with self._storage("save audit findings", within=self.timeouts.scan):
                _in_report_transactions(table, rows)
            with self._storage("save audit summary"):
                table.create_entity(
                    {
                        "PartitionKey": "run",
                        "RowKey": run,
                        **head,
                        "SummaryRows": len(more),
                        "Findings": len(findings),
                        "Groups": len(groups or []),
                    }
                )
        except Exception:
            self._forget_rows(table, partition)
            raise
        self._prune_reports(table)
        return run

    def latest_report(self) -> dict[str, Any] | None:
        """The newest run's summary, findings and per-group summaries ("auditedGroups"); None before any audit."""
        runs = self.report_history(limit=1)
        if not runs:
            return None
        run = runs[0]
        table = self._table(AUDIT_TABLE)
        parts: dict[str, list[str]] = {}  # row key of a value's first row -> its JSON parts, in order
        kinds: dict[str, str] = {}
        with self._storage("read audit findings"):
            # Row keys sort, so findings come back in the audit's order (severity first), each
            # value's continuation rows ("000007.0001") right after its first row.
            for e in table.query_entities("PartitionKey eq @pk", parameters={"pk": f"findings|{run['run']}"}):
                key = e["RowKey"].partition(".")[0]
                for name in ("Finding", "Group", "Groups"):
                    if name in e:
                        kinds[key] = name
                        parts.setdefault(key, []).append(_joined(e, name))
        values = {key: json.loads("".join(texts)) for key, texts in parts.items()}
        findings = [value for key, value in values.items() if kinds[key] == "Finding"]
        groups = [
            group
            for key, value in values.items()
            if kinds[key] in ("Group", "Groups")
            for group in (value if kinds[key] == "Groups" else [value])
        ]
        return {**run, "findings": findings, "auditedGroups": groups}

    def report_history(self, *, limit: int = KEEP_RUNS) -> list[dict[str, Any]]:
        """Summaries of the newest runs, newest first."""
        table = self._table(AUDIT_TABLE)
        with self._storage("read audit runs"):
            entities = table.query_entities("PartitionKey eq 'run'", results_per_page=limit)
            runs = []
            for entity in entities:
                text = _joined(entity, "Summary")
                if entity.get("SummaryRows"):  # a summary too big for one row continues beside the findings
                    more = table.query_entities(
                        "PartitionKey eq @pk and RowKey gt 's' and RowKey lt 't'",
                        parameters={"pk": f"findings|{entity['RowKey']}"},
                    )
                    text += "".join(_joined(e, "Summary") for e in more)
                runs.append({"run": entity["RowKey"], **json.loads(text)})
                if len(runs) >= limit:
                    break
        return runs

    def _prune_reports(self, table: TableClient) -> None:
        with self._storage("prune audit runs", within=self.timeouts.scan):
            runs = [e["RowKey"] for e in table.query_entities("PartitionKey eq 'run'", select=["RowKey"])]
            if len(runs) < KEEP_RUNS:
                return
            for run in runs[KEEP_RUNS:]:
                table.delete_entity("run", run)
            # Newer runs have smaller keys: every findings partition after the oldest run kept is
            # a pruned run's, or one a failed save left behind.
            stale = table.query_entities(
                "PartitionKey gt @low and PartitionKey lt @high",
                parameters={"low": f"findings|{runs[KEEP_RUNS - 1]}", "high": "findings|~"},
                select=["PartitionKey", "RowKey"],
            )
            by_partition: dict[str, list[Any]] = {}
            for e in stale:
                by_partition.setdefault(e["PartitionKey"], []).append(("delete", dict(e)))
            for operations in by_partition.values():
                _in_batches(table, operations)

    def _forget_rows(self, table: TableClient, partition: str) -> None:
        """Best effort after a failed save: remove the rows already written (pruning catches any left)."""
        from azure.core.exceptions import AzureError

        try:
            # After a failed save (often a timeout): one call's bound, not another scan's.
            with self._deadline(self.timeouts.call):
                rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": partition}, select=["RowKey"])
                _in_batches(table, [("delete", {"PartitionKey": partition, "RowKey": e["RowKey"]}) for e in rows])
        except (AzureError, _OutOfTimeError) as err:
            logger.warning("Could not remove the rows of an audit report that failed to save: %s", type(err).__name__)

    # -- listing sizes (the audit starts its longest listings first) -----------------------------
    def vault_pages(self) -> dict[str, int]:
        """How many pages each vault's listing took in the last audit that stored them; {} before any."""
        from azure.core.exceptions import ResourceNotFoundError

        table = self._table(AUDIT_TABLE)
        try:
            with self._storage("read listing sizes"):
                entity = table.get_entity(_SIZES_PARTITION, _SIZES_ROW)
        except ResourceNotFoundError:
            return {}
        return {str(vault): int(pages) for vault, pages in json.loads(_joined(entity, "Pages")).items()}

    def save_vault_pages(self, pages: Mapping[str, int]) -> None:
        """Remember each vault's page count for the next audit (one entity; the largest vaults if it overflows)."""
        from azure.data.tables import UpdateMode

        ordered = sorted(pages.items(), key=lambda item: (-item[1], item[0]))
        rows = _pack("Pages", dict(ordered))
        while len(rows) > 1:  # beyond ~40,000 vaults: keep the largest, the ones whose order matters
            ordered = ordered[: len(ordered) * 9 // 10]
            rows = _pack("Pages", dict(ordered))
        table = self._table(AUDIT_TABLE)
        with self._storage("save listing sizes"):
            table.upsert_entity(
                {"PartitionKey": _SIZES_PARTITION, "RowKey": _SIZES_ROW, **rows[0]},
                mode=UpdateMode.REPLACE,
            )

    # -- vault work (diagnostic-log path) -------------------------------------------------
    def add_vault_work(self, vault: str, names: Iterable[str]) -> None:
        """Remember that these secrets need a decision, before acting: Event Hubs checkpoints the
        batch even when the function fails, so this row is what survives a failure."""
        from azure.data.tables import UpdateMode

        table = self._table(WORK_TABLE)
        rows = [
            {
                "PartitionKey": vault.lower(),
                "RowKey": name.lower(),
                "Name": name,
                "QueuedAt": datetime.now(UTC),
            }
            for name in names
        ]
        with self._storage("queue vault work"):
            _in_batches(table, [("upsert", e, {"mode": UpdateMode.REPLACE}) for e in rows])

    def vault_work(self) -> dict[str, list[WorkRow]]:
        """Everything still to decide, by vault -- this batch's and what earlier failures left."""
        table = self._table(WORK_TABLE)
        work: dict[str, list[WorkRow]] = {}
        with self._storage("read vault work"):
            for entity in table.list_entities():
                row = WorkRow(
                    entity["PartitionKey"],
                    str(entity["Name"]),
                    str(entity.metadata["etag"]),
                    parse_timestamp(entity.get("QueuedAt")),
                )
                work.setdefault(row.vault, []).append(row)
        return work

    def remove_vault_work(self, rows: Iterable[WorkRow]) -> None:
        """Clear decided rows; a row queued again meanwhile (new ETag) stays for the next run."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        table = self._table(WORK_TABLE)
        for row in rows:
            with (
                self._storage("clear vault work"),
                contextlib.suppress(ResourceModifiedError, ResourceNotFoundError),
            ):
                table.delete_entity(
                    row.vault, row.name.lower(), etag=row.etag, match_condition=MatchConditions.IfNotModified
                )

    # -- broken groups (announced once) ------------------------------------------------
    def broken_groups(self) -> set[GroupKey]:
        """The groups already announced as broken and not seen healthy since."""
        table = self._table(BROKEN_TABLE)
        with self._storage("read broken groups"):
            return {
                GroupKey(e["PartitionKey"], int(e["RowKey"]))
                for e in table.list_entities(select=["PartitionKey", "RowKey"])
            }

    def note_broken(self, broken: Iterable[GroupKey], healed: Iterable[GroupKey]) -> None:
        """Remember newly broken groups; forget healed ones, so that breaking again is news."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        table = self._table(BROKEN_TABLE)
        now = datetime.now(UTC)
        with self._storage("record broken groups", within=self.timeouts.scan):
            for key in broken:
                entity = {"PartitionKey": key.organization, "RowKey": str(key.group_id), "Since": now}
                table.upsert_entity(entity, mode=UpdateMode.REPLACE)
            for key in healed:
                with contextlib.suppress(ResourceNotFoundError):
                    table.delete_entity(key.organization, str(key.group_id))

    # -- queued syncs ---------------------------------------------------------------------
    def create_job(self, job_id: str, request: Mapping[str, Any], *, origin: str, total: int) -> None:
        """The job's row, written before its queue message is sent: the request survives any instance."""
        now = datetime.now(UTC)
        entity = {
            "PartitionKey": "job",
            "RowKey": job_id,
            "Status": "queued",
            "Request": json.dumps(request),
            "Origin": origin,
            "CreatedAt": now,
            "UpdatedAt": now,
            "Attempts": 0,
            "Done": 0,
            "Total": total,
        }
        with self._storage("record a queued sync"):
            self._table(JOBS_TABLE).create_entity(entity)

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Merge ``Status``, ``StartedAt``, ``Attempts``, ``Done``... into the job's row (``UpdatedAt`` = now)."""
        from azure.data.tables import UpdateMode

        entity: dict[str, Any] = {"PartitionKey": "job", "RowKey": job_id, "UpdatedAt": datetime.now(UTC)}
        for name, value in fields.items():
            entity[name] = json.dumps(value) if name == "Error" else value
        with self._storage("update a queued sync"):
            self._table(JOBS_TABLE).upsert_entity(entity, mode=UpdateMode.MERGE)

    def job(self, job_id: str) -> JobRow | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            with self._storage("read a queued sync"):
                e = self._table(JOBS_TABLE).get_entity("job", job_id)
        except ResourceNotFoundError:
            return None
        return JobRow(
            id=job_id,
            status=str(e["Status"]),
            request=json.loads(e["Request"]),
            origin=str(e.get("Origin") or "api"),
            created_at=parse_timestamp(e.get("CreatedAt")),
            updated_at=parse_timestamp(e.get("UpdatedAt")),
            started_at=parse_timestamp(e.get("StartedAt")),
            finished_at=parse_timestamp(e.get("FinishedAt")),
            attempts=int(e.get("Attempts") or 0),
            done=int(e.get("Done") or 0),
            total=int(e.get("Total") or 0),
            error=json.loads(e["Error"]) if e.get("Error") else None,
            http_status=int(e["HttpStatus"]) if e.get("HttpStatus") else None,
        )

    def save_job_result(self, job_id: str, result: Any) -> None:
        """The finished sync's answer, in rows of its own partition (any size); written before ``done``."""
        table = self._table(JOBS_TABLE)
        partition = f"result|{job_id}"
        rows = _report_rows(partition, "r", "Result", result)
        with self._storage("save a queued sync's result", within=self.timeouts.scan):
            # A job redone after its worker died may have left rows of an earlier answer: none may stay.
            old = table.query_entities("PartitionKey eq @pk", parameters={"pk": partition}, select=["RowKey"])
            _in_batches(table, [("delete", {"PartitionKey": partition, "RowKey": e["RowKey"]}) for e in old])
            _in_report_transactions(table, rows)

    def job_result(self, job_id: str) -> Any:
        table = self._table(JOBS_TABLE)
        with self._storage("read a queued sync's result"):
            rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": f"result|{job_id}"})
            text = "".join(_joined(e, "Result") for e in rows)  # row keys sort: r, r.0001, ...
        return json.loads(text) if text else None

    # -- plumbing --------------------------------------------------------------------
    def _table(self, name: str) -> TableClient:
        table = self._tables.get(name)
        if table is not None:
            return table
        # One call's bound for waiting *and* opening: on a silent account, the threads of a burst
        # queued behind the first would otherwise each wait out a bound of their own, one by one.
        started = time.monotonic()
        if not self._lock.acquire(timeout=self.timeouts.call):
            raise TransientError("Table storage unavailable (open table): still opening it", system="storage")
        try:
            table = self._tables.get(name)
            if table is None:
                service = self._service_client()
                with self._storage("open table", within=self.timeouts.call - (time.monotonic() - started)):
                    table = service.create_table_if_not_exists(name)
                self._tables[name] = table
            return table
        finally:
            self._lock.release()

    def _service_client(self) -> TableServiceClient:
        if self._service is None:
            from azure.data.tables import TableServiceClient

            storage = self._settings.storage
            options: dict[str, Any] = {
                "retry_total": 3,
                "retry_backoff_factor": 0.4,
                "retry_backoff_max": 2.0,  # a wait is cut at the deadline anyway; keep it short
                "transport": self.transport(),
                **self._client_options,
            }
            if storage.connection_string:
                self._service = TableServiceClient.from_connection_string(storage.connection_string, **options)
            else:
                assert storage.table_endpoint is not None
                assert self._credential is not None
                self._service = TableServiceClient(storage.table_endpoint, credential=self._credential, **options)
        return self._service

    def transport(self) -> _DeadlineTransport:
        """The transport every Table call goes through: the attempt bounds set, the operation's deadline kept.

        Built here, not left to the client: azure-core applies a client's ``connection_timeout`` and
        ``read_timeout`` only to a transport it builds itself.
        """
        from azure.core.pipeline.transport import RequestsTransport

        inner = RequestsTransport(
            connection_timeout=self.timeouts.connect,
            read_timeout=self.timeouts.read,
            use_env_settings=azure_transport_options(None)["use_env_settings"],
        )
        return _DeadlineTransport(inner)

    @contextlib.contextmanager
    def _deadline(self, within: float | None = None) -> Iterator[None]:
        """Every Table request on this thread inside the block ends within ``within`` seconds (the
        call bound when None); a block inside another keeps the outer, earlier deadline too."""
        bound = self.timeouts.call if within is None else within
        deadline = time.monotonic() + bound
        outer = _deadline.get()
        token = _deadline.set(deadline if outer is None else min(outer, deadline))
        try:
            yield
        finally:
            _deadline.reset(token)

    @contextlib.contextmanager
    def _storage(self, action: str, *, within: float | None = None) -> Iterator[None]:
        """One storage operation within its deadline (``within`` seconds, else the call bound);
        Table storage being unreachable, silent or throttled is transient; everything else propagates."""
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        try:
            with self._deadline(within):
                yield
        except _OutOfTimeError as err:
            raise TransientError(
                f"Table storage unavailable ({action}): no answer in time ({err})", system="storage"
            ) from err
        except (ServiceRequestError, ServiceResponseError) as err:
            raise TransientError(
                f"Table storage unavailable ({action}): {type(err).__name__}", system="storage"
            ) from err
        except HttpResponseError as err:
            status = getattr(err, "status_code", None)
            if status is not None and (status in (408, 429) or status >= 500):
                raise TransientError(
                    f"Table storage answered HTTP {status} ({action})", system="storage", status=status
                ) from err
            raise

    def close(self) -> None:
        with self._lock:
            for table in self._tables.values():
                table.close()
            self._tables.clear()
            if self._service is not None:
                self._service.close()
                self._service = None


class _OutOfTimeError(Exception):
    """The storage operation's deadline passed. Not an AzureError on purpose: the SDK's retry policy
    lets it through at once instead of counting it and sleeping before the next refused attempt."""


class _DeadlineTransport:
    """azure-core's requests transport, held to the deadline of the operation running on this thread.

    Each attempt gets the configured connect/read timeouts cut to what is left of the deadline; an
    attempt is not started (and a retry's wait not slept) past it. azure-data-tables' retry policy
    bounds only the connect phase by its ``timeout``, so a read on a silent connection would
    otherwise run its full read timeout again after the operation's time is up.
    """

    def __init__(self, inner: RequestsTransport) -> None:
        self.inner = inner

    @property
    def connection_config(self) -> Any:
        return self.inner.connection_config

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponse:
        deadline = _deadline.get()
        if deadline is None:
            response: HttpResponse = self.inner.send(request, **kwargs)
            return response
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError

        left = deadline - time.monotonic()
        if left <= 0:
            raise _OutOfTimeError("not sent")
        config = self.inner.connection_config
        kwargs["connection_timeout"] = min(kwargs.get("connection_timeout") or config.timeout, left)
        kwargs["read_timeout"] = min(kwargs.get("read_timeout") or config.read_timeout, left)
        try:
            response = self.inner.send(request, **kwargs)
        except (ServiceRequestError, ServiceResponseError) as err:
            if time.monotonic() >= deadline:
                # No attempt can follow: end the operation now, not after the retry policy's backoff.
                raise _OutOfTimeError(type(err).__name__) from err
            raise
        return response

    def sleep(self, duration: float) -> None:
        deadline = _deadline.get()
        if deadline is not None:
            duration = min(duration, max(0.0, deadline - time.monotonic()))
        time.sleep(duration)

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> _DeadlineTransport:
        self.inner.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        self.inner.__exit__(*args)


def write_marker(*, origin: str, summary: str) -> dict[str, Any]:
    """The fields recording kvlink's last write of a group (kept in its link entity)."""
    return {"LastChangeAt": datetime.now(UTC), "LastChangeBy": origin, "LastChange": summary}


def _run_key(moment: datetime) -> str:
    """Row keys sort ascending, so newer runs get smaller keys: newest first in every query."""
    return f"{10**13 - int(moment.timestamp() * 1000):013d}-{uuid.uuid4().hex[:6]}"


def _queue(key: LeaseKey) -> str:
    """The partition of a lease's queued work ("org|id" for a group, "~vault|name" for a vault)."""
    return f"{key.lease_partition}|{key.lease_row}"


def _key_of_queue(partition: str) -> LeaseKey | None:
    first, _, second = partition.partition("|")
    if first == VaultKey("").lease_partition:
        return VaultKey(second)
    return GroupKey(first, int(second)) if second.isdigit() else None


def _group_row(key: GroupKey) -> str:
    return f"{key.organization}|{key.group_id}"


def _link_entity(link: Link) -> dict[str, Any]:
    policy = link.policy
    return {
        "PartitionKey": link.vault.lower(),
        "RowKey": _group_row(link.key),
        "Organization": link.organization,
        "Project": link.project,
        "GroupId": link.group_id,
        "GroupName": link.group_name,
        "Vault": link.vault.lower(),
        "Include": json.dumps(list(policy.include)),
        "Exclude": json.dumps(list(policy.exclude)),
        "Tags": json.dumps(dict(policy.tags)),
        "KeepExpired": policy.keep_expired,
        "Mode": policy.mode,
        "Kind": link.kind,
        "UpdatedAt": datetime.now(UTC),
    }


def _link_from(entity: Mapping[str, Any]) -> Link:
    policy = Policy(
        include=tuple(json.loads(entity.get("Include") or '["*"]')),
        exclude=tuple(json.loads(entity.get("Exclude") or "[]")),
        tags=tuple(sorted(json.loads(entity.get("Tags") or "{}").items())),
        keep_expired=bool(entity.get("KeepExpired", True)),
        mode="mirror" if entity.get("Mode") == "mirror" else "merge",
    )
    return Link(
        organization=str(entity["Organization"]),
        project=str(entity["Project"]),
        group_id=int(entity["GroupId"]),
        group_name=str(entity.get("GroupName") or ""),
        vault=str(entity["Vault"]),
        policy=policy,
        kind="discovered" if entity.get("Kind") == "discovered" else "linked",
    )


def _pending_entity(key: LeaseKey, observation: Observation) -> dict[str, Any]:
    state = observation.state
    # Row keys sort by secret, then by observation time; the random tail keeps them unique.
    row = f"{state.key}|{observation.at:020d}|{uuid.uuid4().hex[:8]}"
    return {
        "PartitionKey": _queue(key),
        "RowKey": row,
        "Name": state.name,
        "Exists": state.exists,
        "Enabled": state.enabled,
        "ContentType": state.content_type or "",
        "Expires": state.expires.isoformat() if state.expires else "",
        "Tags": json.dumps(dict(state.tags)),
        "Managed": state.managed,
        "ObservedAt": str(observation.at),
    }


def _observation_from(entity: Mapping[str, Any]) -> Observation:
    state = SecretState(
        name=str(entity["Name"]),
        exists=bool(entity.get("Exists")),
        enabled=bool(entity.get("Enabled")),
        content_type=entity.get("ContentType") or None,
        expires=parse_timestamp(entity.get("Expires")),
        tags=json.loads(entity.get("Tags") or "{}"),
        managed=bool(entity.get("Managed")),
    )
    return Observation(state, int(entity.get("ObservedAt") or 0))


def _expired(lease: Mapping[str, Any], now: datetime) -> bool:
    expires = parse_timestamp(lease.get("ExpiresAt"))
    return expires is None or expires <= now


def _pack(name: str, value: Any) -> list[dict[str, str]]:
    """``value`` as JSON in properties ``name``, ``name_1``... of one or more rows.

    A property holds at most 64 KiB (32K UTF-16 units) and an entity 1 MiB. ``json.dumps``
    escapes every non-ASCII character, so one character is one UTF-16 unit.
    """
    text = json.dumps(value)
    parts = [text[i : i + _PART_CHARS] for i in range(0, len(text), _PART_CHARS)]
    return [
        {(name if n == 0 else f"{name}_{n}"): part for n, part in enumerate(parts[i : i + _PARTS_PER_ROW])}
        for i in range(0, len(parts), _PARTS_PER_ROW)
    ]


def _report_rows(partition: str, key: str, name: str, value: Any) -> list[dict[str, Any]]:
    """The rows of one stored value: ``key``, then ``key.0001``... (they sort right after it)."""
    return [
        {"PartitionKey": partition, "RowKey": key if n == 0 else f"{key}.{n:04d}", **properties}
        for n, properties in enumerate(_pack(name, value))
    ]


def _joined(entity: Mapping[str, Any], name: str) -> str:
    """The JSON text a row holds in ``name``, ``name_1``... (one property in reports stored before parts)."""
    parts: list[str] = []
    for n in itertools.count():
        part = entity.get(name if n == 0 else f"{name}_{n}")
        if part is None:
            return "".join(parts)
        parts.append(part)
    raise AssertionError("unreachable")


def _in_report_transactions(table: TableClient, rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
    """Create rows of one partition in transactions within both limits: 100 entities and 4 MiB.

    The transactions create distinct rows, so they go a few at once: a large estate's report is a
    dozen of them, one round trip each, at the end of the audit's critical path.
    """
    batches: list[list[Any]] = [[]]
    size = 0
    for row in rows:
        # On the wire, JSON escaping can double a string (quotes, backslashes): count it twice.
        row_size = 1024 + sum(2 * len(v) for v in row.values() if isinstance(v, str))
        if batches[-1] and (len(batches[-1]) == _BATCH or size + row_size > _BATCH_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(("create", row))
        size += row_size
    batches = [batch for batch in batches if batch]
    if len(batches) <= 1:
        for batch in batches:
            table.submit_transaction(batch, **kwargs)
        return
    with ThreadPoolExecutor(min(_REPORT_WRITERS, len(batches)), thread_name_prefix="kvlink-report") as pool:
        for done in [pool.submit(table.submit_transaction, batch, **kwargs) for batch in batches]:
            done.result()  # the first failure raises (the caller removes what was written)


def _in_batches(table: TableClient, operations: Sequence[Any], **kwargs: Any) -> None:
    """Submit operations on one partition as transactions of at most 100 (Table storage's limit)."""
    for start in range(0, len(operations), _BATCH):
        table.submit_transaction(list(operations[start : start + _BATCH]), **kwargs)
