"""The command line end to end, as a user types it: ``python -m overlayfs VERB ...`` in a
subprocess (exit statuses, stdout, one-line stderr, JSON parsed), compared with the real
things where they exist: GNU ls/find/du/stat/cat/readlink and os.lstat over a kernel
overlay mount of the same layers, ``docker diff`` of a real container."""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import stat
import subprocess
import sys
import tarfile
import time
from typing import Any

import cli_oracle
import kernel
import pytest

PY = [sys.executable, "-m", "overlayfs"]
VERBS = ["ls", "stat", "cat", "readlink", "tree", "find", "du", "which", "changes", "diff", "export",
         "squash", "apply", "layers", "diffid", "unpack", "mount", "umount", "check", "demo"]


def run(*args: Any, input: bytes | None = None, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([*PY, *map(str, args)], input=input, capture_output=True, **kw)


def ok(*args: Any, input: bytes | None = None) -> str:
    p = run(*args, input=input)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stderr == b"", p.stderr.decode()
    return p.stdout.decode()


def ok_json(*args: Any) -> Any:
    return json.loads(ok(*args, "--json"))


def fail(*args: Any, rc: int = 1, input: bytes | None = None) -> str:
    p = run(*args, input=input)
    err = p.stderr.decode()
    assert p.returncode == rc, (p.returncode, err, p.stdout[:200])
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    verb = str(args[0])
    assert err.startswith(f"overlayfs {verb}: error: ") or err.startswith("overlayfs: error: "), err
    return err


@pytest.fixture(scope="module")
def demo(tmp_path_factory: Any) -> dict:
    root = tmp_path_factory.mktemp("cli") / "demo"
    p = run("demo", root, "--json")
    assert p.returncode == 0, p.stderr.decode()
    info = json.loads(p.stdout)
    assert info["target"] == str(root / "container")
    return info


# --- the dispatcher ----------------------------------------------------------------------

def test_help_lists_every_verb_grouped() -> None:
    text = ok("--help")
    for group in ("inspect:", "layers & images:", "mount:", "misc:"):
        assert group in text
    for verb in VERBS:
        assert f"\n  {verb} " in text
        out = ok(verb, "--help")
        assert "example:\n  overlayfs " + verb in out, verb
    p = run()
    assert p.returncode == 2 and b"inspect:" in p.stdout
    p = run("frobnicate")
    assert p.returncode == 2 and p.stderr.decode().count("\n") == 1 and b"unknown verb" in p.stderr


def test_python_m_and_console_script_agree(demo: dict) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "overlayfs")
    if not os.path.exists(exe):
        kernel.skip_or_fail("no overlayfs console script next to the interpreter")
    p = subprocess.run([exe, "ls", demo["target"]], capture_output=True, check=True)
    assert p.stdout.decode() == ok("ls", demo["target"])


def test_usage_errors_exit_2(demo: dict) -> None:
    fail("ls", "--bogus", demo["target"], rc=2)
    fail("ls", rc=2)  # no target
    fail("ls", "nosuch:thing", rc=2)  # bad prefix
    fail("stat", demo["target"], rc=2)  # no PATH
    fail("find", demo["target"], "-type", "x", rc=2)
    fail("find", demo["target"], "-perm", "rwx", rc=2)
    fail("ls", "--work", demo["root"], demo["target"], rc=2)


def test_bad_targets_and_paths(demo: dict, tmp_path: Any) -> None:
    t = demo["target"]
    err = fail("ls", tmp_path / "missing")
    assert "No such file or directory" in err and str(tmp_path / "missing") in err
    (tmp_path / "file").write_text("x")
    assert "Not a directory" in fail("tree", tmp_path / "file")
    assert "No such file or directory" in fail("cat", t, "/etc/nope")
    assert fail("cat", t, "/etc/nope").strip().endswith("/etc/nope: No such file or directory")
    assert "Is a directory" in fail("cat", t, "/etc")
    assert "Invalid argument" in fail("readlink", t, "/etc/motd")
    assert "No such file" in fail("stat", t, "/usr/share/doc/README")  # whited out
    fail("ls", "docker:nope", "--docker-root", tmp_path / "no-docker")
    os.makedirs(tmp_path / "docker" / "containers")
    err = fail("ls", "docker:nope", "--docker-root", tmp_path / "docker")
    assert "nope" in err
    fail("ls", "podman:nope", "--podman-root", tmp_path / "no-podman")
    fail("ls", f"oci:{tmp_path / 'nope'}")
    fail("diff", tmp_path / "nope", "-o", tmp_path / "x.tar")


# --- inspection verbs against GNU tools over a kernel mount ---------------------------------

_FINDS = {"f": ["-type", "f"], "d": ["-type", "d"], "l": ["-type", "l"], "c": ["-type", "c"],
          "p": ["-type", "p"], "s": ["-type", "s"], "ini": ["-name", "*.ini"],
          "sticky": ["-perm", "-1000"], "p644": ["-perm", "644"], "anyx": ["-perm", "/111"],
          "fl": ["-type", "f,l"]}
_OURS = {"f": ["-type", "f"], "d": ["-type", "d"], "l": ["-type", "l"], "c": ["-type", "c"],
         "p": ["-type", "p"], "s": ["-type", "s"], "ini": ["-name", "*.ini"],
         "sticky": ["-perm", "-1000"], "p644": ["-perm", "644"], "anyx": ["-perm", "/111"],
         "fl": ["-type", "f,l"]}
_DIRS = ["/", "/etc", "/bin", "/app/config", "/usr/share/doc", "/run"]
_GNU_TYPE = {"file": "regular file", "dir": "directory", "symlink": "symbolic link",
             "char": "character special file", "block": "block special file", "fifo": "fifo",
             "socket": "socket"}


def _layouts(demo: dict, tmp_path_factory: Any) -> list[tuple[str, list[str], dict]]:
    layers = demo["layers"]
    work = str(tmp_path_factory.mktemp("work"))
    # the writable mount first: it may set overlay xattrs on the upper's dirs, which
    # tmpfs counts in their st_blocks (du), so every view is taken after it
    return [
        ("--upper/--work/--lower", ["--upper", layers[0], "--work", work, "--lower", layers[1],
                                    "--lower", layers[2]],
         {"lowers": layers[1:], "upper": layers[0], "work": work}),
        ("overlay2 layer dir", [demo["target"]], {"lowers": layers}),
    ]


@pytest.fixture(scope="module")
def oracle(demo: dict, tmp_path_factory: Any) -> list[tuple[str, list[str], dict]]:
    kernel.skip_unless_mountable()
    out = []
    for name, target, mount in _layouts(demo, tmp_path_factory):
        args = {"dirs": _DIRS, "finds": _FINDS, "stat": ["/etc/motd", "/dev/null", "/bin/sh",
                                                          "/run/app.fifo", "/tmp"]}
        view = kernel.run_in_mount(cli_oracle.gnu_view, args, mount["lowers"], mount.get("upper"),
                                   mount.get("work"), chroot=False)
        out.append((name, target, view))
    return out


def _split(target: list[str], *paths: str) -> list[str]:
    """TARGET then PATHs, or with options: the options then the paths."""
    return [*target, *paths]


def test_ls_matches_gnu_ls(oracle: list) -> None:
    for _name, target, view in oracle:
        for d in _DIRS:
            assert ok("ls", *_split(target, d)).splitlines() == view["ls"][d], d
            assert ok("ls", "-a", *_split(target, d)).splitlines() == view["ls_a"][d], d
        ours = [line.split() for line in ok("ls", "-l", *_split(target, "/etc")).splitlines()]
        gnu = [line.split() for line in view["ls_l"]]
        assert ours == gnu
        recs = ok_json("ls", *_split(target, "/etc"))
        assert [r["name"] for r in recs] == view["ls"]["/etc"]


def test_stat_and_ls_json_match_lstat(oracle: list) -> None:
    for name, target, view in oracle:
        paths = sorted(view["stat"])
        recs = ok_json("stat", *_split(target, *paths))
        assert [r["path"] for r in recs] == paths
        for rec in recs:
            want = view["stat"][rec["path"]]
            assert rec["mode"] == want["mode"] and rec["uid"] == want["uid"], (name, rec)
            assert rec["gid"] == want["gid"] and rec["mtime_ns"] == want["mtime_ns"], (name, rec)
            assert stat.S_IFMT(_fmt(rec["type"])) == want["fmt"], (name, rec)
            if rec["type"] != "dir":
                assert rec["size"] == want["size"] and rec["nlink"] == want["nlink"], (name, rec)
            if rec["type"] in ("char", "block"):
                assert os.makedev(rec["major"], rec["minor"]) == want["rdev"]
        for p, line in view["gnu_stat"].items():
            (rec,) = ok_json("stat", *_split(target, p))
            size, mode, uid, gid, *kind, major, minor = line.split()
            assert _GNU_TYPE[rec["type"]] == " ".join(kind), (p, line)
            assert (rec["mode"], rec["uid"], rec["gid"]) == (int(mode, 8), int(uid), int(gid))
            if rec["type"] != "dir":
                assert rec["size"] == int(size)
            if rec["type"] == "char":
                assert (rec["major"], rec["minor"]) == (int(major, 16), int(minor, 16))


def _fmt(kind: str) -> int:
    return {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR,
            "block": stat.S_IFBLK, "fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK}[kind]


def test_find_matches_gnu_find(oracle: list) -> None:
    for name, target, view in oracle:
        for key, expr in _OURS.items():
            got = sorted(ok("find", *_split(target, "/"), *expr).splitlines())
            assert got == view["find"][key], (name, key)
        recs = ok_json("find", *_split(target, "/etc"), "-type", "f")
        assert {r["path"] for r in recs} == {p for p in view["find"]["f"] if p.startswith("/etc/")}


def test_du_matches_gnu_du(oracle: list) -> None:
    for name, target, view in oracle:
        got = [line.split("\t") for line in ok("du", *_split(target, "/")).splitlines()]
        assert {p: s for s, p in got} == {p: s for s, p in view["du"]}, name
        (line,) = ok("du", "-s", *_split(target, "/")).splitlines()
        assert line == f"{view['du_s']}\t/"
        (line,) = ok("du", "-s", "-h", *_split(target, "/")).splitlines()
        assert line == f"{view['du_sh']}\t/"


def test_cat_and_readlink_match_the_mount(oracle: list) -> None:
    for name, target, view in oracle:
        files = sorted(view["cat"])
        assert ok("cat", *_split(target, *files)) == "".join(view["cat"][f] for f in files), name
        recs = ok_json("cat", *_split(target, *files))
        assert {r["path"]: r["text"] for r in recs} == view["cat"]
        for link, want in view["readlink"].items():
            assert ok("readlink", *_split(target, link)) == want + "\n"


def test_tree_types(demo: dict) -> None:
    text = ok("tree", demo["target"])
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert "char 1:3" in lines["null"] and "from lower3" in lines["null"]
    assert "fifo" in lines["app.fifo"] and "socket" in lines["app.sock"]
    assert "symlink -> busybox" in lines["sh"] and "file 23 B" in lines["busybox"]
    assert "README" not in lines and "legacy.ini" not in lines  # whited out; opaque dir
    recs = ok_json("tree", demo["target"], "/app", "--depth", "1")
    assert [(r["path"], r["depth"], r["layer"]) for r in recs] == [("/app/config", 0, 2),
                                                                    ("/app/server.py", 0, 2)]
    recs = ok_json("tree", demo["target"])
    assert {r["path"]: r["type"] for r in recs}["/dev/null"] == "char"


def test_which(demo: dict) -> None:
    t = demo["target"]
    c, a, b = demo["layers"]
    (rec,) = ok_json("which", t, "/etc/motd")
    assert rec["exists"] and rec["layer"] == 1 and rec["layer_dir"] == c
    assert [(la["dir"], la["state"]) for la in rec["layers"]] == [(c, "supplies"), (a, "hidden"),
                                                                  (b, "hidden")]
    for la in rec["layers"]:
        assert os.path.isfile(la["host_path"])  # every layer named has it (per-layer lstat)
    (rec,) = ok_json("which", t, "/app/config")
    assert [(la["dir"], la["state"], la["opaque"]) for la in rec["layers"]] == \
        [(a, "supplies", True), (b, "hidden", False)]
    (rec,) = ok_json("which", t, "/etc")
    assert [la["state"] for la in rec["layers"]] == ["supplies", "merged", "merged"]
    p = run("which", t, "/usr/share/doc/README", "--json")
    assert p.returncode == 1
    (rec,) = json.loads(p.stdout)
    assert not rec["exists"] and [la["type"] for la in rec["layers"]] == ["whiteout", "file"]
    assert ok("which", t, "/bin/sh").startswith(f"/bin/sh: symlink from lower3 {b}\n")
    fail("which", t, "/nope")


def test_changes_and_diff_list(demo: dict) -> None:
    want = ["C /etc", "C /etc/motd", "C /usr", "C /usr/share", "C /usr/share/doc",
            "D /usr/share/doc/README", "C /var", "C /var/log", "A /var/log/app.log"]
    assert ok("changes", demo["target"]).splitlines() == want
    assert ok("diff", demo["target"]).splitlines() == want
    c, a, b = demo["layers"]
    assert ok("changes", f"{c}:{a}:{b}").splitlines() == want
    assert ok("changes", c, a, b).splitlines() == want
    assert ok("diff", c, "--lower", a, "--lower", b).splitlines() == want
    recs = ok_json("changes", "--upper", c, "--lower", a, "--lower", b)
    assert recs[5] == {"kind": "deleted", "op": "D", "path": "/usr/share/doc/README", "opaque": False}
    app = ok_json("changes", a, b)
    assert {"kind": "added", "op": "A", "path": "/app/config/app.ini", "opaque": False} in app
    assert {"kind": "changed", "op": "C", "path": "/app/config", "opaque": True} in app


# --- stdin, stdout, pipes, terminals, signals --------------------------------------------

def test_tars_through_stdin_and_stdout(demo: dict, tmp_path: Any) -> None:
    t = demo["target"]
    p = run("diff", t, "-o", "-", "--json")
    assert p.returncode == 0
    summary = json.loads(p.stderr)
    names = tarfile.open(fileobj=io.BytesIO(p.stdout)).getnames()
    assert "usr/share/doc/.wh.README" in names and summary["size"] == len(p.stdout)
    assert ok("diffid", "-", input=p.stdout).strip() == summary["diff_id"]
    assert ok_json("diffid", "-")[0]["diff_id"] == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    out = ok("apply", "-", tmp_path / "applied", "--no-sync", input=p.stdout)
    assert out.strip() == summary["diff_id"]
    assert os.stat(tmp_path / "applied/usr/share/doc/README").st_rdev == 0
    p = run("export", t, "-o", "-")
    names = tarfile.open(fileobj=io.BytesIO(p.stdout)).getnames()
    assert "etc/motd" in names and "usr/share/doc/README" not in names and "app/config/legacy.ini" not in names
    p = run("squash", *demo["layers"][:2], "--below", demo["layers"][2], "-o", "-")
    assert p.returncode == 0 and tarfile.open(fileobj=io.BytesIO(p.stdout)).getnames()


def _on_a_terminal(args: list[str]) -> tuple[int, bytes, bytes]:
    master, slave = pty.openpty()
    try:
        p = subprocess.run([*PY, *args], stdout=slave, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(slave)
    data = b""
    try:
        while True:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    os.close(master)
    return p.returncode, data, p.stderr


def test_refuses_a_tar_on_a_terminal(demo: dict) -> None:
    for verb in ("export", "diff"):
        rc, out, err = _on_a_terminal([verb, demo["target"], "-o", "-"])
        assert rc == 1 and b"terminal" in err and err.count(b"\n") == 1 and b"ustar" not in out


def test_head_closes_the_pipe_without_a_traceback(tmp_path: Any) -> None:
    layer = tmp_path / "big"
    (layer / "d").mkdir(parents=True)
    (layer / "blob").write_bytes(b"x" * (8 << 20))
    for i in range(3000):
        (layer / "d" / f"f{i:05d}").write_text("")
    for cmd in (f"cat {layer} /blob | head -c 10", f"find {layer} | head -1",
                f"ls {layer} /d | head -1", f"export {layer} -o - | head -c 10",
                f"tree {layer} | head -1"):
        p = subprocess.run(f"{sys.executable} -m overlayfs {cmd}; echo rc=$?", shell=True,
                           capture_output=True)
        assert p.stderr == b"", (cmd, p.stderr.decode())


def _reading_stdin(pid: int) -> bool:
    """Is a thread of ``pid`` blocked in read(0, ...)? (x86-64 and arm64 syscall numbers)"""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
        except OSError:
            continue
        if len(fields) > 1 and fields[0] in ("0", "63") and int(fields[1], 16) == 0:
            return True
    return False


def test_ctrl_c_exits_130_with_one_line() -> None:
    # SIGINT as a terminal's Ctrl-C gives it: default disposition in the child (a
    # background shell job, as CI may run us, starts with SIGINT ignored)
    p = subprocess.Popen([*PY, "diffid", "-"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdout=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _reading_stdin(p.pid):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and err.decode().strip() == "overlayfs diffid: interrupted"


# --- images as targets -----------------------------------------------------------------------

def test_oci_image_target(demo: dict, tmp_path: Any) -> None:
    from overlayfs import write_oci_layout

    tars = []
    for n, layer in enumerate(reversed(demo["layers"])):  # bottom first
        out = tmp_path / f"l{n}.tar"
        p = run("diff", layer, "-o", out)
        assert p.returncode == 0, p.stderr
        tars.append(str(out))
    write_oci_layout(tmp_path / "img", tars, ref="v1")
    spec = f"oci:{tmp_path / 'img'}:v1"
    assert ok("cat", spec, "/etc/motd") == ok("cat", demo["target"], "/etc/motd")
    # a layer tar holds no sockets (tar(1) skips them too)
    assert ok("find", spec, "/") == ok("find", demo["target"], "/").replace("/run/app.sock\n", "")
    assert ok("changes", spec) == ok("changes", demo["target"])
    p = run("export", spec, "-o", "-")
    q = run("export", demo["target"], "-o", "-")
    assert sorted(tarfile.open(fileobj=io.BytesIO(p.stdout)).getnames()) == \
        sorted(tarfile.open(fileobj=io.BytesIO(q.stdout)).getnames())
    assert not [n for n in os.listdir("/tmp") if n.startswith("overlayfs-image-")
                and os.path.getmtime(os.path.join("/tmp", n)) > time.time() - 60]
    layers = ok_json("layers", spec)["layers"]
    assert len(layers) == 3
    fail("ls", f"oci:{tmp_path / 'img'}:nope")
    fail("mount", spec, tmp_path / "mnt")


# --- mount and umount ------------------------------------------------------------------------

def test_mount_and_umount(demo: dict, tmp_path: Any, mountable: None) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"set -e; {sys.executable} -m overlayfs mount {demo['target']} {mnt} --json; "
              f"cat {mnt}/etc/motd; ls {mnt}/usr/share/doc | wc -l; "
              f"{sys.executable} -m overlayfs umount {mnt}; ls {mnt} | wc -l")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    info, rest = p.stdout.split("}\n", 1)
    assert json.loads(info + "}")["mountpoint"] == str(mnt)
    assert rest.splitlines() == [ok("cat", demo["target"], "/etc/motd").strip(), "0", "0"]
    fail("umount", tmp_path)


# --- a real Docker container -------------------------------------------------------------------

def test_docker_container_target(dockerd: Any, busybox_image: str) -> None:
    name = "ovlcli-ran"
    dockerd.run("rm", "-f", name, check=False)
    dockerd.run("run", "--network", "none", "--name", name, busybox_image, "sh", "-c",
                "echo hi > /etc/motd; rm /etc/group; mkdir -p /srv/x; echo y > /srv/x/y; "
                "touch /.wh.real; rm -r /usr 2>/dev/null || true")
    try:
        root = ["--docker-root", dockerd.data_root]
        want = sorted(dockerd.run("diff", name).stdout.splitlines())
        got = sorted(ok("changes", f"docker:{name}", *root).splitlines())
        assert got == want
        assert sorted(ok("diff", f"docker:{name}", *root).splitlines()) == want
        cid = dockerd.run("inspect", "-f", "{{.Id}}", name).stdout.strip()
        assert ok("cat", f"docker:{cid[:12]}", *root, "/etc/motd") == "hi\n"
        assert ".wh.real" in ok("ls", "-a", f"docker:{name}", *root, "/").split()
        fail("stat", f"docker:{name}", *root, "/etc/group")
        exported = run("export", f"docker:{name}", *root, "-o", "-").stdout
        theirs = dockerd.run("export", name, input=b"").stdout
        ours_names = {n.rstrip("/") for n in tarfile.open(fileobj=io.BytesIO(exported)).getnames()}
        their_names = {n.rstrip("/") for n in tarfile.open(fileobj=io.BytesIO(theirs)).getnames()}
        # docker export adds the container's runtime files (/.dockerenv, /etc/hosts...)
        assert ours_names <= their_names and their_names - ours_names <= {
            ".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab", "dev",
            "dev/console", "dev/pts", "dev/shm", "proc", "sys"}
        img = ok("ls", f"docker-image:{busybox_image}", *root, "/bin")
        assert "busybox" in img.split()
        fail("ls", "docker:no-such-container", *root)
        fail("ls", f"docker:{name}", "--whiteouts", "oci", *root, rc=2)
    finally:
        dockerd.run("rm", "-f", name, check=False)


# --- podman ----------------------------------------------------------------------------------

def test_podman_container_target(podman: Any, tmp_path: Any) -> None:
    import peers

    root = peers.busybox_rootfs(str(tmp_path / "rootfs"))
    podman.import_rootfs(root, "localhost/ovlcli-bb:1")
    podman.run("create", "--network", "none", "--name", "pm-cli", "localhost/ovlcli-bb:1", "true")
    try:
        mnt = podman.run("mount", "pm-cli").stdout.strip()
        try:
            subprocess.run(["sh", "-c", "echo hi > $M/hello; rm $M/etc/group; mkdir $M/srv"],
                           env=dict(os.environ, M=mnt), check=True)
        finally:
            podman.run("umount", "pm-cli")
        opts = ["--podman-root", podman.root]
        want = sorted(podman.run("diff", "pm-cli").stdout.splitlines())
        assert sorted(ok("changes", "podman:pm-cli", *opts).splitlines()) == want
        assert ok("cat", "podman:pm-cli", *opts, "/hello") == "hi\n"
        assert "busybox" in ok("ls", "podman-image:ovlcli-bb:1", *opts, "/bin").split()
        (rec,) = ok_json("which", "podman:pm-cli", *opts, "/etc/passwd")
        assert rec["exists"] and rec["layer"] == 2  # the image layer, under the container's
        fail("ls", "podman:no-such", *opts)
    finally:
        podman.run("rm", "-f", "pm-cli", check=False)
        podman.run("rmi", "-f", "localhost/ovlcli-bb:1", check=False)


def _run_on_a_terminal(*args: Any) -> tuple[subprocess.CompletedProcess, bytes]:
    """Run the CLI with stderr on a pseudo-terminal; return it and what the terminal showed."""
    master, slave = pty.openpty()
    try:
        p = subprocess.run([*PY, *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                           timeout=60)
    finally:
        os.close(slave)
    shown = b""
    try:
        while chunk := os.read(master, 65536):
            shown += chunk
    except OSError:
        pass
    os.close(master)
    return p, shown


def test_progress_only_on_a_terminal(tmp_path: Any) -> None:
    blob = tmp_path / "layer.tar"
    with tarfile.open(blob, "w") as tf:
        info = tarfile.TarInfo("big")
        info.size = 24 << 20
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    p, shown = _run_on_a_terminal("diffid", blob)
    assert p.returncode == 0 and p.stdout.startswith(b"sha256:")
    assert b"layer.tar: " in shown and b"25.2 / 25.2 MB (100%)" in shown
    assert run("diffid", blob).stderr == b""  # not a terminal: nothing
    # writing tars: diff -o, export, squash count the tar's bytes as they go out
    layer = tmp_path / "layer"
    layer.mkdir()
    with open(layer / "big", "wb") as f:
        f.truncate(24 << 20)
    for verb in (["diff", layer, "-o"], ["export", layer, "-o"], ["squash", layer, "-o"]):
        out = tmp_path / "out.tar"
        p, shown = _run_on_a_terminal(*verb, out)
        assert p.returncode == 0, p
        assert b"\r" in shown and b": 25.2 MB" in shown, (verb[0], shown)
        assert run(*verb, out).stderr == b""  # not a terminal: nothing


def test_undecodable_names_print_as_their_bytes(tmp_path: Any) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    open(os.path.join(os.fsencode(layer), b"bad\xff"), "w").close()
    for env in ({"LC_ALL": "C.UTF-8"}, {"LC_ALL": "C"}):
        p = run("ls", layer, env=dict(os.environ, **env))
        assert p.returncode == 0 and p.stdout == b"bad\xff\n", (env, p.stderr)
        p = run("find", layer, "-type", "f", env=dict(os.environ, **env))
        assert p.returncode == 0 and p.stdout == b"/bad\xff\n"
