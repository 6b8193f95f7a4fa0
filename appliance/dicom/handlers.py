"""One handler per DIMSE service, plus the association-level events.

Thin: each handler reads what the protocol gives, asks the policy, calls the
Archive, and maps the outcome to a named status. pynetdicom runs every
association on its own thread, so these are plain synchronous functions.
Logs name the peer first; patient names and IDs never appear at INFO.
"""

from __future__ import annotations

import logging
import functools
import socket
import threading
import time
from dataclasses import field

from pydicom.dataset import Dataset
from pynetdicom import events as evt

from appliance.dicom.commitment import STORAGE_COMMITMENT_PUSH_MODEL, CommitmentScp
from appliance.dicom.mwl import MODALITY_PERFORMED_PROCEDURE_STEP, MODALITY_WORKLIST_FIND, WorklistDimse
from appliance.dicom.policy import AccessPolicy, Service
from appliance.dicom.qr_find import QueryRetrieveFind
from appliance.dicom.receive import ReceivedFiles
from appliance.dicom.retrieve import RetrieveDimse
from appliance.dicom.services import (ALL_TRANSFER_SYNTAXES, UNCOMPRESSED, VERIFICATION, Caller,
                                      DimseService, ServiceRegistry, storage_sop_classes)
from appliance.dicom.status import Status
from appliance.lazyclasses import lazy_dataclass
from appliance.store import Archive, Origin, StoreOutcome

log = logging.getLogger(__name__)


@lazy_dataclass
class _AssocStats:
    peer: str
    calling_aet: str
    called_aet: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    failed: int = 0
    bytes: int = 0
    established: bool = False


def _peer(assoc) -> tuple[str, str]:
    """(host, "host:port") of the association's requestor."""
    host = assoc.requestor.address
    return host, f"{host}:{assoc.requestor.port}"


def _aet(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value.strip()


class DicomHandlers:
    """The event handlers of the DICOM server."""

    def __init__(self, archive: Archive, policy: AccessPolicy, incoming: ReceivedFiles,
                 worklist: WorklistDimse | None = None,
                 find: QueryRetrieveFind | None = None,
                 retrieve: RetrieveDimse | None = None,
                 commitment: CommitmentScp | None = None) -> None:
        self.archive = archive
        self.commitment = commitment  # storage commitment N-ACTION, when configured
        self.policy = policy
        self.incoming = incoming
        self.worklist = worklist  # MWL C-FIND and MPPS, when configured
        self.find = find  # Query/Retrieve C-FIND (appliance.dicom.qr_find)
        self.retrieve = retrieve  # Query/Retrieve C-MOVE and C-GET (appliance.dicom.retrieve)
        self._lock = threading.Lock()
        self._assocs: dict[int, _AssocStats] = {}
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self.registry = self.services()

    def set_policy(self, policy: AccessPolicy) -> None:
        """Swap the access rules (SIGHUP reload); new requests use them."""
        self.policy = policy

    def services(self) -> ServiceRegistry:
        """The DIMSE services offered (appliance.dicom.services), those configured only."""
        worklist = self.worklist
        return ServiceRegistry.of([
            DimseService("Verification", (VERIFICATION,), ALL_TRANSFER_SYNTAXES, (Service.ECHO,),
                         {evt.EVT_C_ECHO: self.handle_echo}),
            # Fallback: with UnknownSopClassAccepted, classes pynetdicom does not know too.
            # Both roles accepted when proposed: a C-GET requestor asks to be the storage SCP
            # of the sub-operations (PS3.7 D.3.3.4); without role selection nothing changes.
            DimseService("Storage", storage_sop_classes(), ALL_TRANSFER_SYNTAXES, (Service.STORE,),
                         {evt.EVT_C_STORE: self.handle_store}, fallback=True,
                         scp_role=True, scu_role=True),
            # MWL C-FIND and MPPS: small data sets, uncompressed.
            DimseService("Modality Worklist", (MODALITY_WORKLIST_FIND,), UNCOMPRESSED,
                         (Service.FIND_WORKLIST,), {evt.EVT_C_FIND: self.handle_worklist_find})
            if worklist is not None and worklist.worklists is not None else None,
            # MPPS has no Allow* flag of its own in Orthanc's rules: an AE that may query the
            # worklist or store its images may report the procedure it performs.
            DimseService("Modality Performed Procedure Step", (MODALITY_PERFORMED_PROCEDURE_STEP,),
                         UNCOMPRESSED, (Service.FIND_WORKLIST, Service.STORE),
                         {evt.EVT_N_CREATE: self.handle_n_create, evt.EVT_N_SET: self.handle_n_set})
            if worklist is not None and worklist.mpps is not None else None,
            self.find.service() if self.find is not None else None,
            *(self.retrieve.services(policy=lambda: self.policy)
              if self.retrieve is not None else ()),
            # Storage Commitment Push Model (PS3.4 J): N-ACTION in, N-EVENT-REPORT out on
            # an association of our own (appliance.outbound), so no role selection here.
            DimseService("Storage Commitment", (STORAGE_COMMITMENT_PUSH_MODEL,), UNCOMPRESSED,
                         (Service.STORAGE_COMMITMENT,), {evt.EVT_N_ACTION: self.handle_n_action})
            if self.commitment is not None else None,
        ])

    def bindings(self) -> list[tuple]:
        """(event, handler) pairs for ``AE.start_server(evt_handlers=...)``: the
        association events, and one dispatcher per DIMSE event the services answer."""
        registry = self.registry
        return [
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ESTABLISHED, self.on_established),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ] + [(event_type, functools.partial(registry.dispatch, event_type, caller_of=self._caller))
             for event_type in registry.events()]

    # -- association events ---------------------------------------------

    def on_conn_open(self, event) -> None:
        """Turn Nagle off: with it, each small C-STORE-RSP can wait ~40 ms
        for the peer's delayed ACK."""
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def on_requested(self, event) -> None:
        """A-ASSOCIATE-RQ: apply the called-AET / calling-AET / host rules."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling, called = _aet(rq.calling_ae_title), _aet(rq.called_ae_title)
        host, peer = _peer(assoc)
        with self._lock:
            self._assocs[id(assoc)] = _AssocStats(peer, calling, called)
        rejection = self.policy.check_association(calling, called, host)
        if rejection is not None:
            log.warning("%s: association from %s to %s rejected: %s",
                        peer, calling, called, rejection.name.lower().replace("_", " "))
            assoc.acse.send_reject(*rejection.value)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()

    def on_established(self, event) -> None:
        """Association accepted."""
        with self._lock:
            stats = self._assocs.get(id(event.assoc))
            if stats:
                stats.established = True
        if stats:
            log.debug("%s: association from %s to %s accepted", stats.peer, stats.calling_aet,
                      stats.called_aet)

    def on_conn_close(self, event) -> None:
        """One INFO line per association, with its counts."""
        assoc = event.assoc
        self.incoming.discard_for(assoc)
        with self._lock:
            stats = self._assocs.pop(id(assoc), None)
        if stats is None or not stats.established:
            return
        how = ("released" if assoc.is_released else "aborted" if assoc.is_aborted else "closed")
        log.info(
            "%s: association from %s to %s %s: %d stored, %d failed, %d bytes, %.2f s",
            stats.peer, stats.calling_aet, stats.called_aet, how, stats.stored, stats.failed,
            stats.bytes, time.monotonic() - stats.started,
            extra={"PEER": stats.peer, "CALLING_AET": stats.calling_aet,
                   "CALLED_AET": stats.called_aet, "STORED": stats.stored,
                   "FAILED": stats.failed, "BYTES": stats.bytes,
                   "DURATION_MS": int((time.monotonic() - stats.started) * 1000)},
        )

    # -- services --------------------------------------------------------

    def _caller(self, event, service: DimseService) -> Caller:
        """Who sent this request, and whether ``service``'s access rule lets them."""
        host, peer = _peer(event.assoc)
        calling = _aet(event.assoc.requestor.ae_title)
        policy = self.policy
        allowed = (not service.access
                   or any(policy.allows(rule, calling, host) for rule in service.access))
        return Caller(host, peer, calling, allowed)

    def handle_echo(self, event, caller: Caller) -> int:
        """C-ECHO (PS3.4 A): Success, unless this AE may not echo."""
        peer, calling = caller.peer, caller.calling_aet
        if not caller.allowed:
            log.warning("%s: C-ECHO from %s refused: not allowed", peer, calling)
            return Status.REFUSED_NOT_AUTHORIZED
        return Status.SUCCESS

    def handle_store(self, event, caller: Caller) -> Dataset:
        """C-STORE (PS3.4 B): store through the Archive, answer its status."""
        peer, calling = caller.peer, caller.calling_aet
        req = event.request
        if event.dataset_path is None:
            # The command said it had no data set (Command Data Set Type 0x0101): nothing
            # to store, and the peer's fault, not ours.
            self._count(event, None, 0)
            log.warning("%s: C-STORE from %s failed: the request has no data set", peer, calling)
            return _status(Status.CANNOT_UNDERSTAND, "C-STORE request without a data set")
        incoming = self.incoming.take(str(event.dataset_path))
        if incoming is None:  # chunked receive is off, or the file went away
            log.error("%s: C-STORE from %s: received data not found", peer, calling)
            return _status(Status.PROCESSING_FAILURE, "received data not found")
        if not caller.allowed:
            incoming.discard()
            self._count(event, None, incoming.size)
            log.warning("%s: C-STORE from %s refused: not allowed to store", peer, calling)
            return _status(Status.REFUSED_NOT_AUTHORIZED, "this AE may not store")
        with self._lock:
            self._in_flight += 1
        try:
            outcome = self.archive.store_instance(
                incoming, Origin("DICOM", peer, calling),
                expected_sop_class=str(req.AffectedSOPClassUID or "") or None,
                expected_sop_instance=str(req.AffectedSOPInstanceUID or "") or None,
            )
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()
        self._count(event, outcome, outcome.size)
        if not outcome.result.stored:
            log.warning("%s: C-STORE from %s failed: %s (%s)", peer, calling,
                        outcome.result.label, outcome.reason)
            return _status(outcome.result.dimse_status, outcome.reason)
        log.debug("%s: stored %s (%s)", peer, outcome.sop_instance_uid, outcome.result.label,
                  extra={"SOP_INSTANCE_UID": outcome.sop_instance_uid})
        return _status(outcome.result.dimse_status)

    def handle_worklist_find(self, event, caller: Caller):
        """C-FIND (PS3.4 K): the Modality Worklist, answered from the worklist snapshot."""
        yield from self.worklist.find(event, allowed=caller.allowed, peer=caller.peer,
                                      calling=caller.calling_aet)

    def handle_n_create(self, event, caller: Caller):
        """N-CREATE (PS3.4 F.7.2.1): a Modality Performed Procedure Step begins."""
        peer, calling, allowed = caller.peer, caller.calling_aet, caller.allowed
        failure = _undecodable(event, "attribute_list", peer, calling) if allowed else None
        if failure is not None:
            return failure, None
        return self.worklist.n_create(event, allowed=allowed, peer=peer, calling=calling)

    def handle_n_set(self, event, caller: Caller):
        """N-SET (PS3.4 F.7.2.2): a Modality Performed Procedure Step changes or ends."""
        peer, calling, allowed = caller.peer, caller.calling_aet, caller.allowed
        failure = _undecodable(event, "modification_list", peer, calling) if allowed else None
        if failure is not None:
            return failure, None
        return self.worklist.n_set(event, allowed=allowed, peer=peer, calling=calling)

    def handle_n_action(self, event, caller: Caller):
        """N-ACTION (PS3.4 J.3.2): a storage commitment request, persisted before the answer.
        The commitment SCP applies its own access rule: the report needs the AE's
        DicomModalities entry, not only a permission."""
        return self.commitment.n_action(event, policy=self.policy, host=caller.host,
                                        peer=caller.peer, calling=caller.calling_aet)

    def _count(self, event, outcome: StoreOutcome | None, size: int) -> None:
        with self._lock:
            stats = self._assocs.get(id(event.assoc))
            if stats is None:
                return
            if outcome is not None and outcome.result.stored:
                stats.stored += 1
                stats.bytes += size
            else:
                stats.failed += 1

    # -- shutdown --------------------------------------------------------

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no store is being written; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def open_associations(self) -> int:
        """Number of associations currently open."""
        with self._lock:
            return sum(1 for s in self._assocs.values() if s.established)


def _undecodable(event, what: str, peer: str, calling: str) -> Dataset | None:
    """A failure answer if the request's attribute or modification list cannot be
    decoded (deep nesting, an unknown character set, a cut element...), else None.

    pynetdicom decodes it with pydicom on first access and keeps the result, so the
    MPPS code reads it again for free; without this, pydicom's exception escaped the
    handler and pynetdicom logged a traceback for what is the peer's fault.
    """
    try:
        getattr(event, what)
    except Exception as e:  # noqa: BLE001 - pydicom's many decoding errors, RecursionError too
        name = what.replace("_", " ")
        log.warning("%s: MPPS request from %s: %s not decodable: %s: %s", peer, calling, name,
                    type(e).__name__, str(e)[:200])
        return _status(Status.PROCESSING_FAILURE, f"{name} not decodable")
    return None


def _status(code: int, comment: str = "") -> Dataset:
    rsp = Dataset()
    rsp.Status = int(code)
    if comment and code != Status.SUCCESS:
        rsp.ErrorComment = comment[:64]  # LO: 64 characters
    return rsp
