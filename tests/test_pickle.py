"""A Stack pickles as its arguments (re-opened in the other process), so it
works with multiprocessing and concurrent.futures; StackPath and the
overlay:// filesystem pickle with it; Stack.open()'s file has the union path
as .name."""

from __future__ import annotations

import concurrent.futures
import copy
import gc
import multiprocessing
import os
import pathlib
import pickle
import warnings

import iface_views
import pytest
import util

import overlayfs
from overlayfs._core import _Stack


@pytest.fixture
def layers(tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    for i in range(8):
        util.mkfile(L.p(2 if i % 2 else 1, f"d/f{i}"), f"file {i}\n")
    util.mkfile(L.p(1, "top"), "top\n")
    return L


def stack_args(L):
    return [L.p(1), L.p(2)], L.p(0), L.work


def test_roundtrip_keeps_layers_and_options(layers, monkeypatch):
    lowers, upper, work = stack_args(layers)
    opts = dict(whiteouts="auto", cache=False, metacopy=True, redirect_dir=True, cache_max_bytes=1 << 20,
                volatile=True, devices=True)
    monkeypatch.chdir(os.path.dirname(lowers[0]))
    rel = [os.path.basename(p) for p in lowers]
    with overlayfs.Stack(rel, upper, work, **opts) as st:
        monkeypatch.chdir("/")  # the pickle holds absolute layer paths
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            st2 = pickle.loads(pickle.dumps(st, proto))
            try:
                assert type(st2) is overlayfs.Stack and st2 is not st and not st2.closed
                assert st2.lowers == st.lowers == tuple(lowers) and st2.upper == upper and st2.work == work
                assert st2._options == st._options and st2.whiteouts == "auto"
                assert st2.listdir("d") == st.listdir("d")
            finally:
                st2.close()
        st3 = copy.copy(st)  # copy is a re-open too
        assert st3.lowers == st.lowers and st3 is not st
        st3.close()


def test_unpickled_copy_closes_quietly_and_closed_stack_refuses(layers):
    lowers, upper, work = stack_args(layers)
    st = overlayfs.Stack(lowers)
    blob = pickle.dumps(st)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        st2 = pickle.loads(blob)
        st2.listdir("")
        del st2
        gc.collect()
    st.close()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(st)
    with _Stack(lowers) as base:  # the compiled base keeps refusing
        with pytest.raises(TypeError):
            pickle.dumps(base)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool_map(layers, method):
    lowers, upper, work = stack_args(layers)
    with overlayfs.Stack(lowers, upper, work) as st:
        paths = [f"d/f{i}" for i in range(8)] + ["top"]
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(2) as pool:
            got = pool.starmap(iface_views.read_union_file, [(st, p) for p in paths])
        assert got == [(p, _read(st, p)) for p in paths]


def _read(st, path):
    with st.open(path) as f:
        return f.read()


def test_process_pool_executor(layers):
    lowers, upper, work = stack_args(layers)
    with overlayfs.Stack(lowers, upper, work) as st:
        paths = [f"d/f{i}" for i in range(8)]
        want = [_read(st, p) for p in paths]
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            assert [b for _, b in ex.map(iface_views.read_union_file, [st] * 8, paths)] == want
            # StackPath and the fsspec filesystem travel the same way
            assert list(ex.map(iface_views.read_stack_path, [st.path(p) for p in paths])) == \
                [b.decode() for b in want]
            from overlayfs.fsspec import OverlayFileSystem

            fs = OverlayFileSystem(stack=st)
            assert list(ex.map(iface_views.cat_overlay, [fs] * 8, ["/" + p for p in paths])) == want
        # once per worker: the Stack goes to the initializer
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=iface_views.init_worker_stack,
                                                    initargs=(st,)) as ex:
            got = list(ex.map(iface_views.read_with_worker_stack, paths))
        assert [b for _, b in got] == want and os.getpid() not in {pid for pid, _ in got}


def test_open_name_is_the_union_path(layers):
    lowers, upper, work = stack_args(layers)
    with overlayfs.Stack(lowers, upper, work) as st:
        for path, kwargs in [("d/f1", {}), ("d/f1", {"mode": "r"}), ("d/f1", {"buffering": 0}),
                             ("/d/f1", {}), (b"d/f1", {}), (pathlib.PurePosixPath("d/f1"), {})]:
            with st.open(path, **kwargs) as f:
                want = os.fspath(path)
                assert f.name == want, (path, kwargs)
                assert repr(want) in repr(f)
        with st.open("d/new", "w") as f:
            assert f.name == "d/new"
        with st.open("d/f2", "ab") as f:
            assert f.name == "d/f2"
