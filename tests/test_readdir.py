"""Merged listings: listdir order, scandir entries (CPython test_scandir
style: each entry checked against os.lstat of the winning host file), walk."""

import errno
import os
import stat

import pytest
import util


def test_order_bottom_first_then_top_down(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    for i in range(25):
        util.mkfile(L.p(3, f"d/bot{i}"))
    for i in range(0, 25, 2):
        util.mkfile(L.p(0, f"d/bot{i}"))          # also higher up: keeps its bottom slot
    for i in range(15):
        util.mkfile(L.p(2, f"d/mid{i}"))
        util.mkfile(L.p(1, f"d/one{i}"))
        util.mkfile(L.p(0, f"d/up{i}"))
    for i in range(0, 15, 3):
        util.mkfile(L.p(1, f"d/mid{i}"))          # first seen in l1, not l2
    dirs = [L.p(i, "d") for i in range(4)]
    want = util.merged_order(dirs)
    with L.stack(impl) as st:
        got = st.listdir("d")
        assert got == want
        assert len(got) == len(set(got)) == 25 + 15 * 3
        assert [e.name for e in st.scandir("d")] == want
        # The root too: bottom layer "d" first, nothing else anywhere.
        assert st.listdir() == ["d"]


def test_order_root_merges_every_layer(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=4)
    for i, layer in enumerate((1, 2, 3, 4)):
        for j in range(8):
            util.mkfile(L.p(layer, f"r{i}_{j}"))
        util.mkfile(L.p(layer, "common"))
    want = util.merged_order([L.p(i) for i in (1, 2, 3, 4)])
    with L.stack(impl) as st:
        assert st.listdir("") == want
        assert st.listdir("/") == want


def test_types_from_topmost_occurrence(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(1, "x"), "file over dir")
    util.mkfile(L.p(2, "x/inner"))
    util.mkfile(L.p(1, "y/inner"))
    util.mkfile(L.p(2, "y"), "dir over file")
    util.symlink(L.p(1, "z"), "y")
    util.mkfile(L.p(2, "z"))
    with L.stack(impl) as st:
        ents = {e.name: e for e in st.scandir()}
        assert set(ents) == {"x", "y", "z"}
        util.check_entry(ents["x"], st, "x", L.p(1, "x"), is_dir=False, is_file=True,
                         is_symlink=False, layer=1)
        util.check_entry(ents["y"], st, "y", L.p(1, "y"), is_dir=True, is_file=False,
                         is_symlink=False, layer=1)
        util.check_entry(ents["z"], st, "z", L.p(1, "z"), is_dir=True, is_file=False,
                         is_symlink=True, layer=1)


@pytest.fixture
def tree(tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.mkfile(L.p(0, "file_up"), "u")
    util.mkfile(L.p(1, "file_l1"), "1")
    util.mkfile(L.p(2, "file_l2"), "2")
    util.mkfile(L.p(2, "dir/in2"))
    util.mkfile(L.p(0, "dir/inup"))
    util.symlink(L.p(1, "link_file"), "file_l2")
    util.symlink(L.p(1, "link_dir"), "/dir")
    util.symlink(L.p(2, "broken"), "nowhere")
    util.symlink(L.p(2, "loop"), "loop")
    util.mkfile(L.p(2, "sub/deep/leaf"))
    os.mkfifo(L.p(1, "fifo"))
    return L


def test_scandir_entries_against_oracle(impl, tree):
    L = tree
    expect = {
        "file_up": (0, False, True, False),
        "file_l1": (1, False, True, False),
        "file_l2": (2, False, True, False),
        "dir": (0, True, False, False),
        "link_file": (1, False, True, True),
        "link_dir": (1, True, False, True),
        "broken": (2, False, False, True),
        "sub": (2, True, False, False),
        "fifo": (1, False, False, False),
    }
    with L.stack(impl) as st:
        with st.scandir() as it:
            ents = list(it)
        assert sorted(e.name for e in ents) == sorted(list(expect) + ["loop"])
        for e in ents:
            if e.name == "loop":
                continue
            layer, is_dir, is_file, is_link = expect[e.name]
            util.check_entry(e, st, e.name, L.p(layer, e.name), is_dir=is_dir,
                             is_file=is_file, is_symlink=is_link, layer=layer,
                             merged=e.name == "dir")
            assert e.path == e.name
            assert os.fspath(e) == e.path
        by = {e.name: e for e in ents}
        with pytest.raises(FileNotFoundError):
            by["broken"].stat()
        with pytest.raises(OSError) as info:
            by["loop"].stat()
        assert info.value.errno == errno.ELOOP
        # os.DirEntry raises ELOOP from is_dir()/is_file() here (only
        # FileNotFoundError is swallowed); returning False is accepted too.
        for test in (by["loop"].is_dir, by["loop"].is_file):
            try:
                assert test() is False
            except OSError as err:
                assert err.errno == errno.ELOOP
        assert by["loop"].is_symlink()
        assert not by["loop"].is_dir(follow_symlinks=False)
        util.check_stat(by["link_file"].stat(), L.p(2, "file_l2"))
        assert stat.S_ISDIR(by["link_dir"].stat().st_mode)
        # merged dir: nlink 1 like lstat through the stack
        assert by["dir"].stat() == st.lstat("dir")


def test_scandir_subdir_paths(impl, tree):
    with tree.stack(impl) as st:
        for top in ("dir", "dir/", "/dir", "link_dir"):
            names = sorted((e.name, e.path) for e in st.scandir(top))
            sep = "" if top.endswith("/") else "/"
            assert names == [("in2", top + sep + "in2"), ("inup", top + sep + "inup")]
        deep = list(st.scandir("sub/deep"))
        assert [(e.name, e.path) for e in deep] == [("leaf", "sub/deep/leaf")]
        util.check_entry(deep[0], st, "leaf", tree.p(2, "sub/deep/leaf"), is_dir=False,
                         is_file=True, is_symlink=False, layer=2)


def test_scandir_bytes(impl, tree):
    with tree.stack(impl) as st:
        ents = list(st.scandir(b"dir"))
        assert sorted(e.name for e in ents) == [b"in2", b"inup"]
        for e in ents:
            assert type(e.name) is bytes and type(e.path) is bytes
            assert e.path == b"dir/" + e.name
        assert sorted(st.listdir(b"")) == sorted(os.fsencode(n) for n in st.listdir(""))


def test_scandir_context_manager_and_close(impl, tree):
    with tree.stack(impl) as st:
        it = st.scandir()
        first = next(it)
        assert first.name in st.listdir()
        it.close()
        it.close()                      # twice is fine
        assert list(it) == []           # exhausted after close
        with st.scandir() as it2:
            n = sum(1 for _ in it2)
        assert n == len(st.listdir())
        assert list(it2) == []
        # iterating twice: the second pass is empty, like os.scandir
        it3 = st.scandir()
        assert len(list(it3)) == n and list(it3) == []


def test_file_removed_after_listing(impl, tree):
    L = tree
    with L.stack(impl) as st:
        ents = {e.name: e for e in st.scandir()}
        before = ents["file_up"].stat()
        os.unlink(L.p(1, "file_l1"))
        os.unlink(L.p(0, "file_up"))
        # The type came with the listing; no syscall needed (like DirEntry).
        assert ents["file_l1"].is_file()
        assert not ents["file_l1"].is_dir()
        # stat() is cached per entry.
        assert ents["file_up"].stat() is before
        st.invalidate()
        with pytest.raises(FileNotFoundError):
            ents["file_l1"].stat()
        assert "file_l1" not in st.listdir()
        util.expect_errno(errno.ENOENT, st.lstat, "file_l1")


def test_dir_removed_after_listing(impl, tree):
    L = tree
    import shutil
    with L.stack(impl) as st:
        ents = {e.name: e for e in st.scandir()}
        assert ents["sub"].is_dir()
        shutil.rmtree(L.p(2, "sub"))
        st.invalidate()
        util.expect_errno(errno.ENOENT, st.listdir, "sub")
        assert "sub" not in st.listdir()


def test_listdir_errors(impl, tree):
    with tree.stack(impl) as st:
        e = util.expect_errno(errno.ENOTDIR, st.listdir, "file_l1")
        assert e.filename == "file_l1"
        util.expect_errno(errno.ENOENT, st.listdir, "nope")
        util.expect_errno(errno.ENOENT, st.listdir, "broken")
        util.expect_errno(errno.ELOOP, st.listdir, "loop")
        util.expect_errno(errno.ENOTDIR, st.listdir, "link_file")
        util.expect_errno(errno.ENOENT, st.scandir, "nope")
        util.expect_errno(errno.ENOTDIR, st.scandir, "fifo")


def test_empty_dirs(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkdir(L.p(1, "e"))
    util.mkdir(L.p(2, "e"))
    util.mkdir(L.p(2, "only"))
    util.whiteout(L.p(1, "e2/x"))
    util.mkfile(L.p(2, "e2/x"))
    with L.stack(impl) as st:
        assert st.listdir("e") == []
        assert st.listdir("only") == []
        assert st.listdir("e2") == []
        assert list(st.scandir("e")) == []


# -- walk ------------------------------------------------------------------------------


@pytest.fixture
def walktree(tmp_path):
    """A union whose merged content is written out by hand in EXPECT."""
    L = util.Layers(tmp_path, nlowers=3)
    util.mkfile(L.p(3, "a/b/c/f3"))
    util.mkfile(L.p(2, "a/b/f2"))
    util.mkfile(L.p(1, "a/f1"))
    util.mkfile(L.p(3, "a/gone/x"))
    util.whiteout(L.p(2, "a/gone"))
    util.mkfile(L.p(1, "top"))
    util.mkfile(L.p(2, "x/y/z/w"))
    util.opaque(L.p(2, "x/y"))
    util.mkfile(L.p(3, "x/y/hidden"))
    util.symlink(L.p(1, "a/tox"), "/x")
    util.symlink(L.p(2, "dangling"), "none")
    util.mkdir(L.p(3, "empty"))
    return L


EXPECT = {
    "": ({"a", "x", "empty"}, {"top", "dangling"}),
    "a": ({"b", "tox"}, {"f1"}),
    "a/b": ({"c"}, {"f2"}),
    "a/b/c": (set(), {"f3"}),
    "x": ({"y"}, set()),
    "x/y": ({"z"}, set()),
    "x/y/z": (set(), {"w"}),
    "empty": (set(), set()),
}


def test_walk_topdown(impl, walktree):
    with walktree.stack(impl) as st:
        seen = {}
        order = []
        for top, dirs, files in st.walk():
            assert top not in seen
            assert all(type(n) is str for n in dirs + files)
            seen[top] = (set(dirs), set(files))
            order.append(top)
        assert seen == EXPECT
        # parents before children
        for p in order:
            if p:
                parent = p.rsplit("/", 1)[0] if "/" in p else ""
                assert order.index(parent) < order.index(p)
        # dirnames/filenames come in listing order
        for top, dirs, files in st.walk():
            listing = st.listdir(top)
            assert dirs == [n for n in listing if n in set(dirs)]
            assert files == [n for n in listing if n in set(files)]


def test_walk_bottomup_and_prune(impl, walktree):
    with walktree.stack(impl) as st:
        order = [top for top, _, _ in st.walk(topdown=False)]
        assert set(order) == set(EXPECT)
        for p in order:
            if p:
                parent = p.rsplit("/", 1)[0] if "/" in p else ""
                assert order.index(parent) > order.index(p)
        visited = []
        for top, dirs, _files in st.walk():
            visited.append(top)
            if top == "":
                dirs.remove("a")
        assert set(visited) == set(EXPECT) - {"a", "a/b", "a/b/c"}


def test_walk_followlinks_and_bytes(impl, walktree):
    with walktree.stack(impl) as st:
        tops = {top for top, _, _ in st.walk(followlinks=True)}
        assert {"a/tox", "a/tox/y", "a/tox/y/z"} <= tops
        btops = {top: (set(d), set(f)) for top, d, f in st.walk(b"a")}
        assert btops == {os.fsencode(k): ({os.fsencode(n) for n in v[0]},
                                          {os.fsencode(n) for n in v[1]})
                         for k, v in EXPECT.items() if k.startswith("a")}


def test_walk_onerror(impl, walktree):
    with walktree.stack(impl) as st:
        errors = []
        assert list(st.walk("nope", onerror=errors.append)) == []
        assert len(errors) == 1 and errors[0].errno == errno.ENOENT
        errors = []
        assert list(st.walk("top", onerror=errors.append)) == []
        assert len(errors) == 1 and errors[0].errno == errno.ENOTDIR
        assert list(st.walk("nope")) == []   # no onerror: silently nothing


def test_walk_pathlike_top(impl, request, walktree):
    """os.walk(PathLike) fspath()s the top: every dirpath is a str."""
    import pathlib
    with walktree.stack(impl) as st:
        got = list(st.walk(pathlib.PurePosixPath("a")))
        assert all(type(top) is str for top, _, _ in got)
        assert got == list(st.walk("a"))


@pytest.mark.parametrize("top", ["/", "a/", "/a", "a//", b"/", b"a/"], ids=repr)
def test_walk_dirpaths_join_like_os_walk(impl, request, walktree, top):
    """os.walk builds dirpath with os.path.join(top, name): walk("/") gives
    "/a", walk("a/") gives "a/b"."""
    with walktree.stack(impl) as st:
        got = [(t, d, f) for t, d, f in st.walk(top)]
        assert got[0][0] == top
        for t, dirs, _ in got:
            for d in dirs:
                if d != "tox" and d != b"tox":
                    assert os.path.join(t, d) in {x[0] for x in got}
        assert {x[0] for x in got} == {top} | {os.path.join(t, d) for t, ds, _ in got
                                               for d in ds if d not in ("tox", b"tox")}
