"""The lookup cache: counters, invalidate(path)/invalidate() after layers
change behind the Stack's back, cache=False, cache_max_bytes."""

import errno
import os
import shutil
import stat

import pytest
import util

import overlayfs

Stack = overlayfs.Stack


@pytest.fixture
def L(tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.mkfile(L.p(0, "a/b/up"), "u")
    util.mkfile(L.p(1, "a/b/one"), "1")
    util.mkfile(L.p(2, "a/b/two"), "2")
    util.mkfile(L.p(2, "a/c/deep/x"), "x")
    util.mkfile(L.p(2, "f"), "f2")
    util.symlink(L.p(1, "lnk"), "f")
    for i in range(20):
        util.mkfile(L.p(2, f"many/d{i}/f{i}"), str(i))
    return L


# -- counters (C Stack) -----------------------------------------------------------


def test_cache_info_shape(L):
    with L.stack(Stack) as st:
        info = st.cache_info()
        assert isinstance(info, overlayfs.CacheInfo)
        assert info._fields == ("hits", "misses", "entries", "dirs", "bytes",
                                "max_bytes", "generation", "flushes")
        assert all(type(v) is int and v >= 0 for v in info)
        assert info.max_bytes == 256 * 1024 * 1024
    with L.stack(Stack, cache_max_bytes=1 << 20) as st:
        assert st.cache_info().max_bytes == 1 << 20


def test_hits_and_misses(L):
    with L.stack(Stack) as st:
        i0 = st.cache_info()
        st.lstat("a/b/one")
        i1 = st.cache_info()
        assert i1.misses > i0.misses
        assert i1.dirs > i0.dirs and i1.entries > i0.entries and i1.bytes > 0
        for _ in range(10):
            util.check_stat(st.lstat("a/b/one"), L.p(1, "a/b/one"))
        i2 = st.cache_info()
        assert i2.misses == i1.misses
        assert i2.hits >= i1.hits + 10
        # a name the cached index does not have is answered without I/O too
        util.expect_errno(errno.ENOENT, st.lstat, "a/b/nope")
        assert st.cache_info().misses == i2.misses
        # a new directory needs a read
        st.lstat("a/c/deep/x")
        assert st.cache_info().misses > i2.misses


def test_invalidate_all_resets(L):
    with L.stack(Stack) as st:
        for top, _, files in st.walk():
            for f in files:
                st.lstat(top + "/" + f if top else f)
        before = st.cache_info()
        assert before.entries > 20 and before.dirs > 20
        st.invalidate()
        after = st.cache_info()
        assert after.generation > before.generation
        assert after.dirs < before.dirs and after.entries < before.entries
        assert after.bytes < before.bytes
        util.check_stat(st.lstat("a/b/two"), L.p(2, "a/b/two"))


def test_invalidate_path_is_scoped(L):
    with L.stack(Stack) as st:
        st.lstat("a/b/one")
        st.lstat("many/d3/f3")
        gen = st.cache_info().generation
        st.invalidate("a/b/one")
        assert st.cache_info().generation > gen
        misses = st.cache_info().misses
        st.lstat("many/d3/f3")          # untouched part of the tree: still cached
        assert st.cache_info().misses == misses
        st.lstat("a/b/one")             # the dropped directory is read again
        assert st.cache_info().misses > misses


def test_changes_stay_invisible_until_invalidate(L):
    """Documented cache semantics of the C Stack: layers changed behind its
    back are seen after invalidate()."""
    with L.stack(Stack) as st:
        assert sorted(st.listdir("a/b")) == ["one", "two", "up"]
        util.mkfile(L.p(2, "a/b/new"), "n")
        assert "new" not in st.listdir("a/b")
        util.expect_errno(errno.ENOENT, st.lstat, "a/b/new")
        st.invalidate("a/b/new")
        assert "new" in st.listdir("a/b")
        util.check_stat(st.lstat("a/b/new"), L.p(2, "a/b/new"))


# -- invalidation: both implementations ---------------------------------------------------


def _warm(st):
    for top, dirs, files in st.walk():
        for n in dirs + files:
            st.lexists(top + "/" + n if top else n)
    st.lstat("lnk")
    st.stat("lnk")


@pytest.mark.parametrize("scope", ["path", "parent", "all"])
def test_invalidate_after_changes(impl, L, scope):
    def inv(st, path):
        if scope == "all":
            st.invalidate()
        elif scope == "parent":
            st.invalidate(os.path.dirname(path))
        else:
            st.invalidate(path)

    with L.stack(impl) as st:
        _warm(st)
        # 1. a new file in a lower layer
        util.mkfile(L.p(2, "a/b/new"), "n")
        inv(st, "a/b/new")
        util.check_stat(st.lstat("a/b/new"), L.p(2, "a/b/new"))
        assert "new" in st.listdir("a/b")
        # 2. a whiteout added in the upper
        util.whiteout(L.p(0, "a/b/two"))
        inv(st, "a/b/two")
        util.expect_errno(errno.ENOENT, st.lstat, "a/b/two")
        assert "two" not in st.listdir("a/b")
        # 3. a file replaced by a directory
        os.unlink(L.p(1, "a/b/one"))
        util.mkfile(L.p(1, "a/b/one/inside"), "i")
        inv(st, "a/b/one")
        assert st.isdir("a/b/one")
        assert st.listdir("a/b/one") == ["inside"]
        # 4. a file removed
        os.unlink(L.p(2, "f"))
        inv(st, "f")
        util.expect_errno(errno.ENOENT, st.lstat, "f")
        assert not st.exists("lnk")
        # 5. metadata changed in place
        os.chmod(L.p(0, "a/b/up"), 0o600)
        inv(st, "a/b/up")
        assert stat.S_IMODE(st.lstat("a/b/up").st_mode) == 0o600
        util.check_stat(st.lstat("a/b/up"), L.p(0, "a/b/up"))
        # 6. a directory made opaque
        util.opaque(L.p(1, "a"))
        inv(st, "a")
        assert sorted(st.listdir("a")) == ["b"]
        util.expect_errno(errno.ENOENT, st.lstat, "a/c")
        # 7. a directory tree removed from a layer
        shutil.rmtree(L.p(2, "many/d5"))
        inv(st, "many/d5")
        util.expect_errno(errno.ENOENT, st.lstat, "many/d5/f5")
        assert "d5" not in st.listdir("many")


def test_invalidate_root_changes(impl, L):
    with L.stack(impl) as st:
        _warm(st)
        util.mkfile(L.p(1, "newtop"), "t")
        util.whiteout(L.p(0, "many"))
        st.invalidate("")
        assert "newtop" in st.listdir()
        assert "many" not in st.listdir()
        util.check_stat(st.lstat("newtop"), L.p(1, "newtop"))


def test_invalidate_odd_paths(impl, L):
    with L.stack(impl) as st:
        _warm(st)
        for p in ("nope", "a/nope/deeper", "f/x", "lnk", "lnk/", "../..", "/", b"a/b", "a//b/"):
            assert st.invalidate(p) is None
        util.check_stat(st.lstat("a/b/one"), L.p(1, "a/b/one"))


def test_listdir_returns_a_fresh_list(impl, L):
    with L.stack(impl) as st:
        first = st.listdir("a/b")
        first.append("bogus")
        first.sort(reverse=True)
        again = st.listdir("a/b")
        assert "bogus" not in again and sorted(again) == ["one", "two", "up"]
        assert again is not st.listdir("a/b")


def test_cache_false_sees_changes_immediately(impl, L):
    with L.stack(impl, cache=False) as st:
        _warm(st)
        util.mkfile(L.p(2, "a/b/new"), "n")
        assert "new" in st.listdir("a/b")
        util.check_stat(st.lstat("a/b/new"), L.p(2, "a/b/new"))
        os.chmod(L.p(2, "a/b/new"), 0o640)
        util.check_stat(st.lstat("a/b/new"), L.p(2, "a/b/new"))
        util.whiteout(L.p(0, "f"))
        util.expect_errno(errno.ENOENT, st.lstat, "f")


def test_cache_false_counts_no_entries(L):
    with L.stack(Stack, cache=False) as st:
        _warm(st)
        info = st.cache_info()
        assert info.entries == 0 and info.dirs == 0 and info.hits == 0
        assert info.misses > 0


# -- cache_max_bytes ----------------------------------------------------------------------


def _answers(st):
    out = {}
    for top, dirs, files in st.walk():
        for n in dirs + files:
            p = top + "/" + n if top else n
            s = st.lstat(p)
            out[p] = (s.st_mode, s.st_ino, s.st_size, st.layer_of(p))
        out[top] = tuple(st.listdir(top))
    return out


def test_small_cache_flushes_but_stays_right(L):
    with L.stack(Stack) as big:
        want = _answers(big)
        assert big.cache_info().flushes == 0
    with L.stack(Stack, cache_max_bytes=2048) as small:
        for _ in range(3):
            assert _answers(small) == want
        info = small.cache_info()
        assert info.max_bytes == 2048
        assert info.flushes > 0
        util.check_stat(small.lstat("many/d7/f7"), L.p(2, "many/d7/f7"))


@pytest.mark.parametrize("bad", [0, -1])
def test_cache_max_bytes_must_be_positive(L, bad):
    with pytest.raises(ValueError):
        L.stack(Stack, cache_max_bytes=bad)


# -- writes through the Stack's own fds ---------------------------------------------


def test_writes_through_a_stack_fd_show_in_lstat(tmp_path):
    """Data, ftruncate and fchmod through an fd the Stack handed out change the
    upper file behind the cache: lookups of upper files then stat them, as
    the kernel's getattr asks the real inode (a cached lstat in between
    must not stick)."""
    L = util.Layers(tmp_path, nlowers=1, upper=True)
    util.mkfile(L.p(1, "f"), "hello\n")
    with L.stack(Stack) as st:
        assert st.lstat("f").st_size == 6
        with st.open("f", "a") as f:
            assert st.lstat("f").st_size == 6  # cached after the copy-up
            f.write("more\n")
            f.flush()
            assert st.lstat("f").st_size == 11
            os.fchmod(f.fileno(), 0o600)
            assert stat.S_IMODE(st.lstat("f").st_mode) == 0o600
        fd = st.os_open("g", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert st.lstat("g").st_size == 0
            os.write(fd, b"x" * 100)
            os.ftruncate(fd, 50)
        finally:
            os.close(fd)
        assert st.lstat("g").st_size == 50 == os.lstat(L.p(0, "g")).st_size
        assert st.stat("f").st_mtime_ns == os.lstat(L.p(0, "f")).st_mtime_ns
