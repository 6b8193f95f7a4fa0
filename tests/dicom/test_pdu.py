"""The DICOM server at the PDU level: a raw socket speaking PS3.8 to the real daemon.

On its fast path the server reads P-DATA-TF PDUs on a short path of its own
(appliance.dicom.tuning); these tests, run on the fast path and on stock
pynetdicom (tests/dicom/conftest.py), send what stock clients never do: a PDU
trickled a few bytes at a time, several PDVs in one PDU, a PDV that overruns its
PDU, a connection cut in the middle of a PDU. Messages are encoded with
pynetdicom's DIMSE encoder.
"""

from __future__ import annotations

import socket
import struct
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode

from tests.dicom.test_scp import SC_IMAGE, echo, minimal_sc
from tests.support import encode

VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
ECHO_CX, STORE_CX = 1, 3
MAX_PDU = 16384


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid_item(kind: int, uid: str) -> bytes:
    return _item(kind, uid.encode("ascii"))


def associate_rq(called: str = "ORTHANC", calling: str = "RAWSCU") -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2): Verification (ctx 1, implicit VR) and
    Secondary Capture storage (ctx 3, explicit VR)."""
    def context(cx_id: int, abstract: str, ts: str) -> bytes:
        return _item(0x20, bytes([cx_id, 0, 0, 0]) + _uid_item(0x30, abstract) + _uid_item(0x40, ts))

    user = _item(0x50, _item(0x51, struct.pack(">L", MAX_PDU)))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
            + bytes(32) + _uid_item(0x10, APPLICATION_CONTEXT)
            + context(ECHO_CX, VERIFICATION, ImplicitVRLittleEndian)
            + context(STORE_CX, SC_IMAGE, ExplicitVRLittleEndian) + user)
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def p_data_tf(pdvs: list[tuple[int, bytes]]) -> bytes:
    """One P-DATA-TF PDU holding ``pdvs`` [(context ID, control header + fragment)]."""
    body = b"".join(struct.pack(">LB", len(data) + 1, cx) + data for cx, data in pdvs)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


def message_pdvs(msg, cx_id: int) -> list[tuple[int, bytes]]:
    """The PDVs pynetdicom encodes a DIMSE message into."""
    return [(p[0], p[1]) for primitive in msg.encode_msg(cx_id, MAX_PDU)
            for p in primitive.presentation_data_value_list]


def echo_pdvs(message_id: int = 1) -> list[tuple[int, bytes]]:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = VERIFICATION
    msg = C_ECHO_RQ()
    msg.primitive_to_message(primitive)
    return message_pdvs(msg, ECHO_CX)


def store_pdvs(ds, message_id: int = 2) -> list[tuple[int, bytes]]:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 0
    primitive.DataSet = BytesIO(encode(ds))
    msg = C_STORE_RQ()
    msg.primitive_to_message(primitive)
    return message_pdvs(msg, STORE_CX)


class RawAssociation:
    """An association driven byte by byte over a plain socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(associate_rq())
        kind, _ = self.read_pdu()
        assert kind == 0x02, f"association not accepted (PDU type {kind:#x})"

    def read_pdu(self) -> tuple[int, bytes]:
        """(PDU type, body); (0, b"") when the server closed the connection."""
        head = self._exactly(6)
        if len(head) < 6:
            return 0, b""
        kind, _, length = struct.unpack(">BBL", head)
        return kind, self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def response_status(self) -> int:
        """Status of the next DIMSE response (its command set only)."""
        command = b""
        while True:
            kind, body = self.read_pdu()
            assert kind == 0x04, f"expected P-DATA-TF, got PDU type {kind:#x}"
            pos = 0
            while pos < len(body):
                length, _cx, control = struct.unpack(">LBB", body[pos:pos + 6])
                command += body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if control & 0b11 == 0b11:  # last fragment of a command
                    return int(decode(BytesIO(command), True, True).Status)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(daemon):
    associations: list[RawAssociation] = []

    def connect() -> RawAssociation:
        associations.append(RawAssociation(daemon.dicom_port))
        return associations[-1]

    yield connect
    for a in associations:
        a.close()


def test_pdu_trickled_a_few_bytes_at_a_time(raw):
    assoc = raw()
    pdu = p_data_tf(echo_pdvs())
    for i in range(0, len(pdu), 5):
        assoc.sock.sendall(pdu[i:i + 5])
        time.sleep(0.002)
    assert assoc.response_status() == 0x0000


def test_command_and_dataset_in_one_pdu(raw, daemon):
    ds = minimal_sc()
    assoc = raw()
    assoc.sock.sendall(p_data_tf(store_pdvs(ds)))  # every PDV of the message in one PDU
    assert assoc.response_status() == 0x0000
    stored = daemon.stored_path(ds.SOPInstanceUID)
    assert stored is not None and stored.read_bytes().endswith(encode(ds))


def test_one_pdv_per_pdu_and_several_messages(raw, daemon):
    assoc = raw()
    datasets = [minimal_sc() for _ in range(3)]
    for n, ds in enumerate(datasets):
        for pdv in store_pdvs(ds, message_id=n + 1):
            assoc.sock.sendall(p_data_tf([pdv]))
        assert assoc.response_status() == 0x0000
    assert all(daemon.stored_path(ds.SOPInstanceUID) for ds in datasets)


def test_release_request_right_behind_the_last_p_data(raw):
    """A-RELEASE-RQ in the same segment as a request: both are answered, in order."""
    assoc = raw()
    release_rq = struct.pack(">BBL", 0x05, 0, 4) + bytes(4)
    assoc.sock.sendall(p_data_tf(echo_pdvs()) + release_rq)
    assert assoc.response_status() == 0x0000
    kind, _ = assoc.read_pdu()
    assert kind == 0x06  # A-RELEASE-RP


def test_several_requests_in_one_segment(raw, daemon):
    datasets = [minimal_sc() for _ in range(3)]
    assoc = raw()
    assoc.sock.sendall(b"".join(p_data_tf(store_pdvs(ds, message_id=n + 1))
                                for n, ds in enumerate(datasets)))
    assert [assoc.response_status() for _ in datasets] == [0x0000] * 3
    assert all(daemon.stored_path(ds.SOPInstanceUID) for ds in datasets)


def test_pdv_overrunning_its_pdu_aborts_that_association_only(raw, daemon):
    assoc = raw()
    pdu = bytearray(p_data_tf(echo_pdvs()))
    pdu[6:10] = struct.pack(">L", len(pdu))  # the PDV claims more than the PDU holds
    assoc.sock.sendall(bytes(pdu))
    kind, _ = assoc.read_pdu()
    assert kind in (0x07, 0)  # A-ABORT, or the connection closed
    assert echo(daemon.dicom_port).returncode == 0
    other = raw()
    other.sock.sendall(p_data_tf(echo_pdvs()))
    assert other.response_status() == 0x0000


def test_connection_cut_in_the_middle_of_a_pdu_leaves_nothing(raw, daemon):
    ds = minimal_sc()
    ds.PixelData = bytes(200_000)  # several PDUs
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 400, 500, 8, 1
    pdvs = store_pdvs(ds)
    assoc = raw()
    for pdv in pdvs[:-1]:
        assoc.sock.sendall(p_data_tf([pdv]))
    last = p_data_tf(pdvs[-1:])
    assoc.sock.sendall(last[: len(last) // 2])
    assoc.close()
    # Stock pynetdicom receives into a file of its own, in the daemon's TMPDIR.
    tmp = Path((daemon.env or {}).get("TMPDIR") or daemon.root / "no-such-folder")

    def leftovers() -> list[Path]:
        return daemon.incoming_files() + (sorted(tmp.iterdir()) if tmp.is_dir() else [])

    deadline = time.monotonic() + 10
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers() == []
    assert daemon.stored_path(ds.SOPInstanceUID) is None
    assert echo(daemon.dicom_port).returncode == 0
    whole = raw()
    for pdv in store_pdvs(ds, message_id=7):
        whole.sock.sendall(p_data_tf([pdv]))
    assert whole.response_status() == 0x0000
    assert daemon.stored_path(ds.SOPInstanceUID) is not None

