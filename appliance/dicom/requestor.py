"""Associations the daemon requests: why one could not be opened, in words a
clinic's IT person can act on (:func:`request_association`), and a real pause
of pynetdicom's requestor reactor before a request is sent.

pynetdicom 3.0.4 (association.py) runs a reactor thread in every association,
the ones we request included, which takes any decoded DIMSE message off the
queue and serves it as a request. Before each ``send_*`` it is paused so that
the response is left to the caller: ``send_c_store`` and the others clear
``_reactor_checkpoint`` and wait until ``_is_paused`` is True. That flag is
not a handshake. The reactor sets it before ``checkpoint.wait()`` and resets
it only once that wait has returned and the thread has run again; so after one
request's ``set()``, the next request can clear the checkpoint, find the flag
still True (the reactor has not run yet: another thread had the GIL), and go
out. The reactor then resumes (``threading.Event.wait`` returns on the
notification even though the flag is clear again), takes the response off the
queue the moment it lands, logs "Received unexpected C-STORE service message"
and drops it, and the caller waits for nothing until its DIMSE timeout: the
peer sees an association go silent (the soak's "Network timeout reached", about
once in 1,700 C-STOREs, and with three busy threads beside four senders about
once in 340 here), and the request is resent although it was done.

:func:`pause_reactor` closes it. It gives the association a
:class:`ReactorGate` as its checkpoint, whose ``wait`` returns only while the
gate is open (a clear that comes before the woken reactor runs keeps it
waiting) and which tells when the reactor is parked in it; then it shuts the
gate and waits for that. pynetdicom's own pause that follows finds the
reactor really parked, and its ``set()`` after the response lets it go.
"""

from __future__ import annotations

import threading
import time

from pynetdicom import evt

# Long enough for a reactor that is serving something (pynetdicom's loop is a 1 ms
# sleep and a few checks); a reactor that never parks is a dead association, which
# the send that follows finds out by itself.
_PARK_TIMEOUT = 5.0


class ReactorGate:
    """``Association._reactor_checkpoint`` as a handshake: what pynetdicom uses of a
    ``threading.Event`` (``set``, ``clear``, ``is_set``, ``wait``), plus
    :meth:`shut_and_park`."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = True
        self._parked = False

    def is_set(self) -> bool:
        """True while the reactor may run."""
        return self._open

    def set(self) -> None:
        """Let the reactor run."""
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Stop the reactor at its next checkpoint."""
        with self._cond:
            self._open = False

    def wait(self, timeout: float | None = None) -> bool:
        """The reactor's checkpoint: return only while the gate is open (or at
        ``timeout``); while waiting, the gate says it holds the reactor."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._open:
                self._parked = True
                self._cond.notify_all()   # shut_and_park() waits for this
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._parked = False
            return self._open

    def shut_and_park(self, timeout: float) -> bool:
        """Shut the gate and wait until the reactor waits at it; False at ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._open = False
            while not self._parked:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True


def request_association(ae, host: str, port: int, called_aet: str, **kwargs):
    """``ae.associate(host, port, ae_title=called_aet, **kwargs)``, and why it
    failed: (the association, "") once established, else (the association or
    None, why). pynetdicom reports a TCP connection refused or timed out as an
    aborted association; here it says that no connection could be made, which
    sends the reader to the network or the peer's port, not its DICOM set-up."""
    connected = threading.Event()
    handlers = [(evt.EVT_CONN_OPEN, lambda event: connected.set())]
    try:
        assoc = ae.associate(host, port, ae_title=called_aet, evt_handlers=handlers, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:   # pynetdicom resolves the host name itself
        return None, f"cannot connect to {host}:{port}: {getattr(e, 'strerror', None) or e}"
    if assoc.is_established:
        return assoc, ""
    if not connected.is_set():
        return assoc, (f"cannot connect to {host}:{port}: no TCP connection (refused, "
                       "unreachable or no answer in time)")
    if assoc.is_rejected:
        return assoc, "association rejected"
    if assoc.is_aborted:
        return assoc, "association aborted by the peer"
    return assoc, "no association"


def pause_reactor(assoc, timeout: float = _PARK_TIMEOUT) -> bool:
    """Call before each ``assoc.send_*`` on an association we requested: returns once
    its reactor thread is parked and cannot take the response. False, and nothing
    should be sent, if it did not park within ``timeout`` (the association is gone or
    stuck) or the peer has aborted or closed the connection: parked at the top of its
    loop, the reactor has not seen that yet, and a request would wait out the DIMSE
    timeout for an answer that cannot come; it is let go to end the association. The
    ``send_*`` call restarts the reactor when it has its response, as it always does."""
    gate = assoc._reactor_checkpoint
    if not isinstance(gate, ReactorGate):
        # The first time: swap the Event for a gate. The old Event is open, so a
        # reactor inside its wait() comes out at once and meets the gate next time.
        gate = assoc._reactor_checkpoint = ReactorGate()
    if not assoc.is_established or not gate.shut_and_park(timeout):
        return False
    if assoc.acse.is_aborted():   # an A-ABORT or A-P-ABORT waits for the reactor
        gate.set()
        return False
    return True
