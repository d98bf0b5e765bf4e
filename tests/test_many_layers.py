"""500 and 1000 layers: no cap when resolving (the kernel's OVL_MAX_STACK of
500 only limits mounts), and the layer rules hold at any depth."""

import errno

import pytest
import util

import overlayfs


def build(root, n):
    L = util.Layers(root, nlowers=n)
    util.mkfile(L.p(n, "bottom"), "bottom")
    for i in range(1, n + 1):
        util.mkfile(L.p(i, f"d/f{i}"), str(i))
        util.mkfile(L.p(i, "shadow"), str(i))
    mid = n // 2
    util.mkfile(L.p(n, "wh"), "hidden")
    util.whiteout(L.p(mid, "wh"))
    util.mkfile(L.p(n, "d/f1_below"), "x")
    util.opaque(L.p(mid + 1, "opq"))
    util.mkfile(L.p(mid + 1, "opq/kept"), "k")
    util.mkfile(L.p(n, "opq/lost"), "l")
    util.mkfile(L.p(1, "opq/top"), "t")
    util.symlink(L.p(1, "lnk"), "deep/x/../../bottom")
    util.mkfile(L.p(n - 1, "deep/x/file"), "deep")
    util.mkdir(L.p(n, "deep/x"))
    util.redirect(L.p(2, "moved"), "orig")
    util.mkfile(L.p(2, "moved/new"), "n")
    util.mkfile(L.p(n, "orig/old"), "o")
    return L


@pytest.fixture(scope="module", params=[500, 1000])
def big(request, tmp_path_factory):
    n = request.param
    return n, build(tmp_path_factory.mktemp(f"layers{n}"), n)


def test_many_layers(impl, big):
    n, L = big
    with L.stack(impl) as st:
        util.check_stat(st.lstat("bottom"), L.p(n, "bottom"))
        assert st.layer_of("bottom") == n
        with st.open("bottom") as f:
            assert f.read() == b"bottom"
        util.check_stat(st.lstat("shadow"), L.p(1, "shadow"))
        util.expect_errno(errno.ENOENT, st.lstat, "wh")
        assert sorted(st.listdir("opq")) == ["kept", "top"]
        util.check_stat(st.lstat("opq/kept"), L.p(n // 2 + 1, "opq/kept"))
        util.check_stat(st.stat("lnk"), L.p(n, "bottom"))
        util.check_stat(st.lstat("deep/x/file"), L.p(n - 1, "deep/x/file"))
        assert sorted(st.listdir("moved")) == ["new", "old"]
        util.check_stat(st.lstat("moved/old"), L.p(n, "orig/old"))
        # a dir merged from every layer
        names = st.listdir("d")
        want = util.merged_order([L.p(i, "d") for i in range(1, n + 1)])
        assert names == want and len(names) == n + 1
        s = st.lstat("d")
        assert s.st_nlink == 1
        for i in (1, 2, n // 2, n - 1, n):
            util.check_stat(st.lstat(f"d/f{i}"), L.p(i, f"d/f{i}"))
            assert st.layer_of(f"d/f{i}") == i
        layers = {e.name: e.layer for e in st.scandir("d")}
        assert layers["f1_below"] == n and layers[f"f{n}"] == n and layers["f7"] == 7
        assert sorted(st.listdir()) == sorted(
            ["bottom", "shadow", "d", "opq", "lnk", "deep", "moved", "orig"])


def test_c_layer_tuple(big):
    n, L = big
    with L.stack(overlayfs.Stack) as st:
        assert len(st.layers) == n + 1 and st.layers[0] is None
        assert st.layers[n] == L.p(n)
        assert st.resolve("bottom") == L.p(n, "bottom")


def test_c_many_data_layers(tmp_path):
    n = 300
    L = util.Layers(tmp_path, nlowers=2, ndata=n)
    util.metacopy(L.p(2, "obj"), size=4, redirect_to="/objects/o")
    util.mkfile(L.p(2 + n, "objects/o"), "last")
    with L.stack(overlayfs.Stack) as st:
        assert len(st.layers) == 3 + n
        with st.open("obj") as f:
            assert f.read() == b"last"
        assert st.resolve("obj", data=True) == L.p(2 + n, "objects/o")
