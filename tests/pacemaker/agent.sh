#!/usr/bin/env bash
# The OCF agent against the real daemon, without a cluster: meta-data against the DTD,
# ocf-tester as a plain primitive and as a promotable clone, every OCF exit code the agent
# promises (stopped 7, promoted 8, failed promoted 9, misconfigured 6, not installed 5), the
# deep monitor (drift in the live table, ADMIN down), and crm_resource --validate and
# --force-* on an offline CIB. Everything runs in a network namespace of its own, so the
# daemon's nftables table never reaches the host.
set -uo pipefail
# shellcheck source=tests/pacemaker/lib.sh
. "$(dirname "$0")/lib.sh"

require ip nft ocf-tester xmllint crm_resource cibadmin setsid

NS=pcm-agent-$$
TMP=$(mktemp -d /tmp/pcm-agent.XXXXXX)
cleanup() {
	# Daemons this suite started, by the pids they recorded.
	for pidfile in "$TMP"/*/portcullis.pid; do
		[ -r "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2>/dev/null
	done
	ip netns del "$NS" 2>/dev/null
	rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
install_agent
cp "$REPO/rules/examples/export.csv" "$TMP/export.csv"
cat >"$TMP/portcullis.toml" <<EOF
source = "file://$TMP/export.csv"
interval = "500ms"
backend = "nft"

[interfaces]
external = ["ext0"]
internal = ["int0"]
EOF

# ra ACTION [NAME=VALUE...]: the agent as Pacemaker would run it, in the namespace;
# prints the exit code. Parameters are OCF_RESKEY_ names without the prefix.
STATE=$TMP/state
ra() {
	local action=$1
	shift
	local env=(OCF_ROOT=/usr/lib/ocf OCF_RESOURCE_INSTANCE=pc OCF_RESKEY_CRM_meta_timeout=20000
		OCF_RESKEY_binary="$PORTCULLIS" OCF_RESKEY_config="$TMP/portcullis.toml"
		OCF_RESKEY_state_dir="$STATE" OCF_RESKEY_log_file="$TMP/daemon.log")
	local kv
	for kv in "$@"; do env+=("OCF_RESKEY_$kv"); done
	ip netns exec "$NS" env "${env[@]}" "$AGENT" "$action" >"$TMP/ra.out" 2>&1
	echo $?
}
ms=(CRM_meta_promotable=true CRM_meta_clone_max=2)
table_present() { ip netns exec "$NS" nft list table inet portcullis >/dev/null 2>&1; }

say "== meta-data"
if "$AGENT" meta-data | xmllint --noout --dtdvalid /usr/share/resource-agents/ra-api-1.dtd - 2>"$TMP/xml.err"; then
	pass "meta-data is valid against ra-api-1.dtd"
else
	fail "meta-data: $(cat "$TMP/xml.err")"
fi

say "== ocf-tester"
tester=(-o binary="$PORTCULLIS" -o config="$TMP/portcullis.toml" -o log_file="$TMP/daemon.log")
if ip netns exec "$NS" ocf-tester -n pc "${tester[@]}" -o state_dir="$TMP/plain" "$AGENT" >"$TMP/t1" 2>&1 &&
	grep -q "passed all tests" "$TMP/t1"; then
	pass "ocf-tester, plain primitive (no promotable actions)"
else
	fail "ocf-tester, plain primitive: $(cat "$TMP/t1")"
fi
if ip netns exec "$NS" ocf-tester -n pc "${tester[@]}" -o state_dir="$TMP/ms" -o CRM_meta_promotable=true \
	"$AGENT" >"$TMP/t2" 2>&1 && grep -q "passed all tests" "$TMP/t2" &&
	! grep -q "does not support the promote" "$TMP/t2"; then
	pass "ocf-tester, promotable clone (promote/demote exercised)"
else
	fail "ocf-tester, promotable clone: $(cat "$TMP/t2")"
fi

say "== promotable clone: exit codes"
expect "monitor when stopped" 7 "$(ra monitor "${ms[@]}")"
expect "start (standby)" 0 "$(ra start "${ms[@]}")"
expect "monitor unpromoted" 0 "$(ra monitor "${ms[@]}")"
if table_present; then fail "standby must not touch the kernel"; else pass "standby leaves the kernel alone"; fi
expect "promote" 0 "$(ra promote "${ms[@]}")"
expect "monitor promoted" 8 "$(ra monitor "${ms[@]}")"
if table_present; then pass "promotion applied the cached export"; else fail "no table after promotion"; fi
expect "deep monitor promoted (live table matches the cache)" 8 "$(OCF_CHECK_LEVEL=10 ra monitor "${ms[@]}")"
mv "$TMP/export.csv" "$TMP/export.away"
sleep 1.2
expect "deep monitor with ADMIN gone: still promoted (warning only)" 8 "$(OCF_CHECK_LEVEL=10 ra monitor "${ms[@]}")"
mv "$TMP/export.away" "$TMP/export.csv"
# Drift: someone deletes a chain element by hand.
ip netns exec "$NS" nft flush table inet portcullis
expect "deep monitor with a hand-edited table: failed promoted" 9 "$(OCF_CHECK_LEVEL=10 ra monitor "${ms[@]}")"
if grep -q "differs from the cached export" "$TMP/ra.out"; then pass "exit reason names the drift"; else fail "exit reason: $(cat "$TMP/ra.out")"; fi
expect "shallow monitor does not read the table" 8 "$(ra monitor "${ms[@]}")"
expect "promote when promoted" 0 "$(ra promote "${ms[@]}")"
expect "demote" 0 "$(ra demote "${ms[@]}")"
expect "monitor after demote" 0 "$(ra monitor "${ms[@]}")"
expect "demote when demoted" 0 "$(ra demote "${ms[@]}")"
kill -KILL "$(cat "$STATE/portcullis.pid")"
sleep 0.2
expect "monitor after kill -9 of the daemon" 7 "$(ra monitor "${ms[@]}")"
expect "start again after a crash (stale pid file)" 0 "$(ra start "${ms[@]}")"
expect "promote again" 0 "$(ra promote "${ms[@]}")"
expect "stop" 0 "$(ra stop "${ms[@]}")"
if table_present; then fail "flush_on_stop left the table"; else pass "stop flushed the data plane"; fi
expect "stop when stopped" 0 "$(ra stop "${ms[@]}")"
expect "monitor after stop" 7 "$(ra monitor "${ms[@]}")"
if [ "$(cat "$STATE/role")" = standby ]; then pass "stop leaves the role file at standby"; else fail "role file: $(cat "$STATE/role")"; fi

say "== promotion with nothing to apply"
STATE=$TMP/empty
mv "$TMP/export.csv" "$TMP/export.away"
expect "start with ADMIN down and no cache" 0 "$(ra start "${ms[@]}")"
expect "promote with no cache and ADMIN down fails" 1 "$(ra promote "${ms[@]}")"
if grep -q "no export could be applied" "$TMP/ra.out"; then pass "exit reason says why"; else fail "exit reason: $(cat "$TMP/ra.out")"; fi
expect "stop" 0 "$(ra stop "${ms[@]}")"
mv "$TMP/export.away" "$TMP/export.csv"

say "== plain primitive"
STATE=$TMP/plain2
expect "start (active)" 0 "$(ra start)"
expect "monitor (0, not 8)" 0 "$(ra monitor)"
if table_present; then pass "plain start applies the export"; else fail "no table after a plain start"; fi
expect "promote is not implemented" 3 "$(ra promote)"
expect "stop with flush_on_stop=false" 0 "$(ra stop flush_on_stop=false)"
if table_present; then pass "flush_on_stop=false keeps the rules"; else fail "rules gone despite flush_on_stop=false"; fi
ip netns exec "$NS" "$PORTCULLIS" flush >/dev/null

say "== validation"
expect "missing configuration file: not installed" 5 "$(ra validate-all config=/nonexistent.toml)"
printf 'intervall = "1s"\n' >"$TMP/bad.toml"
expect "unknown key in the configuration: misconfigured" 6 "$(ra validate-all config="$TMP/bad.toml")"
if grep -q "intervall" "$TMP/ra.out"; then pass "exit reason names the key"; else fail "exit reason: $(cat "$TMP/ra.out")"; fi
expect "flush_on_stop not a boolean: misconfigured" 6 "$(ra validate-all flush_on_stop=perhaps)"
expect "missing binary: not installed" 5 "$(ra validate-all binary=/nonexistent/portcullis)"
expect "probe with a missing binary: not running" 7 "$(ra monitor binary=/nonexistent/portcullis CRM_meta_interval=0)"
expect "valid configuration" 0 "$(ra validate-all)"

say "== crm_resource, no cluster"
opts=(--option binary="$PORTCULLIS" --option config="$TMP/portcullis.toml" --option state_dir="$TMP/crm")
if ip netns exec "$NS" crm_resource --validate --class ocf --provider portcullis --agent portcullis \
	"${opts[@]}" >"$TMP/v" 2>&1; then
	pass "crm_resource --validate"
else
	fail "crm_resource --validate: $(cat "$TMP/v")"
fi
if ip netns exec "$NS" crm_resource --validate --class ocf --provider portcullis --agent portcullis \
	"${opts[@]}" --option config="$TMP/bad.toml" >"$TMP/v" 2>&1; then
	fail "crm_resource --validate accepted a bad configuration"
else
	pass "crm_resource --validate refuses a bad configuration"
fi
export CIB_file=$TMP/cib.xml
cibadmin --empty >"$CIB_file"
cibadmin -C -o resources -X "<clone id='pc-clone'><meta_attributes id='pc-clone-meta'>
  <nvpair id='pc-clone-promotable' name='promotable' value='true'/></meta_attributes>
  <primitive id='pc' class='ocf' provider='portcullis' type='portcullis'>
  <instance_attributes id='pc-ia'>
  <nvpair id='pc-bin' name='binary' value='$PORTCULLIS'/>
  <nvpair id='pc-cfg' name='config' value='$TMP/portcullis.toml'/>
  <nvpair id='pc-sd' name='state_dir' value='$TMP/crm'/>
  <nvpair id='pc-log' name='log_file' value='$TMP/daemon.log'/>
  </instance_attributes></primitive></clone>"
for step in "--force-start:0" "--force-check=10:0" "--force-promote:0" "--force-check=10:8" "--force-demote:0" "--force-stop:0"; do
	flag=${step%:*}
	rc=0
	ip netns exec "$NS" env CIB_file="$CIB_file" crm_resource -r pc "$flag" >"$TMP/f" 2>&1 || rc=$?
	expect "crm_resource $flag on an offline CIB" "${step##*:}" "$rc"
	[ "$rc" = "${step##*:}" ] || say "$(cat "$TMP/f")"
done
unset CIB_file

summary
