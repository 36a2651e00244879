#!/usr/bin/env bash
# A real two-node Pacemaker/Corosync gateway pair on this one machine, running the shipped
# configuration (pacemaker/cluster.crm, addresses substituted) with the real agent and daemon,
# and four failovers, each measured from the fault to the first new client connection that
# goes through the VIP to a backend again:
#   1. crm node standby of the active node;
#   2. crash of the active node (links down + SIGKILL of all its processes), fencing on;
#   3. kill -9 of the portcullis daemon on the active node;
#   4. ADMIN unreachable, then a crash of the active node: the standby promotes from its cache.
#
#   ext 10.77.0.0/24: client .100, gateways .1 .2, public VIP .10
#   int 10.78.0.0/24: gateways .1 .2, internal VIP .254 (the backends' gateway), backends .11
#                     .12, ADMIN .50; corosync runs here
#
# Each gateway is a network namespace plus private mount/UTS namespaces (its own /etc/corosync,
# /var/lib/pacemaker, /run, …), see ../../../shared/notes/pacemaker-in-namespaces.md. All
# processes are killed by pid and all namespaces removed on exit, also on failure.
#
# PCM_TOKEN=1000 runs with another corosync token (ms); PCM_KEEP=1 keeps the logs in /tmp.
set -uo pipefail
# shellcheck source=tests/pacemaker/lib.sh
. "$(dirname "$0")/lib.sh"

require ip nft nsenter unshare setsid corosync corosync-keygen pacemakerd crm crm_mon \
	cibadmin crm_attribute busybox curl

# shellcheck source=tests/pacemaker/cluster.sh
. "$(dirname "$0")/cluster.sh"

start_cluster


say "== 1. standby of the active node ($active)"
old=$active new=$(other "$active")
t0=$(now_ms)
nx "$new" crm node standby "$old"
measure "standby of the active node" "$old" "$new" "$t0"
if wait_until 20 sh -c "! ip netns exec $P-$old nft list table inet portcullis >/dev/null 2>&1"; then
	pass "the node in standby kept no rules (flush_on_stop)"
else
	fail "rules left on $old after standby"
fi
nx "$new" crm node online "$old"
if wait_until 60 steady "$new"; then pass "$old back online as unpromoted, $new stays promoted"; else fail "no steady state after $old came back"; fi
active=$new

say "== 2. crash of the active node ($active), fencing on"
old=$active new=$(other "$active")
t0=$(now_ms)
"$FENCE" --action=off --plug="$old" --registry="$REG" >/dev/null
measure "crash of the active node (fenced)" "$old" "$new" "$t0" crashed
if grep -q " $old\$" "$REG/fenced.log" && [ "$(grep -c " $old\$" "$REG/fenced.log")" -ge 2 ]; then
	pass "the cluster fenced $old"
else
	fail "no fencing of $old recorded by the fence agent"
fi
boot_node "$old" "$(addr_of "$old")"
if wait_until 90 steady "$new"; then pass "$old rebooted and rejoined as unpromoted"; else fail "$old did not rejoin"; fi
active=$new

say "== 3. kill -9 of the portcullis daemon on the active node ($active)"
old=$active new=$(other "$active")
t0=$(now_ms)
kill -KILL "$(cat "$TMP/$old/var-lib-portcullis/portcullis.pid")"
measure "kill -9 of the daemon (migration-threshold=1)" "$old" "$new" "$t0"
if wait_until 20 sh -c "! ip netns exec $P-$old nft list table inet portcullis >/dev/null 2>&1"; then
	pass "the failed node kept no rules (stopped, flushed)"
else
	fail "rules left on $old after its daemon failed"
fi
nx "$new" crm resource cleanup portcullis-clone >/dev/null 2>&1
if wait_until 60 steady "$new"; then pass "after cleanup $old runs unpromoted again"; else fail "no steady state after cleanup"; fi
active=$new

say "== 4. ADMIN unreachable, then crash of the active node ($active)"
old=$active new=$(other "$active")
ip -n "$P-ad" link set eth0 down
if wait_until 30 admin_failing_on "$new" && wait_until 30 admin_failing_on "$old"; then
	pass "both daemons see ADMIN unreachable"
else
	fail "the daemons did not notice ADMIN going away"
fi
t0=$(now_ms)
"$FENCE" --action=off --plug="$old" --registry="$REG" >/dev/null
measure "ADMIN down, then crash (promote from cache)" "$old" "$new" "$t0" crashed
if ns "$new" curl -s --max-time 1 -o /dev/null "http://10.78.0.50:8000/export.csv"; then
	fail "ADMIN was reachable from $new after all"
else
	pass "ADMIN still unreachable from $new: it forwards from its cache"
fi
expect "$new's daemon reports the active role" active "$(status_of "$new" role)"

say ""
say "failover, seconds from the fault (corosync token $(sed -n 's/^\ttoken: //p' "$TMP/n1/etc-corosync/corosync.conf") ms, promoted monitor every 3 s);"
say "'after' = traffic back after the cluster knew (fenced / monitor failed); 'promote' = the agent's promote, ms:"
say "$(printf '%-44s %8s %8s %8s %8s %8s %8s' scenario detected 'VIP up' rules traffic after promote)"
for r in "${RESULTS[@]}"; do say "$r"; done
summary
