#!/usr/bin/env bash
# IPVS load costs in the guest, UNDER EMULATION (qemu TCG, 1 vCPU): portcullis over netlink
# against ipvsadm in the same run. Each measurement starts in a fresh network namespace
# (IPVS tables are per namespace, and a cleared table loads slower than a fresh one).
# Run with: PORTCULLIS_VM_MODE=bench [BENCH_REPS=3] cargo test --release --test ipvs_vm
set -uo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
cd /t
pc=/t/portcullis
reps="$(cat /t/bench_reps 2>/dev/null || echo 1)"

now() { echo "$EPOCHREALTIME"; }
since() { awk "BEGIN { printf \"%.3f\", $(now) - $1 }"; }
fresh() { /sbin/ip netns del bench 2>/dev/null; /sbin/ip netns add bench && /sbin/ip netns exec bench /sbin/ip link set lo up; }
inns() { /sbin/ip netns exec bench "$@"; }

gen() { # N KIND > CSV: N services with 2 real servers each
	awk -v n="$1" -v kind="$2" 'BEGIN {
		print "# portcullis-export 1.0"
		print "service,instance,proto,vip,vport,fwmark,rip,rport,weight,scheduler,method,persistence"
		for (i = 0; i < n; i++) {
			vip = sprintf("198.18.%d.%d", int(i / 200), i % 200 + 1)
			for (j = 0; j < 2; j++) {
				rip = sprintf("10.%d.%d.%d", int(i / 100), i % 100, j + 1)
				if (kind == "tcp")
					printf "s%d,s%d.h%d.1,tcp,%s,80,,%s,8080,100,wlc,nat,\n", i, i, j, vip, rip
				else
					printf "s%d,s%d.h%d.1,tcp,%s,20000-20009,%d,%s,,100,wlc,nat,\n", i, i, j, vip, i + 1, rip
			}
		}
	}'
}

declare -A r
for spec in "1000 tcp" "10000 tcp" "10000 fwmark"; do
	set -- $spec
	n=$1 kind=$2 key="$1 $2"
	csv=/tmp/bench-$n-$kind.csv
	gen "$n" "$kind" >"$csv"
	# The same export with the first real server's weight changed.
	awk -F, 'NR == 3 { $9 = 7 } { print }' OFS=, "$csv" >"$csv.changed"
	"$pc" render --format ipvsadm --source "$csv" >"$csv.ipvsadm" || { echo "bench FAIL render"; exit 1; }
	first_svc="$(sed -n 1p "$csv.ipvsadm" | awk '{print $2, $3}')"
	first_rs="$(sed -n 2p "$csv.ipvsadm" | awk '{print $5}')"
	for rep in $(seq 1 "$reps"); do
		fresh
		t=$(now); inns ipvsadm -R <"$csv.ipvsadm"; r[$key,ipvsadm_R]+="$(since "$t") "
		t=$(now); inns ipvsadm -e $first_svc -r "$first_rs" -m -w 7; r[$key,ipvsadm_e]+="$(since "$t") "
		t=$(now); inns ipvsadm-save -n >/dev/null; r[$key,ipvsadm_save]+="$(since "$t") "
		fresh
		out="$(PORTCULLIS_VM_BENCH="$csv" inns /t/ipvs_vm)" || { echo "$out"; echo "bench FAIL netlink"; exit 1; }
		r[$key,pc_cold]+="$(awk '/^bench cold/ {print $3}' <<<"$out") "
		r[$key,pc_weight]+="$(awk '/^bench one_weight/ {print $3}' <<<"$out") "
		r[$key,pc_dump]+="$(awk '/^bench dump/ {print $3}' <<<"$out") "
		fresh
		rm -rf /tmp/bench-state
		t=$(now); inns "$pc" apply --once --backend ipvs --state-dir /tmp/bench-state --source "$csv" >/dev/null ||
			{ echo "bench FAIL apply"; exit 1; }
		r[$key,pc_apply]+="$(since "$t") "
		t=$(now); inns "$pc" apply --once --backend ipvs --state-dir /tmp/bench-state --source "$csv.changed" >/dev/null ||
			{ echo "bench FAIL apply changed"; exit 1; }
		r[$key,pc_apply_change]+="$(since "$t") "
	done
	/sbin/ip netns del bench
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
cell() { echo "${r[$1,$2]}" | median; }
ratio() { awk "BEGIN { printf \"%.1fx\", $1 / $2 }"; }
echo
echo "IPVS under emulation (qemu TCG, 1 vCPU), 2 real servers per service, median of $reps run(s), seconds"
printf '| %-58s | %10s | %10s | %10s |\n' "measurement" "1000 tcp" "10000 tcp" "10000 fwmark"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..60})" "------------" "------------" "------------"
row() { printf '| %-58s | %10s | %10s | %10s |\n' "$1" "$(cell "1000 tcp" "$2")" "$(cell "10000 tcp" "$2")" "$(cell "10000 fwmark" "$2")"; }
row "ipvsadm -R < file, cold (baseline)" ipvsadm_R
row "portcullis netlink cold load (IpvsSync, batched)" pc_cold
row "portcullis apply --once --backend ipvs, cold (+nft, dump)" pc_apply
row "one weight: ipvsadm -e (process start included)" ipvsadm_e
row "one weight: portcullis netlink (in-memory view)" pc_weight
row "one weight: portcullis apply --once (dump + nft check)" pc_apply_change
row "full dump: ipvsadm-save -n" ipvsadm_save
row "full dump: portcullis (Balancer::table)" pc_dump
for k in "1000 tcp" "10000 tcp" "10000 fwmark"; do
	echo "ratio $k: ipvsadm -R / portcullis cold = $(ratio "$(cell "$k" ipvsadm_R)" "$(cell "$k" pc_cold)")," \
		"ipvsadm-save / portcullis dump = $(ratio "$(cell "$k" ipvsadm_save)" "$(cell "$k" pc_dump)")"
done
# Headlines for the one-table summary of benches/run (`;`-separated: the serial console may
# expand tabs). Factor: how many times faster portcullis is.
msec() { awk "BEGIN { v = $1 * 1000; if (v >= 100) printf \"%.0f ms\", v; else if (v >= 10) printf \"%.1f ms\", v; else printf \"%.2f ms\", v }"; }
factor() { awk "BEGIN { f = $2 / $1; if (f >= 10) printf \"%.0f×\", f; else printf \"%.2f×\", f }"; }
summary() { # MEASUREMENT KEY OURS BASELINE_NAME BASELINE
	echo "summary;IPVS (under emulation);$1, $2 services;$(msec "$(cell "$2" "$3")");$4;$(msec "$(cell "$2" "$5")");$(factor "$(cell "$2" "$3")" "$(cell "$2" "$5")")"
}
for k in "1000 tcp" "10000 tcp" "10000 fwmark"; do
	summary "cold load" "$k" pc_cold "ipvsadm -R of the same table" ipvsadm_R
	summary "one weight change: apply --once (reads the table back)" "$k" pc_apply_change "seed: reload everything with ipvsadm -R" ipvsadm_R
	summary "one weight change: the daemon's netlink sync" "$k" pc_weight "ipvsadm -e of that one server" ipvsadm_e
done
echo "bench PASS"
