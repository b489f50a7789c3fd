#!/usr/bin/env bash
# Boots a throw-away QEMU guest running Debian's stock kernel with the soft-RoCE driver (rdma_rxe)
# on a dummy netdev, runs GUEST_SCRIPT inside it and exits with that script's exit code.
#
# usage: run.sh [--timeout SECONDS] [--cache DIR] GUEST_SCRIPT [FILE...]
#
#   GUEST_SCRIPT  shell script run in the guest as `/bin/sh /kvc/<basename>` (cwd /kvc, busybox sh)
#   FILE...       copied to /kvc/ in the guest (mode kept); for every ELF FILE its shared-library
#                 closure (ldd) is copied to the same paths in the guest
#
# Exit status: the guest script's; 124 on timeout; 77 when a needed package is missing and cannot
# be installed; 1 when the guest did not report an exit code (boot or setup failure); 2 on usage.
#
# Environment:
#   KVC_RXE_VM_ACCEL=auto|kvm|tcg  accelerator (default auto: KVM when it works, else TCG)
#   KVC_RXE_VM_CPU=MODEL           QEMU -cpu (default: probed; see README)
#   KVC_RXE_VM_MEM=1G  KVC_RXE_VM_SMP=2
#   KVC_RXE_VM_APPEND=...          extra kernel command line
#   KVC_RXE_VM_KERNEL_PKG=NAME     kernel package (default: what linux-image-amd64 depends on)
#   KVC_RXE_VM_NO_INSTALL=1        never apt-get install missing host packages
#   KVC_RXE_VM_KEEP=1              keep the temporary directory (initramfs, console log)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$here/lib.sh"

usage() {
  echo "usage: $0 [--timeout SECONDS] [--cache DIR] GUEST_SCRIPT [FILE...]" >&2
  exit 2
}

timeout_s=300
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/kvc-rxe-vm"
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --timeout=*) timeout_s=${1#*=}; shift ;;
    --cache) [ $# -ge 2 ] || usage; cache_root=$2; shift 2 ;;
    --cache=*) cache_root=${1#*=}; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) echo "rxe-vm: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || usage
[[ "$timeout_s" =~ ^[1-9][0-9]*$ ]] || { echo "rxe-vm: --timeout wants a positive integer" >&2; exit 2; }
guest_script=$1
shift
files=("$guest_script" "$@")
for f in "${files[@]}"; do
  [ -f "$f" ] || { echo "rxe-vm: no such file: $f" >&2; exit 2; }
done

# Modules the guest loads (their dependencies are added, in load order). dummy backs the netdev;
# rdma_cm/rdma_ucm give librdmacm programs /dev/infiniband/rdma_cm.
wanted_modules=(crc32_generic udp_tunnel ip6_udp_tunnel ib_core ib_uverbs rdma_rxe dummy rdma_cm rdma_ucm)
# Bumped when the cache layout changes; with the module list it decides whether a cache is current.
cache_stamp="format=2 modules=${wanted_modules[*]}"

# ---------------------------------------------------------------------------------------------
# Host tools and files (everything from Debian packages).

find_cmd() { PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" 2>/dev/null || true; }
rxe_provider() { compgen -G '/usr/lib/*/libibverbs/librxe-rdmav*.so' | head -n 1 || true; }
busybox_path() { for p in /usr/bin/busybox /bin/busybox; do [ -x "$p" ] && { echo "$p"; return; }; done; }

# what|package pairs; "what" is a command name, or a path/probe function for files.
check_host() {
  missing_pkgs=()
  missing_what=()
  local c
  for c in qemu-system-x86_64:qemu-system-x86 cpio:cpio gzip:gzip timeout:coreutils \
    apt-get:apt dpkg-deb:dpkg ldd:libc-bin ip:iproute2 rdma:iproute2; do
    if [ -z "$(find_cmd "${c%%:*}")" ]; then
      missing_what+=("${c%%:*}"); missing_pkgs+=("${c#*:}")
    fi
  done
  [ -n "$(busybox_path)" ] || { missing_what+=(/bin/busybox); missing_pkgs+=(busybox-static); }
  [ -n "$(rxe_provider)" ] || { missing_what+=("/usr/lib/*/libibverbs/librxe-rdmav*.so"); missing_pkgs+=(ibverbs-providers); }
  [ -f /etc/libibverbs.d/rxe.driver ] || { missing_what+=(/etc/libibverbs.d/rxe.driver); missing_pkgs+=(ibverbs-providers); }
}

check_host
if [ ${#missing_pkgs[@]} -gt 0 ]; then
  mapfile -t uniq_pkgs < <(printf '%s\n' "${missing_pkgs[@]}" | sort -u)
  if ! rxe_vm_install "${uniq_pkgs[@]}"; then
    rxe_vm_skip "missing ${missing_what[*]} (Debian package(s): ${uniq_pkgs[*]}); cannot install: $RXE_VM_INSTALL_ERROR"
  fi
  check_host
  [ ${#missing_pkgs[@]} -eq 0 ] || rxe_vm_skip "still missing ${missing_what[*]} after installing ${uniq_pkgs[*]}"
fi
qemu=$(find_cmd qemu-system-x86_64)
busybox=$(busybox_path)
provider=$(rxe_provider)
ip_cmd=$(find_cmd ip)
rdma_cmd=$(find_cmd rdma)

t_start=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvc-rxe-vm.XXXXXX")
# shellcheck disable=SC2317  # invoked through the EXIT trap
cleanup() {
  if [ "${KVC_RXE_VM_KEEP:-0}" = 1 ]; then rxe_vm_log "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# Kernel: Debian's linux-image package, fetched with `apt-get download` (not installed) and cached
# per package version: $cache_root/<package>_<version>/{vmlinuz,vmlinux,modules/*.ko,modules.order}.

# Module name -> file inside an extracted kernel tree (names use '_' where file names may use '-').
declare -A mod_file=()
index_modules() {
  local f n
  while IFS= read -r f; do
    n=${f##*/}; n=${n%%.ko*}; n=${n//-/_}
    mod_file[$n]=$f
  done < <(find "$1" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
}
decompress_to() { # SRC DEST: writes the uncompressed module (busybox insmod cannot unpack)
  case "$1" in
    *.ko.xz) xz -dc "$1" >"$2" ;;
    *.ko.zst) zstd -qdc "$1" >"$2" ;;
    *.ko.gz) gzip -dc "$1" >"$2" ;;
    *) cp "$1" "$2" ;;
  esac
}
mod_depends() { # uncompressed .ko -> its "depends=" list, one per line (same as modinfo -F depends)
  tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | tr ',' '\n' | sed '/^$/d'
}

extract_vmlinux() { # BZIMAGE OUT: the ELF inside a bzImage (xz, zstd or gzip payload)
  local magic tool off
  for magic in '\xfd7zXZ\x00:xz' '\x28\xb5\x2f\xfd:zstd' '\x1f\x8b\x08\x00:gzip'; do
    tool=${magic##*:}
    command -v "$tool" >/dev/null 2>&1 || continue
    off=$(LC_ALL=C grep -obUaP "${magic%:*}" "$1" 2>/dev/null | head -n 1 | cut -d: -f1) || true
    [ -n "$off" ] || continue
    # The decompressor complains about the bytes after the payload: judge by the output instead.
    tail -c +$((off + 1)) "$1" | "$tool" -dcq >"$2" 2>/dev/null || true
    [ "$(head -c 4 "$2" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && return 0
  done
  return 1
}

resolve_kernel_pkg() { # sets kpkg/kver; one apt-cache call (~1 s each when apt keeps no pkgcache.bin)
  local dep
  if [ -n "${KVC_RXE_VM_KERNEL_PKG:-}" ]; then
    kpkg=$KVC_RXE_VM_KERNEL_PKG
    kver=$(apt-cache policy "$kpkg" 2>/dev/null | awk '/Candidate:/ { print $2 }')
  else
    # The metapackage pins its image exactly: "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
    dep=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null | sed -n 's/^Depends: //p' | head -n 1)
    kpkg=$(sed -n 's/^\([^ ,|]*\).*/\1/p' <<<"$dep")
    kver=$(sed -n 's/^[^ ,|]* (= \([^)]*\)).*/\1/p' <<<"$dep")
  fi
  [ -n "$kpkg" ] && [ -n "$kver" ] && [ "$kver" != "(none)" ]
}

populate_cache() { # DIR: fills DIR from the kernel package
  local dir=$1 work deb out kroot mdir m d f
  work="$tmp/kernel"
  mkdir -p "$work/deb"
  chmod 755 "$work" "$work/deb" # lets apt's _apt sandbox user write when run as root
  rxe_vm_log "downloading $kpkg=$kver (apt-get download; not installed)"
  if ! out=$(cd "$work/deb" && apt-get download "$kpkg=$kver" 2>&1); then
    rxe_vm_skip "cannot download kernel package $kpkg=$kver: $(printf '%s' "$out" | grep -E '^E:' | head -n 1)"
  fi
  deb=$(compgen -G "$work/deb/*.deb" | head -n 1) || true
  [ -n "$deb" ] || rxe_vm_skip "apt-get download $kpkg=$kver produced no .deb"
  kroot="$work/root"
  dpkg-deb -x "$deb" "$kroot"
  f=$(compgen -G "$kroot/boot/vmlinuz-*" | head -n 1) || true
  [ -n "$f" ] || rxe_vm_skip "$kpkg has no /boot/vmlinuz-*"
  mdir=$(compgen -G "$kroot/lib/modules/*" | head -n 1) || true
  [ -n "$mdir" ] || mdir=$(compgen -G "$kroot/usr/lib/modules/*" | head -n 1) || true
  [ -n "$mdir" ] || rxe_vm_skip "$kpkg has no lib/modules/<release>"

  local stage="$dir.tmp.$$"
  rm -rf "$stage"
  mkdir -p "$stage/modules"
  cp "$f" "$stage/vmlinuz"
  # The uncompressed ELF kernel boots through QEMU's PVH entry and skips the decompressor, which
  # takes ~5 s under TCG (xz). Only for kernels built with CONFIG_PVH=y.
  if grep -qx 'CONFIG_PVH=y' "$kroot"/boot/config-* 2>/dev/null; then
    extract_vmlinux "$stage/vmlinuz" "$stage/vmlinux" || rm -f "$stage/vmlinux"
  fi
  basename "$mdir" >"$stage/release"
  index_modules "$mdir"
  # Depth-first walk: a module is appended after all of its dependencies (load order).
  local -A state=()
  local order=()
  visit() {
    local m=$1 dep
    [ "${state[$m]:-}" = "done" ] && return 0
    [ "${state[$m]:-}" = active ] && { rxe_vm_log "module dependency cycle at $m"; return 1; }
    if [ -z "${mod_file[$m]:-}" ]; then
      if grep -qE "/${m//_/[-_]}\.ko" "$mdir/modules.builtin" 2>/dev/null; then
        state[$m]="done"; return 0 # built into this kernel
      fi
      rxe_vm_skip "$kpkg has no module $m"
    fi
    state[$m]=active
    decompress_to "${mod_file[$m]}" "$stage/modules/$m.ko"
    while IFS= read -r dep; do visit "${dep//-/_}"; done < <(mod_depends "$stage/modules/$m.ko")
    state[$m]="done"
    order+=("$m")
  }
  for m in "${wanted_modules[@]}"; do visit "$m"; done
  printf '%s\n' "${order[@]}" >"$stage/modules.order"
  echo "$cache_stamp" >"$stage/stamp"
  echo "$kpkg $kver" >"$stage/package"
  rm -rf "$dir"
  mv -T "$stage" "$dir"
  rm -rf "$work"
  d=$(printf '%s ' "${order[@]}")
  rxe_vm_log "cached $kpkg $kver in $dir (modules: ${d% })"
}

mkdir -p "$cache_root"
kpkg="" kver=""
if resolve_kernel_pkg; then
  kdir="$cache_root/${kpkg}_${kver}"
  cache_current() { [ -f "$kdir/modules.order" ] && [ "$(cat "$kdir/stamp" 2>/dev/null)" = "$cache_stamp" ]; }
  if ! cache_current; then
    # Concurrent runs: one fills the cache, the others wait for it (flock is in util-linux).
    if command -v flock >/dev/null 2>&1; then
      exec 9>"$cache_root/.lock"
      flock 9
    fi
    if ! cache_current; then
      populate_cache "$kdir"
      # Older kernels' entries (after an upgrade) are dead weight: ~75 MiB each.
      for d in "$cache_root"/linux-image-*; do
        [ "$d" = "$kdir" ] || [ ! -d "$d" ] || { rm -rf "$d"; rxe_vm_log "removed stale cache $d"; }
      done
    fi
    exec 9>&-
  fi
elif [ -n "${KVC_RXE_VM_KERNEL_PKG:-}" ]; then
  rxe_vm_skip "apt has no installable candidate for KVC_RXE_VM_KERNEL_PKG=$KVC_RXE_VM_KERNEL_PKG"
else
  # No apt lists (offline, or apt not configured): use the newest cached kernel if there is one.
  kdir=$(compgen -G "$cache_root/linux-image-*/" | sort -V | tail -n 1) || true
  kdir=${kdir%/}
  if [ -z "$kdir" ] || [ ! -f "$kdir/modules.order" ]; then
    rxe_vm_skip "cannot resolve a Debian kernel package (apt-cache show linux-image-amd64 gives no Depends; run apt-get update) and $cache_root holds none"
  fi
  rxe_vm_log "apt cannot resolve linux-image-amd64; using cached $(cat "$kdir/package")"
fi
mapfile -t modules <"$kdir/modules.order"

# ---------------------------------------------------------------------------------------------
# Initramfs: busybox + iproute2 + libibverbs' rxe provider + modules + the FILEs, merged-/usr layout.

t_initrd=$(date +%s.%N)
root="$tmp/root"
mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{proc,sys,dev,tmp,run,root,etc,kvc}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
mkdir -p "$root/usr/lib/modules" "$root/etc/libibverbs.d"

declare -A copied=()
# put SRC GUEST_PATH: copies (dereferencing) SRC to GUEST_PATH inside the image, replacing links
# (a plain `cp` onto a busybox applet link would overwrite busybox itself).
put() {
  mkdir -p "$root$(dirname "$2")"
  cp -L --remove-destination "$1" "$root$2"
}
# add_closure ELF: copies every shared library ldd lists for ELF (and the loader) to the same path.
add_closure() {
  local line lib out
  if ! out=$(ldd "$1" 2>&1); then
    case "$out" in *"not a dynamic executable"* | *"statically linked"*) return 0 ;; esac
    echo "rxe-vm: ldd $1 failed: $out" >&2
    exit 1
  fi
  while IFS= read -r line; do
    case "$line" in
      *"=> not found"*) echo "rxe-vm: $1 needs a library the host lacks: ${line%% =>*}" >&2; exit 1 ;;
      *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
      *"statically linked"*) continue ;;
      *) lib=$(echo "$line" | awk '{ print $1 }') ;;
    esac
    case "$lib" in /*) ;; *) continue ;; esac # linux-vdso.so.1 and the like
    [ -n "${copied[$lib]:-}" ] && continue
    copied[$lib]=1
    put "$lib" "$lib"
  done <<<"$out"
}
is_elf() { [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; }

# busybox and its applet links (busybox-static needs no libraries; a dynamic one gets them).
put "$busybox" /usr/bin/busybox
add_closure "$busybox"
while IFS= read -r applet; do
  [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /usr/bin/busybox "$root/$applet"
done < <("$busybox" --list-full)
# iproute2's ip (busybox ip cannot create a dummy link everywhere) and rdma replace the applets.
put "$ip_cmd" /usr/sbin/ip
put "$rdma_cmd" /usr/sbin/rdma
add_closure "$ip_cmd"
add_closure "$rdma_cmd"
# libibverbs finds providers through /etc/libibverbs.d/*.driver and dlopen()s them from its
# compiled-in directory, so no ELF FILE's ldd output names the provider.
put "$provider" "$provider"
add_closure "$provider"
put /etc/libibverbs.d/rxe.driver /etc/libibverbs.d/rxe.driver
for m in "${modules[@]}"; do cp "$kdir/modules/$m.ko" "$root/usr/lib/modules/$m.ko"; done

for f in "${files[@]}"; do
  put "$f" "/kvc/$(basename "$f")"
  if is_elf "$f"; then add_closure "$f"; fi
done

# ld.so cache for library directories outside the defaults (e.g. found through LD_LIBRARY_PATH).
printf '%s\n' "${!copied[@]}" | xargs -r -n1 dirname | sort -u >"$root/etc/ld.so.conf"
if ldconfig_cmd=$(find_cmd ldconfig) && [ -n "$ldconfig_cmd" ]; then
  "$ldconfig_cmd" -r "$root" 2>/dev/null || true
fi

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
EOF
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1 localhost
10.77.0.1 kvc-rxe-vm
EOF
echo 'hosts: files' >"$root/etc/nsswitch.conf"
{
  printf 'KVC_MODULES="%s"\n' "${modules[*]}"
  printf 'KVC_SCRIPT="%s"\n' "$(basename "$guest_script")"
} >"$root/etc/kvc-vm.conf"

cat >"$root/init" <<'EOF'
#!/bin/sh
# kvc rxe-vm guest init (generated by scripts/rxe-vm/run.sh).
export PATH=/kvc:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs -o mode=0755 tmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
. /etc/kvc-vm.conf

fail() {
  echo "KVC_GUEST_SETUP_FAILED: $*"
  sync
  poweroff -f
  exit 1
}

for m in $KVC_MODULES; do
  insmod "/lib/modules/$m.ko" || fail "insmod $m"
done
ip link set lo up || fail "ip link set lo up"
ip link add d0 type dummy || fail "ip link add d0 type dummy"
ip addr add 10.77.0.1/24 dev d0 || fail "ip addr add 10.77.0.1/24 dev d0"
ip link set d0 up || fail "ip link set d0 up"
rdma link add rxe0 type rxe netdev d0 || fail "rdma link add rxe0 type rxe netdev d0"
i=0
while [ ! -c /dev/infiniband/uverbs0 ]; do
  i=$((i + 1))
  [ $i -le 100 ] || fail "/dev/infiniband/uverbs0 did not appear"
  sleep 0.1
done
ulimit -l unlimited
echo "KVC_GUEST_READY uptime=$(cut -d' ' -f1 /proc/uptime)s"

cd /kvc || fail "cd /kvc"
/bin/sh "/kvc/$KVC_SCRIPT"
rc=$?
echo "KVC_GUEST_EXIT=$rc"
sync
poweroff -f
EOF
chmod 755 "$root/init"

initrd="$tmp/initrd.gz"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -1 >"$initrd"
rxe_vm_log "kernel $(cat "$kdir/package") ($(cat "$kdir/release")); initramfs $(du -k "$initrd" | cut -f1) KiB built in $(elapsed "$t_initrd")s"

# ---------------------------------------------------------------------------------------------
# Accelerator: KVM when /dev/kvm is usable and the guest kernel actually boots under it, else TCG.

# The kernel image: the uncompressed ELF (PVH entry) when the cache has one, else the bzImage.
kernel_image="$kdir/vmlinuz"
if [ -f "$kdir/vmlinux" ] && [ "${KVC_RXE_VM_KERNEL_IMAGE:-auto}" != bzimage ]; then
  kernel_image="$kdir/vmlinux"
fi

qemu_starts() { # CPU: can QEMU build a KVM machine with this CPU (vCPU reset included) and quit?
  # (subshell: keeps bash's "Aborted" report of a crashing QEMU off the terminal)
  (echo quit | timeout 20 "$qemu" -accel kvm -cpu "$1" -smp "${KVC_RXE_VM_SMP:-2}" -m 64M -nodefaults \
    -display none -monitor stdio >/dev/null 2>&1) 2>/dev/null
}
kvm_boots() { # CPU: does the guest kernel print its banner under KVM? (It then panics: no root fs.)
  local out
  out=$( (timeout "${KVC_RXE_VM_KVM_PROBE_S:-10}" "$qemu" -accel kvm -cpu "$1" -smp 1 -m 256M -nic none \
    -nographic -no-reboot -kernel "$kernel_image" \
    -append "console=ttyS0 earlyprintk=serial,ttyS0 loglevel=7 panic=-1" </dev/null 2>&1) 2>/dev/null) || true
  grep -q 'Linux version' <<<"$out"
}
# A host where KVM opens but guests hang (seen under nested virtualisation) is remembered, so later
# runs do not pay the probe again; KVC_RXE_VM_ACCEL=kvm retries and clears it.
kvm_verdict="$cache_root/kvm-unusable"
kvm_key="host=$(uname -r) $("$qemu" --version | head -n 1) cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1) guest=$(cat "$kdir/package")"

accel_req=${KVC_RXE_VM_ACCEL:-auto}
accel="" cpu="" why=""
case "$accel_req" in
  auto | kvm)
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
      why="/dev/kvm is missing or not read-writable by $(id -un)"
    elif [ "$accel_req" = auto ] && [ "$(cat "$kvm_verdict" 2>/dev/null)" = "$kvm_key" ]; then
      why="the guest kernel hung under KVM on an earlier run (remembered in $kvm_verdict)"
    else
      # -cpu host aborts on some nested hosts ("failed to set MSR 0x10a"): try it without
      # arch-capabilities, then a generic model.
      for c in ${KVC_RXE_VM_CPU:-host host,-arch-capabilities qemu64}; do
        if qemu_starts "$c"; then cpu=$c; break; fi
      done
      if [ -z "$cpu" ]; then
        why="QEMU cannot start a KVM vCPU"
      elif kvm_boots "$cpu"; then
        accel=kvm
        rm -f "$kvm_verdict"
      else
        why="QEMU starts under KVM (-cpu $cpu) but the guest kernel printed nothing within ${KVC_RXE_VM_KVM_PROBE_S:-10}s"
        echo "$kvm_key" >"$kvm_verdict"
        cpu=""
      fi
    fi
    if [ -z "$accel" ]; then
      [ "$accel_req" = kvm ] && { echo "rxe-vm: KVC_RXE_VM_ACCEL=kvm but KVM is unusable: $why" >&2; exit 1; }
      rxe_vm_log "KVM unusable: $why; using TCG (slower)"
    fi
    ;;
  tcg) ;;
  *) echo "rxe-vm: KVC_RXE_VM_ACCEL must be auto, kvm or tcg" >&2; exit 2 ;;
esac
if [ -z "$accel" ]; then accel=tcg; cpu=${KVC_RXE_VM_CPU:-max}; fi

# ---------------------------------------------------------------------------------------------
# Boot. The console streams to stdout (and a log); the guest init prints KVC_GUEST_EXIT=<rc>.

log="$tmp/console.log"
append="console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off ${KVC_RXE_VM_APPEND:-}"
rxe_vm_log "booting $(basename "$kernel_image"): accel=$accel cpu=$cpu mem=${KVC_RXE_VM_MEM:-1G} smp=${KVC_RXE_VM_SMP:-2} timeout=${timeout_s}s"
t_boot=$(date +%s.%N)
set +e
timeout -k 5 "$timeout_s" "$qemu" -accel "$accel" -cpu "$cpu" -m "${KVC_RXE_VM_MEM:-1G}" \
  -smp "${KVC_RXE_VM_SMP:-2}" -nic none -nographic -no-reboot \
  -kernel "$kernel_image" -initrd "$initrd" -append "$append" </dev/null 2>&1 | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e
wall=$(elapsed "$t_boot")

ready=$(tr -d '\r' <"$log" | sed -n 's/.*KVC_GUEST_READY uptime=//p' | tail -n 1)
marker=$(tr -d '\r' <"$log" | sed -n 's/^KVC_GUEST_EXIT=\([0-9][0-9]*\)$/\1/p' | tail -n 1)
if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
  rxe_vm_log "TIMEOUT: guest did not finish within ${timeout_s}s (accel=$accel); QEMU killed"
  exit 124
fi
if [ -z "$marker" ]; then
  why=$(tr -d '\r' <"$log" | sed -n 's/^KVC_GUEST_SETUP_FAILED: //p' | tail -n 1)
  rxe_vm_log "FAILED: no KVC_GUEST_EXIT marker (QEMU exit $qemu_rc${why:+; guest setup failed: $why})"
  exit 1
fi
rxe_vm_log "guest script exit $marker; accel=$accel; guest ready at uptime ${ready:-?}; QEMU wall ${wall}s; total $(elapsed "$t_start")s"
exit "$marker"
