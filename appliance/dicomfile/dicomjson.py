"""Dataset <-> DICOM JSON Model (PS3.18 Annex F), without bulk data.

Pure module: no file I/O, no logging, no module state.  It is used at ingest
time on a header read with::

    ds = pydicom.dcmread(path, stop_before_pixels=True, defer_size=1024)

and the result is stored in the index so that WADO-RS ``/metadata`` needs no
file read later.

Deferred values are never read
------------------------------
With ``defer_size`` pydicom keeps large top-level elements as a
``RawDataElement`` whose ``value`` is ``None`` and whose ``length`` is known;
``ds[tag]`` or ``ds.get_item(tag)`` would re-open the file to fetch them.
:func:`dataset_to_json` only looks at such elements through ``Dataset._dict``
(tag, VR, length) and turns them into a ``BulkDataURI``.  Elements that are in
memory are converted on a private *view* of each dataset level that holds only
the in-memory elements, so neither the conversion nor pydicom's
ambiguous-VR/private-creator look-ups can reach a deferred element, and the
caller's dataset is not modified.

Note that pydicom also defers a *defined-length* top-level Sequence longer than
``defer_size``.  PS3.18 F.2.2 does not allow a BulkDataURI for SQ (nor for AE,
AS, AT, CS, DA, DT, LO, PN, SH, TM, UI, UR); such an element still becomes a
``BulkDataURI`` here (nothing is silently lost, nothing is read).  A caller
that wants them inline can load them while the file is still there::

    for tag in deferred_inline_tags(ds):
        ds[tag]                       # caller-side read, before conversion

pydicom may emit ``UserWarning`` for invalid values while converting; they are
not suppressed here (``warnings.catch_warnings`` is not thread-safe).

Bulk data URIs
--------------
A *tag path* is a tuple alternating tags and 0-based item indexes, from the
top-level data set down, always starting and ending with a tag::

    (0x00420011,)                          # top-level element
    (0x00540016, 0, 0x00181072)            # element in item 0 of a sequence
    (0x0040A730, 2, 0x0040A730, 0, 0x0040A160)

The default URI (see :func:`default_bulk_uri`, parsed back by
:func:`parse_bulk_uri`) is *relative*, so the web layer can prefix the real base
URL per request: ``"bulk/"`` followed by the path components joined with
``"/"``, tags as 8 upper-case hex digits and item indexes as decimal integers
without sign or leading zeros, e.g. ``"bulk/00420011"`` or
``"bulk/00540016/0/00181072"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.hooks import hooks
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import PersonName

__all__ = [
    "BULK_URI_PREFIX",
    "DEFAULT_MAX_DEPTH",
    "dataset_to_json",
    "default_bulk_uri",
    "deferred_inline_tags",
    "json_to_dataset",
    "parse_bulk_uri",
    "guess_pixel_data_vr",
]

BulkUriFunc = Callable[[tuple[int, ...]], str]

#: Prefix of the default, relative bulk data URI (see module docstring).
BULK_URI_PREFIX = "bulk/"

#: Deepest sequence nesting converted inline; deeper sequences become bulk data.
DEFAULT_MAX_DEPTH = 64

# Longest tag path parse_bulk_uri accepts (tags + item indexes).
_MAX_PATH_LEN = 2 * DEFAULT_MAX_DEPTH + 1

# VRs whose Value Field is an opaque byte stream: PS3.18 Table F.2.3-1 maps them
# to base64 (InlineBinary); here they are always referenced as bulk data.
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

# PS3.18 F.2.2: the VRs for which a BulkDataURI may describe the Value Field.
_BULK_ALLOWED_VRS = frozenset(
    {
        "DS", "FL", "FD", "IS", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
        "SL", "SS", "ST", "SV", "UC", "UL", "UN", "US", "UT", "UV",
    }
)  # fmt: skip

# Bytes per value of fixed-size VRs (PS3.5 Table 6.2-1), for length estimates.
_FIXED_SIZE = {
    "AT": 4, "FL": 4, "FD": 8, "SL": 4, "SS": 2, "SV": 8,
    "UL": 4, "US": 2, "UV": 8,
}  # fmt: skip

_INT_VRS = frozenset({"SL", "SS", "SV", "UL", "US", "UV"})
_FLOAT_VRS = frozenset({"FL", "FD"})

_TAG_PIXEL_REPRESENTATION = 0x00280103
_UNDEFINED_LENGTH = 0xFFFFFFFF

# Pixel data VR -> tag (PS3.6): Float/Double Float Pixel Data have fixed VRs.
# UN is accepted for (7FE0,0010) as some writers re-encode unknown data so.
_PIXEL_DATA_TAGS = {
    "OB": 0x7FE00010, "OW": 0x7FE00010, "UN": 0x7FE00010,
    "OF": 0x7FE00008, "OD": 0x7FE00009,
}  # fmt: skip

# PS3.5 6.2: IS is an optionally signed integer; DS a fixed or floating point
# number.  Leading/trailing spaces are allowed and stripped before matching.
_IS_RE = re.compile(r"[+-]?[0-9]+")
_DS_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_TAG_RE = re.compile(r"[0-9A-F]{8}")
_INDEX_RE = re.compile(r"0|[1-9][0-9]{0,8}")


class _NotInline(Exception):
    """A value cannot be represented inline; emit a BulkDataURI instead."""


# --------------------------------------------------------------------------
# Bulk data URIs
# --------------------------------------------------------------------------


def default_bulk_uri(path: tuple[int, ...]) -> str:
    """Return the default relative bulk data URI for a tag path.

    ``(0x00540016, 0, 0x00181072)`` -> ``"bulk/00540016/0/00181072"``: tags
    as 8 upper-case hex digits, item indexes in decimal (see module docstring).
    """
    parts = [
        f"{component:08X}" if position % 2 == 0 else str(component)
        for position, component in enumerate(path)
    ]
    return BULK_URI_PREFIX + "/".join(parts)


def parse_bulk_uri(uri: str) -> tuple[int, ...]:
    """Parse a URI made by :func:`default_bulk_uri` back into its tag path.

    Accepts exactly the canonical form (``bulk/`` + ``TAG(/INDEX/TAG)*``).
    Raises :class:`ValueError` on anything else, so it is safe on client input.
    """
    if not isinstance(uri, str) or not uri.startswith(BULK_URI_PREFIX):
        raise ValueError(f"not a bulk data URI: {uri!r}")
    parts = uri[len(BULK_URI_PREFIX):].split("/")
    if len(parts) % 2 == 0 or len(parts) > _MAX_PATH_LEN:
        raise ValueError(f"bad bulk data path length in {uri!r}")
    path: list[int] = []
    for position, part in enumerate(parts):
        if position % 2 == 0:
            if not _HEX_TAG_RE.fullmatch(part):
                raise ValueError(f"bad tag {part!r} in {uri!r}")
            path.append(int(part, 16))
        else:
            if not _INDEX_RE.fullmatch(part):
                raise ValueError(f"bad item index {part!r} in {uri!r}")
            path.append(int(part))
    return tuple(path)


def guess_pixel_data_vr(transfer_syntax_uid: str | None, bits_allocated: int | None) -> str:
    """Return the VR of (7FE0,0010) Pixel Data, for ``dataset_to_json(pixel_data_vr=...)``.

    PS3.5 A.4: encapsulated (compressed) pixel data is OB.  PS3.5 A.1: Implicit
    VR Little Endian native pixel data is OW.  PS3.5 A.2: explicit VR native
    pixel data is OW if Bits Allocated > 8, else OB.
    """
    if transfer_syntax_uid:
        uid = UID(str(transfer_syntax_uid))
        if uid.is_transfer_syntax and uid.is_encapsulated:
            return "OB"
        if uid == "1.2.840.10008.1.2":  # Implicit VR Little Endian
            return "OW"
    return "OW" if (bits_allocated or 0) > 8 else "OB"


# --------------------------------------------------------------------------
# Dataset -> JSON
# --------------------------------------------------------------------------


def dataset_to_json(
    ds: Dataset,
    *,
    bulk_threshold: int = 1024,
    bulk_uri: BulkUriFunc | None = None,
    pixel_data_vr: str | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, Any]:
    """Return the PS3.18 Annex F DICOM JSON Model object for `ds`, without bulk data.

    Keys are ``"GGGGEEEE"`` (upper-case hex) in ascending order (F.2.2); each
    value is ``{"vr": VR, "Value": [...]}``, ``{"vr": VR, "BulkDataURI": uri}``
    or ``{"vr": VR}`` for an empty element (F.2.5).  Deferred values are never
    read (see module docstring).

    An element becomes ``{"vr", "BulkDataURI"}`` when:

    * its VR is binary (OB, OD, OF, OL, OV, OW, UN) and it is not empty;
    * its VR is one F.2.2 allows as bulk data (DS, FL, FD, IS, LT, SL, SS, ST,
      SV, UC, UL, US, UT, UV, ...) and its encoded length exceeds
      `bulk_threshold` bytes (for elements already converted by the caller the
      length is estimated from the value, text as UTF-8);
    * its value is deferred (not in memory), whatever its VR or length;
    * it cannot be represented inline: pydicom fails to convert or decode it,
      an FL/FD value is NaN or infinite (not a JSON number), a sequence is
      nested deeper than `max_depth`.  Nothing is silently dropped.

    Other values (F.2.3, F.2.4): PN as ``{"Alphabetic", "Ideographic",
    "Phonetic"}`` objects holding only the non-empty groups (F.2.2); AT as
    ``"GGGGEEEE"``; IS and DS as JSON numbers (DS always a float, IS an int;
    an IS such as ``"1.0"`` that is integral becomes ``1``); an IS/DS value that
    is not a valid, finite number is kept as its original string, which the
    note to Table F.2.3-1 allows; other VRs as strings; SQ as a list of item
    objects (``{}`` for an empty item).  Empty values of a multi-valued element
    are ``null`` (F.2.5).  Text is decoded by pydicom with the data set's
    Specific Character Set (0008,0005).

    Excluded: group length elements (gggg,0000) (F.2.2), the File Meta
    Information group 0002 (not part of the data set) and the DIMSE command
    group 0000.  Private elements are included with their VR (an implicit-VR
    private element with no known VR is UN, hence bulk data).

    Parameters
    ----------
    ds:
        The data set, typically read with ``stop_before_pixels=True`` and a
        ``defer_size``.  It is not modified.
    bulk_threshold:
        Longest encoded value, in bytes, kept inline for the bulk-capable VRs.
    bulk_uri:
        Maps a tag path (see module docstring) to the BulkDataURI string;
        ``None`` uses :func:`default_bulk_uri`.
    pixel_data_vr:
        If given, adds a BulkDataURI entry for the pixel data that
        ``stop_before_pixels`` removed: ``"OB"``/``"OW"`` (or ``"UN"``) for
        (7FE0,0010) Pixel Data (see :func:`guess_pixel_data_vr`), ``"OF"`` for
        (7FE0,0008) Float Pixel Data, ``"OD"`` for (7FE0,0009) Double Float
        Pixel Data.  An element already in `ds` takes precedence.
    max_depth:
        Deepest sequence nesting converted inline (top-level sequences are at
        depth 1).

    Raises
    ------
    ValueError
        Only for a bad argument (unknown `pixel_data_vr`, negative numbers).
    """
    if pixel_data_vr is not None and pixel_data_vr not in _PIXEL_DATA_TAGS:
        raise ValueError(f"pixel_data_vr must be one of {sorted(_PIXEL_DATA_TAGS)}")
    if bulk_threshold < 0 or max_depth < 0:
        raise ValueError("bulk_threshold and max_depth must not be negative")

    converter = _Converter(bulk_threshold, bulk_uri or default_bulk_uri, max_depth)
    result = converter.dataset(ds, (), 0)
    if pixel_data_vr is not None:
        tag = _PIXEL_DATA_TAGS[pixel_data_vr]
        key = f"{tag:08X}"
        if key not in result:
            result[key] = {"vr": pixel_data_vr, "BulkDataURI": converter.uri((tag,))}
            result = dict(sorted(result.items()))  # F.2.2: ascending tag order
    return result


def deferred_inline_tags(ds: Dataset) -> list[int]:
    """Return top-level tags whose value is deferred but PS3.18 F.2.2 wants inline.

    These are deferred sequences and deferred elements whose VR may not be a
    BulkDataURI (e.g. a long multi-valued LO).  :func:`dataset_to_json` emits
    them as bulk data; a caller that still has the file may load them first
    (``ds[tag]``).  Reads nothing.
    """
    view = _in_memory_view(ds)
    tags = []
    for tag, elem in list(ds._dict.items()):
        if not _is_deferred(elem) or not _is_included(tag):
            continue
        vr = _vr_of_raw(view, elem)
        if vr == "SQ" or vr not in _BULK_ALLOWED_VRS:
            tags.append(int(tag))
    return sorted(tags)


def _is_deferred(elem: Any) -> bool:
    # Mirrors Dataset.__getitem__: a raw element whose value was not read.
    return isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0


def _is_included(tag: int) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    # F.2.2: no group length; group 0002 is File Meta Information, 0000 is the
    # DIMSE command group: neither is part of the data set.
    return element != 0 and group not in (0x0000, 0x0002)


def _in_memory_view(ds: Dataset) -> Dataset:
    """Return a new Dataset holding the in-memory, included elements of `ds`.

    Converting elements on the view caches them there, not in the caller's
    dataset, and any look-up pydicom does while converting (private creator,
    Pixel Representation, Bits Allocated, ...) cannot trigger a deferred read,
    because deferred elements are not in it.
    """
    elements = {
        tag: elem
        for tag, elem in list(ds._dict.items())
        if _is_included(tag) and not _is_deferred(elem)
    }
    view = Dataset(elements)
    is_implicit, is_little = ds.original_encoding
    view.set_original_encoding(is_implicit, is_little, ds.original_character_set)
    view._parent_encoding = ds._parent_encoding
    if hasattr(ds, "_pixel_rep"):
        view._pixel_rep = ds._pixel_rep
    return view


def _vr_of_raw(view: Dataset, raw: RawDataElement) -> str:
    """VR of a raw element without touching its value (implicit VR: dictionary)."""
    vr = raw.VR
    if vr is None or (vr == "UN" and pydicom_config.replace_un_with_known_vr):
        data: dict[str, Any] = {}
        try:
            # The hook looks up the (private) dictionary; private creators are
            # read from `view`, which holds no deferred elements.
            hooks.raw_element_vr(raw, data, ds=view)
            vr = data.get("VR") or "UN"
        except Exception:
            vr = "UN"
    return _resolve_ambiguous(str(vr), raw.length, view)


def _resolve_ambiguous(vr: str, length: int, view: Dataset) -> str:
    """Pick one VR from a dictionary VR such as ``"OB or OW"`` without any read."""
    if " or " not in vr:
        return vr
    options = vr.split(" or ")
    if "OB" in options and length == _UNDEFINED_LENGTH:
        return "OB"  # PS3.5 A.4: encapsulated data is OB with undefined length
    if "OW" in options:
        return "OW"  # PS3.5 A.1: word data in implicit VR is OW
    if "US" in options and "SS" in options:
        return "SS" if _pixel_representation(view) == 1 else "US"
    return options[0]


def _pixel_representation(view: Dataset) -> int:
    try:
        if _TAG_PIXEL_REPRESENTATION in view._dict:
            return int(view[_TAG_PIXEL_REPRESENTATION].value)
    except Exception:
        pass
    return int(getattr(view, "_pixel_rep", 0) or 0)


class _Converter:
    """Recursive conversion state for one dataset_to_json call."""

    def __init__(self, bulk_threshold: int, bulk_uri: BulkUriFunc, max_depth: int):
        self.bulk_threshold = bulk_threshold
        self.bulk_uri = bulk_uri
        self.max_depth = max_depth

    def uri(self, path: tuple[int, ...]) -> str:
        return str(self.bulk_uri(path))

    def bulk(self, vr: str, path: tuple[int, ...]) -> dict[str, Any]:
        return {"vr": vr, "BulkDataURI": self.uri(path)}

    def dataset(self, ds: Dataset, prefix: tuple[int, ...], depth: int) -> dict[str, Any]:
        view = _in_memory_view(ds)
        result: dict[str, Any] = {}
        # F.2.2: attribute objects in ascending order of their (hex) names.
        for tag, original in sorted(ds._dict.items()):
            if not _is_included(tag):
                continue
            path = prefix + (int(tag),)
            if _is_deferred(original):
                # Only tag, VR and length are known; reading the value would
                # re-open the file, so it is bulk data whatever its VR.
                result[f"{tag:08X}"] = self.bulk(_vr_of_raw(view, original), path)
            else:
                result[f"{tag:08X}"] = self.element(view, tag, original, path, depth)
        return result

    def element(
        self,
        view: Dataset,
        tag: BaseTag,
        original: DataElement | RawDataElement,
        path: tuple[int, ...],
        depth: int,
    ) -> dict[str, Any]:
        try:
            elem = view[tag]  # converts a raw element in the view only
            vr = str(elem.VR)
            if " or " in vr:  # pydicom could not resolve it
                vr = _resolve_ambiguous(vr, _raw_length(original), view)
            return self.converted(elem, vr, original, path, depth)
        except Exception:
            # Odd but parseable data that pydicom cannot convert or we cannot
            # represent inline: keep a reference rather than lose the element.
            if isinstance(original, RawDataElement):
                vr = _vr_of_raw(view, original)
            else:
                vr = _resolve_ambiguous(str(original.VR), _UNDEFINED_LENGTH, view)
            return self.bulk(vr, path)

    def converted(
        self,
        elem: DataElement,
        vr: str,
        original: DataElement | RawDataElement,
        path: tuple[int, ...],
        depth: int,
    ) -> dict[str, Any]:
        if elem.is_buffered:
            return self.bulk(vr, path)  # value is a file-like object: never read it
        if vr == "SQ":
            return self.sequence(elem, path, depth)
        if elem.is_empty:
            if vr in _FIXED_SIZE and _raw_length(original) not in (0, _UNDEFINED_LENGTH):
                # pydicom dropped a binary number value it could not parse
                # (e.g. AT of length 2): keep a reference to the bytes.
                return self.bulk(vr, path)
            return {"vr": vr}  # F.2.5: present but empty -> no "Value"
        if vr in _BINARY_VRS or isinstance(elem.value, bytes | bytearray | memoryview):
            return self.bulk(vr, path)
        if vr in _BULK_ALLOWED_VRS and _element_length(elem, original) > self.bulk_threshold:
            return self.bulk(vr, path)
        try:
            values = _values(elem, vr)
        except _NotInline:
            return self.bulk(vr, path)
        return {"vr": vr, "Value": values}

    def sequence(self, elem: DataElement, path: tuple[int, ...], depth: int) -> dict[str, Any]:
        items = list(elem.value or [])
        if not items:
            return {"vr": "SQ"}  # F.2.5: empty sequence -> no "Value"
        if depth + 1 > self.max_depth:
            return self.bulk("SQ", path)
        # F.2.5: an empty item is an empty JSON object.
        return {
            "vr": "SQ",
            "Value": [
                self.dataset(item, path + (index,), depth + 1)
                for index, item in enumerate(items)
            ],
        }


def _raw_length(original: DataElement | RawDataElement) -> int:
    if isinstance(original, RawDataElement):
        return original.length
    return _UNDEFINED_LENGTH


def _element_length(elem: DataElement, original: DataElement | RawDataElement) -> int:
    """Encoded Value Length, exact for raw elements, estimated otherwise."""
    if isinstance(original, RawDataElement) and original.value is not None:
        if original.length == _UNDEFINED_LENGTH:
            return len(original.value)
        return original.length
    value = elem.value
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    size = _FIXED_SIZE.get(elem.VR)
    if size is not None:
        return size * elem.VM
    values = _as_list(value)
    text = sum(len(str(v).encode("utf-8", "replace")) for v in values)
    return text + max(0, len(values) - 1)  # backslash delimiters


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _values(elem: DataElement, vr: str) -> list[Any]:
    """The JSON "Value" array of a non-empty, non-SQ, non-binary element."""
    if vr in ("IS", "DS"):
        return [_number_string(text, vr) for text in _number_strings(elem)]
    values = _as_list(elem.value)
    if vr == "PN":
        return [_person_name(v) for v in values]
    if vr == "AT":
        return [None if _is_empty(v) else f"{int(v):08X}" for v in values]
    if vr in _INT_VRS:
        return [None if _is_empty(v) else int(v) for v in values]
    if vr in _FLOAT_VRS:
        result = []
        for v in values:
            if _is_empty(v):
                result.append(None)
                continue
            number = float(v)
            if not math.isfinite(number):
                raise _NotInline  # NaN/Infinity are not JSON numbers
            result.append(number)
        return result
    # F.2.3: every other VR is a JSON string.
    return [None if _is_empty(v) else str(v) for v in values]


def _is_empty(value: Any) -> bool:
    return value is None or value == ""


def _person_name(value: Any) -> dict[str, str] | None:
    # F.2.2: only the non-empty component groups are encoded.
    if _is_empty(value):
        return None
    if not isinstance(value, PersonName):
        value = PersonName(str(value))
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.components))
    groups = {name: text for name, text in groups.items() if text}
    return groups or None


def _number_strings(elem: DataElement) -> list[str]:
    """The original text of each IS/DS value.

    pydicom keeps it as ``original_string`` (``str(IS("1.0")) == "1.0"``) and
    leaves values it cannot parse as ``str``.
    """
    strings = []
    for v in _as_list(elem.value):
        original = getattr(v, "original_string", None)  # ISfloat's str() is "1e+20"
        strings.append(original if isinstance(original, str) else "" if v is None else str(v))
    return strings


def _number_string(text: str, vr: str) -> int | float | str | None:
    """One IS/DS value as a JSON number, or its original string if invalid."""
    text = text.strip(" \x00")
    if not text:
        return None  # F.2.5
    if _DS_RE.fullmatch(text):
        if vr == "IS":
            if _IS_RE.fullmatch(text):
                return int(text)
            number = float(text)
            if math.isfinite(number) and number.is_integer():
                return int(number)  # "1.0": integral, as pydicom reads it
        else:
            number = float(text)
            if math.isfinite(number):
                return number
    # Table F.2.3-1 note: a JSON String may preserve the original format.
    return text


# --------------------------------------------------------------------------
# JSON -> Dataset
# --------------------------------------------------------------------------


def json_to_dataset(obj: dict[str, Any]) -> Dataset:
    """Return a Dataset from a PS3.18 Annex F DICOM JSON Model object.

    Inverse of :func:`dataset_to_json` for non-bulk data; each level is built
    with ``pydicom.Dataset.from_json``.  Documented choices:

    * attributes carrying a ``BulkDataURI`` (at any depth) are *omitted*: their
      value is not in the JSON; ``InlineBinary`` values are decoded;
    * ``null`` array entries become empty values (F.2.5), a missing "Value"
      an empty element;
    * IS/DS values given as JSON strings (as :func:`dataset_to_json` keeps
      invalid numbers, F.2.3 note) are stored as their original text, exactly
      as if read from a file, so an invalid number does not stop the load;
    * group 0002 attributes, if any, go to ``ds.file_meta``.

    Raises
    ------
    ValueError
        If `obj` is not a valid DICOM JSON Model object.
    """
    if not isinstance(obj, dict):
        raise ValueError("a DICOM JSON Model object must be a JSON object")
    meta = {key: value for key, value in obj.items() if str(key)[:4] == "0002"}
    body = {key: value for key, value in obj.items() if str(key)[:4] != "0002"}
    try:
        ds = _build_dataset(body, 0)
        if meta:
            ds.file_meta = FileMetaDataset(_build_dataset(meta, 0))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ValueError(f"invalid DICOM JSON: {exc}") from exc
    return ds


def _build_dataset(obj: dict[str, Any], depth: int) -> Dataset:
    if depth > DEFAULT_MAX_DEPTH:
        raise ValueError("sequences nested too deeply")
    ds = Dataset()
    plain: dict[str, Any] = {}
    for key, attribute in obj.items():
        if not isinstance(key, str) or not _HEX_TAG_RE.fullmatch(key.upper()):
            raise ValueError(f"invalid attribute name {key!r}")
        if not isinstance(attribute, dict) or not isinstance(attribute.get("vr"), str):
            raise ValueError(f"invalid attribute object for {key}")
        if "BulkDataURI" in attribute:
            continue
        tag = BaseTag(int(key, 16))
        vr = attribute["vr"]
        value = attribute.get("Value")
        if vr == "SQ":
            if not isinstance(value or [], list) or not all(
                isinstance(item, dict) for item in value or []
            ):
                raise ValueError(f"invalid sequence items for {key}")
            items = [_build_dataset(item, depth + 1) for item in value or []]
            ds.add(DataElement(tag, "SQ", Sequence(items)))
        elif vr in ("IS", "DS") and isinstance(value, list) and any(
            isinstance(v, str) for v in value
        ):
            text = "\\".join("" if v is None else str(v) for v in value)
            encoded = text.encode("ascii", "replace")
            ds._dict[tag] = RawDataElement(tag, vr, len(encoded), encoded, 0, False, True)
        else:
            plain[key.upper()] = attribute
    for elem in Dataset.from_json(plain).elements():
        ds.add(elem)
    return ds
