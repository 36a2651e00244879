#!/bin/bash
# A private systemd system manager for agent/tests/systemd.rs: PID 1 of new pid, mount and
# cgroup namespaces, so it runs on hosts (and CI containers) whose PID 1 is not systemd and
# touches nothing of the host's. Usage: systemd-manager.sh DIR (DIR: empty scratch directory).
#
# - cgroups: the manager gets a cgroup v2 subtree of its own (DIR/cgroup says which; the test
#   removes it afterwards), mounted as the whole hierarchy in its cgroup namespace, and runs
#   in unified mode (systemd reads its "kernel command line" from its own argv in a
#   container), so it never touches the host's v1 controllers;
# - units: only DIR/units (empty targets standing in for sysinit/basic/shutdown) and
#   /run/systemd/system (a private tmpfs /run): nothing of the host's units is started;
# - its socket is in that /run: reach it with `nsenter -t <its pid> -m -p systemctl …`.
set -euo pipefail
dir=$1
mkdir -p "$dir/units"
for u in sysinit.target basic.target shutdown.target minimal.target; do
	printf '[Unit]\nDescription=%s (test)\n' "$u" >"$dir/units/$u"
done
printf '[Unit]\nDescription=system slice (test)\n' >"$dir/units/system.slice"
if [ -d /sys/fs/cgroup/unified ]; then v2=/sys/fs/cgroup/unified; else v2=/sys/fs/cgroup; fi
cg=$v2/portcullis-test-systemd-$$
mkdir "$cg"
echo $$ >"$cg/cgroup.procs"
echo "$cg" >"$dir/cgroup"
# The inner script is expanded by the inner shell (single quotes on purpose).
# shellcheck disable=SC2016
exec unshare --pid --fork --mount --mount-proc --cgroup --propagation private \
	env DIR="$dir" bash -c '
	set -e
	mount -t tmpfs tmpfs /run
	umount -R /sys/fs/cgroup
	mount -t cgroup2 cgroup2 /sys/fs/cgroup
	exec env -i container=portcullis-test SYSTEMD_UNIT_PATH="$DIR/units:/run/systemd/system" \
		/lib/systemd/systemd --system --unit=minimal.target --log-target=console \
		systemd.unified_cgroup_hierarchy=1
'
