"""Opaque directories: <ns>.overlay.opaque = exactly b"y" (docs/overlay-semantics.md
§0.1, §3; trap 4 in §8)."""

import errno

import pytest
import util


def test_opaque_lower_dir_hides_layers_beneath(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=3)
    util.mkfile(L.p(1, "d/one"), "1")
    util.mkfile(L.p(2, "d/two"), "2")
    util.opaque(L.p(2, "d"))
    util.mkfile(L.p(3, "d/three"), "3")
    util.mkfile(L.p(3, "d/two"), "shadowed")
    with L.stack(impl) as st:
        assert sorted(st.listdir("d")) == ["one", "two"]
        util.expect_errno(errno.ENOENT, st.lstat, "d/three")
        util.check_stat(st.lstat("d/two"), L.p(2, "d/two"))
        util.check_stat(st.lstat("d"), L.p(1, "d"), merged_origin=L.p(1, "d"), impl=impl)
        assert st.layer_of("d") == 1


def test_opaque_upper_dir_hides_all_lowers(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.mkfile(L.p(0, "d/u"))
    util.opaque(L.p(0, "d"))
    util.mkfile(L.p(1, "d/a"))
    util.mkfile(L.p(2, "d/b/c"))
    with L.stack(impl) as st:
        assert st.listdir("d") == ["u"]
        for p in ("d/a", "d/b", "d/b/c"):
            util.expect_errno(errno.ENOENT, st.lstat, p)
        # a single real dir: not merged, real st_nlink
        util.check_stat(st.lstat("d"), L.p(0, "d"))


def test_opaque_dir_whiteouts_not_listed(impl, tmp_path):
    """An opaque upper dir holding whiteouts (what rm -rf d; mkdir d leaves
    plus later deletes).  The kernel lists these raw (docs/overlay-semantics.md
    §3.3, trap 9); the Stack contract is 'listdir has no whiteouts', and
    lookup gives ENOENT."""
    L = util.Layers(tmp_path, nlowers=1, upper=True)
    util.opaque(L.p(0, "d"))
    util.whiteout(L.p(0, "d/gone"))
    util.mkfile(L.p(0, "d/here"))
    util.mkfile(L.p(1, "d/gone"))
    util.mkfile(L.p(1, "d/hidden"))
    with L.stack(impl) as st:
        assert st.listdir("d") == ["here"]
        util.expect_errno(errno.ENOENT, st.lstat, "d/gone")
        util.expect_errno(errno.ENOENT, st.lstat, "d/hidden")


@pytest.mark.parametrize("value", [b"yy", b"Y", b"n", b"", b"y\n", b"1", b"true", b"x"])
def test_only_exact_y_is_opaque(impl, tmp_path, value):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(1, "d/top"))
    util.opaque(L.p(1, "d"), value)
    util.mkfile(L.p(2, "d/below"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("d")) == ["below", "top"]
        util.check_stat(st.lstat("d/below"), L.p(2, "d/below"))


def test_opaque_in_middle_of_three(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=3, upper=True)
    util.mkfile(L.p(0, "d/u"))
    util.mkfile(L.p(1, "d/a"))
    util.opaque(L.p(1, "d"))
    util.mkfile(L.p(2, "d/b"))
    util.mkfile(L.p(3, "d/c"))
    with L.stack(impl) as st:
        assert sorted(st.listdir("d")) == ["a", "u"]
        util.check_stat(st.lstat("d"), L.p(0, "d"), merged_origin=L.p(1, "d"), impl=impl)


def test_opaque_only_applies_to_that_dir(impl, tmp_path):
    """An opaque dir's subdirs come from its own layer only, and siblings
    are unaffected."""
    L = util.Layers(tmp_path, nlowers=2)
    util.opaque(L.p(1, "d"))
    util.mkfile(L.p(1, "d/sub/x"))
    util.mkfile(L.p(2, "d/sub/y"))
    util.mkfile(L.p(1, "e/x"))
    util.mkfile(L.p(2, "e/y"))
    with L.stack(impl) as st:
        assert st.listdir("d/sub") == ["x"]
        assert sorted(st.listdir("e")) == ["x", "y"]


def test_root_is_never_opaque(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    util.opaque(L.p(0))
    util.opaque(L.p(1))
    util.mkfile(L.p(2, "bottom"))
    util.mkfile(L.p(0, "top"))
    with L.stack(impl) as st:
        assert sorted(st.listdir()) == ["bottom", "top"]
        util.check_stat(st.lstat("bottom"), L.p(2, "bottom"))


def test_opaque_namespace(impl, tmp_path):
    L = util.Layers(tmp_path, nlowers=2)
    util.opaque(L.p(1, "u"), ns="user")
    util.opaque(L.p(1, "t"), ns="trusted")
    for d in ("u", "t"):
        util.mkfile(L.p(1, d + "/top"))
        util.mkfile(L.p(2, d + "/below"))
    with L.stack(impl, xattr_namespace="user") as st:
        assert st.listdir("u") == ["top"]
        assert sorted(st.listdir("t")) == ["below", "top"]
    with L.stack(impl, xattr_namespace="trusted") as st:
        assert sorted(st.listdir("u")) == ["below", "top"]
        assert st.listdir("t") == ["top"]


def test_opaque_then_listing_order(impl, tmp_path):
    """The opaque layer is the bottom of the dir's merge stack, so its
    getdents order leads the listing."""
    L = util.Layers(tmp_path, nlowers=3)
    for i in range(30):
        util.mkfile(L.p(2, f"d/m{i}"))
    for i in range(0, 30, 4):
        util.mkfile(L.p(1, f"d/m{i}"))
    for i in range(10):
        util.mkfile(L.p(1, f"d/t{i}"))
        util.mkfile(L.p(3, f"d/b{i}"))
    util.opaque(L.p(2, "d"))
    want = util.merged_order([L.p(1, "d"), L.p(2, "d")])
    with L.stack(impl) as st:
        assert st.listdir("d") == want
