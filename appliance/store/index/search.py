"""Searches (appliance.query) compiled to SQL over the index tables.

One statement per search, no file read. A condition on an attribute of a
lower level than the search (Modality in a study search), and any condition
on an attribute that is not a column (matched in the per-instance DICOM JSON
``metadata``), selects the resources having at least one study, series or
instance below them that matches (PS3.18 10.6.3.3; for a hierarchical
C-FIND the parser only lets keys of the search's level through).

A mixin of :class:`appliance.store.index.Index`.
"""

from __future__ import annotations

import json

from appliance.query.keys import COMPUTED, INDEXED, MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY
from appliance.query.model import Level, Match, MatchKind, Row, Search
from appliance.store.index.schema import QIDO_KEPT, _REPRESENTATIVE_OF

P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

# Exact-match lists up to this long are written as SQL parameters, longer ones as JSON.
_LISTED_INLINE = 64

# Where each indexed attribute is: table alias and column.
_COLUMN: dict[int, tuple[str, str]] = {
    0x00100010: ("p", "patient_name"),
    0x00100020: ("p", "patient_id"),
    0x00100030: ("p", "patient_birth_date"),
    0x00100040: ("p", "patient_sex"),
    0x0020000D: ("st", "study_instance_uid"),
    0x00080020: ("st", "study_date"),
    0x00080030: ("st", "study_time"),
    0x00080050: ("st", "accession_number"),
    0x00081030: ("st", "study_description"),
    0x00080090: ("st", "referring_physician_name"),
    0x00200010: ("st", "study_id"),
    0x0020000E: ("se", "series_instance_uid"),
    0x00080060: ("se", "modality"),
    0x00200011: ("se", "series_number"),
    0x0008103E: ("se", "series_description"),
    0x00080018: ("i", "sop_instance_uid"),
    0x00080016: ("i", "sop_class_uid"),
    0x00200013: ("i", "instance_number"),
    0x00280008: ("i", "number_of_frames"),
    0x00280010: ("i", "rows"),
    0x00280011: ("i", "columns"),
}
assert _COLUMN.keys() == INDEXED.keys()

# The computed keys: kept on the rows since schema v3 (study and series), or
# worked out per result row (patient, SOP classes). Lists are comma-separated
# in no particular order: the caller sorts.
_COMPUTED_SQL = {
    0x00201200: "(SELECT count(*) FROM studies cst WHERE cst.patient_pk = p.id)",
    0x00201202: "(SELECT coalesce(sum(cst.number_of_series), 0) FROM studies cst "
                "WHERE cst.patient_pk = p.id)",
    0x00201204: "(SELECT coalesce(sum(cst.number_of_instances), 0) FROM studies cst "
                "WHERE cst.patient_pk = p.id)",
    MODALITIES_IN_STUDY: "st.modalities",
    SOP_CLASSES_IN_STUDY: "(SELECT group_concat(DISTINCT ci.sop_class_uid) FROM series cse "
                          "JOIN instances ci ON ci.series_pk = cse.id WHERE cse.study_pk = st.id)",
    0x00201206: "st.number_of_series",
    0x00201208: "st.number_of_instances",
    0x00201209: "se.number_of_instances",
}
assert _COMPUTED_SQL.keys() == COMPUTED.keys()

# The table of each level, and how it joins its parents.
_TABLE = {P: "patients p", ST: "studies st", SE: "series se", IM: "instances i"}
_PARENTS = {
    P: "",
    ST: " JOIN patients p ON p.id = st.patient_pk",
    SE: " JOIN studies st ON st.id = se.study_pk JOIN patients p ON p.id = st.patient_pk",
    IM: " JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk"
        " JOIN patients p ON p.id = st.patient_pk",
}
_FROM = {level: _TABLE[level] + _PARENTS[level] for level in Level}
_KEY = {P: "p.id", ST: "st.id", SE: "se.id", IM: "i.id"}
_LEVEL_OF_ALIAS = {"p": P, "st": ST, "se": SE, "i": IM}
# The levels below a result row, as subquery tables: (table, alias, join to the parent's key).
_BELOW = {ST: ("studies", "xst", "patient_pk"), SE: ("series", "xse", "study_pk"),
          IM: ("instances", "xi", "series_pk")}
# One instance whose metadata stands for its patient, study or series (the first stored).
_REPRESENTATIVE = {
    P: "(SELECT min(ri.id) FROM studies rst JOIN series rse ON rse.study_pk = rst.id "
       "JOIN instances ri ON ri.series_pk = rse.id WHERE rst.patient_pk = p.id)",
    ST: _REPRESENTATIVE_OF["study"].format(row="st"),
    SE: _REPRESENTATIVE_OF["series"].format(row="se"),
    IM: "i.id",
}
# Where the QIDO_KEPT attributes of a result row are.
_KEPT = {ST: ("st.attributes", QIDO_KEPT["study"]), SE: ("se.attributes", QIDO_KEPT["series"])}


class Searches:
    """The search operations of the index."""

    def search(self, search: Search) -> list[Row]:
        """One page of the resources matching ``search``, in a stable order.

        The page of keys is selected first, so computed attributes and metadata
        are only worked out for the rows returned (PS3.18 8.3.4.4 limit/offset).
        """
        level = search.level
        where, args = _where(search)
        order = _order(search)
        columns = [(tag, f"{table}.{column}") for tag, (table, column) in _COLUMN.items()
                   if INDEXED[tag].level.rank <= level.rank]
        columns += [(tag, _COMPUTED_SQL[tag]) for tag in search.computed]
        select = [sql for _, sql in columns]
        # Attributes kept on the row are read from there; others, and the whole
        # metadata, from the representative instance, joined only when needed.
        kept_column, kept = _KEPT.get(level, ("", ()))
        sources = [kept_column if tag in kept else "rep.metadata" for tag in search.metadata_tags]
        select += [f"json_extract({source}, ?)" for source in sources]
        select_args = [f'$."{tag:08X}"' for tag in search.metadata_tags]
        if search.whole_metadata:
            select.append("rep.metadata")
        if search.charset:
            select.append("rep.specific_character_set")
        representative = (f"LEFT JOIN instances rep ON rep.id = {_REPRESENTATIVE[level]} "
                          if search.whole_metadata or search.charset or "rep.metadata" in sources
                          else "")
        sql = (
            f"WITH page(k) AS MATERIALIZED (SELECT {_KEY[level]} FROM {_FROM[level]}{where} "
            f"ORDER BY {order} LIMIT ? OFFSET ?) "
            # CROSS JOIN: SQLite keeps the page as the outer loop.
            f"SELECT {', '.join(select)} FROM page CROSS JOIN {_TABLE[level]} ON {_KEY[level]} = page.k"
            f"{_PARENTS[level]} "
            f"{representative}ORDER BY {order}"
        )
        rows = self.read(sql, (*args, search.limit, search.offset, *select_args))
        result = []
        n_values, n_meta = len(columns), len(search.metadata_tags)
        for row in rows:
            values = {tag: row[k] for k, (tag, _) in enumerate(columns)}
            metadata = dict(zip(search.metadata_tags, row[n_values:n_values + n_meta]))
            whole = row[n_values + n_meta] if search.whole_metadata else None
            charset = row[-1] if search.charset else None
            result.append(Row(values, metadata, whole, charset))
        return result

    def count(self, search: Search) -> int:
        """How many resources match ``search`` (limit and offset ignored)."""
        where, args = _where(search)
        (row,) = self.read(f"SELECT count(*) FROM {_FROM[search.level]}{where}", tuple(args))
        return row[0]


def _order(search: Search) -> str:
    """Result order: stable across pages (PS3.18 8.3.4.4 paging needs that).

    Within one study or series, series and instance numbers, as a viewer
    lists them; across the archive, storage order, which the primary key
    gives without sorting. Newest first (a study list): StudyDate, StudyTime
    descending, the primary key breaking ties, so the studies_patient_date
    index is read backwards (no sort) and undated studies (NULL) come last.
    """
    if search.newest_first and search.level is ST:
        return "st.study_date DESC, st.study_time DESC, st.id DESC"
    if search.level is SE and search.study_uid:
        return "se.series_number IS NULL, se.series_number, se.id"
    if search.level is IM and search.series_uid:
        return "i.instance_number IS NULL, i.instance_number, i.id"
    if search.level is IM and search.study_uid:
        return ("se.series_number IS NULL, se.series_number, se.id, "
                "i.instance_number IS NULL, i.instance_number, i.id")
    return _KEY[search.level]


def _like_pattern(value: str) -> tuple[str, bool]:
    """A LIKE pattern (escape ``\\``) for a DICOM value or wildcard pattern,
    case-insensitive for ASCII (SQLite's LIKE); a cased non-ASCII letter
    becomes ``_`` so LIKE is a superset, and the second result says that a
    GLOB check must then follow."""
    out, needs_glob = [], False
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        elif ord(ch) > 127 and ch.lower() != ch.upper():
            out.append("_")
            needs_glob = True
        else:
            out.append(ch)
    return "".join(out), needs_glob


def _glob_pattern(value: str, fold_case: bool) -> str:
    """A GLOB pattern for a DICOM value or wildcard pattern; with
    ``fold_case`` every cased letter becomes a ``[xX]`` class."""
    out = []
    for ch in value:
        if ch in "*?":
            out.append(ch)
        elif ch == "[":
            out.append("[[]")  # GLOB has no escape character; a class holds it
        elif fold_case and len(ch.lower()) == 1 and len(ch.upper()) == 1 \
                and ch.lower() != ch.upper():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(ch)
    return "".join(out)


def _text_condition(expr: str, value: str, fold_case: bool) -> tuple[str, list]:
    wildcard = "*" in value or "?" in value
    if not fold_case:
        if wildcard:
            return f"{expr} GLOB ?", [_glob_pattern(value, False)]
        return f"{expr} = ?", [value]
    # LIKE first: with a literal prefix it can use an index (patients_name is
    # NOCASE for that), then GLOB settles non-ASCII letters exactly.
    like, needs_glob = _like_pattern(value)
    if not needs_glob:
        return f"{expr} LIKE ? ESCAPE '\\'", [like]
    return (f"({expr} LIKE ? ESCAPE '\\' AND {expr} GLOB ?)",
            [like, _glob_pattern(value, True)])


def _value_condition(expr: str, match: Match) -> tuple[str, list]:
    """The condition of ``match`` on the SQL expression ``expr``."""
    if match.kind is MatchKind.EXACT:
        if len(match.values) > _LISTED_INLINE:
            # A long list (a workstation asking after a thousand SOP Instance UIDs) as
            # one JSON parameter: no bound on variables or on the expression's depth.
            return f"{expr} IN (SELECT value FROM json_each(?))", [json.dumps(list(match.values))]
        return f"{expr} IN ({', '.join('?' * len(match.values))})", list(match.values)
    if match.kind is MatchKind.RANGE:
        low, high = match.values
        parts, args = [], []
        if low:
            parts.append(f"{expr} >= ?")
            args.append(low)
        if high:
            # A DA is always 8 characters: compare whole (an index can serve
            # it). TM/DT may be longer than the bound: compare the bound's
            # precision, so "-1015" includes 10:15:30 (PS3.4 C.2.2.2.5).
            parts.append(f"{expr} <= ?" if match.vr == "DA" else f"substr({expr}, 1, ?) <= ?")
            args.extend([high] if match.vr == "DA" else [len(high), high])
        return "(" + " AND ".join(parts) + ")", args
    parts, args = [], []
    for value in match.values:
        sql, a = _text_condition(expr, value, match.fold_case)
        parts.append(sql)
        args.extend(a)
    return "(" + " OR ".join(parts) + ")", args


def _below_exists(level: Level, child: Level, cond: str) -> str:
    """EXISTS over the rows of level ``child`` below the current ``level``
    row (aliases xst, xse, xi) that meet ``cond``."""
    tables, joins, parent = [], [], _KEY[level]
    for below in (ST, SE, IM):
        if level.rank < below.rank <= child.rank:
            table, alias, fk = _BELOW[below]
            tables.append(f"{table} {alias}")
            joins.append(f"{alias}.{fk} = {parent}")
            parent = f"{alias}.id"
    source = tables[0] + "".join(f" JOIN {t} ON {j}" for t, j in zip(tables[1:], joins[1:]))
    return f"EXISTS (SELECT 1 FROM {source} WHERE {joins[0]} AND {cond})"


def _condition(level: Level, match: Match) -> tuple[str, list]:
    """SQL for one match at the search's ``level``."""
    # PS3.4 C.3.4: the distinct Modality (SOP Class UID) values of the study's
    # series (instances), so the study matches if any of them does; below the
    # study level, the result's own study is asked.
    study_or_above = level if level.rank < ST.rank else ST
    if match.tag == MODALITIES_IN_STUDY:
        cond, args = _value_condition("xse.modality", match)
        return _below_exists(study_or_above, SE, cond), args
    if match.tag == SOP_CLASSES_IN_STUDY:
        cond, args = _value_condition("xi.sop_class_uid", match)
        return _below_exists(study_or_above, IM, cond), args
    found = _COLUMN.get(match.tag)
    if found is not None:
        table, column = found
        at = _LEVEL_OF_ALIAS[table]
        if at is P and level is not P:
            # The matching patients first, then their studies by index: a name pattern
            # that no index serves (a leading *) scans the patients, not every study.
            cond, args = _value_condition(f"mp.{column}", match)
            return f"st.patient_pk IN (SELECT mp.id FROM patients mp WHERE {cond})", args
        if at.rank <= level.rank:
            return _value_condition(f"{table}.{column}", match)
        cond, args = _value_condition(f"{_BELOW[at][1]}.{column}", match)
        return _below_exists(level, at, cond), args
    # Not a column: the values of the attribute in the metadata JSON (every
    # value of a multi-valued one; the Alphabetic group of a PN). Values are taken
    # as stored: an instance that wrote a PN attribute with another VR holds plain
    # strings there, which json_extract would refuse as malformed JSON (for the
    # whole search), so only an object is asked for its Alphabetic group.
    value = ("CASE je.type WHEN 'object' THEN json_extract(je.value, '$.Alphabetic') "
             "ELSE je.value END" if match.vr == "PN" else "je.value")
    cond, args = _value_condition(value, match)
    path = f'$."{match.tag:08X}".Value'
    source = "i.metadata" if level is IM else "xi.metadata"
    sql = f"EXISTS (SELECT 1 FROM json_each({source}, ?) je WHERE {cond})"
    if level is not IM:
        sql = _below_exists(level, IM, sql)
    return sql, [path, *args]


def _where(search: Search) -> tuple[str, list]:
    parts, args = [], []
    if search.study_uid is not None:
        parts.append("st.study_instance_uid = ?")
        args.append(search.study_uid)
    if search.series_uid is not None:
        parts.append("se.series_instance_uid = ?")
        args.append(search.series_uid)
    for match in search.matches:
        sql, a = _condition(search.level, match)
        parts.append(sql)
        args.extend(a)
    return (" WHERE " + " AND ".join(parts)) if parts else "", args
