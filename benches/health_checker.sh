#!/usr/bin/env bash
# CPU of the health checker at scale (issue 17: 10k real servers checked every 2 s should
# cost at most 10 % of one core). The gateway and the real servers are two network
# namespaces joined by a veth pair, as two hosts on a LAN: N addresses on the servers'
# side, one TCP listener on all of them (a python accept-and-close loop), and `portcullis
# run` on the nft backend in the gateway's namespace with an export of N real servers,
# [health] interval 2 s. The veth is the gateway's internal interface, where real servers
# are (the probes skip conntrack there: PROBE_PORTS in src/render/nft/layout.rs).
#
# The two sides run on different cores, so the servers' half of every handshake is not
# charged to the gateway: the daemon is pinned to core 0, the listener to core 1, and
# receive packet steering (RPS) hands each side's received packets to its own core (on a
# veth, without it, the receiver's TCP processing runs in the sender's context). This is
# the cost the gateway pays when the servers are other machines. `split=0` puts the
# servers on the gateway's loopback instead (the earlier measurement: both ends of every
# handshake in the daemon's context).
#
# Measured twice in the same run: the baseline with every row's check `none` (the daemon
# idle with the same table and export), then with `tcp` checks. Once the first apply is done
# (and, with checks, every target was probed), over WINDOW seconds: the share of the wall
# clock core 0 was not idle — everything the gateway's core did: the daemon, and the
# interrupt work of the packets it sent and received, charged to no process when it came
# while the core was idle — as % of one core; the checker's cost is the difference between
# the two runs. The export file does not change meanwhile, so nothing else runs.
#
# Why not-idle, and not the per-CPU user/system/irq times: those come from the scheduler
# tick, which samples what runs every few milliseconds, and the checker works on a 10 ms
# grid (src/daemon/health/tick.rs) — in step with the tick, so sampled with a bias either
# way (measured: a daemon that ran 9.0 % of the time by its scheduler statistics was "busy"
# 5.9 % by ticks). Idle time is kept exactly by the tickless idle code; so is each thread's
# run time (/proc/PID/task/*/schedstat), the daemon's column. (Ticks also charge interrupt
# work that lands while the daemon runs to both the daemon and the core's irq column, on a
# kernel without CONFIG_IRQ_TIME_ACCOUNTING: never add those two.) The tick-based split
# (user / kernel, irq+softirq) is shown as an indication only. Last, a floor: the same
# connections from a bare epoll loop on the same core.
#
#   benches/health_checker.sh [PORTCULLIS_EXE] [N=10000] [WINDOW=20]   (env: split=0|1)
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
split="${split:-1}"
if [ "$split" = 1 ] && [ "$(nproc)" -lt 2 ]; then
	echo "health_checker.sh: split=1 needs two cores (split=0 measures on loopback)" >&2
	exit 1
fi
ns="pchc$$"
srv="pchs$$"
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
	ip netns del "$srv" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
# Real servers 10.77.0.1 .. : 250 per /24.
rip() { echo "10.77.$(($1 / 250)).$(($1 % 250 + 1))"; }
ip netns add "$ns"
ip -n "$ns" link set lo up
if [ "$split" = 1 ]; then
	servers="$srv"
	ip netns add "$srv"
	ip -n "$srv" link set lo up
	ip link add g0 netns "$ns" type veth peer name s0 netns "$srv"
	ip -n "$ns" link set g0 up
	ip -n "$srv" link set s0 up
	ip -n "$ns" addr add 192.0.2.10/32 dev g0
	ip -n "$ns" addr add 10.76.0.1/30 dev g0
	ip -n "$srv" addr add 10.76.0.2/30 dev s0
	ip -n "$ns" route add 10.77.0.0/16 via 10.76.0.2
	# Each side's received packets are processed on its own core.
	ip netns exec "$ns" sh -c 'echo 1 >/sys/class/net/g0/queues/rx-0/rps_cpus'
	ip netns exec "$srv" sh -c 'echo 2 >/sys/class/net/s0/queues/rx-0/rps_cpus'
	pin_servers=(taskset -c 1)
else
	servers="$ns"
	ip -n "$ns" link add g0 type veth peer name g1 # (no dummy driver on every kernel)
	ip -n "$ns" link set g0 up
	ip -n "$ns" addr add 192.0.2.10/32 dev g0
	pin_servers=()
fi
for i in $(seq 0 $((n - 1))); do echo "addr add $(rip "$i")/32 dev lo"; done | ip -n "$servers" -batch -
"${pin_servers[@]}" ip netns exec "$servers" python3 -c '
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
# utime and stime of the daemon, in clock ticks (tick-sampled: an indication).
ticks() { awk '{ print $14, $15 }' "/proc/$daemon/stat"; }
# The daemon's threads' time on a CPU, in ns (the scheduler's own count: exact).
runtime() { cat /proc/"$daemon"/task/*/schedstat | awk '{ s += $1 } END { print s }'; }
hz="$(getconf CLK_TCK)"
# Core 0: the wall clock in ns; its idle time (idle + iowait, kept exactly by the tickless
# idle code), its irq+softirq time and its total time, in clock ticks (user nice system idle
# iowait irq softirq steal).
core0() {
	echo "$(date +%s%N) $(awk '$1 == "cpu0" { print $5 + $6, $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)"
}
# not_idle WALL0 IDLE0 WALL1 IDLE1: core 0's share of the interval not idle, in %.
not_idle() { awk "BEGIN { printf \"%.1f\", 100 - 100 * ($4 - $2) / $hz / (($3 - $1) / 1e9) }"; }
# share A0 T0 A1 T1: (A1 - A0) / (T1 - T0), in %.
share() { awk "BEGIN { printf \"%.1f\", 100 * ($3 - $1) / ($4 - $2) }"; }

# measure CHECK [TCP_PROBE]: runs the daemon with every row's check CHECK (tcp checks made
# the TCP_PROBE way: syn, the default, or connect); sets cpu, user, kernel, core, softirq,
# probed, failed, transitions, rss and time_wait.
measure() {
	local check="$1" tcp_probe="${2:-syn}" s0t s1t targets=0 total=0 p0 f0 t0 p1 f1 t1 u0 s0 u1 s1 w0 w1 i0 i1 k0 k1 q0 q1 r0 r1
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
internal = ["g0"]
[health]
interval = "2s"
timeout = "1s"
rise = 2
fall = 3
tcp_probe = "$tcp_probe"
TOML
	taskset -c 0 ip netns exec "$ns" "$exe" run --config "$dir/portcullis.toml" 2>"$dir/daemon.log" &
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
	r0="$(runtime)"
	read -r w0 i0 q0 k0 < <(core0)
	s0t="$(awk '$1 == "cpu0" { print $9 }' /proc/stat)"
	sleep "$window"
	read -r w1 i1 q1 k1 < <(core0)
	s1t="$(awk '$1 == "cpu0" { print $9 }' /proc/stat)"
	r1="$(runtime)"
	read -r u1 s1 < <(ticks)
	core="$(not_idle "$w0" "$i0" "$w1" "$i1")"
	steal="$(awk -v a="$s0t" -v b="$s1t" "BEGIN { printf \"%.1f\", 100 * (b - a) / $hz / (($w1 - $w0) / 1e9) }")"
	softirq="$(share "$q0" "$k0" "$q1" "$k1")"
	read -r _ p1 f1 t1 < <(probes)
	cpu="$(awk "BEGIN { printf \"%.1f\", 100 * ($r1 - $r0) / ($w1 - $w0) }")"
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
base_core="$core"
base_steal="$steal"
base_softirq="$softirq"
base_rss="$rss"
base_tw="$time_wait"
measure tcp connect
conn_steal="$steal" conn_cpu="$cpu" conn_user="$user" conn_kernel="$kernel" conn_softirq="$softirq" conn_core="$core"
conn_probed="$probed" conn_failed="$failed" conn_transitions="$transitions" conn_rss="$rss" conn_tw="$time_wait"
conn_cost="$(awk "BEGIN { printf \"%.1f\", $conn_core - $base_core }")"
measure tcp syn
# What the gateway's core spent on the checks: its time not idle over the baseline's.
gateway_cost="$(awk "BEGIN { printf \"%.1f\", $core - $base_core }")"
ratio="$(awk "BEGIN { printf \"%.1f\", $conn_cost / ($gateway_cost > 0 ? $gateway_cost : 0.1) }")"

# A floor: the same connections (N/2 per second to the same listeners, closed with a reset
# once established) from a bare epoll loop in python on the same core: what TCP itself
# costs the connecting side. Its user time is python's, not comparable; its kernel time and
# core 0's busy time are what any checker pays.
read -r fw0 fi0 fq0 fk0 < <(core0)
read -r floor_user floor_kernel < <(taskset -c 0 ip netns exec "$ns" python3 - "$n" "$window" <<'PY'
import resource, select, socket, struct, sys, time
n, window = int(sys.argv[1]), float(sys.argv[2])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
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

read -r fw1 fi1 fq1 fk1 < <(core0)
floor_core="$(not_idle "$fw0" "$fi0" "$fw1" "$fi1")"
floor_softirq="$(share "$fq0" "$fk0" "$fq1" "$fk1")"

if [ "$split" = 1 ]; then
	where="servers in another namespace over veth, on the other core (RPS), daemon pinned to core 0"
else
	where="servers on the gateway's loopback: both ends of every handshake in the daemon's context"
fi
echo "## Health checker: CPU of $n tcp checks every 2 s (release build, ${window} s window)"
echo
echo "The same daemon, table and export, measured in one run: checks \`none\` (the baseline) and \`tcp\`. The checker's cost is the difference in the time core 0 was not idle (the daemon is pinned there alone; what its packets cost in interrupts while the core was idle counts too). Topology: $where. Goal: at most 10 % of one core."
echo
echo "| daemon | core 0 not idle (% of one core) | the daemon's run time | of which user / kernel (ticks) | core 0 irq+softirq (ticks) | probes in the window | probes/s (asked: $((n / 2))/s) | failed | transitions | RSS | TIME_WAIT sockets |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
echo "| baseline: checks \`none\` | $base_core % | $base_cpu % | $base_user / $base_kernel % | $base_softirq % | 0 | 0 | 0 | 0 | $base_rss | $base_tw |"
echo "| $n \`tcp\` checks, \`tcp_probe = \"connect\"\` | $conn_core % | $conn_cpu % | $conn_user / $conn_kernel % | $conn_softirq % | $conn_probed | $((conn_probed / window)) | $conn_failed | $conn_transitions | $conn_rss | $conn_tw |"
echo "| $n \`tcp\` checks, \`tcp_probe = \"syn\"\` (the default) | $core % | $cpu % | $user / $kernel % | $softirq % | $probed | $((probed / window)) | $failed | $transitions | $rss | $time_wait |"
echo "| floor: the same connections from a bare epoll loop (python) | $floor_core % | | $floor_user / $floor_kernel % (rusage) | $floor_softirq % | | | | | | |"
echo "| **the checker's cost, connect** (not idle over the baseline) | **$conn_cost %** | | | | | | | | | |"
echo "| **the checker's cost, syn** | **$gateway_cost %** | | | | | | | | | |"
echo
echo "Core 0's steal time (the hypervisor running other guests): baseline $base_steal %, connect $conn_steal %, syn $steal %. Stolen time while the daemon had work counts as not idle, and cannot be taken out (a vCPU woken from idle and waiting for the host is counted as stolen too): above a few percent, rerun on a quieter host. The daemon's run time is the scheduler's, without steal."
echo
echo "Half-open checks cost ${ratio}× less than connecting. Not-idle time is exact (the tickless idle code keeps it) and counts everything core 0 did, so it means something on an idle machine only; the tick-sampled columns are an indication (the checker's 10 ms grid runs in step with the tick)."
echo
if [ -n "${PORTCULLIS_BENCH_SUMMARY:-}" ]; then
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' health "CPU of $n tcp checks every 2 s (% of one core)" \
		"$gateway_cost %" "tcp_probe connect" "$conn_cost %" "${ratio}×" >>"$PORTCULLIS_BENCH_SUMMARY"
fi
