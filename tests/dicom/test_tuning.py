"""The bytes the fast path (appliance.dicom.tuning) writes itself are the bytes
pynetdicom and pydicom write, so a stored file and a response do not depend on
whether the fast path ran."""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import dimse_messages
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import create_file_meta, encode

from appliance.dicom.tuning import C_GET_RSP, C_MOVE_RSP, C_STORE_RSP, FileMeta, response_command

CASES = [  # odd and even UID lengths, both little-endian transfer syntaxes
    ("1.2.840.10008.5.1.4.1.1.6.1", "1.2.3.4.5", "1.2.840.10008.1.2.1"),
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.45", "1.2.840.10008.1.2"),
    ("1.2.840.10008.5.1.4.1.1.3.1", "2.25." + "9" * 59, "1.2.840.10008.1.2.4.50"),
]


@pytest.mark.parametrize("sop_class, sop_instance, ts", CASES)
def test_file_meta_as_pydicom_writes_it(sop_class, sop_instance, ts):
    buf = DicomBytesIO()
    write_file_meta_info(buf, create_file_meta(sop_class_uid=sop_class,
                                               sop_instance_uid=sop_instance, transfer_syntax=ts))
    ours = FileMeta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=ts)
    assert ours.encoded == buf.getvalue()


@pytest.mark.parametrize("sop_class, sop_instance, ts", CASES)
@pytest.mark.parametrize("message_id", [1, 0xFFFF])
def test_store_success_as_pynetdicom_encodes_it(sop_class, sop_instance, ts, message_id):
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = 0x0000
    msg = dimse_messages.C_STORE_RSP()
    msg.primitive_to_message(rsp)
    assert response_command(C_STORE_RSP, message_id, sop_class, 0x0000,
                            sop_instance_uid=sop_instance) == encode(
        msg.command_set, True, True)


@pytest.mark.parametrize("primitive, message, field", [
    (C_MOVE, dimse_messages.C_MOVE_RSP, C_MOVE_RSP), (C_GET, dimse_messages.C_GET_RSP, C_GET_RSP)])
@pytest.mark.parametrize("counts", [(199, 1, 0, 0), (0, 150, 30, 20), (5, None, None, None)])
def test_retrieve_pending_as_pynetdicom_encodes_it(primitive, message, field, counts):
    rsp = primitive()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    rsp.Status = 0xFF00
    (rsp.NumberOfRemainingSuboperations, rsp.NumberOfCompletedSuboperations,
     rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations) = counts
    msg = message()
    msg.primitive_to_message(rsp)
    assert response_command(field, 7, "1.2.840.10008.5.1.4.1.2.2.2", 0xFF00,
                            sub_operations=counts) == encode(msg.command_set, True, True)
