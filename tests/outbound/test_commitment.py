"""Storage Commitment Push Model SCP (issue 13, PS3.4 J) with a pynetdicom
"scanner": N-ACTION to the daemon, N-EVENT-REPORT back on a new association."""

from __future__ import annotations

import json
import signal
import threading

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from tests.outbound.conftest import SC, free_port, make_instances
from tests.support import scu_store, wait_for

WELL_KNOWN = "1.2.840.10008.1.20.1.1"


class Scanner:
    """The scanner's side: requests commitment, listens for the report."""

    def __init__(self, aet: str = "US01") -> None:
        self.aet = aet
        self.port = free_port()
        self.reports: list[tuple[int, Dataset]] = []
        self._got = threading.Condition()
        self._server = None

    def listen(self) -> "Scanner":
        ae = AE(ae_title=self.aet)
        # The scanner accepts the daemon's SCP role for the report (PS3.7 D.3.3.4).
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)

        def on_report(event):
            with self._got:
                self.reports.append((event.event_type, event.event_information))
                self._got.notify_all()
            return 0x0000, None
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def modality(self, **options) -> dict:
        return {"US01": {"AET": self.aet, "Host": "127.0.0.1", "Port": self.port, **options}}

    def request(self, daemon, references: list[tuple[str, str]]) -> tuple[int, str]:
        """N-ACTION Request Storage Commitment; (status, Transaction UID)."""
        ae = AE(ae_title=self.aet)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", daemon.dicom_port, ae_title="ORTHANC")
        assert assoc.is_established
        ds = Dataset()
        ds.TransactionUID = generate_uid()
        ds.ReferencedSOPSequence = []
        for sop_class, sop_uid in references:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_uid
            ds.ReferencedSOPSequence.append(item)
        try:
            status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN)
        finally:
            assoc.release()
        return status.Status, ds.TransactionUID

    def report(self, n: int = 1, timeout: float = 20) -> tuple[int, Dataset]:
        with self._got:
            assert self._got.wait_for(lambda: len(self.reports) >= n, timeout), "no report"
            return self.reports[n - 1]


@pytest.fixture
def scanner():
    s = Scanner()
    yield s
    s.stop()


def _refs(paths, sop_class="1.2.840.10008.5.1.4.1.1.6.1"):
    return [(sop_class, p.stem) for p in paths]


def _listed(seq, reasons: bool = False):
    return sorted((i.ReferencedSOPInstanceUID, int(i.FailureReason)) if reasons
                  else i.ReferencedSOPInstanceUID for i in seq)


@pytest.mark.parametrize("mode", ["fast", "stock"])
def test_commitment_reports_present_missing_altered_and_conflicting(make_daemon, scanner,
                                                                    tmp_path, mode):
    scanner.listen()
    d = make_daemon(DicomModalities=scanner.modality(),
                    env={"PACS_APPLIANCE_STOCK_PYNETDICOM": "1" if mode == "stock" else ""})
    files = make_instances(tmp_path / "a", 4)
    assert scu_store(d.dicom_port, files, aet="US01") == [0] * 4

    status, txn = scanner.request(d, _refs(files[:3]))
    assert status == 0x0000
    event_type, info = scanner.report(1)
    assert event_type == 1 and info.TransactionUID == txn
    assert _listed(info.ReferencedSOPSequence) == sorted(p.stem for p in files[:3])
    assert "FailedSOPSequence" not in info

    # One file altered on disk (same size), one instance never stored, one with
    # the wrong SOP class.
    stored = d.stored_path(files[1].stem)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    missing = generate_uid()
    refs = _refs([files[0], files[1]]) + [(SC, files[2].stem), (SC, missing)]
    status, txn = scanner.request(d, refs)
    assert status == 0x0000
    event_type, info = scanner.report(2)
    assert event_type == 2 and info.TransactionUID == txn
    assert _listed(info.ReferencedSOPSequence) == [files[0].stem]
    assert _listed(info.FailedSOPSequence, reasons=True) == sorted(
        [(files[1].stem, 0x0110), (files[2].stem, 0x0119), (missing, 0x0112)])


def test_report_survives_sigkill_and_waits_for_the_scanner(make_daemon, scanner, tmp_path):
    d = make_daemon(DicomModalities=scanner.modality(), Forwarding={"MaxRetrySeconds": 1})
    files = make_instances(tmp_path / "a", 2)
    assert scu_store(d.dicom_port, files, aet="US01") == [0, 0]
    status, txn = scanner.request(d, _refs(files))  # the scanner is not listening yet
    assert status == 0x0000
    wait_for(lambda: "storage commitment report not delivered" in d.log(), 10, "a failed attempt")
    d.kill()  # between the N-ACTION-RSP and the report
    d.start()
    scanner.listen()
    event_type, info = scanner.report(1)
    assert event_type == 1 and info.TransactionUID == txn
    assert _listed(info.ReferencedSOPSequence) == sorted(p.stem for p in files)


def test_commitment_refused_without_permission(make_daemon, scanner, tmp_path):
    d = make_daemon(DicomModalities=scanner.modality(AllowStorageCommitment=False))
    status, _ = scanner.request(d, [])
    assert status == 0x0124
    assert "storage commitment from US01 refused" in d.log()
    # DicomAlwaysAllowStorageCommitment overrides the modality's flag (SIGHUP reloads it).
    d.config["DicomAlwaysAllowStorageCommitment"] = True
    d.config_path.write_text(json.dumps(d.config))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "DICOM access rules and worklist options reloaded" in d.log(), 10, "reload")
    status, _ = scanner.request(d, [])
    assert status == 0x0000
