#!/usr/bin/env bash
# W1 and W2-style figures with every server on a host of its own: network
# namespaces joined by veth links to one bridge, the setup issue 16 measured
# the Corosync CPG chat server in (3 server hosts, the load on a 4th). On
# loopback a sender also pays its receiver's side of the kernel; across
# veth links the packets take the path they take between machines.
#
#   sudo scripts/bench-hosts.sh            # full: window sweep, CPU, paced latency
#   sudo scripts/bench-hosts.sh --quick    # a short run of each (CI checks the script)
#
# Environment: BIN_DIR (where chatserver and launcher are; default
# target/release), MESSAGES (per client, full-speed runs), WINDOWS (the
# sweep), STRESS_ARGS (more `launcher stress` options, e.g. --no-gro for
# clients that read one datagram at a time, as a client of the spec does).
#
# Reports: messages/s at each window (3 clients, one room, 100 B, total;
# every delivery checked by `launcher stress`), the servers' CPU time per
# message summed over the 3 servers (from /proc/PID/schedstat, during the
# best window's run), and p50/p99 send -> delivery at 3,000 messages/s.
# Needs root and `ip` (iproute2). Everything it makes (namespaces, links,
# the servers) is removed on exit, also on failure or Ctrl+C.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${BIN_DIR:-$here/target/release}"
quick=0
[ "${1:-}" = "--quick" ] && quick=1

if [ "$(id -u)" != 0 ]; then
    echo "bench-hosts: needs root (it creates network namespaces)" >&2
    exit 2
fi
command -v ip >/dev/null || { echo "bench-hosts: needs ip (iproute2)" >&2; exit 2; }
for b in chatserver launcher; do
    [ -x "$bin/$b" ] || { echo "bench-hosts: $bin/$b missing (cargo build --release)" >&2; exit 2; }
done

tag="chbench-$$-"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do
        ip netns delete "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# A switch (bridge) and 4 hosts: 10.201.0.1-3 run the servers, .4 the load.
ip netns add "${tag}sw"
ip -n "${tag}sw" link set lo up
ip -n "${tag}sw" link add br0 type bridge
ip -n "${tag}sw" link set br0 up
for i in 1 2 3 4; do
    ns="${tag}h$i"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "${tag}sw" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "${tag}sw" link set "p$i" master br0
    ip -n "${tag}sw" link set "p$i" up
    ip -n "$ns" addr add "10.201.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
done

cfg="$work/cluster.txt"
for i in 1 2 3; do echo "10.201.0.$i:5000,10.201.0.$i:5000"; done >"$cfg"
for i in 1 2 3; do
    # `ip netns exec` execs the server in place: $! is the server's pid.
    ip netns exec "${tag}h$i" "$bin/chatserver" "$cfg" "$i" -o total \
        --ready-file "$work/ready$i" >"$work/server$i.log" 2>&1 &
    pids+=("$!")
done
deadline=$((SECONDS + 20))
for i in 1 2 3; do
    until [ -e "$work/ready$i" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "bench-hosts: server $i not ready within 20 s:" >&2
            cat "$work/server$i.log" >&2
            exit 1
        fi
        sleep 0.05
    done
done

# CPU time (ns) the 3 servers have used so far.
server_cpu_ns() {
    local sum=0 p
    for p in "${pids[@]}"; do
        sum=$((sum + $(cut -d' ' -f1 "/proc/$p/schedstat")))
    done
    echo "$sum"
}

stress() {
    ip netns exec "${tag}h4" "$bin/launcher" stress "$cfg" --attach -o total \
        --clients 3 --rooms 1 --size 100 -q ${STRESS_ARGS:-} "$@"
}

if [ $quick = 1 ]; then
    messages=2000
    windows="64"
    paced=500
else
    messages=${MESSAGES:-40000}
    windows="${WINDOWS:-64 128 256 512}"
    paced=10000
fi

echo "bench-hosts: 3 servers on 3 hosts (network namespaces, veth, one bridge), the load on a 4th; total, 3 clients, one room, 100 B"
if [ -n "${STRESS_ARGS:-}" ]; then echo "  load options: $STRESS_ARGS"; fi
best_rate=0
best_window=0
for w in $windows; do
    before=$(server_cpu_ns)
    out=$(stress --messages "$messages" --window "$w")
    after=$(server_cpu_ns)
    grep -q "result: PASS" <<<"$out" || { echo "$out" >&2; echo "bench-hosts: window $w failed" >&2; exit 1; }
    rate=$(sed -n 's/.*throughput \([0-9]*\) messages\/s.*/\1/p' <<<"$out")
    us=$(awk -v ns=$((after - before)) -v m=$((3 * messages)) 'BEGIN { printf "%.2f", ns / m / 1000 }')
    echo "  window $w: $rate messages/s; servers' CPU per message, 3 summed: $us us"
    if [ "$rate" -gt "$best_rate" ]; then
        best_rate=$rate
        best_window=$w
    fi
done
echo "  best: $best_rate messages/s (window $best_window)"

out=$(stress --messages "$paced" --rate 3000 --window 16)
grep -q "result: PASS" <<<"$out" || { echo "$out" >&2; echo "bench-hosts: paced run failed" >&2; exit 1; }
echo "  at 3,000 messages/s: $(grep -m1 'latency send->delivery' <<<"$out" | sed 's/^ *//')"
echo "bench-hosts: OK"
