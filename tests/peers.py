"""The real peers the layer tests compare with: dockerd, podman, GNU tar, umoci, skopeo.

A test that needs a peer asks for it through :func:`require_tool` or the
``dockerd`` fixture (conftest.py).  Where the peer is missing the test is
skipped, or fails under ``OVERLAYFS_REQUIRE_KERNEL=1`` (``.ci/run`` installs
every peer, so CI never silently loses a comparison).

Docker runs as a private daemon: its own socket, data root and exec root,
``--iptables=false --bridge=none``.  ``.ci/run`` starts one and exports
``OVERLAYFS_DOCKER_HOST``; without it the first test that needs Docker starts
one under a temp dir and stops it at the end of the session.  No registry is
reachable, so every image is made here: :func:`busybox_rootfs` builds a tiny
rootfs around Debian's static busybox, ``Docker.import_rootfs`` imports it,
and ``Docker.build`` runs a Dockerfile over it with ``--network none``.

Podman (:class:`Podman`, the ``podman`` fixture) runs on a private root, runroot and
tmpdir with the overlay driver; ``podman run`` may be refused by rlimits on CI machines,
so tests change a container through ``podman create`` + ``podman mount``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time

import kernel

BUSYBOX = "/bin/busybox"
# Applets linked into the test rootfs (what the Dockerfiles' RUN lines use).
APPLETS = (
    "sh ls rm rmdir mkdir cp ln chmod chown touch mv cat echo mknod mkfifo "
    "printf dd truncate head test true false stat find xargs sleep"
).split()


def require_tool(name: str) -> str:
    """The path of the program *name*, or skip/fail the calling test."""
    path = shutil.which(name)
    if path is None:
        kernel.skip_or_fail(f"{name} is not installed (.ci/run installs it)")
    assert path is not None
    return path


def busybox_rootfs(root: str) -> str:
    """Lay out a minimal rootfs (static busybox, its applets, /etc, /tmp) in *root*."""
    if not os.path.exists(BUSYBOX):
        kernel.skip_or_fail("busybox-static is not installed (.ci/run installs it)")
    for d in ("bin", "etc", "tmp", "root"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    for applet in APPLETS:
        os.symlink("busybox", os.path.join(root, "bin", applet))
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    return root


class Docker:
    """A dockerd to talk to: ``run(*args)`` is the docker CLI against its socket."""

    def __init__(self, host: str, proc: subprocess.Popen | None = None, base: str | None = None):
        self.host = host
        self._proc = proc
        self._base = base
        self.env = dict(os.environ, DOCKER_HOST=host)
        info = json.loads(self.run("info", "--format", "{{json .}}").stdout)
        self.data_root: str = info["DockerRootDir"]
        self.driver: str = info["Driver"]
        self.version: str = info["ServerVersion"]

    def run(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``docker ARGS`` against this daemon (text output unless *input* is bytes)."""
        return subprocess.run(
            ["docker", *args], env=self.env, input=input, capture_output=True,
            check=check, text=input is None,
        )

    def import_rootfs(self, root: str, tag: str) -> str:
        """``docker import`` the tree at *root* as *tag*; returns the image id."""
        with tempfile.NamedTemporaryFile(suffix=".tar") as t:
            with tarfile.open(fileobj=t, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for name in sorted(os.listdir(root)):
                    tf.add(os.path.join(root, name), arcname=name)
            t.flush()
            return self.run("import", t.name, tag).stdout.strip()

    def build(self, dockerfile: str, tag: str, files: dict[str, bytes] | None = None) -> str:
        """``docker build --network none`` of *dockerfile* (context: *files*); returns the image id."""
        with tempfile.TemporaryDirectory() as ctx:
            with open(os.path.join(ctx, "Dockerfile"), "w") as f:
                f.write(dockerfile)
            for name, data in (files or {}).items():
                path = os.path.join(ctx, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            self.run("build", "--network", "none", "-q", "-t", tag, ctx)
        return self.run("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()

    def inspect(self, ref: str) -> dict:
        return json.loads(self.run("image", "inspect", ref).stdout)[0]

    def layer_diff_dirs(self, ref: str) -> list[str]:
        """The overlay2 ``diff`` dirs of image *ref*, top layer first (as GraphDriver reports them)."""
        data = self.inspect(ref)["GraphDriver"]["Data"]
        dirs = [data["UpperDir"]]
        if data.get("LowerDir"):
            dirs += data["LowerDir"].split(":")
        return dirs

    def save(self, ref: str, out: str) -> str:
        """``docker save REF -o OUT``; returns *out*."""
        self.run("save", "-o", out, ref)
        return out

    def close(self) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        if self._base:
            subprocess.run(["umount", "-R", "-l", self._base], capture_output=True)
            shutil.rmtree(self._base, ignore_errors=True)


def start_docker() -> Docker:
    """Connect to ``$OVERLAYFS_DOCKER_HOST`` or start a private dockerd (skip/fail if impossible)."""
    host = os.environ.get("OVERLAYFS_DOCKER_HOST")
    if host:
        return Docker(host)
    require_tool("docker")
    dockerd = require_tool("dockerd")
    base = tempfile.mkdtemp(prefix="ovl-dockerd-", dir="/var/tmp")
    host = "unix://" + os.path.join(base, "docker.sock")
    log = open(os.path.join(base, "dockerd.log"), "wb")
    proc = subprocess.Popen(
        [dockerd, "--host", host, "--data-root", os.path.join(base, "root"),
         "--exec-root", os.path.join(base, "exec"), "--pidfile", os.path.join(base, "docker.pid"),
         "--iptables=false", "--bridge=none", "--storage-driver", "overlay2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        ok = subprocess.run(["docker", "version"], env=dict(os.environ, DOCKER_HOST=host),
                            capture_output=True)
        if ok.returncode == 0:
            return Docker(host, proc, base)
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    with open(os.path.join(base, "dockerd.log"), "rb") as f:
        tail = f.read()[-800:].decode(errors="replace")
    shutil.rmtree(base, ignore_errors=True)
    kernel.skip_or_fail("dockerd did not start: " + tail)
    raise AssertionError("unreachable")


class Podman:
    """A podman with a private store: ``run(*args)`` is ``podman ARGS`` on its own root,
    runroot and tmpdir (overlay driver, cgroupfs, file events), so nothing of the host's
    containers-storage is read or changed.  ``close()`` removes everything."""

    def __init__(self, base: str):
        self.podman = require_tool("podman")
        self.base = base
        self.root = os.path.join(base, "root")
        self.global_args = [
            "--root", self.root, "--runroot", os.path.join(base, "run"),
            "--tmpdir", os.path.join(base, "tmp"), "--storage-driver", "overlay",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        ]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``podman ARGS`` on the private store (text output)."""
        res = subprocess.run([self.podman, *self.global_args, *args], capture_output=True,
                             text=True)
        if check and res.returncode != 0:
            raise AssertionError("podman %s failed (%d): %s"
                                 % (" ".join(args), res.returncode, res.stderr.strip()[-800:]))
        return res

    def import_rootfs(self, root: str, tag: str) -> str:
        """``podman import`` the tree at *root* as *tag*; returns the image id."""
        with tempfile.NamedTemporaryFile(suffix=".tar") as t:
            with tarfile.open(fileobj=t, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for name in sorted(os.listdir(root)):
                    tf.add(os.path.join(root, name), arcname=name)
            t.flush()
            self.run("import", t.name, tag)
        return self.run("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()

    def inspect(self, ref: str) -> dict:
        return json.loads(self.run("inspect", ref).stdout)[0]

    def close(self) -> None:
        self.run("rm", "-a", "-f", check=False)
        self.run("rmi", "-a", "-f", check=False)
        subprocess.run(["umount", "-R", "-l", self.base], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def start_podman(base: str | None = None) -> Podman:
    """A :class:`Podman` over a fresh private store (skip/fail where podman is missing)."""
    require_tool("podman")
    if base is None:
        base = tempfile.mkdtemp(prefix="ovl-podman-", dir="/var/tmp")
    pm = Podman(base)
    res = pm.run("info", "--format", "{{.Store.GraphDriverName}}", check=False)
    if res.returncode != 0 or res.stdout.strip() != "overlay":
        pm.close()
        kernel.skip_or_fail("podman with the overlay driver does not work here: "
                            + (res.stderr.strip()[-400:] or res.stdout.strip()))
    return pm
