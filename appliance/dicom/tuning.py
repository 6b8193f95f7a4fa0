"""Make pynetdicom receive, answer and accept with less waiting and less work.

Wake-ups. pynetdicom 3 runs two polling loops per association. The DUL
thread sleeps ``_run_loop_delay`` (1 ms) whenever a pass found nothing to do,
so a PDU that arrives, or a response the handler queued, waits for the rest of
that sleep. The association thread sleeps 1 ms before every look at its DIMSE
message queue. storescu sends the next object only after the C-STORE-RSP of
the last, so these waits add about 2 ms to every instance, and a worklist
query pays them between its request and its first answer. The loops and their
periods stay, but each sleep ends early:

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
aborted and its connection closed.

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

Encoding. pynetdicom builds a pydicom dataset, and has pydicom encode it, for
the File Meta Information of every received object and for every C-STORE-RSP
(0.7 ms an image together). :class:`FileMeta` and :func:`_send_store_success`
write the same bytes directly; any response other than a plain Success goes
through pynetdicom.

Context copies. For every association pynetdicom deep-copies the AE's
supported contexts: about 170 storage classes times 35 transfer syntaxes, each
UID re-created and re-validated by pydicom. pydicom's UID is an immutable
str, so its deep copy can be the object itself, as it is for ``str``.

Together these halve the server's CPU time per received image (see the note
in tests/bench/README.md). They reach into pynetdicom's internals (module
globals of ``dul``, ``association`` and ``dimse_messages``, methods of the
DUL and DIMSE providers and of the association, the DUL's
``to_provider_queue``) and add ``UID.__deepcopy__`` to pydicom, like the chunked-receive hook in
:mod:`appliance.dicom.scp`; pyproject pins the pynetdicom minor version they
were checked against, and tests/dicom/test_pdu.py drives them at the PDU level.
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

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import association as _association
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dul as _dul
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger(__name__)

# The association reactor's own sleep before each look at its message queue
# (pynetdicom/association.py, Association._run_reactor). Other sleeps in that
# module belong to requestor-side waits, which are left exactly as they are.
_ASSOC_REACTOR_DELAY = 0.001


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


class _SleepProxy:
    """Stands in for the ``time`` module inside one pynetdicom module."""

    def __init__(self, sleep) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str):
        return getattr(time, name)


# How long an idle DUL waits for its socket or its eventfd. Nothing else needs
# it sooner: the ARTIM timer counts tens of seconds, and kill_dul signals the
# eventfd. Waking every 1 ms instead costs each idle association a thousand
# GIL round trips a second, which slows every other association's work.
_DUL_IDLE_WAIT = 0.05


def _dul_sleep(delay: float) -> None:
    """The DUL's idle sleep, cut short by socket data, a queued primitive or a kill."""
    dul = threading.current_thread()
    wake = getattr(dul, "_appliance_wake", None)
    transport = getattr(dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if wake is None or sock is None or delay <= 0:
        time.sleep(delay)  # another thread waiting for the DUL (stop_dul), or no socket
        return
    outgoing = dul.to_provider_queue
    # Say we sleep, then look once more: a put that came before this look is
    # seen here, one after it sees ``sleeping`` and signals.
    outgoing.sleeping = True
    try:
        if not outgoing.empty():
            return
        ready, _, _ = select.select([sock, wake], [], [], max(delay, _DUL_IDLE_WAIT))
    except (OSError, ValueError):  # the socket closed under us: plain sleep
        time.sleep(delay)
        return
    finally:
        outgoing.sleeping = False
    if wake in ready:
        try:
            os.eventfd_read(wake)
        except OSError:
            pass


def _association_sleep(delay: float) -> None:
    """The association reactor's sleep, cut short by a decoded DIMSE message."""
    assoc = threading.current_thread()
    msgs = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if delay != _ASSOC_REACTOR_DELAY or not isinstance(msgs, queue.Queue):
        time.sleep(delay)
        return
    with msgs.not_empty:
        if not msgs._qsize():
            msgs.not_empty.wait(delay)


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


def _read_pdu_data(dul) -> None:
    """Our reader, from the connection's first byte (the socket is readable)."""
    rx = getattr(dul, "_appliance_rx", None)
    if rx is None:
        rx = dul._appliance_rx = _Receiver()
    rx.receive(dul)


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


def _same_uid(uid: UID, memo: dict) -> UID:
    return uid


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
    """Stands in for pynetdicom's ``create_file_meta``: the File Meta Information
    (PS3.10 7.1) of a received C-STORE, encoded directly.

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


def _write_file_meta(fp, file_meta: FileMeta) -> None:
    fp.write(file_meta.encoded)


C_STORE_RSP = 0x8001
C_FIND_RSP = 0x8020
_DATA_SET_PRESENT, _NO_DATA_SET = 0x0001, 0x0101   # PS3.7 E.1: Command Data Set Type
# The largest PDU sent to a peer that sets no maximum PDU length (0: unlimited).
_UNLIMITED_PDU_FILL = 32 * 1024


def response_command(command_field: int, message_id: int, sop_class_uid: str, status: int, *,
                     data_set: bool = False, sop_instance_uid: str | None = None) -> bytes:
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
            or rsp.Status != 0x0000 or rsp.ErrorComment is not None
            or rsp.OffendingElement is not None or rsp.AffectedSOPClassUID is None
            or rsp.AffectedSOPInstanceUID is None
            or dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        return False
    command = response_command(C_STORE_RSP, rsp.MessageIDBeingRespondedTo,
                               rsp.AffectedSOPClassUID, 0x0000,
                               sop_instance_uid=rsp.AffectedSOPInstanceUID)
    send_message(dimse.dul, context_id, dimse.maximum_pdu_size, command)
    return True


_MISSING = object()


class PynetdicomTuning:
    """Installs (and removes) all of the above for one server's lifetime."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, object]] = []

    def _patch(self, owner: object, name: str, value: object) -> None:
        self._saved.append((owner, name, vars(owner).get(name, _MISSING)))
        setattr(owner, name, value)

    def install(self) -> None:
        """Patch pynetdicom; associations accepted from now on use the patches."""
        if self._saved:
            return
        dul_cls = _dul.DULServiceProvider
        original_init = dul_cls.__init__
        original_run = _association.Association.run_reactor
        original_kill = dul_cls.kill_dul
        original_send = DIMSEServiceProvider.send_msg

        def __init__(dul, *args, **kwargs) -> None:
            original_init(dul, *args, **kwargs)
            wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            dul._appliance_wake = wake
            # Nothing has been queued yet: the reactor thread is not started.
            dul.to_provider_queue = _WakingQueue(wake)
            weakref.finalize(dul, os.close, wake)

        def read_pdu_data(dul) -> None:
            _read_pdu_data(dul)

        def run_reactor(assoc) -> None:
            try:
                original_run(assoc)
            except Exception as e:  # noqa: BLE001 - the association's thread would die with it
                _end_broken_association(assoc, e)

        def kill_dul(dul) -> None:
            original_kill(dul)
            try:
                os.eventfd_write(dul._appliance_wake, 1)  # stop waiting now
            except (AttributeError, OSError):
                pass

        def send_msg(dimse, primitive, context_id: int) -> None:
            if not _send_store_success(dimse, primitive, context_id):
                original_send(dimse, primitive, context_id)

        self._patch(dul_cls, "__init__", __init__)
        self._patch(dul_cls, "_read_pdu_data", read_pdu_data)
        self._patch(_association.Association, "run_reactor", run_reactor)
        self._patch(dul_cls, "kill_dul", kill_dul)
        self._patch(DIMSEServiceProvider, "send_msg", send_msg)
        self._patch(_dul, "time", _SleepProxy(_dul_sleep))
        self._patch(_association, "time", _SleepProxy(_association_sleep))
        self._patch(_dimse_messages, "create_file_meta", FileMeta)
        self._patch(_dimse_messages, "write_file_meta_info", _write_file_meta)
        self._patch(UID, "__deepcopy__", _same_uid)

    def remove(self) -> None:
        """Put pynetdicom back as it was."""
        for owner, name, value in reversed(self._saved):
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        self._saved = []
