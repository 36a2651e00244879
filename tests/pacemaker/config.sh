#!/usr/bin/env bash
# The shipped cluster configurations, offline: cluster.crm and cluster.pcs, each with and
# without its conntrackd addition, build CIBs that crm_verify accepts, both forms describe the
# same resources, meta attributes and constraints, and the scheduler (crm_simulate, two nodes
# online) promotes portcullis on one node with every VIP there, starting the VIPs before the
# promotion — and with conntrackd: conntrackd promoted there first, the VIPs after portcullis.
# The conntrackd configuration `portcullis sync-config` renders names the control socket the
# way ocf:heartbeat:conntrackd looks for it.
set -uo pipefail
# shellcheck source=tests/pacemaker/lib.sh
. "$(dirname "$0")/lib.sh"

NEED_BINARY=0 require crm pcs cibadmin crm_verify crm_simulate xmllint

TMP=$(mktemp -d /tmp/pcm-config.XXXXXX)
FENCE=/usr/sbin/fence_netns
trap '[ -n "${PCM_KEEP:-}" ] || rm -rf "$TMP"; rm -f "$FENCE"' EXIT
install_agent
# A fence device is site-specific and not shipped; the test-only one makes the CIB complete.
install -m 0755 "$REPO/tests/pacemaker/fence_netns" "$FENCE"
FENCE_CRM="primitive fence-any stonith:fence_netns params registry=$TMP pcmk_host_list=\"gw1 gw2\" op monitor interval=60s"
cib() { cibadmin --empty >"$1"; }

say "== crm shell form"
cib "$TMP/crm.xml"
echo "$FENCE_CRM" >"$TMP/fence.crm"
cat "$TMP/fence.crm" "$REPO/pacemaker/cluster.crm" >"$TMP/load.crm"
if CIB_file=$TMP/crm.xml crm configure load update "$TMP/load.crm" >"$TMP/out" 2>&1; then
	pass "crm configure load update cluster.crm"
else
	fail "crm load: $(cat "$TMP/out")"
fi
cp "$TMP/crm.xml" "$TMP/crm-conntrackd.xml"
if CIB_file=$TMP/crm-conntrackd.xml crm configure load update "$REPO/pacemaker/cluster-conntrackd.crm" >"$TMP/out" 2>&1; then
	pass "crm configure load update cluster-conntrackd.crm on top"
else
	fail "conntrackd load: $(cat "$TMP/out")"
fi

say "== pcs form"
cib "$TMP/pcs.xml"
if CIB=$TMP/pcs.xml sh "$REPO/pacemaker/cluster.pcs" --offline >"$TMP/out" 2>&1; then
	pass "cluster.pcs --offline"
else
	fail "cluster.pcs: $(cat "$TMP/out")"
fi
CIB_file=$TMP/pcs.xml crm configure load update "$TMP/fence.crm" >/dev/null 2>&1
cp "$TMP/pcs.xml" "$TMP/pcs-conntrackd.xml"
if CIB=$TMP/pcs-conntrackd.xml sh "$REPO/pacemaker/cluster-conntrackd.pcs" --offline >"$TMP/out" 2>&1; then
	pass "cluster-conntrackd.pcs --offline on top"
else
	fail "cluster-conntrackd.pcs: $(cat "$TMP/out")"
fi

say "== verify"
for f in crm crm-conntrackd pcs pcs-conntrackd; do
	if crm_verify -x "$TMP/$f.xml" >"$TMP/out" 2>&1; then
		pass "crm_verify accepts the $f configuration"
	else
		fail "crm_verify $f: $(cat "$TMP/out")"
	fi
done

# The parts that matter, as sorted "element id attribute=value" lines: primitives and their
# agents, parameters, operations, meta attributes, constraints.
facts() {
	xmllint --xpath '//configuration/resources//primitive[not(@class="stonith")] |
		//configuration/resources//nvpair | //configuration/resources//op |
		//configuration/constraints/* | //configuration/constraints//resource_set |
		//configuration/constraints//resource_ref | //rsc_defaults//nvpair' "$1" 2>/dev/null |
		tr '\n' ' ' | sed 's/<\(primitive\|nvpair\|op\|rsc_colocation\|rsc_order\|resource_set\|resource_ref\)[ />]/\n&/g' |
		sed -n 's/^<\([a-z_]*\)\(.*\)\/\{0,1\}>.*/\1\2/p' | while read -r el rest; do
			# Ids are generated differently by crmsh and pcs: compare everything else (a
			# resource_ref is nothing but the id of what it refers to).
			attrs=$(echo "$rest" | grep -o '[a-z_-]*="[^"]*"' | grep -v -E '^rsc-role="Started"|^first-action="start"' |
				{ if [ "$el" = resource_ref ]; then cat; else grep -v '^id='; fi; } | sort | tr '\n' ' ')
			echo "$el $attrs"
		done | sed 's/ *\/\{0,1\}>\{0,1\} *$//' | sort
}
for v in "" -conntrackd; do
	facts "$TMP/crm$v.xml" >"$TMP/crm.facts"
	facts "$TMP/pcs$v.xml" >"$TMP/pcs.facts"
	if [ -s "$TMP/crm.facts" ] && diff -u "$TMP/crm.facts" "$TMP/pcs.facts" >"$TMP/facts.diff"; then
		pass "crm$v and pcs$v forms configure the same ($(wc -l <"$TMP/crm.facts") facts)"
	else
		fail "crm$v and pcs$v forms differ:"
		cat "$TMP/facts.diff" >&2
	fi
done

say "== scheduler"
for f in crm pcs; do
	# Two nodes join and the clone starts; then the agent reports a cached export on gw2 only
	# (promotion scores 100 and 10): what does the cluster do?
	if ! crm_simulate -x "$TMP/$f.xml" -q 1 --node-up gw1 --node-up gw2 -S -O "$TMP/$f-up.xml" >"$TMP/sim" 2>&1; then
		fail "crm_simulate $f, nodes up: $(tail -n 5 "$TMP/sim")"
		continue
	fi
	CIB_file=$TMP/$f-up.xml crm_attribute -N gw1 -l reboot -n master-portcullis -v 10
	CIB_file=$TMP/$f-up.xml crm_attribute -N gw2 -l reboot -n master-portcullis -v 100
	if ! crm_simulate -x "$TMP/$f-up.xml" -q 1 -S >"$TMP/sim" 2>&1; then
		fail "crm_simulate $f: $(tail -n 5 "$TMP/sim")"
		continue
	fi
	promoted=$(sed -n 's/.*Promoted: \[ \([a-z0-9]*\) \].*/\1/p' "$TMP/sim" | tail -n 1)
	vip1=$(sed -n 's/.*vip-public.*Started \([a-z0-9]*\).*/\1/p' "$TMP/sim" | tail -n 1)
	vip2=$(sed -n 's/.*vip-internal.*Started \([a-z0-9]*\).*/\1/p' "$TMP/sim" | tail -n 1)
	if [ "$promoted" = gw2 ] && [ "$vip1" = gw2 ] && [ "$vip2" = gw2 ]; then
		pass "$f: portcullis promoted where the export is cached, both VIPs there"
	else
		fail "$f: promoted '$promoted', VIPs on '$vip1' '$vip2'"
		cat "$TMP/sim" >&2
	fi
	# The transition (printed in dependency order): VIPs started before the promotion.
	line() { grep -n -E "Resource action: +$1 +$2 on" "$TMP/sim" | head -n 1 | cut -d: -f1; }
	p=$(line portcullis promote) v1=$(line vip-public start) v2=$(line vip-internal start)
	if [ -n "$p" ] && [ -n "$v1" ] && [ -n "$v2" ] && [ "$p" -gt "$v1" ] && [ "$p" -gt "$v2" ]; then
		pass "$f: promotion comes after the VIPs start"
	else
		fail "$f: transition order (promote line '$p', VIP starts '$v1' '$v2')"
	fi
done

# With conntrackd: the new active node commits the synchronised connections before its rules
# exist, and the rules before the VIPs bring it traffic.
for f in crm-conntrackd pcs-conntrackd; do
	if ! crm_simulate -x "$TMP/$f.xml" -q 1 --node-up gw1 --node-up gw2 -S -O "$TMP/$f-up.xml" >"$TMP/sim" 2>&1; then
		fail "crm_simulate $f, nodes up: $(tail -n 5 "$TMP/sim")"
		continue
	fi
	for n in gw1 gw2; do
		CIB_file=$TMP/$f-up.xml crm_attribute -N $n -l reboot -n master-conntrackd -v 100
	done
	CIB_file=$TMP/$f-up.xml crm_attribute -N gw1 -l reboot -n master-portcullis -v 10
	CIB_file=$TMP/$f-up.xml crm_attribute -N gw2 -l reboot -n master-portcullis -v 100
	if ! crm_simulate -x "$TMP/$f-up.xml" -q 1 -S >"$TMP/sim" 2>&1; then
		fail "crm_simulate $f: $(tail -n 5 "$TMP/sim")"
		continue
	fi
	if grep -q -E "Promoted: \[ gw2 \]" "$TMP/sim" &&
		[ "$(grep -c -E "Promoted: \[ gw2 \]" "$TMP/sim")" -ge 2 ]; then
		pass "$f: conntrackd and portcullis both promoted on gw2"
	else
		fail "$f: not both promoted on gw2"
		cat "$TMP/sim" >&2
	fi
	line() { grep -n -E "Resource action: +$1 +$2 on" "$TMP/sim" | head -n 1 | cut -d: -f1; }
	c=$(line conntrackd promote) p=$(line portcullis promote) v1=$(line vip-public start) v2=$(line vip-internal start)
	if [ -n "$c" ] && [ -n "$p" ] && [ -n "$v1" ] && [ -n "$v2" ] && [ "$c" -lt "$p" ] &&
		[ "$p" -lt "$v1" ] && [ "$p" -lt "$v2" ]; then
		pass "$f: conntrackd promoted, then portcullis, then the VIPs start"
	else
		fail "$f: transition order (conntrackd '$c', portcullis '$p', VIPs '$v1' '$v2')"
		cat "$TMP/sim" >&2
	fi
done

say "== conntrackd configuration"
if [ -x "$PORTCULLIS" ]; then
	cat >"$TMP/sync.toml" <<-EOF
	[sync]
	interface = "eth2"
	local_address = "192.168.250.1"
	peer_address = "192.168.250.2"
	socket = "/run/test/conntrackd.sock"
	EOF
	if "$PORTCULLIS" sync-config --config "$TMP/sync.toml" -o "$TMP/conntrackd.conf" 2>"$TMP/out"; then
		# The agent's own expression (ocf:heartbeat:conntrackd's monitor).
		sock=$(awk '/^[ \t]*UNIX[ \t]*{/,/^[ \t]*}/ { if ($1 == "Path") { print $2 } }' "$TMP/conntrackd.conf")
		expect "ocf:heartbeat:conntrackd finds the socket in the rendered configuration" /run/test/conntrackd.sock "$sock"
	else
		fail "portcullis sync-config: $(cat "$TMP/out")"
	fi
elif [ "${CI:-}" = true ]; then
	fail "no binary at $PORTCULLIS for the sync-config check"
else
	say "  skipped: no binary at $PORTCULLIS for the sync-config check"
fi

summary
