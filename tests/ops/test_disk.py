"""Disk monitoring end to end: a small tmpfs as the storage, filled until stores are
refused (C-STORE 0xA700), nothing partial left, space freed, stores accepted again."""

from __future__ import annotations

import time
import urllib.request

import pytest

from appliance.ops.disk import DAY, Forecast, forecast, human_bytes
from tests.ops import OUT_OF_RESOURCES, image, leftovers, status_json, stored_files, tmpfs
from tests.support import Daemon, base_config, run, scu_store

MiB = 1 << 20


@pytest.fixture(scope="module")
def big_images(tmp_path_factory):
    """20 images of about 1 MiB, five patients."""
    folder = tmp_path_factory.mktemp("big")
    return [image(folder, f"DISK{i % 5}", number=i, pixels=1024) for i in range(20)]


def metrics_text(daemon: Daemon) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/metrics") as r:
        return r.read().decode()


def _log_lines(daemon: Daemon, text: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if text in line]


def test_fill_until_refused_then_free_space_and_store_again(tmp_path, big_images):
    root = tmp_path / "d"
    with tmpfs(root / "storage", "24m") as storage:
        ballast = storage / "ballast"
        ballast.write_bytes(b"\0" * (10 * MiB))  # 42%: above WarnPercent from the start
        daemon = Daemon(root, base_config(root, DiskMonitor={
            "IntervalSeconds": 1, "MinimumFreeMB": 8, "WarnPercent": 40, "CriticalPercent": 60,
        })).start()
        try:
            statuses = scu_store(daemon.dicom_port, big_images[:16])
            stored = statuses.count(0)
            # Success until the free space reaches MinimumFreeMB, then only 0xA700.
            assert 3 <= stored < 16, statuses
            assert statuses == [0] * stored + [OUT_OF_RESOURCES] * (16 - stored)
            # Nothing partial: exactly the acknowledged instances, as rows and files.
            assert daemon.rows("SELECT count(*) FROM instances") == [(stored,)]
            assert len(stored_files(daemon)) == stored
            assert leftovers(daemon) == []
            # Each transition is logged once, not once per object or per tick.
            assert len(_log_lines(daemon, "new objects are refused until space is freed")) == 1
            time.sleep(1.5)  # a few monitor ticks while refusing: still one line each
            assert len(_log_lines(daemon, "WARNING appliance.ops.disk: disk storage")) == 1
            assert len(_log_lines(daemon, "CRITICAL appliance.ops.disk: disk storage")) == 1
            assert "\npacs_storage_accepting 0\n" in metrics_text(daemon)

            ballast.unlink()
            deadline = time.monotonic() + 15
            while scu_store(daemon.dicom_port, big_images[16:17]) != [0]:
                assert time.monotonic() < deadline, "stores still refused after freeing space"
                time.sleep(0.2)
            assert scu_store(daemon.dicom_port, big_images[17:18]) == [0]
            assert len(_log_lines(daemon, "new objects are accepted again")) == 1
            assert len(_log_lines(daemon, "INFO appliance.ops.disk: disk storage")) == 1  # back down
            assert daemon.rows("SELECT count(*) FROM instances") == [(stored + 2,)]
            assert leftovers(daemon) == []

            assert "\npacs_storage_accepting 1\n" in metrics_text(daemon)
            deadline = time.monotonic() + 15
            while (status := status_json(daemon))["stored_since_start"] < stored + 2:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            fs = [f for f in status["disk"]["filesystems"] if "storage" in f["roles"]][0]
            assert fs["path"] == str(storage) and fs["total"] == 24 * MiB
            assert status["disk"]["forecast"]["bytes_per_day"] > 0
            assert status["disk"]["forecast"]["days_left"] is not None
            assert "Name^" not in daemon.log()  # no patient names in the log
        finally:
            daemon.stop()


def test_disk_really_full_is_refused_with_nothing_left(tmp_path, big_images):
    # MinimumFreeMB 0: the filesystem runs out while an object is being received.
    root = tmp_path / "d"
    with tmpfs(root / "storage", "3m"):
        daemon = Daemon(root, base_config(root, DiskMonitor={"MinimumFreeMB": 0})).start()
        try:
            statuses = scu_store(daemon.dicom_port, big_images[:6])
            assert OUT_OF_RESOURCES in statuses and statuses[0] == 0, statuses
            stored = statuses.count(0)
            assert daemon.rows("SELECT count(*) FROM instances") == [(stored,)]
            assert len(stored_files(daemon)) == stored
            assert leftovers(daemon) == []
            echo = run(["echoscu", "-aec", "ORTHANC", "127.0.0.1", str(daemon.dicom_port)])
            assert echo.returncode == 0  # the server carries on
            assert "Traceback" not in daemon.log()
        finally:
            daemon.stop()


def test_forecast():
    now = 1_000 * DAY
    assert forecast(received_in_window=0, oldest_received=None, now=now, free=10**9,
                    minimum_free=0, stored_bytes=0, quota_bytes=0) == Forecast()
    # 14 GB in the last week of a month-old archive: 2 GB/day; 100 GB above the minimum.
    f = forecast(received_in_window=14 * 10**9, oldest_received=now - 30 * DAY, now=now,
                 free=101 * 10**9, minimum_free=10**9, stored_bytes=50 * 10**9, quota_bytes=60 * 10**9)
    assert f.bytes_per_day == 2 * 10**9
    assert (f.days_until_full, f.days_until_quota, f.days_left) == (50, 5, 5)
    # An hour-old archive counts as one day, not as 24 x its first hour.
    f = forecast(received_in_window=10**9, oldest_received=now - 3600, now=now, free=10 * 10**9,
                 minimum_free=0, stored_bytes=0, quota_bytes=0)
    assert f.bytes_per_day == 10**9 and f.days_until_quota is None and f.days_left == 10


def test_human_bytes():
    assert [human_bytes(n) for n in (None, 12, 1500, 2_500_000, 3.2e9, 1.5e12)] == [
        "?", "12 B", "1.5 kB", "2.5 MB", "3.2 GB", "1.5 TB"]
