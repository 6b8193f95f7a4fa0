"""C-MOVE and C-GET SCPs, Patient Root and Study Root (PS3.4 C.4.2, C.4.3).

pynetdicom's Query/Retrieve service class runs the protocol: it calls the
handlers below, sends the pending and final responses and keeps the
sub-operation counts. The handlers resolve the identifier to stored instances
through the Archive (appliance.query.retrieve: the unique keys of the level)
and hand the sub-operations over one by one:

* C-MOVE: the sub-operations go out on a new association to the destination
  named in ``DicomModalities``, opened by appliance.dicom.sender (stock
  pynetdicom, a fresh AE, the modality's LocalAet and Timeout, stored syntax
  first, files streaming from disk, transcoding when needed). pynetdicom asks
  the server's AE for that association; :class:`RetrieveAE` hands it a
  :class:`Retrieval`, which sends each instance through the sender and answers
  pynetdicom with the destination's status. Synchronous, as Orthanc's
  ``SynchronousCMove`` (its default): the final response follows the last
  sub-operation. pynetdicom sends a pending response after each sub-operation.
* C-GET: the C-STORE sub-operations go back on the requestor's association
  (PS3.4 C.4.3.3), on the storage contexts it proposed with SCP/SCU role
  selection (PS3.7 D.3.3.4). On the fast path an instance the requestor takes
  in its stored syntax streams from its file (appliance.dicom.streaming); any
  other, and every one on stock pynetdicom (which sends only whole data sets),
  is read (or transcoded) into memory, one at a time.

Refusals are answered without any association or sub-operation: an unknown
destination gets 0xA801, a device not allowed to move
or get 0x0124, an identifier without the level's unique key 0xA900. One INFO
line per retrieve: peer, calling AE, model, level, counts, bytes, seconds.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections import Counter
from types import SimpleNamespace
from collections.abc import Callable
from dataclasses import field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import events as evt
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.status import code_to_category

from appliance.dicom.policy import AccessPolicy, Service
from appliance.dicom.services import UNCOMPRESSED, Caller, DimseService
from appliance.dicom.sender import (
    AckPrompter, Destination, Outgoing, SendResult, StoreSender, accepts_as_stored, dataset_for,
    needs_of,
)
from appliance.dicom.streaming import StoredFile
from appliance.dicom.tuning import streams_stored_files
from appliance.dicom.status import RetrieveStatus, Status
from appliance.lazyclasses import lazy_dataclass
from appliance.query.retrieve import UNIQUE_KEYS, scope_of
from appliance.store import Archive

log = logging.getLogger(__name__)

# Query/Retrieve Information Model SOP classes (PS3.4 C.6): UID -> (operation, Patient Root?).
MOVE_MODELS = {"1.2.840.10008.5.1.4.1.2.1.2": True, "1.2.840.10008.5.1.4.1.2.2.2": False}
GET_MODELS = {"1.2.840.10008.5.1.4.1.2.1.3": True, "1.2.840.10008.5.1.4.1.2.2.3": False}


class Operation(enum.Enum):
    """The two retrieves, with the DIMSE verb for logs."""

    MOVE = "C-MOVE"
    GET = "C-GET"


@lazy_dataclass
class RetrieveCounts:
    """Sub-operation counts of one retrieve (PS3.4 C.4.2.1.4)."""

    completed: int = 0
    warning: int = 0
    failed: int = 0
    bytes: int = 0

    def add(self, result: SendResult, size: int) -> None:
        """Count one sub-operation's result (and its bytes when it was stored)."""
        setattr(self, result.counts_as, getattr(self, result.counts_as) + 1)
        if result in (SendResult.SUCCESS, SendResult.WARNING):
            self.bytes += size


class _NoSocket:
    """What pynetdicom closes when the move association is not established."""

    def close(self) -> None:
        """Nothing to close: the sender owns (and has closed) its connection."""


_NO_DUL = SimpleNamespace(socket=_NoSocket())


@lazy_dataclass
class Retrieval:
    """One C-MOVE or C-GET being served: what it sends and how it went.

    For a C-MOVE it also stands in for the association pynetdicom asks the
    server's AE for (``is_established``, ``send_c_store``, ``release``, ``dul``):
    each C-STORE goes through the sender instead.
    """

    operation: Operation
    peer: str
    calling_aet: str
    model: str
    level: str = "-"
    items: dict[str, Outgoing] = field(default_factory=dict)
    destination: Destination | None = None
    spool_dir: Path | None = None
    counts: RetrieveCounts = field(default_factory=RetrieveCounts)
    started: float = field(default_factory=time.monotonic)
    sender: StoreSender | None = None
    direct: bool = False       # the sender writes its requests straight to the socket
    refused: bool = False      # answered without sub-operations (no association opened)
    outcome: str = ""
    # (association, context ID, C-MOVE request) to send pending responses on while one
    # sub-operation lasts more than a second.
    requestor: tuple | None = None
    on_finish: Callable[["Retrieval"], None] | None = None   # counts the totals
    _heartbeat: "_Heartbeat | None" = field(default=None, repr=False)

    # -- the stand-in for pynetdicom's move association ---------------------------

    def connect(self) -> "Retrieval":
        """Open the association to the destination (the sender's); ``self`` either way."""
        if self.refused or self.destination is None:
            return self
        self.sender = StoreSender(self.destination, needs_of(self.items.values()),
                                  spool_dir=self.spool_dir, direct=self.direct)
        if not self.sender.open():
            # pynetdicom answers 0xA801 and never resumes the handler: log it here.
            self.counts.failed = len(self.items)
            self.finish(f"destination unreachable: {self.sender.error}")
            return self
        self._heartbeat = _Heartbeat(self).start()
        return self

    @property
    def is_established(self) -> bool:
        """True when sub-operations can be attempted (refusals included: they send none)."""
        return self.refused or (self.sender is not None and self.sender.is_established)

    @property
    def dul(self) -> SimpleNamespace:
        """pynetdicom reaches ``dul.socket`` of a move association it could not open."""
        return _NO_DUL

    def send_c_store(self, dataset: Dataset, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None,
                     originator_id: int | None = None) -> Dataset:
        """What pynetdicom calls for each pending sub-operation: send the instance the
        placeholder ``dataset`` names and answer the destination's status."""
        item = self.items[str(dataset.SOPInstanceUID)]
        # PS3.7 9.1.1.1: the Move Originator is the AE that asked for the C-MOVE (pynetdicom
        # would put our own AE title).
        with self._heartbeat.busy():
            outcome = self.sender.send(item, move_originator=(self.calling_aet, originator_id),
                                       priority=priority)
        self.counts.add(outcome.result, outcome.sent_bytes)
        rsp = Dataset()
        rsp.Status = outcome.status if outcome.status is not None else Status.PROCESSING_FAILURE
        return rsp

    def release(self) -> None:
        """Release the destination association (pynetdicom calls it at the end)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.sender is not None:
            self.sender.release()

    # -- the log line ----------------------------------------------------------------

    def finish(self, outcome: str) -> None:
        """The one INFO line of this retrieve (once); no patient data in it."""
        if self.outcome:
            return
        self.outcome = outcome
        if self.on_finish is not None:
            self.on_finish(self)
        c = self.counts
        where = f" to {self.destination}" if self.destination is not None else ""
        seconds = time.monotonic() - self.started
        log.info("%s: %s from %s%s, %s root, %s level: %s; %d completed, %d warning, "
                 "%d failed of %d, %d bytes, %.2f s",
                 self.peer, self.operation.value, self.calling_aet, where, self.model,
                 self.level, outcome, c.completed, c.warning, c.failed, len(self.items),
                 c.bytes, seconds,
                 extra={"PEER": self.peer, "CALLING_AET": self.calling_aet,
                        "OPERATION": self.operation.value, "LEVEL": self.level,
                        "COMPLETED": c.completed, "FAILED": c.failed, "WARNING": c.warning,
                        "BYTES": c.bytes, "DURATION_MS": int(seconds * 1000)})


class _Heartbeat:
    """While one C-MOVE sub-operation lasts (a large cine to a slow destination), a
    pending C-MOVE-RSP with the counts every second (PS3.4 C.4.2.1.4: pending responses
    are optional; the issue asks for one at least every second), so the requestor sees
    progress. pynetdicom sends its own after each sub-operation.

    One thread per C-MOVE, started with the destination's association (a thread per
    sub-operation cost a fifth of a fast C-MOVE's time). It sends only while a
    sub-operation is in flight (:meth:`busy`), under a lock that the end of the
    sub-operation also takes, so pynetdicom's own pending response always comes after
    it and the counts the requestor sees never go backwards."""

    PERIOD = 0.8    # seconds between pending responses during one sub-operation
    _LOOK = 0.2     # seconds between looks: at most PERIOD + _LOOK = 1 s apart

    def __init__(self, job: "Retrieval") -> None:
        self._job = job
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._since: float | None = None   # when the sub-operation in flight began (or
        #                                    the last pending response went), None: idle
        self._thread = threading.Thread(target=self._run, name="move-pending", daemon=True)

    def start(self) -> "_Heartbeat":
        """Start watching (only for a C-MOVE with a requestor to answer)."""
        if self._job.requestor is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; returns once the thread has ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @contextlib.contextmanager
    def busy(self):
        """Around one sub-operation."""
        with self._lock:
            self._since = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._since = None

    def _run(self) -> None:
        assoc, context_id, req = self._job.requestor
        while not self._stop.wait(self._LOOK):
            if not assoc.is_established:
                return
            with self._lock:
                if self._since is None or time.monotonic() - self._since < self.PERIOD:
                    continue
                self._since += self.PERIOD
                c = self._job.counts
                rsp = C_MOVE()
                rsp.MessageIDBeingRespondedTo = req.MessageID
                rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
                rsp.Status = int(RetrieveStatus.PENDING)
                rsp.NumberOfRemainingSuboperations = (len(self._job.items) - c.completed
                                                      - c.warning - c.failed)
                rsp.NumberOfCompletedSuboperations = c.completed
                rsp.NumberOfFailedSuboperations = c.failed
                rsp.NumberOfWarningSuboperations = c.warning
                assoc.dimse.send_msg(rsp, context_id)


class RetrieveAE(AE):
    """The server's AE. pynetdicom's C-MOVE SCP asks it for the association to the
    move destination, passing what the handler yielded; a ``retrieval`` there means
    the sub-operations go through appliance.dicom.sender instead of this AE."""

    def associate(self, addr, port, *args, retrieval: Retrieval | None = None, **kwargs):
        """pynetdicom's, unless ``retrieval`` is given (a C-MOVE of ours)."""
        if retrieval is not None:
            return retrieval.connect()
        return super().associate(addr, port, *args, **kwargs)


def _placeholder(item: Outgoing) -> Dataset:
    """What the handler yields for a sub-operation: only the SOP Instance UID, which
    pynetdicom lists when it fails (Failed SOP Instance UID List, PS3.4 C.4.2.1.4);
    without a SOP Class UID, pynetdicom cannot send it by mistake on a C-GET."""
    ds = Dataset()
    ds.SOPInstanceUID = item.sop_instance_uid
    return ds


def _status(code: RetrieveStatus, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    return ds


class RetrieveDimse:
    """The C-MOVE and C-GET handlers and their counters."""

    def __init__(self, archive: Archive, *, our_aet: str, scu_timeout: int,
                 spool_dir: Path | None = None, direct_writes: bool = False) -> None:
        self.archive = archive
        self._direct = direct_writes     # appliance.dicom.sender's direct=
        self._our_aet = our_aet          # DicomAet: calls the destination unless LocalAet
        self._scu_timeout = scu_timeout  # DicomScuTimeout
        self._spool = spool_dir          # TemporaryDirectory: transcoded copies
        self._lock = threading.Lock()
        self._totals: Counter[str] = Counter()

    def services(self, *, policy: Callable[[], AccessPolicy]) -> tuple[DimseService, ...]:
        """Their declarations (appliance.dicom.services); ``policy`` gives the access rules
        in force (reloaded on SIGHUP), whose DicomModalities name the move destinations."""
        return (
            DimseService("Query/Retrieve C-MOVE", tuple(MOVE_MODELS), UNCOMPRESSED,
                         (Service.MOVE,),
                         {evt.EVT_C_MOVE: lambda event, caller: self.move(event, caller, policy())}),
            DimseService("Query/Retrieve C-GET", tuple(GET_MODELS), UNCOMPRESSED, (Service.GET,),
                         {evt.EVT_C_GET: lambda event, caller: self.get(event, caller)}),
        )

    def stats(self) -> dict[str, int]:
        """Totals since start: retrieves, instances and bytes sent, by operation."""
        with self._lock:
            return dict(self._totals)

    def _spool_dir(self) -> Path | None:
        if self._spool is not None:
            self._spool.mkdir(parents=True, exist_ok=True)
        return self._spool

    def _resolve(self, job: Retrieval, identifier: Dataset, patient_root: bool) -> str | None:
        """Fill ``job.items`` from the identifier; an error text when it names nothing valid."""
        level = str(identifier.get("QueryRetrieveLevel", "") or "")
        job.level = level.strip().upper() or "-"
        # A UID list (PS3.4 C.2.2.2.2) arrives as pydicom's MultiValue, one value as str.
        keys = {kw: [str(v).strip() for v in ([value] if isinstance(value, str) else value)]
                for kw in UNIQUE_KEYS.values()
                for value in [identifier.get(kw)] if value not in (None, "")}
        try:
            scope = scope_of(level, keys, patient_root=patient_root)
        except ValueError as e:
            return str(e)
        for inst in self.archive.instances_under(scope):
            job.items[inst.sop_instance_uid] = Outgoing.of(self.archive.file_of(inst), inst)
        return None

    def _identifier(self, event, job: Retrieval) -> Dataset | None:
        try:
            return event.identifier
        except Exception as e:  # noqa: BLE001 - pydicom's many decoding errors
            log.warning("%s: %s from %s: identifier not decodable: %s: %s", job.peer,
                        job.operation.value, job.calling_aet, type(e).__name__, str(e)[:200])
            return None

    def _total(self, job: Retrieval) -> None:
        op = job.operation.name.lower()
        with self._lock:
            self._totals[f"{op}_requests"] += 1
            self._totals[f"{op}_instances"] += job.counts.completed + job.counts.warning
            self._totals[f"{op}_failed"] += job.counts.failed
            self._totals[f"{op}_bytes"] += job.counts.bytes

    # -- C-MOVE ------------------------------------------------------------------------

    def move(self, event, caller: Caller, policy: AccessPolicy):
        """The EVT_C_MOVE handler (a generator, pynetdicom's protocol): the destination,
        the number of sub-operations, then (status, data set) per sub-operation."""
        job = self._job(Operation.MOVE, event, caller)
        refusal = self._refusal(event, job, caller, policy)
        if refusal is not None:
            yield from self._refuse(job, *refusal)
            return
        job.requestor = (event.assoc, event.context.context_id, event.request)
        yield job.destination.host, job.destination.port, {"retrieval": job}
        yield from self._sub_operations(event, job, _placeholder)

    # -- C-GET -------------------------------------------------------------------------

    def get(self, event, caller: Caller):
        """The EVT_C_GET handler (a generator, pynetdicom's protocol): the number of
        sub-operations, then (status, data set) per sub-operation."""
        peer, calling = caller.peer, caller.calling_aet
        job = self._job(Operation.GET, event, caller)
        refusal = self._refusal(event, job, caller)
        if refusal is not None:
            yield from self._refuse(job, *refusal)
            return
        assoc = event.assoc
        spool = self._spool_dir()

        sending: list[Outgoing] = []   # the sub-operation in flight (one at a time)

        # pynetdicom keeps the sub-operation statuses to itself: read them off the
        # C-STORE responses this association receives while the C-GET runs. The
        # response's Affected SOP Instance UID is optional (PS3.7 9.3.1.2).
        def on_response(recv) -> None:
            msg = recv.message
            if type(msg).__name__ == "C_STORE_RSP":
                status = msg.command_set.get("Status")
                uid = str(msg.command_set.get("AffectedSOPInstanceUID", "") or "")
                item = job.items.get(uid) or (sending[-1] if sending else None)
                job.counts.add(_result_of(status), item.size if item else 0)

        streaming = streams_stored_files(assoc)   # the fast path streams stored files

        def to_send(item: Outgoing) -> Dataset:
            sending[:] = [item]
            if streaming and accepts_as_stored(assoc, item):
                return StoredFile(item.path, item.sop_class_uid, item.sop_instance_uid)
            ds, why = dataset_for(assoc, item, spool_dir=spool)
            if ds is None:
                log.warning("%s: C-GET from %s: %s (%s, %s) not sent: %s", peer, calling,
                            item.sop_instance_uid, item.sop_class_uid, item.transfer_syntax_uid,
                            why)
                job.counts.failed += 1
                return _placeholder(item)   # pynetdicom cannot send it: a failed sub-operation
            return ds

        assoc.bind(evt.EVT_DIMSE_RECV, on_response)
        # The requestor answers each sub-operation: ACK its responses at once, as the
        # sender does on its own associations (a getscu with Nagle on stalls otherwise).
        # Streamed sub-operations prompt while they wait (appliance.dicom.streaming): a
        # thread watching the socket as well would only compete with them.
        prompter = None if streaming else \
            AckPrompter(getattr(assoc.dul.socket, "socket", None)).start()
        try:
            yield from self._sub_operations(event, job, to_send)
        finally:
            if prompter is not None:
                prompter.stop()
            assoc.unbind(evt.EVT_DIMSE_RECV, on_response)

    # -- shared --------------------------------------------------------------------------

    def _job(self, operation: Operation, event, caller: Caller) -> Retrieval:
        models = MOVE_MODELS if operation is Operation.MOVE else GET_MODELS
        patient_root = models.get(str(event.request.AffectedSOPClassUID), False)
        return Retrieval(operation, caller.peer, caller.calling_aet,
                         "patient" if patient_root else "study", spool_dir=self._spool_dir(),
                         direct=self._direct, on_finish=self._total)

    def _refusal(self, event, job: Retrieval, caller: Caller,
                 policy: AccessPolicy | None = None) -> tuple[RetrieveStatus, str] | None:
        """Why the request is refused (its status and reason, logged), or None once
        ``job`` knows its instances (and, for a C-MOVE, given ``policy``, its destination)."""
        what = job.operation.value
        if not caller.allowed:
            log.warning("%s: %s from %s refused: not allowed to %s", job.peer, what,
                        job.calling_aet, job.operation.name.lower())
            return RetrieveStatus.REFUSED_NOT_AUTHORIZED, "not allowed"
        if policy is not None:
            wanted = _text(event.request.MoveDestination)
            modality = policy.destination(wanted)
            if modality is None:
                # PS3.4 C.4.2.1.5: Refused, Move Destination unknown; nothing is sent.
                log.warning("%s: %s from %s refused: destination %r is not in "
                            "DicomModalities", job.peer, what, job.calling_aet, wanted)
                return RetrieveStatus.MOVE_DESTINATION_UNKNOWN, f"unknown destination {wanted!r}"
            job.destination = Destination.from_modality(modality, default_aet=self._our_aet,
                                                        default_timeout=self._scu_timeout)
        identifier = self._identifier(event, job)
        patient_root = job.model == "patient"
        problem = "identifier not decodable" if identifier is None else \
            self._resolve(job, identifier, patient_root)
        if problem is not None:
            log.warning("%s: %s from %s refused: %s", job.peer, what, job.calling_aet, problem)
            return RetrieveStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, problem
        return None

    def _sub_operations(self, event, job: Retrieval, payload):
        """Yield the count, then each sub-operation until done or cancelled (PS3.4
        C.4.2.3.1, C-CANCEL: the final response is Cancel with the counts so far)."""
        yield len(job.items)
        for item in list(job.items.values()):
            if event.is_cancelled:
                job.finish("cancelled")
                yield RetrieveStatus.CANCEL, None
                return
            yield RetrieveStatus.PENDING, payload(item)
        c = job.counts
        job.finish("success" if not (c.failed or c.warning) else
                   "all failed" if c.failed == len(job.items) else "some failed")

    def _refuse(self, job: Retrieval, status: RetrieveStatus, why: str):
        """Answer ``status`` without a sub-operation or an association.

        pynetdicom's service class only answers a status after the destination and
        the number of sub-operations: a placeholder destination (no connection: the
        :class:`Retrieval` is marked refused) and one sub-operation, then the status.
        """
        job.refused = True
        job.finish(f"refused: {why}")
        if job.operation is Operation.MOVE:
            yield "", 0, {"retrieval": job}
        yield 1
        yield _status(status, why), None


def _result_of(status) -> SendResult:
    """A C-STORE-RSP status as a sub-operation result (PS3.7 C)."""
    if status is None:
        return SendResult.LOST
    category = code_to_category(int(status))
    return {"Success": SendResult.SUCCESS, "Warning": SendResult.WARNING}.get(
        category, SendResult.FAILED)


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip()
