"""pynetdicom behind one seam: how the DICOM server is built, and whether the fast path runs.

The fast path (appliance.dicom.tuning) is a set of subclasses of pynetdicom's
acceptor: a request handler given to pynetdicom's documented server hook
(``AE.make_server(..., request_handler=...)``) builds them for each accepted
connection. Nothing in pynetdicom's modules or classes is patched, so the
associations this daemon requests itself (appliance.dicom.scu: C-ECHO, the
storage commitment reports; appliance.dicom.sender: C-MOVE sub-operations,
forwarding) run stock pynetdicom classes, fast path or not. One thing on the
sender's associations follows the mode: in FAST mode the daemon has the sender
write its C-STORE requests of stored files straight to the socket
(appliance.dicom.streaming); in STOCK mode
it does not, so PACS_APPLIANCE_STOCK_PYNETDICOM=1 still means pynetdicom's own
code for every byte.

The subclasses extend or repeat pynetdicom code they do not own (reactor loops,
readers, the acceptor's set-up): they are right for the pynetdicom they were
checked against and for no other. So the server runs them only when
:func:`fast_path_problem` finds that pynetdicom's version is
:data:`VERIFIED_PYNETDICOM` and that the source of each function in
:data:`_VERIFIED_SOURCES` is the one verified; otherwise it logs one WARNING
and runs stock pynetdicom, as it does when PACS_APPLIANCE_STOCK_PYNETDICOM=1 is
in its environment. Received C-STORE data sets stream to disk either way
(appliance.dicom.receive).

Process-wide changes: no module-level patch of pynetdicom or pydicom at all.
What is set process-wide is pynetdicom's own documented configuration, the
same in both modes (:func:`configure_pynetdicom`): its ``_config`` module is
global by pynetdicom's design, so these apply to the daemon's outbound
associations too.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import importlib
import logging
import os
import threading

import pynetdicom
from pynetdicom import _config
from pynetdicom.transport import ThreadedAssociationServer

from appliance.dicom.receive import ReceivedFiles
from appliance.dicom.tuning import AcceptorRequestHandler, FastPath
from appliance.lazyimports import STOCK_PYNETDICOM_ENV

log = logging.getLogger(__name__)

# Also read at import by appliance.lazyimports (pynetdicom.status's tables).
STOCK_ENV = STOCK_PYNETDICOM_ENV
VERIFIED_PYNETDICOM = "3.0.4"

# The pynetdicom code the fast path depends on, and the SHA-256 (first 16 hex
# digits) of each function's source as verified with VERIFIED_PYNETDICOM
# (:func:`source_digest`). Listed: what tuning.py overrides, what it repeats
# statement for statement, and what sets or reads the private attributes it uses.
_VERIFIED_SOURCES = {
    # FastDUL: the reactor loop is repeated but for its sleep; its reader, kill
    # and stop are extended; __init__ makes the queues and state the fast reader
    # reads; _decode_pdu is called for every PDU not taken the short way.
    "pynetdicom.dul.DULServiceProvider.__init__": "dc16729890247595",
    "pynetdicom.dul.DULServiceProvider.run_reactor": "5510d9fcbcb03759",
    "pynetdicom.dul.DULServiceProvider._read_pdu_data": "90e4453840f7e31a",
    "pynetdicom.dul.DULServiceProvider._is_transport_event": "e6689baa15a2f1f3",
    "pynetdicom.dul.DULServiceProvider._decode_pdu": "f2909393d6df33c1",
    "pynetdicom.dul.DULServiceProvider.kill_dul": "ac7c3cb0e93943f6",
    "pynetdicom.dul.DULServiceProvider.stop_dul": "f6e4e1616894f6d1",
    # _Receiver takes a P-DATA-TF in Sta6 the way DT-2 does.
    "pynetdicom.fsm.DT_2": "6541e369216c2ab5",
    # FastAssociation: providers replaced after __init__, reactor loop repeated,
    # run_reactor extended (what it raises ends the association).
    "pynetdicom.association.Association.__init__": "2cf4c4c3f9a64f93",
    "pynetdicom.association.Association.run_reactor": "14082be92a2cadfa",
    "pynetdicom.association.Association._run_reactor": "cb82fc19c31a1eef",
    # FastDimse: receive_primitive and send_msg extended; decode_msg's C-STORE-RQ
    # command branch repeated with our file; the message's private file attributes.
    "pynetdicom.dimse.DIMSEServiceProvider.receive_primitive": "30ca257ed4a4d320",
    "pynetdicom.dimse.DIMSEServiceProvider.send_msg": "a51b828382da0320",
    "pynetdicom.dimse_messages.DIMSEMessage.__init__": "2895a5343ea021a5",
    "pynetdicom.dimse_messages.DIMSEMessage.decode_msg": "2c02039037da4ce5",
    # Closes the received file and unlinks its name after the C-STORE handler.
    "pynetdicom.service_class.StorageServiceClass.SCP": "c0b9ec04551fbe9f",
    # AcceptorRequestHandler repeats both but for the association's class and
    # the contexts' copy.
    "pynetdicom.transport.RequestHandler.handle": "6b8d7a45291e057c",
    "pynetdicom.transport.RequestHandler._create_association": "9b13762e0fcedb3a",
    # start_fast_server starts the server as start_server(block=False) does, so
    # that AssociationServer.shutdown finds it in the AE's list of servers.
    "pynetdicom.ae.ApplicationEntity.start_server": "4ccbb2cb072abb4e",
    "pynetdicom.transport.AssociationServer.shutdown": "2d0e8b62a2e5f4b9",
    # appliance.dicom.streaming (the sender's direct writes): send_c_store(path) and
    # the PDU framing of encode_msg repeated; the status checks it calls; get_msg
    # replaced on the association, whose reactor calls it; on an association we
    # requested, _is_transport_event (above) wrapped while the responses are read
    # directly, the idle timer restarted for them, abort called after a failure.
    "pynetdicom.timer.Timer.restart": "431512a05d4bdda9",
    "pynetdicom.association.Association._abort_blocking": "c95ce39384751c78",
    "pynetdicom.association.Association.send_c_store": "0034454adbc031e4",
    "pynetdicom.association.Association._check_received_status": "0af0e47ac12f5c9f",
    "pynetdicom.association.Association._handle_no_response": "578efc551d132479",
    "pynetdicom.dimse.DIMSEServiceProvider.get_msg": "1185aa737de8b616",
    "pynetdicom.dimse_messages.DIMSEMessage.encode_msg": "5dea7b9a6f89a1d1",
}


class Mode(enum.Enum):
    """How accepted associations run."""

    FAST = "fast path"
    STOCK = "stock pynetdicom"


def _resolve(dotted: str):
    """The function named ``module.Class.function`` (or ``module.function``)."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def source_digest(func, files: dict[str, list[bytes]] | None = None) -> str:
    """SHA-256 (first 16 hex digits) of a function's source text, from its first
    line to its end, read from the .py file (``files``: the files read so far, as lines).

    Read from the file, not from the bytecode, so that it does not depend on the
    Python version; a plain scan rather than ``inspect.getsource``, which
    tokenizes (~15 ms for these functions at every start) and keeps every line
    of pynetdicom's sources in linecache as a string of its own, for the
    daemon's life (1 MB). A file here is split once and freed with ``files``.
    """
    code = func.__code__
    files = {} if files is None else files
    lines = files.get(code.co_filename)
    if lines is None:
        with open(code.co_filename, "rb") as f:
            lines = files[code.co_filename] = f.read().split(b"\n")
    first = code.co_firstlineno - 1
    # Past the last line with code (a signature may span lines at the def's
    # indent), then on to the first line indented no deeper than the def.
    last = max((line for _, _, line in code.co_lines() if line), default=code.co_firstlineno)
    head = lines[first]
    indent = len(head) - len(head.lstrip())
    end = first + 1
    while end < len(lines):
        line = lines[end]
        if end >= last and line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        end += 1
    text = b"\n".join(lines[first:end]).rstrip()
    return hashlib.sha256(text).hexdigest()[:16]


def fast_path_problem() -> str | None:
    """Why the fast path must not run on this pynetdicom, or None when it may."""
    version = getattr(pynetdicom, "__version__", "?")
    if version != VERIFIED_PYNETDICOM:
        return f"pynetdicom {version} is installed, the fast path is verified with {VERIFIED_PYNETDICOM}"
    files: dict[str, list[bytes]] = {}
    for name, digest in _VERIFIED_SOURCES.items():
        try:
            found = source_digest(_resolve(name), files)
        except (ImportError, AttributeError, OSError, ValueError) as e:
            return f"{name}: source not readable ({e})"
        if found != digest:
            return f"{name} is not the code the fast path was verified with"
    return None


def choose_mode(environ=os.environ) -> Mode:
    """The mode for this run, said once in the log."""
    if environ.get(STOCK_ENV, "") not in ("", "0"):
        log.info("DICOM: stock pynetdicom for accepted associations (%s=%s)", STOCK_ENV,
                 environ[STOCK_ENV])
        return Mode.STOCK
    problem = fast_path_problem()
    if problem is not None:
        log.warning("DICOM: fast path off, running stock pynetdicom: %s", problem)
        return Mode.STOCK
    return Mode.FAST


def configure_pynetdicom(*, unrestricted_storage: bool) -> None:
    """Set pynetdicom's documented configuration (its ``_config`` module: global
    to the process by pynetdicom's design), the same in both modes."""
    # Received C-STORE data sets stream to a file rather than to memory (the
    # store contract: memory does not grow with object size); see receive.py.
    _config.STORE_RECV_CHUNKED_DATASET = True
    # Orthanc's UnknownSopClassAccepted: take any SOP class proposed for
    # storage, private ones included, not only those pynetdicom knows.
    _config.UNRESTRICTED_STORAGE_SERVICE = unrestricted_storage
    # pynetdicom pretty-prints every C-FIND identifier for a debug log we
    # do not keep: about a tenth of a worklist query's time.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # Its "standard" handlers build an event and log lines for every PDU
    # and message, at levels below the WARNING we keep for pynetdicom
    # (appliance.logs): a tenth of a received image's CPU time.
    _config.LOG_HANDLER_LEVEL = "none"


def start_server(ae, address: tuple[str, int], *, contexts: list, evt_handlers: list,
                 mode: Mode, files: ReceivedFiles) -> ThreadedAssociationServer:
    """Bind ``address`` and serve ``contexts`` (pynetdicom PresentationContexts) in
    pynetdicom's threads, in ``mode``."""
    if mode is Mode.STOCK:
        return ae.start_server(address, block=False, evt_handlers=evt_handlers,
                               contexts=contexts)
    server = ae.make_server(
        address, contexts=contexts, evt_handlers=evt_handlers,
        server_class=ThreadedAssociationServer,
        request_handler=functools.partial(AcceptorRequestHandler,
                                          fast=FastPath(files, contexts)))
    # What AE.start_server(block=False) does with the server it makes (ae.py).
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
