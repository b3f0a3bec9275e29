#!/usr/bin/env bash
# A second libvirt host on this machine, for the tests of several hypervisor hosts:
# the qemu:///session daemon of a dedicated user, reached through an sshd bound to
# 127.0.0.2 only, as qemu+ssh://gridvm-host2@127.0.0.2/session?keyfile=... (see
# docs/architecture-notes.md, "Several hypervisor hosts").  Idempotent; needs root and
# openssh-server (scripts/setup-host.sh installs it).
set -euo pipefail

HOST_USER="${GRIDVM_HOST2_USER:-gridvm-host2}"
ADDRESS="${GRIDVM_HOST2_ADDRESS:-127.0.0.2}"
KEYS=/var/lib/gridvm/host2-ssh              # the site's key and the sshd's host key
HOME_DIR=/var/lib/gridvm/host2-home         # the user's home: its libvirt session state
CONFIG=/etc/ssh/gridvm-host2-sshd_config
PID_FILE=/run/gridvm-host2-sshd.pid
URI="qemu+ssh://$HOST_USER@$ADDRESS/session?keyfile=$KEYS/id_ed25519"

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

mkdir -p /var/lib/gridvm "$KEYS" /run/sshd
chmod 700 "$KEYS"
if ! id "$HOST_USER" >/dev/null 2>&1; then
    log "creating the user $HOST_USER (the second host's libvirt session)"
    useradd --system --home-dir "$HOME_DIR" --create-home --shell /bin/sh "$HOST_USER"
fi
# no password, but not locked: a locked account may not log in with a key either
if [ "$(getent shadow "$HOST_USER" | cut -d: -f2)" != "*" ]; then usermod -p '*' "$HOST_USER"; fi
# the user may use /dev/kvm as the system's QEMU may (libvirt probes it; gridvm uses TCG)
if getent group kvm >/dev/null && ! id -nG "$HOST_USER" | grep -qw kvm; then
    usermod -a -G kvm "$HOST_USER"
fi

[ -f "$KEYS/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C "gridvm site" -f "$KEYS/id_ed25519"
[ -f "$KEYS/host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$KEYS/host_ed25519_key"

SSH_DIR="$HOME_DIR/.ssh"
mkdir -p "$SSH_DIR"
if ! cmp -s "$KEYS/id_ed25519.pub" "$SSH_DIR/authorized_keys" 2>/dev/null; then
    cp "$KEYS/id_ed25519.pub" "$SSH_DIR/authorized_keys"
fi
chown -R "$HOST_USER:" "$SSH_DIR"
chmod 700 "$SSH_DIR" && chmod 600 "$SSH_DIR/authorized_keys"

# the session QEMU spawns the guest's callback relay as the system one does (setup-host.sh)
QEMU_CONF="$HOME_DIR/.config/libvirt/qemu.conf"
if ! grep -qs '^seccomp_sandbox = 0' "$QEMU_CONF"; then
    log "session qemu.conf of $HOST_USER: seccomp_sandbox = 0"
    mkdir -p "$(dirname "$QEMU_CONF")"
    echo 'seccomp_sandbox = 0' >> "$QEMU_CONF"
    chown -R "$HOST_USER:" "$HOME_DIR/.config"
    for pid in $(pgrep -u "$HOST_USER" -x libvirtd || true); do kill "$pid"; done
fi

# the host key, known under the address (any port: tests may reach it through a relay)
KNOWN=/etc/ssh/ssh_known_hosts
LINE="$ADDRESS,[$ADDRESS]:* $(cut -d' ' -f1,2 "$KEYS/host_ed25519_key.pub")"
if ! grep -qxF "$LINE" "$KNOWN" 2>/dev/null; then
    log "known_hosts: the host key of $ADDRESS"
    touch "$KNOWN"
    grep -v "^$ADDRESS," "$KNOWN" > "$KNOWN.new" || true
    echo "$LINE" >> "$KNOWN.new" && mv "$KNOWN.new" "$KNOWN" && chmod 644 "$KNOWN"
fi

cat > "$CONFIG.new" <<CONF
# gridvm's second test host (scripts/setup-second-host.sh): $ADDRESS only, one user, keys only
ListenAddress $ADDRESS
Port 22
HostKey $KEYS/host_ed25519_key
PidFile $PID_FILE
AllowUsers $HOST_USER
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
CONF
if ! cmp -s "$CONFIG.new" "$CONFIG" 2>/dev/null; then
    mv "$CONFIG.new" "$CONFIG"
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        log "restarting the sshd of $ADDRESS for its new configuration"
        kill "$(cat "$PID_FILE")"
        for _ in $(seq 1 50); do kill -0 "$(cat "$PID_FILE" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
    fi
else
    rm -f "$CONFIG.new"
fi
if ! { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }; then
    log "starting the sshd of $ADDRESS"
    /usr/sbin/sshd -f "$CONFIG"
fi

for _ in $(seq 1 50); do
    virsh -q -c "$URI" list >/dev/null 2>&1 && break
    sleep 0.2
done
if ! out="$(virsh -q -c "$URI" list 2>&1)"; then
    echo "setup-second-host: libvirt over ssh to $ADDRESS does not answer: $out" >&2
    exit 1
fi
echo "$URI" > /var/lib/gridvm/host2-uri
log "second libvirt host answers at $URI"
