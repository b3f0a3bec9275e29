#!/usr/bin/env bash
# Prepare this machine for gridvm, idempotently: Debian packages, host fixes, daemons, venv.
#
#   scripts/setup-host.sh [--with-postgres]
#
# Safe to run again and again: every step checks before it acts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GRIDVM_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
WITH_POSTGRES=0
for arg in "$@"; do
    case "$arg" in
        --with-postgres) WITH_POSTGRES=1 ;;
        *) echo "setup-host: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- Debian packages ---------------------------------------------------------------------
PACKAGES=(
    qemu-system-x86 qemu-utils                                # the hypervisor
    libvirt-daemon-system libvirt-clients libvirt-dev pkg-config  # libvirt + libvirt-python build
    cpio zstd e2fsprogs erofs-utils                           # guest image builder
    mmdebstrap fdisk dosfstools mtools syslinux syslinux-common  # cloud images (own bootloader)
    umoci                                                     # OCI images (container tests)
    socat                                                     # guest -> host TSI callback relay
    openssh-server                                            # the second test host (qemu+ssh)
    iproute2 procps
    chromium chromium-driver                                  # the dashboard's browser tests
)
if [ "$WITH_POSTGRES" = 1 ]; then PACKAGES+=(postgresql); fi

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    # no packaged daemon starts by itself (Debian's sshd would listen on every address):
    # this script starts the daemons gridvm needs, bound where they must be
    OWN_POLICY=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod 755 /usr/sbin/policy-rc.d
        OWN_POLICY=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    if [ "$OWN_POLICY" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
else
    log "Debian packages present"
fi
# The guest image builder resolves and downloads Debian packages: it needs package lists.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 && \
   ! ls /var/lib/apt/lists/*_Packages.* >/dev/null 2>&1; then
    log "fetching package lists"
    $SUDO apt-get update -qq
fi

# --- host fixes (host-setup.md) ----------------------------------------------------------
# libvirt must see /dev/kvm the same way as root and as libvirt-qemu, or it re-probes QEMU
# (~50 s) on every domain start.  gridvm uses software emulation either way.
if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
    $SUDO chgrp kvm /dev/kvm && $SUDO chmod 660 /dev/kvm || true
fi

# The TSI callback needs one guest->host connection per channel, which QEMU's user-mode
# networking gives only through "guestfwd=...-cmd:" (a relay process per connection).
# libvirt's seccomp sandbox forbids QEMU to spawn it, so libvirt's sandbox is switched off
# and every gridvm domain passes its own -sandbox with spawning allowed (vmm/domain.py).
QEMU_CONF=/etc/libvirt/qemu.conf
RESTART_LIBVIRTD=0
if ! grep -q '^seccomp_sandbox = 0' "$QEMU_CONF"; then
    log "qemu.conf: seccomp_sandbox = 0 (gridvm domains bring their own -sandbox)"
    echo 'seccomp_sandbox = 0' | $SUDO tee -a "$QEMU_CONF" >/dev/null
    RESTART_LIBVIRTD=1
fi

# --- daemons -----------------------------------------------------------------------------
$SUDO mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/gridvm
if [ "$RESTART_LIBVIRTD" = 1 ] && pgrep -x libvirtd >/dev/null; then
    log "restarting libvirtd for the new qemu.conf"
    $SUDO pkill -x libvirtd
    for _ in $(seq 1 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.1; done
fi
if ! pgrep -x virtlogd >/dev/null; then
    log "starting virtlogd"
    $SUDO virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
    log "starting libvirtd"
    $SUDO libvirtd -d
fi
for _ in $(seq 1 100); do
    [ -S /var/run/libvirt/libvirt-sock ] && break
    sleep 0.1
done
[ -S /var/run/libvirt/libvirt-sock ] || { echo "setup-host: libvirtd did not start" >&2; exit 1; }
log "libvirtd and virtlogd running"

if [ "$WITH_POSTGRES" = 1 ]; then
    "$ROOT/scripts/start-postgres.sh"
fi

# A second hypervisor host for the tests of several hosts: a session libvirtd of its own
# user behind an sshd on 127.0.0.2 (scripts/setup-second-host.sh).
if [ "$(id -u)" -eq 0 ]; then
    "$ROOT/scripts/setup-second-host.sh"
else
    $SUDO bash "$ROOT/scripts/setup-second-host.sh"
fi

# --- Python virtualenv -------------------------------------------------------------------
STAMP="$VENV/.gridvm-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    log "installing gridvm and its Python dependencies"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
else
    log "virtualenv up to date"
fi
log "ready"
