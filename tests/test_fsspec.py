"""overlay://: the fsspec filesystem over a Stack (overlayfs.fsspec).

* fsspec's own abstract test suite for implementations (copy, get, put,
  open, pipe), over a writable stack in a temp dir;
* parity: every call of iface_views.fsspec_view (find, ls with and without
  details, info, the is*/exists tests, cat_file with ranges, walk, glob, du)
  over random stacks equals LocalFileSystem over a kernel mount of the same
  layers; and a sequence of fsspec writes (pipe, append, rm, makedirs,
  touch, mv, cp_file, recursive rm of merged directories, refusals) gives
  the same outcomes, upper layer and view as LocalFileSystem's on a kernel
  mount of an identical copy;
* targeted behaviour: symlinks as LocalFileSystem reports them, writes with
  copy-up and whiteouts, the read-only error, pickling, the entry point.
"""

from __future__ import annotations

import copy
import datetime
import errno
import os
import pickle
import random
import stat

import dumps
import iface_views
import kernel
import pytest
import stackgen
import write_ops

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.local import LocalFileSystem  # noqa: E402
from fsspec.tests import abstract  # noqa: E402

import overlayfs  # noqa: E402
from overlayfs.fsspec import OverlayFileSystem  # noqa: E402

FOLLOW = kernel.kernel_redirect_follow()


def make_layers(base):
    """Two lowers (top first), an upper and a work dir under base."""
    names = ["l1", "l2", "upper", "work"]
    dirs = [os.path.join(str(base), n) for n in names]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    return dirs[:2], dirs[2], dirs[3]


# ---------------------------------------------------------------------------
# fsspec's abstract suite
# ---------------------------------------------------------------------------


class OverlayFixtures(abstract.AbstractFixtures):
    """A writable stack (two empty lowers, an upper and a work dir) in a
    temp dir, used with paths below /root (fs_path)."""

    @pytest.fixture
    def fs(self, tmp_path):
        lowers, upper, work = make_layers(tmp_path)
        with overlayfs.Stack(lowers, upper, work) as st:
            yield OverlayFileSystem(stack=st, auto_mkdir=True)

    @pytest.fixture
    def fs_join(self):
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self):
        return "/root"


class TestOverlayCopy(abstract.AbstractCopyTests, OverlayFixtures):
    pass


class TestOverlayGet(abstract.AbstractGetTests, OverlayFixtures):
    pass


class TestOverlayPut(abstract.AbstractPutTests, OverlayFixtures):
    pass


class TestOverlayOpen(abstract.AbstractOpenTests, OverlayFixtures):
    pass


class TestOverlayPipe(abstract.AbstractPipeTests, OverlayFixtures):
    pass


# ---------------------------------------------------------------------------
# Parity with LocalFileSystem over a kernel mount
# ---------------------------------------------------------------------------


def drop_created(obj):
    """Remove every "created" (ctime) field of a view, in place."""
    if isinstance(obj, dict):
        obj.pop("created", None)
        for v in obj.values():
            drop_created(v)
    elif isinstance(obj, list):
        for v in obj:
            drop_created(v)


def build_random(root, seed, upper):
    return stackgen.make_stack(os.path.join(str(root), "stack"), seed, 2 + seed % 4, upper=upper,
                               redirect_follow=FOLLOW)


SEEDS = [(s, s % 2 == 1) for s in range(10)]


@pytest.mark.usefixtures("require_kernel")
@pytest.mark.parametrize(("seed", "upper"), SEEDS, ids=[f"seed{s}-{'upper' if u else 'ro'}" for s, u in SEEDS])
def test_random_stack_matches_localfs_over_mount(tmp_path, seed, upper):
    lowers, up, work = build_random(tmp_path, seed, upper)
    extra = ["/" + os.fsdecode(p) for p in stackgen.extra_paths(seed, [up, *lowers])]
    kview = kernel.decode_json(kernel.run_in_mount(
        iface_views.kernel_fsspec_worker, {"extra": extra}, lowers, up, work))
    # Kernel lookups may write xattrs into the upper: open the Stack after.
    with overlayfs.Stack(lowers, up, work, redirect_follow=FOLLOW) as st:
        fs = OverlayFileSystem(stack=st)
        sview = kernel.decode_json(kernel.encode_json(iface_views.fsspec_view(fs, extra)))
    assert len(kview["find"]) >= 5
    # Names the kernel lists but lookup hides: the Stack may hide them too.
    khidden, shidden = kview.pop("ls_hidden"), sview.pop("ls_hidden")
    for d, names in shidden.items():
        assert set(names) <= set(khidden.get(d, ())), d
    if upper:
        # The kernel's lookups set xattrs in the upper (changing ctimes) as
        # it walks, after its view of them: ctimes compared without upper.
        for v in (kview, sview):
            drop_created(v)
    problems = iface_views.diff_views(kview, sview)
    assert not problems, "\n".join(problems)


def fs_ops(seed, found):
    """A sequence of fsspec writes over the paths of a stack (*found*: find
    with details): new files, append (copy-up), remove, makedirs, touch,
    move, copy, recursive removal of a merged directory, and refusals."""
    rng = random.Random("fsops:%d" % seed)
    files = sorted(p for p, d in found.items() if d["type"] == "file" and not d["islink"])
    dirs = sorted(p for p, d in found.items()
                  if d["type"] == "directory" and not d["islink"] and p.count("/") == 1 and p != "/")
    rng.shuffle(files)
    rng.shuffle(dirs)
    f = (files * 6)[:6] if files else ["/missing"] * 6
    d = (dirs * 2)[:2] if dirs else ["/missing"] * 2
    return [
        ["pipe_file", ["/new.txt", "hello"], {}],
        ["append", [f[0], "+tail"], {}],
        ["rm_file", [f[1]], {}],
        ["makedirs", ["/nd/sub"], {}],
        ["touch", ["/nd/sub/t"], {}],
        ["mv", [f[2], "/nd"], {}],
        ["cp_file", [f[3], "/nd/copy"], {}],
        ["touch", [f[4]], {"truncate": False}],
        ["touch", [f[5]], {}],
        ["rm", [d[0]], {"recursive": True}],
        ["mkdir", ["/nd"], {}],
        ["rm", [d[1]], {}],
        ["rmdir", [d[1]], {}],
        ["pipe_file", ["/nd/sub/t", "x"], {"mode": "create"}],
    ]


WRITE_SEEDS = range(8)


def rmtree_of_listed_whiteout(op, kernel_outcome, overlay_outcome):
    """The kernel lists the char 0:0 whiteouts of a one-layer directory,
    which a Stack hides (README): the kernel's rmtree fails unlinking one
    (ENOENT); overlay:// removes what it lists and rmdir then fails as the
    kernel's does (ENOTEMPTY: such a directory never empties, on both)."""
    return op[0] == "rm" and (kernel_outcome, overlay_outcome) == ("ENOENT", "ENOTEMPTY")


@pytest.mark.usefixtures("require_kernel")
@pytest.mark.parametrize("seed", WRITE_SEEDS)
def test_writes_match_localfs_over_mount(tmp_path, seed):
    """The same fsspec writes through LocalFileSystem on a kernel mount and
    through overlay:// on an identical copy of the layers: the same
    outcomes, the same upper layer (dumps.WRITE_RULES) and the same view."""
    a = build_random(tmp_path / "a", 200 + seed, True)
    b = build_random(tmp_path / "b", 200 + seed, True)
    with overlayfs.Stack(*b, redirect_follow=FOLLOW) as st:
        ops = fs_ops(seed, OverlayFileSystem(stack=st).find("/", withdirs=True, detail=True))
    ka = kernel.decode_json(kernel.run_in_mount(iface_views.kernel_fsspec_ops_worker, {"ops": ops}, *a))
    with overlayfs.Stack(*b, redirect_follow=FOLLOW) as st:
        sb = iface_views.apply_fs_ops(OverlayFileSystem(stack=st), ops)
        live = iface_views.fsspec_view(OverlayFileSystem(stack=st), [])
    problems = [f"op {op}: kernel {x} overlay {y}" for op, x, y in zip(ops, ka["outcomes"], sb["outcomes"])
                if x != y and not rmtree_of_listed_whiteout(op, x, y)]
    assert ka["outcomes"].count("ok") >= 8, list(zip(ops, ka["outcomes"]))
    problems += ["upper [%s] %s" % diff for diff in dumps.compare_dumps(
        write_ops.dump_upper(a[1], ka["window"]), write_ops.dump_upper(b[1], sb["window"]),
        dumps.WRITE_RULES, labels=("kernel", "overlay"))]
    kview = kernel.decode_json(kernel.run_in_mount(iface_views.kernel_fsspec_worker, {"extra": []}, *a))
    for name, view in (("live", live), ("fresh", None)):
        if view is None:
            with overlayfs.Stack(*b, redirect_follow=FOLLOW) as st:
                view = iface_views.fsspec_view(OverlayFileSystem(stack=st), [])
        sview = iface_views.normalize_after_writes(kernel.decode_json(kernel.encode_json(view)))
        kv = iface_views.normalize_after_writes(copy.deepcopy(kview))
        khidden, shidden = kv.pop("ls_hidden"), sview.pop("ls_hidden")
        for dpath, names in shidden.items():
            assert set(names) <= set(khidden.get(dpath, ())), dpath
        problems += [f"{name} view {line}" for line in iface_views.diff_views(kv, sview)]
    assert not problems, "\n".join(problems[:30])


# ---------------------------------------------------------------------------
# Targeted behaviour
# ---------------------------------------------------------------------------


@pytest.fixture
def layers(tmp_path):
    lowers, upper, work = make_layers(tmp_path)
    l1, l2 = lowers
    os.makedirs(os.path.join(l2, "d", "sub"))
    with open(os.path.join(l2, "d", "f"), "wb") as f:
        f.write(b"0123456789")
    with open(os.path.join(l2, "d", "gone"), "wb") as f:
        f.write(b"below")
    os.makedirs(os.path.join(l1, "d"))
    with open(os.path.join(l1, "d", "top"), "wb") as f:
        f.write(b"top")
    os.mknod(os.path.join(l1, "d", "gone"), stat.S_IFCHR | 0o600, 0)  # whiteout
    os.symlink("d/f", os.path.join(l1, "lnk"))
    os.symlink("/d", os.path.join(l1, "dirlnk"))
    os.symlink("../../nowhere", os.path.join(l1, "broken"))
    return lowers, upper, work


def test_ls_info_and_symlinks_like_localfs(layers):
    lowers, upper, work = layers
    with overlayfs.Stack(lowers, upper, work) as st:
        fs = OverlayFileSystem(stack=st)
        assert sorted(fs.ls("/d")) == ["/d/f", "/d/sub", "/d/top"]
        assert sorted(fs.ls("overlay://")) == ["/broken", "/d", "/dirlnk", "/lnk"]
        assert fs.ls("d/f") == ["/d/f"]
        info = fs.info("/lnk")  # followed, like LocalFileSystem.info
        assert info["type"] == "file" and info["islink"] and info["destination"] == "d/f"
        assert info["size"] == 10
        listed = {d["name"]: d for d in fs.ls("/", detail=True)}
        assert listed["/lnk"]["type"] == "other" and listed["/lnk"]["size"] == 10
        assert listed["/broken"]["size"] == 0 and listed["/broken"]["destination"] == "../../nowhere"
        assert fs.info("/dirlnk")["type"] == "directory"
        with pytest.raises(FileNotFoundError):
            fs.info("/broken")
        assert not fs.exists("/broken") and fs.lexists("/broken") and fs.islink("/broken")
        assert not fs.exists("/d/gone")
        with pytest.raises(FileNotFoundError):
            fs.ls("/missing")
        # ls of a symlinked directory lists the target, under the link's name
        assert sorted(fs.ls("/dirlnk")) == ["/dirlnk/f", "/dirlnk/sub", "/dirlnk/top"]
        assert fs.cat("/lnk") == b"0123456789"
        assert fs.cat_file("/d/f", 2, 5) == b"234"
        assert fs.cat_file("/d/f", -3) == b"789"
        assert fs.cat_file("/d/f", 8, 100) == b"89"
        assert fs.cat_file("/d/f", 5, 2) == b""
        assert fs.read_block("/d/f", 1, 3) == b"123"
        assert fs.du("/d") == 13
        assert sorted(fs.glob("/d/*")) == ["/d/f", "/d/sub", "/d/top"]
        assert fs.find("/", maxdepth=1) == ["/broken", "/dirlnk", "/lnk"]  # links are "other"
        mtime = os.stat(os.path.join(lowers[1], "d", "f")).st_mtime
        assert fs.modified("/d/f") == datetime.datetime.fromtimestamp(mtime, tz=datetime.UTC)
        assert fs.created("/d/f").tzinfo is not None
        assert fs.ukey("/d/f") == fs.ukey("/d/f") and fs.checksum("/d/f") == fs.checksum("/d/f")
        with fs.open("/d/f", "rb") as f:
            assert f.size == 10 and f.name == "/d/f" and f.read() == b"0123456789"
        with fs.open("/d/top", "r", encoding="ascii") as f:
            assert f.read() == "top"


def test_writes_go_to_the_upper(layers):
    lowers, upper, work = layers
    with overlayfs.Stack(lowers, upper, work) as st:
        fs = OverlayFileSystem(stack=st)
        with fs.open("/d/f", "ab") as f:  # copy-up, then append
            f.write(b"!")
        assert fs.cat("/d/f") == b"0123456789!"
        assert open(os.path.join(upper, "d", "f"), "rb").read() == b"0123456789!"
        assert open(os.path.join(lowers[1], "d", "f"), "rb").read() == b"0123456789"
        fs.rm("/d/top")  # a lower file: a whiteout in the upper
        assert not fs.exists("/d/top") and stat.S_ISCHR(os.lstat(os.path.join(upper, "d", "top")).st_mode)
        with pytest.raises(ValueError):
            fs.rm("/d")
        fs.mkdir("/new/deep")
        with pytest.raises(FileExistsError):
            fs.mkdir("/new/deep")
        fs.touch("/new/deep/t")
        assert fs.info("/new/deep/t")["size"] == 0
        fs.pipe_file("/new/deep/t", b"xyz")
        fs.touch("/new/deep/t", truncate=False)
        assert fs.cat("/new/deep/t") == b"xyz"
        fs.cp_file("/d/f", "/new/copy")
        assert fs.cat("/new/copy") == b"0123456789!"
        fs.mv("/new/copy", "/new/deep")  # into the directory, as shutil.move
        assert fs.cat("/new/deep/copy") == b"0123456789!"
        fs.mv("/d", "/moved")  # a merged directory: EXDEV, copied through the union
        assert sorted(fs.ls("/moved")) == ["/moved/f", "/moved/sub"] and not fs.exists("/d")
        fs.rm("/moved", recursive=True)
        assert not fs.exists("/moved")
        fs.rm("/new", recursive=True)
        assert sorted(fs.ls("/")) == ["/broken", "/dirlnk", "/lnk"]
        assert ("deleted", "d") in {(c.kind, c.path) for c in st.diff()}


def test_read_only_stack_refuses_writes(layers):
    lowers, _, _ = layers
    fs = OverlayFileSystem(lowers, skip_instance_cache=True)
    try:
        for call in (lambda: fs.pipe("/x", b"1"), lambda: fs.open("/d/f", "wb"),
                     lambda: fs.mkdir("/n"), lambda: fs.rm("/d/f"), lambda: fs.touch("/d/f")):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.EROFS
            assert "read-only" in str(e.value)
        assert fs.cat("/d/f") == b"0123456789"
    finally:
        fs.close()
    assert fs.stack.closed


def test_registered_protocol_and_urls(layers):
    lowers, _, _ = layers
    assert fsspec.get_filesystem_class("overlay") is OverlayFileSystem
    fs = fsspec.filesystem("overlay", lowers=lowers)
    try:
        assert fsspec.filesystem("overlay", lowers=lowers) is fs  # cached per arguments
        with fsspec.open("overlay://d/f", "rt", lowers=lowers) as f:
            assert f.read() == "0123456789"
        assert fs.unstrip_protocol("/d/f") == "overlay:///d/f"
        assert fs._strip_protocol("overlay:///d/f/") == "/d/f"
    finally:
        fs.close()
    fs2 = fsspec.filesystem("overlay", lowers=lowers)  # a closed one is not handed out again
    assert fs2 is not fs and not fs2.stack.closed
    fs2.close()
    with overlayfs.Stack(lowers) as st:
        a, b = OverlayFileSystem(stack=st), OverlayFileSystem(stack=st)
        assert a is not b  # never cached: a Stack is not a token
        with pytest.raises(TypeError):
            OverlayFileSystem(lowers, stack=st)
    with pytest.raises(TypeError):
        OverlayFileSystem()


def _read_in_child(fs, path):
    return fs.cat(path)


def test_pickles(layers):
    lowers, upper, work = layers
    with overlayfs.Stack(lowers, upper, work) as st:
        fs = OverlayFileSystem(stack=st)
        fs2 = pickle.loads(pickle.dumps(fs))
        try:
            assert fs2.stack is not st and fs2.stack.lowers == st.lowers and fs2.stack.upper == upper
            assert fs2.cat("/d/f") == b"0123456789"
        finally:
            fs2.stack.close()
    fs3 = OverlayFileSystem(lowers, skip_instance_cache=True)
    try:
        fs4 = pickle.loads(pickle.dumps(fs3))
        assert fs4.ls("/d") == fs3.ls("/d")
        fs4.close()
    finally:
        fs3.close()


def test_localfs_agrees_on_layers_without_overlay_features(tmp_path):
    """A single-layer stack is the directory itself: info and ls equal
    LocalFileSystem's over that directory, field for field."""
    base = tmp_path / "one"
    (base / "a" / "b").mkdir(parents=True)
    (base / "a" / "f").write_bytes(b"x" * 5)
    os.symlink("a/f", base / "l")
    empty = tmp_path / "empty"
    empty.mkdir()
    local = LocalFileSystem()
    with overlayfs.Stack([str(base), str(empty)]) as st:
        fs = OverlayFileSystem(stack=st)
        for p in ("a", "a/f", "l", "a/b"):
            want = local.info(str(base / p))
            got = fs.info("/" + p)
            want["name"] = got["name"]
            if "destination" in want:
                assert want["destination"] == got["destination"]
            assert got == want
