#!/usr/bin/env bash
# Kestrel Linux guest kit: builds vmlinux, initramfs.cpio and rootfs.ext4, and prepares the
# stock Debian cloud kernel as cloud-vmlinux, into a cache directory outside the repository.
# Idempotent: each artefact is rebuilt only when its inputs (Debian package version, config
# fragment, patches, init script, recipe) change.
#
#   kit/build.sh            build what is missing or stale, print the artefact paths
#   kit/build.sh --boot-only  only what booting Linux needs (vmlinux, initramfs.cpio): what
#                           scripts/demo uses; the test artefacts (rootfs.ext4, cloud-vmlinux) are skipped
#   KESTREL_KIT_DIR=/path   cache directory (default: $HOME/.cache/kestrel-kit)
#   KESTREL_KIT_JOBS=N      make -j (default: 2)
#
# See kit/README.md.
set -euo pipefail

BOOT_ONLY=false
case "${1:-}" in
    --boot-only) BOOT_ONLY=true ;;
    "") ;;
    *) printf 'usage: kit/build.sh [--boot-only]\n' >&2; exit 2 ;;
esac

KIT_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${KESTREL_KIT_DIR:-$HOME/.cache/kestrel-kit}
JOBS=${KESTREL_KIT_JOBS:-2}
NICE=(nice -n 19)

# Bump a recipe version when the way an artefact is built changes.
KERNEL_RECIPE=1
INITRAMFS_RECIPE=1
ROOTFS_RECIPE=1
CLOUD_RECIPE=1

PACKAGES=(linux-source-6.1 busybox-static bc bison flex libelf-dev libssl-dev cpio xz-utils
          e2fsprogs gcc make libc6-dev patch binutils lz4)
# Options build.sh insists on after olddefconfig, beyond those listed in linux.config.
REQUIRED_OPTS=(SERIAL_8250_CONSOLE BLK_DEV_INITRD PCI PCI_MSI VIRTIO_PCI VIRTIO_MMIO
               VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_NET VIRTIO_CONSOLE HW_RANDOM_VIRTIO
               VSOCKETS VIRTIO_VSOCKETS VIRTIO_BALLOON EXT4_FS PVH SMP KVM_GUEST X86_MPPARSE DEVTMPFS
               BINFMT_ELF BINFMT_SCRIPT DEVPORT)

log() { printf 'kestrel-kit: %s\n' "$*" >&2; }
die() { printf 'kestrel-kit: error: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

now() { date +%s; }
T_START=$(now)

[ "$(uname -m)" = x86_64 ] || die "this kit builds an x86_64 guest and expects an x86_64 Debian host"
command -v dpkg-query >/dev/null || die "dpkg-query not found: this kit needs a Debian/Ubuntu host"
for f in linux.config init.sh; do
    [ -f "$KIT_SRC/$f" ] || die "missing $KIT_SRC/$f"
done

# ---------------------------------------------------------------- packages
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root or sudo to run: $*"; fi
}
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        log "apt-get update (package lists missing or stale)"
        as_root apt-get update -q >/dev/null || die "apt-get update failed"
        as_root apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install failed for: ${missing[*]}"
    fi
fi
LINUX_TARBALL=/usr/src/linux-source-6.1.tar.xz
[ -f "$LINUX_TARBALL" ] || die "$LINUX_TARBALL not found (package linux-source-6.1 broken?)"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (package busybox-static broken?)"
file_is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'INTERP'; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is not statically linked (busybox-static not installed?)"

mkdir -p "$CACHE" || die "cannot create cache directory $CACHE"
CACHE=$(cd "$CACHE" && pwd)

# hash of a list of strings and files: stamp key for an artefact
inputs_hash() {
    local item
    for item in "$@"; do
        if [ -f "$item" ]; then printf 'file %s\n' "$(basename "$item")"; cat "$item"
        else printf 'str %s\n' "$item"; fi
    done | sha256sum | cut -d' ' -f1
}
is_fresh() { # artefact stampfile hash
    [ -s "$1" ] && [ -f "$2" ] && [ "$(cat "$2")" = "$3" ]
}

# ---------------------------------------------------------------- 1. vmlinux
PATCHES=()
if [ -d "$KIT_SRC/patches" ]; then
    while IFS= read -r p; do PATCHES+=("$p"); done < <(find "$KIT_SRC/patches" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)
fi
KVER=$(pkg_version linux-source-6.1)
KHASH=$(inputs_hash "recipe=$KERNEL_RECIPE" "linux-source-6.1=$KVER" "$KIT_SRC/linux.config" ${PATCHES[@]+"${PATCHES[@]}"})
VMLINUX=$CACHE/vmlinux
SRCDIR_CURRENT=$CACHE/build/linux-${KHASH:0:12}
if is_fresh "$VMLINUX" "$VMLINUX.stamp" "$KHASH"; then
    log "vmlinux up to date (linux-source-6.1 $KVER)"
else
    T0=$(now)
    SRCDIR=$SRCDIR_CURRENT
    # drop trees of older inputs; keep the current one so an interrupted make resumes
    if [ -d "$CACHE/build" ]; then
        find "$CACHE/build" -mindepth 1 -maxdepth 1 -name 'linux-*' ! -name "linux-${KHASH:0:12}" \
            -exec rm -rf {} +
    fi
    if [ ! -f "$SRCDIR/.kit-patched" ]; then
        rm -rf "$SRCDIR" "$SRCDIR.unpack"
        mkdir -p "$SRCDIR.unpack"
        log "unpacking $LINUX_TARBALL ($KVER)"
        "${NICE[@]}" tar -xf "$LINUX_TARBALL" -C "$SRCDIR.unpack" || die "cannot unpack $LINUX_TARBALL"
        top=$(find "$SRCDIR.unpack" -mindepth 1 -maxdepth 1 -type d | head -n1)
        [ -n "$top" ] && [ -f "$top/Makefile" ] || die "unexpected layout in $LINUX_TARBALL"
        mv "$top" "$SRCDIR"
        rmdir "$SRCDIR.unpack"
        for p in ${PATCHES[@]+"${PATCHES[@]}"}; do
            log "applying $(basename "$p")"
            patch -p1 -s -N -d "$SRCDIR" < "$p" >/dev/null || die "patch $(basename "$p") does not apply to linux-source-6.1 $KVER"
        done
        touch "$SRCDIR/.kit-patched"
    fi
    cp "$KIT_SRC/linux.config" "$SRCDIR/kit.config"
    log "configuring (allnoconfig + linux.config)"
    "${NICE[@]}" make -s -C "$SRCDIR" allnoconfig KCONFIG_ALLCONFIG=kit.config >"$SRCDIR/kit-config.log" 2>&1 \
        || die "make allnoconfig failed, see $SRCDIR/kit-config.log"
    "${NICE[@]}" make -s -C "$SRCDIR" olddefconfig >>"$SRCDIR/kit-config.log" 2>&1 \
        || die "make olddefconfig failed, see $SRCDIR/kit-config.log"
    # every option of the fragment must have survived, plus the required list
    bad=()
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*)
                if ! grep -qxF "$line" "$SRCDIR/.config"; then bad+=("$line"); fi ;;
            "# CONFIG_"*" is not set")
                opt=${line#\# }; opt=${opt%% *}
                if grep -q "^$opt=" "$SRCDIR/.config"; then bad+=("$line"); fi ;;
        esac
    done < "$KIT_SRC/linux.config"
    for opt in "${REQUIRED_OPTS[@]}"; do
        if ! grep -qx "CONFIG_$opt=y" "$SRCDIR/.config"; then bad+=("CONFIG_$opt=y"); fi
    done
    [ ${#bad[@]} -eq 0 ] || die "kernel .config lacks: ${bad[*]} (dependency missing in linux.config?)"
    log "building vmlinux with make -j$JOBS (3.5-7 minutes on 2 cores, depending on what else runs)"
    "${NICE[@]}" make -C "$SRCDIR" -j"$JOBS" vmlinux >"$SRCDIR/kit-build.log" 2>&1 \
        || { tail -n 20 "$SRCDIR/kit-build.log" >&2; die "kernel build failed, see $SRCDIR/kit-build.log"; }
    [ -s "$SRCDIR/vmlinux" ] || die "kernel build produced no vmlinux"
    readelf -n "$SRCDIR/vmlinux" 2>/dev/null | grep -q 'Xen.*0x00000012\|PHYS32_ENTRY\|XEN_ELFNOTE_PHYS32_ENTRY\|Unknown note type: (0x00000012)' \
        || log "warning: no PVH entry note found in vmlinux (Kestrel will use the 64-bit entry)"
    cp "$SRCDIR/vmlinux" "$VMLINUX.tmp" && mv "$VMLINUX.tmp" "$VMLINUX"
    cp "$SRCDIR/.config" "$CACHE/vmlinux.config"
    echo "$KHASH" > "$VMLINUX.stamp"
    log "vmlinux built in $(( $(now) - T0 )) s"
fi

# ---------------------------------------------------------------- 2. initramfs.cpio
BBVER=$(pkg_version busybox-static)
IHASH=$(inputs_hash "recipe=$INITRAMFS_RECIPE" "busybox-static=$BBVER" "$KIT_SRC/init.sh" \
    "$KIT_SRC/vsock-test.c" "gcc=$(pkg_version gcc)" "libc6-dev=$(pkg_version libc6-dev)")
INITRAMFS=$CACHE/initramfs.cpio
if is_fresh "$INITRAMFS" "$INITRAMFS.stamp" "$IHASH"; then
    log "initramfs.cpio up to date (busybox-static $BBVER)"
else
    T0=$(now)
    root=$(mktemp -d "$CACHE/initramfs-root.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt}
    cp "$BUSYBOX" "$root/bin/busybox"
    "$BUSYBOX" --list-full | while IFS= read -r applet; do
        [ "$applet" = bin/busybox ] || [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    [ -e "$root/bin/sh" ] || die "busybox has no sh applet"
    install -m 0755 "$KIT_SRC/init.sh" "$root/init"
    # the guest side of the vsock tests (busybox has no AF_VSOCK tool)
    gcc -static -O2 -Wall -o "$root/bin/vsock-test" "$KIT_SRC/vsock-test.c" || die "cannot build vsock-test"
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\n' > "$root/etc/group"
    # the kernel's built-in initramfs already provides /dev/console; add it when we can
    if [ "$(id -u)" = 0 ]; then mknod -m 600 "$root/dev/console" c 5 1; fi
    (cd "$root" && find . | LC_ALL=C sort | "${NICE[@]}" cpio -o -H newc -R 0:0 --quiet) > "$INITRAMFS.tmp" \
        || die "cpio failed"
    mv "$INITRAMFS.tmp" "$INITRAMFS"
    rm -rf "$root"; trap - EXIT
    echo "$IHASH" > "$INITRAMFS.stamp"
    log "initramfs.cpio built in $(( $(now) - T0 )) s"
fi

if $BOOT_ONLY; then
    log "done in $(( $(now) - T_START )) s (--boot-only: rootfs.ext4 and cloud-vmlinux not prepared)"
    echo "vmlinux:        $VMLINUX"
    echo "initramfs.cpio: $INITRAMFS"
    exit 0
fi

# ---------------------------------------------------------------- 3. rootfs.ext4
E2VER=$(pkg_version e2fsprogs)
ROOTFS_HELLO='hello from the kestrel rootfs'
RHASH=$(inputs_hash "recipe=$ROOTFS_RECIPE" "e2fsprogs=$E2VER" "hello=$ROOTFS_HELLO")
ROOTFS=$CACHE/rootfs.ext4
if is_fresh "$ROOTFS" "$ROOTFS.stamp" "$RHASH"; then
    log "rootfs.ext4 up to date"
else
    T0=$(now)
    dir=$(mktemp -d "$CACHE/rootfs-dir.XXXXXX")
    trap 'rm -rf "$dir"' EXIT
    printf '%s\n' "$ROOTFS_HELLO" > "$dir/hello.txt"
    mkdir -p "$dir/data"
    seq 1 1000 > "$dir/data/numbers.txt"          # 3893 bytes, sum 500500
    printf 'kestrel-kit rootfs recipe %s\n' "$ROOTFS_RECIPE" > "$dir/VERSION"
    rm -f "$ROOTFS.tmp"
    E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -L kestrel-rootfs \
        -U 6b657374-7265-6c2d-6b69-742d726f6f74 -E root_owner=0:0 \
        -d "$dir" "$ROOTFS.tmp" 16M >/dev/null 2>&1 || die "mkfs.ext4 -d failed"
    mv "$ROOTFS.tmp" "$ROOTFS"
    rm -rf "$dir"; trap - EXIT
    echo "$RHASH" > "$ROOTFS.stamp"
    log "rootfs.ext4 built in $(( $(now) - T0 )) s"
fi

# ---------------------------------------------------------------- 4. cloud-vmlinux
# The stock Debian cloud kernel, as shipped (bzImage), turned into its uncompressed ELF vmlinux
# with the kernel tree's scripts/extract-vmlinux: an early-boot compatibility check for Kestrel
# (booting the bzImage itself would run its decompressor emulated, ~100 s on nested KVM).
# The exact package is what the linux-image-cloud-amd64 metapackage depends on.
cloud_package() {
    LC_ALL=C apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1 || true
}
cloud_version() {
    LC_ALL=C apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | head -n1 || true
}
CLOUD_VMLINUX=$CACHE/cloud-vmlinux
CLOUD_PKG=$(cloud_package)
if [ -z "$CLOUD_PKG" ]; then
    log "apt-get update (linux-image-cloud-amd64 not in the package lists)"
    as_root apt-get update -q >/dev/null || log "warning: apt-get update failed"
    CLOUD_PKG=$(cloud_package)
fi
CLOUD_VER=
[ -z "$CLOUD_PKG" ] || CLOUD_VER=$(cloud_version "$CLOUD_PKG")
[ "$CLOUD_VER" != "(none)" ] || CLOUD_VER=
EXTRACT_VMLINUX=$SRCDIR_CURRENT/scripts/extract-vmlinux
CHASH=$(inputs_hash "recipe=$CLOUD_RECIPE" "$CLOUD_PKG=$CLOUD_VER" "linux-source-6.1=$KVER")
if [ -z "$CLOUD_VER" ]; then
    # no package lists (offline?): keep a cloud-vmlinux prepared earlier rather than fail
    [ -s "$CLOUD_VMLINUX" ] \
        || die "cannot resolve linux-image-cloud-amd64 to an installable kernel package (apt-cache depends/policy)"
    CLOUD_PKG=linux-image-cloud-amd64 CLOUD_VER="version unknown"
    log "warning: linux-image-cloud-amd64 not resolvable; keeping the existing cloud-vmlinux"
elif is_fresh "$CLOUD_VMLINUX" "$CLOUD_VMLINUX.stamp" "$CHASH"; then
    log "cloud-vmlinux up to date ($CLOUD_PKG $CLOUD_VER)"
else
    T0=$(now)
    work=$(mktemp -d "$CACHE/cloud.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    if [ ! -f "$EXTRACT_VMLINUX" ]; then
        # the kernel tree was removed after vmlinux was built: take the script from the tarball
        log "extracting scripts/extract-vmlinux from $LINUX_TARBALL"
        tar -xf "$LINUX_TARBALL" -C "$work" --wildcards '*/scripts/extract-vmlinux' \
            || die "cannot extract scripts/extract-vmlinux from $LINUX_TARBALL"
        EXTRACT_VMLINUX=$(find "$work" -path '*/scripts/extract-vmlinux' | head -n1)
        [ -n "$EXTRACT_VMLINUX" ] || die "no scripts/extract-vmlinux in $LINUX_TARBALL"
    fi
    # apt-get download writes to the current directory; its complaint about the _apt sandbox
    # user (when root downloads into a private directory) is harmless.
    cloud_download() {
        log "downloading $CLOUD_PKG $CLOUD_VER (apt-get download)"
        (cd "$work" && apt-get download -q "$CLOUD_PKG=$CLOUD_VER") >"$work/download.log" 2>&1
    }
    if ! cloud_download; then
        # stale package lists name a version the mirror no longer has: refresh once, re-resolve
        log "apt-get update (download failed; package lists stale?)"
        as_root apt-get update -q >/dev/null || die "apt-get update failed"
        CLOUD_PKG=$(cloud_package)
        [ -n "$CLOUD_PKG" ] || die "cannot resolve linux-image-cloud-amd64 after apt-get update"
        CLOUD_VER=$(cloud_version "$CLOUD_PKG")
        CHASH=$(inputs_hash "recipe=$CLOUD_RECIPE" "$CLOUD_PKG=$CLOUD_VER" "linux-source-6.1=$KVER")
        cloud_download || { cat "$work/download.log" >&2; die "apt-get download $CLOUD_PKG=$CLOUD_VER failed"; }
    fi
    deb=$(find "$work" -maxdepth 1 -name '*.deb' | head -n1)
    [ -n "$deb" ] || die "apt-get download produced no .deb"
    dpkg-deb -x "$deb" "$work/root" || die "dpkg-deb -x $deb failed"
    bzimage=$(find "$work/root/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
    [ -n "$bzimage" ] || die "$CLOUD_PKG has no /boot/vmlinuz-*"
    "${NICE[@]}" sh "$EXTRACT_VMLINUX" "$bzimage" > "$CLOUD_VMLINUX.tmp" 2>"$work/extract.log" \
        || { cat "$work/extract.log" >&2; die "extract-vmlinux failed on $(basename "$bzimage") (decompressor missing?)"; }
    LC_ALL=C readelf -h "$CLOUD_VMLINUX.tmp" 2>/dev/null | grep -q 'Type:.*EXEC' \
        || die "extract-vmlinux did not produce an ELF executable"
    mv "$CLOUD_VMLINUX.tmp" "$CLOUD_VMLINUX"
    rm -rf "$work"; trap - EXIT
    echo "$CHASH" > "$CLOUD_VMLINUX.stamp"
    log "cloud-vmlinux ($CLOUD_PKG $CLOUD_VER) prepared in $(( $(now) - T0 )) s"
fi

# ---------------------------------------------------------------- summary
CMDLINE=$(grep -v '^#' "$KIT_SRC/cmdline.txt" | tr -s ' \n' ' ' | sed 's/ *$//')
[ -n "$CMDLINE" ] || die "kit/cmdline.txt is empty"
log "done in $(( $(now) - T_START )) s"
echo "vmlinux:        $VMLINUX"
echo "initramfs.cpio: $INITRAMFS"
echo "rootfs.ext4:    $ROOTFS"
echo "cloud-vmlinux:  $CLOUD_VMLINUX ($CLOUD_PKG $CLOUD_VER, stock Debian kernel, early-boot check only)"
echo "boot:"
echo "  kestrel run --kernel $VMLINUX --initrd $INITRAMFS --memory 256M --cmdline \"$CMDLINE kestrel.run=cat%20/proc/version\""
