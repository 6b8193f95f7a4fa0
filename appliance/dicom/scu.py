"""Outbound DICOM: associations this daemon requests (it is the SCU).

Always stock pynetdicom: a fresh ``AE()`` per association, pynetdicom's own
Association, DUL and DIMSE classes. The fast path (appliance.dicom.tuning) is
made of subclasses that only pynetdicom's acceptor builds, through the request
handler appliance.dicom.transport gives to the server, and no pynetdicom module
is patched, so nothing of it can reach an association opened here.

Here: C-ECHO to a ``DicomModalities`` entry (Orthanc's ``POST
/modalities/{name}/echo``). C-STORE of stored instances (C-MOVE sub-operations,
forwarding) is appliance.dicom.sender's, on the same terms.
"""

from __future__ import annotations

import logging
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification
from pynetdicom.status import Status

from appliance.config import Modality
from appliance.dicom.requestor import pause_reactor, request_association

log = logging.getLogger(__name__)


class Outbound:
    """Opens associations to the configured modalities."""

    def __init__(self, *, aet: str, timeout: int) -> None:
        self._aet = aet            # DicomAet: our calling AE title unless a modality sets LocalAet
        self._timeout = timeout    # DicomScuTimeout (seconds, 0: none) unless the modality sets one

    def echo(self, modality: Modality, timeout: float | None = None) -> bool:
        """C-ECHO (PS3.7 9.1.5) to ``modality`` over a new association; True when it
        answers Success. Blocking: run it on a worker thread.

        ``timeout`` (seconds, 0: none) overrides the modality's Timeout, itself
        DicomScuTimeout when unset, as in Orthanc.
        """
        seconds = timeout if timeout is not None else (modality.timeout or self._timeout)
        limit = seconds or None
        ae = AE(ae_title=modality.local_aet or self._aet)
        ae.add_requested_context(Verification)
        ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = limit
        where = f"{modality.name} ({modality.aet} at {modality.host}:{modality.port})"
        started = time.monotonic()
        assoc, why = request_association(ae, modality.host, modality.port, modality.aet)
        if why:
            log.warning("C-ECHO to %s: %s", where, why)
            return False
        try:
            # Else its reactor may take the response; False: the peer already left.
            response = assoc.send_c_echo() if pause_reactor(assoc) else None
        finally:
            assoc.release()
        status = response.get("Status") if response else None
        elapsed = (time.monotonic() - started) * 1000
        if status != Status.SUCCESS:
            log.warning("C-ECHO to %s: %s, %.0f ms", where,
                        "no response" if status is None else f"status 0x{status:04X}", elapsed)
            return False
        log.info("C-ECHO to %s: success, %.0f ms", where, elapsed,
                 extra={"PEER": f"{modality.host}:{modality.port}", "CALLED_AET": modality.aet})
        return True
