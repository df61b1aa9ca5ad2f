#!/usr/bin/env bash
# Builds the lab's guest: Debian's cloud kernel (unpacked, not installed)
# and an initramfs with busybox, the device-mapper and virtio modules,
# dmsetup, the given dmlogd/dmlogctl binaries and the lab's write load; and
# for the iSCSI scenarios the kernel's LIO target modules, the iSCSI
# initiator modules and open-iscsi's iscsid and iscsiadm.
#
#   tests/lab/image.sh <out dir> <dmlogd> <dmlogctl> [<lab-writer>]
#
# Writes <out dir>/vmlinuz and <out dir>/initrd.gz. The kernel and
# open-iscsi packages are cached in <out dir>/kernel; Debian packages the
# build needs are installed with apt-get when missing (as root).
set -euo pipefail

out=$1 dmlogd=$2 dmlogctl=$3 writer=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

# -- host packages -----------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
[ -x /usr/sbin/dmsetup ] || [ -x /sbin/dmsetup ] || need+=(dmsetup)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    echo "lab: installing ${need[*]}" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "lab: missing packages (${need[*]}) and not root; install them first" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
busybox=$(command -v busybox)
dmsetup=$(command -v dmsetup || echo /usr/sbin/dmsetup)

# -- the kernel --------------------------------------------------------------
kdir=$out/kernel
mkdir -p "$kdir"
if [ ! -d "$kdir/root/boot" ]; then
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || { echo "lab: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 2; }
    echo "lab: fetching $pkg" >&2
    (cd "$kdir" && apt-get download "$pkg" 2>/dev/null)
    rm -rf "$kdir/root.tmp"
    dpkg -x "$kdir"/linux-image-*.deb "$kdir/root.tmp"
    mv "$kdir/root.tmp" "$kdir/root"
fi
kver=$(ls "$kdir/root/lib/modules" | head -1)
# open-iscsi and the two libraries of its own (unpacked, not installed).
idir=$kdir/iscsi
if [ ! -x "$idir/root/sbin/iscsid" ]; then
    rm -rf "$idir"
    mkdir -p "$idir"
    echo "lab: fetching open-iscsi" >&2
    (cd "$idir" && apt-get download open-iscsi libopeniscsiusr libisns0 2>/dev/null)
    for d in "$idir"/*.deb; do dpkg -x "$d" "$idir/root.tmp"; done
    mv "$idir/root.tmp" "$idir/root"
fi
ilibs=$(find "$idir/root" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)
cp "$kdir/root/boot/vmlinuz-$kver" "$out/vmlinuz"
depmod -b "$kdir/root" "$kver"

# -- the initramfs -----------------------------------------------------------
stage=$out/initramfs
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,etc,proc,sys,dev,tmp,data,lib64,usr/lib}

cp "$busybox" "$stage/bin/busybox"
for a in sh mount mkdir ln cat; do ln -sf busybox "$stage/bin/$a"; done

# Modules: the ones the lab uses and what they depend on, at their paths.
modules="dm-mirror dm-log-userspace dm-delay dm-flakey virtio_pci virtio_blk virtio_net virtio_console
    configfs target_core_iblock iscsi_target_mod iscsi_tcp sd_mod"
for m in $modules; do
    modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | sort -u | while read -r ko; do
    rel=${ko#"$kdir/root/"}
    mkdir -p "$stage/$(dirname "$rel")"
    cp "$ko" "$stage/$rel"
done
cp "$kdir/root/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$stage/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$stage" "$kver"

# Dynamic programs and their libraries.
copy_prog() {
    local src=$1 dst=$2
    install -D -m 0755 "$src" "$stage/$dst"
    strip "$stage/$dst" 2>/dev/null || true
    LD_LIBRARY_PATH=$ilibs ldd "$src" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
        [ -n "$lib" ] && [ -e "$lib" ] || continue
        local at=${lib#"$idir/root"}
        mkdir -p "$stage/$(dirname "$at")"
        cp -L "$lib" "$stage/$at"
    done
}
copy_prog "$dmsetup" /sbin/dmsetup
copy_prog "$dmlogd" /bin/dmlogd
copy_prog "$dmlogctl" /bin/dmlogctl
if [ -n "$writer" ]; then copy_prog "$writer" /bin/lab-writer; fi
copy_prog "$idir/root/sbin/iscsid" /sbin/iscsid
copy_prog "$idir/root/sbin/iscsiadm" /sbin/iscsiadm
# The loader at the path the binaries name.
if [ -e /lib64/ld-linux-x86-64.so.2 ]; then cp -L /lib64/ld-linux-x86-64.so.2 "$stage/lib64/"; fi

install -m 0755 "$here/guest/init" "$stage/init"
install -m 0644 "$here/guest/lab.sh" "$stage/lab.sh"

(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1 > "$out/initrd.gz.tmp")
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
rm -rf "$stage"
echo "lab: guest image ready: kernel $kver, initramfs $(du -h "$out/initrd.gz" | cut -f1)" >&2
