# Sourced by guest.sh: the ipvs backend honours real-server health checks (issue 17) on a real
# kernel. `portcullis run --backend ipvs` with [health] (tcp, interval 1 s, fall 2, rise 2)
# and an export of two real servers, each a busybox httpd in its own namespace:
#
#   client hc (10.21.0.2) ==hgc== guest (VIP 10.29.0.10 on hvip0) ==hg1== hb1 (10.22.0.2)
#                                                                  ==hg2== hb2 (10.23.0.2)
#
# Killing hb1's httpd must give it weight 0 in `ipvsadm -Ln` within a few seconds, and new
# connections must reach hb2 only; restarting it must bring its weight back.

health_vm() {
	local i=1 n pid seen="" got
	sysctl -qw net.ipv4.ip_forward=1
	# IPVS-forwarded flows get conntrack entries, so the table's ct state rules see them.
	sysctl -qw net.ipv4.vs.conntrack=1
	/sbin/ip link add hvip0 type dummy
	/sbin/ip link set hvip0 up
	/sbin/ip addr add 10.29.0.10/32 dev hvip0
	for n in hc hb1 hb2; do
		/sbin/ip netns add "$n"
		/sbin/ip link add "hg$i" type veth peer name eth0 netns "$n"
		/sbin/ip addr add "10.2$i.0.1/24" dev "hg$i"
		/sbin/ip link set "hg$i" up
		ns "$n" /sbin/ip addr add "10.2$i.0.2/24" dev eth0
		ns "$n" /sbin/ip link set eth0 up
		ns "$n" /sbin/ip link set lo up
		ns "$n" /sbin/ip route add default via "10.2$i.0.1"
		i=$((i + 1))
	done
	for n in hb1 hb2; do
		mkdir -p "/srv/$n"
		echo "$n" >"/srv/$n/index.html"
	done
	# -f: in the foreground, so that each server is one process; `ip netns exec` execs it, so
	# $! is httpd itself (scanning /proc for it takes seconds under TCG).
	/sbin/ip netns exec hb1 busybox httpd -f -p 8080 -h /srv/hb1 &
	local hb1_pid=$!
	/sbin/ip netns exec hb2 busybox httpd -f -p 8080 -h /srv/hb2 &
	rm -rf /tmp/hstate /tmp/hsrc
	mkdir -p /tmp/hsrc
	cat >/tmp/hsrc/export.csv <<'CSV'
# portcullis-export 1.1
service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence,check
hweb,hweb.b1,tcp,10.29.0.10,80,,10.22.0.2,8080,1,rr,nat,,tcp
hweb,hweb.b2,tcp,10.29.0.10,80,,10.23.0.2,8080,1,rr,nat,,tcp
CSV
	"$pc" run --source file:///tmp/hsrc/export.csv --backend ipvs --state-dir /tmp/hstate \
		--interval 1s --health-interval 1s --health-timeout 500ms --health-fall 2 \
		--health-rise 2 >/tmp/hdaemon.log 2>&1 &
	pid=$!
	hfetch() { ns hc timeout 5 busybox wget -qO- http://10.29.0.10:80/ || echo "(no answer)"; }
	hweight() { # RIP: its weight in the kernel's table
		ipvsadm -Ln -t 10.29.0.10:80 2>/dev/null | awk -v r="$1:8080" '$2 == r { print $4 }'
	}
	hwait_weight() { # RIP WEIGHT [T0]: until the kernel has it (10 s at most); prints the wait
		local t0=${3:-$EPOCHREALTIME}
		for _ in $(seq 1 40); do
			if [ "$(hweight "$1")" = "$2" ]; then
				echo "$1 weight $2 after $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }") s"
				return 0
			fi
			sleep 0.25
		done
		echo "$1 weight is '$(hweight "$1")', not $2, after 10 s"
		ipvsadm -Ln -t 10.29.0.10:80
		cat /tmp/hdaemon.log
		return 1
	}
	hwait_weight 10.22.0.2 1
	hwait_weight 10.23.0.2 1
	for _ in 1 2 3 4; do seen="$seen $(hfetch)"; done
	echo "both up:$seen"
	[[ "$seen" == *hb1* && "$seen" == *hb2* ]]
	local killed=$EPOCHREALTIME
	kill "$hb1_pid"
	hwait_weight 10.22.0.2 0 "$killed"
	seen=""
	for _ in 1 2 3 4; do
		got="$(hfetch)"
		seen="$seen $got"
		[ "$got" = hb2 ] || { echo "a new connection got '$got' with hb1 down:$seen"; return 1; }
	done
	echo "with hb1 down:$seen"
	local restarted=$EPOCHREALTIME
	/sbin/ip netns exec hb1 busybox httpd -f -p 8080 -h /srv/hb1 &
	hwait_weight 10.22.0.2 1 "$restarted"
	seen=""
	for _ in 1 2 3 4; do seen="$seen $(hfetch)"; done
	echo "hb1 back:$seen"
	[[ "$seen" == *hb1* && "$seen" == *hb2* ]]
	kill -TERM "$pid"
	wait "$pid" || true
}
hkill_httpd() { # hb1|hb2|hb: the httpd of that server (or both); the guest has no pkill
	local p
	for p in /proc/[0-9]*; do
		if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q "^busybox httpd -f -p 8080 -h /srv/$1"; then
			kill "${p#/proc/}" 2>/dev/null || true
		fi
	done
}
health_vm_cleanup() {
	"$pc" flush --state-dir /tmp/hstate >/dev/null 2>&1 || true
	hkill_httpd hb
	for n in hc hb1 hb2; do /sbin/ip netns del "$n" 2>/dev/null || true; done
	/sbin/ip link del hvip0 2>/dev/null || true
	true
}
export -f health_vm health_vm_cleanup hkill_httpd
check ipvs-health-check-drains-a-dead-real-server-and-restores-it health_vm
health_vm_cleanup
