"""The sender's direct writes (appliance.dicom.streaming) put on the wire what
pynetdicom's own C-STORE puts there, whatever the peer's maximum PDU length,
and never lose a response however fast requests follow each other.

The sender runs in this process against real peers over real sockets: a
pynetdicom storage SCP that keeps every request's command and data set bytes,
and DCMTK's storescp."""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage,
)

from appliance.dicom.sender import Destination, Outgoing, SendResult, StoreSender, needs_of
from appliance.dicom.streaming import DirectStoreWrites
from tests.support import dataset_bytes, pydicom_file, wait_for
from tests.synthetic import generate_cine


def _copies(source: Path, folder: Path, count: int) -> list[Outgoing]:
    """``count`` copies of a Part 10 file, each with its own SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    ds = dcmread(source)
    for i in range(count):
        uid = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        items.append(Outgoing(path, str(ds.SOPClassUID), uid,
                              str(ds.file_meta.TransferSyntaxUID), path.stat().st_size))
    return items


class _KeepingScp:
    """A pynetdicom storage SCP keeping each request's command and data set bytes."""

    def __init__(self, max_pdu: int) -> None:
        self.received: list[tuple[object, bytes]] = []
        self.ae = AE(ae_title="KEEPER")
        self.ae.maximum_pdu_size = max_pdu
        for sop_class in (CTImageStorage, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage):
            self.ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 20
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event) -> int:
        self.received.append((event.request, event.request.DataSet.getvalue()))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def keeper(request):
    scp = _KeepingScp(request.param)
    yield scp
    scp.close()


def _send(port: int, items: list[Outgoing], *, direct: bool, aet: str = "KEEPER",
          originator: tuple[str, int] | None = None) -> list:
    dest = Destination("127.0.0.1", port, aet, "SENDER", timeout=20)
    with StoreSender(dest, needs_of(items), direct=direct) as sender:
        assert sender.is_established, sender.error
        return [sender.send(i, move_originator=originator) for i in items]


@pytest.mark.parametrize("keeper", [4096, 16384, 0], indirect=True,
                         ids=["pdu4k", "pdu16k", "unlimited"])
def test_direct_writes_deliver_what_pynetdicom_delivers(keeper, tmp_path):
    """Both ways, the peer receives every data set byte for byte as stored, with
    the same command elements (Move Originator included), whatever its maximum
    PDU length (0: unlimited, PS3.8 D.1)."""
    items = _copies(Path(pydicom_file("CT_small.dcm")), tmp_path / "ct", 3)
    items += _copies(generate_cine(tmp_path / "cine.dcm", frames=8), tmp_path / "cine", 1)
    got = {}
    for direct in (False, True):
        keeper.received.clear()
        outcomes = _send(keeper.port, items, direct=direct, originator=("MOVER", 7))
        assert [o.result for o in outcomes] == [SendResult.SUCCESS] * len(items)
        assert [o.sent_bytes for o in outcomes] == [i.size for i in items]
        got[direct] = keeper.received[:]
    for (stock_rq, stock_data), (direct_rq, direct_data), item in zip(got[False], got[True], items):
        assert direct_data == stock_data == dataset_bytes(item.path)
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
                        "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"):
            assert getattr(direct_rq, keyword) == getattr(stock_rq, keyword), keyword
        assert direct_rq.AffectedSOPInstanceUID == item.sop_instance_uid
        assert direct_rq.MoveOriginatorMessageID == 7


@pytest.fixture
def storescp(tmp_path):
    """DCMTK storescp discarding what it receives, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["storescp", "--ignore", "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as c:
            return c.connect_ex(("127.0.0.1", port)) == 0
    wait_for(listening, 10, "storescp listening")
    yield port
    proc.terminate()
    proc.wait(10)


def test_back_to_back_requests_never_lose_a_response(storescp, tmp_path):
    """Small objects, one right after the other, over one association: every one
    answered. Written directly, a response can come back before pynetdicom's
    association reactor has paused, which then took it off the queue once in a
    few hundred (the request waited until its DIMSE timeout)."""
    items = _copies(Path(pydicom_file("CT_small.dcm")), tmp_path / "ct", 600)
    outcomes = _send(storescp, items, direct=True, aet="STORESCP")
    assert [o.result for o in outcomes] == [SendResult.SUCCESS] * len(items)


def test_a_look_the_reader_began_before_the_hold_ends_before_the_request(storescp, tmp_path):
    """pynetdicom's reader thread may have begun a look at the socket before the
    direct writes held it off (descheduled between taking its method and its
    select); resumed once the response has landed, it would take it from under
    the sender (seen against a storescp that had just started). Here it is made
    to do exactly that: its first look waits, then resumes on the response, and
    the sender reads late; the hold must wait for that look to end first."""
    item = _copies(Path(pydicom_file("CT_small.dcm")), tmp_path / "ct", 1)[0]
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(item.sop_class_uid, item.transfer_syntax_uid)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", storescp, ae_title="STORESCP")
    assert assoc.is_established
    dul, sock = assoc.dul, assoc.dul.socket.socket
    stock = dul._is_transport_event
    began, resume = threading.Event(), threading.Event()

    def descheduled_look() -> bool:
        if threading.current_thread() is dul and not began.is_set():
            began.set()
            resume.wait(5)
            select.select([sock], [], [], 1.0)   # back when the response has landed
        return stock()

    dul._is_transport_event = descheduled_look
    assert began.wait(5)
    writes = DirectStoreWrites(assoc)
    read = writes._read_response
    writes._read_response = lambda msg_id: (time.sleep(0.5), read(msg_id))[1]
    threading.Timer(0.2, resume.set).start()
    try:
        response = writes.exchange(item.path, msg_id=1, sop_class_uid=item.sop_class_uid,
                                   sop_instance_uid=item.sop_instance_uid)
    finally:
        if assoc.is_established:
            assoc.release()
    assert response.status == 0x0000, response


def test_an_unreadable_file_fails_alone(storescp, tmp_path):
    """A file gone before it is sent fails that instance; the association goes on."""
    items = _copies(Path(pydicom_file("CT_small.dcm")), tmp_path / "ct", 3)
    items[1].path.unlink()
    outcomes = _send(storescp, items, direct=True, aet="STORESCP")
    assert [o.result for o in outcomes] == [SendResult.SUCCESS, SendResult.UNREADABLE,
                                            SendResult.SUCCESS]


def test_a_peer_that_goes_away_mid_object_ends_in_lost_not_a_hang(tmp_path):
    """The peer closes its connection while a large object is being written: that
    instance and the rest are LOST, at once."""
    cine = generate_cine(tmp_path / "cine.dcm", frames=20)
    items = _copies(cine, tmp_path / "cines", 2)
    scp = _KeepingScp(16384)
    closed = threading.Event()

    def close_mid_way(event) -> None:
        # The first P-DATA-TF of the data set: drop the connection under the writer.
        if event.pdu.__class__.__name__ == "P_DATA_TF" and not closed.is_set():
            closed.set()
            event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    scp.server.bind(evt.EVT_PDU_RECV, close_mid_way)
    try:
        outcomes = _send(scp.port, items, direct=True)
    finally:
        scp.close()
    assert closed.is_set()
    assert [o.result for o in outcomes] == [SendResult.LOST, SendResult.LOST]


class _AnsweringScp(_KeepingScp):
    """A storage SCP whose handler decides each answer: ``answer(n)`` for the n-th
    request gives a status (an int or a Dataset with an Error Comment), or a
    callable run on the event instead (to stall or abort)."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.count = 0
        super().__init__(16384)

    def _on_store(self, event):
        self.count += 1
        reply = self.answer(self.count)
        if callable(reply):
            return reply(event)
        return reply


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment
    return ds


@pytest.mark.parametrize("direct", [False, True], ids=["stock", "direct"])
def test_every_answer_is_read_as_pynetdicom_reads_it(direct, tmp_path):
    """Success, a Warning with its comment, a Failure with its comment: the same
    outcomes both ways, and the association goes on after a refusal."""
    answers = {1: 0x0000, 2: _status(0xB000, "coerced"), 3: _status(0xA700, "disk full"),
               4: 0x0000}
    scp = _AnsweringScp(answers.get)
    items = _copies(Path(pydicom_file("CT_small.dcm")), tmp_path / "ct", 4)
    try:
        outcomes = _send(scp.port, items, direct=direct)
    finally:
        scp.close()
    assert [(o.result, o.status, o.detail) for o in outcomes] == [
        (SendResult.SUCCESS, 0x0000, ""), (SendResult.WARNING, 0xB000, "coerced"),
        (SendResult.FAILED, 0xA700, "disk full"), (SendResult.SUCCESS, 0x0000, "")]


@pytest.mark.parametrize("direct", [False, True], ids=["stock", "direct"])
def test_a_slow_association_outlives_its_network_timeout(direct, tmp_path):
    """Each answer comes within the 1 s timeout, the whole exchange takes longer:
    the network timeout (the reader's idle timer) counts silence, not the
    association's age, whoever reads the responses."""
    def slowly(event):
        time.sleep(0.35)
        return 0x0000
    scp = _AnsweringScp(lambda n: slowly)
    items = _copies(Path(pydicom_file("CT_small.dcm")), tmp_path / "ct", 5)
    dest = Destination("127.0.0.1", scp.port, "KEEPER", "SENDER", timeout=1)
    try:
        with StoreSender(dest, needs_of(items), direct=direct) as sender:
            outcomes = [sender.send(i) for i in items]
    finally:
        scp.close()
    assert [o.result for o in outcomes] == [SendResult.SUCCESS] * len(items)


@pytest.mark.parametrize("direct", [False, True], ids=["stock", "direct"])
@pytest.mark.parametrize("peer", ["silent", "aborting"])
def test_no_answer_is_lost_not_a_hang(peer, direct, tmp_path):
    """A peer that does not answer within the DIMSE timeout, or aborts instead of
    answering: that instance and the rest are LOST within the timeout, and the
    association is over."""
    gone = threading.Event()

    def silent(event):
        gone.wait(5)
        return 0x0000

    def aborting(event):
        event.assoc.abort()
        return 0x0000
    scp = _AnsweringScp(lambda n: silent if peer == "silent" else aborting)
    items = _copies(Path(pydicom_file("CT_small.dcm")), tmp_path / "ct", 2)
    dest = Destination("127.0.0.1", scp.port, "KEEPER", "SENDER", timeout=1)
    started = time.monotonic()
    try:
        with StoreSender(dest, needs_of(items), direct=direct) as sender:
            outcomes = [sender.send(i) for i in items]
            wait_for(lambda: not sender.is_established, 5, "the association over")
    finally:
        gone.set()
        scp.close()
    assert time.monotonic() - started < 4
    assert [o.result for o in outcomes] == [SendResult.LOST, SendResult.LOST]
