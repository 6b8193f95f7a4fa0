"""Every DIMSE status the appliance answers, by name (PS3.7 Annex C, PS3.4).

One module for all services, so no handler writes a bare hex status. Leaf
module: no pynetdicom, nothing of the appliance; worklist/mpps.py, which
decides MPPS outcomes, takes its statuses from here too. C-STORE outcomes of
the archive carry their status in appliance.store.StoreResult.
"""

from __future__ import annotations

import enum

__all__ = ["CommitmentStatus", "FailureReason", "FindStatus", "MppsStatus", "RetrieveStatus",
           "Status"]


class Status(enum.IntEnum):
    """Statuses of C-ECHO and C-STORE as the handlers answer them (PS3.7 C, PS3.4 B.2.3)."""

    SUCCESS = 0x0000              # PS3.7 C.1.1, the Success of every service
    REFUSED_NOT_AUTHORIZED = 0x0124
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.6: a request no declared service answers
    CANNOT_UNDERSTAND = 0xC000    # PS3.4 B.2.3: C-STORE "Error: Cannot understand"


class FindStatus(enum.IntEnum):
    """C-FIND statuses of the Modality Worklist SOP Class (PS3.4 K.4.1.1.4, C.4.1.1.4)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    # Also how an answer capped by Worklists.LimitAnswers ends: Orthanc's choice (its
    # FindScp answers "matching terminated" once the plugin marks the answers incomplete).
    CANCEL = 0xFE00
    REFUSED_NOT_AUTHORIZED = 0x0124
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000


class MppsStatus(enum.IntEnum):
    """N-CREATE / N-SET statuses of the MPPS SOP Class (PS3.4 F.7.2.1.3, F.7.2.2.4; PS3.7 C)."""

    SUCCESS = 0x0000
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    INVALID_OBJECT_INSTANCE = 0x0117
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    REFUSED_NOT_AUTHORIZED = 0x0124


class CommitmentStatus(enum.IntEnum):
    """N-ACTION statuses of Storage Commitment Push Model (PS3.4 J.3.2.1.1, PS3.7 C and 10.1.4)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    NO_SUCH_ACTION_TYPE = 0x0123
    MISSING_ATTRIBUTE = 0x0120
    REFUSED_NOT_AUTHORIZED = 0x0124


class FailureReason(enum.IntEnum):
    """Failure Reason (0008,1197) of a FailedSOPSequence item in a storage commitment
    report (PS3.4 J.3.3.1.1.2)."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119


class RetrieveStatus(enum.IntEnum):
    """C-MOVE and C-GET statuses of the Query/Retrieve SOP Classes (PS3.4 C.4.2.1.5,
    C.4.3.1.4)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    # Warning: sub-operations complete, one or more failures (or warnings).
    SUB_OPERATIONS_FAILED = 0xB000
    REFUSED_NOT_AUTHORIZED = 0x0124
    # Failure: unable to perform sub-operations (every one failed).
    UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000
