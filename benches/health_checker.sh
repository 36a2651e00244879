#!/usr/bin/env bash
# CPU of the health checker at scale (issue 17: 10k real servers checked every 2 s should
# cost at most 10 % of one core). In a fresh network namespace: N addresses on lo, one TCP
# listener on all of them (a python accept-and-close loop, whose own CPU is not counted), and
# `portcullis run` on the nft backend with an export of N real servers, each with a `tcp`
# check, [health] interval 2 s. Once the first apply is done and every target was probed,
# the daemon's CPU time (utime+stime from /proc) over WINDOW seconds is printed as % of one
# core, with the probes the daemon made meanwhile. The daemon does nothing else then (the
# export file does not change), so that is the checker's cost.
#
#   benches/health_checker.sh [PORTCULLIS_EXE] [N=10000] [WINDOW=20]
set -euo pipefail
cd "$(dirname "$0")/.."
exe="${1:-target/release/portcullis}"
n="${2:-10000}"
window="${3:-20}"
[ "$(id -u)" = 0 ] || { echo "health_checker.sh: needs root (network namespace)" >&2; exit 1; }
[ -x "$exe" ] || { echo "health_checker.sh: no $exe (cargo build --release)" >&2; exit 1; }
ns="pchc$$"
dir="$(mktemp -d)"
cleanup() {
	[ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
	[ -n "${listener:-}" ] && kill "$listener" 2>/dev/null
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
{
	echo "# portcullis-export 1.1"
	echo "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence,check"
	for i in $(seq 0 $((n - 1))); do echo "web,web.r$i,tcp,192.0.2.10,80,,$(rip "$i"),9000,1,rr,nat,,tcp"; done
} >"$dir/export.csv"
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
probes() { ip netns exec "$ns" python3 -c '
import json, urllib.request
v = json.load(urllib.request.urlopen("http://127.0.0.1:9977/health"))
t = v["targets"]
print(len(t), sum(x["probes"] for x in t), sum(x["failures"] for x in t), sum(x["transitions"] for x in t))
' 2>/dev/null || echo "0 0 0 0"; }
# Settle: first apply done and every target probed at least once (first probes are spread
# over one interval).
for _ in $(seq 1 120); do
	read -r targets total _ _ < <(probes)
	[ "$targets" = "$n" ] && [ "$total" -ge "$n" ] && break
	sleep 1
done
[ "$targets" = "$n" ] || { echo "the daemon did not probe $n targets:"; tail "$dir/daemon.log"; exit 1; }
sleep 4
ticks() { awk '{ print $14 + $15 }' "/proc/$daemon/stat"; }
hz="$(getconf CLK_TCK)"
read -r _ p0 f0 t0 < <(probes)
c0="$(ticks)"
sleep "$window"
c1="$(ticks)"
read -r _ p1 f1 t1 < <(probes)
cpu="$(awk "BEGIN { printf \"%.1f\", 100 * ($c1 - $c0) / $hz / $window }")"
echo "health checker: $n tcp targets every 2 s, ${window} s window: ${cpu} % of one core;" \
	"$((p1 - p0)) probes ($(( (p1 - p0) / window ))/s), $((f1 - f0)) failed, $((t1 - t0)) transitions;" \
	"rss $(awk '/VmRSS/ { print $2 / 1024 " MiB" }' "/proc/$daemon/status")"
