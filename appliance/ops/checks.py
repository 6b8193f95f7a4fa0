"""What ``check-config`` verifies beyond the file itself: the folders the
configuration names that must already exist.

The daemon starts without them (a backup disk that is not mounted must not stop
the scanners' images from being received; the status then shows it MISSING), but
the person checking a configuration before a start wants to hear it now.
"""

from __future__ import annotations

from pathlib import Path

from appliance.config import Config


def missing_folders(config: Config) -> list[str]:
    """``"Key: problem"`` for each folder that must exist and does not (or is a file)."""
    problems = []
    wanted = [("Backups.StorageMirror", config.backups.storage_mirror)]
    if not config.backups.directory_is_default:
        # Only the default backup folder is made when missing (BackupsConfig.directory).
        wanted.insert(0, ("Backups.Directory", config.backups.directory))
    for key, folder in wanted:
        if folder is None:
            continue
        path = Path(folder)
        if not path.exists():
            problems.append(f"{key}: {path} does not exist (a disk not mounted?)")
        elif not path.is_dir():
            problems.append(f"{key}: {path} is not a folder")
    return problems
