# Shared by the Pacemaker suites (sourced, not run): pass/fail bookkeeping, the CI rule
# (missing root or packages fail under CI=true, never skip), and where things are.
# shellcheck shell=bash

PASSED=0
FAILED=0
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PORTCULLIS=${PORTCULLIS:-${CARGO_TARGET_DIR:-$REPO/target}/debug/portcullis}
AGENT_SRC=$REPO/pacemaker/portcullis
AGENT=/usr/lib/ocf/resource.d/portcullis/portcullis
export OCF_ROOT=/usr/lib/ocf

say() { printf '%s\n' "$*" >&2; }
pass() {
	PASSED=$((PASSED + 1))
	say "  ok   $*"
}
fail() {
	FAILED=$((FAILED + 1))
	say "  FAIL $*"
}

# expect NAME WANTED ACTUAL
expect() {
	if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: expected $2, got $3"; fi
}

summary() {
	say "$PASSED passed, $FAILED failed"
	[ "$FAILED" = 0 ]
}

# Prerequisites: root and the packages scripts/test installs. Outside CI a missing one skips
# the suite with a message; under CI=true it fails it.
require() {
	local problem=""
	if [ "$(id -u)" != 0 ]; then
		problem="needs root (network namespaces, nftables, Pacemaker)"
	else
		for tool in "$@"; do
			command -v "$tool" >/dev/null || problem="${problem}missing $tool; "
		done
		if [ "${NEED_BINARY:-1}" = 1 ] && [ ! -x "$PORTCULLIS" ]; then
			problem="${problem}no binary at $PORTCULLIS (cargo build first); "
		fi
	fi
	[ -z "$problem" ] && return 0
	if [ "${CI:-}" = true ]; then
		say "FAIL: $(basename "$0") $problem (scripts/test installs the packages; CI must run this)"
		exit 1
	fi
	say "SKIPPED: $(basename "$0") $problem"
	exit 0
}

install_agent() {
	install -D -m 0755 "$AGENT_SRC" "$AGENT"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# wait_until TIMEOUT_S COMMAND...: polls every 50 ms; 0 once COMMAND succeeds.
wait_until() {
	local deadline=$(($(now_ms) + $1 * 1000))
	shift
	while [ "$(now_ms)" -lt "$deadline" ]; do
		"$@" 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}
