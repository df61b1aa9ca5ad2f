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
