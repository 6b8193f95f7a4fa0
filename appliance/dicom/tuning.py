"""Make pynetdicom answer without idle waits and accept without needless copies.

Wake-ups. pynetdicom 3 runs two polling loops per association. The DUL thread sleeps
``_run_loop_delay`` (1 ms) whenever a pass found nothing to do, so a PDU that
arrives, or a response the handler queued, waits for the rest of that sleep.
The association thread sleeps 1 ms before every look at its DIMSE message
queue. storescu sends the next object only after the C-STORE-RSP of the last,
so these waits add up to about 2 ms to every instance (a fifth of a
640x480 RGB image's time on one association), and a worklist query pays them
between its request and its first answer.

The tuning keeps the loops and their periods (an idle
association costs no more CPU than before) but makes each sleep end early:

- the DUL sleeps in ``select`` on its socket and on an eventfd that its
  to-provider queue signals on every ``put``, so incoming data and outgoing
  responses are handled at once;
- the association thread waits on its message queue's condition, which a
  decoded message notifies.

P-DATA. Each P-DATA-TF PDU (16 KB with Orthanc's default MaximumPduLength,
about 60 per ultrasound image) goes through pynetdicom's generic path: read
in 4 KB pieces, copied three times, decoded into item objects, queued as an
FSM event, dequeued, turned into a primitive. While the association is
established (Sta6) and nothing else is queued, that path always ends in the
same place (DT-2: hand the P-DATA primitive to the DIMSE provider), so
:func:`_read_pdu_data` goes there directly: one ``recv_into`` of the whole PDU
and a split into PDVs. Every other PDU, and any PDU in any other state, takes
pynetdicom's own path. Together these cut the server's CPU time per image by
about a third (see tests/bench).

Context copies. For every association pynetdicom deep-copies the AE's
supported contexts: here about 170 storage classes times 35 transfer syntaxes,
each UID re-created and re-validated by pydicom, some 30 ms per association.
pydicom's UID is an immutable str, so its deep copy can be the object itself,
as it is for ``str``.

This reaches into pynetdicom's internals (``pynetdicom.dul.time``,
``pynetdicom.association.time``, the DUL's ``to_provider_queue``) and adds
``UID.__deepcopy__`` to pydicom, like the
chunked-receive hook in :mod:`appliance.dicom.scp`; pyproject pins the
pynetdicom versions it was checked against.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import threading
import time
import weakref

from pydicom.uid import UID
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger(__name__)

# The association reactor's own sleep before each look at its message queue
# (pynetdicom/association.py, Association._run_reactor). Other sleeps in that
# module belong to requestor-side waits, which are left exactly as they are.
_ASSOC_REACTOR_DELAY = 0.001


class _WakingQueue(queue.Queue):
    """A queue that signals an eventfd on every put (the DUL's to-provider queue)."""

    def __init__(self, wake_fd: int) -> None:
        super().__init__()
        self._wake_fd = wake_fd

    def _put(self, item) -> None:
        super()._put(item)
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


def _dul_sleep(delay: float) -> None:
    """The DUL's idle sleep, cut short by socket data or a queued primitive."""
    dul = threading.current_thread()
    wake = getattr(dul, "_appliance_wake", None)
    transport = getattr(dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if wake is None or sock is None or delay <= 0:
        time.sleep(delay)  # another thread waiting for the DUL (stop_dul), or no socket
        return
    try:
        ready, _, _ = select.select([sock, wake], [], [], delay)
    except (OSError, ValueError):  # the socket closed under us: plain sleep
        time.sleep(delay)
        return
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


def _read_pdu_data(dul, original) -> None:
    """Read one PDU; P-DATA-TF in Sta6 goes straight to the DIMSE provider."""
    raw = getattr(dul.socket, "socket", None)
    if (raw is None or dul.state_machine.current_state != "Sta6"
            or not dul.event_queue.empty() or not dul._recv_pdu.empty()
            or dul.assoc.get_handlers(evt.EVT_DATA_RECV)
            or dul.assoc.get_handlers(evt.EVT_PDU_RECV)):
        return original(dul)
    try:
        head = raw.recv(_PDU_HEADER, socket.MSG_PEEK)
    except OSError:
        return original(dul)  # it reports the broken connection its own way
    if len(head) < _PDU_HEADER or head[0] != _P_DATA_TF:
        return original(dul)
    pdu = bytearray(_PDU_HEADER + int.from_bytes(head[2:6], "big"))
    view = memoryview(pdu)
    got = 0
    try:
        while got < len(pdu):
            n = raw.recv_into(view[got:])
            if not n:
                break
            got += n
    except OSError as e:  # TimeoutError included
        log.error("connection lost in the middle of a PDU: %s", e)
        dul.event_queue.put("Evt17")  # transport connection closed
        return None
    if got != len(pdu):
        log.error("connection closed after %d of the %d bytes of a PDU", got, len(pdu))
        dul.event_queue.put("Evt17")
        return None
    pdvs = []
    pos, end = _PDU_HEADER, len(pdu)
    while pos < end:
        length = int.from_bytes(view[pos:pos + _PDV_HEADER], "big")
        if length < 2 or pos + _PDV_HEADER + length > end:
            log.error("malformed P-DATA-TF PDU: a PDV item overruns the PDU")
            dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom aborts (AA-8)
            return None
        start = pos + _PDV_HEADER
        pdvs.append([pdu[start], bytes(view[start + 1:start + length])])
        pos = start + length
    primitive = P_DATA()
    primitive.presentation_data_value_list = pdvs
    dul.assoc.dimse.receive_primitive(primitive)  # what DT-2 does in Sta6
    return None


def _same_uid(uid: UID, memo: dict) -> UID:
    return uid


class PynetdicomTuning:
    """Installs (and removes) the wake-ups and the cheap UID copy for one server's lifetime."""

    def __init__(self) -> None:
        self._saved: tuple | None = None

    def install(self) -> None:
        """Patch pynetdicom; DULs created from now on get a wake-up eventfd."""
        if self._saved is not None:
            return
        cls = _dul.DULServiceProvider
        original_init = cls.__init__

        def __init__(dul, *args, **kwargs) -> None:
            original_init(dul, *args, **kwargs)
            wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            dul._appliance_wake = wake
            # Nothing has been queued yet: the reactor thread is not started.
            dul.to_provider_queue = _WakingQueue(wake)
            weakref.finalize(dul, os.close, wake)

        original_read = cls._read_pdu_data

        def read_pdu_data(dul) -> None:
            _read_pdu_data(dul, original_read)

        self._saved = (original_init, original_read, _dul.time, _association.time,
                       UID.__dict__.get("__deepcopy__"))
        cls.__init__ = __init__
        cls._read_pdu_data = read_pdu_data
        UID.__deepcopy__ = _same_uid
        _dul.time = _SleepProxy(_dul_sleep)
        _association.time = _SleepProxy(_association_sleep)

    def remove(self) -> None:
        """Put pynetdicom back as it was."""
        if self._saved is None:
            return
        original_init, original_read, dul_time, assoc_time, uid_copy = self._saved
        _dul.DULServiceProvider.__init__ = original_init
        _dul.DULServiceProvider._read_pdu_data = original_read
        if uid_copy is None:
            del UID.__deepcopy__
        else:
            UID.__deepcopy__ = uid_copy
        _dul.time = dul_time
        _association.time = assoc_time
        self._saved = None
