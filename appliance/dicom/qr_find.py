"""Query/Retrieve C-FIND SCP: Patient Root and Study Root (PS3.4 C.4.1, C.6.1, C.6.2).

The identifier is parsed into the protocol-neutral search model (appliance.query)
and run by the Archive: the same SQL as QIDO-RS (appliance.store.index.search),
no matcher of its own. What it does, by the standard:

* Levels PATIENT (Patient Root only), STUDY, SERIES, IMAGE; hierarchical search
  (PS3.4 C.4.1.2.2.1, C.4.1.3.1.1): the unique key of every level above the
  query level must be given with a single value (PatientID in Patient Root,
  StudyInstanceUID, SeriesInstanceUID), else the request fails with 0xA900
  Identifier Does Not Match SOP Class, naming the key.
* Keys of the query level and above (in Study Root the patient's keys belong to
  the study level, C.6.2.1) are matched: single value, wildcard (``*``, ``?``),
  lists of values, DA/TM/DT ranges, UID lists (C.2.2.2); PatientName (and every
  PN) case-insensitively unless CaseSensitivePN, like QIDO-RS. ModalitiesInStudy
  and SOPClassesInStudy match if one series / instance does (C.3.4). Keys that
  are not index columns match on the stored DICOM JSON of the instances below.
* Every requested key is in every answer, empty when unknown or of a lower level
  (C.4.1.1.3.2), as are Query/Retrieve Level and the Specific Character Set in
  which the answer is written: the one stored with the data (that of the first
  stored instance of the result) when it can write the answer's text, else
  ISO_IR 192. Computed keys (C.3.4): NumberOfPatientRelated*, NumberOfStudyRelated*,
  NumberOfSeriesRelatedInstances, ModalitiesInStudy, SOPClassesInStudy;
  RetrieveAETitle (ours) and InstanceAvailability (ONLINE) too.
* C-CANCEL ends the answers with Cancel (0xFE00); so does reaching Orthanc's
  LimitFindResults (LimitFindInstances at IMAGE level), as Orthanc answers.
* Access: Orthanc's DicomAlwaysAllowFind / AllowFind (dicom/policy.py); a refused
  AE gets 0x0124 Refused: Not Authorized and a log line.

On the fast path (dicom/tuning.py) answers are assembled as bytes and written by
:class:`~appliance.dicom.find_answers.DirectAnswers`, as the worklist's are; on
stock pynetdicom, or for an answer the byte writer cannot make (a character set
with code extensions, an unusual VR), pynetdicom encodes a pydicom Dataset.
One INFO line per query: peer, calling AET, model, level, matches, time; no
patient data.
"""

from __future__ import annotations

import functools
import json
import logging
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from pydicom.charset import convert_encodings, custom_encoders, encode_string
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import evt

from appliance.dicom.find_answers import DirectAnswers, status_dataset
from appliance.dicom.policy import Service
from appliance.dicom.services import UNCOMPRESSED, Caller, DimseService
from appliance.dicom.status import FindStatus
from appliance.lazyclasses import lazy_dataclass
from appliance.query import grammar
from appliance.query.keys import COMPUTED, INDEXED, MATCHABLE_COMPUTED, UNIQUE_KEYS, level_of
from appliance.query.model import MAX_ALTERNATIVES, Level, Match, MatchKind, Row, Search
from appliance.store import Archive
from appliance.worklist.encoded import Headers, NotEncodable

__all__ = ["FindLimits", "FindError", "PATIENT_ROOT_FIND", "QueryRetrieveFind", "STUDY_ROOT_FIND",
           "parse_identifier"]

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
# Information model: (name in logs and metrics, its top level).
_MODELS = {PATIENT_ROOT_FIND: ("Patient Root", Level.PATIENT),
           STUDY_ROOT_FIND: ("Study Root", Level.STUDY)}

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
_UTF8 = "ISO_IR 192"

# Answers are read from the index in pages of this many rows, so that a universal
# query over a large archive neither holds every row at once nor misses a C-CANCEL.
_PAGE = 500

_TEXT_VRS = frozenset("AE AS CS LO LT PN SH ST UC UR UT".split())
_INT_VRS = frozenset("IS US".split())
# VRs written with the answer's character set (PS3.5 6.1.2.3); the others are ASCII.
_CHARSET_VRS = frozenset("LO LT PN SH ST UC UT".split())
_ASCII_VRS = frozenset("AE AS CS DA DT TM UI UR IS DS".split())
_PACK_US = struct.Struct("<H").pack


class FindError(Exception):
    """A request that cannot be answered: its failure status, why, the key at fault."""

    def __init__(self, status: FindStatus, why: str, tag: int | None = None) -> None:
        super().__init__(why)
        self.status, self.why, self.tag = status, why, tag


@dataclass(frozen=True)
class FindLimits:
    """Orthanc's caps on C-FIND answers (0: none). Case of person names too."""

    results: int = 0        # LimitFindResults: PATIENT, STUDY, SERIES answers
    instances: int = 0      # LimitFindInstances: IMAGE answers
    case_sensitive_pn: bool = False  # CaseSensitivePN


@lazy_dataclass(frozen=True)
class Key:
    """One key of the request as answered: where its value comes from."""

    tag: int
    vr: str
    source: str   # "indexed", "computed", "metadata", "empty", "aet", "availability"


@lazy_dataclass(frozen=True)
class Query:
    """A parsed C-FIND identifier."""

    level: Level
    search: Search          # without limit/offset: the handler pages through it
    keys: tuple[Key, ...]   # ascending tags, Query/Retrieve Level and the charset excluded


# -- parsing --------------------------------------------------------------------


def _texts(value: Any) -> list[str]:
    """The values of an element as text, surrounding spaces dropped."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    return [str(v).strip() for v in items]


def _match(tag: int, vr: str, value: Any, fold_pn: bool) -> Match | None:
    """The match of one key's value; None for universal matching (PS3.4 C.2.2.2.3).
    Raises FindError for a value its VR's matching cannot take."""
    values = _texts(value)
    if not values or all(v in ("", "*") for v in values):
        return None
    if vr == "UI":  # C.2.2.2.2 List of UID Matching
        return Match(tag, vr, MatchKind.EXACT, tuple(v for v in values if v))
    if vr in grammar.DATE_TIME_VRS:  # C.2.2.2.5 Range Matching, or one value
        if len(values) == 1:
            text = values[0]
            if grammar.is_value(vr, text):
                return Match(tag, vr, MatchKind.VALUES, (text,))
            bounds = grammar.parse_range(vr, text)
            if bounds is not None:
                return Match(tag, vr, MatchKind.RANGE, bounds)
        raise FindError(FindStatus.UNABLE_TO_PROCESS, f"({tag >> 16:04X},{tag & 0xFFFF:04X}): "
                        f"not a {vr} value or range", tag)
    if vr in _INT_VRS and tag in INDEXED:
        try:
            return Match(tag, vr, MatchKind.EXACT, tuple(int(v) for v in values))
        except ValueError:
            raise FindError(FindStatus.UNABLE_TO_PROCESS,
                            f"({tag >> 16:04X},{tag & 0xFFFF:04X}): not an integer", tag) from None
    if vr in _TEXT_VRS:  # C.2.2.2.1 single value, C.2.2.2.4 wildcards, C.2.2.2.8 lists
        if len(values) > MAX_ALTERNATIVES:
            raise FindError(FindStatus.UNABLE_TO_PROCESS, f"({tag >> 16:04X},{tag & 0xFFFF:04X}): "
                            f"more than {MAX_ALTERNATIVES} values to match", tag)
        return Match(tag, vr, MatchKind.VALUES, tuple(v for v in values if v),
                     fold_case=fold_pn and vr == "PN")
    return None  # no matching on this VR: a return key only


def _single_value(ds: Dataset, tag: int) -> str | None:
    """The one value of a unique key of a level above the query level, or None if it
    is missing, empty, a list or a wildcard (PS3.4 C.4.1.2.2.1: single value matching)."""
    elem = ds.get(tag)
    values = _texts(elem.value) if elem is not None else []
    if len(values) != 1 or not values[0] or "*" in values[0] or "?" in values[0]:
        return None
    return values[0]


def parse_identifier(ds: Dataset, top: Level, *, fold_pn: bool) -> Query:
    """The query of a C-FIND identifier in the information model whose top level is
    ``top`` (PATIENT: Patient Root, STUDY: Study Root). Raises FindError."""
    elem = ds.get(QUERY_RETRIEVE_LEVEL)
    text = str(elem.value).strip().upper() if elem is not None and elem.value else ""
    try:
        level = Level(text)
    except ValueError:
        level = None
    if level is None or level.rank < top.rank:
        raise FindError(FindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                        f"Query/Retrieve Level {text[:16]!r} not of this model", QUERY_RETRIEVE_LEVEL)
    # PS3.4 C.4.1.2.2.1 / C.4.1.3.1.1: the unique keys of the levels above, single valued.
    above: dict[Level, str] = {}
    for upper in Level:
        if top.rank <= upper.rank < level.rank:
            value = _single_value(ds, UNIQUE_KEYS[upper])
            if value is None:
                name = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID",
                        Level.SERIES: "SeriesInstanceUID"}[upper]
                raise FindError(FindStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                                f"{name} must have one value at {level.value} level",
                                UNIQUE_KEYS[upper])
            above[upper] = value
    matches: list[Match] = []
    if Level.PATIENT in above:
        matches.append(Match(UNIQUE_KEYS[Level.PATIENT], "LO", MatchKind.EXACT,
                             (above[Level.PATIENT],)))
    keys: list[Key] = []
    computed: list[int] = []
    metadata: list[int] = []
    for elem in ds:
        tag = int(elem.tag)
        if tag >> 16 in (0x0000, 0x0002) or tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL) \
                or elem.tag.is_private:
            continue
        vr = str(elem.VR)
        if tag == RETRIEVE_AE_TITLE:
            keys.append(Key(tag, "AE", "aet"))
            continue
        if tag == INSTANCE_AVAILABILITY:
            keys.append(Key(tag, "CS", "availability"))
            continue
        at = level_of(tag)
        if at is not None and at.rank < top.rank:  # Study Root: the patient is in the study
            at = top
        if at is not None and at.rank > level.rank:
            keys.append(Key(tag, vr, "empty"))  # a lower level's key: nothing to say
            continue
        if tag in COMPUTED:
            keys.append(Key(tag, COMPUTED[tag].vr, "computed"))
            computed.append(tag)
            if tag not in MATCHABLE_COMPUTED:
                continue  # counts are return keys only (C.3.4)
        elif tag in INDEXED:
            vr = INDEXED[tag].vr
            keys.append(Key(tag, vr, "indexed"))
        elif vr == "SQ" or " or " in vr:
            keys.append(Key(tag, vr, "empty"))  # sequence matching is not supported
            continue
        else:
            keys.append(Key(tag, vr, "metadata"))
            metadata.append(tag)
        if at is not None and upper_unique(tag, above):
            continue  # already a condition of the search
        match = _match(tag, vr, elem.value, fold_pn)
        if match is not None:
            matches.append(match)
    search = Search(level=level, study_uid=above.get(Level.STUDY),
                    series_uid=above.get(Level.SERIES), matches=tuple(matches),
                    computed=tuple(sorted(set(computed))), metadata_tags=tuple(sorted(metadata)),
                    charset=True)
    return Query(level, search, tuple(sorted(keys, key=lambda k: k.tag)))


def upper_unique(tag: int, above: dict[Level, str]) -> bool:
    """True if ``tag`` is the unique key of a level above the query level."""
    return any(UNIQUE_KEYS[upper] == tag for upper in above)


# -- answers --------------------------------------------------------------------


def _metadata_values(text: str | None) -> tuple[str | None, list]:
    """(VR, values) of an attribute's stored DICOM JSON (PS3.18 F.2); PN values as
    "Alphabetic=Ideographic=Phonetic" strings, as pydicom writes them."""
    if not text:
        return None, []
    attribute = json.loads(text)
    values = []
    for value in attribute.get("Value") or []:
        if isinstance(value, dict):  # PN
            groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            while groups and not groups[-1]:
                groups.pop()
            value = "=".join(groups)
        values.append(value)
    return attribute.get("vr"), values


def answer_values(query: Query, row: Row, our_aet: str) -> list[tuple[int, str, list]]:
    """The answer's elements as (tag, VR, values), ascending, before encoding."""
    out: list[tuple[int, str, list]] = [(QUERY_RETRIEVE_LEVEL, "CS", [query.level.value])]
    for key in query.keys:
        vr, values = key.vr, []
        if key.source == "indexed":
            value = row.values.get(key.tag)
            values = [] if value is None or value == "" else [value]
        elif key.source == "computed":
            value = row.values.get(key.tag)
            if key.tag in MATCHABLE_COMPUTED:  # comma-separated distinct values
                values = sorted(set(filter(None, str(value or "").replace("\\", ",").split(","))))
            else:
                values = [] if value is None else [int(value)]
        elif key.source == "metadata":
            stored_vr, values = _metadata_values(row.metadata.get(key.tag))
            vr = stored_vr or vr
        elif key.source == "aet":
            values = [our_aet]
        elif key.source == "availability":
            values = ["ONLINE"]  # everything is on disk (PS3.4 C.4.1.1.3.2)
        out.append((key.tag, vr, values))
    out.sort(key=lambda e: e[0])
    return out


def answer_charset(elements: list[tuple[int, str, list]], stored: str | None) -> str | None:
    """The Specific Character Set of an answer: the stored data's when it can write every
    text value of the answer (or nothing needs more than ASCII), else ISO_IR 192."""
    texts = [str(v) for _, vr, values in elements if vr in _CHARSET_VRS for v in values]
    if all(t.isascii() for t in texts):
        return stored or None
    if stored:
        try:
            encodings = convert_encodings(stored.split("\\"))
            with warnings.catch_warnings():
                # pydicom warns, and writes replacement characters, for what a set cannot hold.
                warnings.simplefilter("error")
                for t in texts:
                    encode_string(t, encodings)
            return stored
        except (LookupError, UnicodeError, ValueError, UserWarning):
            pass
    return _UTF8


def answer_dataset(elements: list[tuple[int, str, list]], charset: str | None) -> Dataset:
    """The answer as a pydicom Dataset (stock pynetdicom encodes it)."""
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    for tag, vr, values in elements:
        if vr == "SQ":
            ds.add_new(tag, vr, [])
        elif not values:
            ds.add_new(tag, vr, None)
        else:
            ds.add_new(tag, vr, values[0] if len(values) == 1 else values)
    return ds


def answer_bytes(elements: list[tuple[int, str, list]], charset: str | None,
                 headers: Headers) -> bytes | None:
    """The answer encoded Little Endian (``headers``: implicit or explicit VR), byte for
    byte what pydicom writes for :func:`answer_dataset`; None when only pydicom can
    (a character set with code extensions, a binary VR other than US)."""
    codec = _codec(charset) if charset else "ascii"
    if codec is None:
        return None
    parts = []
    try:
        if charset:
            parts.append(headers.element(SPECIFIC_CHARACTER_SET, "CS", _pad(charset.encode("ascii"), b" ")))
        for tag, vr, values in elements:
            if vr == "US":
                data = b"".join(_PACK_US(int(v)) for v in values)
            elif vr == "SQ" and not values:
                data = b""
            elif vr in _CHARSET_VRS:
                data = _pad("\\".join(map(str, values)).encode(codec), b" ")
            elif vr in _ASCII_VRS:
                data = _pad("\\".join(map(str, values)).encode("ascii"),
                            b"\0" if vr == "UI" else b" ")
            else:
                return None
            parts.append(headers.element(tag, vr, data))
    except (UnicodeError, NotEncodable, ValueError):
        return None
    return b"".join(parts)


@functools.lru_cache(maxsize=32)
def _codec(charset: str) -> str | None:
    """Python's codec for a Specific Character Set of one stateless set; None for code
    extensions (ISO 2022) or a set pydicom encodes itself. Looked up once per set: the
    lookup was a third of an answer's encoding time."""
    encodings = convert_encodings(charset.split("\\"))
    if len(encodings) != 1 or encodings[0] in custom_encoders:
        return None
    return encodings[0]


def _pad(data: bytes, pad: bytes) -> bytes:
    return data + pad if len(data) % 2 else data


# -- the SCP --------------------------------------------------------------------


class QueryCounts:
    """C-FIND queries answered since start, by model, level and outcome (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}

    def add(self, model: str, level: str, outcome: str) -> None:
        """Count one query."""
        with self._lock:
            key = (model, level, outcome)
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> list[dict]:
        """[{"model", "level", "outcome", "count"}] for the status (JSON-able)."""
        with self._lock:
            return [{"model": m, "level": lv, "outcome": o, "count": n}
                    for (m, lv, o), n in sorted(self._counts.items())]


class QueryRetrieveFind:
    """The C-FIND SCP of the Patient Root and Study Root Q/R information models."""

    def __init__(self, archive: Archive, limits: FindLimits) -> None:
        self.archive = archive
        self.limits = limits
        self.counts = QueryCounts()

    def service(self) -> DimseService:
        """Its declaration (appliance.dicom.services)."""
        return DimseService("Query/Retrieve C-FIND", tuple(_MODELS), UNCOMPRESSED, (Service.FIND,),
                            {evt.EVT_C_FIND: self.find})

    def find(self, event, caller: Caller) -> Iterator[tuple]:
        """C-FIND (PS3.4 C.4.1.2): a Pending answer per match, then Success, Cancel or a failure."""
        started = time.monotonic()
        sop_class = str(event.request.AffectedSOPClassUID or event.context.abstract_syntax)
        model, top = _MODELS.get(sop_class, _MODELS[str(event.context.abstract_syntax)])
        peer, calling = caller.peer, caller.calling_aet
        if not caller.allowed:
            self.counts.add(model, "", "refused")
            log.warning("%s: C-FIND %s from %s refused: not allowed to query (AllowFind)",
                        peer, model, calling)
            yield status_dataset(FindStatus.REFUSED_NOT_AUTHORIZED, "this AE may not query"), None
            return
        limits = self.limits
        try:
            query = parse_identifier(event.identifier, top, fold_pn=not limits.case_sensitive_pn)
        except FindError as e:
            self.counts.add(model, "", "failed")
            log.warning("%s: C-FIND %s from %s failed: %s", peer, model, calling, e.why)
            yield status_dataset(e.status, e.why, offending=(e.tag,) if e.tag else ()), None
            return
        except Exception as e:  # noqa: BLE001 - pydicom's many decoding errors
            self.counts.add(model, "", "failed")
            log.warning("%s: C-FIND %s from %s: identifier not decodable: %s: %s", peer, model,
                        calling, type(e).__name__, str(e)[:200])
            yield status_dataset(FindStatus.UNABLE_TO_PROCESS, "identifier not decodable"), None
            return
        cap = limits.instances if query.level is Level.IMAGE else limits.results
        our_aet = str(event.assoc.acceptor.ae_title).strip()
        direct, implicit = DirectAnswers.open(event)
        headers = Headers(implicit)
        sent, ending, final = 0, "complete", None
        for row in self._rows(query.search, cap):
            if event.is_cancelled:
                ending, final = "cancelled (C-CANCEL)", FindStatus.CANCEL
                break
            if cap and sent >= cap:
                limit = "LimitFindInstances" if query.level is Level.IMAGE else "LimitFindResults"
                ending = f"capped by {limit} ({cap})"
                final = status_dataset(FindStatus.CANCEL, f"more matches than {limit}")
                break
            elements = answer_values(query, row, our_aet)
            charset = answer_charset(elements, row.charset)
            data = answer_bytes(elements, charset, headers) if direct is not None else None
            if data is not None:
                direct.send(data)
                if direct.failed:
                    self.counts.add(model, query.level.value, "aborted")
                    return
            else:
                if direct is not None:
                    direct.queued()  # keeps its place behind what was sent directly
                yield FindStatus.PENDING, answer_dataset(elements, charset)
            sent += 1
        if direct is not None:
            direct.flush()
            if direct.failed or not event.assoc.is_established:
                self.counts.add(model, query.level.value, "aborted")
                return
        self.counts.add(model, query.level.value, "cancelled" if final is not None else "complete")
        # Logged before the final status: pynetdicom stops reading the generator after it.
        seconds = time.monotonic() - started
        log.info("%s: C-FIND %s %s from %s: %d match(es), %s, %.1f ms", peer, model,
                 query.level.value, calling, sent, ending, seconds * 1000,
                 extra={"PEER": peer, "CALLING_AET": calling, "ANSWERS": sent,
                        "DURATION_MS": int(seconds * 1000)})
        if final is not None:
            yield final, None

    def _rows(self, search: Search, cap: int) -> Iterator[Row]:
        """The matching rows, a page at a time; one more than ``cap`` at most."""
        page = min(_PAGE, cap + 1) if cap else _PAGE
        offset = 0
        while True:
            rows = self.archive.search(_paged(search, page, offset))
            yield from rows
            if len(rows) < page or (cap and offset + len(rows) > cap):
                return
            offset += len(rows)


def _paged(search: Search, limit: int, offset: int) -> Search:
    return replace(search, limit=limit, offset=offset)
