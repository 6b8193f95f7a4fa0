"""DIMSE adapters of the worklist services: Modality Worklist C-FIND (PS3.4 K) and Modality
Performed Procedure Step N-CREATE / N-SET (PS3.4 F.7).

Thin: decode what pynetdicom gives, call the worklist catalog or the MPPS manager, map the
outcome to a named status. Runs on pynetdicom's association threads. Logs name the peer
first; patient names and IDs never appear at INFO.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance.dicom.status import FindStatus, MppsStatus
from appliance.dicom.tuning import C_FIND_RSP, encoded_sender, response_command
from appliance.worklist.encoded import Headers, answer_bytes
from appliance.worklist.matching import QueryError, answer, attrs_from_dataset, compile_query, restrict_to_station
from appliance.worklist.mpps import MppsManager, Outcome
from appliance.worklist.source import WorklistFolder

log = logging.getLogger(__name__)

# How long a C-FIND arriving during the start-up read of a large folder waits.
_LOAD_WAIT = 120.0

# Direct answers are written to the socket in pieces of about this many bytes; between
# pieces the handler looks for the peer's C-CANCEL, and waits while more than _UNSENT bytes
# sit in the socket's send queue (a peer reading slowly does not get a whole folder queued
# ahead of its C-CANCEL).
_SEND_PIECE = 64 * 1024
_UNSENT = 64 * 1024
_UNSENT_POLL = 0.002  # seconds between looks at the send queue while it is full
_UNLIMITED_PDU_FILL = 32 * 1024  # PDU size when the peer sets no maximum (as tuning.py)

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"


@dataclass(frozen=True)
class MwlOptions:
    """The C-FIND options of ``Worklists`` (replace the object whole to reload)."""

    filter_issuer_aet: bool = False
    limit_answers: int = 0  # 0 = no limit


def _status(code: int, comment: str = "", *, offending: tuple[int, ...] = (),
            error_id: int | None = None, attribute_list: tuple[int, ...] = ()) -> Dataset:
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    if offending:
        ds.OffendingElement = list(offending)
    if error_id is not None:
        ds.ErrorID = error_id
    if attribute_list:
        ds.AttributeIdentifierList = list(attribute_list)
    return ds


def pending_command(message_id: int, sop_class_uid: str) -> bytes:
    """The command set of a Pending C-FIND-RSP (PS3.7 9.3.2.2), built directly because
    pynetdicom's primitive-to-message conversion and pydicom encoding take 0.3 ms."""
    return response_command(C_FIND_RSP, message_id, sop_class_uid, FindStatus.PENDING,
                            data_set=True)


class _DirectAnswers:
    """Pending C-FIND responses written by the handler's thread straight to the
    association's socket, instead of yielding a Dataset per answer to pynetdicom (on the
    fast path only: appliance.dicom.tuning.encoded_sender; stock pynetdicom answers
    each one itself).

    pynetdicom turns every yielded identifier into a C-FIND-RSP by building and encoding a
    command set and the identifier with pydicom and queueing two PDUs for its DUL thread:
    about 0.5 ms per answer, most of a 50-answer query, and seconds for a whole folder.
    Here the Pending command set is encoded once per query (:func:`pending_command`), each
    identifier is bytes assembled from the item's encoded values
    (:mod:`appliance.worklist.encoded`), each response is one P-DATA-TF PDU holding its
    command PDV and its data PDV (more PDUs only if it exceeds the peer's maximum PDU
    length; PS3.8 9.3.5, E.2), and the PDUs go out in pieces of about 64 KiB with one
    ``sendall`` each. Never two responses in one PDU: the standard allows it, but
    pynetdicom's own receiver (and so every SCU built on it) keeps only the first message
    of a PDU and drops the rest.

    Order: the DUL thread has nothing queued to send while a C-FIND is being answered (the
    peer waits for its responses), and every piece is written before the handler yields
    its final status, which pynetdicom then queues behind them. If the DUL does have
    something queued, or an answer has to go the pydicom way (:meth:`queued`), the rest of
    the query's answers are queued on the DUL as pynetdicom queues its own, keeping their
    order. The DUL thread reads the peer's PDUs meanwhile, so a C-CANCEL is seen between
    pieces.
    """

    def __init__(self, assoc, send, context_id: int, max_pdu: int, command: bytes,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        self._assoc = assoc
        self._send = send  # FastDimse.send_encoded: queues on the DUL
        self._cancelled = cancelled
        self._max_pdu = max_pdu
        self._context_id = context_id
        self._command = command
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._socket = self._plain_socket(assoc.dul)
        self.failed = False  # the socket failed: nobody to answer

    @staticmethod
    def _plain_socket(dul) -> socket.socket | None:
        sock = getattr(getattr(dul, "socket", None), "socket", None)
        if type(sock) is not socket.socket:  # TLS or none: the DUL's way
            return None
        if dul.to_provider_queue.queue:  # something before us: keep its place
            return None
        return sock

    @classmethod
    def open(cls, event) -> tuple["_DirectAnswers | None", bool]:
        """(the writer for this C-FIND, implicit VR) or (None, _) on stock pynetdicom or
        when its transfer syntax is not Little Endian Implicit or Explicit VR (Big Endian
        and Deflated answers are left to pynetdicom)."""
        syntax = event.context.transfer_syntax
        send = encoded_sender(event.assoc)
        if send is None or syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
            return None, False
        request = event.request
        command = pending_command(request.MessageID, request.AffectedSOPClassUID)
        assoc = event.assoc
        writer = cls(assoc, send, event.context.context_id, assoc.dimse.maximum_pdu_size,
                     command, lambda: event.is_cancelled)
        return writer, syntax == ImplicitVRLittleEndian

    def send(self, identifier: bytes) -> None:
        """Send one Pending response with this identifier (buffered up to a piece)."""
        if self._socket is None:
            self._send(self._context_id, self._command, identifier)
            return
        pdus = _p_data_pdus(self._context_id, self._max_pdu, self._command, identifier)
        self._pending.append(pdus)
        self._pending_size += len(pdus)
        if self._pending_size >= _SEND_PIECE:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        if self._socket is None or self.failed:
            return
        try:
            self._wait_for_room()
            self._socket.sendall(data)
        except OSError as e:  # the peer went away or stopped reading: the DUL notices too
            log.warning("MWL C-FIND: cannot send answers: %s", e)
            self.failed = True

    def _wait_for_room(self) -> None:
        sock = self._socket
        assert sock is not None
        limit = self._assoc.network_timeout or 60.0
        deadline = time.monotonic() + limit
        while _unsent(sock) > _UNSENT and not self._cancelled():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the peer read nothing for {limit:.0f} s")
            time.sleep(_UNSENT_POLL)

    def queued(self) -> None:
        """From now on, queue answers on the DUL (an answer goes the pydicom way next)."""
        self.flush()
        self._socket = None


def _unsent(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux SIOCOUTQ);
    0 where it cannot be asked."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, AttributeError):
        return 0


def _p_data_pdus(context_id: int, max_pdu: int, command: bytes, data: bytes) -> bytes:
    """One DIMSE message as P-DATA-TF PDUs (the bytes ``FastDimse.send_encoded`` has the DUL
    send):
    the command PDV, then the data set's, in as few PDUs as the peer's maximum PDU length
    (``max_pdu``, 0: unlimited) allows (PS3.8 9.3.5: a PDV item costs 6 bytes besides its
    fragment; PS3.8 E.2: bit 0 of its control header flags a command fragment, bit 1 the
    last fragment)."""
    limit = max_pdu or _UNLIMITED_PDU_FILL
    step = limit - 6
    out: list[bytes] = []
    pdvs: list[bytes] = []
    size = 0
    for part, flags in ((command, 0x01), (data, 0x00)):
        for start in range(0, len(part), step):
            chunk = part[start:start + step]
            if size + len(chunk) + 6 > limit:
                out.append(_pdu(pdvs, size))
                pdvs, size = [], 0
            last = 0x02 if start + step >= len(part) else 0x00
            pdvs.append(_PDV_HEADER(len(chunk) + 2, context_id, flags | last) + chunk)
            size += len(chunk) + 6
    out.append(_pdu(pdvs, size))
    return b"".join(out)


def _pdu(pdvs: list[bytes], size: int) -> bytes:
    return _PDU_HEADER(0x04, 0, size) + b"".join(pdvs)


_PDU_HEADER = struct.Struct(">BBI").pack  # PS3.8 9.3.5: P-DATA-TF, reserved, length
_PDV_HEADER = struct.Struct(">IBB").pack  # item length, context ID, message control header


class WorklistDimse:
    """The C-FIND MWL, N-CREATE and N-SET handlers (wired by ``DicomHandlers``)."""

    def __init__(self, worklists: WorklistFolder | None, mpps: MppsManager | None,
                 options: MwlOptions) -> None:
        self.worklists = worklists
        self.mpps = mpps
        self.options = options

    def set_options(self, options: MwlOptions) -> None:
        """Swap the C-FIND options (SIGHUP reload); new queries use them."""
        self.options = options

    # -- C-FIND ------------------------------------------------------------

    def find(self, event, *, allowed: bool, peer: str, calling: str) -> Iterator[tuple]:
        """C-FIND on the Modality Worklist Information Model (PS3.4 K.4.1.3): one Pending
        answer per matching item, then Success; or a failure status."""
        started = time.monotonic()
        if event.context.abstract_syntax != MODALITY_WORKLIST_FIND or self.worklists is None:
            yield _status(FindStatus.SOP_CLASS_NOT_SUPPORTED, "only Modality Worklist C-FIND"), None
            return
        if not allowed:
            log.warning("%s: MWL C-FIND from %s refused: not allowed to query the worklist",
                        peer, calling)
            yield _status(FindStatus.REFUSED_NOT_AUTHORIZED, "this AE may not query the worklist"), None
            return
        try:
            attrs = attrs_from_dataset(event.identifier)
        except Exception as e:  # noqa: BLE001 - pydicom's many decoding errors
            log.warning("%s: MWL C-FIND from %s: identifier not decodable: %s", peer, calling, e)
            yield _status(FindStatus.UNABLE_TO_PROCESS, "identifier not decodable"), None
            return
        options = self.options
        try:
            if options.filter_issuer_aet:
                attrs = restrict_to_station(attrs, calling)
            query = compile_query(attrs)
        except QueryError as e:
            log.warning("%s: MWL C-FIND from %s refused: %s", peer, calling, e)
            yield _status(FindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, e.why,
                          offending=(e.tag,)), None
            return
        if not self.worklists.loaded.wait(_LOAD_WAIT):
            log.warning("%s: MWL C-FIND from %s refused: worklist folder still loading", peer, calling)
            yield _status(FindStatus.UNABLE_TO_PROCESS, "worklist still loading, try again"), None
            return
        # Every change made to the folder before this query, then the items as they are
        # now for the whole query (appliance.worklist.source: read-your-writes).
        catalog = self.worklists.current()
        direct, implicit = _DirectAnswers.open(event)
        headers = Headers(implicit)
        sent = 0
        ending, final = "complete", None
        for item, attrs, values in catalog.matches(query):
            if event.is_cancelled:
                ending, final = "cancelled (C-CANCEL)", FindStatus.CANCEL
                break
            if options.limit_answers and sent >= options.limit_answers:
                ending = f"capped by LimitAnswers ({options.limit_answers})"
                final = _status(FindStatus.CANCEL, "more matches than Worklists.LimitAnswers")
                break
            data = None
            if direct is not None:
                data = answer_bytes(query, attrs, values, item.charset, implicit, headers)
            if data is not None:
                direct.send(data)
                if direct.failed:
                    return
            else:
                if direct is not None:
                    direct.queued()  # keeps its place behind what was sent directly
                yield FindStatus.PENDING, answer(query, attrs, item.charset)
            sent += 1
        if direct is not None:
            direct.flush()
            if direct.failed or not event.assoc.is_established:
                return  # aborted meanwhile: nobody to answer
        # Logged before the final status: pynetdicom stops reading the generator after it.
        log.info("%s: MWL C-FIND from %s: %d answer(s) of %d item(s), %s, %.1f ms", peer, calling,
                 sent, len(catalog), ending, (time.monotonic() - started) * 1000,
                 extra={"PEER": peer, "CALLING_AET": calling, "ANSWERS": sent})
        if final is not None:
            yield final, None

    # -- MPPS --------------------------------------------------------------

    def n_create(self, event, *, allowed: bool, peer: str, calling: str) -> tuple[Dataset, Dataset | None]:
        """N-CREATE of a Modality Performed Procedure Step (PS3.4 F.7.2.1)."""
        if self.mpps is None:
            return _status(FindStatus.SOP_CLASS_NOT_SUPPORTED), None
        if not allowed:
            log.warning("%s: MPPS N-CREATE from %s refused: not allowed", peer, calling)
            return _status(MppsStatus.REFUSED_NOT_AUTHORIZED, "this AE may not send MPPS"), None
        requested = event.request.AffectedSOPInstanceUID
        outcome = self.mpps.create(str(requested) if requested else None, event.attribute_list,
                                   calling_aet=calling, peer=peer)
        if not outcome.ok:
            return self._failure(outcome, with_attributes=False), None
        if requested:
            return _status(outcome.status), None
        # PS3.7 10.1.5.1.3: the SCP assigned the UID; pynetdicom moves it into the response.
        created = Dataset()
        created.AffectedSOPInstanceUID = outcome.sop_instance_uid
        return _status(outcome.status), created

    def n_set(self, event, *, allowed: bool, peer: str, calling: str) -> tuple[Dataset, Dataset | None]:
        """N-SET of a Modality Performed Procedure Step (PS3.4 F.7.2.2)."""
        if self.mpps is None:
            return _status(FindStatus.SOP_CLASS_NOT_SUPPORTED), None
        if not allowed:
            log.warning("%s: MPPS N-SET from %s refused: not allowed", peer, calling)
            return _status(MppsStatus.REFUSED_NOT_AUTHORIZED, "this AE may not send MPPS"), None
        outcome = self.mpps.update(str(event.request.RequestedSOPInstanceUID or ""),
                                   event.modification_list, calling_aet=calling, peer=peer)
        if not outcome.ok:
            return self._failure(outcome, with_attributes=True), None
        return _status(outcome.status), None

    @staticmethod
    def _failure(outcome: Outcome, *, with_attributes: bool) -> Dataset:
        # N-CREATE responses have no Attribute Identifier List in pynetdicom's primitive.
        return _status(outcome.status, outcome.comment, error_id=outcome.error_id,
                       attribute_list=outcome.tags if with_attributes else ())
