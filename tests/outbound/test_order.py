"""Order per study (issue 13): an instance the destination refuses holds back the later
instances of its study, other studies keep flowing, and once the destination takes
it the study arrives complete and in order."""

from __future__ import annotations

import threading

import requests

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from tests.outbound.conftest import cli, free_port, make_instances
from tests.support import scu_store, wait_for

# PS3.4 B.2.3: Error, Data Set does not match SOP Class (a permanent refusal class).
REFUSED = 0xA900


class RefusingScp:
    """A pynetdicom Storage SCP that answers REFUSED for the SOP Instance UIDs in
    ``refuse`` and records, in order, every instance it accepted."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = set(refuse)
        self.accepted: list[str] = []
        self.refusals = 0
        self.port = free_port()
        self._lock = threading.Lock()
        ae = AE(ae_title="ARCH")
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        uid = event.request.AffectedSOPInstanceUID
        with self._lock:
            if uid in self.refuse:
                self.refusals += 1
                return REFUSED
            self.accepted.append(uid)
        return 0x0000

    def accept_all(self) -> None:
        with self._lock:
            self.refuse.clear()

    def stop(self) -> None:
        self._server.shutdown()


def test_a_refused_instance_holds_back_its_study_only(make_daemon, tmp_path):
    one = make_instances(tmp_path / "one", 5)
    two = make_instances(tmp_path / "two", 3)
    refused = one[1].stem
    scp = RefusingScp({refused})
    try:
        d = make_daemon(DicomModalities={"ARCH": ["ARCH", "127.0.0.1", scp.port]},
                        Forwarding={"Rules": [{"Destination": "ARCH", "CallingAets": ["PYSCU"]}],
                                    "MaxRetrySeconds": 1})
        assert scu_store(d.dicom_port, one + two) == [0] * 8

        # The other study goes; of the first, only what precedes the refused instance.
        def attempts() -> int:
            return d.rows("SELECT attempts FROM send_items WHERE sop_instance_uid = ?", (refused,))[0][0]
        wait_for(lambda: attempts() >= 2 and set(scp.accepted) >= {p.stem for p in two}, 30,
                 "the second study delivered and two refused attempts")
        assert [u for u in scp.accepted if u in {p.stem for p in one}] == [one[0].stem]
        (refused_id,), = d.rows("SELECT id FROM send_items WHERE sop_instance_uid = ?", (refused,))
        listing = cli(d, "queue", "list", "--items")
        assert listing.returncode == 0, listing.stderr
        assert "ARCH: 4 pending, 1 failing" in listing.stdout, listing.stdout
        assert "3 held behind a failing instance of their study" in listing.stdout, listing.stdout
        waiting = [line for line in listing.stdout.splitlines() if f"waits for #{refused_id}" in line]
        assert sorted(w.split()[4] for w in waiting) == sorted(p.stem for p in one[2:]), listing.stdout
        assert "status 0xA900" in listing.stdout

        # Held back across a further attempt, then the destination takes it: in order.
        seen = attempts()
        wait_for(lambda: attempts() > seen, 30, "one more refused attempt")
        assert [u for u in scp.accepted if u in {p.stem for p in one}] == [one[0].stem]
        scp.accept_all()
        wait_for(lambda: len(scp.accepted) == 8, 30, "everything delivered")
        assert [u for u in scp.accepted if u in {p.stem for p in one}] == [p.stem for p in one]
        wait_for(lambda: d.rows("SELECT state, count(*) FROM send_items GROUP BY state")
                 == [("sent", 8)], 20, "the queue settled")

        # Our own file unreadable (moved away) holds its study back the same way, until
        # the item is cancelled, which releases the rest of the study.
        three = make_instances(tmp_path / "three", 3)
        assert scu_store(d.dicom_port, three, aet="OTHER") == [0] * 3  # no rule for OTHER
        stored = d.stored_path(three[1].stem)
        stored.rename(stored.with_name("moved-away"))
        r = requests.post(f"http://127.0.0.1:{d.http_port}/modalities/ARCH/store", timeout=10,
                          json={"Resources": [p.stem for p in three]})
        assert r.status_code == 200, r.text
        wait_for(lambda: d.rows("SELECT attempts FROM send_items WHERE sop_instance_uid = ?",
                                (three[1].stem,))[0][0] >= 1, 30, "an unreadable attempt")
        assert scp.accepted[8:] == [three[0].stem]
        (unreadable_id,), = d.rows("SELECT id FROM send_items WHERE sop_instance_uid = ?",
                                   (three[1].stem,))
        done = cli(d, "queue", "cancel", "--item", str(unreadable_id))
        assert done.returncode == 0 and "1 item(s) cancelled" in done.stdout, done.stdout + done.stderr
        wait_for(lambda: scp.accepted[8:] == [three[0].stem, three[2].stem], 30,
                 "the rest of the third study once the unreadable one is cancelled")
        assert d.rows("SELECT state FROM send_items WHERE id = ?", (unreadable_id,)) == [("cancelled",)]
    finally:
        scp.stop()
