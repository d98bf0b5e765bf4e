"""Errors of a damaged or inconsistent stack say which layer and why (issue 9).

A lookup that meets what a layer should not hold (an invalid redirect, a
metacopy file with no data, a trap of overlapping layers...) fails with the
errno the kernel gives through a real overlay mount of the same layers, and
its message names the layer (index and host path), the object in it, the
reason and, for a redirect, the offending value, as psutil names the syscall
next to the errno:

    [Errno 22] Invalid argument (layer 0 '/s/upper', 'd': invalid redirect
    xattr, ...: 'a/b'): 'd'

errno and filename stay those of a plain OSError.  Each case is checked on
the Stack and the reference (test_detail_*) and its errno against a kernel
mount (test_errno_matches_the_kernel: needs root and overlayfs, fails instead
of skipping under OVERLAYFS_REQUIRE_KERNEL=1).  ESTALE has no kernel
counterpart (the kernel has no cache to go stale) and is checked alone.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from dataclasses import dataclass, field

import kernel
import pytest
import util

import overlayfs


@dataclass
class Case:
    build: object               # build(L): makes the damage in util.Layers L
    path: str                   # the union path
    code: int                   # the errno (also the kernel's)
    layer: int                  # the layer named in the message
    at: str                     # the object in that layer
    why: str                    # a piece of the reason
    value: str | None = None    # the offending value, if any
    op: str = "lstat"           # "lstat", or "open" (a lazy data lookup)
    nlowers: int = 2
    upper: bool = True
    ndata: int = 0
    stack: dict = field(default_factory=dict)
    options: tuple = ()
    reference: bool = True      # the reference models it too


def _bad_redirect_upper(L):
    util.redirect(L.p(0, "d"), b"a/b")
    util.mkdir(L.p(1, "d"))


def _bad_redirect_lower(L):
    util.redirect(L.p(1, "x/m"), b"/a//b")
    util.mkdir(L.p(2, "x/m"))


def _empty_redirect(L):
    util.redirect(L.p(0, "d"), b"")
    util.mkdir(L.p(1, "d"))


def _dotdot_redirect(L):
    util.redirect(L.p(0, "d"), b"..")
    util.mkdir(L.p(1, "d"))


def _absolute_dotdot_redirect(L):
    util.redirect(L.p(0, "d"), b"/a/../b")
    util.mkdir(L.p(1, "a"))
    util.mkdir(L.p(1, "b"))


def _metacopy_no_data(L):
    util.mkdir(L.p(1, "sub"))
    util.metacopy(L.p(0, "sub/nodata"), size=5)


def _metacopy_over_dir(L):
    util.mkdir(L.p(1, "overdir"))
    util.metacopy(L.p(0, "overdir"), size=5)


def _lower_metacopy_no_data(L):
    util.metacopy(L.p(1, "lm"), size=3)


def _bad_metacopy_xattr(L):
    util.mkfile(L.p(1, "f"), "data")
    util.metacopy(L.p(0, "f"), size=4, value=b"ab")


def _metacopy_off(L):
    util.mkfile(L.p(1, "a"), "data")
    util.metacopy(L.p(0, "a"), size=4)


def _redirect_nofollow(L):
    util.mkfile(L.p(1, "old/x"), "x")
    util.redirect(L.p(0, "new"), "old")


def _data_layer_missing(L):
    util.metacopy(L.p(2, "obj"), size=6, redirect_to="/objects/nope")
    util.mkfile(L.p(3, "objects/other"), "other")


MC = {"stack": {"metacopy": True}, "options": ("metacopy=on",)}
FOLLOW = ("redirect_dir=follow",)

CASES = {
    "bad-redirect-upper": Case(_bad_redirect_upper, "d", errno.EINVAL, 0, "d",
                               "invalid redirect xattr", "a/b", options=FOLLOW),
    "bad-redirect-lower": Case(_bad_redirect_lower, "x/m/y", errno.EINVAL, 1, "x/m",
                               "invalid redirect xattr", "/a//b", upper=False, options=FOLLOW),
    "empty-redirect": Case(_empty_redirect, "d", errno.EINVAL, 0, "d", "empty redirect xattr",
                           options=FOLLOW),
    "dotdot-redirect": Case(_dotdot_redirect, "d", errno.EACCES, 0, "d",
                            'a "." or ".." component', "..", options=FOLLOW),
    "absolute-dotdot-redirect": Case(_absolute_dotdot_redirect, "d", errno.EACCES, 0, "d",
                                     'a "." or ".." component', "/a/../b", options=FOLLOW),
    "metacopy-no-data": Case(_metacopy_no_data, "sub/nodata", errno.EIO, 0, "sub/nodata",
                             "metacopy file with no data in the layers below", **MC),
    "metacopy-over-dir": Case(_metacopy_over_dir, "overdir", errno.EIO, 0, "overdir",
                              "metacopy file with no data in the layers below", **MC),
    "lower-metacopy-no-data": Case(_lower_metacopy_no_data, "lm", errno.EIO, 1, "lm",
                                   "metacopy file with no data in the layers below", **MC),
    "bad-metacopy-xattr": Case(_bad_metacopy_xattr, "f", errno.EIO, 0, "f",
                               "invalid metacopy xattr", **MC),
    "metacopy-off": Case(_metacopy_off, "a", errno.EPERM, 0, "a",
                         "not followed without metacopy=on", options=("metacopy=off",)),
    "redirect-nofollow": Case(_redirect_nofollow, "new", errno.EPERM, 0, "new",
                              "not followed with redirect_dir=nofollow", "old",
                              stack={"redirect_follow": False}, options=("redirect_dir=nofollow",)),
    "data-layer-missing": Case(_data_layer_missing, "obj", errno.ENOENT, 2, "obj",
                               "leads to no regular file in the data-only layers", "/objects/nope",
                               op="open", upper=False, ndata=1),
}


def _layers(tmp_path, case: Case):
    L = util.Layers(tmp_path, nlowers=case.nlowers, upper=case.upper, ndata=case.ndata)
    case.build(L)
    return L


def _call(st, case: Case):
    if case.op == "open":
        st.lstat(case.path)             # found lazily, as the kernel: lstat works
        with st.open(case.path):
            pass
    else:
        st.lstat(case.path)


def check_detail(exc: OSError, case: Case, layer_path: str) -> None:
    """errno and filename as a plain OSError; the message names the layer,
    the object, the reason and the value."""
    assert exc.errno == case.code
    assert exc.filename == case.path
    head = f"{os.strerror(case.code)} (layer {case.layer} {layer_path!r}, {case.at!r}: "
    assert exc.strerror.startswith(head), exc.strerror
    assert case.why in exc.strerror
    if case.value is not None:
        assert exc.strerror.endswith(f": {case.value!r})"), exc.strerror
    assert exc.strerror.endswith(")")
    assert str(exc) == f"[Errno {case.code}] {exc.strerror}: {case.path!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_detail_names_layer_and_reason(impl, tmp_path, name):
    case = CASES[name]
    if not case.reference and not util.is_c(impl):
        pytest.skip("the reference does not model this")
    L = _layers(tmp_path, case)
    with L.stack(impl, **case.stack) as st:
        for _ in range(2):              # the second time from the cache
            with pytest.raises(OSError) as info:
                _call(st, case)
            check_detail(info.value, case, L[case.layer])
        # bytes paths: the same message, the filename as given
        if case.op == "lstat":
            with pytest.raises(OSError) as info:
                st.lstat(os.fsencode(case.path))
            assert info.value.filename == os.fsencode(case.path)
            assert info.value.strerror.startswith(f"{os.strerror(case.code)} (layer {case.layer} ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_errno_matches_the_kernel(impl, tmp_path, name):
    """The errno is the one a kernel mount of the same layers gives (the
    Stack first: a mount writes origin xattrs into the upper)."""
    case = CASES[name]
    if not case.reference and not util.is_c(impl):
        pytest.skip("the reference does not model this")
    kernel.skip_unless_mountable()
    L = _layers(tmp_path, case)
    with L.stack(impl, **case.stack) as st:
        try:
            _call(st, case)
        except OSError as exc:
            got = kernel.errname(exc)
        else:
            got = None
    view = kernel.kernel_view(L.lowers, L.upper, L.work, options=case.options,
                              paths_extra=[case.path], data_layers=L.data)
    rec = view["extra"][case.path]
    want = rec["sha256"] if case.op == "open" else rec["lstat"].get("errno")
    if case.op == "open":
        assert "errno" not in rec["lstat"]
    assert want == got == errno.errorcode[case.code]


def test_trap_names_the_lower_layer(tmp_path):
    """An upper and a work dir inside the lower: reaching them through the
    lower is ELOOP, as the kernel's traps (tests/test_overlap.py compares
    the errno with a mount); the message says why."""
    low = os.path.join(tmp_path, "a")
    os.makedirs(os.path.join(low, "in/up"))
    os.makedirs(os.path.join(low, "in/wk"))
    with overlayfs.Stack([low], os.path.join(low, "in/up"), os.path.join(low, "in/wk")) as st:
        for name in ("in/up", "in/wk"):
            case = Case(None, name, errno.ELOOP, 1, name, "overlapping layers")
            with pytest.raises(OSError) as info:
                st.lstat(name)
            check_detail(info.value, case, low)
        with pytest.raises(OSError) as info:          # a change meets it too
            st.chmod("in/up/x", 0o600)
        assert info.value.errno == errno.ELOOP
        assert "(layer 1 " in info.value.strerror and "'in/up'" in info.value.strerror


# -- ESTALE: a layer changed behind the cache -------------------------------------------


@pytest.mark.parametrize("change", ["file-gone", "dir-gone", "type-changed"])
def test_estale_says_the_layer_changed(tmp_path, change):
    L = util.Layers(tmp_path, nlowers=2)
    util.mkfile(L.p(2, "d/f"), "f")
    util.mkdir(L.p(2, "d/sub"))
    util.mkfile(L.p(1, "d/g"), "g")
    name = {"file-gone": "d/f", "dir-gone": "d/sub", "type-changed": "d/f"}[change]
    with L.stack(overlayfs.Stack) as st:
        assert sorted(st.listdir("d")) == ["f", "g", "sub"]   # d's index is cached
        if change == "file-gone":
            os.unlink(L.p(2, "d/f"))
        elif change == "dir-gone":
            os.rmdir(L.p(2, "d/sub"))
        else:
            os.unlink(L.p(2, "d/f"))
            os.symlink("g", L.p(2, "d/f"))
        with pytest.raises(OSError) as info:
            st.lstat(name)
        why = "its type changed" if change == "type-changed" else "gone from the layer"
        check_detail(info.value, Case(None, name, errno.ESTALE, 2, name, why), L[2])
        assert "call invalidate()" in info.value.strerror
        st.invalidate()
        if change == "type-changed":
            assert st.islink(name)
        else:
            e = util.expect_errno(errno.ENOENT, st.lstat, name)
            assert e.strerror == os.strerror(errno.ENOENT)


# -- no detail outlives its call -----------------------------------------------------------


@pytest.fixture
def damaged(tmp_path):
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    _bad_redirect_upper(L)
    _metacopy_no_data(L)
    util.mkfile(L.p(1, "ok"), "ok")
    return L


def test_no_stale_detail_after_success_or_other_errors(impl, damaged):
    L = damaged
    with L.stack(impl, metacopy=True) as st:
        e = util.expect_errno(errno.EIO, st.lstat, "sub/nodata")
        assert "(layer 0 " in e.strerror
        st.lstat("ok")
        e = util.expect_errno(errno.ENOENT, st.lstat, "nope")
        assert e.strerror == os.strerror(errno.ENOENT)
        # the same errno right after a detailed one: no detail borrowed
        e = util.expect_errno(errno.EINVAL, st.lstat, "d")
        assert "invalid redirect" in e.strerror
        e = util.expect_errno(errno.EINVAL, st.readlink, "ok")        # not a symlink
        assert e.strerror == os.strerror(errno.EINVAL)
        e = util.expect_errno(errno.EIO, st.lstat, "sub/nodata")
        e = util.expect_errno(errno.ENOTDIR, st.lstat, "ok/x")
        assert e.strerror == os.strerror(errno.ENOTDIR)
        assert not st.exists("d") and not st.exists("sub/nodata")
        e = util.expect_errno(errno.ENOENT, st.lstat, "sub/nope")
        assert e.strerror == os.strerror(errno.ENOENT)


def test_c_detail_of_changes_and_of_two_stacks(damaged, tmp_path):
    """Changes name the damage too; a detail is the stack's own and the
    calling call's: another stack's error never shows it."""
    L = damaged
    other = util.Layers(tmp_path / "other", nlowers=1)
    util.mkfile(other.p(1, "f"), "f")
    with L.stack(overlayfs.Stack, metacopy=True) as st, other.stack(overlayfs.Stack) as st2:
        e = util.expect_errno(errno.EINVAL, st.chmod, "d", 0o700)
        assert f"(layer 0 {L.upper!r}, 'd': invalid redirect" in e.strerror
        e = util.expect_errno(errno.EIO, st.copy_up, "sub/nodata")
        assert "'sub/nodata': metacopy file with no data" in e.strerror
        e = util.expect_errno(errno.EINVAL, st.rename, "d", "d2")
        assert e.filename == "d" and e.filename2 == "d2"
        assert "invalid redirect" in e.strerror
        util.expect_errno(errno.EINVAL, st.lstat, "d")
        e = util.expect_errno(errno.EINVAL, st2.readlink, "f")
        assert e.strerror == os.strerror(errno.EINVAL)


def test_c_details_are_per_thread(damaged):
    """Threads failing on different damage at once each get their own reason."""
    L = damaged
    errors: list[str] = []

    def worker(path, code, why):
        with L.stack(overlayfs.Stack, metacopy=True, cache=False) as st:
            for _ in range(300):
                try:
                    st.lstat(path)
                except OSError as exc:
                    if exc.errno != code or why not in exc.strerror:
                        errors.append(f"{path}: {exc}")
                try:
                    st.lstat("nope")
                except OSError as exc:
                    if exc.strerror != os.strerror(errno.ENOENT):
                        errors.append(f"nope: {exc}")

    threads = [threading.Thread(target=worker, args=a) for a in
               [("d", errno.EINVAL, "invalid redirect"), ("sub/nodata", errno.EIO, "no data")] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_layer_path_as_given(tmp_path):
    """The message names the layer by the host path the stack holds
    (Stack.layers), bytes layers too."""
    L = util.Layers(tmp_path, nlowers=2, upper=True)
    _bad_redirect_upper(L)
    shutil.rmtree(L.work)
    os.mkdir(L.work)
    with overlayfs.Stack([os.fsencode(p) for p in L.lowers], os.fsencode(L.upper), L.work) as st:
        assert st.layers[0] == os.fsencode(L.upper)
        e = util.expect_errno(errno.EINVAL, st.lstat, "d")
        assert e.strerror.startswith(f"Invalid argument (layer 0 {L.upper!r}, 'd': ")
