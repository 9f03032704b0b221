#!/usr/bin/env bash
# Inside the guest (as root, cwd the checkout): runs each suite listed in OUT/suites and leaves
# its output and exit status in OUT for tests/vm/run.sh on the host.
set -uo pipefail
out=$1
echo "$(uname -r) $(date -u +%FT%TZ)" > "$out/booted"

# A guest-local tmpfs for the suites' temp dirs: the guest's /tmp is an overlay of the host's,
# which overlayfs refuses as an upper layer. (Not mounted over /tmp itself: the checkout and
# OUT may be under it.)
scratch=/run/imageapi-guest-tmp
mkdir -p "$scratch"
mount -t tmpfs -o mode=1777 tmpfs "$scratch"
modprobe loop
export TMPDIR=$scratch RUST_BACKTRACE=1

kernel_resources() {
  losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null | sort
  ls /sys/bus/rbd/devices 2>/dev/null | sed 's/^/rbd /'
  ls /sys/class/iscsi_session 2>/dev/null | sed 's/^/iscsi /'
  awk -v dir="$scratch/" 'index($5, dir) == 1 {print $5}' /proc/self/mountinfo | sort
  { find /sys/fs/cgroup/imageapi -mindepth 1 -maxdepth 1 -type d 2>/dev/null || true; } | sort
}
before=$(kernel_resources)

while read -r suite binary; do
  echo "guest: running $suite"
  "$binary" --ignored --test-threads=1 > "$out/$suite.log" 2>&1
  echo $? > "$out/$suite.status"
done < "$out/suites"

comm -13 <(echo "$before") <(kernel_resources) > "$out/leftovers"
umount "$scratch" 2>> "$out/leftovers"
sync
