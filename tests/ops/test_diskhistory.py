"""The hourly disk samples behind the web UI's 30-day plot (appliance/ops/diskhistory.py):
real files in a temporary folder, disk states built as the monitor builds them."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.ops.disk import DiskState, FilesystemUsage, Forecast, Level, Role
from appliance.ops.diskhistory import EVERY, HISTORY_FILE, KEEP_DAYS, DiskHistory

DAY = 86400.0


def state(used: int) -> DiskState:
    fs = FilesystemUsage(path=Path("/data"), roles=(Role.STORAGE, Role.INDEX), total=1000,
                         used=used, free=1000 - used, percent=used / 10, level=Level.OK)
    return DiskState(measured_at=0.0, filesystems=(fs,), missing=(), store_free=1000 - used,
                     minimum_free=0, forecast=Forecast())


def test_one_sample_an_hour_kept_30_days_and_reloaded(tmp_path):
    current: list[DiskState | None] = [None]
    history = DiskHistory(tmp_path, lambda: current[0])
    assert not history.record(now=0.0)  # nothing measured yet: no sample
    t0 = 100 * DAY
    current[0] = state(100)
    assert history.record(now=t0)
    assert not history.record(now=t0 + EVERY - 1)  # not an hour yet
    current[0] = state(150)
    assert history.record(now=t0 + EVERY)
    assert [(s["time"], s["filesystems"][0]["used"]) for s in history.samples()] == \
        [(t0, 100), (t0 + EVERY, 150)]
    assert history.samples()[0]["filesystems"][0] == {
        "path": "/data", "roles": ["storage", "index"], "used": 100, "total": 1000}
    # Samples older than KEEP_DAYS are dropped when the next one is taken.
    later = t0 + KEEP_DAYS * DAY + EVERY / 2
    assert history.record(now=later)
    assert [s["time"] for s in history.samples()] == [t0 + EVERY, later]
    # Durable: a restarted daemon reads them back, and takes no sample before the hour.
    again = DiskHistory(tmp_path, lambda: state(200))
    assert again.samples() == history.samples()
    assert not again.record(now=later + 60)
    assert json.loads((tmp_path / HISTORY_FILE).read_text())["samples"] == history.samples()


def test_an_unreadable_file_starts_afresh(tmp_path, caplog):
    (tmp_path / HISTORY_FILE).write_text("{not json")
    history = DiskHistory(tmp_path, lambda: state(10))
    assert history.samples() == []
    assert "starts afresh" in caplog.text
    assert history.record(now=5.0)
    assert len(json.loads((tmp_path / HISTORY_FILE).read_text())["samples"]) == 1
