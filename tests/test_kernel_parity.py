"""Kernel parity: a Stack sees a layer stack exactly as a real overlay mount does.

Every test builds layers on disk, collects the view through the Stack API
(``kernel.stack_view``) and through a real overlayfs mount in a private mount
namespace (``kernel.kernel_view``), and requires them to be equal (see
``kernel.compare_views`` for the listing rule).  Each test also cross-checks
the rest of the API (walk, scandir, exists, resolve, layer_of...) against the
collected view, and the targeted tests pin the kernel behaviour itself with
explicit expectations, so a rule that both sides got wrong still fails.

Random stacks come from ``stackgen.make_stack``; the kernel view of a seed is
computed once per session (on an identical build) and compared with every
implementation.  Needs root and overlayfs; see ``conftest.require_kernel``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import kernel
import pytest
import stackgen
import write_ops
from stackgen import populate

pytestmark = pytest.mark.usefixtures("require_kernel")

#: Number of random seeds per configuration (some configurations use a subset).
N_SEEDS = 100

#: Does the running kernel follow directory redirects by default?
FOLLOW = kernel.kernel_redirect_follow()


# ---------------------------------------------------------------------------
# Random stacks
# ---------------------------------------------------------------------------


def random_config(kind: str, seed: int) -> dict:
    """How a random stack of *kind* is built, mounted and opened with the Stack.

    kinds: "ro" (lowers only), "upper", "user" (user.overlay.* xattrs and the
    userxattr mount option, which forces redirect nofollow) and "metacopy"
    (metacopy files, mounted with metacopy=on).
    """
    upper = {"ro": False, "upper": True}.get(kind, seed % 2 == 1)
    build = {"nlayers": 2 + seed % 5, "upper": upper, "xattr_ns": "trusted", "metacopy": False,
             "redirect_follow": FOLLOW}
    options: tuple = ()
    stack = {"whiteouts": "kernel" if seed % 2 else "auto", "cache": seed % 5 != 0,
             "redirect_follow": FOLLOW}
    if kind == "user":
        build.update(xattr_ns="user", redirect_follow=False)
        stack.update(xattr_namespace="user", redirect_follow=False)
        options = ("userxattr",)
    elif kind == "metacopy":
        build.update(metacopy=True, redirect_follow=True)
        stack.update(metacopy=True, redirect_follow=True)  # metacopy=on implies redirect_dir=on
        options = ("metacopy=on",)
    return {"build": build, "options": options, "stack": stack}


def build_random(root, kind: str, seed: int):
    """Build the random stack of (kind, seed) under *root*; returns (lowers, upper, work, extra paths)."""
    b = random_config(kind, seed)["build"]
    lowers, upper, work = stackgen.make_stack(
        os.path.join(root, "stack"), seed, b["nlayers"], upper=b["upper"], xattr_ns=b["xattr_ns"],
        metacopy=b["metacopy"], redirect_follow=b["redirect_follow"])
    return lowers, upper, work, stackgen.extra_paths(seed, [upper] + lowers)


def random_kernel_view(kernel_views, kind: str, seed: int) -> dict:
    """The kernel view of (kind, seed), mounted once per session on its own build."""

    def build(root):
        lowers, upper, work, extra = build_random(root, kind, seed)
        return {"lowers": lowers, "upper": upper, "work": work, "options": random_config(kind, seed)["options"],
                "paths_extra": extra}

    return kernel_views.get((kind, seed), build)


def check_random(stack_impl, kernel_views, tmp_path, kind: str, seed: int, *, oci=False) -> None:
    """Compare the Stack view of a random stack (optionally its OCI conversion) with the kernel's."""
    cfg = random_config(kind, seed)
    lowers, upper, work, extra = build_random(tmp_path, kind, seed)
    stack_kwargs = dict(cfg["stack"])
    ignore = {"dir_blocks"} if upper else set()  # the mount writes origin/impure xattrs into upper dirs
    if oci:
        # The OCI form of the same stack must look like the kernel form mounted.
        converted = stackgen.to_oci([upper] + lowers, os.path.join(tmp_path, "oci"),
                                    xattr_ns=cfg["build"]["xattr_ns"])
        upper, lowers = converted[0], converted[1:]
        if upper is not None:
            work = os.path.join(tmp_path, "oci", "work")
            os.mkdir(work)
        stack_kwargs["whiteouts"] = "oci" if seed % 3 else "auto"
        # Converting changes directory sizes and, since ".wh.NAME" sorts
        # elsewhere than NAME, where a re-created name lands in the merge order.
        ignore |= {"dir_size", "dir_blocks", "listing_order"}
    with stack_impl(lowers, upper, work, **stack_kwargs) as st:
        sview = kernel.stack_view(st, extra)
        problems = kernel.check_stack_api(st, sview)
    kview = random_kernel_view(kernel_views, kind, seed)
    context = "%s seed %d%s" % (kind, seed, " (OCI)" if oci else "")
    kernel.assert_views_equal(kview, sview, ignore=ignore, context=context)
    assert not problems, "Stack API disagrees with its own view:\n  " + "\n  ".join(problems[:30])


@pytest.mark.parametrize("seed", range(N_SEEDS))
def test_random_stack_readonly(stack_impl, kernel_views, tmp_path, seed):
    check_random(stack_impl, kernel_views, tmp_path, "ro", seed)


@pytest.mark.parametrize("seed", range(N_SEEDS))
def test_random_stack_with_upper(stack_impl, kernel_views, tmp_path, seed):
    check_random(stack_impl, kernel_views, tmp_path, "upper", seed)


@pytest.mark.parametrize("seed", range(0, N_SEEDS, 3))
def test_random_stack_userxattr(stack_impl, kernel_views, tmp_path, seed):
    check_random(stack_impl, kernel_views, tmp_path, "user", seed)


@pytest.mark.parametrize("seed", range(1, N_SEEDS, 4))
def test_random_stack_metacopy(stack_impl, kernel_views, tmp_path, seed):
    check_random(stack_impl, kernel_views, tmp_path, "metacopy", seed)


OCI_CASES = ([("ro", s) for s in range(0, N_SEEDS, 4)] + [("upper", s) for s in range(2, N_SEEDS, 4)]
             + [("user", s) for s in range(0, N_SEEDS, 6)])


@pytest.mark.parametrize("kind,seed", OCI_CASES)
def test_random_stack_oci_copy(stack_impl, kernel_views, tmp_path, kind, seed):
    check_random(stack_impl, kernel_views, tmp_path, kind, seed, oci=True)


def test_random_stacks_are_reproducible(tmp_path):
    """Two builds of one seed are identical, which the session cache of kernel views relies on."""
    views = []
    for name in ("a", "b"):
        lowers, upper, work, extra = build_random(tmp_path / name, "upper", 7)
        inodes = kernel.layer_inodes([upper] + lowers)
        listing = []
        for layer in [upper] + lowers:
            for dirpath, dirnames, filenames in os.walk(layer):
                rel = os.path.relpath(dirpath, layer)
                for n in dirnames + filenames:
                    st = os.lstat(os.path.join(dirpath, n))
                    listing.append((os.path.relpath(layer, tmp_path / name), rel, n, st.st_mode, st.st_size,
                                    st.st_mtime_ns, st.st_uid, inodes[st.st_ino].split(":")[0]))
        views.append((listing, extra))
    assert views[0] == views[1]


# ---------------------------------------------------------------------------
# Targeted cases
# ---------------------------------------------------------------------------


def parity(stack_impl, root, spec, lowers, upper=None, *, data=(), options=(), extra=(), ignore=(), **stack_kwargs):
    """Build *spec* (see stackgen.populate) under *root*; require Stack == kernel; return the kernel view.

    *lowers*, *upper* and *data* are layer directory names under *root*.
    """
    root = os.fsencode(root)
    populate(root, spec)

    def path(name):
        p = os.path.join(root, os.fsencode(name))
        os.makedirs(p, exist_ok=True)
        return p

    lowers = [path(n) for n in lowers]
    data = [path(n) for n in data]
    work = None
    if upper is not None:
        upper, work = path(upper), path("work")
    with stack_impl(lowers, upper, work, data_layers=data, **stack_kwargs) as st:
        sview = kernel.stack_view(st, extra)
        problems = kernel.check_stack_api(st, sview)
    kview = kernel.kernel_view(lowers, upper, work, options=options, paths_extra=extra, data_layers=data)
    kernel.assert_views_equal(kview, sview, ignore=set(ignore) | ({"dir_blocks"} if upper is not None else set()))
    assert not problems, "Stack API disagrees with its own view:\n  " + "\n  ".join(problems[:30])
    return kview


def rec(view, path, section="paths"):
    return view[section][path]


def errno_of(view, path, section="paths", key="lstat"):
    return view[section][path][key].get("errno")


def listing(view, path):
    return view["paths"][path]["listing"]


def visible(view, path):
    """The listing without the names the kernel lists but cannot look up."""
    r = view["paths"][path]
    return [n for n in r["listing"] if n not in r["listing_failed"]]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


OPAQUE_VALUES = {"y": b"y", "x": b"x", "yy": b"yy", "Y": b"Y", "empty": b"", "ynul": b"y\0", "n": b"n"}


@pytest.mark.parametrize("with_upper", [False, True], ids=["lowers", "upper"])
def test_opaque_values(stack_impl, tmp_path, with_upper):
    """Only the one-byte value "y" makes a directory opaque; "x", "yy", "Y", "" and "y\\0" do not."""
    top = "u" if with_upper else "l0"
    spec = {top: [], "l1": [], "l2": []}
    for name, value in OPAQUE_VALUES.items():
        spec[top] += [(name, "dir"), (name, "xattr", "X.opaque", value), (name + "/top", "file")]
        spec["l1"] += [(name + "/mid", "file")]
        spec["l2"] += [(name + "/bottom", "file")]
    # Opaque in the bottom layer and in the middle: hides what is below it only.
    spec["l1"] += [("midop", "dir"), ("midop", "xattr", "X.opaque", "y"), ("midop/mid", "file")]
    spec["l2"] += [("midop/bottom", "file"), ("botop/b", "file"), ("botop", "xattr", "X.opaque", "y")]
    spec[top] += [("midop/top", "file")]
    lowers = ["l1", "l2"] if with_upper else ["l0", "l1", "l2"]
    kv = parity(stack_impl, tmp_path, spec, lowers, "u" if with_upper else None)
    assert sorted(visible(kv, "y")) == ["top"]
    for name in ("x", "yy", "Y", "empty", "ynul", "n"):
        assert sorted(visible(kv, name)) == ["bottom", "mid", "top"], name
    assert sorted(visible(kv, "midop")) == ["mid", "top"]
    assert visible(kv, "botop") == ["b"]
    assert rec(kv, "y")["lstat"]["nlink"] == 2  # a single real directory is not merged
    assert rec(kv, "yy")["lstat"]["nlink"] == 1  # a merged directory reports 1


def test_root_is_never_opaque(stack_impl, tmp_path):
    spec = {"u": [("", "xattr", "X.opaque", "y"), ("fu", "file")],
            "l0": [("", "xattr", "X.opaque", "y"), ("f0", "file")],
            "l1": [("f1", "file")]}
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1"], "u")
    assert sorted(visible(kv, "")) == ["f0", "f1", "fu"]
    kv = parity(stack_impl, tmp_path / "ro", {k: v for k, v in spec.items() if k != "u"}, ["l0", "l1"])
    assert sorted(visible(kv, "")) == ["f0", "f1"]


@pytest.mark.parametrize("whiteouts", ["kernel", "auto"])
def test_whiteout_forms(stack_impl, tmp_path, whiteouts):
    """Char 0:0 whiteouts of any mode (also sharing an inode), xattr whiteouts marked and unmarked."""
    spec = {
        "u": [("wu", "whiteout", 0o644), ("plain/w", "whiteout"), ("plain/keep", "file"),
              ("upx/xg", "xwhiteout")],
        "l0": [("w000", "whiteout", 0o000), ("w4000", "whiteout", 0o4000), ("h1", "whiteout", 0o600),
               ("h2", "link", "h1"), ("dev01", "chr", 0, 1),
               ("xw", "dir"), ("xw", "xattr", "X.opaque", "x"), ("xw/gone", "xwhiteout"),
               ("xw/one", "file", b"1"), ("xw/one", "xattr", "X.whiteout", ""),
               ("ux/gone", "xwhiteout"), ("ux/kept", "file")],
        "l1": [("wu", "file"), ("w000", "file"), ("w4000", "dir"), ("h1", "file"), ("h2", "file"),
               ("xw/gone", "file"), ("xw/stays", "file"), ("ux/gone", "file")],
        "l2": [("bx", "dir"), ("bx", "xattr", "X.opaque", "x"), ("bx/bgone", "xwhiteout"), ("bx/b", "file")],
    }
    expected_root = ["bx", "dev01", "plain", "upx", "ux", "xw"]
    if whiteouts == "kernel":
        # The AUFS/OCI form means nothing to the kernel (and to whiteouts="kernel").
        spec["l0"].append((".wh.foo", "file"))
        spec["l1"].append(("foo", "file"))
        expected_root += [".wh.foo", "foo"]
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1", "l2"], "u", whiteouts=whiteouts,
                extra=["wu", "w000", "h2", "xw/gone", "plain/w"])
    assert sorted(visible(kv, "")) == sorted(expected_root)
    for name in ("wu", "w000", "w4000", "h1", "h2"):
        assert name not in listing(kv, "")
    for name in ("wu", "w000", "h2", "plain/w"):
        assert errno_of(kv, name, "extra") == "ENOENT"
    assert rec(kv, "dev01")["lstat"]["type"] == "chr"
    # Marked directory in a middle layer: the xattr whiteout is hidden from readdir.
    assert sorted(listing(kv, "xw")) == ["one", "stays"]
    assert errno_of(kv, "xw/gone", "extra") == "ENOENT"
    # Unmarked, in the bottom layer or in a plain upper directory: listed, but ENOENT.
    assert "gone" in listing(kv, "ux") and errno_of(kv, "ux/gone") == "ENOENT"
    assert "bgone" in listing(kv, "bx") and errno_of(kv, "bx/bgone") == "ENOENT"
    assert listing(kv, "upx") == ["xg"] and errno_of(kv, "upx/xg") == "ENOENT"
    # A plain upper directory is listed raw by the kernel (the Stack hides the whiteout).
    assert sorted(listing(kv, "plain")) == ["keep", "w"]


def test_whiteout_and_nondir_cut_deeper_layers(stack_impl, tmp_path):
    spec = {
        "u": [("d/u", "file"), ("ud", "dir")],
        "l1": [("s/a", "file"), ("d", "whiteout"), ("t/a", "file"), ("f", "file"), ("g/in", "file"),
               ("ud", "whiteout")],
        "l2": [("s", "whiteout"), ("d/x", "file"), ("t", "file", b"a file"), ("f/z", "file"), ("g", "file"),
               ("ud/hidden", "file")],
        "l3": [("s/deep", "file"), ("s/a2", "file"), ("t/deep", "file"), ("d/y", "file")],
    }
    kv = parity(stack_impl, tmp_path, spec, ["l1", "l2", "l3"], "u",
                extra=["s/deep", "t/deep", "f/z", "f/", "g/", "ud/hidden"])
    assert visible(kv, "s") == ["a"]          # a whiteout below a dir hides all deeper dirs
    assert visible(kv, "d") == ["u"]          # upper dir over a lower whiteout
    assert visible(kv, "t") == ["a"]          # a file below a dir stops the merge too
    assert visible(kv, "ud") == []
    assert errno_of(kv, "s/deep", "extra") == "ENOENT"
    assert errno_of(kv, "t/deep", "extra") == "ENOENT"
    assert rec(kv, "f")["lstat"]["type"] == "reg"   # file over dir
    assert errno_of(kv, "f/z", "extra") == "ENOTDIR"
    assert rec(kv, "g")["lstat"]["type"] == "dir"   # dir over file: a plain dir
    assert rec(kv, "g")["lstat"]["nlink"] == 2


@pytest.mark.parametrize("with_upper", [False, True], ids=["lowers", "upper"])
def test_redirects(stack_impl, tmp_path, with_upper):
    """Relative and absolute directory redirects are followed (redirect_always_follow)."""
    if not FOLLOW:
        kernel.skip_or_fail("this kernel does not follow redirects by default (redirect_always_follow=N)")
    spec = {
        "l0": [("rel", "dir"), ("rel", "xattr", "X.redirect", "target"), ("rel/own", "file"),
               ("abs/d", "dir"), ("abs/d", "xattr", "X.redirect", "/x/y"),
               ("c1", "dir"), ("c1", "xattr", "X.redirect", "c2"),
               ("a2", "dir"), ("a2", "xattr", "X.redirect", "/op/inner"),
               ("fr", "file"), ("fr", "xattr", "X.redirect", "target"),
               ("opr", "dir"), ("opr", "xattr", "X.opaque", "y"), ("opr", "xattr", "X.redirect", "target")],
        "l1": [("target/t1", "file"), ("rel/hidden", "file"), ("x/y/f", "file"), ("abs/d/own1", "file"),
               ("c2", "dir"), ("c2", "xattr", "X.redirect", "c3"),
               ("op", "dir"), ("op", "xattr", "X.opaque", "y"), ("op/inner/i1", "file"),
               ("op/inner", "xattr", "X.redirect", "/z"), ("opr/below", "file")],
        "l2": [("target/t2", "file"), ("c3/deep", "file"), ("op/inner/i2", "file"), ("z/zz", "file"),
               ("bot", "dir"), ("bot", "xattr", "X.redirect", "target")],
    }
    lowers = ["l0", "l1", "l2"]
    upper = None
    if with_upper:
        # What a rename under redirect_dir=on leaves: a redirected upper dir and a whiteout.
        spec["u"] = [("moved", "dir"), ("moved", "xattr", "X.redirect", "target"), ("moved/new", "file"),
                     ("target", "whiteout"), ("ua/b", "dir"), ("ua/b", "xattr", "X.redirect", "/x/y"),
                     ("x/y", "whiteout")]
        upper = "u"
    kv = parity(stack_impl, tmp_path, spec, lowers, upper)
    assert sorted(visible(kv, "rel")) == ["own", "t1", "t2"]
    assert sorted(visible(kv, "abs/d")) == ["f"]
    assert sorted(visible(kv, "c1")) == ["deep"]
    assert sorted(visible(kv, "a2")) == ["i1", "zz"]   # an absolute redirect restarts below an opaque ancestor
    assert rec(kv, "fr")["lstat"]["type"] == "reg"
    assert visible(kv, "opr") == []                   # opaque wins over redirect
    assert visible(kv, "bot") == []                   # the bottom layer's redirect is not read
    if with_upper:
        assert sorted(visible(kv, "moved")) == ["new", "t1", "t2"]
        assert sorted(visible(kv, "ua/b")) == ["f"]
        assert "target" not in listing(kv, "")


@pytest.mark.parametrize("value,err", [
    (b"", "EINVAL"), (b"a/b", "EINVAL"), (b"/", "EINVAL"), (b"/x/", "EINVAL"), (b"//x", "EINVAL"),
    (b"/x//y", "EINVAL"), (b".", "EACCES"), (b"..", "EACCES"), (b"/x/../x", "EACCES"), (b"e\0junk", None),
])
def test_redirect_values(stack_impl, tmp_path, value, err):
    """Invalid redirects fail the lookup (EINVAL); '.'/'..' components fail it with EACCES."""
    if not FOLLOW:
        kernel.skip_or_fail("this kernel does not follow redirects by default")
    spec = {"l0": [("d", "dir"), ("d", "xattr", "X.redirect", value), ("d/own", "file")],
            "l1": [("e/f", "file"), ("x/g", "file"), ("d/old", "file")]}
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1"])
    if err is None:
        assert sorted(listing(kv, "d")) == ["f", "own"]
    else:
        assert errno_of(kv, "d") == err
        assert rec(kv, "")["listing_failed"]["d"] == err  # listed by the kernel, not by the Stack


@pytest.mark.parametrize("below", [False, True], ids=["alone", "merged"])
def test_opaque_dir_redirect_is_not_read(stack_impl, tmp_path, below):
    """On an opaque ("y") directory the redirect xattr is never read, so an invalid one does no harm."""
    spec = {"l0": [], "l1": [("keep", "file")], "l2": []}
    for i, value in enumerate([b"", b"//a", b"a/b", b".."]):
        name = "o%d" % i
        spec["l0"] += [(name, "dir"), (name, "xattr", "X.opaque", "y"), (name, "xattr", "X.redirect", value),
                       (name + "/own", "file")]
        if below:
            spec["l1"].append((name + "/hidden", "file"))
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1", "l2"])
    for i in range(4):
        assert visible(kv, "o%d" % i) == ["own"]


def test_redirect_nofollow_userxattr(stack_impl, tmp_path):
    """userxattr forces redirect nofollow: EPERM where a redirect would be followed; trusted.* ignored."""
    spec = {
        "ns": "user",
        "l0": [("d", "dir"), ("d", "xattr", "X.redirect", "e"), ("a/lastr", "dir"),
               ("a/lastr", "xattr", "X.redirect", "zz"), ("o/l0", "file"),
               ("o", "xattr", "trusted.overlay.opaque", "y"), ("uo/l0", "file"), ("uo", "xattr", "X.opaque", "y"),
               ("wt", "file", b""), ("wt", "xattr", "trusted.overlay.whiteout", "")],
        "l1": [("e/f1", "file"), ("a/x", "file"), ("o/l1", "file"), ("uo/l1", "file"), ("wt", "file")],
        "l2": [("d/f2", "file"), ("q/r", "dir"), ("q/r", "xattr", "X.redirect", "zz"), ("o/l2", "file")],
    }
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1", "l2"], options=("userxattr",),
                xattr_namespace="user", redirect_follow=False)
    assert errno_of(kv, "d") == "EPERM"
    assert errno_of(kv, "a/lastr") == "EPERM"   # a redirect that would be followed below
    assert visible(kv, "q/r") == []              # the last layer of the parent's stack: ignored
    assert sorted(listing(kv, "o")) == ["l0", "l1", "l2"]
    assert "trusted.overlay.opaque" in rec(kv, "o")["xattrs"]
    assert listing(kv, "uo") == ["l0"]
    assert rec(kv, "wt")["lstat"]["size"] == 0   # trusted.overlay.whiteout means nothing here


METACOPY_DATA = b"0123456789" * 700
METACOPY_SIZE = len(METACOPY_DATA)


def metacopy_spec(extra_top=()):
    """Metacopy files of every kind over lower layers l1 and l2 (top layer l0)."""
    def mc(name, size=METACOPY_SIZE, redirect=None):
        ops = [(name, "sparse", size), (name, "xattr", "X.metacopy", "")]
        if redirect is not None:
            ops.append((name, "xattr", "X.redirect", redirect))
        return ops
    return {
        "l0": (mc("byname") + mc("byrel", redirect="other") + mc("byabs", redirect="/dir/data")
               + mc("chain") + mc("nodata") + mc("overdir") + mc("oversym") + mc("overwo")
               + [("small", "sparse", 10), ("small", "xattr", "X.metacopy", "ab")]
               + [("v4", "sparse", 10), ("v4", "xattr", "X.metacopy", b"\x00\x04\x00\x00")]
               + list(extra_top)),
        "l1": [("byname", "file", METACOPY_DATA), ("other", "file", METACOPY_DATA[::-1]),
               ("chain", "sparse", len(METACOPY_DATA)), ("chain", "xattr", "X.metacopy", ""),
               ("overdir/x", "file"), ("oversym", "symlink", "byname"), ("overwo", "whiteout"),
               ("small", "file"), ("v4", "file", b"v4 data")],
        "l2": [("dir/data", "file", b"absolute " * 100), ("chain", "file", b"chain data")],
    }


@pytest.mark.parametrize("with_upper", [False, True], ids=["lowers", "upper"])
def test_metacopy_on(stack_impl, tmp_path, with_upper):
    spec = metacopy_spec()
    upper = None
    if with_upper:
        spec["u"] = [("up", "sparse", 7), ("up", "xattr", "X.metacopy", "")]
        spec["l1"].append(("up", "file", b"up data"))
        upper = "u"
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1", "l2"], upper, options=("metacopy=on",), metacopy=True)
    assert rec(kv, "byname")["sha256"] == sha(METACOPY_DATA)
    assert rec(kv, "byname")["lstat"]["blocks"] == os.lstat(tmp_path / "l1" / "byname").st_blocks
    assert rec(kv, "byname")["lstat"]["blocks"] != os.lstat(tmp_path / "l0" / "byname").st_blocks
    assert rec(kv, "byrel")["sha256"] == sha(METACOPY_DATA[::-1])
    assert rec(kv, "byabs")["sha256"] == sha(b"absolute " * 100)
    assert rec(kv, "chain")["sha256"] == sha(b"chain data")
    for name in ("nodata", "overdir", "oversym", "overwo", "small"):
        assert errno_of(kv, name) == "EIO", name
    assert rec(kv, "v4")["sha256"] == sha(b"v4 data")
    if with_upper:
        assert rec(kv, "up")["sha256"] == sha(b"up data")
        assert rec(kv, "up")["ino"] == "2:up"   # an upper metacopy reports its origin's inode


def test_metacopy_needs_the_option(stack_impl, tmp_path):
    """Without metacopy=on (and without data layers) a metacopy file gives EPERM."""
    kv = parity(stack_impl, tmp_path, metacopy_spec(), ["l0", "l1", "l2"])
    for name in ("byname", "byrel", "byabs", "chain", "nodata", "overdir", "v4"):
        assert errno_of(kv, name) == "EPERM", name
    assert errno_of(kv, "small") == "EIO"  # a 1-3 byte metacopy xattr is an error first
    assert rec(kv, "other")["sha256"] == sha(METACOPY_DATA[::-1])


def test_data_only_layers(stack_impl, tmp_path):
    """Data-only layers serve metacopy files through absolute redirects, looked up at first access."""

    def mc(name, redirect=None, size=15000):
        ops = [(name, "sparse", size), (name, "xattr", "X.metacopy", "")]
        return ops + ([(name, "xattr", "X.redirect", redirect)] if redirect else [])

    spec = {
        "l0": [("top", "file")] + mc("above", "/objects/abc"),
        "l1": (mc("dl", "/objects/abc") + mc("dl2", "/objects/def") + mc("miss", "/objects/none", 10000)
               + mc("todir", "/objects") + mc("viasym", "/lnk/abc") + mc("rel", "abc") + mc("nore")
               + mc("dotdot", "/objects/../objects/abc")),
        "d0": [("objects/abc", "file", b"ABC" * 5000), ("lnk", "symlink", "objects"), ("abc", "file", b"rel")],
        "d1": [("objects/def", "file", b"DEF" * 10), ("objects/abc", "file", b"shadowed"),
               ("lnk", "symlink", "objects")],
    }
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1"], data=["d0", "d1"],
                extra=["objects", "objects/abc", "lnk", "abc"])
    assert rec(kv, "dl")["sha256"] == sha(b"ABC" * 5000)
    assert rec(kv, "dl")["lstat"]["blocks"] == os.lstat(tmp_path / "d0" / "objects" / "abc").st_blocks
    assert rec(kv, "dl2")["sha256"] == sha(b"DEF" * 10)
    assert rec(kv, "dotdot")["sha256"] == sha(b"ABC" * 5000)
    assert rec(kv, "miss")["sha256"] == "ENOENT"
    assert rec(kv, "miss")["lstat"]["blocks"] == 24  # guessed from the size: 10000 bytes
    assert rec(kv, "todir")["sha256"] == "ENOENT"
    assert rec(kv, "viasym")["sha256"] == "ELOOP"  # no symlinks; the last data layer's error wins
    for name in ("rel", "nore", "above"):  # "above": other lowers are searched first, needing metacopy=on
        assert errno_of(kv, name) == "EPERM", name
    for name in ("objects", "objects/abc", "lnk", "abc"):
        assert errno_of(kv, name, "extra") == "ENOENT", name


@pytest.mark.parametrize("ns", ["trusted", "user"])
def test_xattr_escaping(stack_impl, tmp_path, ns):
    """Private <ns>.overlay.* names are hidden, <ns>.overlay.overlay.X is shown as <ns>.overlay.X."""
    other = "user" if ns == "trusted" else "trusted"
    names = {f"{ns}.overlay.overlay.foo": "1", f"{ns}.overlay.overlayZ": "2", f"{ns}.overlay.overlay": "3",
             f"{ns}.overlay.custom": "4", f"{ns}.overlay.overlay.": "5", f"{ns}.overlay.overlay.overlay.deep": "6",
             f"{other}.overlay.opaque": "7", f"{other}.overlay.overlay.bar": "8", "user.plain": "9",
             "trusted.plain": "A"}
    ops = []
    for target in ("f", "d"):
        ops += [(target, "file" if target == "f" else "dir")]
        ops += [(target, "xattr", k, v) for k, v in names.items()]
    spec = {"ns": ns, "l0": ops + [("lnk", "symlink", "f")], "l1": [("d/x", "file")]}
    if ns == "trusted":
        spec["l0"] += [("lnk", "xattr", "trusted.overlay.overlay.onlink", "L"), ("lnk", "xattr", "trusted.s", "S")]
    options = ("userxattr",) if ns == "user" else ()
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1"], options=options, xattr_namespace=ns,
                redirect_follow=FOLLOW if ns == "trusted" else False)
    shown = rec(kv, "f")["xattrs"]
    assert shown[f"{ns}.overlay.foo"] == b"1".hex()
    assert shown[f"{ns}.overlay.overlay.deep"] == b"6".hex()
    assert shown[f"{ns}.overlay."] == "EINVAL"
    for hidden in (f"{ns}.overlay.overlayZ", f"{ns}.overlay.custom", f"{ns}.overlay.overlay"):
        assert hidden not in shown
    assert shown[f"{other}.overlay.opaque"] == b"7".hex()
    assert rec(kv, "d")["xattrs"] == shown
    if ns == "trusted":
        assert rec(kv, "lnk")["xattrs"] == {"trusted.overlay.onlink": b"L".hex(), "trusted.s": b"S".hex()}


def test_symlinks(stack_impl, tmp_path):
    """Symlinks resolve inside the union root: absolute targets, '..' above the root, loops, 40 hops."""
    chain_ok = [("ok%d" % i, "symlink", "ok%d" % (i + 1)) for i in range(39)] + [("ok39", "symlink", "d/f")]
    chain_bad = [("bad%d" % i, "symlink", "bad%d" % (i + 1)) for i in range(40)] + [("bad40", "symlink", "d/f")]
    spec = {
        "l0": [("abs", "symlink", "/d/f"), ("rel", "symlink", "d/f"), ("up", "symlink", "../../../../d/f"),
               ("rootup", "symlink", "/../../d"), ("dangling", "symlink", "nope"), ("self", "symlink", "self"),
               ("loopa", "symlink", "loopb"), ("loopb", "symlink", "loopa"), ("dirlink", "symlink", "d"),
               ("dirslash", "symlink", "d/"), ("dot", "symlink", "."), ("onlytop", "file", b"top")]
              + chain_ok + chain_bad,
        "l1": [("d/f", "file", b"the file"), ("d/sub/g", "file"), ("cross", "symlink", "onlytop"),
               ("d/back", "symlink", "../abs")],
    }
    extra = ["dirlink/f", "dirlink/..", "dirlink/", "dirlink/./sub/../f", "abs/", "rel/..", "dangling/",
             "rootup/f", "dot/dot/d/f", "d/back", "dirslash/sub", "self/", "../dirlink/sub/g", "up/."]
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1"], extra=extra)
    for name in ("abs", "rel", "up", "ok0", "d/back", "cross"):
        assert rec(kv, name)["stat"]["type"] == "reg", name
    assert rec(kv, "up")["sha256"] == sha(b"the file")
    assert rec(kv, "cross")["sha256"] == sha(b"top")
    for name in ("self", "loopa", "bad0"):
        assert errno_of(kv, name, key="stat") == "ELOOP", name
    assert errno_of(kv, "dangling", key="stat") == "ENOENT"
    assert rec(kv, "rootup/f", "extra")["lstat"]["type"] == "reg"
    assert errno_of(kv, "abs/", "extra") == "ENOTDIR"
    assert errno_of(kv, "rel/..", "extra") == "ENOTDIR"  # '..' after a symlink to a file
    assert rec(kv, "dirlink/..", "extra")["lstat"]["type"] == "dir"


def test_special_names(stack_impl, tmp_path):
    """Undecodable, 255-byte, newline, colon, comma and backslash names, also as layer directory names."""
    long_name = b"n" * 255
    names = [b"\xff\xfe", b"caf\xc3\xa9", b"new\nline", b"co:lon", b"com,ma", b"back\\slash", b"sp ace", long_name]
    top, mid, bottom = "l:0", "l,1", "l\\2"
    spec = {top: [(b"d/" + n, "file", n) for n in names[:4]] + [(names[4], "whiteout")],
            mid: [(b"d/" + n, "file", b"mid") for n in names] + [(names[4], "file")],
            bottom: [(n, "file") for n in names] + [(b"d/" + long_name + b"/x", "file")]}
    extra = [b"a" * 256, b"d/" + b"b" * 256, b"\xff\xfe/", b"d/" + long_name + b"/x"]
    kv = parity(stack_impl, tmp_path, spec, [top, mid, bottom], extra=extra)
    assert sorted(os.fsencode(n) for n in visible(kv, "d")) == sorted(names)
    assert os.fsencode(rec(kv, "d/" + os.fsdecode(names[0]))["sha256"]) == sha(names[0]).encode()
    assert errno_of(kv, os.fsdecode(b"a" * 256), "extra") == "ENAMETOOLONG"
    assert errno_of(kv, os.fsdecode(b"d/" + b"b" * 256), "extra") == "ENAMETOOLONG"
    assert errno_of(kv, os.fsdecode(b"d/" + long_name + b"/x"), "extra") == "ENOTDIR"
    assert os.fsdecode(names[4]) not in listing(kv, "")


def test_500_layers(stack_impl, tmp_path):
    """The kernel's maximum stack (mounted with short relative lowerdir paths), merged dirs across all of it."""
    n = 500
    spec = {}
    for i in range(n):
        ops = [("common/c%d" % i, "file", b"%d" % i)]
        if i % 7 == 0:
            ops.append(("f%d" % i, "file"))
        if i % 50 == 10:
            ops.append(("common/c%d" % (i + 1), "whiteout"))
        if i == 250:
            ops += [("shared", "dir"), ("shared", "xattr", "X.opaque", "y")]
        ops.append(("shared/s%d" % i, "file"))
        spec["%d" % i] = ops
    lowers = ["%d" % i for i in range(n)]
    root = tmp_path / "layers"
    data = kernel.mount_data([root / name for name in lowers], base=root)
    assert len(data) < kernel.MOUNT_DATA_MAX
    kv = parity(stack_impl, root, spec, lowers, whiteouts="kernel")
    common = visible(kv, "common")
    assert len(common) == n - 10
    assert "c11" not in common and "c10" in common
    assert sorted(visible(kv, "shared"), key=lambda s: int(s[1:])) == ["s%d" % i for i in range(251)]


def test_deep_tree(stack_impl, tmp_path):
    """Sixty levels of directories merged across four layers, cut by a whiteout and an opaque dir.

    Level n is the directory d00/.../dNN; layer l<n % 4> holds fNN there and
    l3 holds bottomNN.  l2 whites out d31 (cutting l3 off below level 30) and
    l0's d45 is opaque (cutting l1 off below it).
    """
    depth = 60
    spec = {"l0": [], "l1": [], "l2": [], "l3": []}
    levels = []
    for level in range(depth):
        levels.append(b"/".join(b"d%02d" % i for i in range(level + 1)))
        path = levels[-1]
        layer = "l%d" % (level % 4)
        if not (layer == "l2" and level > 30):
            spec[layer].append((path + b"/f%d" % level, "file"))
        spec["l3"].append((path + b"/bottom%d" % level, "file"))
    spec["l2"].append((levels[30] + b"/d31", "whiteout"))
    spec["l0"] += [(levels[31] + b"/restart", "file"), (levels[45], "xattr", "X.opaque", "y"),
                   (levels[-1] + b"/deepest", "file")]
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1", "l2", "l3"], whiteouts="kernel")
    deepest = max(kv["paths"], key=lambda p: p.count("/"))
    assert deepest.count("/") == depth
    level = [os.fsdecode(p) for p in levels]
    assert "bottom30" in visible(kv, level[30])
    assert "bottom31" not in visible(kv, level[31]) and "restart" in visible(kv, level[31])
    assert "f44" in visible(kv, level[44]) and "f45" not in visible(kv, level[45])


def test_listing_order_is_bottom_first(stack_impl, tmp_path):
    """Merged readdir order: the bottom layer's getdents order, then new names from the top down."""
    spec = {"l0": [("d/" + n, "file") for n in ("zeta", "top1", "mid", "top2")],
            "l1": [("d/" + n, "file") for n in ("mid", "mid1", "beta", "zeta")],
            "l2": [("d/" + n, "file") for n in ("alpha", "zeta", "omega", "beta", "psi", "chi")]}
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1", "l2"])
    bottom = os.listdir(tmp_path / "l2" / "d")
    top_new = [n for n in os.listdir(tmp_path / "l0" / "d") if n not in bottom]
    mid_new = [n for n in os.listdir(tmp_path / "l1" / "d") if n not in bottom and n not in top_new]
    assert listing(kv, "d") == bottom + top_new + mid_new


def test_inode_numbers(stack_impl, tmp_path):
    """st_ino: merged dirs below the root report their top-most lower dir; everything else its own."""
    spec = {"u": [("d/u", "file"), ("uonly/x", "file"), ("f", "file")],
            "l1": [("d/a", "file"), ("e/a", "file"), ("h1", "file"), ("h2", "link", "h1")],
            "l2": [("d/b", "file"), ("e/b", "file"), ("f", "file")]}
    kv = parity(stack_impl, tmp_path, spec, ["l1", "l2"], "u")
    assert rec(kv, "")["ino"] == "0:"
    assert rec(kv, "d")["ino"] == "1:d"
    assert rec(kv, "e")["ino"] == "1:e"
    assert rec(kv, "uonly")["ino"] == "0:uonly"
    assert rec(kv, "f")["ino"] == "0:f"
    assert rec(kv, "h2")["ino"] == "1:h1" and rec(kv, "h2")["lstat"]["nlink"] == 2


def test_fifos_devices_and_modes(stack_impl, tmp_path):
    spec = {"l0": [("fifo", "fifo"), ("null", "chr", 1, 3), ("suid", "file"), ("suid", "mode", 0o4755),
                   ("sgid_dir", "dir"), ("sgid_dir", "mode", 0o2775), ("sticky", "dir"), ("sticky", "mode", 0o1777),
                   ("owned", "file"), ("owned", "owner", 1234, 5678), ("none", "file"), ("none", "mode", 0)],
            "l1": [("sgid_dir/x", "file"), ("sticky/y", "file")]}
    kv = parity(stack_impl, tmp_path, spec, ["l0", "l1"])
    assert rec(kv, "fifo")["lstat"]["type"] == "fifo"
    assert rec(kv, "null")["lstat"]["rdev"] == os.makedev(1, 3)
    assert rec(kv, "suid")["lstat"]["mode"] == 0o4755
    assert rec(kv, "sgid_dir")["lstat"]["mode"] == 0o2775
    assert rec(kv, "sticky")["lstat"]["mode"] == 0o1777
    assert (rec(kv, "owned")["lstat"]["uid"], rec(kv, "owned")["lstat"]["gid"]) == (1234, 5678)


@pytest.mark.parametrize("devices", [False, True], ids=["nodev", "devices"])
def test_device_nodes_open_like_a_nodev_mount(stack_impl, tmp_path, devices):
    """Reading a stack opens no device node unless devices=True, as a mount with
    nodev: a char device gives EACCES where the kernel's open(2) does
    (fs/namei.c:may_open_dev), through a symlink too, and a fifo opens.  With
    devices=True the node opens as on a mount without nodev: 1:5 reads zeros."""
    populate(tmp_path, {"l0": [("dev/zero", "chr", 1, 5), ("dev/link", "symlink", "zero"), ("dev/fifo", "fifo")],
                        "l1": [("keep", "file")], "upper": [], "work": []})
    lowers = [str(tmp_path / "l0"), str(tmp_path / "l1")]
    ops = [{"op": "os_open", "path": p, "flags": flags, "read": 4}
           for p, flags in [(b"dev/zero", ["O_RDONLY"]), (b"dev/link", ["O_RDONLY"]),
                            (b"dev/zero", ["O_RDONLY", "O_NOFOLLOW"]), (b"dev/zero", ["O_RDONLY", "O_DIRECTORY"]),
                            (b"dev/fifo", ["O_RDONLY"])]]
    res = write_ops.apply_kernel(lowers, tmp_path / "upper", tmp_path / "work", ops,
                                 options=() if devices else ("nodev",))
    opened = "ok chr read=00000000" if devices else "EACCES"
    assert res["outcomes"] == [opened, opened, opened, "ENOTDIR", "ok fifo read="]
    with stack_impl(lowers, devices=devices) as st:
        assert [write_ops.apply_op(write_ops.StackFS(st), op) for op in ops] == res["outcomes"]
        if devices:
            with st.open("dev/zero") as f:
                assert f.read(4) == bytes(4)
        else:
            with pytest.raises(PermissionError) as exc:
                st.open("dev/zero")
            assert exc.value.errno == errno.EACCES and exc.value.filename == "dev/zero"


_MOUNTPOINT_CHILD = r"""
import importlib, importlib.util, json, os, subprocess, sys
job = json.loads(sys.stdin.read())
spec = importlib.util.spec_from_file_location("kernel_helper", job["kernel_py"])
kernel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernel)
try:
    module = importlib.import_module(job["module"])
except ImportError:
    spec = importlib.util.spec_from_file_location("stack_module", job["module_file"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
cls = getattr(module, job["class"])
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", job["mountpoint"]], check=True)
try:
    with open(os.path.join(job["mountpoint"], "over"), "w") as f:
        f.write("on the tmpfs")
    with cls(job["lowers"]) as st:
        sview = kernel.stack_view(st)
        # resolve() names host paths under sub/ that the tmpfs now hides from us.
        problems = [p for p in kernel.check_stack_api(st, sview) if not p.startswith("resolve('sub/")]
    kview = kernel.kernel_view(job["lowers"])
    print(json.dumps({"diffs": kernel.compare_views(kview, sview), "problems": problems,
                      "kernel_sub": kview["paths"]["sub"]["listing"]}))
finally:
    subprocess.run(["umount", job["mountpoint"]])
"""


def test_mount_point_inside_layer_is_not_crossed(stack_impl, tmp_path):
    """A directory with something mounted on it is read as it is underneath (the kernel clones layer mounts)."""
    populate(tmp_path, {"l0": [("sub/under", "file"), ("top", "file")], "l1": [("sub/low", "file")]})
    module = sys.modules[stack_impl.__module__]
    job = {"kernel_py": kernel.__file__, "module": stack_impl.__module__,
           "module_file": getattr(module, "__file__", None), "class": stack_impl.__name__,
           "mountpoint": str(tmp_path / "l0" / "sub"), "lowers": [str(tmp_path / "l0"), str(tmp_path / "l1")]}
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", _MOUNTPOINT_CHILD],
                          input=json.dumps(job).encode(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(proc.stdout)
    assert sorted(result["kernel_sub"]) == ["low", "under"]
    assert not result["diffs"], "\n".join(result["diffs"])
    assert not result["problems"], "\n".join(result["problems"])


@pytest.mark.parametrize("where", ["upper", "top lower"])
def test_default_whiteouts_are_the_kernel_form(stack_impl, tmp_path, where):
    """A layer dir a kernel mounts has only the kernel's whiteout forms: files a
    container made named ".wh.victim" or ".wh..wh..opq" are plain files there,
    hide nothing and make nothing opaque (nlink of the dir stays the kernel's)."""
    top = "u" if where == "upper" else "l0"
    spec = {
        top: [("odd/.wh.victim", "file"), ("odd/lookdir/.wh..wh..opq", "file")],
        "l1": [("odd/victim", "file", b"still here"), ("odd/lookdir/a", "file")],
    }
    lowers = ["l1"] if where == "upper" else ["l0", "l1"]
    kv = parity(stack_impl, tmp_path, spec, lowers, "u" if where == "upper" else None)
    assert sorted(visible(kv, "odd")) == [".wh.victim", "lookdir", "victim"]
    assert sorted(visible(kv, "odd/lookdir")) == [".wh..wh..opq", "a"]
