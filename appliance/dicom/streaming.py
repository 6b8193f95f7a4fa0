"""C-STORE requests of stored files written straight to the association's socket,
and on the associations we request, their responses read straight from it.

The requestor side of the fast path, for the associations the daemon opens to
send what it stores (appliance.dicom.sender: C-MOVE sub-operations, forwarding,
sending on demand). Why: pynetdicom sends a data set as one P-DATA primitive
per PDU (16 KiB with DCMTK's and Orthanc's default maximum PDU length, about 60
per ultrasound image), and each goes through a queue, the upper layer's state
machine, an event and an encode before it reaches the socket, on a second
thread: 5 ms of CPU per 0.92 MB image, which capped one association at about
150 images/s where storescu sends 500/s. Here the same PDUs are framed around
the file's bytes, read into one reused buffer, and written by the calling
thread. Its response came back through pynetdicom's reader thread, which
looks at the socket once a millisecond, decodes the PDU into objects and the
command set with pydicom, and queues it for the caller: half the remaining
CPU and up to a millisecond of latency per image. On an association we
requested (:meth:`DirectStoreWrites.exchange`) the calling thread reads the
response itself: about 0.5 ms of CPU per 0.92 MB image in all, and a bare
sender at 700-1,100 images/s to ``storescp --ignore`` (was 330-560).

What stays pynetdicom's: the association (negotiation, release, abort, its state
machine) and every other message. A request does what pynetdicom's
``Association.send_c_store(path)`` does for a file (the context of the file's
SOP class and transfer syntax, the response, its status), but writes the
command (encoded directly, appliance.dicom.tuning.store_request_command) and
the data set as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5, E.2), read from the
file after its File Meta Information: the bytes pynetdicom would send, in the
same order, without building a pydicom dataset for the command or the file
meta. Writing from the sender's thread is safe because nothing else of this
association writes meanwhile: its reactor answers requests from the peer, and a
peer of a storage SCU association sends none (PS3.4 B.2: we propose the SCU
role only); the only other PDUs our sender makes (A-RELEASE) come after.

Reading. While :meth:`DirectStoreWrites.exchange` runs, pynetdicom's reader is
held off the socket (``_SocketHold`` wraps that one DUL's look for incoming
data); the response's P-DATA-TF PDUs are read until the last fragment of a
command and its command set read for the Command Field, the Message ID Being
Responded To, the Status and the Error Comment (PS3.7 9.3.1.2, E.1). Anything
else (an A-ABORT, a closed connection, a malformed or unrelated answer, no
answer within the DIMSE timeout) aborts the association and gives no status,
as pynetdicom's own ``send_c_store`` does. The reader's network timeout counts
silence from its own reads, so each response read here restarts it. While a
request is written, the peer has nothing to say: if it speaks or closes, or no
byte can be written for the network timeout, the write stops and the
connection is closed before the abort (an A-ABORT cannot follow part of a
PDU, and would wait behind the unsent bytes of a peer that stopped reading).

The reactor. pynetdicom's ``send_c_store`` pauses the association's reactor
thread so that it does not take the response off the message queue: it clears
an event and waits for a flag the reactor sets before waiting on that event.
When one ``send_c_store`` follows another, the reactor, woken by the end of the
first, may not have run yet: the flag is still set, the second request goes
out, and the reactor's next look at the queue (``get_msg(block=False)``) can
take the response the request is waiting for, which then waits until the DIMSE
timeout aborts the association. Here the reactor thread is never handed a
message (:meth:`DirectStoreWrites.get_msg`, an instance attribute of that one
association), as the peer sends no request, and is not paused at all:
appliance.dicom.requestor's gate parks it for real, but waits for the reactor's
1 ms loop on every request. Requests sent pynetdicom's way (stock mode, or an
object pynetdicom must re-encode) are guarded by appliance.dicom.requestor's gate.

Acknowledging. A peer with Nagle's algorithm on that writes a response in two
pieces (DCMTK) holds the second until the first is acknowledged, and Linux
delays that ACK by up to 40 ms when the receiver has nothing to send (see
appliance.dicom.sender.AckPrompter). Reading the response here, each piece
read is followed by TCP_QUICKACK (tcp(7)), which sends the pending ACK at once.
Where pynetdicom's reader takes the response (a C-GET's sub-operations on an
association we accepted, an object pynetdicom re-encodes),
:meth:`DirectStoreWrites.get_msg` sets TCP_QUICKACK every half millisecond while
it waits; a thread watching the socket for readability loses the race with the
reader, which takes the first piece and then blocks for the second.

It runs only where the acceptor's fast path runs: appliance.dicom.transport
checks the pynetdicom code it repeats or relies on (``send_c_store``,
``encode_msg``, ``get_msg``, the reactor, the status checks) and the daemon
gives the sender ``direct=True`` only in that mode; with
PACS_APPLIANCE_STOCK_PYNETDICOM=1 the sender is stock pynetdicom throughout.
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
from typing import BinaryIO, NamedTuple

from pydicom.dataset import Dataset

from appliance.dicom.tuning import command_us, command_values, store_request_command
from appliance.dicomfile import structure

log = logging.getLogger(__name__)

__all__ = ["DirectStoreWrites", "LinkLost", "StoreResponse", "StoredFile", "write_message"]

_P_DATA_TF = 0x04
_PDU_HEAD = struct.Struct(">BxLLBB")   # PDU type, length; PDV length, context ID, control
_PDU_PREFIX = struct.Struct(">BxL")     # PDU type, length (PS3.8 9.3.1)
_READ = 64 * 1024                      # the response buffer, grown for a longer PDU
_LONGEST_RESPONSE = 1 << 20             # a C-STORE-RSP is a few hundred bytes
_PDV_OVERHEAD = 6                      # PS3.8 9.3.5.1: item length (4), context ID, control
# The largest PDU sent to a peer that sets no maximum (PS3.8 D.1: 0 is unlimited).
_UNLIMITED_FILL = 256 * 1024
_COMMAND, _DATA, _LAST = 0x01, 0x00, 0x02   # PS3.8 E.2 message control header bits
_BATCH = 256 * 1024   # bytes of PDUs per write


class LinkLost(RuntimeError):
    """The association broke while a request was being written; it has been aborted."""


def write_message(sock, context_id: int, max_pdu: int, command: bytes,
                  data: BinaryIO | None = None, length: int = 0, *, send=None) -> int:
    """Write one DIMSE message to ``sock``: the encoded ``command`` set, then ``length``
    bytes of data set read from ``data``, as P-DATA-TF PDUs of one PDV each, none
    longer than the peer's maximum ``max_pdu`` (0: unlimited), each batch of bytes
    through ``send`` (default ``sock.sendall``). Returns the data set bytes written;
    raises OSError from the socket, EOFError if ``data`` ends early."""
    send = send or sock.sendall
    limit = max_pdu or _UNLIMITED_FILL
    step = limit - _PDV_OVERHEAD
    if step <= 0:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    head = _PDU_HEAD.size
    for start in range(0, len(command), step):
        chunk = command[start:start + step]
        flags = _COMMAND | (_LAST if start + step >= len(command) else 0)
        send(_PDU_HEAD.pack(_P_DATA_TF, len(chunk) + _PDV_OVERHEAD, len(chunk) + 2,
                            context_id, flags) + chunk)
    if data is None or length <= 0:
        return 0
    # PDUs are laid out one after another in one buffer and written together, up to
    # _BATCH bytes per write: one system call for sixteen 16 KiB PDUs.
    slot = head + step
    per_write = max(1, _BATCH // slot)
    buf = bytearray(min(per_write, -(-length // step)) * slot)
    view = memoryview(buf)
    sent = 0
    while sent < length:
        end = 0
        for _ in range(per_write):
            if sent >= length:
                break
            want = min(step, length - sent)
            got = data.readinto(view[end + head:end + head + want])
            if not got:
                raise EOFError(f"the data set ended {length - sent} bytes early")
            sent += got
            _PDU_HEAD.pack_into(buf, end, _P_DATA_TF, got + _PDV_OVERHEAD, got + 2, context_id,
                                _DATA | (_LAST if sent >= length else 0))
            end += head + got
        send(view[:end])
    return sent


class StoredFile(Dataset):
    """What the C-GET SCP yields on the fast path for an instance whose stored
    transfer syntax the requestor accepted: the file to stream (the fast
    association's ``send_c_store`` writes it, appliance.dicom.tuning). It carries
    the SOP Instance UID, which pynetdicom lists if the sub-operation fails."""

    def __init__(self, path, sop_class_uid: str, sop_instance_uid: str) -> None:
        super().__init__()
        self.SOPInstanceUID = sop_instance_uid
        self.stored_path = path
        self.stored_sop_class_uid = sop_class_uid


class StoreResponse(NamedTuple):
    """What the peer answered to one C-STORE request read by :meth:`DirectStoreWrites.exchange`."""

    status: int | None   # None: no valid answer (timeout, abort, protocol error)
    comment: str = ""    # its Error Comment (0000,0902), or why there was no answer


_RSP_ELEMENTS = frozenset((0x0100, 0x0120, 0x0900, 0x0902))
_C_STORE_RSP = 0x8001   # PS3.7 E.1: Command Field of a C-STORE-RSP


class _Unanswered(Exception):
    """No valid response could be read: the association cannot go on."""


class _SocketHold:
    """Keeps pynetdicom's DUL reader off an association's socket while held.

    The DUL thread looks for incoming data through ``_is_transport_event`` (dul.py:
    a zero-timeout select, then it reads a whole PDU). That one instance's method
    is wrapped to do nothing while held, under a lock, so a look that began before
    :meth:`hold` has read its PDU before ``hold`` returns; nothing process-wide.

    A look the DUL thread began before the wrapper was put in place is not under
    the lock: descheduled between taking the method and its select, it would
    read the first response's PDU header from under the caller (an audit saw it
    against a storescp that had just started: a 60 s stall, then the instance
    sent twice). So the first :meth:`hold` waits until the DUL thread has looked
    through the wrapper once: it is one thread, so any earlier look is over."""

    def __init__(self, dul, wait: float) -> None:
        self._lock = threading.Lock()
        self._held = False
        self._dul = dul
        self._wait = wait
        self._wrapped = threading.Event()
        stock = dul._is_transport_event

        def is_transport_event() -> bool:
            self._wrapped.set()
            with self._lock:
                return False if self._held else stock()

        dul._is_transport_event = is_transport_event

    def hold(self) -> None:
        """From now on the socket's incoming bytes are the caller's."""
        if not self._wrapped.is_set():
            # The reactor loops every millisecond; a DUL thread that has ended
            # reads nothing, and one stuck longer than ``wait`` is not waited for.
            deadline = time.monotonic() + self._wait
            while (not self._wrapped.wait(0.005) and self._dul.is_alive()
                   and time.monotonic() < deadline):
                pass
        with self._lock:
            self._held = True

    def release(self) -> None:
        """pynetdicom reads the socket again."""
        with self._lock:
            self._held = False


class DirectStoreWrites:
    """C-STORE requests of stored files written straight to one established
    association's socket: :meth:`exchange` on one we requested
    (appliance.dicom.sender), :meth:`send_c_store` on one we accepted (a C-GET)."""

    _QUICKACK = getattr(socket, "TCP_QUICKACK", None)   # Linux only
    _PROMPT_EVERY = 0.0005   # seconds between TCP_QUICKACKs while a response is awaited
    _HEAD = 4096             # the first read of a file: its File Meta Information and more

    def __init__(self, assoc) -> None:
        """On an association we requested, the responses are read here too, with
        pynetdicom's reader held off the socket meanwhile, and its reactor thread is
        kept off the message queue (this module's docstring); not on one we
        accepted, whose C-GET sub-operations are sent from that very thread (the
        handler's) while its reader takes the responses."""
        self._assoc = assoc
        self._sock = assoc.dul.socket.socket
        # Where we may send C-STORE requests: as SCU (on a C-GET, by role selection,
        # PS3.7 D.3.3.4), the same rule as appliance.dicom.sender.
        self._contexts = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.context_id
                          for cx in assoc.accepted_contexts if cx.as_scu}
        self._guard = assoc.is_requestor
        self._stock_get_msg = assoc.dimse.get_msg
        self._hold: _SocketHold | None = None
        self._buf = bytearray(_READ)
        if self._guard:
            # Also what pynetdicom's own send_c_store (an object it must re-encode)
            # waits with on this association.
            assoc.dimse.get_msg = self.get_msg
            self._hold = _SocketHold(assoc.dul, assoc.dimse.dimse_timeout or 10.0)

    def exchange(self, path, *, msg_id: int, sop_class_uid: str, sop_instance_uid: str,
                 priority: int = 2, originator_aet: str | None = None,
                 originator_id: int | None = None) -> StoreResponse:
        """On an association we requested: write the C-STORE request of the file at
        ``path`` and read its response from the socket ourselves (this module's
        docstring). Raises ValueError and OSError as :meth:`send_c_store` does
        (nothing sent), :class:`LinkLost` when writing failed; a response that
        does not come in the DIMSE timeout, or is not a valid C-STORE-RSP to this
        request, aborts the association and gives a status of None."""
        assoc = self._assoc
        self._hold.hold()
        try:
            self._write_request(path, msg_id, sop_class_uid, sop_instance_uid, priority,
                                originator_aet, originator_id)
            try:
                response = self._read_response(msg_id)
            except _Unanswered as e:
                log.warning("C-STORE to %s: %s: %s; aborting the association",
                            assoc.acceptor.ae_title, sop_instance_uid, e)
                response = StoreResponse(None, str(e))
            else:
                # The reader did not see these bytes: tell the network timeout it was not idle.
                assoc.dul._idle_timer.restart()
                return response
        finally:
            self._hold.release()
        assoc.abort()
        return response

    def send_c_store(self, path, *, msg_id: int, sop_class_uid: str, sop_instance_uid: str,
                     priority: int = 2, originator_aet: str | None = None,
                     originator_id: int | None = None):
        """pynetdicom's ``Association.send_c_store(path)``, as it does it for a file
        (association.py; the same context choice, response and status), but with
        the data set read from ``path`` and written here. Raises ValueError when no
        accepted context has the file's SOP class and transfer syntax, OSError when
        the file cannot be read (nothing sent), :class:`LinkLost` when the
        association broke while writing (it is aborted)."""
        assoc = self._assoc
        self._write_request(path, msg_id, sop_class_uid, sop_instance_uid, priority,
                            originator_aet, originator_id)
        _, rsp = self.get_msg(block=True)
        if rsp is None:
            assoc._handle_no_response()   # logs, aborts on a timeout: as send_c_store
            return Dataset()
        return assoc._check_received_status(rsp)

    def _write_request(self, path, msg_id: int, sop_class_uid: str, sop_instance_uid: str,
                       priority: int, originator_aet: str | None,
                       originator_id: int | None) -> None:
        assoc = self._assoc
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(min(size, self._HEAD))
            try:
                tsuid, offset = structure.file_meta(structure.Reader(head, size, _reads(f)))
            except structure.Malformed as e:
                raise ValueError(f"no usable File Meta Information: {e}") from None
            context_id = self._contexts.get((sop_class_uid, tsuid))
            if context_id is None:
                raise ValueError(f"no accepted presentation context for {sop_class_uid} "
                                 f"in {tsuid}")
            command = store_request_command(msg_id, sop_class_uid, sop_instance_uid,
                                            priority=priority,
                                            move_originator_aet=originator_aet,
                                            move_originator_id=originator_id)
            f.seek(offset)
            try:
                write_message(self._sock, context_id, assoc.acceptor.maximum_length, command,
                              f, size - offset,
                              send=self._send_watching if self._hold is not None else None)
            except (OSError, EOFError) as e:
                # Part of a message may be out: the association cannot go on (PS3.8 9.3.5).
                log.warning("C-STORE to %s: writing %s failed: %s: %s; aborting the association",
                            assoc.acceptor.ae_title, path, type(e).__name__, e)
                # The peer cannot read an A-ABORT after part of a PDU, and it would wait
                # behind the unsent bytes of a peer that stopped reading: the
                # connection is closed first (PS3.8 9.2: a closed transport connection
                # is an A-P-ABORT to the peer, Evt17).
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                if self._hold is not None:
                    self._hold.release()
                assoc.abort()
                raise LinkLost(f"{type(e).__name__}: {e}") from e

    def _send_watching(self, data) -> None:
        """``sendall`` for while pynetdicom's reader is held off the socket: as the
        peer of a storage SCU sends nothing while a request is being written (PS3.7
        9.3.1.2: the response follows the whole request), anything it sends, its
        closing included, ends the write with ConnectionError when the write
        blocks; so does no progress within the network timeout (TimeoutError)."""
        sock, view = self._sock, memoryview(data)
        stall = self._assoc.network_timeout
        while view:
            try:
                view = view[sock.send(view, socket.MSG_DONTWAIT):]
                continue
            except BlockingIOError:
                pass
            readable, writable, _ = select.select([sock], [sock], [], stall)
            if readable:
                raise ConnectionError("the peer sent something or closed the connection "
                                      "while a request was being written")
            if not writable:
                raise TimeoutError(f"nothing could be written for {stall} s")
            self._assoc.dul._idle_timer.restart()   # the reader does not see this progress

    def _read_response(self, msg_id: int) -> StoreResponse:
        """The C-STORE-RSP to request ``msg_id``: P-DATA-TF PDUs read until the last
        fragment of a command (PS3.8 9.3.5, E.2), its command set read for the
        status (PS3.7 9.3.1.2). Raises :class:`_Unanswered`."""
        timeout = self._assoc.dimse.dimse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        command = bytearray()
        while True:
            head = self._recv(_PDU_PREFIX.size, deadline)
            pdu_type, length = _PDU_PREFIX.unpack(head)
            if length > _LONGEST_RESPONSE:
                raise _Unanswered(f"a PDU of {length} bytes where a response is due")
            if pdu_type != _P_DATA_TF:
                # PS3.8 9.3: an A-ABORT (7) or A-RELEASE-RQ (5) in the middle of an
                # operation; either way no answer to this request will come.
                raise _Unanswered(f"the peer sent a PDU of type 0x{pdu_type:02X}, not the response")
            body = self._recv(length, deadline)
            pos = 0
            while pos + _PDV_OVERHEAD <= length:
                item_length = int.from_bytes(body[pos:pos + 4], "big")
                control = body[pos + 5]
                end = pos + 4 + item_length
                if item_length < 2 or end > length or not control & _COMMAND:
                    # PS3.7 9.3.1.2: a C-STORE-RSP has no data set.
                    raise _Unanswered("a malformed response (PS3.8 9.3.5)")
                command += body[pos + 6:end]
                pos = end
                if control & _LAST:
                    if pos != length:
                        raise _Unanswered("a malformed response (PS3.8 9.3.5)")
                    return _store_response(command, msg_id)

    def _recv(self, n: int, deadline: float | None) -> memoryview:
        """Exactly ``n`` bytes of the socket, acknowledging each piece at once (the
        module docstring: a peer with Nagle's algorithm on). Raises :class:`_Unanswered`
        at ``deadline`` or when the peer closes the connection."""
        if n > len(self._buf):
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        got = 0
        sock = self._sock
        while got < n:
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([sock], [], [], wait)[0]:
                    raise _Unanswered("no response within the DIMSE timeout")
            try:
                count = sock.recv_into(view[got:])
            except OSError as e:
                raise _Unanswered(f"{type(e).__name__}: {e}") from None
            if not count:
                raise _Unanswered("the peer closed the connection")
            got += count
            if self._QUICKACK is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, self._QUICKACK, 1)
                except OSError:
                    pass
        return view

    def get_msg(self, block: bool = False):
        """pynetdicom's ``DIMSEServiceProvider.get_msg``, but nothing for the
        association's own reactor thread (the race in this module's docstring), and
        prompting the peer's ACKs while it blocks (ditto)."""
        if self._guard and threading.current_thread() is self._assoc:
            return None, None
        if not block or self._QUICKACK is None:
            return self._stock_get_msg(block)
        dimse = self._assoc.dimse
        timeout = dimse.dimse_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, self._QUICKACK, 1)
            except OSError:
                return self._stock_get_msg(block)   # closed: pynetdicom's way says so
            wait = self._PROMPT_EVERY
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None, None   # what pynetdicom's get_msg gives on its timeout
            try:
                return dimse.msg_queue.get(block=True, timeout=wait)
            except queue.Empty:
                continue


def _store_response(command: bytes, msg_id: int) -> StoreResponse:
    """The status and comment of an encoded C-STORE-RSP command set answering
    ``msg_id`` (PS3.7 9.3.1.2); raises :class:`_Unanswered` for anything else."""
    values = command_values(command, _RSP_ELEMENTS)
    if command_us(values, 0x0100) != _C_STORE_RSP or command_us(values, 0x0120) != msg_id:
        raise _Unanswered("the peer answered something other than this C-STORE")
    status = command_us(values, 0x0900)
    if status is None:
        raise _Unanswered("the response has no Status (0000,0900)")
    comment = values.get(0x0902, b"").rstrip(b" \0").decode("ascii", "replace")
    return StoreResponse(status, comment)


def _reads(f):
    """``read_at(pos, n)`` on an open file, for a :class:`structure.Reader`."""
    def read_at(pos: int, n: int) -> bytes:
        f.seek(pos)
        return f.read(n)
    return read_at
