"""Stack(..., redirect_dir=True) against a kernel mount with ``-o redirect_dir=on``.

The kernel is the oracle (dir.c:ovl_rename_start, ovl_rename_upper,
ovl_set_redirect, ovl_get_redirect, ovl_create_upper).  Each targeted test
pins the kernel's outcomes and upper layer by explicit expectations first,
then requires the Stack to match it (``write_ops.run_case``: outcomes, a dump
of both upper layers, the merged views through a fresh kernel mount of each
side's layers and through a live and a fresh Stack).  Then random sequences
with redirect_dir on both sides, and each side reading the other's upper.

Needs root and overlayfs (fails instead of skipping under
``OVERLAYFS_REQUIRE_KERNEL=1``).
"""

from __future__ import annotations

import os

import kernel
import pytest
import write_ops
from write_ops import O

import overlayfs

OPTIONS = ("redirect_dir=on",)
STACK_KWARGS = {"redirect_dir": True}
REDIRECT = "trusted.overlay.redirect"
OPAQUE = "trusted.overlay.opaque"
#: Random sequences with redirect_dir on both sides.
N_RANDOM = 30


@pytest.fixture(autouse=True)
def _kernel():
    kernel.skip_unless_mountable()



def hx(s: str) -> str:
    return s.encode().hex()


def is_whiteout(rec):
    return rec is not None and rec["type"] == "whiteout"


def xattrs(rec):
    return rec.get("xattrs", {})


def check(tmp_path, spec, ops, expect, rule=None):
    """Pin the kernel's outcomes and upper layer (redirect_dir=on), then require parity."""
    assert len(expect) == len(ops)
    layout = write_ops.make_layout(tmp_path, spec)
    report = write_ops.run_case(tmp_path, layout, ops, options=OPTIONS, stack_kwargs=STACK_KWARGS)
    side = report.a
    got = [o if not o.startswith("ok") else "ok" for o in side.outcomes]
    assert got == expect, "kernel outcomes %r, expected %r" % (side.outcomes, expect)
    if rule is not None:
        ok = rule(side.upper_dump)
        assert ok is not False, "kernel upper layer breaks the rule; its paths: %r" % sorted(side.upper_dump)
    assert not report.diffs, report.format()
    return side.upper_dump


# ---------------------------------------------------------------------------
# Targeted rules
# ---------------------------------------------------------------------------


def test_lower_only_dir_same_parent_gets_relative_redirect(tmp_path):
    """The directory alone is copied up (not its children); the old name is whited out."""

    def rule(up):
        assert is_whiteout(up["ld"])
        assert xattrs(up["ld2"]) == {REDIRECT: hx("ld")}
        assert not any(p.startswith("ld2/") for p in up)

    check(tmp_path, {"l1": [("ld/y", "file"), ("ld/sub/z", "file")]},
          [O("rename", src=b"ld", dst=b"ld2")], ["ok"], rule)


def test_merged_dir_same_parent(tmp_path):
    def rule(up):
        assert is_whiteout(up["m"])
        assert xattrs(up["m2"]) == {REDIRECT: hx("m")} and up["m2/u"]["type"] == "reg"

    check(tmp_path, {"upper": [("m/u", "file")], "l1": [("m/l", "file")]},
          [O("rename", src=b"m", dst=b"m2")], ["ok"], rule)


def test_cross_parent_gets_absolute_redirect(tmp_path):
    def rule(up):
        assert xattrs(up["dst/c2"]) == {REDIRECT: hx("/a/b/c")}
        assert xattrs(up["top"]) == {REDIRECT: hx("/a/b")}  # the parent of the first, moved next
        assert is_whiteout(up["top/c"]) and is_whiteout(up["a/b"]) and REDIRECT not in xattrs(up["a"])

    check(tmp_path, {"l1": [("a/b/c/f", "file"), ("a/b/k", "file"), ("dst/keep", "file")]},
          [O("rename", src=b"a/b/c", dst=b"dst/c2"), O("rename", src=b"a/b", dst=b"top")],
          ["ok", "ok"], rule)


def test_renamed_again_keeps_relative_redirect(tmp_path):
    """In the same parent an existing redirect stays, even when the dir gets its
    original name back (the whiteout there is exchanged and removed)."""

    def rule(up):
        assert xattrs(up["ld"]) == {REDIRECT: hx("ld")}
        assert "x" not in up and "y" not in up

    check(tmp_path, {"l1": [("ld/f", "file")]},
          [O("rename", src=b"ld", dst=b"x"), O("rename", src=b"x", dst=b"y"), O("rename", src=b"y", dst=b"ld")],
          ["ok", "ok", "ok"], rule)


def test_relative_redirect_becomes_absolute_then_stays(tmp_path):
    def rule(up):
        assert xattrs(up["ld"]) == {REDIRECT: hx("/ld")}
        assert "sub/z" not in up and "x" not in up

    check(tmp_path, {"l1": [("ld/f", "file"), ("sub/k", "file")]},
          [O("rename", src=b"ld", dst=b"x"), O("rename", src=b"x", dst=b"sub/z"),
           O("rename", src=b"sub/z", dst=b"ld")],
          ["ok", "ok", "ok"], rule)


def test_dir_whose_parent_was_renamed(tmp_path):
    """The absolute redirect is built from the ancestors' own redirects."""

    def rule(up):
        assert xattrs(up["p2"]) == {REDIRECT: hx("p")}
        assert xattrs(up["q/c"]) == {REDIRECT: hx("/p/c")}
        assert xattrs(up["p2/d2"]) == {REDIRECT: hx("d")}
        assert is_whiteout(up["p2/c"]) and is_whiteout(up["p2/d"])

    check(tmp_path, {"l1": [("p/c/f", "file"), ("p/d/g", "file"), ("q/k", "file")]},
          [O("rename", src=b"p", dst=b"p2"), O("rename", src=b"p2/c", dst=b"q/c"),
           O("rename", src=b"p2/d", dst=b"p2/d2")],
          ["ok", "ok", "ok"], rule)


def test_rename_over_empty_dirs_and_whiteouts(tmp_path):
    """Over a lower-only empty dir, a whiteout, a pure-upper empty dir and a merged dir
    whose upper holds only whiteouts; ENOTEMPTY for a merged non-empty target before any
    copy-up, and for a pure-upper non-empty one after the copy-up and the redirect."""

    def rule(up):
        assert xattrs(up["edir"]) == {REDIRECT: hx("s1")}
        assert xattrs(up["wd"]) == {REDIRECT: hx("s2")}
        assert xattrs(up["uempty"]) == {REDIRECT: hx("s3")}
        assert xattrs(up["umerged"]) == {REDIRECT: hx("s4")} and "umerged/w" not in up
        assert "s5" not in up  # ENOTEMPTY before the copy-up
        assert xattrs(up["s6"]) == {REDIRECT: hx("s6")} and up["pufull/x"]["type"] == "reg"
        for n in ("s1", "s2", "s3", "s4"):
            assert is_whiteout(up[n])

    check(tmp_path, {"upper": [("wd", "whiteout"), ("uempty", "dir"), ("umerged/w", "whiteout"),
                               ("pufull/x", "file")],
                     "l1": [("s%d/f" % i, "file") for i in range(1, 7)] +
                           [("edir", "dir"), ("wd/x", "file"), ("umerged/w", "file"), ("full/x", "file")]},
          [O("rename", src=b"s1", dst=b"edir"), O("rename", src=b"s2", dst=b"wd"),
           O("rename", src=b"s3", dst=b"uempty"), O("rename", src=b"s4", dst=b"umerged"),
           O("rename", src=b"s5", dst=b"full"), O("rename", src=b"s6", dst=b"pufull")],
          ["ok", "ok", "ok", "ok", "ENOTEMPTY", "ENOTEMPTY"], rule)


def test_ops_inside_the_renamed_dir_then_rmdir(tmp_path):
    """Creates and removals inside a redirected dir use its lower (reached through the
    redirect); a new subdir is opaque (its parent is merged); the dir, merged through
    its redirect but with nothing below its new name, is removed after its whiteouts
    are cleared, leaving no trace at the new name."""

    def mid(up):
        assert xattrs(up["nd"]) == {REDIRECT: hx("ld")}
        assert is_whiteout(up["nd/y"]) and is_whiteout(up["nd/sub"])
        assert xattrs(up["nd/sub2"]) == {OPAQUE: hx("y")}
        assert up["nd/new"]["type"] == "reg"

    ops = [O("rename", src=b"ld", dst=b"nd"),
           O("os_open", path=b"nd/new", flags=["O_WRONLY", "O_CREAT"], mode=0o644, data=b"n"),
           O("unlink", path=b"nd/y"), O("mkdir", path=b"nd/sub2", mode=0o755), O("rmdir", path=b"nd/sub")]
    spec = {"l1": [("ld/y", "file"), ("ld/z", "file"), ("ld/sub", "dir")]}
    check(tmp_path / "mid", spec, ops, ["ok"] * 5, mid)

    def end(up):
        assert "nd" not in up and not any(p.startswith("nd/") for p in up)
        assert is_whiteout(up["ld"])

    check(tmp_path / "end", spec,
          ops + [O("unlink", path=b"nd/z"), O("unlink", path=b"nd/new"), O("rmdir", path=b"nd/sub2"),
                 O("rmdir", path=b"nd")],
          ["ok"] * 9, end)


def test_mkdir_in_a_merged_dir_is_opaque(tmp_path):
    """ovl_create_upper: with redirect_dir=on a new dir in a merged parent is opaque
    (at the root too); in a pure-upper parent it is not."""

    def rule(up):
        assert xattrs(up["m/new"]) == {OPAQUE: hx("y")}
        assert xattrs(up["top"]) == {OPAQUE: hx("y")}
        assert xattrs(up["lo/new"]) == {OPAQUE: hx("y")}  # lower-only parent, merged once copied up
        assert xattrs(up["pu/new"]) == {} and xattrs(up["a"]) == {OPAQUE: hx("y")}
        assert xattrs(up["a/b"]) == {}

    check(tmp_path, {"upper": [("m/u", "file"), ("pu/x", "file")], "l1": [("m/l", "file"), ("lo/l", "file")]},
          [O("mkdir", path=b"m/new", mode=0o755), O("mkdir", path=b"top", mode=0o755),
           O("mkdir", path=b"lo/new", mode=0o755), O("mkdir", path=b"pu/new", mode=0o755),
           O("makedirs", path=b"a/b", mode=0o755)],
          ["ok"] * 5, rule)


def test_pure_upper_dir_into_merged_parent_is_opaque(tmp_path):
    def rule(up):
        assert xattrs(up["m/ud"]) == {OPAQUE: hx("y")} and "ud" not in up

    check(tmp_path, {"upper": [("ud/f", "file")], "l1": [("m/x", "file")]},
          [O("rename", src=b"ud", dst=b"m/ud")], ["ok"], rule)


def test_redirect_longer_than_redirect_max_is_exdev(tmp_path):
    """ovl_get_redirect: an absolute redirect of up to 256 bytes (redirect_max) is
    set, a longer one gives EXDEV after the copy-up; move() then copies the tree."""
    with open("/sys/module/overlay/parameters/redirect_max") as f:
        if f.read().strip() != "256":
            kernel.skip_or_fail("the overlay module's redirect_max is not the default 256")
    deep = "/".join(["d" * 60] * 4)  # "/" + deep + "/" + name: 245 + len(name) bytes
    fits, too_long = "f" * 11, "g" * 12

    def rule(up):
        assert xattrs(up["ok"]) == {REDIRECT: hx("/%s/%s" % (deep, fits))}
        assert up["%s/%s" % (deep, too_long)]["type"] == "dir"  # copied up, then EXDEV
        assert REDIRECT not in xattrs(up["%s/%s" % (deep, too_long)])
        assert "no" not in up
        assert up["mv/k"]["type"] == "reg" and is_whiteout(up["%s/%s2" % (deep, too_long)])

    check(tmp_path, {"l1": [("%s/%s/x" % (deep, fits), "file"), ("%s/%s/x" % (deep, too_long), "file"),
                            ("%s/%s2/k" % (deep, too_long), "file")]},
          [O("rename", src=("%s/%s" % (deep, fits)).encode(), dst=b"ok"),
           O("rename", src=("%s/%s" % (deep, too_long)).encode(), dst=b"no"),
           O("move", src=("%s/%s2" % (deep, too_long)).encode(), dst=b"mv")],
          ["ok", "EXDEV", "ok"], rule)


def test_without_redirect_dir_still_exdev(tmp_path):
    """The default stays as the kernel's default: EXDEV, no redirect written."""
    layout = write_ops.make_layout(tmp_path, {"l1": [("ld/f", "file")]})
    report = write_ops.run_case(tmp_path, layout, [O("rename", src=b"ld", dst=b"x")])
    assert report.a.outcomes == ["EXDEV"] and not report.diffs, report.format()


@pytest.mark.parametrize("kwargs", [{"redirect_follow": False}, {"whiteouts": "oci"},
                                    {"xattr_namespace": "user"}])
def test_conflicting_options_are_rejected(tmp_path, kwargs):
    with pytest.raises(ValueError, match="redirect_dir"):
        overlayfs.Stack([str(tmp_path)], redirect_dir=True, **kwargs)


def test_read_only_stack_accepts_redirect_dir(tmp_path):
    with overlayfs.Stack([str(tmp_path)], redirect_dir=True) as st:
        with pytest.raises(OSError) as e:
            st.rename("a", "b")
        assert e.value.errno == 30  # EROFS


# ---------------------------------------------------------------------------
# Random sequences, redirect_dir on both sides
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_random_sequence_redirect_dir(tmp_path, seed):
    report = write_ops.run_random(tmp_path, 5000 + seed, options=OPTIONS, stack_kwargs=STACK_KWARGS)
    assert not report.diffs, report.format()


# ---------------------------------------------------------------------------
# Each side reads the other's upper
# ---------------------------------------------------------------------------

CROSS_SPEC = {"upper": [("m/u", "file"), ("pu/x", "file")],
              "l1": [("m/l", "file"), ("a/b/c/f", "file"), ("a/b/e/g", "file"), ("q/k", "file"), ("ld/y", "file")],
              "l2": [("a/b/c/deep", "file"), ("m/l2", "file")]}
CROSS_OPS = [O("rename", src=b"a/b", dst=b"q/b2"), O("rename", src=b"q/b2/c", dst=b"c"),
             O("rename", src=b"m", dst=b"m2"), O("rename", src=b"ld", dst=b"m2/ld"),
             O("mkdir", path=b"m2/ld/new", mode=0o755), O("unlink", path=b"c/f"),
             O("rename", src=b"pu", dst=b"q/b2/pu"), O("rename", src=b"q", dst=b"q3")]
CROSS_PATHS = [b"q3/b2/e/g", b"c/deep", b"m2/ld/y", b"q3/b2/pu/x", b"a", b"q", b"m", b"ld", b"a/b/c"]


def _stack_view_of(layout):
    def body(send):
        with overlayfs.Stack(layout.lowers, layout.upper, layout.work, redirect_dir=True) as st:
            send("view", kernel.stack_view(st, CROSS_PATHS))

    messages, error = write_ops.run_forked(body)
    assert error is None, error
    return messages[0][1]


def test_stack_reads_the_kernels_upper(tmp_path):
    layout = write_ops.make_layout(tmp_path, CROSS_SPEC)
    res = write_ops.apply_kernel(layout.lowers, layout.upper, layout.work, CROSS_OPS, options=OPTIONS)
    assert all(o.startswith("ok") for o in res["outcomes"]), res["outcomes"]
    assert REDIRECT in os.listxattr(os.path.join(layout.upper, b"q3", b"b2"))
    kview = kernel.kernel_view(layout.lowers, layout.upper, layout.work, options=OPTIONS, paths_extra=CROSS_PATHS)
    kernel.assert_views_equal(kview, _stack_view_of(layout), ignore=write_ops.VIEW_IGNORE)


def test_kernel_reads_the_stacks_upper(tmp_path):
    layout = write_ops.make_layout(tmp_path, CROSS_SPEC)
    res = write_ops.apply_stack(overlayfs.Stack, layout.lowers, layout.upper, layout.work, CROSS_OPS,
                                stack_kwargs=STACK_KWARGS)
    assert res["error"] is None and all(o.startswith("ok") for o in res["outcomes"]), res
    assert REDIRECT in os.listxattr(os.path.join(layout.upper, b"q3", b"b2"))
    sview = _stack_view_of(layout)
    # With redirect_always_follow=Y the kernel follows them with redirect_dir off too.
    for options in (OPTIONS, ()) if kernel.kernel_redirect_follow() else (OPTIONS,):
        kview = kernel.kernel_view(layout.lowers, layout.upper, layout.work, options=options,
                                   paths_extra=CROSS_PATHS)
        kernel.assert_views_equal(kview, sview, ignore=write_ops.VIEW_IGNORE)
