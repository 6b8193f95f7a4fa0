"""The one outbound C-STORE SCU of stored instances (PS3.4 B, PS3.7 9.1.1).

Used by the C-MOVE SCP (appliance.dicom.retrieve) and by anything else that
sends what the archive holds (forwarding, sending on demand). Stock pynetdicom
associations: a fresh ``AE()`` per association, as appliance.dicom.scu does for
C-ECHO; the acceptor's fast path never reaches them, and only the writing of
the data sets may be direct (below).

Use::

    dest = Destination.from_modality(modality, default_aet=cfg.dicom_aet,
                                     default_timeout=cfg.dicom_scu_timeout)
    items = [Outgoing.of(archive.file_of(i), i) for i in instances]
    with StoreSender(dest, needs_of(items), spool_dir=tmp) as sender:
        if not sender.is_established:
            ...  # sender.error says why (refused, unreachable, timed out)
        for item in items:
            outcome = sender.send(item)   # a SendOutcome, never raises
            if outcome.result is SendResult.LOST:
                break                     # the destination went away

What it does:

* Contexts (PS3.8 9.3.2.2): for each SOP class needed, one presentation
  context per stored transfer syntax that is not Explicit/Implicit VR Little
  Endian, proposing that syntax alone, and one more proposing Explicit then
  Implicit VR Little Endian as the fallback. A destination that accepts the
  stored syntax gets the stored bytes; one that does not gets Explicit VR LE.
  At most 128 contexts (PS3.8 9.3.2.2: the ID is an odd byte): needs beyond
  that are dropped with a WARNING and their instances fail as NOT_ACCEPTED.
* Sending: when the stored syntax was accepted the data set streams from its
  file (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``): memory stays flat in
  the size of the object. Otherwise, if the pixel data can be decoded
  (appliance.dicomfile.pixels.can_transcode) and the modality allows
  transcoding, the instance is transcoded to Explicit VR LE into a spool file,
  frame by frame, and that file streams. Only when the destination accepted
  Implicit VR LE alone is the object read into memory, for pynetdicom to
  re-encode it. Anything else fails that one instance with a WARNING naming
  the SOP class and syntax.
* Outcome per instance (:class:`SendOutcome`): the destination's status
  classified (PS3.7 C: Success, Warning, Failure), or why nothing was sent. A
  destination that aborts or disconnects mid-way gives LOST for the instance
  in flight and for every later one, without raising.

Writing: with ``direct=True`` (where the acceptor's fast path runs, see
appliance.dicom.transport) the streamed requests are written straight to the
socket, and their responses read straight from it, by appliance.dicom.streaming
(about a tenth of the CPU of pynetdicom's PDU-by-PDU path); everything else on
the association stays pynetdicom's.

Blocking: run it on a worker thread (pynetdicom runs its own reactor thread
per association).
"""

from __future__ import annotations

import enum
import logging
import os
import select
import socket
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from appliance.config import Modality
from appliance.dicom.requestor import pause_reactor, request_association
from appliance.dicom.streaming import DirectStoreWrites, StoreResponse
from appliance.dicomfile import pixels, syntax
from appliance.lazyclasses import lazy_dataclass

log = logging.getLogger(__name__)

__all__ = [
    "AckPrompter", "Destination", "accepts_as_stored", "Outgoing", "SendOutcome", "SendResult", "StoreSender", "dataset_for",
    "needs_of", "presentation_contexts",
]

_FALLBACK = (syntax.EXPLICIT_LE, syntax.IMPLICIT_LE)
_MAX_CONTEXTS = 128   # PS3.8 9.3.2.2: Presentation Context IDs are the odd numbers 1-255


@lazy_dataclass(frozen=True)
class Destination:
    """Where to send: the peer's address and AE title, ours, and the timeout."""

    host: str
    port: int
    called_aet: str
    calling_aet: str
    timeout: float | None = None     # seconds for connect, ACSE, DIMSE and network; None: none
    allow_transcoding: bool = True   # Orthanc's AllowTranscoding of the modality
    name: str = ""                   # the DicomModalities key, for logs

    @classmethod
    def from_modality(cls, modality: Modality, *, default_aet: str,
                      default_timeout: int) -> "Destination":
        """A DicomModalities entry as a destination: its LocalAet (else ``default_aet``,
        DicomAet) calls, its Timeout (else ``default_timeout``, DicomScuTimeout; 0: none)."""
        seconds = modality.timeout or default_timeout
        return cls(host=modality.host, port=modality.port, called_aet=modality.aet,
                   calling_aet=modality.local_aet or default_aet, timeout=seconds or None,
                   allow_transcoding=modality.allow_transcoding, name=modality.name)

    def __str__(self) -> str:
        return f"{self.name or self.called_aet} ({self.called_aet} at {self.host}:{self.port})"


@lazy_dataclass(frozen=True)
class Outgoing:
    """One stored instance to send: its file and what the index says of it."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int

    @classmethod
    def of(cls, path: Path, instance) -> "Outgoing":
        """From a file path and an ``appliance.store.StoredInstance``."""
        return cls(Path(path), instance.sop_class_uid, instance.sop_instance_uid,
                   instance.transfer_syntax_uid, instance.file_size)


class SendResult(enum.Enum):
    """What became of one instance (sub-operation)."""

    SUCCESS = "success"             # the destination answered Success
    WARNING = "warning"             # it answered a Warning (PS3.4 B.2.3: stored, coerced...)
    FAILED = "failed"               # it answered a Failure status
    NOT_ACCEPTED = "not accepted"   # no usable context, or transcoding impossible / not allowed
    UNREADABLE = "unreadable"       # our file could not be read
    LOST = "lost"                   # no association: refused, aborted or disconnected

    @property
    def counts_as(self) -> str:
        """The C-MOVE/C-GET sub-operation counter it adds to (PS3.4 C.4.2.1.4):
        completed, warning or failed."""
        return {SendResult.SUCCESS: "completed", SendResult.WARNING: "warning"}.get(self, "failed")


@lazy_dataclass(frozen=True)
class SendOutcome:
    """The result of sending one instance."""

    item: Outgoing
    result: SendResult
    status: int | None = None   # the destination's C-STORE-RSP status, when it answered
    sent_bytes: int = 0         # bytes of the file (or of the transcoded file) sent
    detail: str = ""            # why, when it is not SUCCESS


def needs_of(items: Iterable[Outgoing]) -> set[tuple[str, str]]:
    """The (SOP class, stored transfer syntax) pairs a set of instances needs."""
    return {(i.sop_class_uid, i.transfer_syntax_uid) for i in items}


def presentation_contexts(needs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """The contexts to propose for these (SOP class, transfer syntax) pairs: the
    stored syntax alone first, then Explicit + Implicit VR LE, per SOP class."""
    contexts: list[PresentationContext] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for sop_class, ts in sorted(needs, key=lambda n: (n[0], n[1] in _FALLBACK, n[1])):
        for offer in ((ts,) if ts not in _FALLBACK else (), _FALLBACK):
            if offer and (sop_class, offer) not in seen:
                seen.add((sop_class, offer))
                contexts.append(build_context(sop_class, list(offer)))
    if len(contexts) > _MAX_CONTEXTS:
        log.warning("%d presentation contexts needed, %d proposed: instances of the others "
                    "will fail", len(contexts), _MAX_CONTEXTS)
        contexts = contexts[:_MAX_CONTEXTS]
    return contexts


class _Plan(enum.Enum):
    STREAM = "stream"           # the stored syntax was accepted: send the file as it is
    TRANSCODE = "transcode"     # Explicit VR LE accepted: transcode into a spool file
    IN_MEMORY = "in memory"     # only Implicit VR LE: pynetdicom re-encodes a Dataset


def _accepted(assoc, as_scu: bool = True) -> set[tuple[str, str]]:
    """(SOP class, transfer syntax) of the contexts accepted on ``assoc`` where we may
    send C-STORE requests (as SCU: PS3.7 D.3.3.4 role selection on a C-GET)."""
    return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts if cx.as_scu or not as_scu}


def _plan(accepted: set[tuple[str, str]], item: Outgoing,
          allow_transcoding: bool) -> tuple[_Plan | None, str]:
    """How to send ``item`` over the accepted contexts, or (None, why not)."""
    sop, ts = item.sop_class_uid, item.transfer_syntax_uid
    if (sop, ts) in accepted:
        return _Plan.STREAM, ""
    explicit, implicit = (sop, syntax.EXPLICIT_LE) in accepted, (sop, syntax.IMPLICIT_LE) in accepted
    if not (explicit or implicit):
        return None, "the destination accepted no context for this SOP class"
    if ts not in _FALLBACK:
        # PS3.5 A.4: leaving an encapsulated syntax means decoding the pixel data.
        if not allow_transcoding:
            return None, f"stored in {ts}, not accepted, and transcoding is not allowed"
        if not pixels.can_transcode(ts):
            return None, f"stored in {ts}, not accepted, and its pixel data cannot be decoded"
    if explicit:
        return (_Plan.TRANSCODE if ts not in _FALLBACK else _Plan.IN_MEMORY), ""
    return _Plan.IN_MEMORY, ""


def _transcoded(path: Path, spool_dir: Path | None) -> Path:
    """``path`` transcoded to Explicit VR LE into a new spool file (the caller removes it)."""
    fd, name = tempfile.mkstemp(prefix="send-", suffix=".dcm", dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in pixels.transcode_to_explicit_le(path):
                out.write(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def accepts_as_stored(assoc, item: Outgoing) -> bool:
    """True when ``item`` can go over ``assoc`` in its stored transfer syntax (its
    file's bytes as they are)."""
    return _plan(_accepted(assoc), item, False)[0] is _Plan.STREAM


def dataset_for(assoc, item: Outgoing, *, allow_transcoding: bool = True,
                spool_dir: Path | None = None) -> tuple[Dataset | None, str]:
    """``item`` as a pydicom Dataset that ``assoc.send_c_store`` can send over its
    accepted contexts (the stored encoding, or Explicit VR LE when transcoded), or
    (None, why not). The whole object is read into memory: for pynetdicom's C-GET
    SCP, which sends only Datasets; :class:`StoreSender` streams instead."""
    plan, why = _plan(_accepted(assoc), item, allow_transcoding)
    if plan is None:
        return None, why
    try:
        if plan is _Plan.TRANSCODE:
            spooled = _transcoded(item.path, spool_dir)
            try:
                return dcmread(spooled), ""
            finally:
                os.unlink(spooled)
        return dcmread(item.path), ""
    except (OSError, pixels.PixelError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"


class AckPrompter:
    """Acknowledges at once what the peer sends on a socket, while it runs.

    Why: a peer with Nagle's algorithm on that writes a response in two pieces
    (DCMTK writes the PDU header, then the rest: storescp, getscu) holds the
    second piece until the first is acknowledged, and Linux delays that ACK by
    40 ms when the receiver has nothing to send: one stall per C-STORE-RSP,
    Orthanc's 15-20 instances/s. pynetdicom's reader cannot be told to ACK
    early, so this thread waits for the socket to turn readable and sets
    TCP_QUICKACK (tcp(7)), which sends the pending ACK now. Nothing is read
    here; pynetdicom's reader takes the bytes as usual.
    """

    _QUICKACK = getattr(socket, "TCP_QUICKACK", None)   # Linux only
    _LET_READ = 0.0003   # seconds for the reader to take the bytes before looking again

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "AckPrompter":
        """Start prompting (a no-op without a socket or off Linux)."""
        if self._sock is not None and self._QUICKACK is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ack-prompter", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop; returns within the thread's select timeout."""
        self._stop.set()

    def _run(self) -> None:
        sock, stop = self._sock, self._stop
        try:
            while not stop.is_set():
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    sock.setsockopt(socket.IPPROTO_TCP, self._QUICKACK, 1)
                    stop.wait(self._LET_READ)
        except (OSError, ValueError):
            pass   # the socket was closed under us: the association is over

    def __enter__(self) -> "AckPrompter":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StoreSender:
    """One outbound association to a destination, sending stored instances."""

    def __init__(self, destination: Destination, needs: Iterable[tuple[str, str]], *,
                 spool_dir: Path | None = None, direct: bool = False) -> None:
        self.destination = destination
        self._direct = direct     # write streamed requests straight to the socket
        self._contexts = presentation_contexts(needs)
        self._spool = spool_dir   # where transcoded copies are written (None: the system's)
        self._assoc = None
        self._prompter: AckPrompter | None = None
        self._writes: DirectStoreWrites | None = None
        self._msg_id = 0
        self._gone = False        # a request went unanswered: the association is over
        self.error = ""           # why the association could not be opened
        self.sent_bytes = 0

    # -- the association ----------------------------------------------------------

    def open(self) -> bool:
        """Request the association; True once established, else ``error`` says why."""
        dest = self.destination
        # pynetdicom's documented switch for send_c_store(path): stream the data set
        # from the file instead of reading it whole. Process-wide by pynetdicom's design;
        # it only concerns sends of a path, which only this module makes.
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = AE(ae_title=dest.calling_aet)
        ae.requested_contexts = self._contexts
        ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = dest.timeout
        ae.network_timeout = dest.timeout
        assoc, self.error = request_association(ae, dest.host, dest.port, dest.called_aet)
        if self.error:
            log.warning("C-STORE to %s: %s", dest, self.error)
            return False
        sock = _no_delay(assoc)
        if self._direct:
            self._writes = DirectStoreWrites(assoc)   # prompts the peer's ACKs itself
        else:
            self._prompter = AckPrompter(sock).start()
        self._assoc = assoc
        return True

    @property
    def is_established(self) -> bool:
        """True while the association is up: not once a request went unanswered,
        although pynetdicom may not have noticed the peer's A-ABORT yet (its
        reactor does, and only once it runs again)."""
        return not self._gone and self._assoc is not None and self._assoc.is_established

    def release(self) -> None:
        """Release the association (A-RELEASE, PS3.8 7.2) if it is still up."""
        if self._prompter is not None:
            self._prompter.stop()
        if self.is_established:
            self._assoc.release()

    def __enter__(self) -> "StoreSender":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- sending -------------------------------------------------------------------

    def send(self, item: Outgoing, *, move_originator: tuple[str, int] | None = None,
             priority: int = 2) -> SendOutcome:
        """C-STORE ``item`` (PS3.7 9.1.1); never raises.

        ``move_originator``: (AE title, Message ID) of the C-MOVE this is a
        sub-operation of (PS3.7 9.1.1.1, Move Originator ... ).
        """
        if not self.is_established:
            return SendOutcome(item, SendResult.LOST, detail=self.error or "association closed")
        plan, why = _plan(_accepted(self._assoc), item, self.destination.allow_transcoding)
        if plan is None:
            log.warning("C-STORE to %s: %s (%s) not sent: %s", self.destination,
                        item.sop_instance_uid, item.sop_class_uid, why)
            return SendOutcome(item, SendResult.NOT_ACCEPTED, detail=why)
        spooled = None
        try:
            if plan is _Plan.TRANSCODE:
                spooled = _transcoded(item.path, self._spool)
            what = spooled or item.path
            # A stored file is as long as the index says (the store contract).
            size = item.size if spooled is None else os.path.getsize(spooled)
            self._msg_id = self._msg_id % 0xFFFF + 1   # US, PS3.7 9.3.1.1
            originator = move_originator or (None, None)
            if plan is _Plan.IN_MEMORY or self._writes is None:
                payload = dcmread(what) if plan is _Plan.IN_MEMORY else what
                if not pause_reactor(self._assoc):   # else it may take the response
                    self._gone = True
                    self.error = "the destination aborted or closed the association"
                    log.warning("C-STORE to %s: %s not sent: %s", self.destination,
                                item.sop_instance_uid, self.error)
                    return SendOutcome(item, SendResult.LOST, detail=self.error)
                rsp = self._assoc.send_c_store(payload, msg_id=self._msg_id, priority=priority,
                                               originator_aet=originator[0],
                                               originator_id=originator[1])
                answer = (None if rsp is None or rsp.get("Status") is None else
                          StoreResponse(int(rsp.Status), str(rsp.get("ErrorComment", "") or "")))
            else:
                answer = self._writes.exchange(what, msg_id=self._msg_id, priority=priority,
                                               sop_class_uid=item.sop_class_uid,
                                               sop_instance_uid=item.sop_instance_uid,
                                               originator_aet=originator[0],
                                               originator_id=originator[1])
        except (OSError, pixels.PixelError, ValueError, AttributeError) as e:
            # OSError: our file; PixelError: its pixel data; ValueError/AttributeError:
            # pynetdicom found no context or the file meta incomplete.
            detail = f"{type(e).__name__}: {e}"
            log.warning("C-STORE to %s: %s not sent: %s", self.destination,
                        item.sop_instance_uid, detail)
            result = SendResult.UNREADABLE if isinstance(e, OSError) else SendResult.NOT_ACCEPTED
            return SendOutcome(item, result, detail=detail)
        except RuntimeError as e:  # the association went away before or while writing
            self._gone = True
            return SendOutcome(item, SendResult.LOST, detail=str(e))
        finally:
            if spooled is not None:
                os.unlink(spooled)
        if answer is None or answer.status is None:
            # No response: the association was aborted or the DIMSE timeout passed
            # (then it was aborted here or by pynetdicom). Either way nothing more goes
            # on it: the next request would wait out the DIMSE timeout for nothing.
            self._gone = True
            self.error = "no response: the destination disconnected or timed out"
            log.warning("C-STORE to %s: %s: %s", self.destination, item.sop_instance_uid,
                        self.error)
            return SendOutcome(item, SendResult.LOST, detail=self.error)
        self.sent_bytes += size
        status, comment = answer
        category = code_to_category(status)
        if category == "Success":
            return SendOutcome(item, SendResult.SUCCESS, status, size)
        if category == "Warning":
            return SendOutcome(item, SendResult.WARNING, status, size, comment)
        log.warning("C-STORE to %s: %s refused: status 0x%04X %s", self.destination,
                    item.sop_instance_uid, status, comment)
        return SendOutcome(item, SendResult.FAILED, status, size,
                           comment or f"status 0x{status:04X}")


def _no_delay(assoc) -> socket.socket | None:
    """TCP_NODELAY on our side too: each C-STORE request ends in a small PDU that
    Nagle would hold until the peer's delayed ACK. Returns the socket."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return sock

