"""C-STORE requests of stored files written straight to the association's socket.

The requestor side of the fast path, for the associations the daemon opens to
send what it stores (appliance.dicom.sender: C-MOVE sub-operations, forwarding,
sending on demand). Why: pynetdicom sends a data set as one P-DATA primitive
per PDU (16 KiB with DCMTK's and Orthanc's default maximum PDU length, about 60
per ultrasound image), and each goes through a queue, the upper layer's state
machine, an event and an encode before it reaches the socket, on a second
thread: 5 ms of CPU per 0.92 MB image, which capped one association at about
150 images/s where storescu sends 500/s. Here the same PDUs are framed around
the file's bytes, read into one reused buffer, and written by the calling
thread: 1.6 ms per image.

What stays pynetdicom's: the association (negotiation, release, abort, the
reader, its state machine and the decoding of responses) and every other
message. :meth:`DirectStoreWrites.send_c_store` does what pynetdicom's
``Association.send_c_store(path)`` does for a file (the context of the file's
SOP class and transfer syntax, the response, its status), but writes the
command (encoded directly, appliance.dicom.tuning.store_request_command) and
the data set as P-DATA-TF PDUs of one PDV each (PS3.8 9.3.5, E.2), read from the
file after its File Meta Information: the bytes pynetdicom would send, in the
same order, without building a pydicom dataset for the command or the file
meta (1.2 ms of the 1.6). Writing from the sender's thread is safe because
nothing else of this association writes meanwhile: its reactor answers
requests from the peer, and a peer of a storage SCU association sends none
(PS3.4 B.2: we propose the SCU role only); the only other PDUs our sender makes
(A-RELEASE) come after. Its instance attribute ``dimse.get_msg`` is replaced on
that one association; nothing is changed process-wide.

The reactor. pynetdicom's ``send_c_store`` pauses the association's reactor
thread so that it does not take the response off the message queue: it clears
an event and waits for a flag the reactor sets before waiting on that event.
When one ``send_c_store`` follows another, the reactor, woken by the end of the
first, may not have run yet: the flag is still set, the second request goes
out, and the reactor's next look at the queue (``get_msg(block=False)``) can
take the response the request is waiting for, which then waits until the DIMSE
timeout aborts the association (once in a few hundred images, with the PDUs
written in a millisecond). Here the reactor thread is never handed a message
(:meth:`DirectStoreWrites.get_msg`), as the peer sends no request, and is not
paused at all: appliance.dicom.requestor's gate parks it for real, but waits for
the reactor's 1 ms loop on every request, where a whole direct send of a 0.92 MB
image takes about 2.5 ms. Requests sent pynetdicom's way (stock mode, or an object
pynetdicom must re-encode) are guarded by appliance.dicom.requestor's gate.

Acknowledging. A peer with Nagle's algorithm on that writes a response in two
pieces (DCMTK) holds the second until the first is acknowledged, and Linux
delays that ACK by up to 40 ms when the receiver has nothing to send (see
appliance.dicom.sender.AckPrompter). While a request waits for its response,
:meth:`DirectStoreWrites.get_msg` sets TCP_QUICKACK (tcp(7)) on the socket
every half millisecond, which sends any pending ACK at once; a thread watching
the socket for readability loses the race with pynetdicom's reader, which takes
the first piece and then blocks for the second.

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
import socket
import struct
import threading
import time
from typing import BinaryIO

from pydicom.dataset import Dataset

from appliance.dicom.tuning import store_request_command
from appliance.dicomfile import structure

log = logging.getLogger(__name__)

__all__ = ["DirectStoreWrites", "LinkLost", "StoredFile", "write_message"]

_P_DATA_TF = 0x04
_PDU_HEAD = struct.Struct(">BxLLBB")   # PDU type, length; PDV length, context ID, control
_PDV_OVERHEAD = 6                      # PS3.8 9.3.5.1: item length (4), context ID, control
# The largest PDU sent to a peer that sets no maximum (PS3.8 D.1: 0 is unlimited).
_UNLIMITED_FILL = 256 * 1024
_COMMAND, _DATA, _LAST = 0x01, 0x00, 0x02   # PS3.8 E.2 message control header bits
_BATCH = 256 * 1024   # bytes of PDUs per write


class LinkLost(RuntimeError):
    """The association broke while a request was being written; it has been aborted."""


def write_message(sock, context_id: int, max_pdu: int, command: bytes,
                  data: BinaryIO | None = None, length: int = 0) -> int:
    """Write one DIMSE message to ``sock``: the encoded ``command`` set, then ``length``
    bytes of data set read from ``data``, as P-DATA-TF PDUs of one PDV each, none
    longer than the peer's maximum ``max_pdu`` (0: unlimited). Returns the data set
    bytes written; raises OSError from the socket, EOFError if ``data`` ends early."""
    limit = max_pdu or _UNLIMITED_FILL
    step = limit - _PDV_OVERHEAD
    if step <= 0:
        raise ValueError(f"maximum PDU length {max_pdu} leaves no room for data")
    head = _PDU_HEAD.size
    for start in range(0, len(command), step):
        chunk = command[start:start + step]
        flags = _COMMAND | (_LAST if start + step >= len(command) else 0)
        sock.sendall(_PDU_HEAD.pack(_P_DATA_TF, len(chunk) + _PDV_OVERHEAD, len(chunk) + 2,
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
        sock.sendall(view[:end])
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


class DirectStoreWrites:
    """On one established requestor association (ours: appliance.dicom.sender):
    :meth:`send_c_store` of a stored file, written by :func:`write_message`."""

    _QUICKACK = getattr(socket, "TCP_QUICKACK", None)   # Linux only
    _PROMPT_EVERY = 0.0005   # seconds between TCP_QUICKACKs while a response is awaited
    _HEAD = 4096             # the first read of a file: its File Meta Information and more

    def __init__(self, assoc) -> None:
        """On an association we requested, its reactor thread is kept off the message
        queue (this module's docstring); not on one we accepted, whose C-GET
        sub-operations are sent from that very thread (the handler's)."""
        self._assoc = assoc
        self._sock = assoc.dul.socket.socket
        # Where we may send C-STORE requests: as SCU (on a C-GET, by role selection,
        # PS3.7 D.3.3.4), the same rule as appliance.dicom.sender.
        self._contexts = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.context_id
                          for cx in assoc.accepted_contexts if cx.as_scu}
        self._guard = assoc.is_requestor
        self._stock_get_msg = assoc.dimse.get_msg
        if self._guard:
            # Also what pynetdicom's own send_c_store (an object it must re-encode)
            # waits with on this association.
            assoc.dimse.get_msg = self.get_msg

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
                              f, size - offset)
            except (OSError, EOFError) as e:
                # Part of a message may be out: the association cannot go on (PS3.8 9.3.5).
                log.warning("C-STORE to %s: writing %s failed: %s: %s; aborting the association",
                            assoc.acceptor.ae_title, path, type(e).__name__, e)
                assoc.abort()
                raise LinkLost(f"{type(e).__name__}: {e}") from e
        _, rsp = self.get_msg(block=True)
        if rsp is None:
            assoc._handle_no_response()   # logs, aborts on a timeout: as send_c_store
            return Dataset()
        return assoc._check_received_status(rsp)

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


def _reads(f):
    """``read_at(pos, n)`` on an open file, for a :class:`structure.Reader`."""
    def read_at(pos: int, n: int) -> bytes:
        f.seek(pos)
        return f.read(n)
    return read_at
