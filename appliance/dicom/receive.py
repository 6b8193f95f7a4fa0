"""The receive adapter: where a C-STORE's data set is written while it arrives.

pynetdicom receives a C-STORE data set in chunks into a file when its documented
``_config.STORE_RECV_CHUNKED_DATASET`` switch is on (appliance.dicom.transport sets
it), and hands the handler of ``evt.EVT_C_STORE`` that file's path
(``event.dataset_path``). The file must quack like the
``tempfile.NamedTemporaryFile(mode="wb", delete=False)`` pynetdicom opens itself
(pynetdicom/dimse_messages.py, ``DIMSEMessage.decode_msg``): a ``name``, ``write``,
``file.flush()`` after every fragment, and ``close`` (pynetdicom's
``StorageServiceClass.SCP`` closes it and unlinks ``name`` after the handler).

* Fast path (appliance.dicom.tuning): the acceptor's DIMSE provider opens the file
  itself, through :meth:`ReceivedFiles.open`: a :class:`ReceiveFile` around the
  store's neutral :class:`~appliance.store.IncomingFile`, already in the
  storage's incoming folder (a rename away from its place), hashed as it is
  written, its header parsed while the pixels still arrive.
* Stock pynetdicom: pynetdicom writes its own temporary file; :meth:`ReceivedFiles.take`
  copies it into an incoming file (pynetdicom deletes its own after the handler).

Either way the C-STORE handler gets an IncomingFile from :meth:`ReceivedFiles.take`,
and the files of an association that ends mid-transfer are deleted when its
connection closes (:meth:`ReceivedFiles.discard_for`). appliance.store knows
nothing of this shape.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.store import Archive, IncomingFile

log = logging.getLogger(__name__)

# PS3.10 7.1: a 128-byte preamble and the "DICM" prefix open a Part-10 file.
PREAMBLE = bytes(128) + b"DICM"
_COPY_CHUNK = 1 << 20


class _NoFlush:
    """The ``file`` attribute pynetdicom flushes after every fragment: a no-op,
    so the received fragments are collected into blocks rather than written one
    by one (IncomingFile.flush writes them out when the receive ends)."""

    def flush(self) -> None:
        pass


_NO_FLUSH = _NoFlush()


class ReceiveFile:
    """An :class:`IncomingFile` in the shape of pynetdicom's NamedTemporaryFile.

    ``write`` is the incoming file's own bound method, so the fast path's
    receiver, which writes every data fragment, pays no extra call.
    """

    __slots__ = ("incoming", "name", "write", "file")

    def __init__(self, incoming: IncomingFile) -> None:
        self.incoming = incoming
        self.name = incoming.path
        self.write = incoming.write
        self.file = _NO_FLUSH

    def close(self) -> None:
        """Write out what was received and close (pynetdicom closes it after the handler)."""
        self.incoming.close()


class ReceivedFiles:
    """The files C-STORE data sets are being received into, by association.

    Hands out incoming files from the archive, remembers which association
    receives each so the C-STORE handler can take its file, and deletes the
    files of an association whose connection closed mid-transfer.
    """

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._lock = threading.Lock()
        self._files: dict[str, tuple[IncomingFile, object]] = {}

    def open(self, assoc: object, file_meta: bytes) -> ReceiveFile:
        """A new file for a data set ``assoc`` is about to receive, its preamble
        and File Meta Information (``file_meta``, encoded) already written."""
        incoming = self._archive.new_incoming(early_header=True)
        incoming.write(PREAMBLE + file_meta)
        with self._lock:
            self._files[incoming.path] = (incoming, assoc)
        return ReceiveFile(incoming)

    def take(self, path: str) -> IncomingFile | None:
        """The received file at ``path`` (``event.dataset_path``), now the caller's;
        None when there is nothing to take."""
        with self._lock:
            entry = self._files.pop(path, None)
        if entry is not None:
            return entry[0]
        return self._copy_in(path)

    def _copy_in(self, path: str) -> IncomingFile | None:
        """Stock pynetdicom received into its own temporary file: copy it into an
        incoming file (read in chunks: memory does not grow with the object)."""
        try:
            source = open(path, "rb")
        except OSError as e:
            log.error("received data set %s not readable: %s", path, e.strerror)
            return None
        incoming = self._archive.new_incoming(early_header=True)
        try:
            with source:
                while chunk := source.read(_COPY_CHUNK):
                    incoming.write(chunk)
        except OSError as e:
            log.error("received data set %s not readable: %s", path, e.strerror)
            incoming.discard()
            return None
        return incoming

    def discard_for(self, assoc) -> None:
        """Delete the unfinished files of one association (its connection closed).

        Stock pynetdicom keeps the temporary file of a data set still being
        received as the private ``_data_set_file`` of its DIMSE provider's
        current message (pynetdicom/dimse_messages.py) and never deletes it
        when the connection drops: it is deleted here too.
        """
        with self._lock:
            mine = [p for p, (_, a) in self._files.items() if a is assoc]
            entries = [self._files.pop(p) for p in mine]
        for incoming, _ in entries:
            incoming.discard()
        message = getattr(getattr(assoc, "dimse", None), "message", None)
        pending = getattr(message, "_data_set_file", None)
        if pending is not None and not isinstance(pending, ReceiveFile):
            try:
                pending.close()
                os.unlink(pending.name)
            except OSError:
                pass
