"""Disk monitoring: free space of the filesystems the daemon writes to, thresholds,
and a growth forecast, published as an immutable :class:`DiskState`.

Every ``DiskMonitor.IntervalSeconds`` the monitor measures (statvfs) the filesystems
of the storage, index, temporary and backup directories (each filesystem once, with
the roles it serves), logs a threshold crossing once per transition rather than on
every tick, and hands the new state to whoever listens (the store admission, which
refuses new objects below ``MinimumFreeMB``).

The forecast is the ingest rate over the last days, read from the index (bytes of
the instances received in the window), and how many days of that rate the free
space above ``MinimumFreeMB`` (and the MaximumStorageSize quota) still holds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # the annotation only: the store pulls pydicom, which the CLI need not load
    from appliance.store import Archive

log = logging.getLogger(__name__)

DAY = 86400.0
# The forecast looks at this many days of ingest. Its query sums the file sizes of
# a week of instances: it is redone at every measurement while that is cheap, and
# at most every FORECAST_EVERY seconds once it costs more than FORECAST_CHEAP.
FORECAST_WINDOW_DAYS = 7
FORECAST_EVERY = 600.0
FORECAST_CHEAP = 0.05
MB = 1 << 20


class Role(enum.Enum):
    """What the daemon keeps on a filesystem."""

    STORAGE = "storage"
    INDEX = "index"
    TEMPORARY = "temporary"
    BACKUPS = "backups"
    MIRROR = "mirror"


class Level(enum.IntEnum):
    """How full a filesystem is, against WarnPercent / CriticalPercent."""

    OK = 0
    WARNING = 1
    CRITICAL = 2


class DiskUsage(NamedTuple):
    """A filesystem's size and use in bytes, and the percentage used (psutil's figures)."""

    total: int
    used: int
    free: int                   # bytes an unprivileged process may still use
    percent: float              # used / (used + free), rounded to 0.1


def disk_usage(path: str | os.PathLike) -> DiskUsage:
    """What ``psutil.disk_usage(path)`` answers on Linux, from ``os.statvfs`` directly:
    importing psutil costs the daemon ~2 MB of RSS and tens of ms at start (issue 11.8).
    OSError if ``path`` cannot be reached."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    used = total - st.f_bfree * st.f_frsize
    free = st.f_bavail * st.f_frsize
    percent = round(used / (used + free) * 100, 1) if used + free else 0.0
    return DiskUsage(total, used, free, percent)


@dataclass(frozen=True)
class FilesystemUsage:
    """One filesystem, measured."""

    path: Path                  # the first directory of ours on it
    roles: tuple[Role, ...]
    total: int
    used: int
    free: int                   # bytes an unprivileged process may still use
    percent: float              # psutil's: used / (used + free)
    level: Level

    @property
    def label(self) -> str:
        """"storage+index" and the like."""
        return "+".join(r.value for r in self.roles)


@dataclass(frozen=True)
class Forecast:
    """Growth of the archive and the days it has left at that rate."""

    bytes_per_day: float | None = None      # None: nothing received yet
    days_until_full: float | None = None    # storage filesystem down to MinimumFreeMB
    days_until_quota: float | None = None   # MaximumStorageSize reached (when set)

    @property
    def days_left(self) -> float | None:
        """The nearer of the two limits."""
        days = [d for d in (self.days_until_full, self.days_until_quota) if d is not None]
        return min(days) if days else None


@dataclass(frozen=True)
class DiskState:
    """One measurement of every filesystem, and what it means for new objects."""

    measured_at: float                          # time.time()
    filesystems: tuple[FilesystemUsage, ...]
    missing: tuple[tuple[Role, Path], ...]      # directories that do not exist (unmounted?)
    store_free: int                             # least free bytes of the storage and index filesystems
    minimum_free: int                           # MinimumFreeMB in bytes
    forecast: Forecast

    @property
    def accepting(self) -> bool:
        """True while there is room for new objects."""
        return self.store_free >= self.minimum_free

    def usage(self, role: Role) -> FilesystemUsage | None:
        """The filesystem serving ``role``."""
        for fs in self.filesystems:
            if role in fs.roles:
                return fs
        return None


def forecast(*, received_in_window: int, oldest_received: float | None, now: float,
             free: int, minimum_free: int, stored_bytes: int, quota_bytes: int) -> Forecast:
    """Days until the disk (or the quota) is full at the recent ingest rate.

    The rate is the bytes received over the last FORECAST_WINDOW_DAYS, or over the
    archive's whole life when it is younger, but never less than one day, so a first
    hour of images does not extrapolate to a panic.
    """
    if oldest_received is None:
        return Forecast()
    span_days = min(FORECAST_WINDOW_DAYS, max(1.0, (now - oldest_received) / DAY))
    rate = received_in_window / span_days
    if rate <= 0:
        return Forecast(bytes_per_day=0.0)
    until_full = max(0, free - minimum_free) / rate
    until_quota = max(0, quota_bytes - stored_bytes) / rate if quota_bytes else None
    return Forecast(rate, until_full, until_quota)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def human_bytes(n: float | None) -> str:
    """1.2 GB, 350 MB, 12 kB (decimal units, as df -H and file managers show)."""
    if n is None:
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


class DiskMonitor:
    """Measures the filesystems every ``interval`` seconds; see the module docstring."""

    def __init__(self, *, directories: Mapping[Role, Path | None], archive: Archive,
                 created_later: Iterable[Role] = (), interval: float, warn_percent: int, critical_percent: int,
                 minimum_free_mb: int, quota_bytes: int = 0,
                 stored_bytes: Callable[[], int] | None = None,
                 on_state: Callable[[DiskState], None] | None = None) -> None:
        self._directories = {role: Path(p) for role, p in directories.items() if p is not None}
        # Directories made on first use (the temporary folder, the default backup
        # folder) are measured at their nearest existing parent until then.
        self._created_later = frozenset(created_later)
        self._archive = archive
        self.interval = interval
        self._warn = warn_percent
        self._critical = critical_percent
        self.minimum_free = minimum_free_mb * MB
        self._quota_bytes = quota_bytes
        self._stored_bytes = stored_bytes or (lambda: 0)
        self._on_state = on_state
        self._levels: dict[tuple[Role, ...], Level] = {}
        self._missing_logged: set[Role] = set()
        self._forecast = Forecast()
        self._forecast_at = 0.0
        self._forecast_cost = 0.0
        self.state: DiskState | None = None

    def _level(self, percent: float) -> Level:
        if percent >= self._critical:
            return Level.CRITICAL
        if percent >= self._warn:
            return Level.WARNING
        return Level.OK

    def measure(self) -> DiskState:
        """Measure now (blocking: statvfs and one index query), log transitions,
        publish and return the state."""
        now = time.time()
        by_device: dict[int, list[tuple[Role, Path]]] = {}
        missing = []
        for role, path in self._directories.items():
            if role in self._created_later:
                path = _existing(path)
            try:
                device = os.stat(path).st_dev
            except OSError:
                missing.append((role, path))
                continue
            by_device.setdefault(device, []).append((role, path))
        filesystems = []
        for entries in by_device.values():
            roles = tuple(role for role, _ in entries)
            path = entries[0][1]
            try:
                du = disk_usage(path)
            except OSError:
                missing.extend(entries)
                continue
            fs = FilesystemUsage(path, roles, du.total, du.used, du.free, du.percent,
                                 self._level(du.percent))
            filesystems.append(fs)
            self._log_level(fs)
        self._log_missing(missing)
        store = [fs.free for fs in filesystems if {Role.STORAGE, Role.INDEX} & set(fs.roles)]
        store_free = min(store) if store else 0
        if self._forecast_cost < FORECAST_CHEAP or now - self._forecast_at >= FORECAST_EVERY:
            t0 = time.monotonic()
            self._forecast = self._compute_forecast(now, store_free)
            self._forecast_at, self._forecast_cost = now, time.monotonic() - t0
        state = DiskState(now, tuple(filesystems), tuple(missing), store_free,
                          self.minimum_free, self._forecast)
        self.state = state
        if self._on_state is not None:
            self._on_state(state)
        return state

    def _compute_forecast(self, now: float, free: int) -> Forecast:
        try:
            received, oldest = self._archive.ingest_since(now - FORECAST_WINDOW_DAYS * DAY)
        except Exception as e:  # noqa: BLE001 - a forecast is never worth a crash
            log.warning("growth forecast not computed: %s", e)
            return self._forecast
        return forecast(received_in_window=received, oldest_received=oldest, now=now, free=free,
                        minimum_free=self.minimum_free, stored_bytes=self._stored_bytes(),
                        quota_bytes=self._quota_bytes)

    def _log_level(self, fs: FilesystemUsage) -> None:
        before = self._levels.get(fs.roles, Level.OK)
        self._levels[fs.roles] = fs.level
        if fs.level == before:
            return
        args = (fs.label, fs.path, fs.percent, human_bytes(fs.free))
        if fs.level is Level.CRITICAL:
            log.critical("disk %s (%s) is %.0f%% full, %s free", *args)
        elif fs.level is Level.WARNING and before < Level.WARNING:
            log.warning("disk %s (%s) is %.0f%% full, %s free", *args)
        elif fs.level < before:
            log.info("disk %s (%s) back to %.0f%% full, %s free", *args)

    def _log_missing(self, missing: list[tuple[Role, Path]]) -> None:
        now_missing = {role for role, _ in missing}
        for role, path in missing:
            if role not in self._missing_logged:
                log.warning("disk monitor: %s directory %s does not exist (not mounted?)",
                            role.value, path)
        for role in self._missing_logged - now_missing:
            log.info("disk monitor: %s directory %s is back", role.value, self._directories[role])
        self._missing_logged = now_missing

    async def run(self) -> None:
        """Measure every ``interval`` seconds until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.measure)
            except Exception:  # noqa: BLE001 - keep monitoring
                log.exception("disk measurement failed")
            await asyncio.sleep(self.interval)
