"""apply_layer against the real things: GNU tar (rootfs mode: the same tree),
dockerd's overlay2 ApplyDiff (layer mode: the same diff dirs), umoci raw
unpack (rootfs mode over a whole image), and the kernel (our applied layers
mounted give the merged tree dockerd's layers give).  Plus the tar-split
record: the tree and the sidecar give back the original bytes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest
from applyutil import diff_records, dir_, file, kernel_records, reassemble, records, symlink, tar

from overlayfs import errors
from overlayfs.apply import apply_layer

pytestmark = pytest.mark.usefixtures("require_root")  # skip_or_fail when not root

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service, v2
IGNORED = ("trusted.overlay.origin", "trusted.overlay.impure", "trusted.overlay.uuid")


def make_tree(root: str) -> None:
    """Every kind of entry a layer holds, with owners, set-id modes, odd names and ns times."""
    r = os.fsencode(root)

    def p(rel):
        return os.path.join(r, rel)

    os.makedirs(p(b"d/sub/deep"))
    for i in range(30):
        os.makedirs(p(b"deep/" + b"/".join([b"l%d" % j for j in range(i + 1)])), exist_ok=True)
    with open(p(b"d/f"), "wb") as f:
        f.write(b"hello\n")
    with open(p(b"d/big"), "wb") as f:
        f.write(os.urandom(3 << 20))
    with open(p(b"d/sparse"), "wb") as f:
        f.truncate(10 << 20)
        f.seek(5 << 20)
        f.write(b"middle")
    open(p(b"empty"), "wb").close()
    with open(p(b"d/g"), "wb") as f:
        f.write(b"g" * 1000)
    os.makedirs(p(b"other"))
    os.link(p(b"d/f"), p(b"d/hard"))
    os.link(p(b"d/g"), p(b"other/hard2"))
    os.symlink(b"f", p(b"d/rel"))
    os.symlink(b"/etc/passwd", p(b"d/abs"))
    os.symlink(b"../nowhere/at/all", p(b"d/dangling"))
    os.mkfifo(p(b"fifo"))
    os.mknod(p(b"null"), 0o620 | 0o020000, os.makedev(1, 3))
    os.mknod(p(b"loop"), 0o660 | 0o060000, os.makedev(7, 0))
    name = b"odd name \xff\xfe \xc3\xa9 $x"
    with open(p(name), "wb") as f:
        f.write(b"odd")
    long = b"L" * 120 + b"/" + b"M" * 150
    os.makedirs(p(b"L" * 120))
    with open(p(long), "wb") as f:
        f.write(b"long")
    os.setxattr(p(b"d/f"), "user.note", b"\x00bin\xff")
    os.setxattr(p(b"d/g"), "security.capability", CAP)
    os.setxattr(p(b"d/sub"), "trusted.something", b"t")
    os.makedirs(p(b"sticky"))
    os.makedirs(p(b"private"))
    os.chown(p(b"d/g"), 1000, 100)
    os.chown(p(b"d/sub"), 1000, 1000)
    os.chown(p(b"private"), 5, 6)
    os.lchown(p(b"d/rel"), 7, 8)
    os.chmod(p(b"d/f"), 0o4755)
    os.chmod(p(b"d/g"), 0o2711)
    os.chmod(p(b"d/sub"), 0o2750)
    os.chmod(p(b"sticky"), 0o1777)
    os.chmod(p(b"private"), 0o700)
    # times last, directories after their contents (deepest first)
    t = 1_600_000_000_123_456_789
    for dirpath, dirnames, filenames in sorted(os.walk(r), key=lambda w: -w[0].count(b"/")):
        for n in filenames:
            os.utime(os.path.join(dirpath, n), ns=(t, t + 1000), follow_symlinks=False)
            t += 1_000_000_007
        for n in dirnames:
            if os.path.islink(os.path.join(dirpath, n)):
                os.utime(os.path.join(dirpath, n), ns=(t, t), follow_symlinks=False)
        if dirpath != r:
            os.utime(dirpath, ns=(t, t + 5))
        t += 3_000_000_011


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "tree"
    root.mkdir()
    make_tree(str(root))
    return root


FORMATS = {
    "posix": ["--format=posix", "--xattrs", "--xattrs-include=*"],
    "posix-sparse": ["--format=posix", "-S", "--xattrs", "--xattrs-include=*"],
    "gnu-sparse": ["--format=gnu", "-S"],
    "ustar-ish-gnu": ["--format=gnu"],
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_rootfs_matches_gnu_tar(tree, tmp_path, fmt):
    t = tmp_path / "layer.tar"
    subprocess.run(["tar", *FORMATS[fmt], "-cf", t, "-C", tree, "."], check=True)
    expected = tmp_path / "gnu"
    expected.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--same-owner", "-xpf", t, "-C", expected],
                   check=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    r = apply_layer(t, mine, mode="rootfs")
    assert r.diff_id == "sha256:" + hashlib.sha256(t.read_bytes()).hexdigest()
    # GNU tar does not keep holes of sparse files it reads without -S: compare data maps only with -S
    diffs = diff_records(records(expected), records(mine), labels=("gnu tar", "apply"))
    assert not diffs, "\n".join(diffs[:30])
    # layer mode makes the same tree (no whiteouts in it)
    layer = tmp_path / "layer"
    apply_layer(t, layer)
    diffs = diff_records(records(expected), records(layer), labels=("gnu tar", "apply layer"))
    assert not diffs, "\n".join(diffs[:30])
    if "sparse" in fmt:
        assert os.stat(mine / "d/sparse").st_blocks * 512 < 1 << 20


@pytest.mark.parametrize("chunked", [False, True])
def test_tar_split_reassembles(tree, tmp_path, chunked):
    t = tmp_path / "layer.tar"
    subprocess.run(["tar", "--format=posix", "-S", "--xattrs", "--xattrs-include=*", "-cf", t, "-C", tree, "."],
                   check=True)
    data = t.read_bytes() + b"\0" * 4096  # trailing zeros (blocking) are part of the diff ID

    class Slow(io.RawIOBase):
        """A non-seekable stream that hands out odd-sized pieces."""

        def __init__(self, b):
            self.b, self.i = b, 0

        def readable(self):
            return True

        def readinto(self, buf):
            n = min(len(buf), 7777, len(self.b) - self.i)
            buf[:n] = self.b[self.i:self.i + n]
            self.i += n
            return n

    src = Slow(data) if chunked else io.BytesIO(data)
    out = io.BytesIO()
    r = apply_layer(src, tmp_path / "layer", tar_split=out)
    split = gzip.decompress(out.getvalue())
    assert len(split) <= 8 + r.entries * 2048 + 4096 and len(out.getvalue()) < len(split) // 3
    again = reassemble(split, tmp_path / "layer")
    assert hashlib.sha256(again).hexdigest() == r.diff_id.split(":")[1]
    assert again == data


def test_tar_split_path_removed_on_failure(tmp_path):
    with pytest.raises(errors.CorruptArchiveError):
        apply_layer(io.BytesIO(tar(file(b"a")) + b"junk"), tmp_path / "l", tar_split=tmp_path / "split.gz")
    assert not (tmp_path / "split.gz").exists() and not (tmp_path / "l").exists()


# --- the kernel -----------------------------------------------------------------


@pytest.fixture
def mountable(require_kernel):
    return None


def test_kernel_root_opaque_emulated(tmp_path, mountable):
    base = tmp_path / "base"
    apply_layer(io.BytesIO(tar(file(b"a", b"1"), file(b"b", b"2"), dir_(b"d"), file(b"d/x", b"x"),
                               dir_(b"e"), file(b"e/y"))), base)
    top = tmp_path / "top"
    apply_layer(io.BytesIO(tar(file(b".wh..wh..opq"), file(b"c", b"3"), dir_(b"d"), file(b"d/new"))),
                top, lowers=[base])
    got = kernel_records([top, base])
    assert sorted(got) == ["c", "d", "d/new"]
    assert os.getxattr(top / "d", "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(top)


def test_kernel_whiteouts_opaque_and_injected_xattrs(tmp_path, mountable):
    base = tmp_path / "base"
    apply_layer(io.BytesIO(tar(dir_(b"d"), file(b"d/a", b"1"), file(b"d/b"), dir_(b"o"), file(b"o/old"),
                               dir_(b"i"), file(b"i/keep"))), base)
    for form in ("chardev", "xattr"):
        mid = tmp_path / f"mid-{form}"
        inj = {b"SCHILY.xattr.trusted.overlay.opaque": b"y"}
        apply_layer(io.BytesIO(tar(file(b"d/.wh.a"), dir_(b"o"), file(b"o/.wh..wh..opq"), file(b"o/new"),
                                   dir_(b"i", records=inj))), mid, whiteouts=form)
        top = tmp_path / f"top-{form}"
        apply_layer(io.BytesIO(tar(file(b"t"))), top)
        got = kernel_records([top, mid, base])
        assert sorted(got) == ["d", "d/b", "i", "i/keep", "o", "o/new", "t"], form
        # the injected opaque is an ordinary xattr of i, shown unescaped by the kernel
        assert bytes.fromhex(got["i"]["xattrs"]["trusted.overlay.opaque"]) == b"y"


def test_kernel_hardlink_to_lower_copies_up(tmp_path, mountable):
    base = tmp_path / "base"
    apply_layer(io.BytesIO(tar(dir_(b"d", mode=0o750, uid=3), file(b"d/f", b"data", mode=0o640, uid=9),
                               symlink(b"d/s", b"f"))), base)
    top = tmp_path / "top"
    r = apply_layer(io.BytesIO(tar(entry_link(b"d/h", b"d/f"), entry_link(b"e/hs", b"d/s"))), top,
                    lowers=[base])
    assert r.copied_up == 2
    assert os.path.samefile(top / "d/h", top / "d/f") and (top / "d/f").read_bytes() == b"data"
    st = os.stat(top / "d")
    assert (st.st_mode & 0o7777, st.st_uid) == (0o750, 3)  # implied parent from the lowers
    got = kernel_records([top, base])
    assert got["d/h"]["links"] == ["d/f", "d/h"] and got["d/f"]["uid"] == 9


def entry_link(name, target):
    from applyutil import hardlink

    return hardlink(name, target)


# --- dockerd and umoci ------------------------------------------------------------

DOCKERFILE = r"""
FROM {base}
RUN mkdir -p /data/sub/deep/er /opq /deldir/x /keep && echo hello > /data/f && echo x > /data/sub/g \
 && ln /data/f /data/hard && ln -s f /data/sym && ln -s /etc/passwd /data/abs && mkfifo /data/fifo \
 && chmod 4755 /data/f && chmod 1777 /data/sub && chown 1000:100 /data/sub/g && chmod 2750 /data/sub/deep \
 && touch /opq/a /opq/b /del1 /del2 "/data/odd name" && mknod /data/null c 1 3 \
 && for i in 1 2 3 4 5 6 7 8 9; do mkdir -p /many/$i && for j in 1 2 3 4 5 6 7 8 9; do echo $i$j > /many/$i/$j; done; done
RUN rm /del1 && rm -rf /deldir && rm -rf /opq && mkdir /opq && touch /opq/c && echo changed > /data/sub/g \
 && ln /data/f /data/hard2 && chown 5:6 /keep && rm -rf /many/3 && rm /bin/true
RUN echo more >> /data/f && chmod 640 /data/sub/g && mkdir -p /new/implied/dirs && touch /new/implied/dirs/f
"""


@pytest.fixture(scope="module")
def docker_layers(dockerd, busybox_image, tmp_path_factory):
    """A built image, saved and loaded again (so that every diff dir is dockerd's
    ApplyDiff of the layer tar, not a container's upper dir): the layer tars,
    bottom first, and dockerd's diff dirs, bottom first."""
    tmp = tmp_path_factory.mktemp("docker")
    tag = "ovltest-apply:1"
    dockerd.build(DOCKERFILE.format(base=busybox_image), tag)
    saved = dockerd.save(tag, str(tmp / "save.tar"))
    dockerd.run("rmi", tag)
    dockerd.run("load", "-i", saved)
    dirs = list(reversed(dockerd.layer_diff_dirs(tag)))
    out = tmp / "layers"
    out.mkdir()
    with tarfile.open(saved) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))[0]
        tars = []
        for i, name in enumerate(manifest["Layers"]):
            path = out / f"{i}.tar"
            with open(path, "wb") as f:
                shutil.copyfileobj(tf.extractfile(name), f)
            tars.append(path)
    assert len(tars) == len(dirs) == 4
    return {"tars": tars, "dirs": dirs, "save": saved, "tmp": tmp}


def test_layers_match_dockerd_overlay2(docker_layers, tmp_path):
    applied = []
    for i, (t, ddir) in enumerate(zip(docker_layers["tars"], docker_layers["dirs"])):
        mine = tmp_path / f"L{i}"
        apply_layer(t, mine, lowers=list(reversed(applied)))
        applied.append(mine)
        want = records(ddir, ignore_xattrs=IGNORED)
        got = records(mine, ignore_xattrs=IGNORED)
        diffs = diff_records(want, got, labels=("dockerd", "apply"))
        assert not diffs, f"layer {i}:\n" + "\n".join(diffs[:30])
        if i == 2:  # the second RUN: whiteouts, an opaque dir, a hardlink to a lower file
            assert want["del1"]["type"] == "whiteout" and want["bin/true"]["type"] == "whiteout"
            assert want["opq"]["xattrs"]["trusted.overlay.opaque"] == b"y".hex()
            assert want["data/hard2"]["links"] == ["data/f", "data/hard2"]  # copy-up split data/hard off


def test_kernel_view_matches_dockerd(docker_layers, tmp_path, mountable):
    applied = []
    for i, t in enumerate(docker_layers["tars"]):
        mine = tmp_path / f"L{i}"
        apply_layer(t, mine, lowers=list(reversed(applied)))
        applied.append(mine)
    want = kernel_records(list(reversed(docker_layers["dirs"])), ignore_xattrs=IGNORED)
    got = kernel_records(list(reversed(applied)), ignore_xattrs=IGNORED)
    diffs = diff_records(want, got, labels=("dockerd layers", "applied layers"))
    assert not diffs, "\n".join(diffs[:30])
    assert "del1" not in got and "opq/c" in got and "opq/a" not in got and "many/3" not in got


def test_rootfs_matches_umoci_raw_unpack(docker_layers, tmp_path):
    import peers

    for tool in ("skopeo", "umoci"):
        peers.require_tool(tool)
    layout = tmp_path / "oci"
    subprocess.run(["skopeo", "copy", "--quiet", f"docker-archive:{docker_layers['save']}",
                    f"oci:{layout}:t"], check=True, capture_output=True)
    umoci_root = tmp_path / "umoci"
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:t", umoci_root], check=True,
                   capture_output=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    for t in docker_layers["tars"]:
        apply_layer(t, mine, mode="rootfs")
    # umoci: implied directories are 0777 & ~umask (none here: docker writes every parent)
    diffs = diff_records(records(umoci_root), records(mine), labels=("umoci", "apply rootfs"))
    assert not diffs, "\n".join(diffs[:30])


def test_cli_apply(tmp_path):
    import sys

    t = tmp_path / "l.tar.gz"
    t.write_bytes(gzip.compress(tar(dir_(b"d"), file(b"d/f", b"x"), file(b"d/.wh.gone"))))
    run = [sys.executable, "-m", "overlayfs", "apply"]
    r = subprocess.run([*run, t, tmp_path / "layer", "--json", "--no-sync"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["compression"] == "gzip" and res["whiteouts"] == 1 and res["files"] == 1
    assert os.stat(tmp_path / "layer/d/gone").st_rdev == 0
    r = subprocess.run([*run, "-", tmp_path / "root", "--rootfs"], input=gzip.decompress(t.read_bytes()),
                       capture_output=True)
    assert r.returncode == 1 and b"No such file or directory" in r.stderr  # rootfs needs the dir
    (tmp_path / "root").mkdir()
    r = subprocess.run([*run, "-", tmp_path / "root", "--rootfs"], input=gzip.decompress(t.read_bytes()),
                       capture_output=True)
    assert r.returncode == 0 and r.stdout.startswith(b"sha256:")
    r = subprocess.run([*run, t, tmp_path / "l2", "--verify-diff-id", "sha256:" + "0" * 64],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "diff ID mismatch" in r.stderr
    assert not (tmp_path / "l2").exists()
