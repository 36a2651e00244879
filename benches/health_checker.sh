#!/usr/bin/env bash
# CPU of the health checker at scale (issue 17: 10k real servers checked every 2 s should
# cost at most 10 % of one core). In a fresh network namespace: N addresses on lo, one TCP
# listener on all of them (a python accept-and-close loop, whose own CPU is not counted), and
# `portcullis run` on the nft backend with an export of N real servers, [health] interval 2 s.
# Measured twice in the same run: the baseline with every row's check `none` (the daemon
# idle with the same table and export), then with `tcp` checks. Once the first apply is done
# (and, with checks, every target was probed), the daemon's CPU time (utime+stime from /proc)
# over WINDOW seconds is taken as % of one core; the checker's cost is the difference. The
# export file does not change meanwhile, so nothing else runs. Last, a floor: the same
# connections from a bare epoll loop, whose kernel time is what TCP itself costs here.
#
#   benches/health_checker.sh [PORTCULLIS_EXE] [N=10000] [WINDOW=20]
#
# Prints a Markdown section; with PORTCULLIS_BENCH_SUMMARY set (benches/run), also its
# headline line for the summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
exe="${1:-target/release/portcullis}"
n="${2:-10000}"
window="${3:-20}"
[ "$(id -u)" = 0 ] || { echo "health_checker.sh: needs root (network namespace)" >&2; exit 1; }
[ -x "$exe" ] || { echo "health_checker.sh: no $exe (cargo build --release)" >&2; exit 1; }
ns="pchc$$"
dir="$(mktemp -d)"
daemon=""
listener=""
stop_daemon() {
	if [ -n "$daemon" ]; then
		kill "$daemon" 2>/dev/null || true
		wait "$daemon" 2>/dev/null || true
		daemon=""
	fi
}
cleanup() {
	stop_daemon
	[ -n "$listener" ] && kill "$listener" 2>/dev/null
	ip netns del "$ns" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add g0 type veth peer name g1 # (no dummy driver on every kernel)
ip -n "$ns" link set g0 up
ip -n "$ns" addr add 192.0.2.10/32 dev g0
# Real servers 10.77.0.1 .. : 250 per /24.
rip() { echo "10.77.$(($1 / 250)).$(($1 % 250 + 1))"; }
for i in $(seq 0 $((n - 1))); do echo "addr add $(rip "$i")/32 dev lo"; done | ip -n "$ns" -batch -
ip netns exec "$ns" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000)); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
' &
listener=$!

probes() { ip netns exec "$ns" python3 -c '
import json, urllib.request
v = json.load(urllib.request.urlopen("http://127.0.0.1:9977/health"))
t = v["targets"]
print(len(t), sum(x["probes"] for x in t), sum(x["failures"] for x in t), sum(x["transitions"] for x in t))
' 2>/dev/null || echo "0 0 0 0"; }
# utime and stime of the daemon, in clock ticks.
ticks() { awk '{ print $14, $15 }' "/proc/$daemon/stat"; }
hz="$(getconf CLK_TCK)"

# measure CHECK: runs the daemon with every row's check CHECK; sets cpu, probed, failed,
# transitions and rss.
measure() {
	local check="$1" targets=0 total=0 p0 f0 t0 p1 f1 t1 u0 s0 u1 s1
	{
		echo "# portcullis-export 1.1"
		echo "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence,check"
		for i in $(seq 0 $((n - 1))); do echo "web,web.r$i,tcp,192.0.2.10,80,,$(rip "$i"),9000,1,rr,nat,,$check"; done
	} >"$dir/export.csv"
	rm -rf "$dir/state"
	cat >"$dir/portcullis.toml" <<TOML
source = "file://$dir/export.csv"
interval = "5s"
long_poll = "0s"
state_dir = "$dir/state"
role = "active"
metrics = "127.0.0.1:9977"
[interfaces]
external = ["g0"]
[health]
interval = "2s"
timeout = "1s"
rise = 2
fall = 3
TOML
	ip netns exec "$ns" "$exe" run --config "$dir/portcullis.toml" 2>"$dir/daemon.log" &
	daemon=$!
	# Settle: the first apply done and, with checks, every target probed at least once
	# (the first probes are spread over one interval).
	for _ in $(seq 1 120); do
		if [ "$check" = none ]; then
			[ -s "$dir/state/status.json" ] && break
		else
			read -r targets total _ _ < <(probes)
			[ "$targets" = "$n" ] && [ "$total" -ge "$n" ] && break
		fi
		sleep 1
	done
	if [ "$check" != none ] && [ "$targets" != "$n" ]; then
		echo "the daemon did not probe $n targets:" >&2
		tail "$dir/daemon.log" >&2
		exit 1
	fi
	sleep 4
	read -r _ p0 f0 t0 < <(probes)
	read -r u0 s0 < <(ticks)
	sleep "$window"
	read -r u1 s1 < <(ticks)
	read -r _ p1 f1 t1 < <(probes)
	cpu="$(awk "BEGIN { printf \"%.1f\", 100 * ($u1 - $u0 + $s1 - $s0) / $hz / $window }")"
	user="$(awk "BEGIN { printf \"%.1f\", 100 * ($u1 - $u0) / $hz / $window }")"
	kernel="$(awk "BEGIN { printf \"%.1f\", 100 * ($s1 - $s0) / $hz / $window }")"
	probed=$((p1 - p0))
	failed=$((f1 - f0))
	transitions=$((t1 - t0))
	rss="$(awk '/VmRSS/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$daemon/status")"
	time_wait="$(ip netns exec "$ns" ss -Htan state time-wait | wc -l)"
	stop_daemon
}

measure none
base_cpu="$cpu"
base_user="$user"
base_kernel="$kernel"
base_rss="$rss"
base_tw="$time_wait"
measure tcp
cost="$(awk "BEGIN { printf \"%.1f\", $cpu - $base_cpu }")"

# The floor of the kernel's share: the same connections (N/2 per second to the same
# listeners, closed with a reset once established) from a bare epoll loop in python. On
# loopback the kernel does both ends of every handshake in the connecting process, so this
# kernel time is TCP's own, most of it the servers' side (done by the real servers in
# production); only the user time is the checker's own work.
read -r floor_user floor_kernel < <(ip netns exec "$ns" python3 - "$n" "$window" <<'PY'
import resource, select, socket, struct, sys, time
n, window = int(sys.argv[1]), float(sys.argv[2])
addrs = ["10.77.%d.%d" % (i // 250, i % 250 + 1) for i in range(n)]
rate = n / 2.0
ep = select.epoll()
pending = {}
r0 = resource.getrusage(resource.RUSAGE_SELF)
start = time.monotonic()
due = start
i = 0
while time.monotonic() - start < window:
    now = time.monotonic()
    while due <= now:
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            s.connect((addrs[i % n], 9000))
        except BlockingIOError:
            pass
        ep.register(s.fileno(), select.EPOLLOUT)
        pending[s.fileno()] = s
        i += 1
        due += 1 / rate
    for fd, _ in ep.poll(0.001):
        ep.unregister(fd)
        pending.pop(fd).close()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print("%.1f %.1f" % (100 * (r1.ru_utime - r0.ru_utime) / window, 100 * (r1.ru_stime - r0.ru_stime) / window))
PY
)

echo "## Health checker: CPU of $n tcp checks every 2 s (release build, ${window} s window)"
echo
echo "The same daemon, table and export, measured twice in one run: checks \`none\` (the baseline) and \`tcp\`. The checker's cost is the difference. Goal: at most 10 % of one core."
echo
echo "| daemon | CPU (% of one core) | of which user / kernel | probes in the window | probes/s (asked: $((n / 2))/s) | failed | transitions | RSS | TIME_WAIT sockets |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
echo "| baseline: checks \`none\` | $base_cpu % | $base_user / $base_kernel % | 0 | 0 | 0 | 0 | $base_rss | $base_tw |"
echo "| $n \`tcp\` checks | $cpu % | $user / $kernel % | $probed | $((probed / window)) | $failed | $transitions | $rss | $time_wait |"
echo "| **the checker's cost** | **$cost %** | | | | | | | |"
echo "| floor: the same connections from a bare epoll loop (python) | | $floor_user / $floor_kernel % | | | | | | |"
echo
echo "Kernel time above is mostly TCP itself: on loopback both ends of each handshake run in the connecting process (compare the floor's kernel share). The checker's own work is its user time."
echo
if [ -n "${PORTCULLIS_BENCH_SUMMARY:-}" ]; then
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' health "CPU of $n tcp checks every 2 s (% of one core)" \
		"$cpu %" "the same daemon, checks none" "$base_cpu %" "+$cost points" >>"$PORTCULLIS_BENCH_SUMMARY"
fi
