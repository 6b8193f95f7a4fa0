"""The pynetdicom seam (appliance.dicom.transport): the start-up check, the switch to
stock pynetdicom, and that the fast path is confined to the associations a server
accepts: nothing of pynetdicom or pydicom is changed process-wide, and an association
the same process requests, while it accepts others on the fast path, is stock."""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
import tomllib

import pynetdicom
import pytest
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification
from pynetdicom.status import Status

from appliance.config import Modality
from appliance.dicom import transport, tuning
from appliance.dicom.receive import ReceivedFiles
from appliance.dicom.scu import Outbound
from tests.support import REPO

STOCK_CLASSES = (Association, DULServiceProvider, DIMSEServiceProvider)
FAST_CLASSES = (tuning.FastAssociation, tuning.FastDUL, tuning.FastDimse)


def test_pinned_installed_and_verified_are_one_version():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"pynetdicom=={transport.VERIFIED_PYNETDICOM}" in dependencies
    assert pynetdicom.__version__ == transport.VERIFIED_PYNETDICOM
    assert transport.fast_path_problem() is None


def test_fast_path_by_default_and_silently(caplog):
    with caplog.at_level(logging.DEBUG, logger="appliance.dicom.transport"):
        assert transport.choose_mode({}) is transport.Mode.FAST
        assert transport.choose_mode({transport.STOCK_ENV: "0"}) is transport.Mode.FAST
    assert caplog.records == []


def test_stock_when_the_environment_asks(caplog):
    with caplog.at_level(logging.DEBUG, logger="appliance.dicom.transport"):
        assert transport.choose_mode({transport.STOCK_ENV: "1"}) is transport.Mode.STOCK
    assert [r.levelno for r in caplog.records] == [logging.INFO]


@pytest.mark.parametrize("change", ["source", "version"])
def test_unverified_pynetdicom_runs_stock_with_one_warning(monkeypatch, caplog, change):
    if change == "source":  # as if pynetdicom's reactor loop were not the one verified
        monkeypatch.setitem(transport._VERIFIED_SOURCES,
                            "pynetdicom.dul.DULServiceProvider.run_reactor", "0" * 16)
    else:
        monkeypatch.setattr(pynetdicom, "__version__", "3.0.5")
    with caplog.at_level(logging.DEBUG, logger="appliance.dicom.transport"):
        assert transport.choose_mode({}) is transport.Mode.STOCK
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert ("run_reactor" if change == "source" else "3.0.5") in caplog.records[0].getMessage()


def test_every_verified_function_exists_and_is_read_whole():
    for name in transport._VERIFIED_SOURCES:
        func = transport._resolve(name)
        # The digest covers the whole function as inspect reads it (signature and body).
        source = inspect.getsource(func).rstrip()
        assert transport.source_digest(func) == hashlib.sha256(source.encode()).hexdigest()[:16], name


def _context_state(contexts) -> list[tuple]:
    return [(cx.context_id, cx.abstract_syntax, tuple(cx.transfer_syntax), cx.scu_role,
             cx.scp_role, cx.result, cx._as_scu, cx._as_scp) for cx in contexts]


@pytest.mark.parametrize("unrestricted", [False, True])
def test_associations_share_the_servers_contexts_and_leave_them_unchanged(monkeypatch,
                                                                         unrestricted):
    """The fast path hands every accepted association the server's own supported
    contexts (no per-association deep copy): real negotiations, with SCP/SCU role
    selection as getscu proposes it and with Orthanc's UnknownSopClassAccepted,
    must leave them exactly as they were, and each association gets its own
    accepted contexts."""
    monkeypatch.setattr(_config, "UNRESTRICTED_STORAGE_SERVICE", unrestricted)
    us_image = "1.2.840.10008.5.1.4.1.1.6.1"
    ae = AE(ae_title="SEAMSCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(us_image, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
                             scu_role=True, scp_role=True)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    contexts = ae.supported_contexts
    before = _context_state(contexts)
    accepted = []
    server = transport.start_server(
        ae, ("127.0.0.1", 0), contexts=contexts, mode=transport.Mode.FAST,
        files=ReceivedFiles(None), evt_handlers=[(evt.EVT_ESTABLISHED,
                       lambda event: accepted.append((event.assoc.acceptor.supported_contexts,
                                                      event.assoc.accepted_contexts)))])
    try:
        requestor = AE(ae_title="SEAMSCU")
        requestor.add_requested_context(Verification)
        requestor.add_requested_context(us_image, ["1.2.840.10008.1.2"])
        requestor.add_requested_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2"])
        role = build_role(us_image, scp_role=True, scu_role=True)
        for _ in range(2):
            assoc = requestor.associate("127.0.0.1", server.server_address[1],
                                        ae_title="SEAMSCP", ext_neg=[role])
            assert assoc.is_established
            assert assoc.send_c_echo().Status == Status.SUCCESS
            assoc.release()
    finally:
        server.shutdown()
    assert _context_state(contexts) == before
    (supported1, accepted1), (supported2, accepted2) = accepted
    assert supported1 is not supported2
    assert all(a is b for a, b in zip(supported1, contexts, strict=True))
    assert {cx.abstract_syntax for cx in accepted1} >= {Verification, us_image}
    assert not {id(cx) for cx in accepted1} & {id(cx) for cx in [*contexts, *accepted2]}


def _snapshot() -> dict[tuple, object]:
    """Every attribute of every loaded pynetdicom and pydicom module, and of the
    classes they define: what a module-level patch would change (but for the
    ``__slotnames__`` that copy/pickle cache on a class they copied)."""
    snap: dict[tuple, object] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("pynetdicom", "pydicom")):
            continue
        for key, value in list(vars(module).items()):
            snap[(name, key)] = value
            if inspect.isclass(value) and value.__module__ == name:
                for attr, member in list(vars(value).items()):
                    if attr != "__slotnames__":
                        snap[(name, key, attr)] = member
    return snap


@pytest.mark.parametrize("mode", list(transport.Mode))
def test_accepted_associations_alone_run_the_fast_path(mode, monkeypatch):
    """A server in ``mode`` accepts; the same process requests associations to it,
    with its own pynetdicom AE and through appliance.dicom.scu, while one it accepted
    is open. Those it requests are stock; those it accepts run ``mode``; nothing
    process-wide differs from before the server started."""
    for name in ("STORE_RECV_CHUNKED_DATASET", "UNRESTRICTED_STORAGE_SERVICE",
                 "LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS", "LOG_HANDLER_LEVEL"):
        monkeypatch.setattr(_config, name, getattr(_config, name))  # back as they were after
    transport.configure_pynetdicom(unrestricted_storage=False)
    before = _snapshot()
    accepted: list[tuple[type, ...]] = []

    def on_established(event) -> None:
        accepted.append((type(event.assoc), type(event.assoc.dul), type(event.assoc.dimse)))

    ae = AE(ae_title="SEAMSCP")
    ae.add_supported_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    server = transport.start_server(ae, ("127.0.0.1", 0), contexts=ae.supported_contexts,
                                    mode=mode, files=ReceivedFiles(None),
                                    evt_handlers=[(evt.EVT_ESTABLISHED, on_established)])
    port = server.server_address[1]
    try:
        requestor = AE(ae_title="SEAMSCU")
        requestor.add_requested_context(Verification)
        assoc = requestor.associate("127.0.0.1", port, ae_title="SEAMSCP")
        assert assoc.is_established
        try:
            assert (type(assoc), type(assoc.dul), type(assoc.dimse)) == STOCK_CLASSES
            assert assoc.send_c_echo().Status == Status.SUCCESS
            echo_to_self = Modality(name="self", aet="SEAMSCP", host="127.0.0.1", port=port)
            assert Outbound(aet="SEAMSCU", timeout=10).echo(echo_to_self)
        finally:
            assoc.release()
    finally:
        server.shutdown()
    expected = FAST_CLASSES if mode is transport.Mode.FAST else STOCK_CLASSES
    assert accepted == [expected, expected]
    after = _snapshot()
    modules = {key[0] for key in before}
    changed = sorted(str(key) for key, value in after.items()
                     if key[0] in modules and (key not in before or before[key] is not value))
    assert changed == []
