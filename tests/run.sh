#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs every test.
# Must run as root: the tests attach loop devices, mount filesystems and create namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/run.sh: the tests need root (loop devices, mounts, namespaces)" >&2
  exit 1
fi

# Tools the tests build images with.
need=()
command -v busybox >/dev/null || need+=(busybox-static)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
# The uri mount tests pack archives with tar's zstd and xz filters and craft hostile ones in
# Python.
command -v zstd >/dev/null || need+=(zstd)
command -v xz >/dev/null || need+=(xz-utils)
command -v python3 >/dev/null || need+=(python3)
# The systemd test builds a Debian image (cached under target/test-images) and looks inside it.
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v nsenter >/dev/null || need+=(util-linux)
# The README's walkthrough (tests/readme.rs) talks to the service with curl.
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# A fresh machine may lack loop device nodes until the module is asked for.
[ -e /dev/loop-control ] || modprobe loop

# What the suite may not leave behind: loop devices, mounts and container cgroups it made
# (compared with before).
kernel_resources() {
  losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null | sort
  awk '$5 ~ /^\/tmp\// {print $5}' /proc/self/mountinfo | sort
  # (find fails on the paths this host's layout lacks)
  { find /sys/fs/cgroup/imageapi /sys/fs/cgroup/*/imageapi -mindepth 1 -maxdepth 1 -type d \
    2>/dev/null || true; } | sort
}
before=$(kernel_resources)

status=0
# The Debian package that tests/package.rs installs under systemd (release build; cargo-deb is
# installed into target/tools when missing).
src/package/deb.sh --quiet || status=$?
cargo test --workspace --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-4}" || status=$?
# Again the runtime suite, as a service in a sandbox or on a systemd host sees the host: in a
# pid namespace whose session leader is outside it (the service's session id reads 0), and with
# shared mount propagation, as systemd sets up /.
unshare --pid --fork --mount-proc --propagation shared \
  cargo test -p imageapi-actors --test container_runtime || status=$?
# And the runtime suite and the systemd boot as on a host with cgroup2 alone (current
# distributions): in a mount namespace whose /sys/fs/cgroup is the cgroup2 hierarchy.
unshare --mount --propagation private sh -c \
  'umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup &&
   cargo test -p imageapi-actors --test container_runtime && cargo test --test systemd' ||
  status=$?
# The network storage drivers (rbd, iscsi, nfs) against real servers, in a guest whose kernel
# has the modules this host lacks (after the host suite: it builds the images the guest boots).
tests/vm/run.sh || status=$?
# The served swagger.yaml against the service, by schemathesis (no 5xx for client faults).
tests/contract/schemathesis.sh || status=$?

left=$(comm -13 <(echo "$before") <(kernel_resources))
if [ -n "$left" ]; then
  echo "tests/run.sh: the suite left kernel resources behind:" >&2
  echo "$left" >&2
  status=1
fi
exit $status
