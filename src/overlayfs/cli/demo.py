"""``overlayfs demo [DIR]``: a small image-like overlay2 store to try the CLI on.

Three layers, as ``docker run`` leaves them in ``/var/lib/docker/overlay2``: ``base``
(a distro-like root: /bin/sh -> busybox, /dev/null, /etc, /tmp), ``app`` (an
application; its /app/config is opaque, replacing the base's) and ``container`` (the
container's layer: a changed /etc/motd, a log file, a whiteout deleting
/usr/share/doc/README).  ``DIR/container`` is an overlay2 layer dir, so every verb
reads it as a target: ``overlayfs tree DIR/container``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from typing import Any

from ._common import CliError, print_json, union_path

_FILES_BASE = {
    "etc/os-release": 'NAME="Demo Linux"\nID=demo\nVERSION_ID=1.0\n',
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n",
    "etc/group": "root:x:0:\napp:x:1000:\n",
    "etc/motd": "Welcome to Demo Linux\n",
    "bin/busybox": "#!/bin/sh\necho busybox\n",
    "usr/share/doc/README": "base documentation\n",
    "app/config/defaults.ini": "[base]\nlevel=1\n",
    "app/config/legacy.ini": "[legacy]\n",
}
_FILES_APP = {
    "app/server.py": "print('serving')\n",
    "app/config/app.ini": "[app]\nport=8080\n",
    "etc/motd": "Welcome to Demo Linux, with the demo app\n",
}
_FILES_CTR = {
    "etc/motd": "Welcome to Demo Linux (changed in the container)\n",
    "var/log/app.log": "started\nserving on :8080\n",
}


def _write(root: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def build(root: str) -> dict[str, Any]:
    """Build the demo store under ``root``; returns where its layers are."""
    from overlayfs.store import LayerStore

    store = LayerStore(root, durable=False)
    ns = store.xattr_namespace

    def base(diff: str) -> None:
        os.makedirs(diff)
        _write(diff, _FILES_BASE)
        os.chmod(os.path.join(diff, "bin/busybox"), 0o755)
        for applet in ("sh", "ls", "cat"):
            os.symlink("busybox", os.path.join(diff, "bin", applet))
        os.makedirs(os.path.join(diff, "dev"))
        os.makedirs(os.path.join(diff, "var/log"))
        os.makedirs(os.path.join(diff, "tmp"))
        os.chmod(os.path.join(diff, "tmp"), 0o1777)
        try:
            os.mknod(os.path.join(diff, "dev/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:  # not root: no device node
            pass

    def app(diff: str) -> None:
        os.makedirs(diff)
        _write(diff, _FILES_APP)
        os.setxattr(os.path.join(diff, "app/config"), f"{ns}.overlay.opaque", b"y")
        os.makedirs(os.path.join(diff, "usr/local/bin"))
        os.symlink("/app/server.py", os.path.join(diff, "usr/local/bin/app"))
        os.makedirs(os.path.join(diff, "run"))
        os.mkfifo(os.path.join(diff, "run/app.fifo"))
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(os.path.join(diff, "run/app.sock"))
        except OSError:
            pass
        finally:
            sock.close()

    def container(diff: str) -> None:
        os.makedirs(diff)
        _write(diff, _FILES_CTR)
        os.makedirs(os.path.join(diff, "usr/share/doc"))
        whiteout = os.path.join(diff, "usr/share/doc/README")
        try:
            os.mknod(whiteout, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        except PermissionError:  # not root: the xattr form
            open(whiteout, "w").close()
            os.setxattr(whiteout, f"{ns}.overlay.whiteout", b"y")

    store.create("base", populate=base)
    store.create("app", "base", populate=app)
    store.create("container", "app", populate=container)
    layers = [os.path.join(root, n, "diff") for n in ("container", "app", "base")]
    return {"root": root, "target": os.path.join(root, "container"), "layers": layers,
            "xattr_namespace": ns}


_KERNEL_VIEW = r"""
import json, os, subprocess, sys
lowers, target = json.loads(sys.argv[1])
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={':'.join(lowers)}", target],
               check=True)
try:
    paths = []
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames + filenames:
            paths.append(os.path.relpath(os.path.join(dirpath, name), target))
    print(json.dumps(sorted(paths)))
finally:
    subprocess.run(["umount", target], check=True)
"""


def kernel_paths(lowers: list[str], target: str) -> list[str] | str:
    """Merged paths through a real read-only overlay mount in a private mount namespace,
    or a string saying why that was not possible."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return "not root, or util-linux unshare/mount missing"
    os.makedirs(target, exist_ok=True)
    try:
        proc = subprocess.run(["unshare", "-m", sys.executable, "-c", _KERNEL_VIEW,
                               json.dumps([lowers, target])], capture_output=True, text=True)
    finally:
        os.rmdir(target)
    if proc.returncode:
        return " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
    return list(json.loads(proc.stdout))


def cmd_demo(args: Any) -> int:
    from overlayfs import stack_from_layer_dir

    if args.dir is None:
        root = tempfile.mkdtemp(prefix="overlayfs-demo-")
    else:
        root = os.path.abspath(args.dir)
        if os.path.exists(root) and os.listdir(root):
            raise CliError(f"{args.dir}: exists and is not empty")
    info = build(root)
    with stack_from_layer_dir(info["target"]) as st:
        ours = sorted(dirpath_join(d, n) for d, dirs, files in st.walk("") for n in dirs + files)
        deleted = not st.lexists("usr/share/doc/README")
        config = sorted(st.listdir("app/config"))
    kernel = kernel_paths(info["layers"], os.path.join(root, ".kernel-view"))
    info["paths"] = len(ours)
    info["kernel"] = kernel if isinstance(kernel, str) else (
        "identical" if kernel == ours else "different")
    if args.json:
        print_json(info)
        return 0 if info["kernel"] != "different" else 1
    t = info["target"]
    w = sys.stdout.write
    w(f"A demo image in {root} (an overlay2 store: base <- app <- container).\n")
    w(f"The container's layer dir is a target for every verb:\n\n  T={t}\n\n")
    w(f"  {union_path('usr/share/doc/README')} deleted in the container layer: {deleted}\n")
    w(f"  /app/config is opaque in the app layer: it lists {config}\n")
    if isinstance(kernel, str):
        w(f"  kernel comparison skipped: {kernel}\n")
    else:
        w(f"  a real kernel overlay mount shows {len(kernel)} paths, "
          f"{'identical to' if kernel == ours else 'DIFFERENT from'} the Stack's {len(ours)}\n")
    w("\nTry:\n")
    for cmd in ("tree $T", "ls -l $T /etc", "which $T /etc/motd", "cat $T /etc/motd",
                "find $T -type l", "changes $T", "du -sh $T", "stat $T /dev/null",
                "export $T -o demo.tar"):
        w(f"  overlayfs {cmd}\n")
    w(f"\nRemove it with: rm -rf {root}\n")
    return 0 if info["kernel"] != "different" else 1


def dirpath_join(d: str, n: str) -> str:
    return f"{d}/{n}" if d else n
