"""Odd names and paths: spaces, colons, commas, newlines, backslashes,
non-UTF-8 bytes (bytes API and surrogateescape str), odd layer paths, and a
PATH_MAX-deep tree."""

import errno
import os

import pytest
import util

import overlayfs

ODD = [
    b"with space", b" leading", b"trailing ", b"a:b", b"a,b", b"new\nline", b"tab\there",
    b"back\\slash", b"-dash", b".hidden", b"...", b"caf\xc3\xa9", b"\xf0\x9f\x90\x8d",
    b"bad\xff\xfe", b"\x80", b"lowerdir=x,upperdir=y", b"::", b"%s%n", b"*?[a]",
    b"\x01\x7f",
]


@pytest.fixture
def odd(tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    b1, b2 = os.fsencode(L.p(1)), os.fsencode(L.p(2))
    for i, n in enumerate(ODD):
        base = b1 if i % 2 else b2
        util.mkfile(os.path.join(base, n), n)
        util.mkfile(os.path.join(b2, b"dir " + n, n), b"in dir")
    # whiteouts and symlinks with odd names
    util.mkfile(os.path.join(b2, b"gone\xff"), b"x")
    util.whiteout(os.path.join(b1, b"gone\xff"))
    util.symlink(os.path.join(b1, b"link\n\xff"), b"dir a:b/a:b")
    return L


def test_bytes_api(impl, odd):
    L = odd
    b1, b2 = os.fsencode(L.p(1)), os.fsencode(L.p(2))
    with L.stack(impl) as st:
        names = st.listdir(b"")
        assert all(type(n) is bytes for n in names)
        assert sorted(names) == sorted(ODD + [b"dir " + n for n in ODD] + [b"link\n\xff"])
        for i, n in enumerate(ODD):
            host = os.path.join(b1 if i % 2 else b2, n)
            util.check_stat(st.lstat(n), host)
            assert st.resolve(n) == host
            assert st.layer_of(n) == (1 if i % 2 else 2)
            with st.open(n) as f:
                assert f.read() == n
            assert st.listdir(b"dir " + n) == [n]
            util.check_stat(st.lstat(b"dir " + n + b"/" + n), os.path.join(b2, b"dir " + n, n))
        util.expect_errno(errno.ENOENT, st.lstat, b"gone\xff")
        assert st.readlink(b"link\n\xff") == b"dir a:b/a:b"
        util.check_stat(st.stat(b"link\n\xff"), os.path.join(b2, b"dir a:b", b"a:b"))
        ents = {e.name: e for e in st.scandir(b"dir bad\xff\xfe")}
        assert list(ents) == [b"bad\xff\xfe"]
        assert ents[b"bad\xff\xfe"].path == b"dir bad\xff\xfe/bad\xff\xfe"


def test_surrogateescape_str_api(impl, odd):
    L = odd
    with L.stack(impl) as st:
        names = st.listdir("")
        assert all(type(n) is str for n in names)
        assert sorted(names) == sorted(os.fsdecode(n) for n in st.listdir(b""))
        for i, n in enumerate(ODD):
            s = os.fsdecode(n)
            host = os.path.join(L.p(1) if i % 2 else L.p(2), s)
            util.check_stat(st.lstat(s), host)
            assert st.resolve(s) == host
            assert type(st.resolve(s)) is str
            assert st.listdir("dir " + s) == [s]
        assert "bad\udcff\udcfe" in names
        assert st.readlink("link\n\udcff") == "dir a:b/a:b"
        for e in st.scandir(os.fsdecode(b"dir \x80")):
            assert e.name == "\udc80" and e.path == os.fsdecode(b"dir \x80/\x80")
        walked = {top: files for top, _, files in st.walk()}
        assert walked[os.fsdecode(b"dir bad\xff\xfe")] == [os.fsdecode(b"bad\xff\xfe")]


def test_str_and_bytes_agree(impl, odd):
    with odd.stack(impl) as st:
        for n in ODD:
            assert st.lstat(n) == st.lstat(os.fsdecode(n))
            assert os.fsencode(st.resolve(os.fsdecode(n))) == st.resolve(n)
        for top, dirs, files in st.walk(b""):
            assert all(type(x) is bytes for x in dirs + files + [top])


@pytest.mark.parametrize("layer_name", [b"l a:y,e\\r", b"new\nline", b"\xff\xfe", b"lowerdir=a,b",
                                        b"sp ace", b"x" * 200])
def test_odd_layer_paths(impl, tmp_path, layer_name):
    """Layer paths are never parsed, so ':' ',' '\\' and newlines are fine."""
    base = os.fsencode(tmp_path)
    top = util.mkdir(os.path.join(base, layer_name + b"-1"))
    bot = util.mkdir(os.path.join(base, layer_name + b"-2"))
    util.mkfile(os.path.join(top, b"f"), b"top")
    util.mkfile(os.path.join(bot, b"f"), b"bottom")
    util.mkfile(os.path.join(bot, b"g"), b"g")
    for lowers in ([top, bot], [os.fsdecode(top), os.fsdecode(bot)]):
        with impl(lowers) as st:
            util.check_stat(st.lstat("f"), os.path.join(top, b"f"))
            util.check_stat(st.lstat("g"), os.path.join(bot, b"g"))
            assert st.resolve(b"g") == os.path.join(bot, b"g")
            assert os.fsencode(st.resolve("g")) == os.path.join(bot, b"g")


def test_relative_layer_paths(impl, tmp_path, monkeypatch):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(2, "f"), "x")
    monkeypatch.chdir(tmp_path)
    with impl(["l1", "l2"]) as st:
        util.check_stat(st.lstat("f"), L.p(2, "f"))
        monkeypatch.chdir("/")
        util.check_stat(st.lstat("f"), L.p(2, "f"))   # bound at open time


def _deep(tmp_path, total):
    """A union path of exactly `total` bytes: dirs of 200 bytes and a leaf."""
    L = util.Layers(tmp_path, nlowers=2)
    n = -(-(total - 255) // 201)
    comps = ["d%03d" % i + "x" * 196 for i in range(n)]
    leaf = "f" * (total - 201 * n)
    assert 1 <= len(leaf) <= 255
    half = len(comps) // 2
    util.mkdirs_deep(L.p(2), comps)
    util.mkdirs_deep(L.p(1), comps[:half + 1])      # merged part way down
    util.write_deep(L.p(2), comps, leaf, b"deep")
    union = "/".join(comps + [leaf])
    assert len(union) == total
    return L, comps, leaf, union


def test_deep_tree_4000(impl, tmp_path):
    L, comps, leaf, union = _deep(tmp_path, 4000)
    with L.stack(impl) as st:
        s = st.lstat(union)
        want = util.lstat_deep(L.p(2), comps + [leaf])
        assert (s.st_ino, s.st_size, s.st_mode) == (want.st_ino, want.st_size, want.st_mode)
        assert st.listdir("/".join(comps)) == [leaf]
        assert st.layer_of(union) == 2
        with st.open(union) as f:
            assert f.read() == b"deep"
        mid = "/".join(comps[:len(comps) // 2 + 1])
        assert st.lstat(mid).st_nlink == 1             # merged
        assert st.isdir("/".join(comps) + "/../")
        assert not st.isdir(union + "/..")            # a file has no ..


@pytest.mark.parametrize("total", [4094, 4095])
def test_c_deep_tree_path_max(tmp_path, total):
    """Union paths up to PATH_MAX - 1 resolve (host paths are longer than
    PATH_MAX: everything is fd-relative)."""
    L, comps, leaf, union = _deep(tmp_path, total)
    with L.stack(overlayfs.Stack) as st:
        s = st.lstat(union)
        want = util.lstat_deep(L.p(2), comps + [leaf])
        assert (s.st_ino, s.st_size) == (want.st_ino, want.st_size)
        host = st.resolve(union)
        assert host == L.p(2) + "/" + union and len(host) > 4096
        assert st.resolve(os.fsencode(union)) == os.fsencode(host)
        with st.open(union) as f:
            assert f.read() == b"deep"
        assert [top for top, _, files in st.walk() if files] == ["/".join(comps)]
