"""Errors: constructor validation, OSError subclasses and filenames,
ENAMETOOLONG, use after close, closing twice, ResourceWarning."""

import errno
import gc
import os
import pathlib
import warnings

import pytest
import util

import overlayfs

Stack = overlayfs.Stack


@pytest.fixture
def L(tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.mkfile(L.p(1, "f"), "one")
    util.mkfile(L.p(2, "d/x"), "x")
    util.symlink(L.p(1, "lnk"), "f")
    util.mkfile(os.path.join(tmp_path, "regular"), "not a dir")
    return L


# -- constructor -------------------------------------------------------------------


def test_empty_lowers(impl, L):
    with pytest.raises(ValueError):
        impl([])
    with pytest.raises(ValueError):
        impl((), upper=L.upper, work=L.work)


@pytest.mark.parametrize("kw", [{"whiteouts": "aufs"}, {"whiteouts": ""}, {"whiteouts": "KERNEL"},
                                {"xattr_namespace": "security"}, {"xattr_namespace": ""},
                                {"xattr_namespace": "trusted.overlay"}])
def test_bad_option_values(impl, L, kw):
    with pytest.raises(ValueError):
        impl(L.lowers, **kw)


def test_upper_without_work(L):
    # The reference accepts a missing work dir (it never writes); the C Stack
    # follows the kernel's "upperdir needs workdir".
    with pytest.raises(ValueError):
        Stack(L.lowers, upper=L.upper)
    with pytest.raises(ValueError):
        Stack(L.lowers, work=L.work)


def test_missing_lower_root(impl, L, tmp_path):
    missing = os.path.join(tmp_path, "does-not-exist")
    with pytest.raises(FileNotFoundError) as info:
        impl([L.lowers[0], missing])
    assert os.fsencode(info.value.filename) == os.fsencode(missing)
    assert info.value.errno == errno.ENOENT
    if util.is_c(impl):
        assert info.value.filename == missing   # exactly as given


def test_non_dir_lower_root(impl, L, tmp_path):
    reg = os.path.join(tmp_path, "regular")
    with pytest.raises(NotADirectoryError) as info:
        impl([reg] + L.lowers)
    assert os.fsencode(info.value.filename) == os.fsencode(reg)


def test_c_missing_upper_work_data_roots(L, tmp_path):
    missing = os.path.join(tmp_path, "nope")
    with pytest.raises(FileNotFoundError) as info:
        Stack(L.lowers, upper=missing, work=L.work)
    assert info.value.filename == missing
    with pytest.raises(FileNotFoundError) as info:
        Stack(L.lowers, data_layers=[L.lowers[0], missing])
    assert info.value.filename == missing
    with pytest.raises(NotADirectoryError) as info:
        Stack(L.lowers, data_layers=[os.path.join(tmp_path, "regular")])
    assert info.value.filename == os.path.join(tmp_path, "regular")
    with pytest.raises(OSError) as info:
        Stack(L.lowers, upper=L.upper, work=missing)
    assert info.value.filename == missing


def test_c_constructor_types(L):
    with pytest.raises(TypeError):
        Stack(L.lowers[0])              # a single path, not a sequence
    with pytest.raises(TypeError):
        Stack([1, 2])
    with pytest.raises(ValueError):
        Stack([L.lowers[0] + "\0x"])
    with pytest.raises(ValueError):
        Stack(L.lowers, cache_max_bytes=0)


def test_layer_paths_any_pathlike(impl, L):
    for lowers in ([pathlib.Path(p) for p in L.lowers], [os.fsencode(p) for p in L.lowers]):
        with impl(lowers) as st:
            util.check_stat(st.lstat("f"), L.p(1, "f"))


# -- OSError subclasses and filenames ------------------------------------------------


@pytest.mark.parametrize("path,code,cls", [
    ("nope", errno.ENOENT, FileNotFoundError),
    ("d/nope/x", errno.ENOENT, FileNotFoundError),
    ("f/x", errno.ENOTDIR, NotADirectoryError),
    ("lnk/x", errno.ENOTDIR, NotADirectoryError),
    ("f/", errno.ENOTDIR, NotADirectoryError),
    ("a" * 256, errno.ENAMETOOLONG, OSError),
    ("d/" + "b" * 300 + "/x", errno.ENAMETOOLONG, OSError),
])
def test_error_class_and_filename(impl, L, path, code, cls):
    with L.stack(impl) as st:
        for fn in (st.lstat, st.stat, st.listdir, st.layer_of, st.readlink):
            e = util.expect_errno(code, fn, path)
            assert isinstance(e, cls)
            assert e.filename == path
            assert e.strerror == os.strerror(code)
        b = os.fsencode(path)
        e = util.expect_errno(code, st.lstat, b)
        assert e.filename == b
        for pred in (st.exists, st.lexists, st.isdir, st.isfile, st.islink):
            assert pred(path) is False
            assert pred(b) is False


def test_name_length_limits(impl, L):
    name255 = "n" * 255
    util.mkfile(L.p(2, "d/" + name255), "long")
    util.mkdir(L.p(1, "e" * 255))
    util.mkfile(L.p(1, "e" * 255 + "/" + name255), "longer")
    with L.stack(impl) as st:
        util.check_stat(st.lstat("d/" + name255), L.p(2, "d/" + name255))
        assert name255 in st.listdir("d")
        p = "e" * 255 + "/" + name255
        util.check_stat(st.lstat(p), L.p(1, p))
        util.expect_errno(errno.ENAMETOOLONG, st.lstat, "d/" + "n" * 256)
        util.expect_errno(errno.ENAMETOOLONG, st.lstat, "e" * 256 + "/" + name255)
        # 255 bytes of UTF-8 is fine, 256 is not
        u = "é" * 127 + "x"
        assert len(os.fsencode(u)) == 255
        util.mkfile(L.p(2, u), "utf8")
        st.invalidate()
        util.check_stat(st.lstat(u), L.p(2, u))
        util.expect_errno(errno.ENAMETOOLONG, st.lstat, "é" * 128)


def test_embedded_nul(impl, L):
    with L.stack(impl) as st:
        with pytest.raises(ValueError):
            st.lstat("f\0x")
        with pytest.raises(ValueError):
            st.listdir(b"d\0")
        assert st.exists("f\0x") is False
        assert st.isfile("f\0") is False


def test_bad_path_types(impl, L):
    with L.stack(impl) as st:
        for bad in (1, 2.5, None, ["f"], object()):
            with pytest.raises(TypeError):
                st.lstat(bad)


def test_pathlike_paths(impl, L):
    with L.stack(impl) as st:
        p = pathlib.PurePosixPath("d/x")
        util.check_stat(st.lstat(p), L.p(2, "d/x"))
        assert st.listdir(pathlib.PurePosixPath("d")) == ["x"]
        assert all(type(n) is str for n in st.listdir(pathlib.PurePosixPath("d")))


# -- lifetime ---------------------------------------------------------------------------


def test_use_after_close(impl, L):
    st = L.stack(impl)
    st.lstat("f")
    st.close()
    st.close()                                  # twice is fine
    for call in (lambda: st.lstat("f"), lambda: st.stat("f"), lambda: st.listdir(""),
                 lambda: st.scandir(""), lambda: st.readlink("lnk"),
                 lambda: st.open("f"), lambda: st.layer_of("f"), lambda: st.resolve("f"),
                 lambda: st.getxattr("f", "user.x"), lambda: st.listxattr("f"),
                 lambda: list(st.walk())):
        with pytest.raises(ValueError):
            call()


def test_c_use_after_close_everything(L):
    st = L.stack(Stack)
    it = st.scandir("")
    st.close()
    assert st.closed
    assert "closed" in repr(st)
    for name in ("exists", "lexists", "isdir", "isfile", "islink", "os_open", "invalidate"):
        with pytest.raises(ValueError):
            getattr(st, name)("f")
    with pytest.raises(ValueError):
        st.cache_info()
    with pytest.raises(ValueError):
        st.invalidate()
    with pytest.raises(ValueError):
        with st:
            pass
    # entries listed before the close may still be iterated; stat needs the stack
    ents = list(it)
    assert ents
    with pytest.raises(ValueError):
        [e.stat() for e in ents if e.name == "f"][0]


def test_c_context_manager(L):
    with L.stack(Stack) as st:
        assert isinstance(st, Stack)
        assert not st.closed
    assert st.closed
    with pytest.raises(RuntimeError):
        with L.stack(Stack) as st2:
            raise RuntimeError("boom")
    assert st2.closed


def test_c_resource_warning(L):
    st = L.stack(Stack)
    with pytest.warns(ResourceWarning, match="unclosed"):
        del st
        gc.collect()


def test_c_no_warning_when_closed(L):
    st = L.stack(Stack)
    st.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del st
        gc.collect()


def test_c_fds_released_on_close(L):
    before = util.fd_count()
    st = L.stack(Stack)
    st.listdir("d")
    assert util.fd_count() > before       # layer roots are held open
    st.close()
    assert util.fd_count() == before


# -- over-long paths ---------------------------------------------------------------


@pytest.mark.parametrize("length", [4095, 4096, 200_000])
def test_path_max_is_checked_before_the_walk(impl, L, tmp_path, monkeypatch, length):
    """A path that does not fit in PATH_MAX (4096 bytes with its NUL) is
    ENAMETOOLONG at once, as the kernel's getname() gives it before walking:
    the same answers os.lstat gives for the same relative path on disk."""
    path = ("a/" * length)[:length]
    monkeypatch.chdir(tmp_path)
    try:
        want = os.lstat(path)
    except OSError as exc:
        want = exc.errno
    with L.stack(impl) as st:
        got = util.expect_errno(want, st.lstat, path)
        assert got.filename == path
    assert want == (errno.ENOENT if length < 4096 else errno.ENAMETOOLONG)


def test_makedirs_of_an_over_long_path_fails_at_once(L):
    """os.makedirs fails with ENAMETOOLONG without making anything; so does
    the Stack's, without recursing once per component."""
    with Stack(L.lowers, L.upper, L.work) as st:
        before = sorted(os.listdir(L.upper))
        e = util.expect_errno(errno.ENAMETOOLONG, st.makedirs, "n/" * 50_000)
        assert e.filename == "n/" * 50_000
        assert sorted(os.listdir(L.upper)) == before
        util.expect_errno(errno.ENAMETOOLONG, st.mkdir, "n/" * 2048)


# -- relative layer paths ------------------------------------------------------------


def test_relative_layer_paths_are_made_absolute(impl, tmp_path, monkeypatch):
    """Host paths a stack hands out name what it opened, after a chdir too."""
    for name in ("L1", "L2", "up", "wk"):
        os.mkdir(tmp_path / name)
    util.mkfile(str(tmp_path / "L1" / "f"), "one")
    monkeypatch.chdir(tmp_path)
    upper = {} if not util.is_c(impl) else {"upper": "up", "work": "./wk"}
    st = impl(["L1", b"./L2"], **upper)
    try:
        monkeypatch.chdir("/")
        assert st.resolve("f") == str(tmp_path / "L1" / "f")
        assert st.lowers == (str(tmp_path / "L1"), os.fsencode(tmp_path / "L2"))
        if upper:
            assert st.upper == str(tmp_path / "up")
            assert st.work == str(tmp_path / "wk")
            assert st.copy_up("f").path == str(tmp_path / "up" / "f")
            assert st.resolve("f") == str(tmp_path / "up" / "f")
    finally:
        st.close()
