"""C-FIND answers built from value bytes encoded once per item (appliance.worklist.encoded)
and sent as ready-made PDUs (appliance.dicom.mwl): byte for byte what the pydicom path
produces, only the requested keys, every character kept, never stale after a file changes,
and intact whatever the transfer syntax, the peer's maximum PDU length or the number of
answers.

The first tests are pure (no daemon); the others query the real daemon over sockets."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import decode, encode

from appliance.dicom.find_answers import _p_data_pdus, pending_command
from appliance.worklist.catalog import WorklistItem
from appliance.worklist.encoded import _leaf, answer_bytes, encode_values
from appliance.worklist.matching import answer, answer_charset, attrs_from_dataset, compile_query
from tests.support import run
from tests.worklist.helpers import (
    MWL_FIND,
    find,
    mwl_query,
    poll,
    start_wl_daemon,
    worklist_dataset,
    write_wl,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PENDING, SUCCESS = 0xFF00, 0x0000
LONG_COMMENT = "comment-" * 1250  # 10,000 characters


def _step(modality: str, station: str, code: str) -> Dataset:
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = "20240105"
    step.ScheduledProcedureStepStartTime = "1015"
    protocol = Dataset()
    protocol.CodeValue = code
    protocol.CodingSchemeDesignator = "99LOCAL"
    protocol.CodeMeaning = f"{modality} protocol"
    step.ScheduledProtocolCodeSequence = [protocol]
    return step


def _two_steps(**kw) -> Dataset:
    ds = worklist_dataset(**kw)
    ds.ScheduledProcedureStepSequence = [_step("US", "US1", "U1"), _step("CT", "CT1", "C1")]
    return ds


def _items() -> list[Dataset]:
    numbers = worklist_dataset(patient_id="N1")
    numbers.PatientWeight = "72.50"  # DS keeps its text
    numbers.add_new(0x00280010, "US", 480)  # a binary VR
    numbers.PatientComments = LONG_COMMENT  # LT, beyond one 4 KiB PDU
    return [
        worklist_dataset(patient_name="Ζαχαρίας^Γιάννης"),
        worklist_dataset(charset="ISO_IR 100", patient_name="Dupré^Hélène"),
        worklist_dataset(charset=None, patient_name="PLAIN^ASCII"),
        worklist_dataset(charset=None, patient_name="Müller^Zoë"),  # read as Latin-1
        worklist_dataset(charset=["ISO 2022 IR 6", "ISO 2022 IR 87"],  # answered in UTF-8
                         patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう"),
        worklist_dataset(charset="ISO_IR 126", patient_name="Διονυσιος"),
        worklist_dataset(station=["AA32", "AA33"], time_=None, study_uid="1.2.3.4"),
        worklist_dataset(with_sps=False),
        _two_steps(),
        numbers,
    ]


def _queries() -> list[Dataset]:
    typical = mwl_query(PatientName="", PatientID="", PatientBirthDate="", PatientSex="",
                        AccessionNumber="", StudyInstanceUID="", RequestedProcedureID="",
                        sps_Modality="US", sps_ScheduledStationAETitle="",
                        sps_ScheduledProcedureStepStartDate="20240105",
                        sps_ScheduledProcedureStepStartTime="")
    whole = mwl_query(PatientID="", sps=False)
    whole.ScheduledProcedureStepSequence = []  # universal: the whole sequence
    absent = mwl_query(PatientID="", AdmissionID="", PatientWeight="", Rows=None,
                       PatientComments="", OtherPatientIDsSequence=[], sps_Modality="",
                       sps_ScheduledProcedureStepLocation="")
    nested = mwl_query(PatientID="", sps_Modality="CT", sps_ScheduledProtocolCodeSequence=[])
    code = Dataset()
    code.CodeValue = ""
    code.CodeMeaning = ""
    nested_keys = mwl_query(PatientName="", sps_ScheduledProtocolCodeSequence=[code])
    return [typical, whole, absent, nested, nested_keys]


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_assembled_answers_are_the_pydicom_encoding_byte_for_byte(implicit):
    compared = 0
    for query_ds in _queries():
        query = compile_query(attrs_from_dataset(query_ds))
        for item_ds in _items():
            attrs = attrs_from_dataset(item_ds)
            if not query.matches(attrs):
                continue
            charset = answer_charset(attrs)
            expected = encode(answer(query, attrs, charset), implicit, True)
            assert answer_bytes(query, attrs, encode_values(attrs, charset), charset,
                                implicit) == expected
            compared += 1
    assert compared >= 25  # the corpus really exercises every query


def _leaves(attrs):
    for tag, (vr, values, _) in attrs.items():
        if vr == "SQ":
            for item in values:
                yield from _leaves(item)
        else:
            yield tag, vr, values


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", "ISO_IR 126",
                                     "ISO_IR 144", "GB18030"])
def test_every_value_is_encoded_as_pydicom_writes_it(charset):
    # The encoder writes text itself (join, encode, pad): it must give pydicom's bytes for
    # every value of the corpus, odd lengths, empty values and multiple values included.
    from pydicom.charset import convert_encodings

    extra = worklist_dataset(charset=charset or None, patient_name="ODD^NAME^X")
    extra.OtherPatientIDs = ["A", "", "BC"]
    extra.AdmittingDiagnosesDescription = ["one", "two "]
    extra.PatientComments = "  leading kept\\back slash"
    extra.StudyInstanceUID = "1.2.3"  # odd: padded with a NUL
    extra.AdditionalPatientHistory = ""
    extra.PatientAge = "042Y"
    items = [attrs_from_dataset(ds) for ds in [*_items(), extra]]
    encodings = convert_encodings(charset or "ISO_IR 6")
    compared = 0
    for attrs in items:
        if charset is None:
            charset_used = answer_charset(attrs)
        else:
            charset_used = charset
            try:
                for _, vr, values in _leaves(attrs):
                    for v in values:
                        if isinstance(v, str) and vr in ("LO", "PN", "SH", "LT", "ST", "UT"):
                            v.encode(encodings[0])
            except (UnicodeEncodeError, LookupError):
                continue  # never an answer charset for this item
        encodings = convert_encodings(charset_used or "ISO_IR 6")
        values = encode_values(attrs, charset_used)

        def walk(attrs, values):
            nonlocal compared
            for tag, (vr, vals, _) in attrs.items():
                if vr == "SQ":
                    for item, item_values in zip(vals, values[tag]):
                        walk(item, item_values)
                elif values[tag] is not None:
                    assert values[tag] == _leaf(tag, vr, vals, encodings, True)[8:], (tag, vals)
                    compared += 1
        walk(attrs, values)
    assert compared >= 40


def test_assembled_answer_holds_exactly_the_requested_keys():
    query_ds = mwl_query(PatientName="", PatientID="", sps_Modality="US",
                         sps_ScheduledStationAETitle="")
    query = compile_query(attrs_from_dataset(query_ds))
    attrs = attrs_from_dataset(_two_steps(patient_name="Ζαχαρίας^Γιάννης"))
    charset = answer_charset(attrs)
    data = answer_bytes(query, attrs, encode_values(attrs, charset), charset, False)
    ds = decode(BytesIO(data), False, True)
    assert {e.keyword for e in ds} == {"SpecificCharacterSet", "PatientName", "PatientID",
                                       "ScheduledProcedureStepSequence"}
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.PatientName == "Ζαχαρίας^Γιάννης"
    [step] = ds.ScheduledProcedureStepSequence  # only the US step matches
    assert {e.keyword for e in step} == {"Modality", "ScheduledStationAETitle"}
    assert (step.Modality, step.ScheduledStationAETitle) == ("US", "US1")


def test_ambiguous_vr_is_left_to_the_pydicom_path():
    # A query sent in Implicit VR is decoded with the dictionary's VR, here "US or SS":
    # pydicom resolves it from the rest of the dataset, so the answer is not assembled.
    query_attrs = attrs_from_dataset(mwl_query(PatientID=""))
    query_attrs[0x00280106] = ("US or SS", (), ())  # Smallest Image Pixel Value
    query = compile_query(query_attrs)
    attrs = attrs_from_dataset(worklist_dataset())
    assert answer_bytes(query, attrs, encode_values(attrs, "ISO_IR 192"), "ISO_IR 192",
                        True) is None
    # an item read with such a VR (an implicit VR file) is answered when not asked for it
    attrs[0x00280106] = ("US or SS", (7,), ())
    values = encode_values(attrs, "ISO_IR 192")
    assert values[0x00280106] is None
    plain = compile_query(attrs_from_dataset(mwl_query(PatientID="")))
    assert answer_bytes(plain, attrs, values, "ISO_IR 192", True) is not None


@pytest.mark.parametrize("message_id", [1, 7, 0xFFFF])
def test_pending_command_is_what_pynetdicom_encodes(message_id):
    rsp = C_FIND()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = MWL_FIND
    rsp.Status = PENDING
    rsp.Identifier = BytesIO(b"\0\0")
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    assert pending_command(message_id, MWL_FIND) == encode(message.command_set, True, True)


def test_items_are_packed_once_and_unpacked_as_new_objects():
    attrs = attrs_from_dataset(worklist_dataset(charset="ISO_IR 100", patient_name="Dupré"))
    item = WorklistItem.of("a.wl", attrs, signature=(1, 2, 3))
    assert item.charset == "ISO_IR 100" and item.signature == (1, 2, 3)
    unpacked, values = item.unpack()
    assert unpacked == attrs and values == encode_values(attrs, "ISO_IR 100")
    assert item.unpack()[0] is not unpacked  # a query can never change a served item
    assert values[0x00100010] == "Dupré ".encode("latin-1")  # in the answer charset


@pytest.mark.parametrize(("max_pdu", "size"), [(0, 100), (4096, 9000), (16384, 16378),
                                               (16384, 16379)])
def test_direct_pdus_are_what_the_dul_would_send(max_pdu, size):
    # find_answers._p_data_pdus writes to the socket what tuning.send_message has the DUL send.
    from pynetdicom.pdu import P_DATA_TF

    from appliance.dicom import tuning

    class Dul:
        def __init__(self):
            self.sent = []

        def send_pdu(self, primitive):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            self.sent.append(pdu.encode())

    command, data = pending_command(9, MWL_FIND), bytes(range(256)) * (size // 256 + 1)
    dul = Dul()
    tuning.send_message(dul, 3, max_pdu, command, data[:size])
    assert _p_data_pdus(3, max_pdu, command, data[:size]) == b"".join(dul.sent)


# --------------------------------------------------------------------------- the daemon


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    """A daemon serving a worklist folder (each test uses its own accession numbers)."""
    d = start_wl_daemon(tmp_path_factory.mktemp("answers"))
    d.folder = d.root / "worklists"
    yield d
    d.stop()


def _names(port: int, accession: str, **kw) -> list[tuple[str, str]]:
    statuses, answers = find(port, mwl_query(AccessionNumber=accession, PatientName="", **kw))
    assert statuses[-1] == SUCCESS
    return [(str(a.get("SpecificCharacterSet", "")), str(a.PatientName)) for a in answers]


def test_changed_file_is_answered_not_its_cached_bytes(wl):
    port, folder = wl.dicom_port, wl.folder
    write_wl(folder, "cache1.wl", accession="CACHE-1", charset="ISO_IR 100",
             patient_name="Dupré^Hélène")
    poll(lambda: _names(port, "CACHE-1") == [("ISO_IR 100", "Dupré^Hélène")])
    for _ in range(3):  # answered from the cache now
        assert _names(port, "CACHE-1") == [("ISO_IR 100", "Dupré^Hélène")]
    # replaced (temp file + rename): new name and character set
    write_wl(folder, "cache1.wl", accession="CACHE-1", charset="ISO_IR 192",
             patient_name="Ζαχαρίας^Γιάννης")
    poll(lambda: _names(port, "CACHE-1") == [("ISO_IR 192", "Ζαχαρίας^Γιάννης")])
    # rewritten in place with a value of the same length
    write_wl(folder, "cache1.wl", atomic=False, accession="CACHE-1", charset="ISO_IR 192",
             patient_name="Ζαχαρίας^Γιάννηζ")
    poll(lambda: _names(port, "CACHE-1") == [("ISO_IR 192", "Ζαχαρίας^Γιάννηζ")])
    (folder / "cache1.wl").unlink()
    poll(lambda: _names(port, "CACHE-1") == [])


def test_answers_hold_exactly_the_requested_keys(wl):
    write_wl(wl.folder, "keys1.wl", _two_steps(accession="KEYS-1", patient_name="山田^太郎"))
    query = mwl_query(AccessionNumber="KEYS-1", PatientName="", sps_Modality="CT",
                      sps_ScheduledProcedureStepStartDate="", sps_ScheduledProtocolCodeSequence=[])
    statuses, answers = poll(lambda: (r := find(wl.dicom_port, query))[1] and r)
    assert statuses == [PENDING, SUCCESS]
    [ds] = answers
    assert {e.keyword for e in ds} == {"SpecificCharacterSet", "AccessionNumber", "PatientName",
                                       "ScheduledProcedureStepSequence"}
    assert str(ds.PatientName) == "山田^太郎"
    [step] = ds.ScheduledProcedureStepSequence  # the CT step only
    assert {e.keyword for e in step} == {"Modality", "ScheduledProcedureStepStartDate",
                                         "ScheduledProtocolCodeSequence"}
    assert step.ScheduledProtocolCodeSequence[0].CodeValue == "C1"  # a whole nested sequence


def _plain(ds: Dataset) -> dict:
    """A dataset as comparable plain values (sequences recursively)."""
    return {e.keyword or str(e.tag): [_plain(i) for i in e.value] if e.VR == "SQ" else str(e.value)
            for e in ds}


@pytest.fixture(scope="module")
def many(wl):
    """300 items of one accession whose answers total well over the 64 KiB sent directly."""
    for n in range(300):
        ds = worklist_dataset(patient_id=f"MANY{n:03d}", accession="MANY",
                              patient_name=f"Ζαχαρίας^{n:03d}")
        ds.PatientComments = f"comment {n:03d} " + "x" * 400
        write_wl(wl.folder, f"many{n:03d}.wl", ds)
    query = mwl_query(AccessionNumber="MANY", PatientID="", PatientName="", PatientComments="")
    poll(lambda: len(find(wl.dicom_port, query)[1]) == 300, timeout=30)
    return query


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         ids=["explicit", "implicit"])
def test_every_transfer_syntax_gets_the_same_answers_in_file_order(wl, many, syntax):
    # Explicit VR Big Endian is answered the pydicom way: the reference.
    statuses, reference = find(wl.dicom_port, many, transfer_syntax=ExplicitVRBigEndian)
    assert statuses == [PENDING] * 300 + [SUCCESS]
    assert [str(a.PatientID) for a in reference] == [f"MANY{n:03d}" for n in range(300)]
    statuses, answers = find(wl.dicom_port, many, transfer_syntax=syntax)
    assert statuses == [PENDING] * 300 + [SUCCESS]
    assert [_plain(a) for a in answers] == [_plain(a) for a in reference]


def test_small_maximum_pdu_gets_fragmented_answers(wl, many, tmp_path):
    statuses, answers = find(wl.dicom_port, many, max_pdu=4096)
    assert statuses[-1] == SUCCESS and len(answers) == 300
    big = _items()[-1]  # a 10 KB comment
    big.AccessionNumber = "BIG-1"
    write_wl(wl.folder, "big1.wl", big)
    query = mwl_query(AccessionNumber="BIG-1", PatientComments="", PatientWeight="")
    statuses, answers = poll(lambda: (r := find(wl.dicom_port, query, max_pdu=4096))[1] and r)
    assert statuses == [PENDING, SUCCESS]
    assert answers[0].PatientComments == LONG_COMMENT and str(answers[0].PatientWeight) == "72.50"
    # DCMTK reassembles the fragments too
    out = tmp_path / "big"
    out.mkdir()
    result = run(["findscu", "-W", "-X", "-od", str(out), "--max-pdu", "4096", "-aec", "ORTHANC",
                  "-k", "AccessionNumber=BIG-1", "-k", "PatientComments", "127.0.0.1",
                  str(wl.dicom_port)])
    assert result.returncode == 0, result.stderr
    [answer_file] = list(out.iterdir())
    assert pydicom.dcmread(answer_file).PatientComments == LONG_COMMENT
