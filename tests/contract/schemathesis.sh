#!/usr/bin/env bash
# Contract fuzz run: schemathesis (from PyPI, in a venv under target/) against a test instance of
# imageapi-server with private dirs, over HTTPS with client certificates, using the spec the
# service serves. Fails on any 5xx but 501 (the contract's "no driver"), on a response that does
# not fit swagger.yaml, on a crash, and on a mount, loop device or process left behind.
#
#   sudo tests/contract/schemathesis.sh            # about 2 minutes
#   EXAMPLES=200 SEED=7 sudo -E tests/contract/schemathesis.sh
#
# Knobs (environment): EXAMPLES (per operation, default 25), SEED (default 1), WORKERS
# (default 1: hypothesis in threads trips over CPython 3.11's ast), SCHEMATHESIS_VENV (default target/schemathesis-venv), KEEP=1 keeps the run dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "schemathesis.sh: the service under test needs root" >&2
  exit 1
fi
for tool in python3 openssl mksquashfs mkfs.ext4 busybox losetup; do
  command -v "$tool" >/dev/null || { echo "schemathesis.sh: needs $tool" >&2; exit 1; }
done

examples=${EXAMPLES:-25}
seed=${SEED:-1}
workers=${WORKERS:-1}
venv=${SCHEMATHESIS_VENV:-$repo/target/schemathesis-venv}
target_dir=${CARGO_TARGET_DIR:-$repo/target}

# schemathesis, pinned, installed once.
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "4.32.5"; then
  echo "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi

cargo build --quiet --bin imageapi-server
server="$target_dir/debug/imageapi-server"

run=$(mktemp -d /tmp/imageapi-contract-XXXXXX)
pid=""
loop=""

mounts_under() { awk -v d="$run/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r; }
loops_under() {
  for f in /sys/block/loop*/loop/backing_file; do
    [ -r "$f" ] || continue
    case "$(cat "$f")" in "$run"/*) dev=${f#/sys/block/}; echo "/dev/${dev%%/*}";; esac
  done
}
cleanup() {
  local status=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
  # Last resort only: the run fails before this if anything was left.
  for m in $(mounts_under); do umount -l "$m" 2>/dev/null || true; done
  for l in $(loops_under); do losetup -d "$l" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ] || [ -n "$(mounts_under)" ]; then
    echo "run dir kept: $run" >&2
  else
    rm -rf "$run"
  fi
  exit $status
}
trap cleanup EXIT

# Test data: images with a busybox tree, a plain tree, a blank file, and a loop device.
tree="$run/src"
mkdir -p "$tree/bin" "$tree/dir" "$run/tree/sub"
cp "$(command -v busybox)" "$tree/bin/busybox"
for applet in sh true sleep echo cat; do ln -s busybox "$tree/bin/$applet"; done
echo hello > "$tree/dir/hello.txt"
ln -s /etc "$tree/escape"
ln -s ../../.. "$tree/up"
mkdir -p "$run/inner" && echo inner > "$run/inner/hello.txt"
mksquashfs "$run/inner" "$tree/inner.squashfs" -noappend -quiet -no-progress >/dev/null
mksquashfs "$tree" "$run/image.squashfs" -noappend -quiet -no-progress >/dev/null
truncate -s 16M "$run/image.ext4"
mkfs.ext4 -q -F -d "$tree" "$run/image.ext4"
truncate -s 4M "$run/blank.img"
echo file > "$run/tree/file"
truncate -s 16M "$run/device.ext4"
mkfs.ext4 -q -F "$run/device.ext4"
loop=$(losetup --find --show "$run/device.ext4")

# PKI: a CA, the server's certificate for 127.0.0.1, a client certificate.
pki="$run/pki"
mkdir -p "$pki"
(
  cd "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=imageapi contract CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=imageapi" \
    -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.crt 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=schemathesis" \
    -keyout client.key -out client.csr 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > client.ext
  openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -extfile client.ext -out client.crt 2>/dev/null
  chmod 600 ./*.key
)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
IMAGEAPI_LOGLEVEL=DEBUG "$server" --scheme https --tls-host 127.0.0.1 --tls-port "$port" \
  --tls-certificate "$pki/server.crt" --tls-key "$pki/server.key" --tls-ca "$pki/ca.crt" \
  --mount-dir "$run/mounts" --log-dir "$run/logs" --state-dir "$run/state" --cleanup-on-exit \
  --read-timeout 10s --write-timeout 30s \
  2> "$run/service.log" &
pid=$!
for _ in $(seq 100); do
  grep -q "serving" "$run/service.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$run/service.log" >&2; exit 1; }
  sleep 0.1
done
url="https://127.0.0.1:$port/imageapi/v1"
echo "service pid $pid at $url, run dir $run"

status=0
# From the run dir, where schemathesis keeps its cache.
cd "$run"
IMAGEAPI_FUZZ_DIR="$run" IMAGEAPI_FUZZ_LOOP="$loop" IMAGEAPI_FUZZ_SEED="$seed" \
SCHEMATHESIS_HOOKS="$repo/tests/contract/hooks.py" \
  "$venv/bin/schemathesis" --no-color --config-file "$repo/tests/contract/schemathesis.toml" run \
  "$url/swagger.yaml" --url "$url" \
  --tls-verify "$pki/ca.crt" --request-cert "$pki/client.crt" --request-cert-key "$pki/client.key" \
  --phases examples,coverage,fuzzing \
  --max-examples "$examples" --seed "$seed" --workers "$workers" \
  --request-timeout 60 \
  --report junit --report-dir "$run/report" || status=$?
cd "$repo"

# The service must have survived the run, and must stop cleanly, releasing everything.
if ! kill -0 "$pid" 2>/dev/null; then
  echo "schemathesis.sh: the service died during the run:" >&2
  tail -50 "$run/service.log" >&2
  exit 1
fi
kill -TERM "$pid"
stopped=0
for _ in $(seq 300); do
  if ! kill -0 "$pid" 2>/dev/null; then stopped=1; break; fi
  sleep 0.1
done
if [ $stopped = 0 ]; then
  echo "schemathesis.sh: the service did not stop within 30 s of SIGTERM" >&2
  status=1
else
  wait "$pid" || { echo "schemathesis.sh: the service exited with $?" >&2; status=1; }
fi
pid=""
losetup -d "$loop" && loop=""

left_mounts=$(mounts_under)
left_loops=$(loops_under)
left_procs=$(for p in /proc/[0-9]*; do
  root=$(readlink "$p/root" 2>/dev/null) || continue
  case "$root" in "$run"/*) echo "${p#/proc/} ($root)";; esac
done)
if [ -n "$left_mounts$left_loops$left_procs" ]; then
  echo "schemathesis.sh: left behind: mounts [$left_mounts] loop devices [$left_loops] processes [$left_procs]" >&2
  status=1
fi
if grep -E "panicked|overflowed its stack" "$run/service.log" >&2; then
  status=1
fi
# How far the requests got: a run that only ever met validation errors tested little.
echo "schemathesis.sh: answers by status:" $(grep -o 'status=[0-9]*' "$run/service.log" | sort | uniq -c | sort -rn | awk '{print $2 "x" $1}')
echo "schemathesis.sh: exit status $status"
exit $status
