#!/usr/bin/env bash
# Stateful failover: established connections survive a gateway failover. The two-node cluster
# of failover.sh (cluster.sh) with the shipped cluster.crm plus cluster-conntrackd.crm, each
# node running conntrackd (ocf:heartbeat:conntrackd) with the configuration `portcullis
# sync-config` renders from its [sync] section, over a dedicated sync link:
#
#   sync 192.168.250.0/24: gateways .1 .2 (eth2), conntrackd FTFW, UDP unicast
#
# The client holds PCM_CONNS (50) TCP connections through the public VIP to echo servers on the
# backends (half to a round-robin service, half to a persistent one), each sending a line every
# 100 ms and reading the echo (tests/pacemaker/heartbeat.py). Then:
#   1. crm node standby of the active node (planned);
#   2. crash of the active node (links down + SIGKILL of its processes), fenced.
# A connection is kept when it saw no reset and its echo resumed. Prints per scenario
# `connections kept: N/M` and the longest stall (the longest any connection went without an
# echo). The goal: all of them kept in both scenarios.
#
# The gateways run with net.netfilter.nf_conntrack_tcp_loose=0, or the test could not fail:
# with the kernel default a gateway picks up a mid-stream connection it has never seen, and the
# deterministic DNAT choice of the persistent service sends it to the same backend again
# (../../../shared/notes/conntrackd-in-namespaces.md). PCM_NO_SYNC=1 loads the configuration
# without conntrackd, to see the connections die. PCM_RTO_MAX_MS=1000 caps the endpoints' TCP
# retransmission backoff (net.ipv4.tcp_rto_max_ms, kernel 6.15+, on the client and backends):
# after a long outage a default stack waits up to twice the outage for its next retransmission.
# The failover kick ([sync.kick], on by default) ends that wait on promotion (RFC 6069: ICMP host
# unreachable quoting each endpoint's snd_una); PCM_NO_KICK=1 turns it off. With the kick the
# crash scenario must meet the issue's goal: longest stall at most detection + 1 s.
set -uo pipefail
# shellcheck source=tests/pacemaker/lib.sh
. "$(dirname "$0")/lib.sh"

require ip nft nsenter unshare setsid corosync corosync-keygen pacemakerd crm crm_mon \
	cibadmin crm_attribute busybox curl conntrackd python3

# shellcheck source=tests/pacemaker/cluster.sh
. "$(dirname "$0")/cluster.sh"
P=ps$$
HEARTBEAT=$REPO/tests/pacemaker/heartbeat.py
CONNS=${PCM_CONNS:-50}
CONNTRACKD_CONF=/etc/conntrackd/conntrackd.conf
KEPT=()

EXTRA_EXPORT="echo,echo.b1,tcp,$VIP,7000,,10.78.0.11,7000,1,rr,nat,
echo,echo.b2,tcp,$VIP,7000,,10.78.0.12,7000,1,rr,nat,
sticky,sticky.b1,tcp,$VIP,7001,,10.78.0.11,7000,1,rr,nat,300
sticky,sticky.b2,tcp,$VIP,7001,,10.78.0.12,7000,1,rr,nat,300
"
if [ -z "${PCM_NO_SYNC:-}" ]; then
	EXTRA_CRM=$REPO/pacemaker/cluster-conntrackd.crm
fi

# The [sync] section and the conntrackd configuration rendered from it: the operator's path.
node_prepare_hook() {
	local n=$1 d=$TMP/$1 a b
	a=$(addr_of "$n") b=$(addr_of "$(other "$n")")
	cat >>"$d/etc-portcullis/portcullis.toml" <<-EOF

	[sync]
	interface = "eth2"
	local_address = "192.168.250.$a"
	peer_address = "192.168.250.$b"
	ignore_addresses = ["10.77.0.$a", "10.78.0.$a", "$VIP", "$GWVIP"]
	socket = "/run/conntrackd.sock"
	lock_file = "/run/conntrackd.lock"
	log_file = "/var/log/portcullis/conntrackd.log"
	EOF
	# The backends answer the kick's probes through their gateway, vip-internal: the kick waits
	# for it as for the public VIP (the cluster adds the two in parallel).
	printf '\n[sync.kick]\nwait_for = ["%s"]\n' "$GWVIP" >>"$d/etc-portcullis/portcullis.toml"
	if [ -n "${PCM_NO_KICK:-}" ]; then
		printf 'enabled = false\n' >>"$d/etc-portcullis/portcullis.toml"
	fi
	mkdir -p "$d/etc-conntrackd"
	if ! "$PORTCULLIS" sync-config --config "$d/etc-portcullis/portcullis.toml" \
		-o "$d/etc-conntrackd/conntrackd.conf" 2>"$d/sync-config.err"; then
		fail "portcullis sync-config for $n: $(cat "$d/sync-config.err")"
		exit 1
	fi
}
node_boot_hook() {
	local n=$1 a=$2
	if ! ip -n "$P-sw" link show sync >/dev/null 2>&1; then
		ip -n "$P-sw" link add sync type bridge && ip -n "$P-sw" link set sync up
	fi
	if ! attach "$n" eth2 sync "192.168.250.$a/24"; then
		fail "cannot wire the sync link of $n"
		exit 1
	fi
	ns "$n" sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0
}
node_mounts() { echo "mount --bind $TMP/$1/etc-conntrackd /etc/conntrackd"; }

# Connections to the echo services in node $1's external cache (what it will commit).
synced_on() {
	nx "$1" conntrackd -C "$CONNTRACKD_CONF" -e 2>/dev/null | grep -c -E "dport=700[01] "
}
status_line() { head -n 1 "$TMP/hb-$1.status" 2>/dev/null; }
field() { status_line "$1" | sed -n "s/.*$2=\([0-9]*\).*/\1/p"; }
all_flowing() { [ "$(field "$1" flowing)" = "$CONNS" ]; }
# Every connection either flowing again or dead.
settled() {
	local f d
	f=$(field "$1" flowing) d=$(field "$1" dead)
	[ -n "$f" ] && [ $((f + d)) = "$CONNS" ]
}

# start_client K STANDBY: the client of scenario K, connected and flowing, its flows in
# STANDBY's external cache; exits the suite if it cannot connect.
start_client() {
	local k=$1 standby=$2 t0
	ip netns exec "$P-cl" python3 "$HEARTBEAT" client "$VIP" 7000,7001 "$CONNS" "$TMP/hb-$k.status" \
		2>"$TMP/hb-$k.err" &
	CLIENT=$!
	SERVERS+=("$CLIENT")
	disown "$CLIENT"
	t0=$(now_ms)
	if ! wait_until 15 all_flowing "$k"; then
		fail "client $k: not all $CONNS connections flowing: $(status_line "$k") $(cat "$TMP/hb-$k.err")"
		exit 1
	fi
	[ -n "${PCM_NO_SYNC:-}" ] && return 0
	if wait_until 20 test "$(synced_on "$standby")" -ge "$CONNS"; then
		pass "client $k: $CONNS connections flowing, in $standby's external cache after $(fmt $(($(now_ms) - t0))) s"
	else
		fail "client $k: only $(synced_on "$standby") of $CONNS connections in $standby's external cache"
	fi
	# portcullis status and /metrics read the same numbers from conntrackd's socket.
	local from_peer
	from_peer=$(nx "$standby" portcullis status --json | sed -n 's/.*"external_entries": \([0-9]*\).*/\1/p')
	if [ "${from_peer:-0}" -ge "$CONNS" ]; then
		pass "client $k: portcullis status on $standby counts $from_peer connections from the peer"
	else
		fail "client $k: portcullis status on $standby: '${from_peer}' connections from the peer"
	fi
	# Connections a few seconds old, as a real device's (the note saw rare late syncs).
	sleep 3
}

# count_kept NAME K T0 DETECTED_MS: waits for every connection to flow again or die, stops the
# client, records and checks the count.
count_kept() {
	local name=$1 k=$2 t0=$3 detect=$4 kept stall
	if ! wait_until 40 settled "$k"; then
		say "  after 40 s: $(status_line "$k")"
	fi
	kill -TERM "$CLIENT" 2>/dev/null
	wait_until 3 sh -c "! kill -0 $CLIENT"
	kept=$(field "$k" flowing) stall=$(field "$k" max_stall_ms)
	say "  connections kept: ${kept:-0}/$CONNS (longest stall $(fmt "${stall:-0}") s, fault to detection $(fmt "$detect") s)"
	grep "^dead:" "$TMP/hb-$k.status" | sort | uniq -c | head -n 5 >&2
	KEPT+=("$(printf '%-36s %5s/%-3s %8s %8s %8s' "$name" "${kept:-0}" "$CONNS" "$(fmt "$detect")" \
		"$(fmt "${stall:-0}")" "$(fmt $(($(now_ms) - t0)))")")
	expect "$name: connections kept" "$CONNS" "${kept:-0}"
	# After a crash (a planned failover has no detection time: its stall is the cluster moving
	# the resources). The check is the kick's function, with room for a loaded machine: kicked,
	# the stall ended 0.5–0.9 s after detection; left to their backoff, the endpoints resumed
	# ~6.9 s after it (docs/failover.md). Timings are not asserted tighter than that here; the
	# issue's goal (detection + 1 s) is measured and printed, as benchmarks are.
	if [ "$detect" -gt 0 ] && [ -z "${PCM_NO_SYNC:-}" ] && [ -z "${PCM_NO_KICK:-}" ]; then
		if [ "${stall:-0}" -gt 0 ] && [ "$stall" -le $((detect + 3000)) ]; then
			pass "$name: longest stall $(fmt "$stall") s, within detection + 3 s (the kick ended the backoff)"
		else
			fail "$name: longest stall $(fmt "${stall:-0}") s, over detection ($(fmt "$detect") s) + 3 s: the endpoints waited for their backoff"
		fi
		local goal=missed
		[ "${stall:-0}" -le $((detect + 1000)) ] && goal=met
		say "  stall after detection: $(fmt $((stall - detect))) s (goal: at most 1 s): $goal"
	fi
}

kicks() {
	local n
	n=$(grep -c "failover kick" "$TMP/$1/var-log-portcullis/portcullis.log" 2>/dev/null)
	echo "${n:-0}"
}
# kicked NODE BEFORE: the failover kick NODE logged after its first BEFORE ones, in brief
# (connections, answers, ICMPs); waits a few seconds for it.
kicked() {
	[ -n "${PCM_NO_SYNC:-}${PCM_NO_KICK:-}" ] && return 0
	wait_until 5 test "$(kicks "$1")" -gt "$2"
	grep "failover kick" "$TMP/$1/var-log-portcullis/portcullis.log" 2>/dev/null | tail -n 1 |
		grep -o -E '(connections|client_answers|server_answers|icmp_to_clients|icmp_to_servers|waited_for_vips_ms|took_ms)=[0-9]+' |
		tr '\n' ' '
}

start_echo_servers() {
	local b
	for b in b1 b2; do
		ip netns exec "$P-$b" python3 "$HEARTBEAT" serve 7000 2>"$TMP/echo-$b.err" &
		SERVERS+=($!)
		disown $!
	done
	for b in b1 b2; do
		if ! wait_until 10 sh -c "ip netns exec $P-$b ss -Hltn 'sport = :7000' | grep -q ."; then
			fail "echo server on $b not listening: $(cat "$TMP/echo-$b.err")"
			exit 1
		fi
	done
}

start_cluster
start_echo_servers
if [ -n "${PCM_RTO_MAX_MS:-}" ]; then
	for n in cl b1 b2; do ns "$n" sysctl -qw net.ipv4.tcp_rto_max_ms="$PCM_RTO_MAX_MS"; done
fi
if [ -z "${PCM_NO_SYNC:-}" ]; then
	if wait_until 30 sh -c "nsenter -t $(cat "$REG/n1.pid") -n -m -u -- crm_mon -1 2>/dev/null | grep -A3 conntrackd-clone | grep -q 'Promoted: \[ $active \]'"; then
		pass "conntrackd promoted on $active, running on both"
	else
		fail "conntrackd not promoted on $active"
		mon n1 >&2
		exit 1
	fi
fi

if [ -z "${PCM_NO_SYNC:-}" ]; then
	for n in n1 n2; do
		want=backup
		[ "$n" = "$active" ] && want=primary
		# Captured whole: grep -q would close the pipe on the writer.
		out=$(nx "$n" portcullis status 2>&1)
		if grep -q "^sync: *$want (conntrackd), peer 192.168.250.$(addr_of "$(other "$n")") over eth2" <<<"$out"; then
			pass "portcullis status on $n: sync $want, its peer and link"
		else
			fail "portcullis status on $n: $(grep sync <<<"$out")"
		fi
		out=$(nx "$n" curl -s --max-time 3 http://127.0.0.1:9477/metrics)
		if grep -q "^portcullis_sync_up 1" <<<"$out"; then
			pass "/metrics on $n: conntrackd answers (portcullis_sync_up 1)"
		else
			fail "/metrics on $n: no portcullis_sync_up 1"
		fi
	done
fi

say "== 1. standby of the active node ($active), $CONNS connections"
old=$active new=$(other "$active")
start_client 1 "$new"
before=$(kicks "$new")
t0=$(now_ms)
nx "$new" crm node standby "$old"
measure "standby of the active node" "$old" "$new" "$t0"
count_kept "standby (planned)" 1 "$t0" 0
say "  failover kick on $new: $(kicked "$new" "$before")"
nx "$new" crm node online "$old"
if wait_until 60 steady "$new"; then pass "$old back online as unpromoted"; else fail "no steady state after $old came back"; fi
active=$new

say "== 2. crash of the active node ($active), fenced, $CONNS connections"
old=$active new=$(other "$active")
# The node that came back asked for a resync and the promoted one bulk-sent (notify).
start_client 2 "$new"
before=$(kicks "$new")
t0=$(now_ms)
"$FENCE" --action=off --plug="$old" --registry="$REG" >/dev/null
measure "crash of the active node (fenced)" "$old" "$new" "$t0" crashed
count_kept "crash (fenced)" 2 "$t0" "$(detected "$old" "$t0" crashed)"
kick=$(kicked "$new" "$before")
say "  failover kick on $new: $kick"
if [ -z "${PCM_NO_SYNC:-}" ] && [ -z "${PCM_NO_KICK:-}" ]; then
	n=$(sed -n 's/.*connections=\([0-9]*\).*/\1/p' <<<"$kick")
	if [ "${n:-0}" -ge "$CONNS" ]; then
		pass "crash (fenced): the failover kick on $new probed the $CONNS connections"
	else
		fail "crash (fenced): the failover kick on $new: '${kick}'"
	fi
fi

say ""
say "stateful failover ($CONNS connections, heartbeat every 100 ms, corosync token $(sed -n 's/^\ttoken: //p' "$TMP/n1/etc-corosync/corosync.conf") ms, endpoints' tcp_rto_max_ms ${PCM_RTO_MAX_MS:-default}):"
say "$(printf '%-36s %9s %8s %8s %8s' scenario kept detected stall total)"
for r in "${KEPT[@]}"; do say "$r"; done
summary
