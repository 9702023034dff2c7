# SPDX-License-Identifier: MIT
#
# kernel-swap.sh: the kernel's compressed swap, set up and torn down for
# the benchmarks that run a workload side by side under uzswap and under
# kernel zram or kernel zswap with the same memory cgroup limit
# (bench/hotcold/run-bench, bench/apps/run-bench).  Sourced, not run.
#
# Everything set up here registers how to undo it on the caller's undo
# stack (the bash array `undo`, run last to first by ks_undo_all), so the
# caller's EXIT trap leaves the host as found: swapoff, zram reset, swap
# file removed, debugfs unmounted if we mounted it, zswap parameters
# restored, cgroup emptied (its processes killed) and removed.
#
# The memory controller may be on cgroup v1 (/sys/fs/cgroup/memory, the
# limit is memory.limit_in_bytes) or on cgroup v2 (/sys/fs/cgroup with
# "memory" in cgroup.subtree_control, the limit is memory.max; swap is
# left unlimited, memory.swap.max "max"): ks_cgroup_version says which
# (1, 2, or empty when there is none), ks_cgroup_limit_file the file.
#
#   ks_usable                      0 when the kernel side can run here (root,
#                                  a cgroup v1 or v2 memory controller, no swap
#                                  active); else says why on stderr
#   ks_swap_on SIDE SIZE COMPRESSOR [POOL_PERCENT [SHRINKER]]
#                                  SIDE zram: /dev/zram0 of SIZE bytes with
#                                  COMPRESSOR, kernel zswap off; SIDE zswap:
#                                  zswap (COMPRESSOR, max_pool_percent
#                                  POOL_PERCENT, default 50, shrinker_enabled
#                                  SHRINKER Y/N, default left alone) over a
#                                  swap file of SIZE bytes in /var/tmp.
#                                  Sets ks_swapdev.  1 when SIDE cannot run
#   ks_cgroup_create PATH LIMIT    a memory cgroup (under ks_cgroup_root) whose
#                                  limit is LIMIT bytes
#   ks_cgroup_remove PATH          kill what is in it, remove it
#   ks_cgroup_run PATH CMD...      exec CMD inside the cgroup (the wrapper
#                                  writes its own pid first, so every page
#                                  CMD touches is charged there)
#   ks_zram_stats / ks_zswap_stats print "stored_bytes N", "compressed_bytes N",
#                                  "pool_bytes N" lines (what the kernel says)
#   ks_vmstat KEY                  a /proc/vmstat counter
#   ks_undo_all                    run and clear the undo stack
ks_zswap_params=/sys/module/zswap/parameters
ks_swapdev=
if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
    ks_cgroup_version=1 ks_cgroup_root=/sys/fs/cgroup/memory
    ks_cgroup_limit_file=memory.limit_in_bytes
elif grep -qw memory /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    ks_cgroup_version=2 ks_cgroup_root=/sys/fs/cgroup ks_cgroup_limit_file=memory.max
else
    ks_cgroup_version='' ks_cgroup_root=/sys/fs/cgroup/memory ks_cgroup_limit_file=''
fi

ks_undo_all() {
    local i
    for ((i = ${#undo[@]} - 1; i >= 0; i--)); do
        eval "${undo[i]}" || echo "kernel-swap: cleanup step failed: ${undo[i]}" >&2
    done
    undo=()
}

ks_usable() {
    local why=
    [ "$(id -u)" -eq 0 ] || why="not root"
    [ -n "$ks_cgroup_version" ] ||
        why="${why:+$why, }no memory cgroup controller (neither v1 at /sys/fs/cgroup/memory nor v2 enabled in /sys/fs/cgroup/cgroup.subtree_control)"
    if [ -n "$(swapon --noheadings --show=NAME 2>/dev/null)" ]; then
        why="${why:+$why, }swap already active on this host"
    fi
    if [ -n "$why" ]; then
        echo "kernel side skipped: $why" >&2
        return 1
    fi
}

ks_cgroup_create() { # path limit-bytes
    mkdir "$1"
    undo+=("ks_cgroup_remove $1")
    echo "$2" >"$1/$ks_cgroup_limit_file"
}

ks_cgroup_remove() { # path
    local pid
    [ -d "$1" ] || return 0
    for pid in $(cat "$1/cgroup.procs"); do kill -9 "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do [ -z "$(cat "$1/cgroup.procs")" ] && break; sleep 0.1; done
    rmdir "$1"
}

ks_cgroup_run() { # path command...
    bash -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' - "$@"
}

ks_zswap_save() { # remember every zswap parameter we may change
    local p
    for p in enabled compressor max_pool_percent shrinker_enabled; do
        if [ -w "$ks_zswap_params/$p" ]; then
            undo+=("echo $(cat "$ks_zswap_params/$p") > $ks_zswap_params/$p")
        fi
    done
}

ks_vmstat() { awk -v k="$1" '$1 == k { print $2 }' /proc/vmstat; }

ks_swap_on() { # side size-bytes compressor [pool-percent [shrinker]]
    local side=$1 size=$2 compressor=$3 pool_percent=${4:-50} shrinker=${5:-}
    if [ "$side" = zram ]; then
        if [ ! -e /sys/block/zram0 ] && command -v modprobe >/dev/null; then
            modprobe zram 2>/dev/null || true
        fi
        if [ ! -e /sys/block/zram0 ] || [ "$(cat /sys/block/zram0/disksize)" != 0 ]; then
            echo "zram side skipped: /sys/block/zram0 missing or in use" >&2
            return 1
        fi
        ks_zswap_save
        [ -w "$ks_zswap_params/enabled" ] && echo N >"$ks_zswap_params/enabled"
        undo+=("echo 1 > /sys/block/zram0/reset")
        echo "$compressor" >/sys/block/zram0/comp_algorithm
        echo "$size" >/sys/block/zram0/disksize
        ks_swapdev=/dev/zram0
        mkswap "$ks_swapdev" >/dev/null
    else
        if [ ! -w "$ks_zswap_params/enabled" ]; then
            echo "zswap side skipped: no zswap in this kernel" >&2
            return 1
        fi
        ks_zswap_save
        ks_swapdev=/var/tmp/uzswap-bench.swap.$$
        undo+=("rm -f $ks_swapdev")
        fallocate -l "$size" "$ks_swapdev"
        chmod 600 "$ks_swapdev"
        mkswap "$ks_swapdev" >/dev/null
        if ! mountpoint -q /sys/kernel/debug; then
            mount -t debugfs debugfs /sys/kernel/debug && undo+=("umount /sys/kernel/debug")
        fi
        if ! echo "$compressor" 2>/dev/null >"$ks_zswap_params/compressor"; then
            echo "zswap: compressor $compressor unavailable, using" \
                "$(cat "$ks_zswap_params/compressor")" >&2
        fi
        echo "$pool_percent" >"$ks_zswap_params/max_pool_percent"
        if [ -n "$shrinker" ] && [ -w "$ks_zswap_params/shrinker_enabled" ]; then
            echo "$shrinker" >"$ks_zswap_params/shrinker_enabled"
        fi
        echo Y >"$ks_zswap_params/enabled"
    fi
    swapon "$ks_swapdev"
    undo+=("swapoff $ks_swapdev")
}

ks_zram_stats() {
    local orig compr mem_used
    read -r orig compr mem_used _ <"/sys/block/zram0/mm_stat"
    echo "stored_bytes $orig"
    echo "compressed_bytes $compr"
    echo "pool_bytes $mem_used"
}

ks_zswap_stats() {
    local d=/sys/kernel/debug/zswap
    if [ -r "$d/stored_pages" ]; then
        echo "stored_bytes $(($(cat "$d/stored_pages") * 4096))"
        echo "compressed_bytes $(cat "$d/pool_total_size")"
        echo "pool_bytes $(cat "$d/pool_total_size")"
    fi
}
