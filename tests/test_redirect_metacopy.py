"""Directory redirects, metacopy files and data-only layers
(docs/overlay-semantics.md §1.7-§1.9).

Expected answers were cross-checked with a kernel mount on 6.18 (see the
report of this test file's author for the cases where the kernel and the
contract differ)."""

import errno
import os

import pytest
import util

import overlayfs

# -- directory redirects ------------------------------------------------------------


@pytest.fixture
def renamed(tmp_path):
    """What `mv old new` leaves with redirect_dir=on: upper new/ with
    redirect "old" and a whiteout at old."""
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.mkfile(L.p(1, "old/x"), "x1")
    util.mkfile(L.p(2, "old/y"), "y2")
    util.mkfile(L.p(2, "new/shadowed"), "never")
    util.redirect(L.p(0, "new"), "old")
    util.whiteout(L.p(0, "old"))
    util.mkfile(L.p(0, "new/u"), "u0")
    return L


def test_relative_redirect(impl, renamed):
    L = renamed
    with L.stack(impl) as st:
        assert sorted(st.listdir("new")) == ["u", "x", "y"]
        util.check_stat(st.lstat("new/x"), L.p(1, "old/x"))
        util.check_stat(st.lstat("new/y"), L.p(2, "old/y"))
        util.check_stat(st.lstat("new/u"), L.p(0, "new/u"))
        assert st.layer_of("new/y") == 2
        assert st.resolve("new/x") == L.p(1, "old/x")
        util.expect_errno(errno.ENOENT, st.lstat, "new/shadowed")
        util.expect_errno(errno.ENOENT, st.lstat, "old")
        util.check_stat(st.lstat("new"), L.p(0, "new"), merged_origin=L.p(1, "old"), impl=impl)
        assert sorted(st.listdir()) == ["new"]
        with st.open("new/y") as f:
            assert f.read() == b"y2"


def test_absolute_redirect_from_upper_only_parent(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.mkfile(L.p(1, "b/old/x"), "x")
    util.mkfile(L.p(2, "b/old/y"), "y")
    util.redirect(L.p(0, "a/new"), "/b/old")  # 'a' exists only in the upper
    with L.stack(impl) as st:
        assert sorted(st.listdir("a/new")) == ["x", "y"]
        util.check_stat(st.lstat("a/new/y"), L.p(2, "b/old/y"))
        # the source is still visible: nothing whited it out
        assert sorted(st.listdir("b/old")) == ["x", "y"]


def test_redirect_in_lower_layer(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=3)
    util.mkfile(L.p(1, "new/top"), "t")
    util.redirect(L.p(1, "new"), "old")
    util.mkfile(L.p(2, "old/mid"), "m")
    util.mkfile(L.p(3, "old/bot"), "b")
    util.mkfile(L.p(3, "new/never"), "n")
    with L.stack(impl) as st:
        assert sorted(st.listdir("new")) == ["bot", "mid", "top"]
        util.check_stat(st.lstat("new/bot"), L.p(3, "old/bot"))
        util.expect_errno(errno.ENOENT, st.lstat, "new/never")


def test_redirect_chain(impl, tmp_path):
    """upper n1 -> "n2" in l1, whose own redirect "n3" continues in l2."""
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.redirect(L.p(0, "n1"), "n2")
    util.redirect(L.p(1, "n2"), "n3")
    util.mkfile(L.p(1, "n2/in2"))
    util.mkfile(L.p(2, "n3/in3"))
    util.mkfile(L.p(2, "n1/shadow"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("n1")) == ["in2", "in3"]
        util.check_stat(st.lstat("n1/in3"), L.p(2, "n3/in3"))


def test_absolute_then_relative_redirect(impl, tmp_path):
    """A relative redirect met on an absolute path replaces its last
    component: /b/old -> /b/old2 in the layers below."""
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    util.redirect(L.p(0, "a/new"), "/b/old")
    util.mkfile(L.p(1, "b/old/x"))
    util.redirect(L.p(1, "b/old"), "old2")
    util.mkfile(L.p(2, "b/old2/y"))
    util.mkfile(L.p(2, "b/old/z"))
    util.mkfile(L.p(3, "b/old2/w"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("a/new")) == ["w", "x", "y"]
        util.check_stat(st.lstat("a/new/w"), L.p(3, "b/old2/w"))


def test_absolute_redirect_in_lower_and_twice(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    util.redirect(L.p(1, "p/new"), "/q/old")
    util.mkfile(L.p(1, "p/new/top"))
    util.mkfile(L.p(2, "q/old/y"))
    util.mkfile(L.p(3, "q/old/z"))
    util.mkfile(L.p(2, "p/new/never"))
    util.redirect(L.p(0, "r/new"), "/s/one")
    util.mkfile(L.p(1, "s/one/a"))
    util.redirect(L.p(1, "s/one"), "/t/two")
    util.mkfile(L.p(2, "t/two/b"))
    util.mkfile(L.p(3, "t/two/c"))
    util.mkfile(L.p(2, "s/one/never"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("p/new")) == ["top", "y", "z"]
        util.check_stat(st.lstat("p/new/z"), L.p(3, "q/old/z"))
        assert sorted(st.listdir("r/new")) == ["a", "b", "c"]
        util.check_stat(st.lstat("r/new/c"), L.p(3, "t/two/c"))


@pytest.mark.parametrize("case", ["whiteout-ancestor", "whiteout-target", "opaque-target",
                                  "file-target", "file-ancestor", "opaque-upper-ancestor"])
def test_absolute_redirect_path_walk_stops(impl, tmp_path, case):
    """The lower search for an absolute redirect walks /e/old in each layer;
    a whiteout or non-dir on the way, or an opaque target, ends the merge
    there (all verified against a 6.18 mount)."""
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    util.redirect(L.p(0, "c/new"), "/e/old")
    util.mkfile(L.p(0, "c/new/u"))
    util.mkfile(L.p(2, "e/old/y"))
    want = ["u"]
    if case == "whiteout-ancestor":
        util.whiteout(L.p(1, "e"))
    elif case == "whiteout-target":
        util.mkdir(L.p(1, "e"))
        util.whiteout(L.p(1, "e/old"))
    elif case == "opaque-target":
        util.mkfile(L.p(1, "e/old/x"))
        util.opaque(L.p(1, "e/old"))
        want = ["u", "x"]
    elif case == "file-target":
        util.mkfile(L.p(1, "e/old"), "file")
    elif case == "file-ancestor":
        util.mkfile(L.p(1, "e"), "file")
    else:
        util.opaque(L.p(0, "e"))
        want = ["u", "y"]
    with L.stack(impl) as st:
        assert sorted(st.listdir("c/new")) == want


@pytest.mark.parametrize("where", [1, 2])
def test_absolute_redirect_opaque_ancestor_in_lower(impl, request, tmp_path, where):
    """An opaque *ancestor* met while walking an absolute redirect in lower
    layer `where` ends the merge after that layer (verified on 6.18: upper
    c/new -> /e/old, l<where>: e opaque -> only layers down to <where>)."""
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    util.redirect(L.p(0, "c/new"), "/e/old")
    for i in (1, 2, 3):
        util.mkfile(L.p(i, f"e/old/in{i}"))
    util.opaque(L.p(where, "e"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("c/new")) == [f"in{i}" for i in range(1, where + 1)]
        util.expect_errno(errno.ENOENT, st.lstat, "c/new/in3")


def test_redirect_target_missing_is_plain_dir(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.redirect(L.p(0, "d"), "missing")
    util.mkfile(L.p(0, "d/u"))
    util.mkfile(L.p(1, "d/never"))
    with L.stack(impl) as st:
        assert st.listdir("d") == ["u"]
        util.check_stat(st.lstat("d"), L.p(0, "d"))


def test_redirect_on_regular_file_ignored(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=1, upper=True)
    util.mkfile(L.p(0, "f"), "up")
    util.redirect(L.p(0, "f"), "/x")
    util.mkfile(L.p(1, "x"), "xx")
    util.mkfile(L.p(1, "f"), "low")
    with L.stack(impl) as st:
        util.check_stat(st.lstat("f"), L.p(0, "f"))
        with st.open("f") as fh:
            assert fh.read() == b"up"


BAD = [b"a/b", b"", b"/a//b", b"/a/", b"//", b"x/"]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_invalid_redirect_einval(impl, tmp_path, bad):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.redirect(L.p(0, "d"), bad)
    util.mkdir(L.p(1, "d"))
    util.redirect(L.p(1, "m"), bad)   # in a lower with a layer below
    util.mkdir(L.p(2, "m"))
    with L.stack(impl) as st:
        for p in ("d", "m"):
            util.expect_errno(errno.EINVAL, st.lstat, p)
            util.expect_errno(errno.EINVAL, st.listdir, p)
            assert not st.exists(p) and not st.lexists(p)


def test_invalid_redirect_name_still_listed(impl, request, tmp_path):
    """readdir does not look entries up: the kernel lists the name whose
    lookup fails with EINVAL (verified on 6.18)."""
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.redirect(L.p(0, "bad"), "a/b")
    util.mkdir(L.p(1, "bad"))
    util.mkfile(L.p(1, "ok"))
    with L.stack(impl) as st:
        assert sorted(st.listdir()) == ["bad", "ok"]


@pytest.mark.parametrize("bad", [b"a/b", b""], ids=repr)
def test_invalid_redirect_in_bottom_layer_ignored(impl, request, tmp_path, bad):
    """The kernel never reads redirects in the last layer (d->last), so an
    invalid value there is harmless (verified on 6.18)."""
    L = util.Layers(tmp_path, nlowers=2)
    util.redirect(L.p(2, "d"), bad)
    util.mkfile(L.p(2, "d/x"))
    util.mkfile(L.p(1, "d/y"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("d")) == ["x", "y"]


def test_redirect_nofollow_eperm(impl, renamed):
    L = renamed
    util.redirect(L.p(0, "dangling"), "missing")
    with L.stack(impl, redirect_follow=False) as st:
        util.expect_errno(errno.EPERM, st.lstat, "new")
        util.expect_errno(errno.EPERM, st.lstat, "new/x")
        util.expect_errno(errno.EPERM, st.listdir, "new")
        # EPERM even when the target does not exist (verified on 6.18)
        util.expect_errno(errno.EPERM, st.lstat, "dangling")
        assert not st.exists("new")


def test_redirect_nofollow_ignored_without_lower_stack(impl, request, tmp_path):
    """docs/overlay-semantics.md §1.7: with nofollow the redirect is silently ignored when
    the parent has no lower stack (verified on 6.18)."""
    L = util.Layers(tmp_path, nlowers=1, upper=True)
    util.mkfile(L.p(1, "old/x"))
    util.redirect(L.p(0, "p/new"), "old")   # p only in the upper
    util.mkfile(L.p(0, "p/new/u"))
    with L.stack(impl, redirect_follow=False) as st:
        assert st.listdir("p/new") == ["u"]


def test_redirect_user_namespace(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.redirect(L.p(1, "new"), "old", ns="user")
    util.mkfile(L.p(2, "old/o"))
    util.mkfile(L.p(2, "new/n"))
    with L.stack(impl, xattr_namespace="user") as st:
        assert st.listdir("new") == ["o"]
    with L.stack(impl) as st:
        assert st.listdir("new") == ["n"]


# -- metacopy ------------------------------------------------------------------------


@pytest.fixture
def mc(tmp_path):
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    util.mkfile(L.p(1, "a"), "hello" * 1000, mode=0o644)
    util.metacopy(L.p(0, "a"), size=5000, mode=0o600)
    os.chown(L.p(0, "a"), 321, 654)
    util.metacopy(L.p(0, "nodata"), size=5)
    util.mkdir(L.p(1, "overdir"))
    util.metacopy(L.p(0, "overdir"), size=5)
    util.mkfile(L.p(1, "other/name"), "redirected")
    util.metacopy(L.p(0, "rd"), size=10, redirect_to="/other/name")
    util.metacopy(L.p(0, "rel"), size=3, redirect_to="relname")
    util.mkfile(L.p(1, "relname"), "rel")
    util.metacopy(L.p(0, "chain"), size=4)
    util.metacopy(L.p(1, "chain"), size=4)
    util.mkfile(L.p(2, "chain"), "data")
    util.metacopy(L.p(1, "lowmc"), size=3)
    util.mkfile(L.p(2, "lowmc"), "low")
    return L


def test_metacopy_data_from_below(impl, mc):
    L = mc
    with L.stack(impl, metacopy=True) as st:
        s = st.lstat("a")
        # metadata from the metacopy file, st_blocks from the data file
        util.check_stat(s, L.p(0, "a"), blocks_from=L.p(1, "a"), skip=("st_ino",))
        assert (s.st_mode & 0o777, s.st_uid, s.st_gid, s.st_size) == (0o600, 321, 654, 5000)
        assert s.st_blocks == os.lstat(L.p(1, "a")).st_blocks != os.lstat(L.p(0, "a")).st_blocks
        assert st.layer_of("a") == 0
        assert st.resolve("a") == L.p(0, "a")
        with st.open("a") as f:
            assert f.read() == b"hello" * 1000
        for name, data, host in (("rd", b"redirected", L.p(1, "other/name")),
                                 ("rel", b"rel", L.p(1, "relname")),
                                 ("chain", b"data", L.p(2, "chain")),
                                 ("lowmc", b"low", L.p(2, "lowmc"))):
            with st.open(name) as f:
                assert f.read() == data, name
            assert st.lstat(name).st_blocks == os.lstat(host).st_blocks


def test_c_resolve_data(mc):
    L = mc
    with L.stack(overlayfs.Stack, metacopy=True) as st:
        assert st.resolve("a", data=True) == L.p(1, "a")
        assert st.resolve("chain", data=True) == L.p(2, "chain")
        assert st.resolve("rd", data=True) == L.p(1, "other/name")
        assert st.resolve("lowmc") == L.p(1, "lowmc")
        assert st.resolve("lowmc", data=True) == L.p(2, "lowmc")
        fd = st.os_open("a")
        try:
            assert os.fstat(fd).st_ino == os.lstat(L.p(1, "a")).st_ino
        finally:
            os.close(fd)


def test_metacopy_not_enabled_eperm(impl, mc):
    with mc.stack(impl) as st:
        for name in ("a", "nodata", "rd", "chain", "lowmc"):
            util.expect_errno(errno.EPERM, st.lstat, name)
            util.expect_errno(errno.EPERM, st.open, name)
            assert not st.exists(name)


@pytest.mark.parametrize("name", ["nodata", "overdir"])
def test_metacopy_without_data_eio(impl, mc, name):
    with mc.stack(impl, metacopy=True) as st:
        util.expect_errno(errno.EIO, st.lstat, name)
        util.expect_errno(errno.EIO, st.open, name)


def test_metacopy_ino_is_data_origin(impl, request, mc):
    """The kernel reports the lower file's st_ino for an upper metacopy file
    (it is a metadata-only copy-up; verified on 6.18 with no origin xattr)."""
    with mc.stack(impl, metacopy=True) as st:
        assert st.lstat("a").st_ino == os.lstat(mc.p(1, "a")).st_ino


# -- data-only layers -------------------------------------------------------------------


@pytest.fixture
def data(tmp_path):
    """l1:l2::d1::d2 with the metacopy files in the bottom lower layer (the
    kernel's data-layer lookup needs no metacopy=on then, on any version)."""
    L = util.Layers(tmp_path, nlowers=2, ndata=2)
    util.metacopy(L.p(2, "obj"), size=6, redirect_to="/objects/abc", mode=0o640)
    util.mkfile(L.p(3, "objects/abc"), "object")
    util.mkfile(L.p(4, "objects/abc"), "second")
    util.metacopy(L.p(2, "obj2"), size=6, redirect_to="/objects/only2")
    util.mkfile(L.p(4, "objects/only2"), "in d2")
    util.metacopy(L.p(2, "missing"), size=6, redirect_to="/objects/nope")
    util.mkfile(L.p(3, "plain"), "data layers are never searched by name")
    util.mkfile(L.p(1, "topfile"), "x")
    return L


def test_data_layers(impl, data):
    L = data
    with L.stack(impl) as st:
        s = st.lstat("obj")
        util.check_stat(s, L.p(2, "obj"), blocks_from=L.p(3, "objects/abc"), skip=("st_ino",))
        with st.open("obj") as f:
            assert f.read() == b"object"
        with st.open("obj2") as f:
            assert f.read() == b"in d2"
        assert st.layer_of("obj") == 2
        for hidden in ("objects", "objects/abc", "plain"):
            util.expect_errno(errno.ENOENT, st.lstat, hidden)
        assert sorted(st.listdir()) == ["missing", "obj", "obj2", "topfile"]
    with L.stack(impl, metacopy=True) as st:
        with st.open("obj") as f:
            assert f.read() == b"object"


def test_data_layers_metacopy_above_other_lowers(impl, tmp_path):
    """A metacopy file in a non-bottom lower, redirected into a data layer,
    without metacopy=True: the kernel (6.18, the oracle here) refuses to
    follow it below the other lowers (namei.c:ovl_check_follow_redirect),
    EPERM; with metacopy=True the data is found."""
    L = util.Layers(tmp_path, nlowers=2, ndata=1)
    util.metacopy(L.p(1, "obj"), size=6, redirect_to="/objects/abc")
    util.mkfile(L.p(3, "objects/abc"), "object")
    with L.stack(impl) as st:
        util.expect_errno(errno.EPERM, st.lstat, "obj")
    with L.stack(impl, metacopy=True) as st:
        with st.open("obj") as f:
            assert f.read() == b"object"


def test_c_data_layer_indices(data):
    L = data
    with L.stack(overlayfs.Stack) as st:
        assert st.layers == (None, L.p(1), L.p(2), L.p(3), L.p(4))
        assert st.resolve("obj", data=True) == L.p(3, "objects/abc")
        assert st.resolve("obj2", data=True) == L.p(4, "objects/only2")
        assert st.resolve("obj") == L.p(2, "obj")


def test_data_layer_lookup_is_lazy(impl, request, data):
    """docs/overlay-semantics.md §1.9: the data-layer lookup happens at the first data access,
    so stat works and open fails (kernel 6.18: lstat ok, open ENOENT)."""
    L = data
    with L.stack(impl) as st:
        util.check_stat(st.lstat("missing"), L.p(2, "missing"), skip=("st_blocks", "st_ino"))
        util.expect_errno(errno.ENOENT, st.open, "missing")
