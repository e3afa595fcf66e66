#!/bin/sh
# Runs a command where the Python SDKs' fixed paths are private to it, so a test can use them
# without touching the host's: /usr/local/bin/firecracker (the SDKs' binary path) is a link to the
# Kestrel binary under test and /var/lib/firecracker (their state) is an empty tmpfs. Everything
# else in /usr/local/bin and /var/lib stays reachable (links to the originals). Meant to run under
# `unshare --mount --propagation private` (as root), so the mounts die with the command.
#
# Usage: sandbox.sh SCRATCH_DIR KESTREL COMMAND [ARGS...]
set -eu
scratch=$1
kestrel=$2
shift 2

# shadow DIR NAME: DIR becomes a tmpfs whose entries are links to DIR's original entries, which
# stay reachable through a bind mount at SCRATCH/NAME.
shadow() {
    mkdir -p "$scratch/$2"
    mount --bind "$1" "$scratch/$2"
    mount -t tmpfs -o mode=0755 tmpfs "$1"
    for entry in "$scratch/$2"/* "$scratch/$2"/.[!.]*; do
        if [ -e "$entry" ] || [ -L "$entry" ]; then
            ln -s "$entry" "$1/"
        fi
    done
}

shadow /usr/local/bin bin
shadow /var/lib lib
rm -f /usr/local/bin/firecracker /var/lib/firecracker
ln -s "$kestrel" /usr/local/bin/firecracker
mkdir -m 0755 /var/lib/firecracker
exec "$@"
