"""Schemathesis hooks for the ImageAPI contract fuzz run (tests/contract/schemathesis.sh).

Random strings almost never name a file that exists, so left alone the fuzzer would only ever
meet validation errors. Before each call, these hooks swap some strings for real things in the
run's private directory (IMAGEAPI_FUZZ_DIR): an image file, a directory tree, a loop device, a
missing path, a path inside a mount; some filesystem types and commands for ones that exist in
the image; and some ids for small ones, which the run has likely created. That drives requests
through attach, mount, overlay and container creation, deletion and garbage collection.

The swaps also keep the run inside its directory: every host path (base `root`, `local`, a uri
mount's `url`) is replaced by one under IMAGEAPI_FUZZ_DIR, so the fuzzer never attaches, binds or mounts anything
of the host's, and containers only ever run on trees made from the run's own images. Strings
only replace strings and integers integers, so a negative (schema-violating) case stays one.
"""

import os
import random

import schemathesis

DIR = os.environ["IMAGEAPI_FUZZ_DIR"]
LOOP = os.environ.get("IMAGEAPI_FUZZ_LOOP", "/dev/null")
RNG = random.Random(int(os.environ.get("IMAGEAPI_FUZZ_SEED", "1")))

# Host paths, all inside the run's directory (or harmless device nodes).
IMAGE_FILES = [
    f"{DIR}/image.squashfs",
    f"{DIR}/image.ext4",
    f"{DIR}/blank.img",
    f"{DIR}/missing.img",
    f"{DIR}/tree",
    "/dev/null",
]
DIRECTORIES = [f"{DIR}/tree", f"{DIR}/tree/sub", f"{DIR}/tree/file", f"{DIR}/missing", "/dev/null"]
DEVICES = [LOOP, LOOP, f"{DIR}/blank.img", "/dev/null", "/dev/loop-control", f"{DIR}/missing"]
# uri mounts read only files of the run (file:// URLs): the fuzzer never downloads from anywhere.
URLS = [f"file://{path}" for path in IMAGE_FILES]
# Paths relative to a mount (resolved beneath it by the service, so the fuzzer's own are kept
# too): what the test images hold, and ways out of them.
INSIDE = ["inner.squashfs", "dir", "bin", ".", "/", "escape", "up", "..", "dir/../..", "nope"]
FS_TYPES = ["squashfs", "squashfs", "ext4", "tmpfs", "erofs"]
ATTACH_KINDS = {"iscsi", "local", "loopback", "rbd"}
MOUNT_KINDS = {"attach", "bind", "nfs", "overlay", "uri"}
# Kinds with a driver on this node, favoured so that requests reach the kernel.
DRIVEN = ["loopback", "loopback", "local", "attach", "attach", "bind", "overlay", "uri"]
SIGNALS = ["SIGTERM", "SIGKILL", "SIGRTMIN+3", "9", "TERM"]
COMMANDS = [
    "/bin/true",
    "/bin/sh -c 'exit 3'",
    "/bin/sleep 1",
    "/bin/sh -c 'echo hello; sleep 30'",
    "/bin/nonexistent",
    "/dir",
]


def swap(original, choices, keep=0.25):
    """One of `choices`, or the original now and then (when it is a string)."""
    if isinstance(original, str) and RNG.random() < keep:
        return original
    return RNG.choice(choices)


def host_path(original, choices):
    """A host path never escapes the run's directory: always swapped."""
    return RNG.choice(choices)


def rewrite(value, parent=None, steer=True):
    """Swaps host paths (always) and, when `steer`, kinds, ids and filesystem types."""
    if isinstance(value, list):
        for item in value:
            rewrite(item, parent, steer)
        return
    if not isinstance(value, dict):
        return
    if steer and isinstance(value.get("id"), int) and not isinstance(value.get("id"), bool):
        if RNG.random() < 0.7:
            value["id"] = RNG.randint(1, 40)
    kind = value.get("kind")
    if steer and isinstance(kind, str) and RNG.random() < 0.7:
        # Another valid kind of the same family whose sub-object the request carries.
        family = ATTACH_KINDS if kind in ATTACH_KINDS else MOUNT_KINDS if kind in MOUNT_KINDS else set()
        present = [k for k in DRIVEN if k in family and isinstance(value.get(k), dict)]
        if present:
            value["kind"] = RNG.choice(present)
    path = value.get("path")
    if isinstance(path, str):
        base = value.get("base")
        if parent == "local":
            value["path"] = host_path(path, DEVICES)
        elif parent == "loopback" and base == "mount":
            value["path"] = swap(path, INSIDE, keep=0.25 if steer else 1.0)
        elif parent == "loopback":
            value["path"] = host_path(path, IMAGE_FILES)
        elif parent == "bind" and base == "mount":
            value["path"] = swap(path, INSIDE, keep=0.25 if steer else 1.0)
        elif parent == "bind":
            value["path"] = host_path(path, DIRECTORIES)
    if parent == "uri" and isinstance(value.get("url"), str):
        value["url"] = host_path(value["url"], URLS)
    if steer and parent == "attach" and isinstance(value.get("fs_type"), str):
        value["fs_type"] = swap(value["fs_type"], FS_TYPES)
    options = value.get("mount_options")
    if isinstance(options, list):
        # Never an errors=panic or the like on a filesystem the fuzzer may corrupt.
        value["mount_options"] = [
            o for o in options if not (isinstance(o, str) and "errors" in o)
        ]
    for key, child in list(value.items()):
        if key in ("options",) and parent == "rbd":
            continue
        rewrite(child, key, steer)


def is_negative(case):
    """A case meant to break the schema: only its host paths are swapped, so that it stays one."""
    meta = case.meta
    return meta is not None and str(getattr(meta.generation.mode, "value", "")) == "negative"


@schemathesis.hook
def before_call(context, case, kwargs):
    steer = not is_negative(case)
    body = case.body
    if isinstance(body, dict):
        rewrite(body, steer=steer)
    if steer and isinstance(body, dict):
        if isinstance(body.get("command"), str):
            body["command"] = swap(body["command"], COMMANDS, keep=0.1)
        if isinstance(body.get("stop_signal"), str):
            body["stop_signal"] = swap(body["stop_signal"], SIGNALS, keep=0.2)
    query = case.query
    if steer and isinstance(query, dict):
        # A long poll (wait=) may hold its answer for up to `timeout` seconds: keep them short.
        timeout = query.get("timeout")
        if isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 1:
            query["timeout"] = RNG.randint(0, 1)
        if isinstance(query.get("id"), int) and not isinstance(query.get("id"), bool):
            if RNG.random() < 0.7:
                query["id"] = RNG.randint(1, 40)


ANSWERS = os.path.join(DIR, "answers.log")


@schemathesis.hook
def after_call(context, case, response):
    """Tallies what the service answered (status and the field a 422 named), for the summary."""
    field = ""
    if response.status_code == 422:
        try:
            field = response.json().get("field", "")
        except Exception:
            field = "?"
    with open(ANSWERS, "a") as answers:
        answers.write(f"{case.method} {case.path} {response.status_code} {field}\n")
