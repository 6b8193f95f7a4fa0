"""The attributes a search can match and return from the index, by level.

PS3.4 C.6.1.1 (Patient Root) and C.6.2.1 (Study Root) list the keys of each
level; PS3.18 10.6.3.3 those of QIDO-RS. The index keeps the main ones as
columns (:data:`INDEXED`) and works out the computed ones (:data:`COMPUTED`,
PS3.4 C.3.4); any other attribute is matched and returned from the stored
DICOM JSON of the instances.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.query.model import Level

__all__ = ["COMPUTED", "INDEXED", "MATCHABLE_COMPUTED", "UNIQUE_KEYS", "Key",
           "MODALITIES_IN_STUDY", "SOP_CLASSES_IN_STUDY", "level_of", "vr_of"]


@dataclass(frozen=True)
class Key:
    """Where an attribute belongs in the hierarchy, and its VR."""

    level: Level
    vr: str


INDEXED: dict[int, Key] = {
    0x00100010: Key(Level.PATIENT, "PN"),   # PatientName
    0x00100020: Key(Level.PATIENT, "LO"),   # PatientID
    0x00100030: Key(Level.PATIENT, "DA"),   # PatientBirthDate
    0x00100040: Key(Level.PATIENT, "CS"),   # PatientSex
    0x0020000D: Key(Level.STUDY, "UI"),     # StudyInstanceUID
    0x00080020: Key(Level.STUDY, "DA"),     # StudyDate
    0x00080030: Key(Level.STUDY, "TM"),     # StudyTime
    0x00080050: Key(Level.STUDY, "SH"),     # AccessionNumber
    0x00081030: Key(Level.STUDY, "LO"),     # StudyDescription
    0x00080090: Key(Level.STUDY, "PN"),     # ReferringPhysicianName
    0x00200010: Key(Level.STUDY, "SH"),     # StudyID
    0x0020000E: Key(Level.SERIES, "UI"),    # SeriesInstanceUID
    0x00080060: Key(Level.SERIES, "CS"),    # Modality
    0x00200011: Key(Level.SERIES, "IS"),    # SeriesNumber
    0x0008103E: Key(Level.SERIES, "LO"),    # SeriesDescription
    0x00080018: Key(Level.IMAGE, "UI"),     # SOPInstanceUID
    0x00080016: Key(Level.IMAGE, "UI"),     # SOPClassUID
    0x00200013: Key(Level.IMAGE, "IS"),     # InstanceNumber
    0x00280008: Key(Level.IMAGE, "IS"),     # NumberOfFrames
    0x00280010: Key(Level.IMAGE, "US"),     # Rows
    0x00280011: Key(Level.IMAGE, "US"),     # Columns
}

# PS3.4 C.3.4 additional (computed) attributes.
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
COMPUTED: dict[int, Key] = {
    0x00201200: Key(Level.PATIENT, "IS"),   # NumberOfPatientRelatedStudies
    0x00201202: Key(Level.PATIENT, "IS"),   # NumberOfPatientRelatedSeries
    0x00201204: Key(Level.PATIENT, "IS"),   # NumberOfPatientRelatedInstances
    MODALITIES_IN_STUDY: Key(Level.STUDY, "CS"),
    SOP_CLASSES_IN_STUDY: Key(Level.STUDY, "UI"),
    0x00201206: Key(Level.STUDY, "IS"),     # NumberOfStudyRelatedSeries
    0x00201208: Key(Level.STUDY, "IS"),     # NumberOfStudyRelatedInstances
    0x00201209: Key(Level.SERIES, "IS"),    # NumberOfSeriesRelatedInstances
}
#: Computed keys that can also be matched (a study matches if one of its
#: series or instances does).
MATCHABLE_COMPUTED = frozenset({MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY})

#: The unique key of each level (PS3.4 C.6.1.1.1, C.6.2.1.1).
UNIQUE_KEYS = {
    Level.PATIENT: 0x00100020,  # PatientID
    Level.STUDY: 0x0020000D,    # StudyInstanceUID
    Level.SERIES: 0x0020000E,   # SeriesInstanceUID
    Level.IMAGE: 0x00080018,    # SOPInstanceUID
}


def level_of(tag: int) -> Level | None:
    """The level of an indexed or computed attribute; None for the others."""
    key = INDEXED.get(tag) or COMPUTED.get(tag)
    return key.level if key else None


def vr_of(tag: int) -> str | None:
    """The VR of an indexed or computed attribute; None for the others."""
    key = INDEXED.get(tag) or COMPUTED.get(tag)
    return key.vr if key else None
