#!/usr/bin/env bash
# Boots Debian's own kernel under qemu (TCG) with a small initramfs and runs the IPVS checks
# inside, because the host kernel has no IPVS. Usage:
#
#   tests/vm/run.sh GUEST_EXE PORTCULLIS_EXE [MODE]
#
# GUEST_EXE is the `ipvs_vm` test binary (it runs the client checks when PORTCULLIS_VM_GUEST
# is set), PORTCULLIS_EXE the gateway binary. MODE is `checks` (default) or `bench`.
# Prints one `NAME PASS|FAIL` line per guest check; exits non-zero on any failure, a missing
# result, or a guest that does not power off in time.
#
# Cached under ${CARGO_TARGET_DIR:-target}/vm (outside git): the kernel package (downloaded
# once with apt-get download), the extracted vmlinux and modules, and the base initramfs.
# Only the payload (binaries, scripts, examples) is rebuilt per run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
guest_exe="$(realpath "$1")"
portcullis_exe="$(realpath "$2")"
mode="${3:-checks}"
cache="${CARGO_TARGET_DIR:-$repo/target}/vm"
mkdir -p "$cache"
cache="$(realpath "$cache")"

log() { printf 'vm: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

need=(qemu-system-x86_64 busybox cpio depmod modprobe ipvsadm nft xz dpkg-deb apt-get bash)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ -x /bin/busybox ] && ldd /bin/busybox >/dev/null 2>&1; then missing+=("busybox-static"); fi
if [ ${#missing[@]} -gt 0 ]; then
	msg="missing tools: ${missing[*]} (scripts/test installs qemu-system-x86 busybox-static cpio kmod ipvsadm nftables xz-utils)"
	# CI must never pass without having run the suite.
	[ "${CI:-}" = true ] && die "$msg"
	log "SKIPPED (not CI): $msg"
	exit 0
fi

# --- the kernel: resolved from the linux-image-amd64 metapackage, downloaded once ----------
resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
kpkg="$(resolve)"
if [ -z "$kpkg" ] && [ "$(id -u)" = 0 ]; then
	apt-get update -qq >/dev/null 2>&1 || true
	kpkg="$(resolve)"
fi
[ -n "$kpkg" ] || die "cannot resolve the package behind linux-image-amd64 (apt-get update?)"
kver="${kpkg#linux-image-}"
kdir="$cache/$kver"
if [ ! -f "$kdir/vmlinux" ]; then
	log "fetching $kpkg (once; cached in $kdir)"
	mkdir -p "$kdir/pkg"
	deb="$(ls "$cache"/"$kpkg"_*.deb 2>/dev/null | head -n1 || true)"
	if [ -z "$deb" ]; then
		(cd "$cache" && apt-get download "$kpkg" >/dev/null 2>&1) || die "apt-get download $kpkg"
		deb="$(ls "$cache"/"$kpkg"_*.deb | head -n1)"
	fi
	dpkg-deb -x "$deb" "$kdir/pkg"
	# The uncompressed ELF boots via PVH in about half the time of the bzImage.
	vmlinuz="$kdir/pkg/boot/vmlinuz-$kver"
	off="$(grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1)"
	[ -n "$off" ] || die "no xz payload in $vmlinuz"
	tail -c +"$((off + 1))" "$vmlinuz" | xz -dc 2>/dev/null > "$kdir/vmlinux.tmp" || true
	head -c 4 "$kdir/vmlinux.tmp" | grep -q 'ELF' || die "could not extract vmlinux"
	mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
fi

# --- the base initramfs: busybox, tools with their libraries, modules ----------------------
modules=(crc32c_generic ip_vs ip_vs_rr ip_vs_wrr ip_vs_wlc ip_vs_lc ip_vs_sh ip_vs_mh
	ip_vs_dh ip_vs_lblc ip_vs_lblcr ip_vs_sed ip_vs_nq nf_tables nfnetlink nf_conntrack
	nf_nat nft_nat nft_chain_nat nft_ct nft_masq nft_redir nft_reject_inet nft_fib_inet
	nft_limit nft_numgen nft_hash nft_objref nft_quota nft_log nft_compat
	nf_conntrack_netlink xt_mark veth dummy)
base_key="$(printf '%s\n' "$kver" "${modules[@]}" | cat - "$here/run.sh" | sha256sum | cut -c1-16)"
base="$cache/base-$base_key.cpio.gz"
if [ ! -f "$base" ]; then
	log "building the base initramfs"
	rm -f "$cache"/base-*.cpio.gz # images of older scripts or kernels
	root="$(mktemp -d "$cache/root.XXXXXX")"
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,var/lib,lib64,usr/bin,usr/sbin}
	cp /bin/busybox "$root/bin/busybox"
	for a in sh mount umount mkdir cat echo sleep poweroff reboot ls ln mknod grep sed awk \
		head tail wc cut sort uniq tr date seq timeout nc wget httpd dmesg diff cmp \
		printf test true false kill ps xargs find tee sync rm cp mv chmod env pkill pidof \
		sysctl; do
		ln -sf busybox "$root/bin/$a"
	done
	copy_bin() { # binary and its shared libraries, at the same paths
		local b="$1"
		mkdir -p "$root$(dirname "$b")"
		cp -L "$b" "$root$b"
		# (scripts have no libraries: ldd fails, nothing to copy)
		{ ldd "$b" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
			mkdir -p "$root$(dirname "$lib")"
			cp -Ln "$lib" "$root$lib" 2>/dev/null || true
		done
	}
	for b in /usr/sbin/ipvsadm /usr/sbin/ipvsadm-save /usr/sbin/nft /usr/bin/bash /sbin/ip \
		/usr/sbin/ip; do
		[ -e "$b" ] || continue
		real="$(readlink -f "$b")"
		[ -e "$root$real" ] || copy_bin "$real"
		if [ "$real" != "$b" ]; then mkdir -p "$root$(dirname "$b")" && ln -sf "$real" "$root$b"; fi
	done
	# libgcc_s for Rust binaries; ld.so at the path binaries ask for.
	for lib in /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib64/ld-linux-x86-64.so.2; do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
	cp /etc/protocols /etc/services "$root/etc/"
	# The daemon's HTTP client loads the system CA store when it is built, even for a
	# file:// source: without one, `portcullis run` fails at start ("builder error").
	if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
		mkdir -p "$root/etc/ssl/certs"
		cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
	fi
	ln -sf /usr/bin/bash "$root/bin/bash"
	# modules with their dependency closure (the package ships no modules.dep)
	mroot="$kdir/pkg"
	[ -f "$mroot/lib/modules/$kver/modules.dep" ] || depmod -b "$mroot" "$kver"
	for m in "${modules[@]}"; do
		modprobe -d "$mroot" -S "$kver" --show-depends "$m" | awk '/^insmod/ {print $2}' ||
			die "module $m not in $kpkg"
	done | sort -u | while read -r ko; do
		rel="${ko#"$mroot"}"
		mkdir -p "$root$(dirname "$rel")"
		cp "$ko" "$root$rel"
	done
	cp "$mroot/lib/modules/$kver/modules.order" "$mroot/lib/modules/$kver/modules.builtin"* \
		"$root/lib/modules/$kver/" 2>/dev/null || true
	depmod -b "$root" "$kver"
	ln -sf /bin/busybox "$root/sbin/modprobe"
	cp "$here/init" "$root/init"
	chmod +x "$root/init"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 > "$base.tmp")
	mv "$base.tmp" "$base"
	rm -rf "$root"
	trap - EXIT
fi

# --- the payload: what changes with every build ------------------------------------------
work="$(mktemp -d "$cache/run.XXXXXX")"
trap 'rm -rf "$work"' EXIT
p="$work/payload"
mkdir -p "$p/t/examples" "$p/lib/x86_64-linux-gnu"
# Debug info is most of a debug build's size; the guest does not need it.
strip_copy() { if command -v strip >/dev/null; then strip -o "$2" "$1"; else cp "$1" "$2"; fi; }
strip_copy "$guest_exe" "$p/t/ipvs_vm"
strip_copy "$portcullis_exe" "$p/t/portcullis"
cp "$here/guest.sh" "$here/failover.sh" "$here/health.sh" "$here/bench.sh" "$here/expected-next-ops.txt" "$p/t/"
cp "$repo"/rules/examples/*.csv "$p/t/examples/"
echo "$mode" > "$p/t/mode"
echo "${BENCH_REPS:-3}" > "$p/t/bench_reps"
# Libraries the Rust binaries need beyond the base image's.
for b in "$guest_exe" "$portcullis_exe"; do
	{ ldd "$b" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
		mkdir -p "$p$(dirname "$lib")"
		cp -Ln "$lib" "$p$lib" 2>/dev/null || true
	done
done
(cd "$p" && find . | cpio -o -H newc --quiet | gzip -1 > "$work/payload.cpio.gz")
cat "$base" "$work/payload.cpio.gz" > "$work/initrd"

# --- boot -----------------------------------------------------------------------------------
serial="$work/serial.log"
limit="${PORTCULLIS_VM_TIMEOUT:-300}"
[ "$mode" = bench ] && limit="${PORTCULLIS_VM_TIMEOUT:-1500}"
memory=512
[ "$mode" = bench ] && memory=1024
log "booting $kver under qemu TCG (limit ${limit}s, mode $mode)"
start=$(date +%s)
rc=0
timeout --kill-after=5 "$limit" qemu-system-x86_64 \
	-accel tcg,thread=multi -cpu max -smp 1 -m "$memory" \
	-kernel "$kdir/vmlinux" -initrd "$work/initrd" \
	-append "console=ttyS0 panic=-1 ${PORTCULLIS_VM_CMDLINE:-quiet loglevel=3} rdinit=/init" \
	-nographic -no-reboot -nodefaults -serial "file:$serial" -display none \
	-net none </dev/null >"$work/qemu.log" 2>&1 || rc=$?
elapsed=$(( $(date +%s) - start ))
sed -e 's/\r$//' "$serial" | grep -av '^$' >&2 || true
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
	die "guest hung: no power-off within ${limit}s"
fi
[ "$rc" = 0 ] || { cat "$work/qemu.log" >&2; die "qemu exited with $rc"; }
tr -d '\r' < "$serial" > "$work/serial.txt"
grep -q '^GUEST-DONE rc=' "$work/serial.txt" || die "the guest did not finish its checks (see the console above)"
fails="$(grep -cE ' FAIL( |$)' "$work/serial.txt" || true)"
passes="$(grep -cE ' PASS( |$)' "$work/serial.txt" || true)"
log "$passes passed, $fails failed, ${elapsed}s wall (boot included)"
grep -q '^GUEST-DONE rc=0$' "$work/serial.txt" || die "guest checks failed"
[ "$fails" = 0 ] || die "guest checks failed"
[ "$passes" -gt 0 ] || die "no guest check ran"
