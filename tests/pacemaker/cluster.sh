# Shared by failover.sh and stateful.sh (sourced after lib.sh and `require`): a real two-node
# Pacemaker/Corosync gateway pair on this one machine, its network, backends and ADMIN, and the
# observations the scenarios use. See failover.sh for the layout. Hooks a suite may define
# before calling start_cluster: node_prepare_hook NODE (after its "disk" is prepared),
# node_boot_hook NODE SUFFIX (after its links, before corosync), node_mounts NODE (extra mount
# commands run in the node), EXTRA_EXPORT (rows added to the export ADMIN serves) and
# EXTRA_CRM (crm files loaded with the configuration).
# shellcheck shell=bash

P=pf$$
TMP=$(mktemp -d /tmp/pcm-failover.XXXXXX)
REG=$TMP/registry
FENCE=/usr/sbin/fence_netns
VIP=10.77.0.10
GWVIP=10.78.0.254
CREATED=()
SERVERS=()
RESULTS=()

HOST_NET=$(readlink /proc/self/ns/net)
# Processes in node $1's network namespace: never the host's (a wrong pid in the registry must
# not turn the cleanup into a kill of every process on the machine).
node_pids() {
	local root ns p
	root=$(cat "$REG/$1.pid" 2>/dev/null) || return 0
	ns=$(readlink "/proc/$root/ns/net" 2>/dev/null) || return 0
	if [ "$ns" = "$HOST_NET" ] || [ "$ns" = "$(readlink /proc/1/ns/net)" ]; then
		say "refusing to kill the processes of $1: pid $root is in the host's network namespace"
		return 0
	fi
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/ns/net" 2>/dev/null)" = "$ns" ] && echo "${p#/proc/}"
	done
}

cleanup() {
	local n pid path
	if [ "$FAILED" != 0 ] || [ "${PASSED:-0}" = 0 ]; then
		for n in n1 n2; do
			[ -r "$TMP/$n/var-log-pacemaker/pacemaker.log" ] || continue
			say "--- $n: pacemaker.log (portcullis, fencing, errors; last 40)"
			grep -E "portcullis\(|Result of|terminated|error:" "$TMP/$n/var-log-pacemaker/pacemaker.log" |
				grep -v -E "cib_perform_op|CPG API" | tail -n 40 >&2
			say "--- $n: portcullis daemon log (last 10)"
			tail -n 10 "$TMP/$n/var-log-portcullis/portcullis.log" >&2 2>/dev/null
		done
	fi
	for n in n1 n2; do
		for pid in $(node_pids "$n"); do kill -KILL "$pid" 2>/dev/null; done
	done
	for pid in "${SERVERS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
	sleep 0.2
	for n in n1 n2 cl b1 b2 ad sw; do ip netns del "$P-$n" 2>/dev/null; done
	rm -f "$FENCE"
	for path in "${CREATED[@]}"; do
		if [ -d "$path" ]; then rmdir "$path"; else rm -f "$path"; fi
	done
	if [ -n "${PCM_KEEP:-}" ]; then say "kept $TMP (PCM_KEEP)"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Mount points the nodes bind their own copies onto; created empty on the host if absent.
placeholder() {
	if [ "$1" = file ]; then
		[ -e "$2" ] && return
		: >"$2" && CREATED+=("$2")
	else
		[ -d "$2" ] && return
		mkdir "$2" && CREATED=("$2" "${CREATED[@]}")
	fi
}

# --- network -------------------------------------------------------------------------------
ns() {
	local n=$1
	shift
	ip netns exec "$P-$n" "$@"
}

# attach NS IFNAME BRIDGE ADDR/LEN
attach() {
	ip -n "$P-sw" link add "$1-$2" type veth peer name "$2" netns "$P-$1" &&
		ip -n "$P-sw" link set "$1-$2" master "$3" up &&
		ip -n "$P-$1" addr add "$4" dev "$2" &&
		ip -n "$P-$1" link set "$2" up
}

network() {
	ip netns add "$P-sw"
	for br in ext int; do
		ip -n "$P-sw" link add "$br" type bridge
		ip -n "$P-sw" link set "$br" up
	done
	for n in cl b1 b2 ad; do
		ip netns add "$P-$n"
		ip -n "$P-$n" link set lo up
	done
	attach cl eth0 ext 10.77.0.100/24
	attach b1 eth0 int 10.78.0.11/24
	attach b2 eth0 int 10.78.0.12/24
	attach ad eth0 int 10.78.0.50/24
	ip -n "$P-b1" route add default via "$GWVIP"
	ip -n "$P-b2" route add default via "$GWVIP"
}

servers() {
	local b
	for b in b1 b2; do
		mkdir -p "$TMP/www-$b"
		echo "$b" >"$TMP/www-$b/index.html"
		# Directly, not through ns(): $! must be the server, not a subshell.
		ip netns exec "$P-$b" busybox httpd -f -p 8080 -h "$TMP/www-$b" &
		SERVERS+=($!)
		disown $!
	done
	mkdir -p "$TMP/admin"
	cat >"$TMP/admin/export.csv" <<EOF
# portcullis-export 1.0
service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence
web,web.b1,tcp,$VIP,80,,10.78.0.11,8080,1,rr,nat,
web,web.b2,tcp,$VIP,80,,10.78.0.12,8080,1,rr,nat,
EOF
	printf '%s' "${EXTRA_EXPORT:-}" >>"$TMP/admin/export.csv"
	ip netns exec "$P-ad" busybox httpd -f -p 8000 -h "$TMP/admin" &
	SERVERS+=($!)
	disown $!
}

# --- nodes ---------------------------------------------------------------------------------
# Per-node "disks", kept across the node's reboots like a real one's.
prepare_node() {
	local n=$1 d=$TMP/$1
	mkdir -p "$d"/{etc-corosync,var-lib-corosync,var-log-corosync,etc-portcullis,var-lib-portcullis,var-log-portcullis}
	mkdir -p "$d"/var-lib-pacemaker/{cib,pengine,blackbox,cores} "$d/var-log-pacemaker"
	chown -R hacluster:haclient "$d/var-lib-pacemaker" "$d/var-log-pacemaker"
	chmod 750 "$d"/var-lib-pacemaker/*
	sed -e 's/cluster_name: gateways/cluster_name: pcmtest/' \
		-e 's/name: gw\([12]\)/name: n\1/' \
		-e 's/ring0_addr: 10\.10\.0\.2$/ring0_addr: 10.78.0.1/' \
		-e 's/ring0_addr: 10\.10\.0\.3$/ring0_addr: 10.78.0.2/' \
		-e 's/to_syslog: yes/to_syslog: no/' \
		-e "s/^\ttoken: 3000\$/\ttoken: ${PCM_TOKEN:-3000}/" \
		"$REPO/pacemaker/corosync.conf.example" >"$d/etc-corosync/corosync.conf"
	cp "$TMP/authkey" "$d/etc-corosync/authkey"
	printf '127.0.0.1 localhost\n10.78.0.1 n1\n10.78.0.2 n2\n' >"$d/hosts"
	# A seed CIB with a short dc-deadtime: the cluster elects its DC in seconds, not 20 s more.
	CIB_file=$d/var-lib-pacemaker/cib/cib.xml cibadmin --empty >"$d/var-lib-pacemaker/cib/cib.xml"
	CIB_file=$d/var-lib-pacemaker/cib/cib.xml crm_attribute -t crm_config -n dc-deadtime -v 2s
	chown hacluster:haclient "$d/var-lib-pacemaker/cib/cib.xml"
	chmod 600 "$d/var-lib-pacemaker/cib/cib.xml"
	cat >"$d/etc-portcullis/portcullis.toml" <<EOF
source = "http://10.78.0.50:8000/export.csv"
interval = "1s"
request_timeout = "2s"
backend = "nft"
metrics = "127.0.0.1:9477"

[interfaces]
external = ["eth0"]
internal = ["eth1"]
EOF
	if declare -F node_prepare_hook >/dev/null; then node_prepare_hook "$n"; fi
}

# Boots node $1 (address suffix $2): a fresh network namespace (a crash loses kernel state,
# VIPs and rules included), then corosync and pacemakerd in private mount/UTS namespaces.
boot_node() {
	local n=$1 a=$2 d=$TMP/$1
	# Unplug the old links first: a deleted namespace releases its veths asynchronously, and
	# a peer name still taken in the switch would leave the new node without its link.
	for l in eth0 eth1 eth2; do ip -n "$P-sw" link del "$n-$l" 2>/dev/null; done
	ip netns del "$P-$n" 2>/dev/null
	ip netns add "$P-$n"
	ip -n "$P-$n" link set lo up
	if ! attach "$n" eth0 ext "10.77.0.$a/24" || ! attach "$n" eth1 int "10.78.0.$a/24"; then
		fail "cannot wire node $n"
		exit 1
	fi
	ns "$n" sysctl -qw net.ipv4.ip_forward=1
	if declare -F node_boot_hook >/dev/null; then node_boot_hook "$n" "$a"; fi
	# Not through ns(): a backgrounded function is a subshell, and $! would be its pid, in
	# the host's namespace. ip, setsid, env and unshare exec in place: $! is the node's init.
	ip netns exec "$P-$n" setsid env -u CIB_file unshare -m -u --propagation private bash -c "
		set -e
		hostname $n
		mount --bind $d/etc-corosync /etc/corosync
		mount --bind $d/var-lib-corosync /var/lib/corosync
		mount --bind $d/var-log-corosync /var/log/corosync
		mount --bind $d/var-lib-pacemaker /var/lib/pacemaker
		mount --bind $d/var-log-pacemaker /var/log/pacemaker
		mount --bind $d/etc-portcullis /etc/portcullis
		mount --bind $d/var-lib-portcullis /var/lib/portcullis
		mount --bind $d/var-log-portcullis /var/log/portcullis
		mount --bind $d/hosts /etc/hosts
		mount --bind $PORTCULLIS /usr/bin/portcullis
		$(if declare -F node_mounts >/dev/null; then node_mounts "$n"; fi)
		mount -t tmpfs tmpfs /run
		mount -t tmpfs tmpfs /dev/shm
		corosync -f &
		for _ in \$(seq 100); do corosync-cfgtool -s >/dev/null 2>&1 && break; sleep 0.1; done
		pacemakerd &
		wait
	" >"$d/boot.log" 2>&1 &
	local pid=$!
	disown "$pid" # its death by fencing is the point, not news
	if [ "$(readlink "/proc/$pid/ns/net")" = "$HOST_NET" ]; then
		sleep 0.2 # exec of the chain not done yet
	fi
	if [ "$(readlink "/proc/$pid/ns/net")" = "$HOST_NET" ]; then
		fail "node $n's init (pid $pid) is not in its namespace"
		exit 1
	fi
	echo "$pid" >"$REG/$n.pid"
}

# nx NODE CMD...: a command inside the node (its network, mount and UTS namespaces).
nx() {
	local n=$1
	shift
	nsenter -t "$(cat "$REG/$n.pid")" -n -m -u -- "$@"
}

other() { if [ "$1" = n1 ]; then echo n2; else echo n1; fi; }
addr_of() { if [ "$1" = n1 ]; then echo 1; else echo 2; fi; }

# --- observations --------------------------------------------------------------------------
vip_on() { ip -n "$P-$1" -o addr show dev eth0 2>/dev/null | grep -q " $VIP/"; }
rules_on() { ns "$1" nft list table inet portcullis >/dev/null 2>&1; }
client_ok() {
	local got
	got=$(ns cl curl -s --connect-timeout 0.3 --max-time 0.6 "http://$VIP/")
	[ "$got" = b1 ] || [ "$got" = b2 ]
}
mon() { nx "$1" crm_mon -1 2>/dev/null; }
# Both instances running, $1 promoted and holding the VIPs, traffic flowing.
steady() {
	local s
	s=$(mon "$1") || return 1
	echo "$s" | grep -q "Promoted: \[ $1 \]" &&
		echo "$s" | grep -q "Unpromoted: \[ $(other "$1") \]" &&
		vip_on "$1" && ! vip_on "$(other "$1")" && rules_on "$1" && client_ok
}
status_of() { sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\).*/\1/p" "$TMP/$1/var-lib-portcullis/status.json" 2>/dev/null; }
admin_failing_on() { [ "$(status_of "$1" consecutive_failures)" -ge 1 ] 2>/dev/null; }

# measure NAME OLD NEW T0 [crashed]: waits for the VIP and the rules on NEW and a client
# connection through the VIP; records the times since T0. A crashed OLD keeps its addresses
# in its (isolated, dead) namespace, so only a live OLD must have released the VIP.
measure() {
	local name=$1 old=$2 new=$3 t0=$4 crashed=${5:-} t_vip="" t_rules="" t_ok="" t now deadline promote_ms
	deadline=$((t0 + 90000))
	local plog=$TMP/$new/var-log-pacemaker/pacemaker.log before
	before=$(grep -c "portcullis promoted: export applied" "$plog")
	while now=$(now_ms) && [ "$now" -lt "$deadline" ]; do
		t=$((now - t0))
		[ -z "$t_vip" ] && vip_on "$new" && t_vip=$t
		[ -z "$t_rules" ] && rules_on "$new" && t_rules=$t
		if [ -n "$t_vip" ] && { [ -n "$crashed" ] || ! vip_on "$old"; } && client_ok; then
			t_ok=$(($(now_ms) - t0))
			# The rules may have come while the probe waited for its answer.
			[ -n "$t_rules" ] || t_rules=$t_ok
			break
		fi
		sleep 0.05
	done
	if [ -z "$t_ok" ]; then
		fail "$name: no traffic through $VIP via $new within 90 s (VIP ${t_vip:-never}, rules ${t_rules:-never} ms)"
		return 1
	fi
	# Traffic flows as soon as the rules are in; the agent logs a moment later.
	wait_until 3 test "$(grep -c "portcullis promoted: export applied" "$plog")" -gt "$before"
	promote_ms=$(sed -n 's/.*INFO: portcullis promoted: export applied in \([0-9]*\) ms.*/\1/p' "$plog" | tail -n 1)
	t_detect=$(detected "$old" "$t0" "$crashed")
	pass "$name: traffic through $VIP via $new after $(fmt "$t_ok") s"
	RESULTS+=("$(printf '%-44s %8s %8s %8s %8s %8s %8s' "$name" "$(fmt "$t_detect")" "$(fmt "$t_vip")" \
		"$(fmt "$t_rules")" "$(fmt "$t_ok")" "$(fmt $((t_ok - ${t_detect:-0})))" "${promote_ms:--}")")
	if [ -n "$crashed" ]; then
		expect "$name: $old is isolated" "" "$(node_pids "$old")"
	elif vip_on "$old"; then
		fail "$name: VIP still on $old"
	else
		pass "$name: VIP left $old"
	fi
}
# When the cluster knew of the fault, ms after T0: the fence agent's confirmation for a crash,
# the failed monitor for a daemon kill, at once for an administrative standby.
detected() {
	local old=$1 t0=$2 crashed=$3 t line
	if [ -n "$crashed" ]; then
		t=$(awk -v n="$old" '$2 == n { t = $1 } END { print t }' "$REG/fenced.log")
		[ -n "$t" ] && echo $((t / 1000000 - t0))
	elif line=$(grep "Result of monitor operation for portcullis on $old: not running" \
		"$TMP/$old/var-log-pacemaker/pacemaker.log" | tail -n 1) && [ -n "$line" ]; then
		t=$(date -d "$(echo "$line" | cut -d' ' -f1-3)" +%s%3N)
		[ "$t" -ge "$t0" ] && echo $((t - t0))
	else
		echo 0
	fi
}
fmt() { if [ -z "$1" ]; then printf -- -; else printf '%d.%02d' $(($1 / 1000)) $((($1 % 1000) / 10)); fi; }

# --- start ---------------------------------------------------------------------------------
# start_cluster: boots n1 and n2, loads the shipped cluster.crm (test addresses) plus the
# test fence device, then the crm files in $EXTRA_CRM, and waits for a promoted node with the
# VIPs and traffic: sets $active. Exits the suite on failure.
start_cluster() {
	say "== setup"
	install_agent
	install -m 0755 "$REPO/tests/pacemaker/fence_netns" "$FENCE"
	placeholder file /usr/bin/portcullis
	for dir in /etc/portcullis /var/lib/portcullis /var/log/portcullis /var/log/corosync; do placeholder dir "$dir"; done
	mkdir -p "$REG"
	corosync-keygen -l -k "$TMP/authkey" >/dev/null 2>&1 || { fail "corosync-keygen"; exit 1; }
	network
	servers
	prepare_node n1
	prepare_node n2

	# The shipped configuration, with the test's addresses, plus the test's fence device.
	sed -e "s/ip=192\.0\.2\.10 /ip=$VIP /" -e "s/ip=10\.10\.0\.1 /ip=$GWVIP /" \
		"$REPO/pacemaker/cluster.crm" >"$TMP/cluster.crm"
	if [ "$(diff "$REPO/pacemaker/cluster.crm" "$TMP/cluster.crm" | grep -c '^>')" = 2 ]; then
		pass "shipped cluster.crm used with two addresses substituted"
	else
		fail "substituting the addresses in cluster.crm changed $(diff "$REPO/pacemaker/cluster.crm" "$TMP/cluster.crm" | grep -c '^>') lines, expected 2"
	fi
	cat >"$TMP/fence.crm" <<-EOF
	primitive fence-netns stonith:fence_netns \
		params registry=$REG pcmk_host_list="n1 n2" \
		op monitor interval=60s
	EOF
	cat "$TMP/fence.crm" "$TMP/cluster.crm" >"$TMP/load.crm"

	t0=$(now_ms)
	boot_node n1 1
	boot_node n2 2
	if wait_until 60 sh -c "nsenter -t $(cat "$REG/n1.pid") -n -m -u -- crm_mon -1 2>/dev/null | grep -q 'Online: \[ n1 n2 \]'"; then
		pass "cluster of n1 and n2 up in $(fmt $(($(now_ms) - t0))) s"
	else
		fail "cluster did not form within 60 s"
		mon n1 >&2
		exit 1
	fi
	if nx n1 crm configure load update "$TMP/load.crm" >"$TMP/load.out" 2>&1; then
		pass "configuration loaded (crm configure load update)"
	else
		fail "crm configure load update: $(cat "$TMP/load.out")"
		exit 1
	fi
	# Additions after the base, as an operator loads them (one may replace a base constraint).
	for f in ${EXTRA_CRM:-}; do
		if nx n1 crm configure load update "$f" >"$TMP/load.out" 2>&1; then
			pass "$(basename "$f") loaded on top"
		else
			fail "crm configure load update $(basename "$f"): $(cat "$TMP/load.out")"
			exit 1
		fi
	done
	active=""
	deadline=$(($(now_ms) + 60000))
	while [ -z "$active" ] && [ "$(now_ms)" -lt "$deadline" ]; do
		for n in n1 n2; do steady "$n" && active=$n; done
		[ -n "$active" ] || sleep 0.2
	done
	if [ -z "$active" ]; then
		fail "portcullis not promoted with VIPs and traffic within 60 s"
		mon n1 >&2
		exit 1
	fi
	pass "resources up in $(fmt $(($(now_ms) - t0))) s: $active promoted, traffic flows through $VIP"
}
