"""The header of a plain DICOM object, read straight from its bytes.

At ingest every object's header becomes an index record and its DICOM JSON
(PS3.18 Annex F).  Through pydicom that costs about 1.5 ms for a 50-element
ultrasound header: a Dataset is built, each element converted through the
value-representation machinery, then converted again to JSON.  That is a
quarter of the CPU time an image costs, spent under the GIL on the thread
that receives the image.

:func:`read` walks the bytes once and builds the same record values and the
same JSON directly, for the headers it fully understands: little endian
(explicit or implicit VR), the default, Latin-1 or UTF-8 character sets, no
escape sequences, no UN elements, tags in ascending order, nesting at most
:data:`MAX_DEPTH` deep.  For anything else it returns None and the caller uses
pydicom (:mod:`appliance.dicomfile.header`), which remains the reference: every
rule below mirrors what pydicom 3 and :mod:`appliance.dicomfile.dicomjson` do with the
same bytes (the value converters in ``pydicom.values``), and
``tests/store/test_fastheader.py`` checks the two agree, record and JSON, on
every test file.

Pure module: no I/O, no logging, no module state.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR

from appliance.dicomfile import dicomjson
from appliance.dicomfile.columns import COLUMNS, INTEGER_COLUMNS, TEXT_COLUMNS, UID_KEYWORDS
from appliance.dicomfile.header import DEFER_SIZE, PIXEL_DATA_TAG, UNDEFINED_LENGTH, PixelElement
from appliance.dicomfile.syntax import EXPLICIT_LE, IMPLICIT_LE
from appliance.dicomfile.vr import BINARY_VRS, LONG_VRS, is_valid_uid

__all__ = ["MAX_DEPTH", "Plain", "read"]

#: Deepest sequence nesting read here; deeper headers go to pydicom.
MAX_DEPTH = 16

_PREAMBLE = 128
_FLOAT_PIXEL_TAGS = (0x7FE00008, 0x7FE00009)
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_CHARSET = 0x00080005
# Little-endian transfer syntaxes whose data set is plain explicit VR
# (the encapsulated ones differ only in the pixel data).  Deflated and big
# endian are left to pydicom.
_EXPLICIT_SYNTAXES = frozenset({
    EXPLICIT_LE,
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101",
    "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104",
    "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107",
    "1.2.840.10008.1.2.4.108", "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111",
    "1.2.840.10008.1.2.4.112", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5",
})  # fmt: skip

# pydicom decodes these with its default encoding whatever (0008,0005) says.
_DEFAULT_CHARSET_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "IS", "DS"})
# Text VRs decoded with (0008,0005): split on backslash ...
_MULTI_TEXT_VRS = frozenset({"SH", "LO", "UC"})
# ... or not (a backslash is just a character).
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
_NUMBERS = {
    "US": ("H", 2), "SS": ("h", 2), "UL": ("L", 4), "SL": ("l", 4),
    "UV": ("Q", 8), "SV": ("q", 8), "FL": ("f", 4), "FD": ("d", 8),
}  # fmt: skip
_KNOWN_VRS = (LONG_VRS | _DEFAULT_CHARSET_VRS | _MULTI_TEXT_VRS | _SINGLE_TEXT_VRS
              | set(_NUMBERS) | {"PN", "AT"}) - {"UN"}
# (0008,0005) values pydicom maps to one Python codec (pydicom.charset).
_CODECS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_DEFAULT_CODEC = "latin_1"  # pydicom's default_encoding, "iso8859"
_BULK_THRESHOLD = DEFER_SIZE  # also dicomjson.dataset_to_json's default
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")

# Index columns read from the top level: keyword -> (tag, VR the value must have).
_TEXT_COLUMNS = {c.keyword: (c.tag, c.vr) for c in TEXT_COLUMNS}
_INT_COLUMNS = {c.keyword: (c.tag, c.vr) for c in INTEGER_COLUMNS}
# Implicit VR "US or SS" elements that pydicom resolves with the Pixel
# Representation (filewriter._AMBIGUOUS_US_SS_TAGS); only these are read here.
_PIXEL_REPRESENTATION = 0x00280103
_US_OR_SS_TAGS = frozenset({0x00280104, 0x00280105, 0x00280106, 0x00280107, 0x00280108,
                            0x00280109, 0x00280110, 0x00280111, 0x00280120, 0x00280121})
_COLUMN_TAGS = frozenset(c.tag for c in COLUMNS)


class _Unsupported(Exception):
    """Something pydicom should judge: the caller falls back to it."""


@dataclass(frozen=True)
class Plain:
    """What ingest needs from a header read here."""

    transfer_syntax_uid: str
    text: dict[str, str | None]     # keyword -> the value archive._text would give
    ints: dict[str, int | None]     # keyword -> the value archive._int would give
    metadata: dict[str, Any]        # the DICOM JSON, as dicomjson.dataset_to_json
    pixel: PixelElement

    def uids(self) -> dict[str, str]:
        """The four UIDs by keyword (all present and valid, or read() said None)."""
        return {kw: self.text[kw] for kw in UID_KEYWORDS}  # type: ignore[misc]


def read(buf: bytes | memoryview) -> Plain | None:
    """The header of the Part-10 object that ``buf`` begins with, or None.

    None means: not a header this module reads (see the module docstring),
    or not whole yet (the Pixel Data element has not begun in ``buf``), or a
    required UID is missing or invalid; pydicom then reads the object and
    says what, if anything, is wrong with it.
    """
    try:
        return _Walker(bytes(buf)).plain()
    except (_Unsupported, struct.error, UnicodeDecodeError, IndexError, ValueError):
        return None


class _Walker:
    """One pass over the header bytes, building the JSON as it goes."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.implicit = False
        self.codec = _DEFAULT_CODEC
        self.text_seen = False      # a text element came before (0008,0005)
        self.columns: dict[int, list[Any]] = {}
        self.pixel_representation: int | None = None  # top level's, once read

    def plain(self) -> Plain | None:
        buf = self.buf
        if buf[_PREAMBLE:_PREAMBLE + 4] != b"DICM":
            raise _Unsupported
        tsuid, pos = self._file_meta(_PREAMBLE + 4)
        if tsuid == IMPLICIT_LE:
            self.implicit = True
        elif tsuid not in _EXPLICIT_SYNTAXES:
            raise _Unsupported
        metadata, pixel, _, _ = self._dataset(pos, len(buf), (), 0, top=True)
        if pixel is None:
            return None
        metadata["7FE00010"] = {"vr": pixel.vr, "BulkDataURI": dicomjson.default_bulk_uri((PIXEL_DATA_TAG,))}
        text = {kw: self._text(tag, vr) for kw, (tag, vr) in _TEXT_COLUMNS.items()}
        if not all(is_valid_uid(text[kw]) for kw in UID_KEYWORDS):
            return None
        ints = {kw: self._int(tag, vr) for kw, (tag, vr) in _INT_COLUMNS.items()}
        return Plain(tsuid, text, ints, metadata, pixel)

    # -- structure -------------------------------------------------------

    def _file_meta(self, pos: int) -> tuple[str, int]:
        """The transfer syntax and the end of group 0002 (always explicit VR LE)."""
        tsuid = None
        buf = self.buf
        while pos + 8 <= len(buf) and buf[pos:pos + 2] == b"\x02\x00":
            tag, vr, length, pos = self._element_header(pos, explicit=True)
            if length == UNDEFINED_LENGTH:
                raise _Unsupported
            if tag == 0x00020010:
                tsuid = buf[pos:pos + length].decode(_DEFAULT_CODEC).rstrip("\0 ")
            pos += length
        if tsuid is None:
            raise _Unsupported
        return tsuid, pos

    def _element_header(self, pos: int, explicit: bool) -> tuple[int, str, int, int]:
        """(tag, VR, length, value position) of the element at ``pos``."""
        buf = self.buf
        group, element = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | element
        if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
            return tag, "", struct.unpack_from("<L", buf, pos + 4)[0], pos + 8
        if explicit:
            vr = buf[pos + 4:pos + 6].decode("ascii")
            if vr not in _KNOWN_VRS:
                raise _Unsupported  # UN (pydicom may re-read it by dictionary) or garbage
            if vr in LONG_VRS:
                return tag, vr, struct.unpack_from("<L", buf, pos + 8)[0], pos + 12
            return tag, vr, struct.unpack_from("<H", buf, pos + 6)[0], pos + 8
        length = struct.unpack_from("<L", buf, pos + 4)[0]
        if group & 1 or element == 0:
            if element == 0:
                return tag, "UL", length, pos + 8  # group length, never in the JSON
            raise _Unsupported  # private: pydicom looks the VR up by its creator
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            raise _Unsupported from None
        if vr == "US or SS" and tag in _US_OR_SS_TAGS and self.pixel_representation is not None:
            vr = "SS" if self.pixel_representation else "US"
        if vr not in _KNOWN_VRS:
            raise _Unsupported  # "OB or OW", "US or SS", ...: pydicom's rules
        return tag, vr, length, pos + 8

    def _dataset(self, pos: int, end: int, path: tuple[int, ...], depth: int,
                 top: bool = False) -> tuple[dict[str, Any], PixelElement | None, int, bool]:
        """(JSON, Pixel Data element, end, delimited) of the elements from
        ``pos`` to ``end`` or to an item delimiter (``delimited``).  The top
        level stops at Pixel Data; None for it there means "not whole yet"."""
        buf, result, last = self.buf, {}, -1
        explicit = not self.implicit
        while pos < end:
            if pos + 8 > len(buf):
                if top:
                    return result, None, pos, False  # not whole yet
                raise _Unsupported
            if top:
                group, element = struct.unpack_from("<HH", buf, pos)
                tag = group << 16 | element
                if tag == PIXEL_DATA_TAG:
                    return result, self._pixel(pos), pos, False
                if tag in _FLOAT_PIXEL_TAGS:
                    raise _Unsupported
            tag, vr, length, at = self._element_header(pos, explicit)
            if tag == _ITEM_END and not top:
                return result, None, at, True
            if tag <= last or tag >> 16 == 0xFFFE:
                raise _Unsupported  # out of order, repeated, or a stray delimiter
            last = tag
            if vr == "SQ":
                result[f"{tag:08X}"], pos = self._sequence(at, length, path + (tag,), depth + 1)
                continue
            if length == UNDEFINED_LENGTH or at + length > len(buf):
                if top and length != UNDEFINED_LENGTH:
                    return result, None, pos, False  # not whole yet
                raise _Unsupported
            pos = at + length
            if tag == _CHARSET:
                self._charset(at, length, top)
            if tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002):
                continue  # F.2.2: no group lengths, no meta or command groups
            value = self._value(tag, vr, at, length, path + (tag,))
            if top and tag == _PIXEL_REPRESENTATION and vr == "US" and value[1] in ([0], [1]):
                self.pixel_representation = value[1][0]
            if top and tag in _COLUMN_TAGS:
                self.columns[tag] = [vr, value[1]]
            result[f"{tag:08X}"] = value[0]
        return result, None, pos, False

    def _sequence(self, pos: int, length: int, path: tuple[int, ...],
                  depth: int) -> tuple[dict[str, Any], int]:
        """(JSON, end) of a sequence whose first item is at ``pos``."""
        if depth > MAX_DEPTH:
            raise _Unsupported
        undefined = length == UNDEFINED_LENGTH
        end = len(self.buf) if undefined else pos + length
        if end > len(self.buf):
            raise _Unsupported
        items: list[dict[str, Any]] = []
        while True:
            if pos == end:
                if undefined:
                    raise _Unsupported  # no sequence delimiter: cut short
                break
            tag, _, item_length, at = self._element_header(pos, explicit=True)
            if tag == _SEQUENCE_END and undefined:
                pos = at
                break
            if tag != _ITEM:
                raise _Unsupported
            open_ended = item_length == UNDEFINED_LENGTH
            item_end = end if open_ended else at + item_length
            if item_end > end:
                raise _Unsupported
            item, _, pos, delimited = self._dataset(at, item_end, path + (len(items),), depth)
            if delimited != open_ended or (not open_ended and pos != item_end):
                raise _Unsupported  # an item that does not end where it says
            items.append(item)
        # F.2.5: an empty sequence has no "Value"; an empty item is {}.
        return ({"vr": "SQ", "Value": items} if items else {"vr": "SQ"}), pos

    def _pixel(self, pos: int) -> PixelElement:
        """The top-level Pixel Data element (as header._pixel_element reads it)."""
        buf = self.buf
        if self.implicit:
            return PixelElement("OW", struct.unpack_from("<L", buf, pos + 4)[0], pos + 8)
        vr = buf[pos + 4:pos + 6].decode("ascii")
        if vr not in ("OB", "OW") or pos + 12 > len(buf):
            raise _Unsupported
        return PixelElement(vr, struct.unpack_from("<L", buf, pos + 8)[0], pos + 12)

    def _charset(self, at: int, length: int, top: bool) -> None:
        if not top or self.text_seen:
            raise _Unsupported  # a change of character set inside an item, or text before it
        value = self.buf[at:at + length].decode(_DEFAULT_CODEC).rstrip(" \x00")
        codec = _CODECS.get(value)
        if codec is None:
            raise _Unsupported  # ISO 2022 code extensions, other sets
        self.codec = codec

    # -- values ----------------------------------------------------------

    def _value(self, tag: int, vr: str, at: int, length: int,
               path: tuple[int, ...]) -> tuple[dict[str, Any], Any]:
        """(JSON attribute, what pydicom would hold as the value: a str, a
        list of them, or a list of numbers) of one non-SQ element."""
        if length == 0:
            return {"vr": vr}, ""  # F.2.5: present but empty
        if vr in BINARY_VRS or (vr in dicomjson._BULK_ALLOWED_VRS and length > _BULK_THRESHOLD):
            return {"vr": vr, "BulkDataURI": dicomjson.default_bulk_uri(path)}, None
        raw = self.buf[at:at + length]
        number = _NUMBERS.get(vr)
        if number is not None:
            code, size = number
            if length % size:
                raise _Unsupported
            values = list(struct.unpack(f"<{length // size}{code}", raw))
            if vr in ("FL", "FD") and not all(math.isfinite(v) for v in values):
                return {"vr": vr, "BulkDataURI": dicomjson.default_bulk_uri(path)}, None
            return {"vr": vr, "Value": values}, values
        if vr == "AT":
            if length % 4:
                raise _Unsupported
            pairs = struct.unpack(f"<{length // 2}H", raw)
            tags = [f"{pairs[i] << 16 | pairs[i + 1]:08X}" for i in range(0, len(pairs), 2)]
            return {"vr": vr, "Value": tags}, tags
        if b"\x1b" in raw:
            raise _Unsupported  # escape sequences: pydicom's ISO 2022 decoding
        strings = self._strings(vr, raw)
        if len(strings) == 1 and not strings[0]:
            return {"vr": vr}, ""  # pydicom's value is "": empty, F.2.5
        if vr in ("IS", "DS"):
            numbers = [dicomjson._number_string(s, vr) for s in strings]
            if any(isinstance(n, str) for n in numbers):
                raise _Unsupported  # invalid numbers: pydicom's retries decide
            return {"vr": vr, "Value": numbers}, numbers
        if vr == "PN":
            # str(PersonName) drops empty trailing groups: "A^B==" is "A^B".
            names = [_person_name(s) for s in strings]
            return {"vr": vr, "Value": names}, [s.rstrip("=") for s in strings]
        return {"vr": vr, "Value": [s or None for s in strings]}, strings

    def _strings(self, vr: str, raw: bytes) -> list[str]:
        """The decoded values of a string element, split and stripped exactly as
        pydicom.values does for that VR."""
        if vr in _DEFAULT_CHARSET_VRS:
            text = raw.decode(_DEFAULT_CODEC)
            if vr == "AE":  # convert_AE_string
                return [s.strip() for s in text.split("\\")]
            if vr == "UR":  # convert_UR_string: one value
                return [text.rstrip()]
            if vr == "DS":  # convert_DS_string strips both ends first
                text = text.strip()
            return text.rstrip(" \x00").split("\\")  # multi_string
        self.text_seen = True
        if vr == "PN":  # convert_PN
            return raw.rstrip(b"\x00 ").decode(self.codec).split("\\")
        text = raw.decode(self.codec)
        if vr in _SINGLE_TEXT_VRS:  # convert_single_string
            return [text.rstrip("\0 ")]
        return [s.rstrip("\0 ") for s in text.split("\\")]  # convert_text

    # -- index columns (archive._text and archive._int) ------------------

    def _column(self, tag: int, vr: str) -> Any:
        found = self.columns.get(tag)
        if found is None:
            return None
        if found[0] != vr or found[1] is None:
            raise _Unsupported  # an odd VR or a bulk value: pydicom's conversion decides
        return found[1]

    def _text(self, tag: int, vr: str) -> str | None:
        value = self._column(tag, vr)
        if value is None:
            return None
        if isinstance(value, list):
            value = "\\".join(value)
        return value.strip().strip("\x00") or None

    def _int(self, tag: int, vr: str) -> int | None:
        value = self._column(tag, vr)
        if value is None or value == "":
            return None
        if len(value) != 1:
            return None  # int() of a multi-value fails: absent
        return None if value[0] is None else int(value[0])


def _person_name(text: str) -> dict[str, str] | None:
    """PS3.18 F.2.2: the non-empty component groups (dicomjson._person_name)."""
    if not text:
        return None
    groups = text.split("=")
    if len(groups) > 3:
        raise _Unsupported
    named = {name: group for name, group in zip(_PN_GROUPS, groups) if group}
    return named or None
