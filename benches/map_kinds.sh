#!/usr/bin/env bash
# Which nftables map kind suits a balancing table whose entries change often: load N elements
# (N/64 frontends of 64 buckets each), then delete and re-add the 40 buckets of one frontend,
# in a map with `flags interval` (the kernel's pipapo backend; one aligned range per element)
# and in an exact-match map (hash backend). Root; runs in a throwaway network namespace.
# Evidence for the layout discussed in docs/benchmarks.md ("Worst case"); not part of
# benches/run.   Usage: sudo benches/map_kinds.sh [N]
set -euo pipefail
n="${1:-200000}"
ns="pc-mapkinds-$$"
work="$(mktemp -d)"
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"' EXIT

gen() { # KIND: the table with N elements, in statements of 500
	awk -v n="$n" -v kind="$1" 'BEGIN {
		flags = kind == "interval" ? "flags interval; " : ""
		print "table inet t {"
		print "  map m { typeof ip daddr . meta l4proto . th dport . numgen random mod 64 : ip daddr . th dport; " flags "}"
		print "}"
		for (i = 0; i < n; i++) {
			if (i % 500 == 0) printf "%sadd element inet t m { ", (i ? " }\n" : "")
			else printf ", "
			svc = int(i / 64); b = i % 64
			key = kind == "interval" ? sprintf("%d-%d", b * 1024, b * 1024 + 1023) : b
			printf "198.%d.%d.%d . tcp . 80 . %s : 10.0.%d.%d . 8080", 18 + int(svc / 65536), int(svc / 256) % 256, svc % 256, key, b, svc % 250 + 1
		}
		print " }"
	}'
}
change() { # KIND: delete and re-add (to another server) 40 buckets of the first frontend
	awk -v kind="$1" 'BEGIN {
		for (b = 0; b < 40; b++) keys[b] = "198.18.0.0 . tcp . 80 . " (kind == "interval" ? sprintf("%d-%d", b * 1024, b * 1024 + 1023) : b)
		printf "delete element inet t m { "; for (b = 0; b < 40; b++) printf "%s%s", (b ? ", " : ""), keys[b]; print " }"
		printf "add element inet t m { "; for (b = 0; b < 40; b++) printf "%s%s : 10.9.9.9 . 8080", (b ? ", " : ""), keys[b]; print " }"
	}'
}
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

echo "| map kind, $n elements | load | delete and re-add 40 elements |"
echo "|---|---:|---:|"
for kind in interval exact; do
	ip netns add "$ns"
	gen "$kind" >"$work/load.nft"
	change "$kind" >"$work/change.nft"
	t=$(date +%s%N); ip netns exec "$ns" nft -f "$work/load.nft"; load=$(ms_since "$t")
	t=$(date +%s%N); ip netns exec "$ns" nft -f "$work/change.nft"; chg=$(ms_since "$t")
	echo "| $kind | $load ms | $chg ms |"
	ip netns del "$ns"
done
