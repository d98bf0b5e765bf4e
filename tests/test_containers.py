"""overlayfs.containers: containers' and images' layers found in stores laid out by the real
engines (a private dockerd, a podman on a private root), compared with a kernel mount of
the same dirs and with what the engines themselves export."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile

import kernel
import peers
import pytest

import overlayfs
from overlayfs import containers

# What the image build and the containers change, in the shell of the busybox rootfs.
BUILD = """FROM {base}
RUN mkdir -p /opq/old /keep && echo a > /opq/old/f && echo k > /keep/k && echo hi > /hello \\
 && ln -s /hello /link && rm /etc/group
RUN rm -rf /opq && mkdir /opq && echo new > /opq/n && echo L2 > /layer2
"""
CHANGES = (
    "echo x > /new && rm /hello && rm -rf /keep && mkdir /keep && echo K > /keep/K"
    " && touch /.wh.x /etc/.wh..wh..opq && chmod 600 /layer2 && mkdir -p /d/e"
    " && ln -s ../new /d/rel && mkfifo /fifo && echo more >> /etc/passwd"
)
# The same changes through a mounted podman rootfs (busybox applets on the host: sh -c).
PODMAN_CHANGES = CHANGES.replace(" /", " $M/")


def _tar_tree(data: bytes) -> dict[str, tuple]:
    """{path: (type, mode, uid, gid, size, digest-or-target)} of a tar stream."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            name = m.name.removeprefix("./").rstrip("/")
            if not name or name == ".":
                continue
            if m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                extra: object = hashlib.sha256(f.read()).hexdigest()
                kind = "reg"
            elif m.isdir():
                kind, extra = "dir", None
            elif m.issym():
                kind, extra = "lnk", m.linkname
            elif m.isfifo():
                kind, extra = "fifo", None
            else:
                kind, extra = "other", None
            out[name] = (kind, stat.S_IMODE(m.mode), m.uid, m.gid,
                         m.size if kind == "reg" else 0, extra)
    return out


def _stack_tree(st: overlayfs.Stack) -> dict[str, tuple]:
    """The same record for every path of a Stack's merged tree."""
    out = {}
    for dirpath, dirs, files in st.walk():
        for name in dirs + files:
            path = f"{dirpath}/{name}" if dirpath else name
            s = st.lstat(path)
            extra: object = None
            if stat.S_ISREG(s.st_mode):
                kind = "reg"
                with st.open(path) as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISDIR(s.st_mode):
                kind = "dir"
            elif stat.S_ISLNK(s.st_mode):
                kind, extra = "lnk", st.readlink(path)
            elif stat.S_ISFIFO(s.st_mode):
                kind = "fifo"
            else:
                kind = "other"
            out[path] = (kind, stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid,
                         s.st_size if kind == "reg" else 0, extra)
    return out


def _assert_kernel_parity(target: containers.Target, tmp_path) -> None:
    """The read-only Stack of *target* equals a kernel mount of the same dirs (over an
    empty bottom layer where there is one layer: a read-only overlay needs two)."""
    layers = list(target.layers)
    if len(layers) == 1:
        layers.append(str(tmp_path / "empty"))
        os.makedirs(layers[-1])
        st = overlayfs.Stack(layers, xattr_namespace=target.xattr_namespace)
    else:
        st = target.stack()
    with st:
        view = kernel.stack_view(st)
    kernel.assert_views_equal(kernel.kernel_view(layers), view,
                              context=f"{target.kind}:{target.id[:12]}")


# --- Docker -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker_world(dockerd, busybox_image):
    """An image built on busybox, a container that ran CHANGES, and one only created."""
    image = "ovltest-ctr:1"
    dockerd.build(BUILD.format(base=busybox_image), image)
    dockerd.run("tag", image, "ovltest-ctr:latest")
    names = ["ovlctr-ran", "ovlctr-created"]
    for name in names:
        dockerd.run("rm", "-f", name, check=False)
    dockerd.run("run", "--network", "none", "--name", "ovlctr-ran", image, "sh", "-c", CHANGES)
    dockerd.run("create", "--network", "none", "--name", "ovlctr-created", image, "true")
    world = {"image": image, "root": dockerd.data_root,
             "ids": {n: dockerd.run("inspect", "-f", "{{.Id}}", n).stdout.strip() for n in names}}
    yield world
    for name in names:
        dockerd.run("rm", "-f", name, check=False)


def _graph_dirs(dockerd, ref: str) -> tuple[str, list[str], str | None]:
    d = json.loads(dockerd.run("inspect", "-f", "{{json .GraphDriver.Data}}", ref).stdout)
    return d["UpperDir"], d["LowerDir"].split(":") if d.get("LowerDir") else [], d.get("WorkDir")


def test_docker_container_by_name_id_and_prefix(dockerd, docker_world):
    root, cid = docker_world["root"], docker_world["ids"]["ovlctr-ran"]
    first = containers.resolve_target("docker:ovlctr-ran", root=root)
    assert first.kind == "docker" and first.id == cid and first.names == ("ovlctr-ran",)
    assert first.name == "ovlctr-ran"
    for spec in ("docker:/ovlctr-ran", f"docker:{cid}", f"docker:{cid[:12]}", f"docker:{cid[:5]}"):
        assert containers.resolve_target(spec, root=root) == first, spec
    upper, lowers, work = _graph_dirs(dockerd, "ovlctr-ran")
    assert first.upper == upper and list(first.lowers) == lowers and first.work == work
    assert first.image == dockerd.inspect(docker_world["image"])["Id"].removeprefix("sha256:")
    assert first.layers == (upper, *lowers)


def test_docker_container_matches_kernel_mount(docker_world, require_kernel, tmp_path):
    for name in docker_world["ids"]:
        target = containers.resolve_target(f"docker:{name}", root=docker_world["root"])
        _assert_kernel_parity(target, tmp_path / name)


def test_docker_container_matches_docker_export(dockerd, docker_world):
    """Every path, type, mode, owner, size and content docker export writes, the Stack has."""
    for name in docker_world["ids"]:
        exported = _tar_tree(dockerd.run("export", name, input=b"").stdout)
        with overlayfs.open_container(f"docker:{name}", root=docker_world["root"]) as st:
            tree = _stack_tree(st)
        assert tree == exported, name


def test_docker_container_changes_as_docker_shows_them(dockerd, docker_world):
    """The changes of the container, read in the kernel whiteout form: `.wh.x` is a file."""
    with overlayfs.open_container("docker:ovlctr-ran", root=docker_world["root"]) as st:
        assert st.isfile(".wh.x") and st.isfile("etc/.wh..wh..opq") and st.isfile("etc/passwd")
        assert not st.lexists("hello") and st.listdir("keep") == ["K"]
        assert sorted(st.listdir("opq")) == ["n"] and st.layer_of("new") == 1
        assert st.upper is None  # read-only: the container's upper is the top lower
        with st.open("new") as f:
            assert f.read() == b"x\n"
        cp = dockerd.run("cp", "ovlctr-ran:/etc/passwd", "-", input=b"").stdout
        with tarfile.open(fileobj=io.BytesIO(cp)) as tf:
            member = tf.extractfile("passwd")
            assert member is not None
            with st.open("etc/passwd") as f:
                assert f.read() == member.read()
    # docker diff reports the removal the upper's whiteout makes, and .wh.x as added.
    docker_diff = {line[2:].lstrip("/"): line[0]
                   for line in dockerd.run("diff", "ovlctr-ran").stdout.splitlines()}
    assert docker_diff["hello"] == "D" and docker_diff[".wh.x"] == "A"


def test_docker_whiteouts_are_kernel_only(docker_world):
    with pytest.raises(ValueError, match="kernel"):
        overlayfs.open_container("docker:ovlctr-ran", root=docker_world["root"], whiteouts="oci")


def test_docker_writable_container(dockerd, docker_world):
    """writable=True writes into a stopped container's upper; docker then sees the change."""
    with overlayfs.open_container("docker:ovlctr-created", root=docker_world["root"],
                                  writable=True) as st:
        with st.open("added", "w") as f:
            f.write("from overlayfs\n")
        st.unlink("layer2")
    out = dockerd.run("start", "-a", "ovlctr-created", check=False)
    assert out.returncode == 0, out.stderr
    exported = _tar_tree(dockerd.run("export", "ovlctr-created", input=b"").stdout)
    assert exported["added"][5] == hashlib.sha256(b"from overlayfs\n").hexdigest()
    assert "layer2" not in exported


def test_docker_running_container_is_read_live(dockerd, docker_world):
    name = "ovlctr-live"
    dockerd.run("rm", "-f", name, check=False)
    dockerd.run("run", "-d", "--network", "none", "--name", name, docker_world["image"],
                "sleep", "300")
    try:
        dockerd.run("exec", name, "sh", "-c", "echo live > /live && rm /layer2")
        with overlayfs.open_container(f"docker:{name}", root=docker_world["root"]) as st:
            assert not st.lexists("layer2")
            with st.open("live") as f:
                assert f.read() == b"live\n"
    finally:
        dockerd.run("rm", "-f", name, check=False)


def test_docker_image_refs(dockerd, docker_world):
    root, image = docker_world["root"], docker_world["image"]
    iid = dockerd.inspect(image)["Id"].removeprefix("sha256:")
    target = containers.resolve_target(f"docker-image:{image}", root=root)
    assert target.kind == "docker-image" and target.id == iid
    assert target.upper is None and target.work is None
    assert list(target.lowers) == dockerd.layer_diff_dirs(image)
    assert set(target.names) == {"ovltest-ctr:1", "ovltest-ctr:latest"}
    for ref in ("ovltest-ctr", "ovltest-ctr:latest", "docker.io/library/ovltest-ctr:1",
                iid, f"sha256:{iid}", iid[:12], f"sha256:{iid[:12]}"):
        assert containers.resolve_target(f"docker-image:{ref}", root=root) == target, ref
    base = containers.resolve_target("docker-image:ovltest-busybox:1", root=root)
    assert base.lowers == target.lowers[-1:]
    with pytest.raises(ValueError, match="writable"):
        target.stack(writable=True)


def test_docker_image_matches_kernel_mount(docker_world, require_kernel, tmp_path):
    _assert_kernel_parity(containers.resolve_target(f"docker-image:{docker_world['image']}",
                                                    root=docker_world["root"]), tmp_path)


def test_docker_missing_and_ambiguous(dockerd, docker_world):
    root = docker_world["root"]
    for spec in ("docker:no-such-container", "docker:ffffffffffffz", "docker-image:nope:1",
                 "docker-image:ovltest-ctr:2"):
        with pytest.raises(FileNotFoundError) as info:
            containers.resolve_target(spec, root=root)
        assert info.value.errno == errno.ENOENT and info.value.filename == spec
    # Create containers until two ids share a first hex digit (17 at most).
    made: list[str] = []
    try:
        while True:
            cid = dockerd.run("create", "--network", "none", docker_world["image"], "true").stdout.strip()
            made.append(cid)
            firsts = [m[0] for m in made]
            if len(set(firsts)) < len(firsts):
                break
        prefix = next(c for c in firsts if firsts.count(c) > 1)
        with pytest.raises(ValueError, match="ambiguous"):
            containers.resolve_target(f"docker:{prefix}", root=root)
    finally:
        dockerd.run("rm", "-f", *made, check=False)


def test_docker_root_from_environment(docker_world, monkeypatch, tmp_path):
    monkeypatch.setenv(containers.DOCKER_ROOT_ENV, docker_world["root"])
    assert containers.resolve_target("docker:ovlctr-ran").id == docker_world["ids"]["ovlctr-ran"]
    with pytest.raises(FileNotFoundError):
        containers.resolve_target("docker:ovlctr-ran", root=tmp_path / "nothing")


def test_bad_specs():
    for spec in ("ovlctr-ran", "dock:x", "docker:", "oci:dir"):
        with pytest.raises(ValueError):
            containers.resolve_target(spec)


# --- podman -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def podman_world(podman, tmp_path_factory):
    """An imported busybox image, a container changed through `podman mount`, one untouched."""
    root = peers.busybox_rootfs(str(tmp_path_factory.mktemp("podman-rootfs")))
    iid = podman.import_rootfs(root, "localhost/ovltest-bb:1")
    podman.run("create", "--network", "none", "--name", "pm-changed", "localhost/ovltest-bb:1", "true")
    podman.run("create", "--network", "none", "--name", "pm-plain", "localhost/ovltest-bb:1", "true")
    mnt = podman.run("mount", "pm-changed").stdout.strip()
    try:
        script = ("mkdir -p $M/opq/old $M/keep && echo k > $M/keep/k && echo hi > $M/hello && "
                  "echo L2 > $M/layer2 && " + PODMAN_CHANGES)
        res = subprocess.run(["sh", "-c", script], env=dict(os.environ, M=mnt),
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    finally:
        podman.run("umount", "pm-changed")
    ids = {n: podman.inspect(n)["Id"] for n in ("pm-changed", "pm-plain")}
    return {"root": podman.root, "image": iid, "ids": ids}


def test_podman_container_by_name_id_and_prefix(podman, podman_world):
    root, cid = podman_world["root"], podman_world["ids"]["pm-changed"]
    first = containers.resolve_target("podman:pm-changed", root=root)
    assert first.kind == "podman" and first.id == cid and first.names == ("pm-changed",)
    for spec in (f"podman:{cid}", f"podman:{cid[:12]}"):
        assert containers.resolve_target(spec, root=root) == first, spec
    data = podman.inspect("pm-changed")["GraphDriver"]["Data"]
    assert first.upper == data["UpperDir"] and first.work == data["WorkDir"]
    assert list(first.lowers) == data["LowerDir"].split(":")
    assert first.image == podman_world["image"]
    with overlayfs.open_container("podman:pm-changed", root=root) as st:
        assert st.isfile(".wh.x") and not st.lexists("hello") and st.listdir("keep") == ["K"]
        with st.open("new") as f:
            assert f.read() == b"x\n"


def test_podman_containers_match_kernel_mount(podman_world, require_kernel, tmp_path):
    for name in podman_world["ids"]:
        target = containers.resolve_target(f"podman:{name}", root=podman_world["root"])
        _assert_kernel_parity(target, tmp_path / name)


def test_podman_image_refs(podman, podman_world):
    root, iid = podman_world["root"], podman_world["image"]
    target = containers.resolve_target("podman-image:ovltest-bb:1", root=root)
    assert target.kind == "podman-image" and target.id == iid and target.upper is None
    assert target.names == ("localhost/ovltest-bb:1",)
    for spec in ("podman-image:localhost/ovltest-bb:1", f"podman-image:{iid[:10]}",
                 f"containers-storage:sha256:{iid}"):
        assert containers.resolve_target(spec, root=root) == target, spec
    plain = containers.resolve_target("podman:pm-plain", root=root)
    assert plain.lowers == target.lowers


def test_podman_image_matches_kernel_mount(podman_world, require_kernel, tmp_path):
    _assert_kernel_parity(containers.resolve_target("podman-image:ovltest-bb:1",
                                                    root=podman_world["root"]), tmp_path)


def test_podman_missing(podman_world, monkeypatch):
    for spec in ("podman:nope", "podman-image:nope", "podman-image:ovltest-bb:2"):
        with pytest.raises(FileNotFoundError) as info:
            containers.resolve_target(spec, root=podman_world["root"])
        assert info.value.errno == errno.ENOENT and info.value.filename == spec
    monkeypatch.setenv(containers.PODMAN_ROOT_ENV, podman_world["root"])
    assert containers.resolve_target("podman:pm-plain").id == podman_world["ids"]["pm-plain"]


def test_store_roots(monkeypatch, tmp_path):
    monkeypatch.delenv(containers.DOCKER_ROOT_ENV, raising=False)
    monkeypatch.delenv(containers.PODMAN_ROOT_ENV, raising=False)
    assert containers.docker_root(tmp_path) == str(tmp_path)
    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "overlay"\ngraphroot = "/srv/cs"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    if os.geteuid() == 0:
        assert containers.podman_root() == ("/srv/cs", False)
    monkeypatch.setenv(containers.PODMAN_ROOT_ENV, str(tmp_path))
    assert containers.podman_root() == (str(tmp_path), False)


def test_broken_stores_give_clear_errors(tmp_path):
    """Stores this module does not read, or damaged ones: ValueError/OSError, no KeyError."""
    cid = "ab" * 32
    cdir = tmp_path / "containers" / cid
    cdir.mkdir(parents=True)
    (cdir / "config.v2.json").write_text('{"ID": "%s", "Name": "/snap", "Driver": "overlayfs"}' % cid)
    with pytest.raises(ValueError, match="overlay2"):
        containers.resolve_target("docker:snap", root=tmp_path)
    (cdir / "config.v2.json").write_text('{"ID": "%s", "Name": "/snap", "Driver": "overlay2"}' % cid)
    (tmp_path / "overlay2" / "l").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="mount-id"):
        containers.resolve_target("docker:ab", root=tmp_path)
    (tmp_path / "image" / "overlay2").mkdir(parents=True)
    (tmp_path / "image" / "overlay2" / "repositories.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        containers.resolve_target("docker-image:x", root=tmp_path)
    content = tmp_path / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    content.mkdir(parents=True)
    (content / cid).write_text('{"rootfs": []}')
    (tmp_path / "image" / "overlay2" / "repositories.json").write_text('{"Repositories": []}')
    with pytest.raises(ValueError, match="diff_ids"):
        containers.resolve_target(f"docker-image:{cid[:6]}", root=tmp_path)
    (tmp_path / "overlay-containers").mkdir()
    (tmp_path / "overlay-containers" / "containers.json").write_text(
        '[{"id": "%s", "names": ["p"], "layer": "nolayer"}, {"names": ["no id"]}, 3]' % cid)
    with pytest.raises(ValueError, match="overlay/ layer store"):
        containers.resolve_target("podman:p", root=tmp_path)
    (tmp_path / "overlay" / "l").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nolayer"):
        containers.resolve_target("podman:p", root=tmp_path)


def test_rootless_podman_root(monkeypatch, tmp_path):
    """Not as root: ~/.local/share/containers/storage ($XDG_DATA_HOME), read with user xattrs."""
    monkeypatch.delenv(containers.PODMAN_ROOT_ENV, raising=False)
    monkeypatch.setattr(containers.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert containers.podman_root() == (str(tmp_path / "containers" / "storage"), True)
    with pytest.raises(FileNotFoundError) as info:
        containers.resolve_target("podman:x")
    assert info.value.filename == str(tmp_path / "containers" / "storage")
