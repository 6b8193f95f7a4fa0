"""Media types and transfer syntaxes of DICOMweb responses (PS3.18 8.7), pure.

Parses ``Accept`` values into :class:`MediaRange` lists and decides, for each
kind of WADO resource, which representation to send: the stored bytes, a
transcoding to Explicit VR Little Endian, or nothing (406).
"""

from __future__ import annotations

import re

from appliance.dicomfile.syntax import (
    EXPLICIT_LE, IMPLICIT_LE, is_encapsulated, is_lossy, is_video,
)
from appliance.lazyclasses import lazy_dataclass

__all__ = [
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "MediaRange",
    "Representation",
    "choose_bulk",
    "choose_dicom",
    "choose_frames",
    "choose_json",
    "choose_rendered",
    "frame_media_type",
    "is_encapsulated",
    "is_lossy",
    "is_video",
    "parse_accept",
    "parse_media_type",
]

OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"

# PS3.18 Table 8.7.3-5: the media type of one compressed frame (or of the whole
# video stream) for each encapsulated transfer syntax.
_FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K (PS3.18 2023+)
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
def frame_media_type(ts: str) -> str:
    """The media type of one stored frame: its bitstream type, or octet-stream."""
    return _FRAME_MEDIA.get(ts, OCTET_STREAM)


@lazy_dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept value.

    ``media_type`` is lower case; for ``multipart/related`` it is the value of
    the ``type`` parameter (``*/*`` when absent) and ``multipart`` is True.
    ``transfer_syntax`` is None when not given, ``"*"`` for any.
    """

    media_type: str
    multipart: bool
    transfer_syntax: str | None = None
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        """True if this range accepts the concrete ``media_type``."""
        if self.media_type == "*/*":
            return True
        if self.media_type.endswith("/*"):
            return media_type.split("/")[0] == self.media_type[:-2]
        return self.media_type == media_type


@lazy_dataclass(frozen=True)
class Representation:
    """What to send: ``media_type`` in ``transfer_syntax``; ``stored`` means the
    stored bytes as they are, else a conversion; ``multipart`` is the client's wish."""

    media_type: str
    transfer_syntax: str
    stored: bool
    multipart: bool = True

    @property
    def content_type(self) -> str:
        """The Content-Type of one part."""
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


_SPLIT_COMMAS = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_SPLIT_SEMIS = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and its parameters (names lower case,
    quotes removed) from one media type as in Content-Type (RFC 7231 3.1.1.1)."""
    pieces = _SPLIT_SEMIS.split(value)
    media = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, val = piece.partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1].replace('\\"', '"')
        params.setdefault(name.strip().lower(), val)
    return media, params


def parse_accept(values: list[str] | tuple[str, ...]) -> list[MediaRange]:
    """The media ranges of Accept header values, best first (q, then order).

    An absent or empty Accept means ``*/*`` (RFC 7231 5.3.2). Ranges with
    ``q=0`` are dropped; an unreadable q counts as 1.
    """
    ranges: list[tuple[float, int, MediaRange]] = []
    for value in values:
        for item in _SPLIT_COMMAS.split(value):
            if not item.strip():
                continue
            media, params = parse_media_type(item)
            if "/" not in media:
                continue
            try:
                q = float(params.get("q", "1"))
            except ValueError:
                q = 1.0
            if not q > 0:
                continue
            ts = params.get("transfer-syntax")
            ts = ts.strip() if ts is not None else None
            if media == "multipart/related":
                inner = params.get("type", "*/*").strip().lower() or "*/*"
                ranges.append((q, len(ranges), MediaRange(inner, True, ts or None, q)))
            else:
                # A wildcard names no single-part type: the resource's default
                # (multipart for WADO-RS) applies.
                ranges.append((q, len(ranges), MediaRange(media, "*" in media, ts or None, q)))
    if not ranges:
        return [MediaRange("*/*", True)]
    ranges.sort(key=lambda r: (-r[0], r[1]))
    return [r[2] for r in ranges]


def choose_dicom(ranges: list[MediaRange], stored_ts: str, *,
                 can_transcode: bool) -> Representation | None:
    """How to send a whole instance stored in ``stored_ts`` (PS3.18 8.7.3.4), or None.

    ``transfer-syntax=*`` or the stored syntax: the stored bytes. Explicit VR
    Little Endian: transcoded when ``can_transcode``. No transfer syntax named:
    the default, Explicit VR Little Endian (PS3.18 8.7.3.4 and Orthanc's DICOMweb
    plugin >= 1.5), *except* for lossy-compressed pixel data, which Note 2 of
    8.7.3.4 lets us return as stored: most ultrasound is JPEG baseline, and
    decompressing it would only make the answer ten times larger without
    restoring anything. Also as stored when no decoder can transcode it.
    """
    for r in ranges:
        if not r.matches(DICOM):
            continue
        ts = r.transfer_syntax
        if ts == "*" or ts == stored_ts:
            return Representation(DICOM, stored_ts, True, r.multipart)
        if ts is None:
            if stored_ts == EXPLICIT_LE or is_lossy(stored_ts) or not can_transcode:
                return Representation(DICOM, stored_ts, True, r.multipart)
            return Representation(DICOM, EXPLICIT_LE, False, r.multipart)
        if ts == EXPLICIT_LE and can_transcode:
            return Representation(DICOM, EXPLICIT_LE, False, r.multipart)
    return None


def choose_frames(ranges: list[MediaRange], stored_ts: str, *,
                  can_decode: bool) -> Representation | None:
    """How to send frames (or the pixel data) of an instance in ``stored_ts``.

    Native pixel data: little endian octets, application/octet-stream (PS3.18
    8.7.3.3.1; byte-swapped when stored big endian). Encapsulated: ``stored``
    True sends each frame's bitstream as stored, with its PS3.18 Table 8.7.3-5
    media type; ``stored`` False decodes it to octets. ``transfer-syntax=*`` (as
    OHIF asks) means the stored form whatever the media type; so does ``*/*``
    when no decoder can help.
    """
    if not is_encapsulated(stored_ts):
        # Little endian native frames are already what octet-stream means.
        octets = Representation(OCTET_STREAM, EXPLICIT_LE, stored_ts in (EXPLICIT_LE, IMPLICIT_LE))
        for r in ranges:
            if r.matches(OCTET_STREAM) and r.transfer_syntax in (None, "*", EXPLICIT_LE):
                return _with_multipart(octets, r)
        return None
    stored_media = frame_media_type(stored_ts)
    as_stored = Representation(stored_media, stored_ts, True)
    decoded = Representation(OCTET_STREAM, EXPLICIT_LE, False)
    for r in ranges:
        ts = r.transfer_syntax
        if ts == "*" and (r.matches(OCTET_STREAM) or r.matches(stored_media)):
            return _with_multipart(as_stored, r)
        if r.matches(OCTET_STREAM) and ts in (None, EXPLICIT_LE) and can_decode:
            return _with_multipart(decoded, r)
        if r.matches(stored_media) and ts in (None, stored_ts) and (
                r.media_type != "*/*" or not can_decode):
            # A compressed media type: the stored bitstream (we never re-encode).
            return _with_multipart(as_stored, r)
    return None


def _with_multipart(rep: Representation, r: MediaRange) -> Representation:
    return Representation(rep.media_type, rep.transfer_syntax, rep.stored, r.multipart)


def choose_bulk(ranges: list[MediaRange]) -> Representation | None:
    """A bulk data value other than pixel data: little endian octets (PS3.18 8.7.3.3.1)."""
    for r in ranges:
        if r.matches(OCTET_STREAM) and r.transfer_syntax in (None, "*", EXPLICIT_LE):
            return Representation(OCTET_STREAM, EXPLICIT_LE, True, r.multipart)
    return None


def choose_rendered(ranges: list[MediaRange]) -> str | None:
    """image/jpeg (the default, PS3.18 Table 8.7.4-1) or image/png, or None."""
    for r in ranges:
        for media in ("image/jpeg", "image/png"):
            if r.matches(media):
                return media
    return None


def choose_json(ranges: list[MediaRange]) -> bool:
    """True if the client accepts application/dicom+json (or plain JSON)."""
    return any(r.matches("application/dicom+json") or r.matches("application/json")
               for r in ranges)
