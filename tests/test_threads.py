"""A shared C Stack used from 8 threads: random lookups, listings and walks
give the single-threaded answers, also while other threads invalidate the
cache, while a tiny cache_max_bytes forces flushes, and while it is closed."""

import errno
import random
import sys
import threading

import pytest
import util

import overlayfs

Stack = overlayfs.Stack
NTHREADS = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("threads")
    L = util.Layers(root, nlowers=3, upper=True)
    rnd = random.Random(1234)
    paths = ["", "nope", "d0/nope", "d1/f0/x", "lnk_loop", "d2/f1/"]
    for d in range(24):
        for f in range(8):
            layer = rnd.randrange(4)
            p = f"d{d}/f{f}"
            util.mkfile(L.p(layer, p), f"{layer}:{p}")
            paths.append(p)
            if rnd.random() < 0.15 and layer < 3:
                util.whiteout(L.p(layer, f"d{d}/w{f}"))
                util.mkfile(L.p(3, f"d{d}/w{f}"), "hidden")
                paths.append(f"d{d}/w{f}")
        util.mkfile(L.p(3, f"d{d}/sub/deep/leaf"), "leaf")
        util.mkfile(L.p(1, f"d{d}/sub/mid"), "mid")
        paths += [f"d{d}", f"d{d}/sub", f"d{d}/sub/deep", f"d{d}/sub/deep/leaf", f"d{d}/sub/mid"]
        if d % 5 == 0:
            util.opaque(L.p(1, f"d{d}/sub"))
        if d % 4 == 0:
            util.symlink(L.p(2, f"d{d}/up"), f"../d{(d + 1) % 24}")
            paths += [f"d{d}/up", f"d{d}/up/sub/mid", f"d{d}/up/f3"]
    util.symlink(L.p(1, "lnk_loop"), "lnk_loop")
    return L, paths


def _answer(st, op, path):
    try:
        if op == "lstat":
            s = st.lstat(path)
            return (s.st_mode, s.st_ino, s.st_size, s.st_nlink, s.st_mtime_ns)
        if op == "stat":
            s = st.stat(path)
            return (s.st_mode, s.st_ino, s.st_size, s.st_nlink)
        if op == "listdir":
            return tuple(st.listdir(path))
        if op == "scandir":
            return tuple((e.name, e.layer, e.is_dir()) for e in st.scandir(path))
        if op == "exists":
            return (st.exists(path), st.lexists(path), st.isdir(path), st.isfile(path))
        if op == "layer_of":
            return st.layer_of(path)
        if op == "resolve":
            return st.resolve(path)
        if op == "read":
            with st.open(path) as f:
                return f.read()
        if op == "walk":
            return tuple((t, tuple(d), tuple(f)) for t, d, f in st.walk(path))
    except OSError as e:
        return ("err", e.errno)
    raise AssertionError(op)


OPS = ["lstat", "stat", "listdir", "scandir", "exists", "layer_of", "resolve", "read", "walk"]


@pytest.fixture(scope="module")
def expected(world):
    L, paths = world
    with L.stack(Stack, cache=False) as st:
        return {(op, p): _answer(st, op, p) for op in OPS for p in paths
                if op != "walk" or p.count("/") <= 1}


def _hammer(st, expected, seconds_ops, seed, errors, invalidate_every=0, paths=None):
    rnd = random.Random(seed)
    keys = list(expected)
    for i in range(seconds_ops):
        if invalidate_every and i % invalidate_every == 0:
            if rnd.random() < 0.3:
                st.invalidate()
            else:
                st.invalidate(rnd.choice(paths))
            continue
        op, p = rnd.choice(keys)
        got = _answer(st, op, p)
        if got != expected[(op, p)]:
            errors.append((op, p, got, expected[(op, p)]))
            return


def _run_threads(target, n=NTHREADS):
    errors = []
    crashes = []
    barrier = threading.Barrier(n)

    def wrap(i):
        try:
            barrier.wait()
            target(i, errors)
        except BaseException as e:   # report, never hang the barrier
            crashes.append(repr(e))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        ts = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        assert not any(t.is_alive() for t in ts), "a thread hung"
    finally:
        sys.setswitchinterval(old)
    assert not crashes, crashes
    assert not errors, errors[:5]


def test_expected_answers_are_sane(world, expected):
    L, _ = world
    assert expected[("lstat", "nope")] == ("err", errno.ENOENT)
    assert expected[("stat", "lnk_loop")] == ("err", errno.ELOOP)
    assert expected[("read", "d3/sub/deep/leaf")] == b"leaf"
    assert len({v for v in expected.values()}) > 100


@pytest.mark.parametrize("cache_kw", [{}, {"cache_max_bytes": 4096}], ids=["cache", "tiny-cache"])
def test_concurrent_lookups(world, expected, cache_kw):
    L, paths = world
    with L.stack(Stack, **cache_kw) as st:
        _run_threads(lambda i, errors: _hammer(st, expected, 2500, i, errors))
        if cache_kw:
            assert st.cache_info().flushes > 0


def test_concurrent_lookups_with_invalidations(world, expected):
    L, paths = world
    with L.stack(Stack) as st:
        def work(i, errors):
            # two threads mostly invalidate, the others look things up
            _hammer(st, expected, 2500, 100 + i, errors,
                    invalidate_every=2 if i < 2 else 0, paths=paths)
        _run_threads(work)
        info = st.cache_info()
        assert info.generation > 0


def test_concurrent_walks(world, expected):
    L, _ = world
    want = expected[("walk", "")]
    with L.stack(Stack) as st:
        def work(i, errors):
            for k in range(3):
                if i % 4 == 0:
                    st.invalidate()
                got = _answer(st, "walk", "")
                if got != want:
                    errors.append(("walk", i, k))
        _run_threads(work)


def test_close_while_in_use(world, expected):
    L, paths = world
    st = L.stack(Stack)
    started = threading.Event()
    keys = [k for k in expected if k[0] != "walk"]

    def work(i, errors):
        rnd = random.Random(i)
        n = 0
        while True:
            op, p = rnd.choice(keys)
            try:
                if i % 2 and n % 3 == 0:
                    st.invalidate(p)
                got = _answer(st, op, p)
            except ValueError:
                return      # closed: every later call says so too
            if got != expected[(op, p)]:
                # a call that lost the race to close() must still not lie
                if not st.closed:
                    errors.append((op, p, got))
                    return
            n += 1
            if n == 50:
                started.set()
            if n > 200000:
                errors.append("never saw the close")
                return

    outcome = []

    def runner():
        try:
            _run_threads(work)
            outcome.append("ok")
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=runner)
    t.start()
    started.wait(30)
    st.close()
    t.join(120)
    assert not t.is_alive()
    assert outcome == ["ok"], outcome
    assert st.closed
    with pytest.raises(ValueError):
        st.lstat("")
