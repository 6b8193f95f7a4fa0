"""The DICOM server: a pynetdicom AE with our contexts, limits and handlers.

How pynetdicom is configured and whether accepted associations run our fast
path or stock pynetdicom is appliance.dicom.transport's business; incoming
C-STORE data sets stream to disk (appliance.dicom.receive) either way, so
memory does not grow with object size.
"""

from __future__ import annotations

import logging

from appliance.dicom import transport
from appliance.dicom.handlers import DicomHandlers
from appliance.dicom.receive import ReceivedFiles
from appliance.dicom.retrieve import RetrieveAE

log = logging.getLogger(__name__)


class DicomServer:
    """Owns the AE and its listening socket."""

    def __init__(self, *, aet: str, port: int, handlers: DicomHandlers,
                 incoming: ReceivedFiles, max_associations: int, timeout: int,
                 max_pdu: int, bind: str = "", unknown_sop_classes: bool = False,
                 mode: transport.Mode) -> None:
        self.handlers = handlers
        # Orthanc's UnknownSopClassAccepted: take any SOP class proposed for
        # storage, private ones included, not only those pynetdicom knows.
        self._unrestricted = unknown_sop_classes
        self._incoming = incoming
        self._mode = mode
        self._bind = bind
        self._port = port
        # The C-MOVE SCP asks this AE for its destination associations (dicom/retrieve.py).
        self.ae = RetrieveAE(ae_title=aet)
        self.ae.maximum_associations = max_associations
        self.ae.maximum_pdu_size = max_pdu
        # Orthanc's DicomScpTimeout: 0 means no timeout.
        limit = timeout or None
        self.ae.acse_timeout = limit
        self.ae.dimse_timeout = limit
        self.ae.network_timeout = limit
        self.contexts = handlers.registry.contexts()  # appliance.dicom.services
        self._server = None

    @property
    def port(self) -> int:
        """The bound port (the OS's choice when configured as 0)."""
        if self._server is None:
            return self._port
        return self._server.server_address[1]

    def start(self) -> None:
        """Bind and serve in pynetdicom's threads."""
        transport.configure_pynetdicom(unrestricted_storage=self._unrestricted)
        self._server = transport.start_server(
            self.ae, (self._bind, self._port), contexts=self.contexts,
            evt_handlers=self.handlers.bindings(), mode=self._mode, files=self._incoming)

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
