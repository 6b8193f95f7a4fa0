"""The study and series summaries of schema v3 (counts, modalities, attributes
kept from the first instance) on a real SQLite index: right after every kind of
insert and delete, and after migrating a v2 index file."""

from __future__ import annotations

import json

import apsw
import pytest

from appliance.store.index import DB_NAME, QIDO_KEPT, SCHEMA_VERSION, AuditEntry, Index
from tests.store import BODY_PART, IMAGE_TYPE, TIMEZONE, create_v2_index, record

# The summaries as the previous release computed them at query time: an
# independent statement of what the kept columns must equal.
_RECOMPUTED = """
    SELECT st.study_instance_uid,
           (SELECT count(*) FROM series s WHERE s.study_pk = st.id),
           (SELECT count(*) FROM series s JOIN instances i ON i.series_pk = s.id
            WHERE s.study_pk = st.id),
           (SELECT group_concat(DISTINCT s.modality) FROM series s WHERE s.study_pk = st.id),
           (SELECT i.metadata FROM instances i WHERE i.id =
               (SELECT min(i.id) FROM series s JOIN instances i ON i.series_pk = s.id
                WHERE s.study_pk = st.id))
    FROM studies st ORDER BY st.id"""
_KEPT = """SELECT study_instance_uid, number_of_series, number_of_instances, modalities,
                  attributes FROM studies ORDER BY id"""
_SERIES_RECOMPUTED = """
    SELECT se.series_instance_uid, (SELECT count(*) FROM instances i WHERE i.series_pk = se.id),
           (SELECT i.metadata FROM instances i WHERE i.id =
               (SELECT min(i.id) FROM instances i WHERE i.series_pk = se.id))
    FROM series se ORDER BY se.id"""
_SERIES_KEPT = "SELECT series_instance_uid, number_of_instances, attributes FROM series ORDER BY id"


def _kept_of(metadata: str, level: str) -> dict:
    """What the row must keep of a representative instance's metadata."""
    keys = {f"{tag:08X}" for tag in QIDO_KEPT[level]}
    return {k: v for k, v in json.loads(metadata).items() if k in keys}


def assert_summaries_right(index: Index) -> None:
    """The kept summaries of every study and series equal a recomputation."""
    kept = index.read(_KEPT)
    recomputed = index.read(_RECOMPUTED)
    assert [(uid, n_se, n_i, sorted(mods.split(",")), json.loads(attrs))
            for uid, n_se, n_i, mods, attrs in kept] == \
           [(uid, n_se, n_i, sorted(mods.split(",")), _kept_of(meta, "study"))
            for uid, n_se, n_i, mods, meta in recomputed]
    assert [(uid, n, json.loads(attrs)) for uid, n, attrs in index.read(_SERIES_KEPT)] == \
           [(uid, n, _kept_of(meta, "series")) for uid, n, meta in index.read(_SERIES_RECOMPUTED)]


def study_row(index: Index, uid: str) -> tuple:
    """(series, instances, sorted modalities, attributes) kept on a study row."""
    rows = index.read("SELECT number_of_series, number_of_instances, modalities, attributes "
                      "FROM studies WHERE study_instance_uid = ?", (uid,))
    if not rows:
        return ()
    n_series, n_instances, modalities, attributes = rows[0]
    return n_series, n_instances, sorted((modalities or "").split(",")), json.loads(attributes)


@pytest.fixture
def index(tmp_path):
    idx = Index(tmp_path, lambda dirs: None)
    idx.open()
    yield idx
    idx.close()


def test_counts_and_modalities_follow_every_insert(index):
    index.insert_instance(record("1.1", "1.1.1", "1.1.1.1"), overwrite=False, dirs=())
    assert study_row(index, "1.1")[:3] == (1, 1, ["US"])
    # Another instance in the same series, then a new series of the same study.
    index.insert_instance(record("1.1", "1.1.1", "1.1.1.2"), overwrite=False, dirs=())
    index.insert_instance(record("1.1", "1.1.2", "1.1.2.1", modality="SR"),
                          overwrite=False, dirs=())
    index.insert_instance(record("1.1", "1.1.3", "1.1.3.1"), overwrite=False, dirs=())
    assert study_row(index, "1.1")[:3] == (3, 4, ["SR", "US"])
    # A duplicate kept out and one overwritten change nothing.
    index.insert_instance(record("1.1", "1.1.1", "1.1.1.2"), overwrite=False, dirs=())
    index.insert_instance(record("1.1", "1.1.1", "1.1.1.2"), overwrite=True, dirs=())
    # A second study in one batch (the reindex path).
    index.insert_many([record("1.2", "1.2.1", "1.2.1.1", patient="PAT2"),
                                  record("1.2", "1.2.1", "1.2.1.2", patient="PAT2")],
                          overwrite=False)
    assert study_row(index, "1.1")[:3] == (3, 4, ["SR", "US"])
    assert study_row(index, "1.2")[:3] == (1, 2, ["US"])
    assert_summaries_right(index)


def test_counts_and_modalities_follow_every_delete(index):
    for rec in (record("1.1", "1.1.1", "1.1.1.1"), record("1.1", "1.1.1", "1.1.1.2"),
                record("1.1", "1.1.2", "1.1.2.1", modality="SR", file_path="cd/sr.dcm"),
                record("1.2", "1.2.1", "1.2.1.1", patient="PAT2")):
        index.insert_instance(rec, overwrite=False, dirs=())
    index.delete_instance("1.1.1.2")
    assert study_row(index, "1.1")[:3] == (2, 2, ["SR", "US"])
    assert_summaries_right(index)
    # The last instance of a series: the series and its modality go.
    assert index.delete_instances_at(["cd/sr.dcm"]) == 1
    assert study_row(index, "1.1")[:3] == (1, 1, ["US"])
    assert_summaries_right(index)
    index.delete_instance("1.1.1.1")
    assert study_row(index, "1.1") == ()
    (patient,) = index.read("SELECT id FROM patients WHERE patient_id = 'PAT2'")
    index.delete_scope(None, patient_pk=patient[0], audit=AuditEntry("test", "delete", "Patient", {}))
    assert index.read("SELECT count(*) FROM studies") == [(0,)]


def test_attributes_are_kept_from_the_first_instance(index):
    index.insert_instance(record("1.1", "1.1.1", "1.1.1.1", timezone=None, body_part="HEART"),
                          overwrite=False, dirs=())
    index.insert_instance(record("1.1", "1.1.1", "1.1.1.2", body_part="KNEE"),
                          overwrite=False, dirs=())
    # Only the attributes QIDO keeps, only from the first instance stored.
    assert study_row(index, "1.1")[3] == {}
    (series_attrs,) = index.read("SELECT attributes FROM series")
    assert json.loads(series_attrs[0]) == {BODY_PART: {"vr": "CS", "Value": ["HEART"]}}
    assert IMAGE_TYPE not in series_attrs[0]
    # Replacing the first instance makes the next one the first.
    index.insert_instance(record("1.1", "1.1.1", "1.1.1.1", body_part="SPINE"),
                          overwrite=True, dirs=())
    assert study_row(index, "1.1")[3] == {TIMEZONE: {"vr": "SH", "Value": ["+0100"]}}
    (series_attrs,) = index.read("SELECT attributes FROM series")
    assert json.loads(series_attrs[0])[BODY_PART] == {"vr": "CS", "Value": ["KNEE"]}
    assert_summaries_right(index)


def test_migration_from_v2_fills_in_the_summaries(tmp_path):
    create_v2_index(tmp_path, [
        record("1.1", "1.1.1", "1.1.1.1", timezone="-0500"),
        record("1.1", "1.1.1", "1.1.1.2"),
        record("1.1", "1.1.2", "1.1.2.1", modality="SR"),
        record("1.2", "1.2.1", "1.2.1.1", patient="PAT2", modality="OT", timezone=None),
    ])
    conn = apsw.Connection(str(tmp_path / DB_NAME))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
    index = Index(tmp_path, lambda dirs: None)
    index.open()
    try:
        assert index.read("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert study_row(index, "1.1") == (2, 3, ["SR", "US"],
                                           {TIMEZONE: {"vr": "SH", "Value": ["-0500"]}})
        assert study_row(index, "1.2") == (1, 1, ["OT"], {})
        assert_summaries_right(index)
        # The writer carries on from the migrated values.
        index.insert_instance(record("1.1", "1.1.2", "1.1.2.2", modality="SR"),
                              overwrite=False, dirs=())
        index.delete_instance("1.1.1.1")
        assert study_row(index, "1.1")[:3] == (2, 3, ["SR", "US"])
        assert_summaries_right(index)
    finally:
        index.close()


def test_pending_migrations_commit_together_or_not_at_all(tmp_path):
    """A first start runs every pending migration in one transaction (one commit): when
    a later one fails (here the send queue's table is already there), the index is left
    as it was, at version 2 with none of the earlier migrations' changes, and it
    migrates whole once the obstacle is gone."""
    create_v2_index(tmp_path, [record("1.1", "1.1.1", "1.1.1.1")])
    conn = apsw.Connection(str(tmp_path / DB_NAME))
    conn.execute("CREATE TABLE send_items (x)")
    schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    conn.close()
    index = Index(tmp_path, lambda dirs: None)
    with pytest.raises(apsw.SQLError, match="send_items"):
        index.open()
    conn = apsw.Connection(str(tmp_path / DB_NAME))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == schema
    conn.execute("DROP TABLE send_items")
    conn.close()
    index = Index(tmp_path, lambda dirs: None)
    index.open()
    try:
        assert index.read("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert_summaries_right(index)
    finally:
        index.close()
