# Sourced by guest.sh: stateful failover of the ipvs backend (issue 20). Two directors, each
# a network namespace with its own IPVS, each running `portcullis run` with the same [sync]
# link; the active one runs the IPVS master sync thread, the standby the backup. A client
# connection through the VIP on director A must be listed on B (synchronised) and go on
# echoing after the VIP moves to B — without sync, B answers its next segment with a RST.
#
#   client c (10.40.0.2 on lo) ==ca== dA ==ra== real server r (10.60.0.10 on lo)
#                              ==cb== dB ==rb==
#   dA ==fsync0== dB  (10.70.0.1 / 10.70.0.2; not `sync0`: the client checks leave a dummy
#   of that name in the guest, and creating the veth pair then fails with "File exists")
#
# Both directors route to both ends all the time; a failover moves the VIP (an address on
# the director's client side) and switches the client's and the real server's routes to the
# other director, which is what a VIP move on a shared segment does to their ARP caches.

vip=10.50.0.100

failover_topology() {
	local d i=1
	for n in fc fr fA fB; do /sbin/ip netns add "$n"; done
	for n in fc fr fA fB; do ns "$n" /sbin/ip link set lo up; done
	ns fc /sbin/ip addr add 10.40.0.2/32 dev lo
	ns fr /sbin/ip addr add 10.60.0.10/32 dev lo
	for d in A B; do
		# client side: c$d in fc, eth0 in the director; server side: r$d in fr, eth1
		/sbin/ip link add "c$d" netns fc type veth peer name eth0 netns "f$d"
		/sbin/ip link add "r$d" netns fr type veth peer name eth1 netns "f$d"
		ns "f$d" /sbin/ip addr add "10.5$i.0.1/24" dev eth0
		ns fc /sbin/ip addr add "10.5$i.0.2/24" dev "c$d"
		ns "f$d" /sbin/ip addr add "10.6$i.0.1/24" dev eth1
		ns fr /sbin/ip addr add "10.6$i.0.2/24" dev "r$d"
		for l in eth0 eth1; do ns "f$d" /sbin/ip link set "$l" up; done
		ns fc /sbin/ip link set "c$d" up
		ns fr /sbin/ip link set "r$d" up
		ns "f$d" /sbin/ip route add 10.40.0.2/32 via "10.5$i.0.2"
		ns "f$d" /sbin/ip route add 10.60.0.10/32 via "10.6$i.0.2"
		ns "f$d" sysctl -qw net.ipv4.ip_forward=1
		# IPVS-forwarded flows get conntrack entries, so the table's ct state rules see them.
		ns "f$d" sysctl -qw net.ipv4.vs.conntrack=1
		i=$((i + 1))
	done
	/sbin/ip link add fsync0 netns fA type veth peer name fsync0 netns fB
	ns fA /sbin/ip addr add 10.70.0.1/24 dev fsync0
	ns fB /sbin/ip addr add 10.70.0.2/24 dev fsync0
	for d in A B; do ns "f$d" /sbin/ip link set fsync0 multicast on up; done
	# A owns the VIP; the ends route through A.
	ns fA /sbin/ip addr add "$vip/32" dev eth0
	ns fc /sbin/ip route add "$vip/32" via 10.51.0.1 src 10.40.0.2
	ns fr /sbin/ip route add default via 10.61.0.1 src 10.60.0.10
	# The real server: an echo service, one process per connection.
	ns fr busybox nc -ll -p 8080 -e /bin/cat &
	mkdir -p /tmp/fsrc
	cat >/tmp/fsrc/export.csv <<-'CSV'
		# portcullis-export 1.0
		service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence
		echo,echo.r.1,tcp,10.50.0.100,7,,10.60.0.10,8080,1,rr,nat,300
	CSV
	for d in A B; do
		local me=1 peer=2 role=active
		[ "$d" = B ] && me=2 peer=1 role=standby
		cat >"/tmp/f$d.toml" <<-TOML
			source = "file:///tmp/fsrc/export.csv"
			backend = "ipvs"
			state_dir = "/tmp/fstate$d"
			interval = "1s"
			role = "$role"
			[sync]
			interface = "fsync0"
			local_address = "10.70.0.$me"
			peer_address = "10.70.0.$peer"
			ipvs_sync_id = 9
		TOML
		ns "f$d" "$pc" run --config "/tmp/f$d.toml" >"/tmp/f$d.log" 2>&1 &
	done
	# Until A forwards and both sync threads run.
	for _ in $(seq 1 40); do
		ns fA ipvsadm -Ln | grep -q 10.60.0.10:8080 &&
			ns fA ipvsadm -L --daemon | grep -q 'master sync daemon' &&
			ns fB ipvsadm -L --daemon | grep -q 'backup sync daemon' && break
		sleep 0.5
	done
	ns fA ipvsadm -Ln
	ns fA ipvsadm -L --daemon
	ns fB ipvsadm -L --daemon
	ns fA ipvsadm -Ln | grep -q 10.60.0.10:8080 || { cat /tmp/fA.log; return 1; }
	ns fA ipvsadm -L --daemon | grep -q 'master sync daemon (mcast=fsync0, syncid=9,'
	ns fB ipvsadm -L --daemon | grep -q 'backup sync daemon (mcast=fsync0, syncid=9,'
}

# A client that holds one connection and sends a numbered line every 200 ms, logging each
# echo; it stops at the first missing echo (a RST or 3 s of silence) or when told to.
echo_client() {
	ns fc bash -c '
		exec 3<>/dev/tcp/'"$vip"'/7 || exit 1
		for i in $(seq 1 1000); do
			[ -e /tmp/fstop ] && exit 0
			echo "line $i" >&3 || { echo "send $i failed"; exit 1; }
			read -r -t 3 got <&3 || { echo "no echo for line $i"; exit 1; }
			echo "$got"
			sleep 0.2
		done' >/tmp/fclient.log 2>&1
}

connection_synced_then_survives_failover() {
	rm -f /tmp/fstop
	echo_client &
	local client=$!
	sleep 3
	grep -q 'line 5' /tmp/fclient.log || {
		echo "no echo through A:"; cat /tmp/fclient.log; ns fA ipvsadm -Lnc; ns fA ipvsadm -Ln
		ns fc bash -c 'echo hi | timeout 3 busybox nc 10.50.0.100 7' || true
		ns fr bash -c 'echo direct | timeout 3 busybox nc 127.0.0.1 8080' || true
		return 1
	}
	echo "before: $(tail -n1 /tmp/fclient.log)"
	# The connection is on B before anything moves.
	local listed=""
	for _ in $(seq 1 20); do
		listed="$(ns fB ipvsadm -Lnc | grep '10.40.0.2:' || true)"
		[ "$(echo "$listed" | grep -c .)" -ge 2 ] && break
		sleep 0.5
	done
	echo "on B: $listed"
	[ -n "$listed" ] || { echo "B never heard of the connection"; ns fA ipvsadm -Lnc; return 1; }
	# The service is persistent: its client template (port 0) is synchronised too.
	echo "$listed" | grep -qE ' 10\.40\.0\.2:0 +10\.50\.0\.100:7 ' || { echo "no persistence template on B"; return 1; }
	echo "$listed" | grep -qE 'ESTABLISHED +10\.40\.0\.2:[1-9]' || { echo "no established entry on B"; return 1; }
	# Fail over in the cluster's order: demote A (its rules stay), promote B and wait for its
	# service (IPVS hooks into netfilter only while a service exists: until then a segment
	# for the VIP meets the local stack and a RST), then move the VIP and the routes.
	local before t0=$EPOCHREALTIME
	before="$(wc -l </tmp/fclient.log)"
	"$pc" demote --state-dir /tmp/fstateA
	"$pc" promote --state-dir /tmp/fstateB
	for _ in $(seq 1 20); do
		ns fB ipvsadm -Ln | grep -q 10.60.0.10:8080 && break
		sleep 0.5
	done
	ns fA /sbin/ip addr del "$vip/32" dev eth0
	ns fB /sbin/ip addr add "$vip/32" dev eth0
	ns fc /sbin/ip route replace "$vip/32" via 10.52.0.1 src 10.40.0.2
	ns fr /sbin/ip route replace default via 10.62.0.1 src 10.60.0.10
	# Ten more echoes through B.
	for _ in $(seq 1 40); do
		[ "$(wc -l </tmp/fclient.log)" -ge $((before + 10)) ] && break
		kill -0 "$client" 2>/dev/null || break
		sleep 0.5
	done
	: >/tmp/fstop
	local rc=0
	wait "$client" || rc=$?
	tail -n 3 /tmp/fclient.log
	[ "$rc" = 0 ] || {
		echo "the client's connection broke (exit $rc)"
		ns fB ipvsadm -Lnc; ns fB ipvsadm -Ln; ns fB nft list ruleset | head -80; cat /tmp/fB.log | tail -20
		return 1
	}
	[ "$(wc -l </tmp/fclient.log)" -ge $((before + 10)) ] || { echo "echo stalled after the move"; return 1; }
	echo "connections kept: 1/1 ($(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }") s for 10 echoes)"
	ns fB ipvsadm -L --daemon | grep -q 'master sync daemon (mcast=fsync0, syncid=9,'
	ns fA ipvsadm -L --daemon | grep -q 'backup sync daemon (mcast=fsync0, syncid=9,'
}

# `portcullis status` on each director reports its IPVS sync thread (after the failover: B
# the master, A the backup) and the connections in its table, the synchronised one too.
status_shows_the_sync_threads() {
	local d want out
	for d in A B; do
		want=backup
		[ "$d" = B ] && want=master
		out="$(ns "f$d" "$pc" status --state-dir "/tmp/fstate$d" --config "/tmp/f$d.toml")"
		echo "$out" | grep '^sync'
		echo "$out" | grep -q "^sync:          $want (IPVS sync thread) over fsync0, sync id 9" || return 1
		echo "$out" | grep -q "^sync threads:  $want on fsync0 (sync id 9)" || return 1
		echo "$out" | grep -qE '^sync table:    [1-9][0-9]* connections in IPVS' || return 1
	done
}

failover_cleanup() {
	pkill -f 'run --config /tmp/f[AB].toml' || true
	pkill -f 'nc -ll -p 8080' || true
	for n in fc fr fA fB; do /sbin/ip netns del "$n" 2>/dev/null || true; done
}

export vip
export -f failover_topology echo_client connection_synced_then_survives_failover \
	status_shows_the_sync_threads failover_cleanup
check ipvs-sync-topology-two-directors failover_topology
check ipvs-sync-connection-survives-failover connection_synced_then_survives_failover
check ipvs-sync-status-shows-the-threads status_shows_the_sync_threads
failover_cleanup >/dev/null 2>&1
