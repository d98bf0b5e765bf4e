"""Whiteouts: char 0:0 (any mode), xattr whiteouts, the OCI/AUFS ".wh." forms,
and the whiteouts= switch.  docs/overlay-semantics.md §2 and §8 (traps 3, 5)."""

import errno
import os
import stat

import pytest
import util


def gone(st, path):
    """path is whited out: every query agrees."""
    util.expect_errno(errno.ENOENT, st.lstat, path)
    util.expect_errno(errno.ENOENT, st.stat, path)
    assert not st.lexists(path) and not st.exists(path)
    assert not st.isfile(path) and not st.isdir(path) and not st.islink(path)
    assert st.resolve(path) is None
    with pytest.raises(FileNotFoundError):
        st.open(path)


@pytest.mark.parametrize("mode", [0o000, 0o644, 0o777, 0o4755])
def test_chardev_00_any_mode_hides(impl, tmp_path, mode):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(2, "f"), "below")
    util.mkfile(L.p(2, "keep"), "k")
    util.whiteout(L.p(1, "f"), mode)
    with L.stack(impl) as st:
        gone(st, "f")
        assert st.listdir() == ["keep"]
        assert [e.name for e in st.scandir()] == ["keep"]


@pytest.mark.parametrize("rdev", [(0, 1), (1, 0), (1, 3)])
def test_other_chardevs_are_not_whiteouts(impl, tmp_path, rdev):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(2, "f"), "below")
    util.chardev(L.p(1, "f"), *rdev)
    with L.stack(impl) as st:
        s = st.lstat("f")
        util.check_stat(s, L.p(1, "f"))
        assert stat.S_ISCHR(s.st_mode) and s.st_rdev == os.makedev(*rdev)
        assert st.listdir() == ["f"]


def test_whiteout_in_upper_hides_lower_dir_tree(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.mkfile(L.p(1, "d/a/b"), "x")
    util.mkfile(L.p(2, "d/c"), "y")
    util.whiteout(L.p(0, "d"))
    util.mkfile(L.p(2, "other"))
    with L.stack(impl) as st:
        gone(st, "d")
        for p in ("d/a", "d/a/b", "d/c"):
            util.expect_errno(errno.ENOENT, st.lstat, p)
        util.expect_errno(errno.ENOENT, st.listdir, "d")
        assert st.listdir() == ["other"]


def test_whiteout_only_affects_layers_below(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=3)
    util.mkfile(L.p(1, "f"), "top")
    util.whiteout(L.p(2, "f"))
    util.mkfile(L.p(3, "f"), "bottom")
    util.whiteout(L.p(2, "g"))
    util.mkfile(L.p(3, "g"), "bottom")
    with L.stack(impl) as st:
        util.check_stat(st.lstat("f"), L.p(1, "f"))
        with st.open("f") as fh:
            assert fh.read() == b"top"
        gone(st, "g")
        assert sorted(st.listdir()) == ["f"]


def test_whiteout_below_dir_keeps_only_layers_above(impl, tmp_path):
    # docs/overlay-semantics.md §1.3: upper dir d, l2 whiteout, l3 dir d
    # -> only upper (+l1) entries.
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    util.mkfile(L.p(0, "d/u"))
    util.mkfile(L.p(1, "d/one"))
    util.whiteout(L.p(2, "d"))
    util.mkfile(L.p(3, "d/deep"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("d")) == ["one", "u"]
        util.expect_errno(errno.ENOENT, st.lstat, "d/deep")
        util.check_stat(st.lstat("d"), L.p(0, "d"), merged_origin=L.p(1, "d"), impl=impl)


def test_whiteout_in_bottom_layer_with_nothing_below(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.whiteout(L.p(2, "w"))
    util.mkfile(L.p(2, "f"))
    util.mkfile(L.p(1, "g"))
    with L.stack(impl) as st:
        gone(st, "w")
        assert sorted(st.listdir()) == ["f", "g"]


def test_whiteouts_never_listed_even_in_plain_dir(impl, tmp_path):
    """API contract: listdir has no whiteouts.  (The kernel lists a plain
    single-layer dir raw, char devices included -- docs/overlay-semantics.md
    trap 9; the Stack hides them since the names cannot be looked up.)"""
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(1, "plain/x"))
    util.whiteout(L.p(1, "plain/w"))
    util.whiteout(L.p(1, "plain/w2"), 0o644)
    with L.stack(impl) as st:
        assert st.listdir("plain") == ["x"]
        gone(st, "plain/w")


def test_listing_order_with_whiteouts(impl, tmp_path):
    """Bottom layer's names in its getdents order, then the others by first
    appearance top-down; whited-out names are dropped (docs/overlay-semantics.md §4.2)."""
    L = util.Layers(tmp_path, nlowers=3)
    names3 = [f"n{i:02d}" for i in range(40)]
    for n in names3:
        util.mkfile(L.p(3, "d/" + n))
    for n in names3[::3]:
        util.whiteout(L.p(2, "d/" + n))
    for n in ["a", "b", "n05", "zz"]:
        util.mkfile(L.p(1, "d/" + n))
    util.whiteout(L.p(1, "d/n07"))
    hidden = {n for n in names3[::3]} | {"n07"}
    hidden.discard("n05")
    want = util.merged_order([L.p(1, "d"), L.p(2, "d"), L.p(3, "d")], hidden=hidden)
    with L.stack(impl) as st:
        assert st.listdir("d") == want
        assert [e.name for e in st.scandir("d")] == want


# -- xattr whiteouts -----------------------------------------------------------


@pytest.mark.parametrize("where", [0, 1, 2, 3])
def test_xwhiteout_hides_lookup_in_every_layer(impl, tmp_path, where):
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    for i in range(where + 1, 4):
        util.mkfile(L.p(i, "f"), f"layer{i}")
    util.xwhiteout(L.p(where, "f"))
    util.mkfile(L.p(3, "keep"))
    with L.stack(impl) as st:
        util.expect_errno(errno.ENOENT, st.lstat, "f")
        assert not st.lexists("f") and not st.exists("f")
        with pytest.raises(FileNotFoundError):
            st.open("f")


def test_xwhiteout_hides_lower_dir(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(2, "d/x"))
    util.xwhiteout(L.p(1, "d"))
    with L.stack(impl) as st:
        util.expect_errno(errno.ENOENT, st.lstat, "d")
        util.expect_errno(errno.ENOENT, st.lstat, "d/x")


def test_xwhiteout_value_is_irrelevant(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(2, "f"))
    util.xwhiteout(L.p(1, "f"), value=b"anything")
    with L.stack(impl) as st:
        util.expect_errno(errno.ENOENT, st.lstat, "f")


def test_xwhiteout_must_be_zero_size(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(2, "f"), "below")
    util.mkfile(L.p(1, "f"), "x", xattrs={util.xname("whiteout"): b""})
    with L.stack(impl) as st:
        util.check_stat(st.lstat("f"), L.p(1, "f"))
        with st.open("f") as fh:
            assert fh.read() == b"x"
        assert st.listdir() == ["f"]


def test_xwhiteout_hidden_in_listing_under_marked_middle_dir(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=3)
    util.mkfile(L.p(3, "d/f"), "bottom")
    util.mkfile(L.p(3, "d/keep"))
    util.xmarker(L.p(2, "d"))
    util.xwhiteout(L.p(2, "d/f"))
    util.xwhiteout(L.p(2, "d/new"))     # nothing below: still hidden
    util.mkfile(L.p(1, "d/top"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("d")) == ["keep", "top"]
        util.expect_errno(errno.ENOENT, st.lstat, "d/f")
        util.expect_errno(errno.ENOENT, st.lstat, "d/new")
        # opaque=x is not opaque: the bottom layer still shows through.
        util.check_stat(st.lstat("d/keep"), L.p(3, "d/keep"))


def test_xwhiteout_listed_but_enoent_without_marker(impl, tmp_path):
    """Like the kernel: an unmarked xwhiteout is listed, lstat gives ENOENT."""
    L = util.Layers(tmp_path, nlowers=3)
    util.mkfile(L.p(3, "d/f"), "bottom")
    util.mkdir(L.p(2, "d"))
    util.xwhiteout(L.p(2, "d/f"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("d")) == ["f"]
        util.expect_errno(errno.ENOENT, st.lstat, "d/f")
        (e,) = list(st.scandir("d"))
        assert e.name == "f"
        with pytest.raises(FileNotFoundError):
            e.stat()


@pytest.mark.parametrize("where", ["upper", "bottom"])
def test_xwhiteout_marker_ignored_in_upper_and_bottom(impl, request, tmp_path, where):
    """docs/overlay-semantics.md §2.2: readdir hides xwhiteouts only in a dir
    marked opaque=x in a non-upper, non-bottom layer (namei.c ignores 'x' for
    the upper and the last layer).  Verified on 6.18: the kernel lists 'f' in both cases."""
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.mkfile(L.p(2, "d/keep"))
    if where == "upper":
        util.mkfile(L.p(2, "d/f"), "bottom")
        util.xmarker(L.p(0, "d"))
        util.xwhiteout(L.p(0, "d/f"))
    else:
        util.mkdir(L.p(1, "d"))
        util.xmarker(L.p(2, "d"))
        util.xwhiteout(L.p(2, "d/f"))
    with L.stack(impl) as st:
        util.expect_errno(errno.ENOENT, st.lstat, "d/f")
        assert sorted(st.listdir("d")) == ["f", "keep"]


def test_xwhiteout_user_namespace(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(2, "u"))
    util.mkfile(L.p(2, "t"))
    util.xwhiteout(L.p(1, "u"), ns="user")
    util.xwhiteout(L.p(1, "t"), ns="trusted")
    with L.stack(impl, xattr_namespace="user") as st:
        util.expect_errno(errno.ENOENT, st.lstat, "u")
        # The other namespace is never read: an empty regular file.
        util.check_stat(st.lstat("t"), L.p(1, "t"))
    with L.stack(impl) as st:
        util.check_stat(st.lstat("u"), L.p(1, "u"))
        util.expect_errno(errno.ENOENT, st.lstat, "t")


# -- OCI / AUFS forms and the whiteouts= switch -----------------------------------


@pytest.fixture
def oci(tmp_path):
    L = util.Layers(tmp_path, nlowers=3)
    util.mkfile(L.p(3, "gone"), "bottom")
    util.mkfile(L.p(3, "keep"), "bottom")
    util.oci_whiteout(L.p(1), "gone")
    util.mkfile(L.p(3, "d/old"), "old")
    util.mkfile(L.p(2, "d/mid"), "mid")
    util.oci_opaque(L.p(1, "d"))
    util.mkfile(L.p(1, "d/new"), "new")
    # ".wh.NAME" next to NAME in the same layer: that NAME stays, lower ones go
    util.mkfile(L.p(3, "same/low"), "low")
    util.mkfile(L.p(2, "same/mine"), "mine")
    util.oci_whiteout(L.p(2), "same")
    util.mkfile(L.p(1, "same/top"), "top")
    # kernel forms next to OCI ones
    util.mkfile(L.p(3, "kw"), "bottom")
    util.whiteout(L.p(1, "kw"))
    util.mkfile(L.p(3, "xw"), "bottom")
    util.xwhiteout(L.p(1, "xw"))
    util.mkfile(L.p(3, "od/old"))
    util.opaque(L.p(1, "od"))
    util.mkfile(L.p(1, "od/new"))
    return L


def test_oci_mode(impl, oci):
    L = oci
    with L.stack(impl, whiteouts="oci") as st:
        util.expect_errno(errno.ENOENT, st.lstat, "gone")
        util.expect_errno(errno.ENOENT, st.lstat, ".wh.gone")
        util.expect_errno(errno.ENOENT, st.lstat, "d/.wh..wh..opq")
        assert sorted(st.listdir("d")) == ["new"]
        util.expect_errno(errno.ENOENT, st.lstat, "d/mid")
        assert sorted(st.listdir("same")) == ["mine", "top"]
        util.expect_errno(errno.ENOENT, st.lstat, "same/low")
        # Kernel forms mean nothing here.
        s = st.lstat("kw")
        util.check_stat(s, L.p(1, "kw"))
        assert stat.S_ISCHR(s.st_mode)
        util.check_stat(st.lstat("xw"), L.p(1, "xw"))
        assert sorted(st.listdir("od")) == ["new", "old"]
        names = st.listdir()
        assert not [n for n in names if n.startswith(".wh.")]
        assert sorted(names) == ["d", "keep", "kw", "od", "same", "xw"]


def test_kernel_mode_shows_oci_names(impl, oci):
    L = oci
    with L.stack(impl, whiteouts="kernel") as st:
        util.check_stat(st.lstat("gone"), L.p(3, "gone"))
        util.check_stat(st.lstat(".wh.gone"), L.p(1, ".wh.gone"))
        assert sorted(st.listdir("d")) == [".wh..wh..opq", "mid", "new", "old"]
        util.check_stat(st.lstat("same/low"), L.p(3, "same/low"))
        util.expect_errno(errno.ENOENT, st.lstat, "kw")
        util.expect_errno(errno.ENOENT, st.lstat, "xw")
        assert sorted(st.listdir("od")) == ["new"]
        assert sorted(st.listdir()) == sorted(
            [".wh.gone", ".wh.same", "d", "gone", "keep", "od", "same", "xw"])


def test_auto_mode_honours_both(impl, oci):
    L = oci
    with L.stack(impl, whiteouts="auto") as st:
        for p in ("gone", ".wh.gone", "d/mid", "d/old", "same/low", "kw", "xw", "od/old"):
            util.expect_errno(errno.ENOENT, st.lstat, p)
        assert sorted(st.listdir("d")) == ["new"]
        assert sorted(st.listdir("same")) == ["mine", "top"]
        assert sorted(st.listdir("od")) == ["new"]
        # xw is an unmarked xwhiteout: listed, like the kernel (see test_xwhiteout_*)
        assert sorted(st.listdir()) == ["d", "keep", "od", "same", "xw"]
        util.check_stat(st.lstat("same/mine"), L.p(2, "same/mine"))
        util.check_stat(st.lstat("keep"), L.p(3, "keep"))


@pytest.mark.parametrize("mode", ["oci", "auto"])
def test_oci_whiteout_next_to_name_any_getdents_order(impl, tmp_path, mode):
    """NAME and .wh.NAME in one layer, in whatever order getdents returns
    them: that layer's NAME stays, the layers below lose NAME."""
    L = util.Layers(tmp_path, nlowers=3)
    for i in range(40):
        if i % 2:
            util.mkfile(L.p(2, f"n{i}/mine"), "mid")
            util.mkfile(L.p(3, f"n{i}/theirs"), "bottom")
        else:
            util.mkfile(L.p(2, f"n{i}"), "mid")
            util.mkfile(L.p(3, f"n{i}"), "bottom")
        util.oci_whiteout(L.p(2), f"n{i}")
    with L.stack(impl, whiteouts=mode) as st:
        want = util.merged_order([L.p(1), L.p(2), L.p(3)])
        want = [n for n in want if not n.startswith(".wh.")]
        assert st.listdir() == want and len(want) == 40
        for i in range(40):
            if i % 2:
                assert st.listdir(f"n{i}") == ["mine"]
            else:
                util.check_stat(st.lstat(f"n{i}"), L.p(2, f"n{i}"))
