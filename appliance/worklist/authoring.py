"""Writing, reading and removing ``.wl`` files, for the CLI and the REST API.

Everything goes through one path: a JSON-like ``Tags`` mapping, as the ``POST
/worklists/create`` body of Orthanc's Worklists plugin has it (``{"PatientName": "DOE^JANE",
"ScheduledProcedureStepSequence": [{"Modality": "US", ...}]}``), is validated and turned into a
dataset by :func:`dataset_from_tags`, then :func:`write_item` writes it atomically (temporary
file, fsync, rename, fsync of the folder) into the worklist folder, where the watcher picks it
up. The CLI's options and the CSV import's columns are flat keyword -> value mappings that
:func:`tags_from_flat` nests into that shape.
"""

from __future__ import annotations

import csv
import io
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom import valuerep
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from appliance.durable import write_atomic
from appliance.worklist.matching import Attrs
from appliance.worklist.source import SUFFIX, WorklistFileError, is_worklist_name, parse_worklist

# What DCMTK's dump2dcm and Orthanc's plugin put in a worklist file's meta information.
WORKLIST_MEDIA_SOP_CLASS = "1.2.276.0.7230010.3.1.0.1"

# Keywords that belong in the Scheduled Procedure Step Sequence item when given flat
# (CLI options, CSV columns); every other keyword is a top-level attribute.
SPS_KEYWORDS = (
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledStationName",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStatus",
    "PreMedication",
    "RequestedContrastAgent",
)

_ID = re.compile(r"[^/\\\0]{1,128}\Z")
_NUMERIC_VRS = {"US": int, "UL": int, "SS": int, "SL": int, "SV": int, "UV": int,
                "FL": float, "FD": float}
_TEXT_VRS = frozenset("LO LT PN SH ST UC UT".split())


class AuthoringError(ValueError):
    """A worklist that cannot be written as asked (the message says why, for the user)."""


# --------------------------------------------------------------------------- tags -> dataset


def _tag_of(key: str, where: str) -> int:
    text = key.strip()
    m = re.fullmatch(r"([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})", text)
    if m:
        return int(m.group(1) + m.group(2), 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise AuthoringError(f"{where}{key}: unknown DICOM keyword")
    return tag


def _values_of(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        raise AuthoringError(f"{where}: expected a string, got {str(value).lower()}")
    if isinstance(value, (int, float)):
        return [str(value)]
    if isinstance(value, str):
        return value.split("\\") if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise AuthoringError(f"{where}: expected a string, got {type(value).__name__}")


def _element(tag: int, value: Any, where: str, depth: int) -> DataElement:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise AuthoringError(f"{where}: private or unknown tag, not supported") from None
    vr = vr.split(" or ")[0]  # "US or SS": the first is the usual one
    if vr == "SQ":
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
            raise AuthoringError(f"{where}: a sequence is a list of objects")
        return DataElement(tag, "SQ", [_dataset(i, f"{where}[{n}].", depth + 1)
                                       for n, i in enumerate(value)])
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "AT"):
        raise AuthoringError(f"{where}: {vr} values are not supported in a worklist")
    parts = _values_of(value, where)
    for part in parts:
        try:
            valuerep.validate_value(vr, part, pydicom_config.RAISE)
        except ValueError as e:
            reason = str(e).split(" Please see")[0]
            raise AuthoringError(f"{where}: {reason}") from None
    if vr in _NUMERIC_VRS:
        try:
            converted: list[Any] = [_NUMERIC_VRS[vr](p) for p in parts]
        except ValueError:
            raise AuthoringError(f"{where}: expected a number, got {value!r}") from None
    else:
        converted = parts
    return DataElement(tag, vr, None if not converted else
                       converted[0] if len(converted) == 1 else converted)


def _dataset(tags: Mapping[str, Any], prefix: str, depth: int) -> Dataset:
    if depth > 8:
        raise AuthoringError(f"{prefix}: sequences nested too deep")
    ds = Dataset()
    for key, value in tags.items():
        if not isinstance(key, str):
            raise AuthoringError(f"{prefix}{key}: keys are DICOM keywords or \"gggg,eeee\"")
        tag = _tag_of(key, prefix)
        if tag >> 16 in (0x0000, 0x0002):
            raise AuthoringError(f"{prefix}{key}: command and file meta attributes are not allowed")
        name = keyword_for_tag(tag) or key
        ds.add(_element(tag, value, f"{prefix}{name}", depth))
    return ds


def dataset_from_tags(tags: Any, *, force: bool = False, set_study_instance_uid: bool = True) -> Dataset:
    """Validate an Orthanc ``Tags`` object and build the worklist dataset.

    As Orthanc's Worklists plugin: SpecificCharacterSet defaults to ``ISO_IR 192`` (UTF-8);
    unless ``force``, a ScheduledProcedureStepSequence whose first item has a Modality and a
    ScheduledProcedureStepStartDate is required; a StudyInstanceUID is generated when absent
    and ``set_study_instance_uid``. Stricter than Orthanc: every value is checked against its
    VR (a date must be ``YYYYMMDD``...), and text must be representable in the declared
    character set. Raises :class:`AuthoringError` with a message naming the attribute.
    """
    if not isinstance(tags, dict):
        raise AuthoringError("'Tags' field is missing or not a JSON object")
    ds = _dataset(tags, "", 0)
    if "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 192"
    if not force:
        sps = ds.get("ScheduledProcedureStepSequence")  # the Sequence value, not the element
        if sps is None:
            raise AuthoringError("'Tags' is missing a 'ScheduledProcedureStepSequence'. "
                                 "Use 'Force': true to bypass this check.")
        first = sps[0] if sps else Dataset()
        for keyword in ("Modality", "ScheduledProcedureStepStartDate"):
            if keyword not in first:
                raise AuthoringError(f"'ScheduledProcedureStepSequence' is missing a '{keyword}'. "
                                     "Use 'Force': true to bypass this check.")
    if set_study_instance_uid and "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    _check_charset(ds)
    return ds


def _check_charset(ds: Dataset) -> None:
    terms = ds.SpecificCharacterSet
    terms = [terms] if isinstance(terms, str) else list(terms)
    terms = [t.strip() for t in terms if t and t.strip()]
    if len(terms) != 1 or terms[0] not in python_encoding:
        return  # code extensions: pydicom encodes with escape sequences itself
    codec = python_encoding[terms[0]]
    for keyword, text in _texts(ds):
        try:
            text.encode(codec)
        except UnicodeEncodeError:
            raise AuthoringError(f"{keyword}: {text!r} cannot be written in character set "
                                 f"{terms[0]}; use ISO_IR 192 (UTF-8)") from None


def _texts(ds: Dataset) -> Iterable[tuple[str, str]]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _texts(item)
        elif elem.VR in _TEXT_VRS and elem.value is not None:
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            yield from ((elem.keyword, str(v)) for v in values)


def tags_from_flat(fields: Mapping[str, str]) -> dict[str, Any]:
    """Nest flat keyword -> value pairs (CLI options, a CSV row) into a ``Tags`` object:
    :data:`SPS_KEYWORDS` go into the one ScheduledProcedureStepSequence item, others stay
    top-level. Empty values are left out; CS values are upper-cased (``us`` -> ``US``)."""
    top: dict[str, Any] = {}
    step: dict[str, Any] = {}
    for keyword, value in fields.items():
        value = (value or "").strip()
        if not value:
            continue
        tag = tag_for_keyword(keyword)
        if tag is not None and dictionary_VR(tag) == "CS":
            value = value.upper()
        (step if keyword in SPS_KEYWORDS else top)[keyword] = value
    if step:
        top["ScheduledProcedureStepSequence"] = [step]
    return top


def read_csv(text: str, extra_columns: Iterable[str] = ()) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row of a CSV whose header row names DICOM keywords
    (or one of ``extra_columns``). Blank rows are skipped.

    Raises :class:`AuthoringError` for an unknown column (naming it) or an empty file.
    """
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise AuthoringError("the CSV file is empty (the first row names the columns)")
    for column in reader.fieldnames:
        name = (column or "").strip()
        if name not in extra_columns and tag_for_keyword(name) is None:
            raise AuthoringError(f"column {column!r}: not a DICOM keyword "
                                 "(e.g. PatientName, ScheduledProcedureStepStartDate)")
    rows = []
    for row in reader:
        if None in row:
            raise AuthoringError(f"line {reader.line_num}: more cells than columns")
        cleaned = {k.strip(): (v or "") for k, v in row.items()}
        if any(v.strip() for v in cleaned.values()):
            rows.append((reader.line_num, cleaned))
    return rows


# --------------------------------------------------------------------------- files


def check_id(worklist_id: str) -> str:
    """``worklist_id`` if it can name a file in the folder (no path, not hidden), else
    AuthoringError."""
    if not _ID.match(worklist_id) or worklist_id.startswith(".") or worklist_id in ("..",):
        raise AuthoringError(f"not a valid worklist ID: {worklist_id[:80]!r}")
    return worklist_id


def find_file(folder: Path, worklist_id: str) -> Path | None:
    """The file of ``worklist_id`` in ``folder`` (any case of ``.wl``), or None."""
    check_id(worklist_id)
    exact = folder / (worklist_id + SUFFIX)
    if exact.is_file():
        return exact
    try:
        for entry in os.scandir(folder):
            if (is_worklist_name(entry.name) and entry.name[: -len(SUFFIX)] == worklist_id
                    and entry.is_file()):
                return Path(entry.path)
    except FileNotFoundError:
        return None
    return None


def encode_item(ds: Dataset) -> bytes:
    """``ds`` as a Part-10 worklist file (Explicit VR Little Endian, as dump2dcm writes)."""
    ds = Dataset(ds)  # never modify the caller's
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WORKLIST_MEDIA_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_item(folder: Path, ds: Dataset, worklist_id: str | None = None) -> str:
    """Write ``ds`` as ``<folder>/<id>.wl`` atomically (replacing that item if it exists);
    return the ID (a new UUID when none is given)."""
    worklist_id = check_id(worklist_id) if worklist_id else str(uuid.uuid4())
    folder.mkdir(parents=True, exist_ok=True)
    target = find_file(folder, worklist_id) or folder / (worklist_id + SUFFIX)
    write_atomic(target, encode_item(ds))
    return worklist_id


def read_item(folder: Path, worklist_id: str) -> Attrs | None:
    """The flattened dataset of one item, None if there is no such item.

    Raises WorklistFileError if its file is not a readable worklist.
    """
    path = find_file(folder, worklist_id)
    if path is None:
        return None
    try:
        return parse_worklist(path.read_bytes())
    except FileNotFoundError:
        return None


def list_items(folder: Path, skipped: list[tuple[str, str]] | None = None
               ) -> list[tuple[str, Attrs]]:
    """(ID, flattened dataset) of every readable item in ``folder``, sorted by ID;
    the others go to ``skipped`` as (file name, why) when it is given."""
    out = []
    try:
        entries = sorted(e.name for e in os.scandir(folder) if is_worklist_name(e.name) and e.is_file())
    except FileNotFoundError:
        return []
    for name in entries:
        try:
            out.append((name[: -len(SUFFIX)], parse_worklist((folder / name).read_bytes())))
        except (WorklistFileError, OSError) as e:
            # Not served (the daemon logs it); a listing shows what is served.
            if skipped is not None:
                skipped.append((name, str(e) if isinstance(e, WorklistFileError)
                                else e.strerror or str(e)))
    return out


def delete_item(folder: Path, worklist_id: str) -> bool:
    """Remove an item's file; False if there is no such item."""
    path = find_file(folder, worklist_id)
    if path is None:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------- JSON out

FORMATS = ("Human", "Short", "Full")


def tags_json(attrs: Attrs, fmt: str = "Human") -> dict[str, Any]:
    """An item's attributes as Orthanc's REST API shows them (``?format=Human|Short|Full``):
    keyword keys (Human), ``"gggg,eeee"`` keys (Short) or ``{"Name", "Type", "Value"}``
    objects (Full); multiple values joined with a backslash; sequences as lists."""
    out: dict[str, Any] = {}
    for tag in sorted(attrs):
        vr, values, _ = attrs[tag]
        hex_key = f"{tag >> 16:04x},{tag & 0xFFFF:04x}"
        value: Any
        if vr == "SQ":
            value = [tags_json(item, fmt) for item in values]
        elif values and isinstance(values[0], bytes):
            value = None  # binary: not shown, as Orthanc does for bulk values
        else:
            value = "\\".join(str(v) for v in values)
        if fmt == "Short":
            out[hex_key] = value
        elif fmt == "Full":
            kind = "Sequence" if vr == "SQ" else "Null" if value is None else "String"
            out[hex_key] = {"Name": keyword_for_tag(tag) or hex_key, "Type": kind, "Value": value}
        else:
            out[keyword_for_tag(tag) or hex_key] = value
    return out


def describe(worklist_id: str, attrs: Attrs) -> dict[str, Any]:
    """One line's worth of an item for ``worklist list`` (no pydicom objects)."""
    def first(tag: int, source: Attrs = attrs) -> str:
        attr = source.get(tag)
        return str(attr[1][0]).strip() if attr and attr[0] != "SQ" and attr[1] else ""

    sps = attrs.get(0x00400100)
    step = sps[1][0] if sps and sps[0] == "SQ" and sps[1] else {}
    return {
        "ID": worklist_id,
        "PatientID": first(0x00100020),
        "PatientName": first(0x00100010),
        "AccessionNumber": first(0x00080050),
        "Modality": first(0x00080060, step),
        "ScheduledStationAETitle": "\\".join(str(v) for v in (step.get(0x00400001) or ("", ()))[1]),
        "ScheduledProcedureStepStartDate": first(0x00400002, step),
        "ScheduledProcedureStepStartTime": first(0x00400003, step),
    }


__all__ = [
    "AuthoringError",
    "FORMATS",
    "SPS_KEYWORDS",
    "check_id",
    "dataset_from_tags",
    "delete_item",
    "describe",
    "encode_item",
    "find_file",
    "list_items",
    "read_csv",
    "read_item",
    "tags_from_flat",
    "tags_json",
    "write_item",
]
