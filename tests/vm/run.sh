#!/usr/bin/env bash
# The guest suite: the tests that need kernel support this host lacks (rbd, iscsi_tcp, nfs,
# nfsd), run as root inside one guest that boots Debian's 6.1 kernel under software emulation
# (virtme-ng + qemu, TCG), with the host's filesystem shared read-only.
#
#   tests/vm/run.sh [SUITE...]     SUITE: a tests/vm_*.rs file's name (default: all of them)
#
# Every test of a guest suite is #[ignore]d on the host and run here with --ignored. The run
# fails, never skips, when the guest cannot boot or a suite does not finish. See docs/testing.md
# ("The guest suite") for how to add a suite.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/vm/run.sh: needs root (the guest runs the suites as root, qemu needs /dev/kvm-free TCG)" >&2
  exit 1
fi

# How long the whole guest run may take, boot included (the suites bound their own steps).
GUEST_TIMEOUT=${VM_GUEST_TIMEOUT:-45m}
GUEST_MEMORY=${VM_GUEST_MEMORY:-4G}

# What the guest and the suites need: the guest kernel and emulator; busybox for virtme-ng's
# initramfs; the servers the suites start (Ceph, tgt, the kernel NFS server) and the iSCSI
# initiator tools. Installed on the host: the guest sees the host's filesystem.
need=()
ls /boot/vmlinuz-6.1.*-amd64 >/dev/null 2>&1 || need+=(linux-image-amd64)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v busybox >/dev/null || need+=(busybox-static)
command -v ceph-mon >/dev/null || need+=(ceph-mon)
command -v ceph-mgr >/dev/null || need+=(ceph-mgr)
command -v ceph-osd >/dev/null || need+=(ceph-osd)
command -v rbd >/dev/null || need+=(ceph-common)
command -v tgtd >/dev/null || need+=(tgt)
command -v iscsiadm >/dev/null || need+=(open-iscsi)
command -v rpc.nfsd >/dev/null || need+=(nfs-kernel-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/vm/run.sh: installing ${need[*]}"
  apt-get update -qq
  # The packages' own services must not start on the host: the suites start their servers
  # inside the guest.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

# virtme-ng from PyPI, kept under target/ (not in the system's Python).
VNG_VERSION=1.42
tools=target/vm-tools/py
if [ ! -x "$tools/bin/vng" ] || [ ! -d "$tools/virtme_ng-$VNG_VERSION.dist-info" ]; then
  echo "tests/vm/run.sh: installing virtme-ng $VNG_VERSION into $tools"
  rm -rf "$tools"
  python3 -m pip install --quiet --disable-pip-version-check --target "$tools" "virtme-ng==$VNG_VERSION"
fi
export PYTHONPATH="$PWD/$tools" PATH="$PWD/$tools/bin:$PATH"

kernel=$(ls /boot/vmlinuz-6.1.*-amd64 | sort -V | tail -n 1)
release=${kernel#/boot/vmlinuz-}
if [ ! -d "/lib/modules/$release/kernel/drivers/block" ]; then
  echo "tests/vm/run.sh: $kernel has no modules in /lib/modules/$release" >&2
  exit 1
fi

# The suites, built on the host (the guest runs the binaries from the shared filesystem).
if [ $# -gt 0 ]; then
  suites=("$@")
else
  suites=()
  for file in tests/vm_*.rs; do
    suites+=("$(basename "$file" .rs)")
  done
fi
test_args=()
for suite in "${suites[@]}"; do
  [ -f "tests/$suite.rs" ] || { echo "tests/vm/run.sh: no suite tests/$suite.rs" >&2; exit 1; }
  test_args+=(--test "$suite")
done
out=$PWD/target/vm-out
rm -rf "$out"
mkdir -p "$out"
cargo test --no-run --message-format=json "${test_args[@]}" > "$out/build.json"
python3 - "$out/build.json" "${suites[@]}" > "$out/suites" <<'PY'
import json, sys
wanted = set(sys.argv[2:])
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    target = msg.get("target", {})
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
            and target.get("name") in wanted and "test" in target.get("kind", []):
        print(target["name"], msg["executable"])
PY
if [ "$(wc -l < "$out/suites")" -ne ${#suites[@]} ]; then
  echo "tests/vm/run.sh: cargo built $(wc -l < "$out/suites") of ${#suites[@]} suites" >&2
  exit 1
fi

# Images the suites boot that only the host can build (debootstrap downloads): the Debian
# systemd image comes from the host suite's systemd test, built here if that has not run yet.
if grep -q debian_systemd_image tests/vm_*.rs 2>/dev/null &&
  ! ls target/test-images/debian-bookworm-systemd-*.squashfs >/dev/null 2>&1; then
  echo "tests/vm/run.sh: building the Debian systemd image on the host (cargo test --test systemd)"
  cargo test --test systemd
fi

echo "tests/vm/run.sh: booting $kernel (TCG, $GUEST_MEMORY) for: ${suites[*]}"
started=$(date +%s)
boot_status=0
timeout --kill-after=30s "$GUEST_TIMEOUT" \
  vng --disable-kvm -r "$kernel" --memory "$GUEST_MEMORY" --cpus 2 --rwdir "$out" \
  --exec "tests/vm/guest.sh $out" > "$out/console.log" 2>&1 < /dev/null || boot_status=$?
elapsed=$(( $(date +%s) - started ))

status=0
if [ ! -e "$out/booted" ]; then
  echo "tests/vm/run.sh: the guest did not boot (vng exited $boot_status after ${elapsed}s); its console:" >&2
  tail -n 60 "$out/console.log" >&2
  exit 1
fi
while read -r suite _; do
  echo "==== guest suite $suite ===="
  cat "$out/$suite.log" 2>/dev/null || true
  if [ ! -e "$out/$suite.status" ]; then
    echo "tests/vm/run.sh: suite $suite did not finish (guest ran ${elapsed}s, vng exited $boot_status)" >&2
    status=1
  elif [ "$(cat "$out/$suite.status")" != 0 ]; then
    echo "tests/vm/run.sh: suite $suite failed (exit $(cat "$out/$suite.status"))" >&2
    status=1
  fi
done < "$out/suites"
if [ -s "$out/leftovers" ]; then
  echo "tests/vm/run.sh: the guest suites left kernel resources behind:" >&2
  cat "$out/leftovers" >&2
  status=1
fi
echo "tests/vm/run.sh: guest ran ${elapsed}s; console log: $out/console.log"
exit $status
