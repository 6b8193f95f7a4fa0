"""The fast path: pynetdicom's acceptor, receiving, answering and accepting with
less waiting and less work. Accepted associations only.

It is made of subclasses, installed through pynetdicom's documented server hook
(``AE.make_server(..., request_handler=...)``, see appliance.dicom.transport):
:class:`AcceptorRequestHandler` builds a :class:`FastAssociation` for each
accepted connection, which runs a :class:`FastDUL` and a :class:`FastDimse`.
Nothing in pynetdicom's modules or classes is changed, so every association the
daemon requests itself (appliance.dicom.scu) runs stock pynetdicom.
appliance.dicom.transport checks at start-up that the pynetdicom code these
classes extend or repeat is the code they were written against, and runs stock
pynetdicom otherwise (or when PACS_APPLIANCE_STOCK_PYNETDICOM=1).

Wake-ups. pynetdicom 3 runs two polling loops per association. The DUL
thread sleeps ``_run_loop_delay`` (1 ms) whenever a pass found nothing to do,
so a PDU that arrives, or a response the handler queued, waits for the rest of
that sleep. The association thread sleeps 1 ms before every look at its DIMSE
message queue. storescu sends the next object only after the C-STORE-RSP of
the last, so these waits add about 2 ms to every instance, and a worklist
query pays them between its request and its first answer. The loops and their
periods stay (:meth:`FastDUL.run_reactor` and :meth:`FastAssociation._run_reactor`
are pynetdicom's, but for their sleeps), but each sleep ends early:

- the DUL sleeps in ``select`` on its socket and on an eventfd that its
  to-provider queue signals on every ``put`` (and ``kill_dul`` too), so
  incoming data, outgoing responses and a stop are handled at once, and an
  idle DUL wakes every 50 ms rather than every 1 ms;
- the association thread waits on its message queue's condition, which a
  decoded message notifies.

Reading. pynetdicom's own reader blocks in ``recv`` until a whole PDU is in, so
a peer that sends part of a PDU before its association is established and then
goes quiet held the DUL thread there for ever: the ARTIM timer, which the same
thread checks, never fired, and neither the connection nor the thread ever
ended (the association thread waited for the DUL, and a daemon with one of
them could not stop on SIGTERM). :class:`_Receiver` reads from the first byte
on, without blocking, so ARTIM (``DicomScpTimeout``) ends such a connection.
It also refuses at once a PDU of an unknown type (PS3.8 9.3.1), and any PDU
but an established association's P-DATA-TF longer than 1 MiB, rather than
buffering what its length announces. And if pynetdicom itself raises while it
negotiates or serves an association (a malformed A-ASSOCIATE-RQ made its
acceptor thread die, leaving the connection open for ever), the association is
aborted and its connection closed (:meth:`FastAssociation.run_reactor`). All of
this is the fast path's: with stock pynetdicom (PACS_APPLIANCE_STOCK_PYNETDICOM=1,
or an unverified version) its blocking reader and its thread's death stay.

P-DATA. Each P-DATA-TF PDU (16 KB with Orthanc's default MaximumPduLength,
about 60 per ultrasound image) goes through pynetdicom's generic path: read in
4 KB pieces, copied three times, decoded into item objects, queued as an FSM
event, dequeued, turned into a primitive. While the association is
established (Sta6) and nothing else is queued, that path always ends in the
same place (DT-2: hand the P-DATA primitive to the DIMSE provider), so
:class:`_Receiver` goes there directly: the socket is read in pieces of up to
1 MiB, every whole PDU in them is split into PDVs, and the data fragments of
an object being received go straight into its file. Every other PDU is decoded
and queued for pynetdicom's state machine exactly as its own reader does.

Received files. With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom opens a
``NamedTemporaryFile`` in the system's temporary folder for every C-STORE data
set and has pydicom build and encode its File Meta Information (0.3 ms).
:class:`FastDimse` takes the last fragment of a C-STORE-RQ's command set
itself and opens the file in the storage's incoming folder instead
(appliance.dicom.receive), writing the same File Meta bytes directly
(:class:`FileMeta`).

Encoding. pynetdicom builds a pydicom dataset, and has pydicom encode it, for
every C-STORE-RSP (0.4 ms); :func:`_send_store_success` writes the same bytes
directly, and any response other than a plain Success goes through pynetdicom.
:meth:`FastDimse.send_encoded` lets a handler send responses it encoded itself
(the worklist's C-FIND answers, appliance.dicom.mwl).

Contexts. For every association pynetdicom deep-copies the server's supported
contexts: about 170 storage classes times 35 transfer syntaxes, each UID
re-created and re-validated by pydicom (80 ms here); sharing the UIDs still left
4-10 ms of copying, most of an association's set-up. The acceptor's negotiation
only reads those contexts, so :class:`AcceptorRequestHandler` gives every
association the server's own (:meth:`FastPath.contexts_for_association`).

Together these halve the server's CPU time per received image (see the note
in tests/bench/README.md). The comments name the pynetdicom 3.0.4 code each
piece extends or repeats; tests/dicom/test_pdu.py drives it at the PDU level.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import struct
import threading
import time
import weakref
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Callable

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler

from appliance.dicom.receive import ReceivedFiles
from appliance.dicom.status import RetrieveStatus, Status

log = logging.getLogger(__name__)
# The lines pynetdicom's own reactors log, where they are repeated here.
_PYNETDICOM_DUL_LOG = logging.getLogger("pynetdicom.dul")
_PYNETDICOM_ASSOC_LOG = logging.getLogger("pynetdicom.association")

# The association reactor's sleep before each look at its message queue
# (pynetdicom/association.py, Association._run_reactor).
_ASSOC_REACTOR_PERIOD = 0.001


class _WakingQueue(queue.Queue):
    """The DUL's to-provider queue: a put signals the eventfd while the DUL sleeps.

    Only then: a C-FIND queues 50 answers in a row, and a wake-up syscall for
    each one made the DUL thread fight the answering thread for the GIL.
    """

    def __init__(self, wake_fd: int) -> None:
        super().__init__()
        self._wake_fd = wake_fd
        self.sleeping = False

    def _put(self, item) -> None:
        super()._put(item)
        if self.sleeping:
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:  # closed with its DUL: nobody is waiting any more
                pass


# How long an idle DUL waits for its socket or its eventfd. Nothing else needs
# it sooner: the ARTIM timer counts tens of seconds, and kill_dul signals the
# eventfd. Waking every 1 ms instead costs each idle association a thousand
# GIL round trips a second, which slows every other association's work.
_DUL_IDLE_WAIT = 0.05


_P_DATA_TF = 0x04
_PDU_HEADER = 6      # type, reserved, 4-byte length (PS3.8 9.3.1)
_PDV_HEADER = 4      # 4-byte item length, then context ID and control header (PS3.8 9.3.5.1)


_RX_BUFFER = 1 << 20   # a 0.9 MB image arrives in a few reads
_MAX_PDU = 64 << 20    # a longer P-DATA-TF is refused rather than buffered
# Any other PDU, and every PDU before the association is established: an
# A-ASSOCIATE-RQ of 128 contexts with a dozen transfer syntaxes each is ~50 KB.
_MAX_OTHER_PDU = 1 << 20
_PDU_TYPES = frozenset(range(0x01, 0x08))  # PS3.8 9.3.1: A-ASSOCIATE-RQ ... A-ABORT
_DATA_FRAGMENT = 0b00  # PS3.8 E.2 control header: data set, not the last fragment


def _fast_p_data(dul) -> bool:
    """True when a P-DATA-TF PDU would only be handed to DIMSE (Sta6, DT-2)
    and nothing waits for the reactor before it."""
    return (dul.state_machine.current_state == "Sta6"
            and not dul.assoc.get_handlers(evt.EVT_DATA_RECV)
            and not dul.assoc.get_handlers(evt.EVT_PDU_RECV)
            and _nothing_queued(dul))


def _nothing_queued(dul) -> bool:
    """No FSM event, decoded PDU or primitive to send waits for the reactor."""
    # The queues' deques, read without their locks (as Queue.qsize would,
    # for a hint): asked once per PDU, the three lock round trips were half
    # the cost of taking a P-DATA-TF the short way.
    return not (dul.event_queue.queue or dul._recv_pdu.queue or dul.to_provider_queue.queue)


class _Receiver:
    """Reads an association's socket in large pieces, never waiting for more.

    It replaces pynetdicom's reader from the connection's first byte (it may
    hold the start of the next PDU). Each complete PDU is either a P-DATA-TF of
    an established association taken the short way, its data fragments written
    straight into the object's file, or, like anything else (or anything after
    a PDU that went the FSM's way), decoded and queued exactly as pynetdicom's
    reader does.
    """

    def __init__(self) -> None:
        self.buf = bytearray(_RX_BUFFER)
        self.filled = 0

    def receive(self, dul) -> None:
        """Read what the socket has (it is readable) and dispatch whole PDUs."""
        raw = getattr(dul.socket, "socket", None)
        if raw is None:
            return
        try:
            with memoryview(self.buf) as view:
                n = raw.recv_into(view[self.filled:])
        except OSError as e:  # TimeoutError included
            log.error("connection lost while receiving: %s", e)
            dul.event_queue.put("Evt17")  # transport connection closed
            return
        if not n:
            if self.filled:
                log.error("connection closed in the middle of a PDU (%d bytes)", self.filled)
            dul.event_queue.put("Evt17")
            return
        self.filled += n
        try:
            # Acknowledge at once (Linux leaves quick-ack mode on its own): a
            # scanner with Nagle's algorithm on (DCMTK's default) holds back
            # the short last piece of every object until its data is acknowledged.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        self._dispatch(dul)

    def _dispatch(self, dul) -> None:
        buf, pos, end = self.buf, 0, self.filled
        fast = _fast_p_data(dul)
        with memoryview(buf) as view:
            while end - pos >= _PDU_HEADER:
                kind = buf[pos]
                length = int.from_bytes(view[pos + 2:pos + 6], "big")
                if kind not in _PDU_TYPES:
                    log.error("a PDU of unknown type %#04x: refused", kind)
                    dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom aborts (AA-8)
                    self.filled = 0
                    return
                if length > _pdu_limit(dul, kind):
                    log.error("a PDU of type %#04x and %d bytes: refused", kind, length)
                    dul.event_queue.put("Evt19")
                    self.filled = 0
                    return
                total = _PDU_HEADER + length
                if end - pos < total:
                    break
                pdu = view[pos:pos + total]
                pos += total
                if fast and buf[pos - total] == _P_DATA_TF:
                    if not _deliver_pdvs(dul, pdu):
                        self.filled = 0  # Evt19 queued: the association ends
                        return
                    fast = _nothing_queued(dul)
                else:
                    fast = False  # what follows keeps its place behind this one
                    _to_fsm(dul, pdu)
        rest = end - pos
        if rest and pos:
            buf[:rest] = buf[pos:end]
        self.filled = rest
        if rest >= _PDU_HEADER:
            total = _PDU_HEADER + int.from_bytes(buf[2:6], "big")
            if total > len(buf):  # a PDU larger than the buffer: make room for all of it
                buf.extend(bytes(total - len(buf)))


def _pdu_limit(dul, kind: int) -> int:
    """The longest PDU of type ``kind`` taken now: only an established association's
    P-DATA-TF may be large (its data is the peer's objects)."""
    if kind == _P_DATA_TF and dul.state_machine.current_state == "Sta6":
        return _MAX_PDU
    return _MAX_OTHER_PDU


def _to_fsm(dul, pdu: memoryview) -> None:
    """Queue a PDU for pynetdicom's state machine, as its own reader does."""
    try:
        decoded, event = dul._decode_pdu(bytearray(pdu))
    except Exception as e:  # noqa: BLE001 - whatever the decoder raises
        log.error("unable to decode a received PDU: %s", e)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(decoded)


def _deliver_pdvs(dul, pdu: memoryview) -> bool:
    """Hand a P-DATA-TF's PDVs to DIMSE, as DT-2 does; a data fragment of an object
    being received into a file goes straight into it. False (Evt19 queued) if an
    item overruns the PDU."""
    dimse = dul.assoc.dimse
    pos, end = _PDU_HEADER, len(pdu)
    while pos < end:
        item = int.from_bytes(pdu[pos:pos + _PDV_HEADER], "big")
        if item < 2 or pos + _PDV_HEADER + item > end:
            log.error("malformed P-DATA-TF PDU: a PDV item overruns the PDU")
            dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom aborts (AA-8)
            return False
        start = pos + _PDV_HEADER
        pos = start + item
        target = getattr(dimse.message, "_data_set_file", None)
        if target is not None and pdu[start + 1] & 0b11 == _DATA_FRAGMENT:
            target.write(pdu[start + 2:pos])  # what decode_msg would do with it
            continue
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[pdu[start], bytes(pdu[start + 1:pos])]]
        try:
            dimse.receive_primitive(primitive)
        except Exception as e:  # noqa: BLE001 - whatever decoding the message raises
            # A command set that cannot be decoded (or names no known command): the
            # peer's message is invalid, which ends the association as an invalid PDU
            # does (pynetdicom's own path got there through a logged traceback).
            log.error("undecodable DIMSE message in a P-DATA-TF PDU: %s: %s",
                      type(e).__name__, str(e)[:200])
            dul.event_queue.put("Evt19")
            return False
    return True


def _end_broken_association(assoc, error: Exception) -> None:
    """pynetdicom raised in an association's own thread (it cannot negotiate a
    malformed A-ASSOCIATE-RQ, say): abort it and close its connection, which
    the thread would otherwise leave open, with its DUL thread, for ever."""
    try:
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
    except Exception:  # noqa: BLE001 - a peer that never got that far
        peer = "?"
    log.warning("%s: association ended: pynetdicom could not process the peer's request "
                "(%s: %s)", peer, type(error).__name__, str(error)[:200])
    try:
        assoc.abort()  # A-ABORT; waits for the DUL to close (ARTIM at most)
    except Exception:  # noqa: BLE001 - then at least stop the DUL and the socket
        assoc.dul.kill_dul()
    transport = getattr(assoc.dul, "socket", None)
    if transport is not None and transport.socket is not None:
        try:
            transport.socket.close()
        except OSError:
            pass


def _implicit(tag: int, value: bytes) -> bytes:
    """One element, Implicit VR Little Endian (PS3.5 7.1.3)."""
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    """One element, Explicit VR Little Endian (PS3.5 7.1.2)."""
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _ui(uid: str) -> bytes:
    value = str(uid).encode("ascii")
    return value + b"\0" if len(value) % 2 else value


def _sh(text: str) -> bytes:
    value = text.encode("ascii")
    return value + b" " if len(value) % 2 else value


class FileMeta:
    """What pynetdicom's ``create_file_meta`` and pydicom's ``write_file_meta_info``
    make of a received C-STORE's File Meta Information (PS3.10 7.1), encoded directly.

    pynetdicom builds a pydicom FileMetaDataset and has pydicom write it for
    every received object (0.3 ms); the bytes are the same.
    """

    def __init__(self, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                 implementation_uid: str = PYNETDICOM_IMPLEMENTATION_UID,
                 implementation_version: str = PYNETDICOM_IMPLEMENTATION_VERSION) -> None:
        body = b"".join((
            _explicit(0x00020001, b"OB", b"\x00\x01"),
            _explicit(0x00020002, b"UI", _ui(sop_class_uid)),
            _explicit(0x00020003, b"UI", _ui(sop_instance_uid)),
            _explicit(0x00020010, b"UI", _ui(transfer_syntax)),
            _explicit(0x00020012, b"UI", _ui(implementation_uid)),
            _explicit(0x00020013, b"SH", _sh(implementation_version)),
        ))
        self.encoded = _explicit(0x00020000, b"UL", struct.pack("<L", len(body))) + body


C_STORE_RSP = 0x8001
C_FIND_RSP = 0x8020
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021
_SUB_OPERATION_TAGS = (0x00001020, 0x00001021, 0x00001022, 0x00001023)
_SUB_OPERATION_KEYWORDS = ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                           "NumberOfFailedSuboperations", "NumberOfWarningSuboperations")
_C_STORE_RQ_FIELD = 0x0001   # PS3.7 E.1: Command Field of a C-STORE-RQ
_DATA_SET_PRESENT, _NO_DATA_SET = 0x0001, 0x0101   # PS3.7 E.1: Command Data Set Type
# The largest PDU sent to a peer that sets no maximum PDU length (0: unlimited).
_UNLIMITED_PDU_FILL = 32 * 1024


def response_command(command_field: int, message_id: int, sop_class_uid: str, status: int, *,
                     data_set: bool = False, sop_instance_uid: str | None = None,
                     sub_operations: tuple[int | None, ...] = ()) -> bytes:
    """The command set of a DIMSE-C response (PS3.7 9.3) with the elements, in the
    order, pynetdicom sends, encoded Implicit VR Little Endian as every command set
    is (PS3.7 6.3.1)."""
    elements = [
        _implicit(0x00000002, _ui(sop_class_uid)),
        _implicit(0x00000100, struct.pack("<H", command_field)),
        _implicit(0x00000120, struct.pack("<H", message_id)),
        _implicit(0x00000800, struct.pack("<H", _DATA_SET_PRESENT if data_set else _NO_DATA_SET)),
        _implicit(0x00000900, struct.pack("<H", status)),
    ]
    if sop_instance_uid is not None:
        elements.append(_implicit(0x00001000, _ui(sop_instance_uid)))
    # C-MOVE/C-GET: Number of Remaining, Completed, Failed, Warning Sub-operations
    # (PS3.7 9.3.3.2, 9.3.4.2), each present when known.
    for tag, count in zip(_SUB_OPERATION_TAGS, sub_operations):
        if count is not None:
            elements.append(_implicit(tag, struct.pack("<H", count)))
    body = b"".join(elements)
    return _implicit(0x00000000, struct.pack("<L", len(body))) + body


def store_request_command(message_id: int, sop_class_uid: str, sop_instance_uid: str, *,
                          priority: int = 2, move_originator_aet: str | None = None,
                          move_originator_id: int | None = None) -> bytes:
    """The command set of a C-STORE-RQ with a data set (PS3.7 9.3.1.1), with the
    elements pynetdicom sends, encoded Implicit VR Little Endian (PS3.7 6.3.1)."""
    elements = [
        _implicit(0x00000002, _ui(sop_class_uid)),
        _implicit(0x00000100, struct.pack("<H", _C_STORE_RQ_FIELD)),
        _implicit(0x00000110, struct.pack("<H", message_id)),
        _implicit(0x00000700, struct.pack("<H", priority)),
        _implicit(0x00000800, struct.pack("<H", _DATA_SET_PRESENT)),
        _implicit(0x00001000, _ui(sop_instance_uid)),
    ]
    # PS3.7 9.1.1.1: a C-MOVE's sub-operation names the AE that asked for it.
    if move_originator_aet:
        elements.append(_implicit(0x00001030, _sh(move_originator_aet)))
    if move_originator_id is not None:
        elements.append(_implicit(0x00001031, struct.pack("<H", move_originator_id)))
    body = b"".join(elements)
    return _implicit(0x00000000, struct.pack("<L", len(body))) + body


def send_message(dul, context_id: int, max_pdu: int, command: bytes, data: bytes = b"") -> None:
    """Queue an encoded DIMSE message on the DUL, as pynetdicom's ``send_msg`` does.

    The command PDV, then the data set's, packed into as few P-DATA-TF PDUs as
    the peer's maximum PDU length (``max_pdu``, 0: unlimited) allows (PS3.8
    9.3.5: a PDV item costs 6 bytes besides its fragment; PS3.8 E.2: bit 0 of
    its control header flags a command fragment, bit 1 the last fragment).
    """
    limit = max_pdu or _UNLIMITED_PDU_FILL
    step = limit - 6
    pdvs: list[list] = []
    size = 0
    for part, flags in ((command, 0x01), (data, 0x00)):
        for start in range(0, len(part), step):
            chunk = part[start:start + step]
            if size + len(chunk) + 6 > limit:
                _send_pdu(dul, pdvs)
                pdvs, size = [], 0
            last = 0x02 if start + step >= len(part) else 0x00
            pdvs.append([context_id, bytes((flags | last,)) + chunk])
            size += len(chunk) + 6
    _send_pdu(dul, pdvs)


def _send_pdu(dul, pdvs: list[list]) -> None:
    p_data = P_DATA()
    p_data.presentation_data_value_list = pdvs
    dul.send_pdu(p_data)


def _send_store_success(dimse, rsp, context_id: int) -> bool:
    """Send a plain successful C-STORE-RSP directly; False if pynetdicom must
    (any other message, a status other than Success, an error comment, or
    someone listening for sent messages)."""
    if (not isinstance(rsp, C_STORE) or rsp.MessageIDBeingRespondedTo is None
            or rsp.Status != Status.SUCCESS or rsp.ErrorComment is not None
            or rsp.OffendingElement is not None or rsp.AffectedSOPClassUID is None
            or rsp.AffectedSOPInstanceUID is None
            or dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        return False
    command = response_command(C_STORE_RSP, rsp.MessageIDBeingRespondedTo,
                               rsp.AffectedSOPClassUID, Status.SUCCESS,
                               sop_instance_uid=rsp.AffectedSOPInstanceUID)
    send_message(dimse.dul, context_id, dimse.maximum_pdu_size, command)
    return True




def _send_retrieve_pending(dimse, rsp, context_id: int) -> bool:
    """Send a pending C-MOVE-RSP or C-GET-RSP with its counts and no identifier (one
    per sub-operation) directly; False if pynetdicom must (as for a C-STORE)."""
    field = C_MOVE_RSP if isinstance(rsp, C_MOVE) else C_GET_RSP if isinstance(rsp, C_GET) \
        else None
    if (field is None or rsp.MessageIDBeingRespondedTo is None
            or rsp.Status != RetrieveStatus.PENDING or rsp.Identifier is not None
            or rsp.ErrorComment is not None or rsp.OffendingElement is not None
            or rsp.AffectedSOPClassUID is None
            or dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        return False
    command = response_command(field, rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID,
                               RetrieveStatus.PENDING,
                               sub_operations=tuple(getattr(rsp, k)
                                                    for k in _SUB_OPERATION_KEYWORDS))
    send_message(dimse.dul, context_id, dimse.maximum_pdu_size, command)
    return True


def command_values(command, wanted: frozenset[int]) -> dict[int, bytes]:
    """The values of the elements ``wanted`` (element numbers of group 0000) of an
    encoded command set (Implicit VR Little Endian, PS3.7 6.3.1), read without
    decoding the rest; it stops once all are found or at the first unreadable
    element."""
    found: dict[int, bytes] = {}
    pos, end = 0, len(command)
    while pos + 8 <= end and len(found) < len(wanted):
        group, element, length = struct.unpack_from("<HHL", command, pos)
        pos += 8
        if group != 0 or pos + length > end:
            break
        if element in wanted:
            found[element] = bytes(command[pos:pos + length])
        pos += length
    return found


def command_us(values: dict[int, bytes], element: int) -> int | None:
    """A US value of :func:`command_values`' result, None when missing or malformed."""
    value = values.get(element)
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


_KIND = frozenset((0x0100, 0x0800))   # Command Field, Command Data Set Type


def _command_kind(command: bytes) -> tuple[int | None, int | None]:
    """(Command Field, Command Data Set Type) of an encoded command set, None for
    what is missing or not readable."""
    values = command_values(command, _KIND)
    return command_us(values, 0x0100), command_us(values, 0x0800)


class _Flush:
    """A place in the DUL's to-provider queue (:meth:`FastDUL.flush`)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class FastDUL(DULServiceProvider):
    """The DUL of an accepted association: it sleeps on its socket and an eventfd
    rather than for 1 ms, and reads its socket with :class:`_Receiver` from the
    connection's first byte."""

    def __init__(self, assoc: "FastAssociation") -> None:
        super().__init__(assoc)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        weakref.finalize(self, os.close, self._wake)
        # Nothing has been queued yet: the reactor thread is not started.
        self.to_provider_queue = _WakingQueue(self._wake)
        self._rx: _Receiver | None = None

    def run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``DULServiceProvider.run_reactor`` (dul.py), statement
        for statement, but for its idle ``time.sleep(self._run_loop_delay)``:
        :meth:`_idle`."""
        self._idle_timer.start()
        sleep = False

        while True:
            # Let the assoc reactor off the leash
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                self._idle(self._run_loop_delay)

            if self._kill_thread:
                break

            # Check the ARTIM timer first so its event is placed on the queue
            #   ahead of any other events this loop
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                # Either encode and send a primitive or receive and decode a PDU
                if self._take_flush():   # not in pynetdicom's loop: see flush()
                    pass
                elif self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # noqa: BLE001 - as pynetdicom: abort on anything
                _PYNETDICOM_DUL_LOG.error("Exception in DUL.run(), aborting association")
                _PYNETDICOM_DUL_LOG.exception(exc)
                self._abort_now()
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            # Not in pynetdicom's loop: there, what the state machine raises on a
            # peer's PDU (an event invalid in this state, a presentation context ID
            # pynetdicom cannot take...) ends this thread with a traceback and leaves
            # the association and its connection to time out. Here it ends them now,
            # with one line: the PDU was the peer's fault.
            try:
                self.state_machine.do_action(event)
            except Exception as exc:  # noqa: BLE001 - whatever the FSM's actions raise
                log.error("aborting an association: its state machine cannot take %s in %s: "
                          "%s: %s", event, self.state_machine.current_state,
                          type(exc).__name__, str(exc)[:200])
                self._abort_now()
                return
            sleep = False

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything queued before this call has been written to the
        socket (False if it took longer than ``timeout``). Whoever writes to the
        socket directly (a C-GET's streamed sub-operations, appliance.dicom.streaming)
        does so after the responses queued before it, never amid them."""
        marker = _Flush()
        self.to_provider_queue.put(marker)
        return marker.done.wait(timeout)

    def _take_flush(self) -> bool:
        """Signal a :meth:`flush` marker at the head of the queue: every primitive
        queued before it has been through the state machine, which writes each P-DATA
        in the same pass that takes it off the queue (pynetdicom's DT-1)."""
        queued = self.to_provider_queue.queue
        if queued and isinstance(queued[0], _Flush):
            self.to_provider_queue.get(block=False).done.set()
            return True
        return False

    def _abort_now(self) -> None:
        """Bypass the state machine and send an A-ABORT (PS3.8 9.3.8: source 2, the
        service provider; reason 0, not specified), then stop both reactors, as
        pynetdicom's reactor does when it raises."""
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = _ABORT_BY_PROVIDER
        abort_pdu.reason_diagnostic = _REASON_NOT_SPECIFIED
        try:
            self.socket.send(abort_pdu.encode())
        except Exception:  # noqa: BLE001 - a closed socket: nothing to tell the peer
            pass
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        # Hard shutdown of the Association and DUL reactors
        self.assoc._kill = True
        self._kill_thread = True

    def _idle(self, delay: float) -> None:
        """The idle sleep, cut short by socket data, a queued primitive or a kill."""
        sock = getattr(self.socket, "socket", None)
        if sock is None or delay <= 0:
            time.sleep(delay)
            return
        outgoing = self.to_provider_queue
        # Say we sleep, then look once more: a put that came before this look is
        # seen here, one after it sees ``sleeping`` and signals.
        outgoing.sleeping = True
        try:
            if not outgoing.empty():
                return
            ready, _, _ = select.select([sock, self._wake], [], [], max(delay, _DUL_IDLE_WAIT))
        except (OSError, ValueError):  # the socket closed under us: plain sleep
            time.sleep(delay)
            return
        finally:
            outgoing.sleeping = False
        if self._wake in ready:
            try:
                os.eventfd_read(self._wake)
            except OSError:
                pass

    def _read_pdu_data(self) -> None:
        """Our reader, from the connection's first byte (it replaces
        ``DULServiceProvider._read_pdu_data``, which ``_is_transport_event`` calls
        when the socket is readable): pynetdicom's blocks in ``recv`` until a whole
        PDU is in, so half a PDU before the association, then silence, held this
        thread for ever and ARTIM never fired."""
        rx = self._rx
        if rx is None:
            rx = self._rx = _Receiver()
        rx.receive(self)

    def _signal(self) -> None:
        try:
            os.eventfd_write(self._wake, 1)  # stop waiting now
        except OSError:
            pass

    def kill_dul(self) -> None:
        """Stop the reactor, waking it if it sleeps."""
        super().kill_dul()
        self._signal()

    def stop_dul(self) -> bool:
        """Stop the reactor in Sta1, waking it if it sleeps (pynetdicom then waits
        for the thread to end)."""
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._signal()
        return super().stop_dul()


_ABORT_BY_PROVIDER = 0x02     # PS3.8 Table 9-26, A-ABORT source: DICOM UL service-provider
_REASON_NOT_SPECIFIED = 0x00  # PS3.8 Table 9-26, A-ABORT reason/diag.
_LAST_COMMAND_FRAGMENT = 0b11  # PS3.8 E.2 control header: command, last fragment


class FastDimse(DIMSEServiceProvider):
    """The DIMSE provider of an accepted association: opens the files C-STORE
    data sets are received into, answers a plain C-STORE Success directly, and
    sends responses a handler encoded itself."""

    def __init__(self, assoc: "FastAssociation", files: ReceivedFiles) -> None:
        super().__init__(assoc)
        self._files = files
        self._syntaxes: dict[int, str] | None = None  # accepted context ID -> transfer syntax

    def receive_primitive(self, primitive: P_DATA) -> None:
        """pynetdicom's, one PDV at a time, with the last fragment of a C-STORE-RQ
        command set taken by :meth:`_open_data_set`.

        pynetdicom decodes all the PDVs of a primitive at once and stops at the
        end of the first whole message; one at a time, a command's last fragment
        is seen before the data set's first, and a message after another in the
        same PDU is not dropped.
        """
        pdvs = primitive.presentation_data_value_list
        if len(pdvs) != 1:
            for pdv in pdvs:
                one = P_DATA()
                one.presentation_data_value_list = [pdv]
                self.receive_primitive(one)
            return
        context_id, data = pdvs[0]
        if data[0] & _LAST_COMMAND_FRAGMENT == _LAST_COMMAND_FRAGMENT \
                and self._open_data_set(context_id, data):
            return
        super().receive_primitive(primitive)

    def _open_data_set(self, context_id: int, pdv: bytes) -> bool:
        """Complete the command set of a C-STORE-RQ with a data set and open the
        file its data set is received into; False (nothing done) for any other
        command, left to pynetdicom.

        This is what ``DIMSEMessage.decode_msg`` (pynetdicom 3.0.4,
        dimse_messages.py) does with that fragment when STORE_RECV_CHUNKED_DATASET
        is on, but for the file: it goes in the storage's incoming folder
        (appliance.dicom.receive), not the system's temporary folder, and its File
        Meta Information is written without pydicom. The data set fragments that
        follow are written to ``_data_set_file`` by pynetdicom (or by _Receiver).
        """
        message = self.message
        fragment = pdv[1:]
        command = fragment if message is None else message.encoded_command_set.getvalue() + fragment
        field, data_set = _command_kind(command)
        if field != _C_STORE_RQ_FIELD or data_set in (None, _NO_DATA_SET):
            return False
        syntax = self._transfer_syntax(context_id)
        if syntax is None:
            log.error("C-STORE-RQ on presentation context %d, which was not accepted", context_id)
            self.dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom aborts (AA-8)
            return True
        command_set = decode(BytesIO(command), True, True)
        sop_class = command_set.get("AffectedSOPClassUID")
        sop_instance = command_set.get("AffectedSOPInstanceUID")
        if not sop_class or not sop_instance:
            return False  # an invalid request: pynetdicom's to refuse
        if message is None:
            message = self.message = DIMSEMessage()
        message.encoded_command_set.write(fragment)
        message.context_id = context_id
        message.command_set = command_set
        message.__class__ = C_STORE_RQ
        meta = FileMeta(sop_class_uid=sop_class, sop_instance_uid=sop_instance,
                        transfer_syntax=syntax)
        target = self._files.open(self.assoc, meta.encoded)
        message._data_set_file = target
        message._data_set_path = Path(target.name)
        return True

    def _transfer_syntax(self, context_id: int) -> str | None:
        syntaxes = self._syntaxes
        if syntaxes is None:  # known once negotiated, before any C-STORE
            syntaxes = self._syntaxes = {cx.context_id: cx.transfer_syntax[0]
                                         for cx in self.assoc.accepted_contexts}
        return syntaxes.get(context_id)

    def send_msg(self, primitive, context_id: int) -> None:
        """pynetdicom's, but a plain C-STORE Success and a pending C-MOVE/C-GET
        response go out directly."""
        if not (_send_store_success(self, primitive, context_id)
                or _send_retrieve_pending(self, primitive, context_id)):
            super().send_msg(primitive, context_id)

    def send_encoded(self, context_id: int, command: bytes, data: bytes = b"") -> None:
        """Queue a DIMSE message encoded by the caller (:func:`send_message`)."""
        send_message(self.dul, context_id, self.maximum_pdu_size, command, data)


class FastAssociation(Association):
    """An accepted association with the fast DUL and DIMSE providers, whose
    reactor waits on its message queue rather than sleeping 1 ms."""

    def __init__(self, ae, files: ReceivedFiles) -> None:
        super().__init__(ae, MODE_ACCEPTOR)
        # Association.__init__ made a stock DUL and DIMSE provider (association.py);
        # neither has started or been handed out yet. The ACSE and network timeouts
        # are set on the DUL's timers: set again on the new one.
        self.dul = FastDUL(self)
        self.dimse = FastDimse(self, files)
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self._writes = None   # appliance.dicom.streaming, on the first streamed C-STORE

    def run_reactor(self) -> None:
        """pynetdicom's, but an exception in it (pynetdicom cannot negotiate a
        malformed A-ASSOCIATE-RQ, say) ends the association and its connection
        rather than only this thread (:func:`_end_broken_association`)."""
        try:
            super().run_reactor()
        except Exception as e:  # noqa: BLE001 - the association's thread would die with it
            _end_broken_association(self, e)

    def send_c_store(self, dataset, msg_id: int = 1, priority: int = 2,
                     originator_aet: str | None = None, originator_id: int | None = None):
        """pynetdicom's, but a :class:`~appliance.dicom.streaming.StoredFile` (what the
        C-GET SCP yields for an instance stored in a syntax the requestor accepted)
        streams from its file, written directly once the responses queued before it
        are out (appliance.dicom.streaming, :meth:`FastDUL.flush`)."""
        from appliance.dicom.streaming import DirectStoreWrites, StoredFile  # imports this module
        if not isinstance(dataset, StoredFile):
            return super().send_c_store(dataset, msg_id, priority, originator_aet, originator_id)
        if self._writes is None:
            self._writes = DirectStoreWrites(self)
        if not self.dul.flush(self.network_timeout):
            raise RuntimeError("the responses queued before the C-STORE were not sent in time")
        return self._writes.send_c_store(dataset.stored_path, msg_id=msg_id, priority=priority,
                                         sop_class_uid=dataset.stored_sop_class_uid,
                                         sop_instance_uid=str(dataset.SOPInstanceUID),
                                         originator_aet=originator_aet,
                                         originator_id=originator_id)

    def _wait_for_message(self) -> None:
        """The reactor's 1 ms sleep, cut short by a decoded DIMSE message."""
        msgs = self.dimse.msg_queue
        with msgs.not_empty:
            if not msgs._qsize():
                msgs.not_empty.wait(_ASSOC_REACTOR_PERIOD)

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``Association._run_reactor`` (association.py),
        statement for statement, but for its ``time.sleep(0.001)``:
        :meth:`_wait_for_message`."""
        self._is_paused = False
        while not self._kill:
            self._wait_for_message()

            # The reactor may be paused (send_*() from a handler); make sure it
            # has stopped before DIMSE or ACSE messaging
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)

            # Check for release request from the peer
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _PYNETDICOM_ASSOC_LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            # Check for abort from either locally or the peer
            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _PYNETDICOM_ASSOC_LOG.info(log_msg)
                # Ensure that EVT_ASCE_RECV fires for subscribers
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            # Check if the DULServiceProvider thread is still running
            if not self.dul.is_alive():
                self.kill()
                return

            # Check if network_timeout has expired
            if self.dul.idle_timer_expired():
                _PYNETDICOM_ASSOC_LOG.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


class FastPath:
    """What :class:`AcceptorRequestHandler` gets from the server: the receive
    adapter, and the server's supported contexts, which every association
    shares rather than copies."""

    def __init__(self, files: ReceivedFiles, contexts: list) -> None:
        self.files = files
        self._contexts = tuple(contexts)

    def contexts_for_association(self) -> list:
        """The supported contexts an accepted association negotiates with: the
        server's own objects, in a list of its own.

        pynetdicom deep-copies them for every association (its
        ``RequestHandler._create_association``), which was most of an
        association's set-up here: 4-10 ms for the ~180 contexts, against
        Orthanc's whole association in 0.6 ms. The acceptor only reads them:
        ``negotiate_as_acceptor`` and ``negotiate_unrestricted`` build new
        result contexts (context id, the one transfer syntax, the roles
        answered) and leave the supported ones as they were; and the appliance
        adds its contexts once, before the server starts (``DicomServer``).
        """
        return list(self._contexts)


class AcceptorRequestHandler(RequestHandler):
    """pynetdicom's request handler, building a :class:`FastAssociation`.

    Given to ``AE.make_server`` as ``request_handler`` (with ``fast`` bound),
    which the server calls for every accepted connection.
    """

    def __init__(self, request, client_address, server, *, fast: FastPath) -> None:
        self._fast = fast
        super().__init__(request, client_address, server)  # handles the request

    def handle(self) -> None:
        """pynetdicom 3.0.4's ``RequestHandler.handle`` (transport.py)."""
        assoc = self._fast_association()
        # Trigger must be after binding the events
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _fast_association(self) -> FastAssociation:
        """pynetdicom 3.0.4's ``RequestHandler._create_association`` (transport.py),
        statement for statement, but for the association's class and the supported
        contexts, shared rather than deep-copied (:meth:`FastPath.contexts_for_association`)."""
        assoc = FastAssociation(self.ae, self._fast.files)
        assoc._server = self.server

        # The thread's name is how AssociationServer.active_associations finds it
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        sock = AssociationSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        # Association Acceptor object -> local AE
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = self._fast.contexts_for_association()

        # Association Requestor object -> remote AE
        assoc.requestor.address_info = self.remote

        # Bind events to handlers
        for event in self.server._handlers:
            # Intervention events
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])

        return assoc


def streams_stored_files(assoc) -> bool:
    """True when ``assoc`` runs the fast path, whose ``send_c_store`` streams a
    :class:`~appliance.dicom.streaming.StoredFile` (a C-GET's sub-operations)."""
    return isinstance(assoc, FastAssociation)


def encoded_sender(assoc) -> Callable[[int, bytes, bytes], None] | None:
    """``send(context_id, command, data)`` for DIMSE messages a handler encoded
    itself, when ``assoc`` runs the fast path; None on stock pynetdicom."""
    dimse = assoc.dimse
    return dimse.send_encoded if isinstance(dimse, FastDimse) else None
