"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

A request is parsed into the protocol-neutral search model (appliance.query),
which the store runs as one SQL statement on the index; no file is read.

What is supported, and how (PS3.18 8.3.4, PS3.4 C.2.2.2):

* Match keys by keyword or tag (``PatientID``, ``00100020``). Attributes
  kept as index columns (patient, study, series and instance main
  attributes; see ``appliance.query.keys.INDEXED``), ModalitiesInStudy and
  SOPClassesInStudy are matched on
  the columns; any other attribute with a text VR is matched on its values
  in the instances' stored DICOM JSON. A key of a lower level than the
  search (``/studies?Modality=US``), or not a column, selects the resources
  having at least one series/instance that matches.
* Single values, ``*``/``?`` wildcards, backslash lists of values (commas
  too for CS), UID lists (comma or backslash), DA/TM/DT ranges
  (``A-B``, ``A-``, ``-B``), integers for IS/US columns. An empty value or
  ``*`` matches everything and asks for the attribute.
* Case: PN values match case-insensitively, non-ASCII letters included
  (Orthanc's ``CaseSensitivePN`` false; accents are significant, unlike
  Orthanc's ASCII folding); other text values case-sensitively unless
  ``DicomWeb.QidoCaseSensitive`` is false.
* ``includefield`` (repeated and/or comma lists, keywords or tags, ``all``);
  ``limit`` (1-10000) and ``offset``; ``fuzzymatching`` is accepted and
  ignored, with the PS3.18 8.3.4.2 Warning header.
* ``orderby=-StudyDate`` (or ``-StudyDate,-StudyTime``, dcm4chee's spelling;
  not in PS3.18), study searches only: newest first by StudyDate and
  StudyTime, undated studies last: the web UI's study list.
* Not supported, answered 400 with a message: unknown keys, matching inside
  sequences (``0040A370.00400009``), matching on binary, numeric (except the
  integer columns), sequence or private attributes.

Results come in a stable order, so ``limit``/``offset`` page through them.
Without ``limit`` at most ``LimitFindResults``/``LimitFindInstances`` (or
10000) results are returned, with a Warning header saying how many more
there are (PS3.18 8.3.4.4).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from aiohttp import web
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from appliance.query import grammar, keys
from appliance.query.keys import COMPUTED, INDEXED, MATCHABLE_COMPUTED
from appliance.query.model import MAX_ALTERNATIVES, Level, Match, MatchKind, Row, Search
from appliance.store import Archive
from appliance.web.common import check_uid, context, dicomweb_url, http_error

MAX_LIMIT = 10_000
MAX_OFFSET = 100_000_000
_MAX_VALUE_LENGTH = 1024

# The QIDO-RS resources and the levels they search.
_LEVELS = (Level.STUDY, Level.SERIES, Level.IMAGE)

# Attributes of the responses that are neither columns nor computed.
RETRIEVE_URL = 0x00081190
INSTANCE_AVAILABILITY = 0x00080056
# Conditional ("shall be present if known") attributes kept as columns: left
# out rather than returned empty when unknown (e.g. Rows of an SR).
_IF_KNOWN = frozenset({0x00280008, 0x00280010, 0x00280011})
_CONSTANT = frozenset({RETRIEVE_URL, INSTANCE_AVAILABILITY})


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


def _tags(*keywords: str) -> tuple[int, ...]:
    return tuple(_tag(k) for k in keywords)


# PS3.18 Tables 10.6.3-3, -4 and -5: the attributes every result carries.
# StudyDescription is added for the EMR's study lists (an extra is allowed).
DEFAULTS = {
    Level.STUDY: _tags(
        "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
        "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
        "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "StudyDescription"),
    Level.SERIES: _tags(
        "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
        "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "RequestAttributesSequence"),
    Level.IMAGE: _tags(
        "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
        "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames"),
}
# includefield=all: the optional keys of PS3.4 C.6.1.1.2-4 we can return
# (from the index or a representative instance); at the instance level the
# whole stored DICOM JSON of each instance.
ALL_EXTRAS = {
    Level.STUDY: _tags(
        "IssuerOfPatientID", "OtherPatientIDs", "PatientAge", "PatientSize", "PatientWeight",
        "PatientComments", "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription"),
    Level.SERIES: _tags(
        "SeriesDate", "SeriesTime", "BodyPartExamined", "Laterality", "ProtocolName",
        "PerformingPhysicianName", "OperatorsName", "StationName", "InstitutionName",
        "Manufacturer", "ManufacturerModelName"),
    Level.IMAGE: (),
}

# VRs whose values match as text (PS3.4 C.2.2.2.1/4); dates and times
# also take ranges.
_TEXT_VRS = frozenset("AE AS CS LO LT PN SH ST UC UR UT".split())
_INT_VRS = frozenset("IS US".split())

_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RESERVED = frozenset({"includefield", "limit", "offset", "fuzzymatching", "accept", "charset",
                       "orderby"})
# The orderby values understood (study searches): newest first.
_NEWEST_FIRST = frozenset({"-StudyDate", "-StudyDate,-StudyTime", "-00080020", "-00080020,-00080030"})
_JSON_MEDIA = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})


def add_routes(router: web.UrlDispatcher, root: str) -> None:
    """Register this module's routes under root (no trailing slash)."""
    router.add_get(f"{root}/studies", search_studies)
    router.add_get(f"{root}/series", search_series)
    router.add_get(f"{root}/instances", search_instances)
    router.add_get(f"{root}/studies/{{study}}/series", search_series)
    router.add_get(f"{root}/studies/{{study}}/instances", search_instances)
    router.add_get(f"{root}/studies/{{study}}/series/{{series}}/instances", search_instances)


async def search_studies(request: web.Request) -> web.Response:
    """GET {root}/studies (PS3.18 10.6.1, Search for Studies)."""
    return await _search(request, Level.STUDY)


async def search_series(request: web.Request) -> web.Response:
    """GET {root}/series and {root}/studies/{study}/series."""
    return await _search(request, Level.SERIES)


async def search_instances(request: web.Request) -> web.Response:
    """GET {root}/instances, .../studies/{study}/instances and
    .../studies/{study}/series/{series}/instances."""
    return await _search(request, Level.IMAGE)


# -- request parsing ---------------------------------------------------------


def _attribute(key: str, what: str) -> int:
    """The tag named by a keyword or 8 hex digits; 400 otherwise."""
    if "." in key:
        raise http_error(400, f"{what} {key[:80]!r}: attributes inside sequences are not supported")
    if _HEX_TAG.match(key):
        return int(key, 16)
    # pydicom's dictionary holds an entry whose keyword is "" (300A,0782).
    tag = tag_for_keyword(key) if key else None
    if tag is None:
        raise http_error(400, f"{what} {key[:80]!r}: not a DICOM keyword or tag (e.g. PatientID or 00100020)")
    return tag


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"


def _vr(tag: int) -> str | None:
    """The VR a tag has in our tables or the dictionary; None if unknown or ambiguous."""
    known = keys.vr_of(tag)
    if known is not None:
        return known
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if " or " not in vr else None


def _integer(name: str, text: str, low: int, high: int) -> int:
    if not _DIGITS.match(text) or not low <= int(text) <= high:
        raise http_error(400, f"{name}: expected an integer {low}-{high}, got {text[:40]!r}")
    return int(text)


def _split(value: str, separators: str) -> list[str]:
    values = [v.strip() for v in re.split(f"[{re.escape(separators)}]", value)]
    if len(values) > MAX_ALTERNATIVES:  # UID lists too: a URL is no place for more
        raise http_error(400, f"more than {MAX_ALTERNATIVES} values in one match key")
    return values


def _match(tag: int, value: str, fold_text: bool, fold_pn: bool) -> Match | None:
    """The Match for ``tag=value``; None for universal matching; 400 if unsupported."""
    name = _name(tag)
    if (tag in COMPUTED and tag not in MATCHABLE_COMPUTED) or tag in _CONSTANT:
        raise http_error(400, f"{name}: computed attribute, cannot be matched")
    vr = _vr(tag)
    if vr is None:
        raise http_error(400, f"{name}: matching on private or unknown attributes is not supported")
    value = value.strip()
    if value in ("", "*"):
        return None  # PS3.4 C.2.2.2.3 universal matching
    if len(value) > _MAX_VALUE_LENGTH or _CONTROL.search(value):
        raise http_error(400, f"{name}: value too long or with control characters")
    if vr == "UI":
        uids = [check_uid(v, name) for v in _split(value, ",\\")]
        return Match(tag, vr, MatchKind.EXACT, tuple(uids))
    if vr in grammar.DATE_TIME_VRS:
        if grammar.is_value(vr, value):
            return Match(tag, vr, MatchKind.VALUES, (value,))
        bounds = grammar.parse_range(vr, value)
        if bounds is not None:
            return Match(tag, vr, MatchKind.RANGE, bounds)
        raise http_error(400, f"{name}: expected a {vr} value or range (A-B, A-, -B), got {value[:40]!r}")
    if vr in _INT_VRS and tag in INDEXED:
        numbers = [_integer(name, v, 0, 2**31 - 1) for v in _split(value, "\\")]
        return Match(tag, vr, MatchKind.EXACT, tuple(numbers))
    if vr in _TEXT_VRS:
        # CS values cannot hold a comma: accept comma lists as backslash ones.
        values = _split(value, ",\\" if vr == "CS" else "\\")
        if "" in values:
            raise http_error(400, f"{name}: empty value in a list")
        return Match(tag, vr, MatchKind.VALUES, tuple(values), fold_pn if vr == "PN" else fold_text)
    raise http_error(400, f"{name}: matching on {vr} attributes is not supported")


def _acceptable(accept: str) -> bool:
    """True if an Accept value admits DICOM JSON (PS3.18 8.7.4)."""
    if not accept.strip():
        return True
    for item in accept.split(","):
        media, *params = [p.strip() for p in item.split(";")]
        q = 1.0
        for param in params:
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if media.lower() in _JSON_MEDIA and q > 0:
            return True
    return False


def _parse(request: web.Request, level: Level) -> tuple[Search, set[int], bool, bool]:
    """(search, attributes to return, fuzzymatching asked, limit given)."""
    config = context(request).config
    query = request.query
    accept = ",".join(query.getall("accept", [])) or request.headers.get("Accept", "")
    if not _acceptable(accept):
        raise http_error(406, "QIDO-RS answers application/dicom+json only")

    study_uid = request.match_info.get("study")
    series_uid = request.match_info.get("series")
    if study_uid is not None:
        check_uid(study_uid, "StudyInstanceUID")
    if series_uid is not None:
        check_uid(series_uid, "SeriesInstanceUID")

    # PS3.18 10.6.3.3: a search across all studies also returns the
    # higher levels' attributes; one inside a study returns series ones.
    top = 2 if series_uid else 1 if study_uid else 0
    wanted: set[int] = set()
    for lvl in _LEVELS[top if level is not Level.STUDY else 0:_LEVELS.index(level) + 1]:
        wanted.update(DEFAULTS[lvl])

    for key in ("limit", "offset", "fuzzymatching", "orderby"):
        if len(query.getall(key, [])) > 1:
            raise http_error(400, f"{key} given twice")
    limit, offset, fuzzy, limit_given = None, 0, False, False
    newest_first = _newest_first(query.get("orderby"), level)
    matches: dict[int, Match | None] = {}
    whole = False
    fold_text = not config.dicom_web.qido_case_sensitive
    fold_pn = not config.case_sensitive_pn
    for key, value in query.items():
        if key == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item == "all":
                    wanted.update(ALL_EXTRAS[level])
                    whole = whole or level is Level.IMAGE
                elif item:
                    wanted.add(_attribute(item, "includefield"))
        elif key == "limit":
            limit = _integer("limit", value, 1, MAX_LIMIT)
            limit_given = True
        elif key == "offset":
            offset = _integer("offset", value, 0, MAX_OFFSET)
        elif key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise http_error(400, f"fuzzymatching: expected true or false, got {value[:20]!r}")
            fuzzy = value.lower() == "true"
        elif key in _RESERVED:
            continue  # accept (handled above), charset: we answer UTF-8 JSON
        else:
            tag = _attribute(key, "query key")
            if tag in matches:
                raise http_error(400, f"query key {_name(tag)} given twice")
            matches[tag] = _match(tag, value, fold_text, fold_pn)
            wanted.add(tag)

    # PS3.18 10.6.3.3: attributes of lower levels than the search are not returned.
    wanted = {t for t in wanted
              if keys.level_of(t) is None or keys.level_of(t).rank <= level.rank}
    if limit is None:
        cap = config.limit_find_instances if level is Level.IMAGE else config.limit_find_results
        limit = min(cap, MAX_LIMIT) if cap else MAX_LIMIT
    search = Search(
        level=level, study_uid=study_uid, series_uid=series_uid,
        matches=tuple(m for m in matches.values() if m is not None),
        computed=tuple(sorted(t for t in wanted if t in COMPUTED)),
        metadata_tags=tuple(sorted(
            t for t in wanted if t not in INDEXED and t not in COMPUTED and t not in _CONSTANT)),
        whole_metadata=whole, limit=limit, offset=offset, newest_first=newest_first,
    )
    return search, wanted, fuzzy, limit_given


def _newest_first(orderby: str | None, level: Level) -> bool:
    """Whether ``orderby`` asks for newest first; 400 for any other order."""
    if orderby is None:
        return False
    if level is not Level.STUDY or orderby.replace(" ", "") not in _NEWEST_FIRST:
        raise http_error(400, f"orderby {orderby[:60]!r}: only -StudyDate (newest first) "
                              "is supported, on study searches")
    return True


# -- response ----------------------------------------------------------------


# The response is written as JSON text directly, attribute by attribute: building
# a dict per attribute and then json.dumps-ing the whole list cost most of a
# large search's time. encode_basestring is json.dumps' own string encoder for
# ensure_ascii=False, so the bytes are the same as json.dumps would write.
def _string(value: Any) -> str:
    return encode_basestring(str(value))


def _element(vr: str, value: Any) -> str:
    """A PS3.18 F.2 attribute object (JSON text) for a column value."""
    if value is None or value == "":
        return f'{{"vr":"{vr}"}}'  # F.2.5: present, empty
    if vr == "PN":
        groups = [f'"{name}":{_string(text)}' for name, text
                  in zip(("Alphabetic", "Ideographic", "Phonetic"), str(value).split("="))
                  if text]
        return f'{{"vr":"PN","Value":[{{{",".join(groups)}}}]}}' if groups else '{"vr":"PN"}'
    if vr in _INT_VRS:
        return f'{{"vr":"{vr}","Value":[{int(value)}]}}'
    return f'{{"vr":"{vr}","Value":[{_string(value)}]}}'


def _without_bulk(attribute: dict[str, Any]) -> dict[str, Any] | None:
    """An attribute from stored metadata, without bulk data references (a
    relative BulkDataURI means nothing in a search response)."""
    if "BulkDataURI" in attribute or "InlineBinary" in attribute:
        return None
    if attribute.get("vr") == "SQ" and attribute.get("Value"):
        items = []
        for item in attribute["Value"]:
            kept = {}
            for key, sub in item.items():
                sub = _without_bulk(sub)
                if sub is not None:
                    kept[key] = sub
            items.append(kept)
        return {"vr": "SQ", "Value": items}
    return attribute


def _stored(attribute: dict[str, Any]) -> str | None:
    """JSON text of an attribute from stored metadata, None if only bulk data."""
    kept = _without_bulk(attribute)
    return None if kept is None else json.dumps(kept, ensure_ascii=False, separators=(",", ":"))


def _retrieve_url(service: str, level: Level, values: dict[int, Any]) -> str:
    url = f"{service}/studies/{values[0x0020000D]}"
    if level is not Level.STUDY:
        url += f"/series/{values[0x0020000E]}"
    if level is Level.IMAGE:
        url += f"/instances/{values[0x00080018]}"
    return url


def _value_list(vr: str, value: str | None) -> str:
    """A multi-valued computed attribute (ModalitiesInStudy, SOPClassesInStudy)
    from its comma-separated distinct values, sorted."""
    values = sorted(set(filter(None, (value or "").split(","))))
    if not values:
        return f'{{"vr":"{vr}"}}'
    return f'{{"vr":"{vr}","Value":[{",".join(map(_string, values))}]}}'


def _encoder(tag: int, level: Level, service: str) -> Callable[[Row], str | None]:
    """How one wanted attribute of a result is written: JSON text, or None to leave it out."""
    if tag == RETRIEVE_URL:
        return lambda row: _element("UR", _retrieve_url(service, level, row.values))
    if tag == INSTANCE_AVAILABILITY:
        return lambda row: '{"vr":"CS","Value":["ONLINE"]}'  # everything is on disk
    if tag in MATCHABLE_COMPUTED:
        vr = COMPUTED[tag].vr
        return lambda row: _value_list(vr, row.values[tag])
    if tag in COMPUTED:
        vr = COMPUTED[tag].vr
        return lambda row: _element(vr, row.values[tag])
    if tag in INDEXED:
        vr, if_known = INDEXED[tag].vr, tag in _IF_KNOWN
        return lambda row: (None if if_known and row.values[tag] is None
                            else _element(vr, row.values[tag]))

    def from_metadata(row: Row) -> str | None:
        text = row.metadata.get(tag)
        return None if text is None else _stored(json.loads(text))
    return from_metadata


def _renderer(level: Level, wanted: set[int], service: str) -> Callable[[Row], str]:
    """A function writing one result (a DICOM JSON object, PS3.18 F.2) as JSON text.

    The wanted attributes are sorted once per search, not once per result:
    F.2.2 wants ascending tag order, and 8 hex digits sort like the tags.
    """
    encoders = [(f"{tag:08X}", _encoder(tag, level, service)) for tag in sorted(wanted)]

    def render(row: Row) -> str:
        if row.whole_metadata:
            # The stored attributes, with the wanted ones written over them.
            parts = {}
            for key, attribute in json.loads(row.whole_metadata).items():
                text = _stored(attribute)
                if text is not None:
                    parts[key] = text
            for key, encode in encoders:
                text = encode(row)
                if text is not None:
                    parts[key] = text
            return "{" + ",".join(f'"{key}":{text}' for key, text in sorted(parts.items())) + "}"
        out = []
        for key, encode in encoders:
            text = encode(row)
            if text is not None:
                out.append(f'"{key}":{text}')
        return "{" + ",".join(out) + "}"

    return render


def _answer(archive: Archive, search: Search, render: Callable[[Row], str]) -> tuple[bytes, int]:
    """Run the search and write the response body (on a worker thread: both
    the query and the writing of a large page would otherwise hold the event
    loop); also the number of results."""
    rows = archive.search(search)
    return ("[" + ",".join(map(render, rows)) + "]").encode("utf-8"), len(rows)


async def _search(request: web.Request, level: Level) -> web.Response:
    search, wanted, fuzzy, limit_given = _parse(request, level)
    archive = context(request).archive
    service = dicomweb_url(request)
    body, found = await asyncio.to_thread(
        _answer, archive, search, _renderer(level, wanted, service))
    response = web.Response(body=body, content_type="application/dicom+json")
    # PS3.18 8.4.3 / 8.3.4: Warning header fields (RFC 7234 5.5 syntax).
    if fuzzy:
        response.headers.add("Warning", f'299 {service} "The fuzzymatching parameter is not '
                                        'supported. Only literal matching has been performed."')
    if not limit_given and found == search.limit:
        total = await asyncio.to_thread(archive.count, search)
        remaining = total - search.offset - found
        if remaining > 0:
            response.headers.add(
                "Warning", f'299 {service} "There are {remaining} additional results '
                           'that can be requested"')
    return response
