"""Install Debian's Orthanc for the benchmark, without letting the package start its service.

The benchmark runs Orthanc as its own subprocess with a generated config on free loopback
ports; the packaged systemd service (port 4242/8042, /var/lib/orthanc) would only compete
for CPU and ports, so it must not run.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
# invoke-rc.d treats exit status 101 as "action forbidden": maintainer scripts then skip
# starting (and restarting) the service. See /usr/share/doc/init-system-helpers/README.policy-rc.d.
_POLICY_SCRIPT = "#!/bin/sh\n# temporary, written by tests/bench: keep packages from starting services\nexit 101\n"


class InstallError(RuntimeError):
    """Orthanc is missing and could not be installed."""


def ensure_orthanc(timeout: float = 900.0) -> Path:
    """Return the Orthanc binary, installing ``orthanc`` + ``orthanc-dicomweb`` with apt if missing.

    A temporary policy-rc.d keeps the package from starting its service; an existing
    policy-rc.d (containers usually ship one) is left exactly as it is. If the service did
    start anyway, it is stopped.
    """
    if ORTHANC_BIN.exists():
        return ORTHANC_BIN
    if os.geteuid() != 0:
        raise InstallError(f"{ORTHANC_BIN} is missing and installing it needs root: "
                           "apt-get install orthanc orthanc-dicomweb")
    ours = not POLICY_RC_D.exists()
    if ours:
        POLICY_RC_D.write_text(_POLICY_SCRIPT)
        POLICY_RC_D.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends",
                     "orthanc", "orthanc-dicomweb"]):
            log.info("running %s", " ".join(cmd))
            done = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
            if done.returncode != 0:
                raise InstallError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                                   f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    finally:
        if ours:
            POLICY_RC_D.unlink(missing_ok=True)
    _stop_packaged_service()
    if not ORTHANC_BIN.exists():
        raise InstallError(f"apt-get install succeeded but {ORTHANC_BIN} is still missing")
    return ORTHANC_BIN


def _stop_packaged_service() -> None:
    """Stop the packaged orthanc service if the install started it anyway."""
    if shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
        active = subprocess.run(["systemctl", "is-active", "--quiet", "orthanc"], timeout=30)
        if active.returncode == 0:
            log.warning("the orthanc service was started by the package; stopping it")
            subprocess.run(["systemctl", "stop", "orthanc"], timeout=60, check=False)
        return
    # Without systemd (containers), the SysV script may have started it.
    if Path("/etc/init.d/orthanc").exists():
        status = subprocess.run(["/etc/init.d/orthanc", "status"], capture_output=True,
                                timeout=30)
        if status.returncode == 0:
            log.warning("the orthanc service was started by the package; stopping it")
            subprocess.run(["/etc/init.d/orthanc", "stop"], timeout=60, check=False,
                           capture_output=True)
