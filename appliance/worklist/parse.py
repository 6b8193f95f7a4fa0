"""Reading ``.wl`` files into attribute maps (:mod:`appliance.worklist.matching`).

Pure: no I/O besides the bytes given, no logging, no module state.

Two readers give the same result:

* a fast one for what worklist files nearly always are (Part-10, Little Endian Explicit or
  Implicit VR, elements in order, one character set): it walks the element headers with
  ``struct`` and turns plain ASCII values into strings itself, handing any other value
  (numbers, non-ASCII text, ISO 2022 escapes) to pydicom's own converter for that VR. About
  25 times faster than reading a pydicom ``Dataset`` and flattening it, which is what makes
  a cold start over 10,000 files take about a second instead of fifteen;
* pydicom's ``dcmread``, after a walk of the element headers that refuses a truncated
  file (pydicom would read it without complaint, short). Used for anything the fast
  reader does not fully understand: it raises :class:`_Unsupported` rather than guess,
  so a file it is unsure of is read exactly as before.

tests/worklist/test_parse.py checks that both agree on a corpus of files with every
character set, VR and layout the tests use.
"""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.values import convert_value

from appliance.dicomfile.syntax import DEFLATED_LE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE
from appliance.dicomfile.vr import LONG_VRS, SHORT_VRS
from appliance.worklist.matching import (
    NORMALISERS as _NORMALISERS,
    Attrs,
    attrs_from_dataset,
    comparison_keys,
    values_of,
)

__all__ = ["WorklistFileError", "parse_worklist", "parse_worklist_pydicom", "read_fast"]


class WorklistFileError(Exception):
    """A file in the folder is not a readable worklist item."""


class _Unsupported(Exception):
    """The fast reader leaves this file to pydicom."""


# The explicit VR header layout comes from the one VR table (PS3.5 7.1.2).
_LONG_VRS = frozenset(vr.encode("ascii") for vr in LONG_VRS)
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_SPECIFIC_CHARACTER_SET = 0x00080005
_ESC = 0x1B
_UNPACK_TAG = struct.Struct("<HH").unpack_from
_UNPACK_HEADER = struct.Struct("<HH2sH").unpack_from  # explicit VR, 2-byte length
_UNPACK_U16 = struct.Struct("<H").unpack_from
_UNPACK_U32 = struct.Struct("<I").unpack_from

# VRs whose ASCII values the fast reader decodes itself, each the way pydicom's converter
# for it does (pydicom/values.py): the rest go to that converter.
_STRIP_BOTH = frozenset({"AE"})                         # convert_AE_string
_STRIP_END = frozenset({"AS", "CS", "DA", "DT", "TM"})  # convert_string (multi_string)
_TEXT = frozenset({"LO", "SH", "UC"})                   # convert_text
_SINGLE = frozenset({"LT", "ST", "UT"})                 # convert_single_string
_FAST_VRS = _STRIP_BOTH | _STRIP_END | _TEXT | _SINGLE | {"PN", "UI"}
_KNOWN_VRS = (LONG_VRS | SHORT_VRS) - {"UN"}  # not UN: pydicom may read such a value with another VR
# Explicit VR: the VR as it is written -> (VR, has a 4-byte length).
_VR_INFO = {vr.encode("ascii"): (vr, vr.encode("ascii") in _LONG_VRS) for vr in _KNOWN_VRS}


# --------------------------------------------------------------------------- structure


def check_structure(data: bytes) -> None:
    """Raise WorklistFileError unless every element of the file is complete.

    pydicom reads a truncated file without complaint (the last value just comes out short),
    so a half-written .wl would be served with attributes missing: walk the element headers
    first and refuse a file whose values or sequences do not end where they say.
    """
    pos, syntax = 0, None
    if len(data) >= 132 and data[128:132] == b"DICM":
        pos = 132
        while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
            element = struct.unpack_from("<H", data, pos + 2)[0]
            end, value_at = _element_end(data, pos, len(data), False, "<")
            if element == 0x0010:
                syntax = data[value_at:end].rstrip(b"\0 ").decode("ascii", "replace")
            pos = end
    if syntax == DEFLATED_LE:
        return  # compressed body: pydicom inflates and parses it whole
    if syntax is None:  # no File Meta: guess explicit VR from the first element's header
        implicit = not (len(data) >= pos + 6 and data[pos + 4:pos + 6].isalpha()
                        and data[pos + 4:pos + 6].isupper())
        try:
            _element_end(data, pos, len(data), implicit, "<")
        except WorklistFileError:
            # Say what it is (a text file, a note) rather than "truncated value".
            raise WorklistFileError("not a DICOM file (no DICM prefix at byte 128, and no "
                                    "data set at its start)") from None
    else:
        implicit = syntax == IMPLICIT_LE
    _walk(data, pos, len(data), implicit, ">" if syntax == EXPLICIT_BE else "<", False)


def _element_end(data: bytes, pos: int, end: int, implicit: bool, order: str) -> tuple[int, int]:
    """(end of the element at ``pos``, start of its value); walks undefined lengths."""
    if pos + 8 > end:
        raise WorklistFileError("truncated element header")
    group = struct.unpack_from(order + "H", data, pos)[0]
    vr = None
    if implicit or group == 0xFFFE:
        length, value_at = struct.unpack_from(order + "I", data, pos + 4)[0], pos + 8
    else:
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise WorklistFileError("truncated element header")
            length, value_at = struct.unpack_from(order + "I", data, pos + 8)[0], pos + 12
        else:
            length, value_at = struct.unpack_from(order + "H", data, pos + 6)[0], pos + 8
    if length == _UNDEFINED:
        # A sequence (or UN holding an implicit-VR one): its items end with delimiters.
        return _walk_items(data, value_at, end, implicit or vr == b"UN", order), value_at
    if value_at + length > end:
        raise WorklistFileError("truncated value")
    return value_at + length, value_at


def _walk(data: bytes, pos: int, end: int, implicit: bool, order: str, in_item: bool) -> int:
    while pos < end:
        if pos + 8 > end:
            raise WorklistFileError("truncated element header")
        group, element = struct.unpack_from(order + "HH", data, pos)
        if (group << 16 | element) == _ITEM_END and in_item:
            return pos + 8
        if group == 0xFFFE:
            raise WorklistFileError("misplaced item delimiter")
        pos = _element_end(data, pos, end, implicit, order)[0]
    if in_item:
        raise WorklistFileError("sequence item not terminated")
    return pos


def _walk_items(data: bytes, pos: int, end: int, implicit: bool, order: str) -> int:
    while True:
        if pos + 8 > end:
            raise WorklistFileError("sequence not terminated")
        group, element, length = struct.unpack_from(order + "HHI", data, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise WorklistFileError("bad sequence item")
        if length == _UNDEFINED:
            pos = _walk(data, pos, end, implicit, order, True)
        elif pos + length > end:
            raise WorklistFileError("truncated sequence item")
        else:
            pos += length


# --------------------------------------------------------------------------- reading


def parse_worklist(data: bytes) -> Attrs:
    """The flattened dataset of a .wl file's bytes; WorklistFileError if it is not one."""
    if not data:
        raise WorklistFileError("empty file")
    try:
        attrs = read_fast(data)
    except _Unsupported:
        return parse_worklist_pydicom(data)
    if not any(dictionary_has_tag(tag) for tag in attrs):
        raise WorklistFileError("no standard DICOM attribute: not a worklist")
    return attrs


def parse_worklist_pydicom(data: bytes) -> Attrs:
    """:func:`parse_worklist` by pydicom only (the reference the fast reader agrees with)."""
    if not data:
        raise WorklistFileError("empty file")
    try:
        check_structure(data)
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        attrs = attrs_from_dataset(ds)
    except WorklistFileError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on bad input
        raise WorklistFileError(f"not readable DICOM ({type(e).__name__}: {str(e)[:80]})") from None
    # force=True turns any bytes into "elements"; a worklist has standard attributes.
    if not any(dictionary_has_tag(tag) for tag in attrs):
        raise WorklistFileError("no standard DICOM attribute: not a worklist")
    return attrs


def read_fast(data: bytes) -> dict:
    """The attribute map of a Part-10 Little Endian file; :class:`_Unsupported` for
    anything else, and for anything odd in it (the pydicom reader then decides, with its
    own error message if the file is bad)."""
    end = len(data)
    if end < 132 or data[128:132] != b"DICM":
        raise _Unsupported
    pos, syntax = 132, None
    try:
        while pos + 8 <= end and data[pos:pos + 2] == b"\x02\x00":
            element = _UNPACK_U16(data, pos + 2)[0]
            vr = data[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                length, value_at = _UNPACK_U32(data, pos + 8)[0], pos + 12
            else:
                length, value_at = _UNPACK_U16(data, pos + 6)[0], pos + 8
            if length == _UNDEFINED or value_at + length > end:
                raise _Unsupported
            if element == 0x0010:
                syntax = data[value_at:value_at + length].rstrip(b"\0 ").decode("ascii")
            pos = value_at + length
    except (struct.error, UnicodeDecodeError):
        raise _Unsupported from None
    if syntax == EXPLICIT_LE:
        implicit = False
    elif syntax == IMPLICIT_LE:
        implicit = True
    else:
        raise _Unsupported
    try:
        attrs, _ = _Reader(data, implicit).dataset(pos, end, None, in_item=False)
    except (struct.error, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise _Unsupported from None
    return attrs


class _Reader:
    """One file's elements into an attribute map (see :func:`read_fast`)."""

    def __init__(self, data: bytes, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit

    def dataset(self, pos: int, end: int, encodings: list[str] | None, *,
                in_item: bool) -> tuple[dict, int]:
        data, implicit = self.data, self.implicit
        values_of_element = self.values
        out: dict = {}
        previous = -1
        while pos < end:
            if pos + 8 > end:
                raise _Unsupported
            group, element, vr_bytes, length = _UNPACK_HEADER(data, pos)
            tag = group << 16 | element
            if group == 0xFFFE:
                if tag == _ITEM_END and in_item:
                    return out, pos + 8
                raise _Unsupported
            if tag <= previous:
                raise _Unsupported  # out of order or repeated: pydicom's rules apply
            previous = tag
            if implicit:
                if group & 1:
                    raise _Unsupported  # private: pydicom guesses its VR
                length, value_at = _UNPACK_U32(data, pos + 4)[0], pos + 8
                vr = dictionary_VR(tag) if element else "UL"
                if vr not in _KNOWN_VRS:
                    raise _Unsupported  # ambiguous ("US or SS"): pydicom resolves it
            else:
                info = _VR_INFO.get(vr_bytes)
                if info is None:
                    raise _Unsupported  # unknown, or UN that pydicom may reinterpret
                vr, long_length = info
                if long_length:
                    length, value_at = _UNPACK_U32(data, pos + 8)[0], pos + 12
                else:
                    value_at = pos + 8
            if vr == "SQ":
                if element == 0 or group in (0x0000, 0x0002):
                    raise _Unsupported
                items, pos = self.sequence(value_at, end, length, encodings)
                out[tag] = ("SQ", items, ())
                continue
            if length == _UNDEFINED or value_at + length > end:
                raise _Unsupported
            pos = value_at + length
            if group in (0x0000, 0x0002) or element == 0:
                continue  # group lengths, File Meta, commands: not attributes
            values = values_of_element(tag, vr, data[value_at:pos], encodings)
            if values:
                norm = _NORMALISERS.get(vr)
                keys = (comparison_keys(vr, values) if norm is None or type(values[0]) is not str
                        else tuple(map(norm, values)))
                out[tag] = (vr, values, values if keys == values else keys)
            else:
                out[tag] = (vr, (), ())
            if tag == _SPECIFIC_CHARACTER_SET:
                if in_item:
                    raise _Unsupported  # a character set of its own in an item
                # Elements are in tag order: every text element comes after this one.
                encodings = self.encodings(values)
        if in_item:
            raise _Unsupported  # item without its delimiter
        return out, pos

    @staticmethod
    def encodings(terms: tuple) -> list[str] | None:
        """pydicom's encodings for a Specific Character Set value (as a dataset sets them:
        none, the parent's or the default, when it is empty)."""
        if not terms:
            return None
        return convert_encodings(terms[0] if len(terms) == 1 else list(terms))

    def sequence(self, pos: int, end: int, length: int,
                 encodings: list[str] | None) -> tuple[tuple, int]:
        data = self.data
        if length != _UNDEFINED:
            if pos + length > end:
                raise _Unsupported
            end = pos + length
        items = []
        while True:
            if pos + 8 > end:
                if length != _UNDEFINED and pos == end:
                    return tuple(items), pos
                raise _Unsupported
            group, element = _UNPACK_TAG(data, pos)
            item_length = _UNPACK_U32(data, pos + 4)[0]
            tag = group << 16 | element
            if tag == _SEQUENCE_END and length == _UNDEFINED:
                return tuple(items), pos + 8
            if tag != _ITEM:
                raise _Unsupported
            if item_length == _UNDEFINED:
                item, pos = self.dataset(pos + 8, end, encodings, in_item=True)
            else:
                item_end = pos + 8 + item_length
                if item_end > end:
                    raise _Unsupported
                item, pos = self.dataset(pos + 8, item_end, encodings, in_item=False)
            items.append(item)

    def values(self, tag: int, vr: str, raw: bytes, encodings: list[str] | None) -> tuple:
        if not raw:
            return ()
        if vr in _FAST_VRS and raw.isascii() and _ESC not in raw:
            text = raw.decode("ascii")
            if vr in _STRIP_END:
                parts = text.rstrip(" \0").split("\\")
            elif vr in _TEXT:
                parts = [p.rstrip("\0 ") for p in text.split("\\")]
            elif vr in _SINGLE:
                parts = [text.rstrip("\0 ")]
            elif vr == "PN":
                text = text.rstrip("\0 ")
                if "=" in text:
                    return self.converted(tag, vr, raw, encodings)  # component groups
                parts = text.split("\\")
            elif vr == "UI":
                parts = text.rstrip("\0 ").split("\\")
            else:  # AE
                parts = [p.strip() for p in text.split("\\")]
            if len(parts) == 1:
                return (parts[0],) if parts[0] else ()
            return tuple(parts)
        return self.converted(tag, vr, raw, encodings)

    def converted(self, tag: int, vr: str, raw: bytes, encodings: list[str] | None) -> tuple:
        """The values pydicom's converter for ``vr`` gives (as attrs_from_dataset keeps them)."""
        element = RawDataElement(tag, vr, len(raw), raw, 0, self.implicit, True, True, False)
        return values_of(convert_value(vr, element, encodings or None))
