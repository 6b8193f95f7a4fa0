"""The workers that empty the durable send queue (issue 13).

One thread per destination (a ``DicomModalities`` or ``DicomWeb.Servers``
name) takes its due items in queue order (storage commitment reports first,
then instances in the order they were queued, hence per study; an instance
behind a failed one of its study waits for it, see store/index/queue.py), sends them over
one association (or a few STOW-RS requests), and records the outcomes as it
goes, a few dozen per transaction. Delivered items leave the queue; a failed attempt puts the item
back with a capped exponential backoff (1 s, 2 s, 4 s... Forwarding.MaxRetrySeconds)
until it is delivered or cancelled. An instance deleted (or recycled) before it
was sent is dropped with a log line.

Because an outcome is written only after the destination acknowledged the
instance, a crash (SIGKILL) at any moment sends again at most the instances
acknowledged since the last committed write (written every SETTLE_EVERY
instances or SETTLE_SECONDS, committed by the index's writer while the next
ones go out; the association's last write is waited for) and the one in
flight: at least once, never lost.

A scheduler thread wakes the workers when items fall due and moves studies
that became stable (Trigger StableStudy) into the queue; an enqueue in this
process (a stored instance, a send request, a commitment request) wakes the
worker at once through ``Outbox.on_queued``; what another process queued (the
``send`` command) is found within a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import field
from pathlib import Path

from appliance.config import DicomWebServer, Modality
from appliance.dicom.commitment import evaluate, send_report
from appliance.dicom.sender import Destination, Outgoing, SendResult, StoreSender, needs_of
from appliance.lazyclasses import lazy_dataclass
from appliance.outbound.stow import HttpsTrust, Part, StowError, stow
from appliance.store import Archive, QueueItem, Settled

log = logging.getLogger(__name__)

_PENDING, _SENT, _DROPPED = "pending", "sent", "dropped"
# Items per association (or per round of STOW-RS requests): large enough for one
# study per association, small enough that a crash resends little.
BATCH = 500
# Instances (and bytes) per STOW-RS request.
STOW_INSTANCES = 50
STOW_BYTES = 64 << 20
# Outcomes are written every SETTLE_EVERY instances or SETTLE_SECONDS, whichever
# comes first: each write is a commit (an fsync), each unwritten outcome an
# instance sent again after a crash.
SETTLE_EVERY = 32
SETTLE_SECONDS = 0.5
# Longest sleep of the scheduler: how soon what another process queued is seen.
POLL = 1.0
# Finished items are forgotten after these delays (the queue must not grow with
# history): those of forwarding rules after an hour, those of a request (which
# GET /jobs/{id} shows) after a week.
KEEP_RULE_ITEMS = 3600.0
KEEP_TASKS = 7 * 86400.0


@lazy_dataclass
class _Counters:
    """Since start, per destination (the metrics)."""

    sent: int = 0
    bytes: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    last_error: str | None = None


@lazy_dataclass
class _Lane:
    name: str
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class OutboundEngine:
    """The send queue's workers and scheduler (see the module docstring)."""

    def __init__(self, archive: Archive, *, modalities: Sequence[Modality],
                 servers: Sequence[DicomWebServer], dicom_aet: str, scu_timeout: int,
                 max_retry: float, spool_dir: Path | None = None,
                 https: HttpsTrust = HttpsTrust(),
                 direct_writes: bool = False) -> None:
        self._archive = archive
        self._direct = direct_writes   # appliance.dicom.sender's direct=
        self._outbox = archive.outbox
        self._modalities = {m.name: m for m in modalities}
        self._servers = {s.name: s for s in servers}
        self._aet = dicom_aet
        self._timeout = scu_timeout
        self._max_retry = float(max_retry)
        self._spool = spool_dir
        self._https = https
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._tick = threading.Event()
        self._scheduler: threading.Thread | None = None
        self.counters: dict[str, _Counters] = {}

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler (workers start when their destination has work)."""
        https = [s.name for s in self._servers.values() if s.url.startswith("https:")]
        if https and not self._https.https_verify_peers:
            # As Orthanc's HttpClient::ConfigureSsl warns: anyone on the path can pose as these.
            log.warning("HttpsVerifyPeers is false: the certificates of %s are not checked",
                        ", ".join(https))
        self._outbox.on_queued = self.wake
        self._scheduler = threading.Thread(target=self._schedule, name="outbound-scheduler",
                                           daemon=True)
        self._scheduler.start()

    def stop(self, grace: float = 3.0) -> None:
        """Stop the workers: an association in flight ends after its current instance;
        what it did not send stays queued, as it was."""
        self._stopping.set()
        self._tick.set()
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.wake.set()
        deadline = time.monotonic() + grace
        for thread in [self._scheduler] + [lane.thread for lane in lanes]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def wake(self, destinations: Iterable[str]) -> None:
        """New items for these destinations (none named: look at every one)."""
        named = False
        for name in destinations:
            if name:
                named = True
                self._lane(name).wake.set()
        if not named:
            self._tick.set()

    def destinations(self) -> list[str]:
        """Every configured destination name (modalities, then DICOMweb servers)."""
        return list(self._modalities) + [s for s in self._servers if s not in self._modalities]

    def stats(self) -> list[dict]:
        """Per destination: the queue's counts (pending, failing, oldest...) and this
        run's counters (sent, bytes, failed attempts, dropped). For the status."""
        rows = {r["destination"]: r for r in self._outbox.summary()}
        out = []
        for name in dict.fromkeys([*self.destinations(), *rows]):
            row = rows.get(name) or {"destination": name, "pending": 0, "failing": 0,
                                     "oldest": None, "next_attempt": None, "waiting_stable": 0,
                                     "last_error": None}
            c = self.counters.get(name, _Counters())
            out.append({
                "destination": name,
                "kind": ("dicom" if name in self._modalities else
                         "dicomweb" if name in self._servers else "unknown"),
                "pending": row["pending"] or 0, "failing": row["failing"] or 0,
                "waiting_stable": row["waiting_stable"] or 0, "held": row.get("held") or 0,
                "oldest": row["oldest"], "next_attempt": row["next_attempt"],
                "last_error": row["last_error"],
                "sent_since_start": c.sent, "bytes_since_start": c.bytes,
                "failed_attempts_since_start": c.failed_attempts,
                "dropped_since_start": c.dropped,
            })
        return out

    # -- scheduler ---------------------------------------------------------------

    def _lane(self, name: str) -> _Lane:
        with self._lock:
            lane = self._lanes.get(name)
            if lane is None:
                lane = self._lanes[name] = _Lane(name)
                self.counters.setdefault(name, _Counters())
                lane.thread = threading.Thread(target=self._work, args=(lane,),
                                               name=f"outbound-{name}", daemon=True)
                lane.thread.start()
            return lane

    def _schedule(self) -> None:
        pruned_at = 0.0
        while not self._stopping.is_set():
            now = time.time()
            sleep = POLL
            try:
                if now - pruned_at > 60:
                    pruned_at = now
                    self._outbox.prune(now - KEEP_RULE_ITEMS, now - KEEP_TASKS)
                stable = self._outbox.next_stable_due()
                if stable is not None and stable <= now:  # a write only when one is due
                    released = self._outbox.release_stable(now)
                    if released:
                        log.info("stable studies queued for %s", ", ".join(released))
                    stable = self._outbox.next_stable_due()
                if stable is not None:
                    sleep = min(sleep, max(0.0, stable - now))
                for name, due in self._outbox.next_due().items():
                    if due <= now:
                        self._lane(name).wake.set()
                    else:
                        sleep = min(sleep, due - now)
            except Exception:  # noqa: BLE001 - the scheduler must outlive a bad moment
                log.exception("outbound scheduler")
            self._tick.wait(max(0.05, sleep))
            self._tick.clear()

    # -- one destination ---------------------------------------------------------

    def _work(self, lane: _Lane) -> None:
        while not self._stopping.is_set():
            lane.wake.clear()
            try:
                items = self._outbox.due(lane.name, time.time(), BATCH)
                if items:
                    outcomes = self._attempt(lane.name, items)
                    if outcomes:
                        self._outbox.settle(outcomes, self._max_retry)
                    continue
            except Exception:  # noqa: BLE001 - a worker must outlive a bad moment
                log.exception("outbound worker %s", lane.name)
            lane.wake.wait(POLL * 5)

    def _attempt(self, name: str, items: list[QueueItem]) -> list[Settled]:
        counters = self.counters[name]
        reports = [i for i in items if i.kind == "commitment"]
        stores = [i for i in items if i.kind != "commitment"]
        outcomes: list[Settled] = []
        gone = [i for i in stores if i.instance is None]
        for item in gone:
            log.warning("%s: instance %s was deleted before it was sent: dropped from the queue",
                        name, item.sop_instance_uid)
            outcomes.append(Settled(item.id, _DROPPED, "instance deleted before it was sent"))
        counters.dropped += len(gone)
        present = [i for i in stores if i.instance is not None]
        if reports:
            outcomes += self._reports(name, reports)
        if present:
            started = time.monotonic()
            if name in self._modalities:
                sent = self._send_dicom(self._modalities[name], present)
            elif name in self._servers:
                sent = self._send_stow(self._servers[name], present)
            else:
                sent = [Settled(i.id, _PENDING, f"unknown destination {name!r}") for i in present]
                self._outbox.settle(sent, self._max_retry)
            self._account(name, sent, time.monotonic() - started,
                          held=0 if self._stopping.is_set() else len(present) - len(sent))
        return outcomes  # what is left to write: the sends wrote theirs

    def _account(self, name: str, outcomes: list[Settled], seconds: float, held: int = 0) -> None:
        """Counters, and the batch's log lines: INFO when delivered, WARNING per failed attempt."""
        counters = self.counters[name]
        done = [o for o in outcomes if o.state == _SENT]
        failed = [o for o in outcomes if o.state == _PENDING]
        counters.sent += len(done)
        counters.bytes += sum(o.bytes for o in done)
        counters.failed_attempts += len(failed)
        if done:
            log.info("%s: sent %d instance(s), %d bytes, %.2f s%s", name, len(done),
                     sum(o.bytes for o in done), seconds,
                     f", {len(failed)} failed" if failed else "",
                     extra={"DESTINATION": name, "SENT": len(done), "FAILED": len(failed)})
        if failed:
            counters.last_error = failed[0].error
            log.warning("%s: %d instance(s) not sent, retried later%s: %s", name, len(failed),
                        f" ({held} later instance(s) of the same studies held back)" if held else "",
                        failed[0].error, extra={"DESTINATION": name, "FAILED": len(failed)})

    def _destination(self, modality: Modality) -> Destination:
        return Destination.from_modality(modality, default_aet=self._aet,
                                         default_timeout=self._timeout)

    def _send_dicom(self, modality: Modality, items: list[QueueItem]) -> list[Settled]:
        """Send over one association, writing outcomes as they come; all of them."""
        outgoing = [Outgoing.of(self._archive.file_of(i.instance), i.instance) for i in items]
        if self._spool is not None:
            self._spool.mkdir(parents=True, exist_ok=True)
        outcomes: list[Settled] = []
        written, written_at = 0, time.monotonic()
        commits = []   # outcomes written on the way, not waited for (see below)
        held: set[str] = set()
        with StoreSender(self._destination(modality), needs_of(outgoing),
                         spool_dir=self._spool, direct=self._direct) as sender:
            if not sender.is_established:
                outcomes = [Settled(i.id, _PENDING, sender.error) for i in items]
            for item, out in zip(items, outgoing) if not outcomes else ():
                if self._stopping.is_set():
                    break  # the rest stays queued as it was
                if item.study_instance_uid in held:
                    continue  # behind a failed instance of its study: stays queued as it was
                o = sender.send(out)
                if o.result in (SendResult.SUCCESS, SendResult.WARNING):
                    outcomes.append(Settled(item.id, _SENT, bytes=o.sent_bytes))
                else:
                    held.add(item.study_instance_uid)
                    outcomes.append(Settled(item.id, _PENDING,
                                            f"{o.result.value}: {o.detail}"[:500]))
                if (len(outcomes) - written >= SETTLE_EVERY
                        or time.monotonic() - written_at >= SETTLE_SECONDS):
                    # The index's writer commits them while the next instances go out
                    # (a commit is an fsync); a crash before it only resends them.
                    commits.append(self._outbox.settle_later(outcomes[written:],
                                                             self._max_retry))
                    written, written_at = len(outcomes), time.monotonic()
            # The last write is waited for, and with it every earlier one (committed in
            # order): the next look at the queue must not find these items pending.
            # Before the release, which takes pynetdicom some 13 ms: a synchronous
            # request is answered without waiting for it.
            self._outbox.settle(outcomes[written:], self._max_retry)
        for committed in commits:
            committed()   # raises what an earlier write met, as a direct settle would
        return outcomes

    def _send_stow(self, server: DicomWebServer, items: list[QueueItem]) -> list[Settled]:
        """Send in STOW-RS requests, writing each one's outcomes; all of them. A study
        with a failed instance sends nothing more in this round (its later
        instances stay queued); within one request the server decides alone."""
        outcomes: list[Settled] = []
        held: set[str] = set()
        chunk: list[QueueItem] = []
        size = 0
        for item in items + [None]:
            if item is not None and item.study_instance_uid in held:
                continue
            if item is not None and len(chunk) < STOW_INSTANCES and size < STOW_BYTES:
                chunk.append(item)
                size += item.instance.file_size
                continue
            if chunk and not self._stopping.is_set():
                done = self._stow_chunk(server, chunk)
                self._outbox.settle(done, self._max_retry)
                outcomes += done
                by_id = {i.id: i for i in chunk}
                held |= {by_id[o.item_id].study_instance_uid for o in done if o.state == _PENDING}
            chunk, size = [], 0
            if item is not None and item.study_instance_uid not in held:
                chunk, size = [item], item.instance.file_size
        return outcomes

    def _stow_chunk(self, server: DicomWebServer, chunk: list[QueueItem]) -> list[Settled]:
        parts = [Part(i.sop_instance_uid, self._archive.file_of(i.instance), i.instance.file_size)
                 for i in chunk]
        try:
            failed = stow(server, parts, self._timeout or None, self._https)
        except (StowError, OSError) as e:
            return [Settled(i.id, _PENDING, f"STOW-RS to {server.url}: {e}"[:500]) for i in chunk]
        return [Settled(i.id, _PENDING, failed[i.sop_instance_uid]) if i.sop_instance_uid in failed
                else Settled(i.id, _SENT, bytes=i.instance.file_size) for i in chunk]

    def _reports(self, name: str, items: list[QueueItem]) -> list[Settled]:
        modality = self._modalities.get(name)
        outcomes = []
        for item in items:
            if modality is None:
                outcomes.append(Settled(item.id, _PENDING, f"{name} is no longer in DicomModalities"))
                continue
            started = time.monotonic()
            try:
                transaction, committed, failed = evaluate(self._archive, item.payload or "{}")
            except (ValueError, KeyError) as e:
                log.error("%s: storage commitment request %d unreadable (%s): dropped", name,
                          item.id, e)
                outcomes.append(Settled(item.id, _DROPPED, f"unreadable request: {e}"))
                continue
            error = send_report(self._destination(modality), transaction, committed, failed)
            if error is None:
                log.info("%s: storage commitment report sent: %d committed, %d failed, %.2f s "
                         "after the request", name, len(committed), len(failed),
                         time.time() - item.created_at)
                outcomes.append(Settled(item.id, _SENT))
            else:
                log.warning("%s: storage commitment report not delivered, retried later: %s "
                            "(%.2f s)", name, error, time.monotonic() - started)
                outcomes.append(Settled(item.id, _PENDING, error[:500]))
        return outcomes
