"""The attributes the index keeps in columns: declared once.

Each column names its attribute (keyword, tag, the VR its value must have to
be read without pydicom) and the field of the index record that holds it.
The header readers read these and nothing else into columns; the archive
builds the record from them (appliance.store.archive._record).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COLUMNS", "INTEGER_COLUMNS", "TEXT_COLUMNS", "UID_KEYWORDS", "Column"]


@dataclass(frozen=True)
class Column:
    """One indexed top-level attribute."""

    keyword: str
    tag: int
    vr: str
    field: str              # the index record's field (appliance.store.index.InstanceRecord)
    integer: bool = False   # an int column (IS or US); else text


COLUMNS = (
    Column("PatientID", 0x00100020, "LO", "patient_id"),
    Column("PatientName", 0x00100010, "PN", "patient_name"),
    Column("PatientBirthDate", 0x00100030, "DA", "patient_birth_date"),
    Column("PatientSex", 0x00100040, "CS", "patient_sex"),
    Column("StudyInstanceUID", 0x0020000D, "UI", "study_instance_uid"),
    Column("StudyDate", 0x00080020, "DA", "study_date"),
    Column("StudyTime", 0x00080030, "TM", "study_time"),
    Column("AccessionNumber", 0x00080050, "SH", "accession_number"),
    Column("StudyDescription", 0x00081030, "LO", "study_description"),
    Column("ReferringPhysicianName", 0x00080090, "PN", "referring_physician_name"),
    Column("StudyID", 0x00200010, "SH", "study_id"),
    Column("SeriesInstanceUID", 0x0020000E, "UI", "series_instance_uid"),
    Column("Modality", 0x00080060, "CS", "modality"),
    Column("SeriesNumber", 0x00200011, "IS", "series_number", integer=True),
    Column("SeriesDescription", 0x0008103E, "LO", "series_description"),
    Column("SOPInstanceUID", 0x00080018, "UI", "sop_instance_uid"),
    Column("SOPClassUID", 0x00080016, "UI", "sop_class_uid"),
    Column("InstanceNumber", 0x00200013, "IS", "instance_number", integer=True),
    Column("NumberOfFrames", 0x00280008, "IS", "number_of_frames", integer=True),
    Column("Rows", 0x00280010, "US", "rows", integer=True),
    Column("Columns", 0x00280011, "US", "columns", integer=True),
    Column("SpecificCharacterSet", 0x00080005, "CS", "specific_character_set"),
)  # fmt: skip
TEXT_COLUMNS = tuple(c for c in COLUMNS if not c.integer)
INTEGER_COLUMNS = tuple(c for c in COLUMNS if c.integer)
#: The UIDs every stored object must carry (present and valid, or it is refused).
UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
