#!/usr/bin/env bash
# The shipped cluster configurations, offline: cluster.crm (with and without the conntrackd
# addition) and cluster.pcs each build a CIB that crm_verify accepts, both forms describe the
# same resources, meta attributes and constraints, and the scheduler (crm_simulate, two nodes
# online) promotes portcullis on one node with every VIP there, starting the VIPs before the
# promotion.
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

say "== verify"
for f in crm crm-conntrackd pcs; do
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
facts "$TMP/crm.xml" >"$TMP/crm.facts"
facts "$TMP/pcs.xml" >"$TMP/pcs.facts"
if [ -s "$TMP/crm.facts" ] && diff -u "$TMP/crm.facts" "$TMP/pcs.facts" >"$TMP/facts.diff"; then
	pass "crm and pcs forms configure the same ($(wc -l <"$TMP/crm.facts") facts)"
else
	fail "crm and pcs forms differ:"
	cat "$TMP/facts.diff" >&2
fi

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

summary
