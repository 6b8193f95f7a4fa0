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
from pynetdicom import AE, _config, evt
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


def test_contexts_copied_for_each_association_share_their_uids():
    ae = AE()
    for sop_class in ("1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.6.1"):
        ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    contexts = ae.supported_contexts
    copies = tuning.FastPath(ReceivedFiles(None), contexts).copy_contexts(contexts)
    for original, copy in zip(contexts, copies, strict=True):
        assert copy is not original and copy.transfer_syntax is not original.transfer_syntax
        assert str(copy) == str(original)
        assert copy.abstract_syntax is original.abstract_syntax
        assert all(a is b for a, b in zip(copy.transfer_syntax, original.transfer_syntax))
        copy.context_id = 7  # what negotiation does to the association's copy
        assert original.context_id is None


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
