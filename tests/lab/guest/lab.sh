# Shell helpers for the lab's guest scripts (sourced before every job).

# The shared log disk as major:minor (how LVM names a clustered-disk log).
LOGDEV=$(cat "/sys/block/$(basename "$(readlink -f /dev/lab/log)")/dev" 2>/dev/null)

# in_sync <dm name>: "<in sync>/<regions>" from the mirror's status.
in_sync() {
    dmsetup status "$1" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\/[0-9]+$/) {print $i; exit}}'
}

# wait_in_sync <dm name> <seconds>: waits until every region is in sync.
wait_in_sync() {
    local n=0 s
    while [ $n -lt $(($2 * 10)) ]; do
        s=$(in_sync "$1")
        [ -n "$s" ] && [ "${s%/*}" = "${s#*/}" ] && return 0
        sleep 0.1
        n=$((n + 1))
    done
    echo "not in sync after $2 s: $(dmsetup status "$1")"
    return 1
}

# writes <dev> <node> <count> [<first block> <blocks>]: <count> random 4 KiB
# O_DIRECT writes, only to blocks b with b % 3 == node - 1 (so nodes share
# regions but never a block), within the given block range (default: all
# 16384 blocks of a 64 MiB device). With WRITES_DONE set, the count done so
# far is kept in that file.
writes() {
    local dev=$1 node=$2 count=$3 first=${4:-0} span=${5:-16384} i=0 b
    while [ $i -lt "$count" ]; do
        b=$((first + (RANDOM % (span / 3)) * 3 + node - 1))
        dd if=/dev/urandom of="$dev" bs=4096 count=1 seek=$b oflag=direct conv=notrunc status=none || return 1
        i=$((i + 1))
        if [ -n "$WRITES_DONE" ]; then echo $i > "$WRITES_DONE"; fi
    done
    return 0
}

# start_dmlogd: starts the daemon with /etc/dmlogd.toml, logging to the console.
start_dmlogd() {
    setsid dmlogd --config /etc/dmlogd.toml > /dev/console 2>&1 < /dev/null &
    local n=0
    while [ $n -lt 300 ]; do
        [ -S /data/dmlogd/admin.sock ] && return 0
        sleep 0.1
        n=$((n + 1))
    done
    echo "dmlogd did not come up"
    return 1
}

# The lab's iSCSI names: targets IQN:<disk>, initiators IQN:node<N>.
IQN=iqn.2026-12.org.dmlogd.lab

# iscsi_export <disk> <address>: exports /dev/lab/<disk> with the kernel's
# LIO target (configfs, block backend) as LUN 0 of target IQN:<disk> on
# <address>:3260, to any initiator without authentication: the lab's
# network is private to the run.
iscsi_export() {
    local disk=$1 addr=$2 cfg=/sys/kernel/config/target
    local tpg=$cfg/iscsi/$IQN:$1/tpgt_1 dev=$cfg/core/iblock_0/$1
    modprobe target_core_iblock && modprobe iscsi_target_mod || return 1
    grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs configfs /sys/kernel/config || return 1
    mkdir -p "$dev" && echo "udev_path=$(readlink -f "/dev/lab/$disk")" > "$dev/control" || return 1
    echo 1 > "$dev/enable" || return 1
    mkdir -p "$tpg/lun/lun_0" && ln -s "$dev" "$tpg/lun/lun_0/$disk" || return 1
    mkdir "$tpg/np/$addr:3260" || return 1
    echo 0 > "$tpg/attrib/authentication"
    echo 1 > "$tpg/attrib/generate_node_acls"
    echo 1 > "$tpg/attrib/cache_dynamic_acls"
    echo 0 > "$tpg/attrib/demo_mode_write_protect"
    echo 1 > "$tpg/enable"
}

# iscsi_login <portal>...: starts open-iscsi's iscsid, discovers the
# targets of each portal and logs in to all of them, then names each LUN
# /dev/lab/i<disk> (target IQN:leg0 -> /dev/lab/ileg0). A lost path fails
# I/O after 5 s (replacement_timeout; the default queues it for 120 s);
# NOP-outs every second notice a dead target within ~3 s.
iscsi_login() {
    local s t b want=$# n=0 have
    modprobe iscsi_tcp && modprobe sd_mod || return 1
    mkdir -p /etc/iscsi /var/lib/iscsi /run/lock/iscsi
    # iscsid names the user of each iscsiadm that connects to it.
    [ -e /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
    echo "InitiatorName=$IQN:$(hostname)" > /etc/iscsi/initiatorname.iscsi
    cat > /etc/iscsi/iscsid.conf <<'CONF'
node.startup = manual
node.session.timeo.replacement_timeout = 5
node.conn[0].timeo.login_timeout = 5
node.conn[0].timeo.noop_out_interval = 1
node.conn[0].timeo.noop_out_timeout = 2
node.session.initial_login_retry_max = 8
CONF
    # In the foreground (in the background of this shell): its log goes to
    # a file instead of a syslog the guest does not have.
    if ! pidof iscsid > /dev/null; then
        setsid iscsid -f > /tmp/iscsid.log 2>&1 < /dev/null &
        sleep 0.5
        pidof iscsid > /dev/null || { echo "iscsid did not start:"; cat /tmp/iscsid.log; return 1; }
    fi
    for p in "$@"; do
        iscsiadm -m discovery -t sendtargets -p "$p" > /tmp/iscsi.out 2>&1 \
            || { echo "discovery at $p failed:"; cat /tmp/iscsi.out /tmp/iscsid.log; return 1; }
    done
    iscsiadm -m node --login > /tmp/iscsi.out 2>&1 || { echo "login failed:"; cat /tmp/iscsi.out /tmp/iscsid.log; return 1; }
    while [ $n -lt 200 ]; do
        have=0
        for s in /sys/class/iscsi_session/session*; do
            t=$(cat "$s/targetname" 2>/dev/null)
            for b in "$s"/device/target*/*/block/*; do
                [ -e "$b" ] || continue
                ln -sf "/dev/${b##*/}" "/dev/lab/i${t##*:}"
                [ -b "/dev/${b##*/}" ] && have=$((have + 1))
            done
        done
        [ $have -ge "$want" ] && return 0
        sleep 0.1
        n=$((n + 1))
    done
    echo "iscsi: $have of $want LUNs appeared"
    iscsiadm -m session
    return 1
}
