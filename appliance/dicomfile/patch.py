"""Replace a few top-level attributes of a Part-10 object in its bytes.

A patient fix changes about eight elements of a header of fifty, all in
groups 0008, 0010 and 0020 near the start of the data set (PS3.5 7.1: the
elements are in ascending tag order). Through pydicom each file costs a
parse and a re-encoding of the whole header, most of a fix's CPU time.
:func:`patch` copies the bytes of every other element as they are, writes the
new values, and tells where the unchanged rest of the object (from the first
element past the last one replaced: the pixel data among it) starts, so the
caller copies that part as it is.

For the headers it fully understands only: little endian (explicit or
implicit VR), a file meta group without undefined lengths, no group length
element among the elements walked, values ASCII or the data set in UTF-8
(ISO_IR 192). For anything else it returns None and the caller uses pydicom.

Pure module: no I/O, no logging, no module state.
"""

from __future__ import annotations

import struct

from pydicom.datadict import dictionary_VR

from appliance.dicomfile.header import UNDEFINED_LENGTH
from appliance.dicomfile.syntax import DEFLATED, EXPLICIT_BE, IMPLICIT_LE, is_known
from appliance.dicomfile.vr import LONG_VRS

__all__ = ["patch"]

_PREAMBLE = 128
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MEDIA_SOP_INSTANCE = 0x00020003
_CHARSET = 0x00080005
_DEPTH = 16


class _Unsupported(Exception):
    pass


def patch(head: bytes, values: dict[int, str], sop_instance_uid: str) -> tuple[bytes, int] | None:
    """(new start of the object, offset in the old one where the rest follows
    unchanged), with ``values`` (tag -> new text value, tags of groups above
    0002) set and MediaStorageSOPInstanceUID = ``sop_instance_uid``; None when
    ``head`` (the object's first bytes) is not a header handled here or does
    not reach past the last tag replaced."""
    try:
        return _patch(memoryview(head), values, sop_instance_uid)
    except (_Unsupported, struct.error, UnicodeError, IndexError, KeyError, ValueError):
        return None


def _patch(buf: memoryview, values: dict[int, str], sop_uid: str) -> tuple[bytes, int]:
    if bytes(buf[_PREAMBLE:_PREAMBLE + 4]) != b"DICM":
        raise _Unsupported
    meta, tsuid, pos = _file_meta(buf, _PREAMBLE + 4, sop_uid)
    if tsuid == EXPLICIT_BE or tsuid in DEFLATED or not is_known(tsuid):
        raise _Unsupported
    explicit = tsuid != IMPLICIT_LE
    last = max(values)
    out = [bytes(buf[:_PREAMBLE + 4]), meta]
    pending = sorted(values.items())
    utf8 = False
    while pending or pos < len(buf) and _tag(buf, pos) <= last:
        tag = _tag(buf, pos) if pos + 8 <= len(buf) else None
        if tag is None:
            raise _Unsupported  # the head ends before the last tag replaced
        while pending and pending[0][0] < tag:
            new_tag, text = pending.pop(0)
            out.append(_element(new_tag, text, explicit, utf8))
        end, value_at, length = _skip(buf, pos, explicit, 0)
        if tag & 0xFFFF == 0:
            raise _Unsupported  # a group length the change would make wrong
        if tag == _CHARSET:
            charset = bytes(buf[value_at:value_at + length]).decode("ascii").strip(" \0")
            utf8 = charset == "ISO_IR 192"
            if charset not in ("", "ISO_IR 6", "ISO_IR 192") and not all(
                    v.isascii() for v in values.values()):
                raise _Unsupported  # another character set: pydicom re-encodes
        if pending and pending[0][0] == tag:
            out.append(_element(tag, pending.pop(0)[1], explicit, utf8))
        else:
            out.append(bytes(buf[pos:end]))
        pos = end
    if not utf8 and not all(v.isascii() for v in values.values()):
        raise _Unsupported  # no character set named, text not ASCII: pydicom sets one
    return b"".join(out), pos


def _tag(buf: memoryview, pos: int) -> int:
    group, element = struct.unpack_from("<HH", buf, pos)
    return group << 16 | element


def _file_meta(buf: memoryview, pos: int, sop_uid: str) -> tuple[bytes, str, int]:
    """Group 0002 again with the new MediaStorageSOPInstanceUID and its group
    length; the transfer syntax; where the data set starts."""
    elements: list[bytes] = []
    tsuid = None
    while pos + 8 <= len(buf) and bytes(buf[pos:pos + 2]) == b"\x02\x00":
        tag = _tag(buf, pos)
        end, value_at, length = _skip(buf, pos, True, _DEPTH)  # no nesting in group 0002
        if tag == 0x00020010:
            tsuid = bytes(buf[value_at:value_at + length]).decode("ascii").strip("\0 ")
        if tag == _MEDIA_SOP_INSTANCE:
            elements.append(_element(tag, sop_uid, True, False))
        elif tag != 0x00020000:
            elements.append(bytes(buf[pos:end]))
        pos = end
    if tsuid is None:
        raise _Unsupported
    body = b"".join(elements)
    group_length = struct.pack("<HH2sHL", 2, 0, b"UL", 4, len(body))
    return group_length + body, tsuid, pos


def _skip(buf: memoryview, pos: int, explicit: bool, depth: int) -> tuple[int, int, int]:
    """(end, value position, value length) of the element at ``pos``, nested
    sequences of undefined length walked to their delimiter."""
    tag = _tag(buf, pos)
    vr = None
    if explicit and tag not in (_ITEM, _ITEM_END, _SEQUENCE_END):
        vr = bytes(buf[pos + 4:pos + 6]).decode("ascii")
        if vr in LONG_VRS:
            (length,), at = struct.unpack_from("<L", buf, pos + 8), pos + 12
        else:
            (length,), at = struct.unpack_from("<H", buf, pos + 6), pos + 8
    else:
        (length,), at = struct.unpack_from("<L", buf, pos + 4), pos + 8
    if length != UNDEFINED_LENGTH:
        if at + length > len(buf):
            raise _Unsupported
        return at + length, at, length
    if depth >= _DEPTH or tag == 0x7FE00010:
        raise _Unsupported
    if vr not in (None, "SQ") or (vr is None and tag != _ITEM and dictionary_VR(tag) != "SQ"):
        raise _Unsupported  # UN of undefined length, or not a sequence
    closing = _ITEM_END if tag == _ITEM else _SEQUENCE_END
    inner = at
    # An item's elements are in the data set's encoding; a sequence holds items.
    while _tag(buf, inner) != closing:
        inner, _, _ = _skip(buf, inner, explicit, depth + 1)
    return inner + 8, at, inner - at


def _element(tag: int, text: str, explicit: bool, utf8: bool) -> bytes:
    """One short-VR text element (PN, LO, DA, CS, SH, UI) padded to even length."""
    vr = dictionary_VR(tag)
    if vr in LONG_VRS or len(vr) != 2:
        raise _Unsupported
    value = text.encode("utf-8" if utf8 else "ascii")
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    if explicit:
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(value)) + value
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value
