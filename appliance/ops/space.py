"""The store admission (free space, quotas) and the disk monitor of one
configuration, built the same way for the daemon and for the commands that
store with the daemon stopped (``pacs-appliance import``)."""

from __future__ import annotations

from appliance.config import Config
from appliance.ops.backup import BackupSettings, backup_directory
from appliance.ops.disk import MB, DiskMonitor, Role
from appliance.ops.quota import StorageMode, StoreAdmission
from appliance.store import Archive


def install_admission(config: Config, archive: Archive) -> tuple[StoreAdmission, DiskMonitor]:
    """Build both, install the admission in ``archive`` and wire the monitor's
    measurements into it (``DiskMonitor.measure`` once before the first store)."""
    dm = config.disk_monitor
    admission = StoreAdmission(
        archive, minimum_free_mb=dm.minimum_free_mb, maximum_storage_mb=config.maximum_storage_size,
        maximum_patient_count=config.maximum_patient_count,
        mode=StorageMode(config.maximum_storage_mode), spare_recent_seconds=config.stable_age)
    archive.admission = admission
    backup_settings = config.view(BackupSettings)
    disk = DiskMonitor(
        directories={Role.STORAGE: config.storage_directory, Role.INDEX: config.index_directory,
                     Role.TEMPORARY: config.temporary_directory,
                     Role.BACKUPS: backup_directory(backup_settings),
                     Role.MIRROR: config.backups.storage_mirror},
        created_later=(Role.TEMPORARY, Role.BACKUPS) if config.backups.directory_is_default
        else (Role.TEMPORARY,),
        archive=archive, interval=dm.interval_seconds, warn_percent=dm.warn_percent,
        critical_percent=dm.critical_percent, minimum_free_mb=dm.minimum_free_mb,
        quota_bytes=config.maximum_storage_size * MB, stored_bytes=lambda: admission.stored_bytes,
        on_state=admission.disk_changed)
    return admission, disk
