#!/usr/bin/env bash
# Install everything the test suite needs on Debian 12, then run all of it.
# Usage: bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Debian packages: DCMTK's echoscu/storescu/findscu are the reference DICOM
# clients, curl and nginx (with openssl for a test certificate) the HTTP side;
# libsystemd-dev and pkg-config build systemd-python; dpkg-dev, debhelper,
# dh-virtualenv and lintian build and check the .deb (tests/test_debian.py);
# chromium and chromium-driver run the web UI's browser tests (tests/ui); orthanc
# stores the archives tests/adopt adopts (run by the tests with their own config and
# ports: its packaged service is kept from starting by a policy-rc.d for the install),
# and orthanc-dicomweb's /etc/orthanc/dicomweb.json is part of the Debian folder
# tests/test_config.py loads unchanged;
# e2fsprogs, mount and util-linux (mkfs.ext4, a loop mount, setpriv) put Orthanc's files
# on a second filesystem or out of the daemon's reach for links (tests/adopt, as root).
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    dcmtk curl nginx openssl python3-venv python3-dev gcc pkg-config libsystemd-dev \
    dpkg-dev debhelper dh-virtualenv lintian chromium chromium-driver \
    e2fsprogs mount util-linux >/dev/null
if ! dpkg -s orthanc orthanc-dicomweb >/dev/null 2>&1; then
    policy=/usr/sbin/policy-rc.d
    [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null; $sudo chmod +x "$policy"; added=1; }
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null
    [ -z "${added:-}" ] || $sudo rm -f "$policy"
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,systemd]'
exec .venv/bin/python -m pytest "$@"
