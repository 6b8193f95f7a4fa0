"""Retrieves: the stored instances under the UIDs of a C-MOVE or C-GET.

A mixin of :class:`appliance.store.index.Index`. One statement, no file read,
in the order a viewer shows them (study, series number, instance number).
"""

from __future__ import annotations

from appliance.query.retrieve import Scope
from appliance.store.index.instances import _INSTANCE_ORDER, _INSTANCE_SELECT, StoredInstance

_COLUMNS = (("p.patient_id", "patient_ids"), ("st.study_instance_uid", "study_uids"),
            ("se.series_instance_uid", "series_uids"), ("i.sop_instance_uid", "sop_uids"))


class Retrieves:
    """The retrieve operation of the index."""

    def instances_under(self, scope: Scope) -> list[StoredInstance]:
        """Every stored instance matching each non-empty list of ``scope`` (any value
        of a list), in viewing order."""
        where, args = [], []
        for column, field in _COLUMNS:
            values = getattr(scope, field)
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        if not where:
            return []   # nothing named: never "everything"
        sql = (_INSTANCE_SELECT + " JOIN patients p ON p.id = st.patient_pk WHERE "
               + " AND ".join(where) + _INSTANCE_ORDER)
        return [StoredInstance(*row) for row in self.read(sql, tuple(args))]
