"""The DICOM server: a pynetdicom AE with our contexts, limits and handlers.

Incoming C-STORE datasets are streamed to disk by pynetdicom itself
(``STORE_RECV_CHUNKED_DATASET``) so memory does not grow with object size.
pynetdicom opens that file with ``tempfile.NamedTemporaryFile``; the server
points that name, in pynetdicom's message module, at
:class:`~appliance.dicom.handlers.IncomingFiles` for its lifetime, so the
file is created in the archive's incoming directory (a rename away from its
final place) and hashed while it is written.
"""

from __future__ import annotations

import logging

import pydicom.uid
from pynetdicom import AE, _config, dimse_messages
from pynetdicom.sop_class import Verification, _STORAGE_CLASSES

from appliance.dicom.handlers import DicomHandlers, IncomingFiles
from appliance.dicom.tuning import PynetdicomTuning

log = logging.getLogger(__name__)

# Every transfer syntax pydicom knows, uncompressed ones first so that a
# requestor proposing several in one context gets a cheap one.
_UNCOMPRESSED = [
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
    pydicom.uid.ExplicitVRBigEndian,
]
TRANSFER_SYNTAXES = _UNCOMPRESSED + [
    ts for ts in pydicom.uid.AllTransferSyntaxes if ts not in _UNCOMPRESSED
]


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows."""
    return sorted(set(_STORAGE_CLASSES.values()))


class DicomServer:
    """Owns the AE and its listening socket."""

    def __init__(self, *, aet: str, port: int, handlers: DicomHandlers,
                 incoming: IncomingFiles, max_associations: int, timeout: int,
                 max_pdu: int, bind: str = "", unknown_sop_classes: bool = False) -> None:
        self.handlers = handlers
        # Orthanc's UnknownSopClassAccepted: take any SOP class proposed for
        # storage, private ones included, not only those pynetdicom knows.
        self._unrestricted = unknown_sop_classes
        self._incoming = incoming
        self._bind = bind
        self._port = port
        self.ae = AE(ae_title=aet)
        self.ae.maximum_associations = max_associations
        self.ae.maximum_pdu_size = max_pdu
        # Orthanc's DicomScpTimeout: 0 means no timeout.
        limit = timeout or None
        self.ae.acse_timeout = limit
        self.ae.dimse_timeout = limit
        self.ae.network_timeout = limit
        self.ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        for uid in storage_sop_classes():
            self.ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        if handlers.worklist is not None:  # MWL C-FIND, MPPS: small datasets, uncompressed
            for uid in handlers.worklist.sop_classes():
                self.ae.add_supported_context(uid, _UNCOMPRESSED)
        self._server = None
        self._saved_ntf = None
        self._tuning = PynetdicomTuning()

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when configured as 0)."""
        if self._server is None:
            return self._port
        return self._server.server_address[1]

    def start(self) -> None:
        """Bind and serve in pynetdicom's threads."""
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.UNRESTRICTED_STORAGE_SERVICE = self._unrestricted
        # pynetdicom pretty-prints every C-FIND identifier for a debug log we
        # do not keep: about a tenth of a worklist query's time.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        # Its "standard" handlers build an event and log lines for every PDU
        # and message, at levels below the WARNING we keep for pynetdicom
        # (appliance.logs): a tenth of a received image's CPU time.
        _config.LOG_HANDLER_LEVEL = "none"
        self._saved_ntf = dimse_messages.NamedTemporaryFile
        dimse_messages.NamedTemporaryFile = self._incoming.create
        self._tuning.install()
        self._server = self.ae.start_server(
            (self._bind, self._port), block=False, evt_handlers=self.handlers.bindings()
        )

    def is_alive(self) -> bool:
        """True while the server thread accepts connections (health check)."""
        sock = self._server.socket if self._server is not None else None
        return sock is not None and sock.fileno() >= 0

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, abort open associations, let in-flight stores finish.

        An aborted association never got a response for a store in its
        handler, so the modality will resend it: that is safe (duplicates are
        answered Success) and it keeps SIGTERM fast.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        open_assocs = server.active_associations
        server.shutdown()  # stop accepting, close the listening socket
        for assoc in open_assocs:
            assoc.abort()
        if not self.handlers.wait_idle(grace):
            log.warning("stores still being written after %.0f s; stopping anyway", grace)
        if self._saved_ntf is not None:
            dimse_messages.NamedTemporaryFile = self._saved_ntf
            self._saved_ntf = None
        self._tuning.remove()
