"""C-FIND answers written straight to the association's socket, on the fast path.

Shared by every C-FIND SCP: the Modality Worklist (appliance.dicom.mwl) and
Query/Retrieve (appliance.dicom.qr_find). See :class:`DirectAnswers`.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import termios
import time
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from appliance.dicom.status import FindStatus
from appliance.dicom.tuning import C_FIND_RSP, encoded_sender, response_command

__all__ = ["DirectAnswers", "pending_command", "status_dataset"]

log = logging.getLogger(__name__)

# Direct answers are written to the socket in pieces of about this many bytes; between
# pieces the handler looks for the peer's C-CANCEL, and waits while more than _UNSENT bytes
# sit in the socket's send queue (a peer reading slowly does not get a whole folder queued
# ahead of its C-CANCEL).
_SEND_PIECE = 64 * 1024
_UNSENT = 64 * 1024
_UNSENT_POLL = 0.002  # seconds between looks at the send queue while it is full
_UNLIMITED_PDU_FILL = 32 * 1024  # PDU size when the peer sets no maximum (as tuning.py)

def status_dataset(code: int, comment: str = "", *, offending: tuple[int, ...] = (),
                   error_id: int | None = None, attribute_list: tuple[int, ...] = ()) -> Dataset:
    """The status part of a response as pynetdicom takes it from a handler: Status, and
    the Error Comment, Offending Element, Error ID, Attribute Identifier List that go
    with a failure (PS3.7 C.4)."""
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


class DirectAnswers:
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
    def open(cls, event) -> tuple["DirectAnswers | None", bool]:
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
            log.warning("C-FIND: cannot send answers: %s", e)
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
