"""Write parity: operations through a Stack leave the upper layer exactly as a kernel overlay mount does.

Every case applies the same operations to two identical copies of a layer
stack: through a real overlay mount (in a private mount namespace) and
through ``overlayfs.Stack``; then compares each operation's outcome, a
normalized dump of both upper directories, and the merged views afterwards
(see ``write_ops``).

* ``test_random_sequence``: seeded random sequences over small random stacks
  (every operation in ``write_ops.ALL_OPS``); ``..._unprivileged`` the same
  run by a caller without privileges.
* targeted tests, one rule each (docs/overlay-semantics.md §2, §3, §5, §6): the
  kernel's result is pinned by explicit expectations first (so a rule both
  sides got wrong still fails), then the Stack must match it.
* ``test_harness_*``: self-tests of the harness, with the kernel on both sides
  (no differences allowed) and with deliberately wrong appliers (which must
  be caught).

Needs root and overlayfs (``kernel.skip_unless_mountable``; fails instead of
skipping under ``OVERLAYFS_REQUIRE_KERNEL=1``).
"""

from __future__ import annotations

import collections
import os
import signal
import stat

import dumps
import kernel
import pytest
import write_ops
from write_ops import O

#: Random sequences run in CI.
N_RANDOM = 120
#: Random sequences run with the kernel on both sides (harness self-test).
N_SELFTEST = 12
#: Random sequences run as an unprivileged caller (permission checks).
N_UNPRIVILEGED = 60


@pytest.fixture(autouse=True)
def _kernel():
    kernel.skip_unless_mountable()



def _stack_cls():
    import overlayfs

    return overlayfs.Stack


def _check_listed_ops_exist():
    missing = write_ops.missing_ops(_stack_cls())
    if missing:
        pytest.fail("write_ops.ALL_OPS lists %s but overlayfs.Stack has no such method" % missing,
                    pytrace=False)


# ---------------------------------------------------------------------------
# Random sequences
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_random_sequence(tmp_path, seed):
    _check_listed_ops_exist()
    report = write_ops.run_random(tmp_path, seed)
    assert not report.diffs, report.format()


@pytest.mark.parametrize("seed", range(N_UNPRIVILEGED))
def test_random_sequence_unprivileged(tmp_path, seed):
    """The same sequences run by a caller without privileges (a random uid,
    gid and groups; the mount and the Stack are root's): every EACCES and
    EPERM where the kernel gives it, nothing copied up before a refusal,
    new objects owned by the caller."""
    _check_listed_ops_exist()
    caller = write_ops.random_caller(seed)
    report = write_ops.run_random(tmp_path, 1000 + seed, caller=caller)
    assert not report.diffs, "caller %r\n%s" % (caller, report.format())


# ---------------------------------------------------------------------------
# Targeted rules
# ---------------------------------------------------------------------------


def _matches(outcome: str, want: str) -> bool:
    """``want`` "ok" accepts any success ("ok reg size=..."); otherwise an exact outcome
    (an errno name, or e.g. "ok chr read=00")."""
    return outcome.startswith("ok") if want == "ok" else outcome == want


def check(tmp_path, spec, ops, expect, rule=None, *, umask=0o022, caller=None, stack_kwargs=None):
    """Pin the kernel's outcomes (*expect*) and upper layer (``rule(dump)``, or
    ``rule(dump, layout)`` for a two-argument rule), then require Stack parity.
    With *caller* ``(uid, gid, groups)`` both sides run the operations as it.
    The Stack gets *stack_kwargs*; the kernel mount is nodev unless they say
    ``devices=True`` (``write_ops.run_case``).

    Returns the kernel side's upper dump.
    """
    assert len(expect) == len(ops)
    _check_listed_ops_exist()
    layout = write_ops.make_layout(tmp_path, spec)
    report = write_ops.run_case(tmp_path, layout, ops, umask=umask, caller=caller, stack_kwargs=stack_kwargs)
    side = report.a
    bad = [(write_ops.format_op(op), got, want) for op, got, want in zip(ops, side.outcomes, expect)
           if not _matches(got, want)]
    assert not bad, "kernel outcomes differ from the expected (op, got, expected): %r" % bad
    if rule is not None:
        ok = rule(*(side.upper_dump, layout)[:rule.__code__.co_argcount])
        assert ok is not False, "kernel upper layer breaks the rule; its paths: %r" % sorted(side.upper_dump)
    assert not report.diffs, report.format()
    return side.upper_dump


def is_whiteout(rec):
    return rec is not None and rec["type"] == "whiteout"


def xattrs(rec):
    return rec.get("xattrs", {})


OPAQUE = "trusted.overlay.opaque"


def test_unlink_upper_only_leaves_no_trace(tmp_path):
    def rule(up):
        assert "u" not in up and "d/u2" not in up
        assert up["d"]["type"] == "dir"

    check(tmp_path, {"upper": [("u", "file"), ("d/u2", "symlink", "x")], "l1": [("d/low", "file")]},
          [O("unlink", path=b"u"), O("remove", path=b"d/u2")], ["ok", "ok"], rule)


@pytest.mark.parametrize("kind", ["file", "fifo", "symlink", "hardlink", "both"])
def test_unlink_lower_name_leaves_whiteout(tmp_path, kind):
    lower = {"file": [("d/x", "file")], "fifo": [("d/x", "fifo")], "symlink": [("d/x", "symlink", "t")],
             "hardlink": [("d/x", "file"), ("d/h", "link", "d/x")], "both": [("d/x", "file")]}[kind]
    upper = [("d/x", "file", b"upper")] if kind == "both" else []

    def rule(up):
        assert is_whiteout(up["d/x"]), up["d/x"]
        assert up["d/x"]["mode"] == "0000" and (up["d/x"]["uid"], up["d/x"]["gid"]) == (0, 0)
        assert "d/h" not in up  # the other name of a hard link is untouched

    check(tmp_path, {"upper": upper, "l1": lower}, [O("unlink", path=b"d/x")], ["ok"], rule)


def test_whiteout_owner_ignores_setgid_parent(tmp_path):
    """The kernel's whiteout comes from the work dir as the mounter: 0:0 even in a setgid dir."""

    def rule(up):
        assert up["sg"]["mode"] == "2775" and up["sg"]["gid"] == 4242
        assert is_whiteout(up["sg/f"]) and up["sg/f"]["gid"] == 0

    check(tmp_path, {"l1": [("sg/f", "file"), ("sg", "owner", 0, 4242), ("sg", "mode", 0o2775)]},
          [O("unlink", path=b"sg/f")], ["ok"], rule)


def test_file_created_in_setgid_dir_inherits_group(tmp_path):
    def rule(up):
        assert up["sg/new"]["gid"] == 4242 and up["sg/over"]["gid"] == 4242
        assert up["sg/d"]["gid"] == 4242 and up["sg/d"]["mode"] == "2755"

    check(tmp_path, {"l1": [("sg/keep", "file"), ("sg", "owner", 0, 4242), ("sg", "mode", 0o2775)],
                     "upper": [("sg/over", "whiteout"), ("sg", "owner", 0, 4242), ("sg", "mode", 0o2775)]},
          [O("os_open", path=b"sg/new", flags=["O_WRONLY", "O_CREAT"], mode=0o644, data=b"n"),
           O("os_open", path=b"sg/over", flags=["O_WRONLY", "O_CREAT"], mode=0o644, data=b"o"),
           O("mkdir", path=b"sg/d", mode=0o755)],
          ["ok", "ok", "ok"], rule)


def test_rmdir_merged_dir_whose_upper_holds_whiteouts(tmp_path):
    def rule(up):
        assert is_whiteout(up["m"]) and not any(p.startswith("m/") for p in up)
        assert is_whiteout(up["o"]) and not any(p.startswith("o/") for p in up)

    check(tmp_path, {"upper": [("m/x", "whiteout"), ("m/y", "whiteout"), ("o/w", "whiteout"),
                               ("o", "xattr", "X.opaque", "y")],
                     "l1": [("m/x", "file"), ("m/y", "dir"), ("o/q", "file")]},
          [O("rmdir", path=b"m"), O("rmdir", path=b"o/")], ["ok", "ok"], rule)


def test_rmdir_pure_upper_dir_holding_whiteouts_is_not_empty(tmp_path):
    """docs/overlay-semantics.md §6.1 (trap 28): with nothing below, the kernel removes
    the upper dir with a plain rmdir, and the real fs refuses because of the whiteouts."""

    def rule(up):
        assert is_whiteout(up["pu/w"]) and is_whiteout(up["po/w"])

    check(tmp_path, {"upper": [("pu/w", "whiteout"), ("po/w", "whiteout"), ("po", "xattr", "X.opaque", "y")],
                     "l1": [("other", "file")]},
          [O("rmdir", path=b"pu"), O("rmdir", path=b"po")], ["ENOTEMPTY", "ENOTEMPTY"], rule)


def test_rmdir_emptiness_is_judged_on_the_merged_view(tmp_path):
    def rule(up):
        assert "vis" not in up and "xw" not in up  # failed: nothing copied up
        assert is_whiteout(up["lw"])  # a lower char whiteout does not count

    check(tmp_path, {"l1": [("vis/f", "file"), ("xw/w", "xwhiteout"), ("lw/w", "whiteout")],
                     "l2": [("lw/w", "file"), ("xw/w", "file")]},
          [O("rmdir", path=b"vis"), O("rmdir", path=b"xw"), O("rmdir", path=b"lw")],
          ["ENOTEMPTY", "ENOTEMPTY", "ok"], rule)


#: Where a directory ``d`` holds a whiteout ``d/a``; l3 is the bottom layer.
#: (spec, kernel outcome of rename(src, d) and then of rmdir(d)).
_XW_DIRS = {
    # An xattr whiteout: listed nowhere in the first one (a lower, non-bottom
    # directory marked opaque=x), yet an entry for emptiness everywhere.
    "lower-marked": ({"l1": [("d", "dir"), ("d", "xattr", "X.opaque", "x"), ("d/a", "xwhiteout")],
                      "l2": [("d/a", "dir")]}, "ENOTEMPTY"),
    "lower-marked-alone": ({"l1": [("d", "dir"), ("d", "xattr", "X.opaque", "x"), ("d/a", "xwhiteout")]},
                           "ENOTEMPTY"),
    "lower-marked-under-upper-dir": ({"upper": [("d", "dir")],
                                      "l1": [("d", "dir"), ("d", "xattr", "X.opaque", "x"), ("d/a", "xwhiteout")],
                                      "l2": [("d/a", "file")]}, "ENOTEMPTY"),
    "lower-unmarked": ({"l1": [("d/a", "xwhiteout")], "l2": [("d/a", "dir")]}, "ENOTEMPTY"),
    "bottom-marked": ({"l3": [("d", "dir"), ("d", "xattr", "X.opaque", "x"), ("d/a", "xwhiteout")]}, "ENOTEMPTY"),
    "upper-marked": ({"upper": [("d", "dir"), ("d", "xattr", "X.opaque", "x"), ("d/a", "xwhiteout")],
                      "l1": [("d/a", "dir")]}, "ENOTEMPTY"),
    "upper-unmarked": ({"upper": [("d/a", "xwhiteout")], "l1": [("d/a", "file")]}, "ENOTEMPTY"),
    "upper-only": ({"upper": [("d/a", "xwhiteout")]}, "ENOTEMPTY"),
    # Char 0:0 whiteouts are what the check skips: the same places, empty.
    "lower-marked-char": ({"l1": [("d", "dir"), ("d", "xattr", "X.opaque", "x"), ("d/a", "whiteout")],
                           "l2": [("d/a", "dir")]}, "ok"),
    "upper-char-over-marked-lower": ({"upper": [("d/a", "whiteout")],
                                      "l1": [("d", "dir"), ("d", "xattr", "X.opaque", "x"), ("d/a", "xwhiteout")],
                                      "l2": [("d/a", "dir")]}, "ok"),
}


@pytest.mark.parametrize("where", list(_XW_DIRS))
def test_xattr_whiteouts_count_for_emptiness(tmp_path, where):
    """The kernel's emptiness check (readdir.c:ovl_check_empty_dir) skips only the
    entries ovl_check_whiteouts found to be char 0:0 whiteouts: an xattr whiteout
    is an entry wherever it is, even where the listing hides it (a lower,
    non-bottom directory marked opaque=x), so rmdir and a rename over the
    directory give ENOTEMPTY and leave the upper layer alone."""
    spec, want = _XW_DIRS[where]
    spec = {**spec, "upper": spec.get("upper", []) + [("src", "dir")], "l3": spec.get("l3", []) + [("keep", "file")]}
    had_d = any(p == "d" or p.startswith("d/") for p, *_ in spec["upper"])

    def rule(up):
        if want == "ok":
            assert "src" not in up and up.get("d", {}).get("type") in (None, "whiteout")
        else:
            assert up["src"]["type"] == "dir"
            assert ("d" in up) == had_d and not is_whiteout(up.get("d"))

    check(tmp_path, spec, [O("rename", src=b"src", dst=b"d"), O("rmdir", path=b"d")], [want, want], rule)


@pytest.mark.parametrize("below", [True, False])
def test_mkdir_over_whiteout_is_opaque(tmp_path, below):
    def rule(up):
        assert up["w"]["type"] == "dir" and xattrs(up["w"]) == {OPAQUE: "79"}
        assert up["w"]["mode"] == "0750"  # the umask applies
        assert not any(p.startswith("w/") for p in up)

    check(tmp_path, {"upper": [("w", "whiteout")], "l1": [("w/inner", "file")] if below else [("z", "file")]},
          [O("mkdir", path=b"w", mode=0o777)], ["ok"], rule, umask=0o027)


def test_mkdir_new_name_in_merged_parent_is_not_opaque(tmp_path):
    """Default mount options (no redirect_dir/index/metacopy/xino): no opaque xattr."""

    def rule(up):
        assert up["d/new"]["type"] == "dir" and OPAQUE not in xattrs(up["d/new"])
        assert up["d/new"]["mode"] == "0755"

    check(tmp_path, {"upper": [("d", "dir")], "l1": [("d/keep", "file")]},
          [O("mkdir", path=b"d/new")], ["ok"], rule)


def test_kernel_mkdir_new_name_is_opaque_with_redirect_dir_on(tmp_path):
    """Kernel-only check of the option dependence (the Stack has no such option)."""
    layout = write_ops.make_layout(tmp_path, {"upper": [("d", "dir")], "l1": [("d/keep", "file")]})
    side = write_ops.run_kernel_side(layout, [O("mkdir", path=b"d/new")], options=("redirect_dir=on",), views=())
    assert side.outcomes == ["ok"]
    assert xattrs(side.upper_dump["d/new"]) == {OPAQUE: "79"}


@pytest.mark.parametrize("op", [
    O("os_open", path=b"x", flags=["O_WRONLY", "O_CREAT"], mode=0o666, data=b"new"),
    O("symlink", target=b"t", path=b"x"),
    O("mkfifo", path=b"x", mode=0o666),
    O("mknod", path=b"x", mode=stat.S_IFCHR | 0o644, device=os.makedev(1, 3)),
    O("mknod", path=b"x", mode=stat.S_IFREG | 0o644, device=0),
    O("link", src=b"other", dst=b"x"),
], ids=lambda op: op["op"] if op["op"] != "mknod" else "mknod-%o" % stat.S_IFMT(op["mode"]))
def test_create_over_whiteout_replaces_it_without_xattrs(tmp_path, op):
    def rule(up):
        assert up["x"]["type"] not in ("whiteout", "dir")
        assert "xattrs" not in up["x"], up["x"]
        if op["op"] != "link":
            assert up["x"]["mtime"] == "fresh"

    check(tmp_path, {"upper": [("x", "whiteout")], "l1": [("x", "file"), ("x", "xattr", "user.low", "1"),
                                                          ("other", "file")]},
          [op], ["ok"], rule)


def _lower_files(n):
    spec = [("f%d" % i, "file", b"content-%d" % i) for i in range(n)]
    spec += [("f%d" % i, "xattr", "user.a", "1") for i in range(n)]
    spec += [("f0", "xattr", "X.custom", "private"), ("f0", "xattr", "X.overlay.esc", "escaped")]
    return spec


@pytest.mark.parametrize("op,expect_mtime", [
    (O("chmod", path=b"f0", mode=0o600), "kept"),
    (O("chown", path=b"f0", uid=5, gid=6), "kept"),
    (O("chown", path=b"f0", uid=-1, gid=-1), "kept"),
    (O("utime", path=b"f0", ns=[5, 7]), 7),
    (O("utime", path=b"f0"), "fresh"),
    (O("utime", path=b"f0", times=[1_234_567_890.5, 1_234_567_890.25]), 1_234_567_890_250_000_000),
    (O("truncate", path=b"f0", length=3), "fresh"),
    (O("setxattr", path=b"f0", name=b"user.b", value=b"x"), "kept"),
    (O("removexattr", path=b"f0", name=b"user.a"), "kept"),
    (O("os_open", path=b"f0", flags=["O_RDWR"]), "kept"),
    (O("os_open", path=b"f0", flags=["O_WRONLY", "O_APPEND"], data=b"+"), "fresh"),
], ids=lambda v: v["op"] if isinstance(v, dict) else None)
def test_metadata_changes_copy_up(tmp_path, op, expect_mtime):
    """Copy-up keeps data, mtime, owner, mode, user and escaped xattrs; drops private ones."""

    def rule(up, layout):
        rec = up["f0"]
        assert rec["type"] == "reg"
        assert ("trusted.overlay.overlay.esc" in xattrs(rec)) and ("trusted.overlay.custom" not in xattrs(rec))
        lower = os.lstat(os.path.join(layout.lowers[0], b"f0")).st_mtime_ns
        assert rec["mtime"] == (lower if expect_mtime == "kept" else expect_mtime), rec
        assert "f1" not in up

    check(tmp_path, {"l1": _lower_files(2) + [("f0", "mode", 0o4755)]}, [op], ["ok"], rule)


def test_chown_clears_setuid_on_copy_up(tmp_path):
    def rule(up):
        assert up["f0"]["mode"] == "0755" and up["f1"]["mode"] == "0755"

    check(tmp_path, {"l1": _lower_files(2) + [("f0", "mode", 0o4755), ("f1", "mode", 0o6755)]},
          [O("chown", path=b"f0", uid=-1, gid=-1), O("chown", path=b"f1", uid=7, gid=7)], ["ok", "ok"], rule)


def test_failed_setxattr_still_copies_up(tmp_path):
    """docs/overlay-semantics.md §5.1 (trap 29): setxattr copies up before the
    flags are checked, so a XATTR_REPLACE of a missing name or a XATTR_CREATE of
    an existing one fails (ENODATA / EEXIST) after the copy-up."""

    def rule(up):
        assert up["f0"]["type"] == "reg" and up["f1"]["type"] == "reg"
        assert xattrs(up["f0"]).get("user.a") == "31" and "user.zz" not in xattrs(up["f0"])

    check(tmp_path, {"l1": _lower_files(2)},
          [O("setxattr", path=b"f0", name=b"user.zz", value=b"v", flags=os.XATTR_REPLACE),
           O("setxattr", path=b"f1", name=b"user.a", value=b"v", flags=os.XATTR_CREATE)],
          ["ENODATA", "EEXIST"], rule)


def test_removexattr_of_missing_name_does_not_copy_up(tmp_path):
    def rule(up):
        assert "f0" not in up and "f1" not in up and "d" not in up
        assert "user.a" not in xattrs(up["f2"])

    check(tmp_path, {"l1": _lower_files(3) + [("d/f0", "file")]},
          [O("removexattr", path=b"f0", name=b"user.missing"),
           O("removexattr", path=b"f1", name=b"trusted.overlay.foo"),
           O("removexattr", path=b"d/f0", name=b"user.a"),
           O("removexattr", path=b"f2", name=b"user.a")],
          ["ENODATA", "ENODATA", "ENODATA", "ok"], rule)


def test_private_xattr_names_are_stored_escaped(tmp_path):
    def rule(up):
        assert xattrs(up["f0"]).get("trusted.overlay.overlay.opaque") == "79"
        assert xattrs(up["f1"]).get("trusted.overlay.overlay.overlay.esc") == "65"
        assert OPAQUE not in xattrs(up["f0"])

    check(tmp_path, {"l1": _lower_files(2)},
          [O("setxattr", path=b"f0", name=b"trusted.overlay.opaque", value=b"y"),
           O("setxattr", path=b"f1", name=b"trusted.overlay.overlay.esc", value=b"e")],
          ["ok", "ok"], rule)


def test_escaped_xattr_names_through_the_overlay(tmp_path):
    """Names under the private prefix are escaped: setting, listing and removing
    them works on ordinary files and directories, and copy-up keeps them."""

    def rule(up):
        assert xattrs(up["f0"]) == {"user.a": "31"}  # removed the shown "trusted.overlay.esc"
        assert xattrs(up["f1"]).get("trusted.overlay.overlay.whiteout") == ""
        assert xattrs(up["d"]) == {"trusted.overlay.overlay.esc0": "65"} and up["d"]["mode"] == "0700"
        assert up["f1"]["type"] == "reg" and up["f1"]["size"] > 0

    check(tmp_path, {"l1": _lower_files(2) + [("d", "dir"), ("d", "xattr", "X.overlay.esc0", "e")]},
          [O("removexattr", path=b"f0", name=b"trusted.overlay.esc"),
           O("setxattr", path=b"f1", name=b"trusted.overlay.whiteout", value=b""),
           O("chmod", path=b"d", mode=0o700)],
          ["ok", "ok", "ok"], rule)


@pytest.mark.parametrize("target", ["fifo", "dev", "sl"])
def test_trusted_xattrs_on_special_files(tmp_path, target):
    """Only user.* is refused on symlinks, FIFOs and devices; trusted.* (escaped or
    not) is set after copying the object up, and removed likewise."""

    def rule(up):
        assert up[target]["type"] == {"fifo": "fifo", "dev": "chr", "sl": "lnk"}[target]
        assert xattrs(up[target]) == {"trusted.t1": "31", "trusted.overlay.overlay.opaque": "79"}

    check(tmp_path, {"l1": [("fifo", "fifo"), ("dev", "chr", 1, 3), ("sl", "symlink", "fifo"),
                            (target, "xattr", "trusted.t2", "2")]},
          [O("setxattr", path=target.encode(), name=b"trusted.t1", value=b"1", follow=False),
           O("setxattr", path=target.encode(), name=b"trusted.overlay.opaque", value=b"y", follow=False),
           O("removexattr", path=target.encode(), name=b"trusted.t2", follow=False)],
          ["ok", "ok", "ok"], rule)


def test_kernel_copy_up_skips_holes_per_1mib_chunk(tmp_path):
    """Kernel-only pin of docs/overlay-semantics.md §5.3 (trap 30): holes are skipped
    only at 1 MiB chunk boundaries (why dumps.WRITE_RULES ignores data_map)."""
    layout = write_ops.make_layout(tmp_path, {"l1": [("keep", "file")]})
    mib = 1 << 20
    with open(os.path.join(layout.lowers[0], b"sp"), "wb") as f:
        f.write(b"a" * 4096)
        f.seek(2 * mib)
        f.write(b"b" * 4096)
        f.truncate(5 * mib)
    lower_map = dumps.data_map(os.path.join(layout.lowers[0], b"sp"), 5 * mib)
    if lower_map != [[0, 4096], [2 * mib, 2 * mib + 4096]]:
        kernel.skip_or_fail("the filesystem under the temp dir does not keep 4 KiB holes: %r" % lower_map)
    side = write_ops.run_kernel_side(layout, [O("chmod", path=b"sp", mode=0o600)], views=())
    assert side.outcomes == ["ok"]
    assert side.upper_dump["sp"]["data_map"] == [[0, mib], [2 * mib, 3 * mib]]
    assert side.upper_dump["sp"]["size"] == 5 * mib


def test_open_rdonly_trunc_copies_up_and_truncates(tmp_path):
    def rule(up):
        assert up["f0"]["size"] == 0 and up["f0"]["mtime"] == "fresh"
        assert "f1" not in up  # plain O_RDONLY does not copy up

    check(tmp_path, {"l1": _lower_files(2)},
          [O("os_open", path=b"f0", flags=["O_RDONLY", "O_TRUNC"]), O("os_open", path=b"f1", flags=["O_RDONLY"])],
          ["ok", "ok"], rule)


@pytest.mark.parametrize("devices", [False, True], ids=["nodev", "devices"])
def test_open_fifo_or_device_for_write_does_not_copy_up(tmp_path, devices):
    def rule(up):
        assert "fifo" not in up and "dev" not in up
        assert up["fifo2"]["type"] == "fifo" and up["fifo2"]["mode"] == "0600"  # chmod does

    check(tmp_path, {"l1": [("fifo", "fifo"), ("fifo2", "fifo"), ("dev", "chr", 1, 3)]},
          [O("os_open", path=b"fifo", flags=["O_RDWR"], data=b"x"),
           O("os_open", path=b"dev", flags=["O_WRONLY", "O_TRUNC"]),
           O("chmod", path=b"fifo2", mode=0o600)],
          ["ok", "ok" if devices else "EACCES", "ok"], rule, stack_kwargs={"devices": devices})


ZEROS = "ok chr read=00000000"

#: Opens of device nodes 1:5 (an open that works reads zeros), in a lower
#: layer and in the upper: (operation, kernel outcome with nodev, without).
_DEVICE_OPS = [
    (O("os_open", path=b"dev/zero", flags=["O_RDONLY"], read=4), "EACCES", ZEROS),
    (O("os_open", path=b"dev/link", flags=["O_RDONLY"], read=4), "EACCES", ZEROS),
    (O("os_open", path=b"dev/zero", flags=["O_RDONLY", "O_NOATIME"], read=4), "EACCES", ZEROS),
    (O("os_open", path=b"dev/zero", flags=["O_WRONLY"]), "EACCES", "ok chr"),
    (O("os_open", path=b"dev/zero", flags=["O_WRONLY", "O_APPEND"]), "EACCES", "ok chr"),
    (O("os_open", path=b"dev/zero", flags=["O_RDWR", "O_TRUNC"], read=4), "EACCES", ZEROS),
    (O("os_open", path=b"dev/zero", flags=["O_RDONLY", "O_CREAT"], mode=0o600, read=4), "EACCES", ZEROS),
    (O("os_open", path=b"up/zero", flags=["O_RDONLY"], read=4), "EACCES", ZEROS),
    (O("os_open", path=b"up/zero", flags=["O_RDWR"], read=4), "EACCES", ZEROS),
    # The existence and type checks come before the device check.
    (O("os_open", path=b"dev/zero", flags=["O_WRONLY", "O_CREAT", "O_EXCL"], mode=0o600), "EEXIST", "EEXIST"),
    (O("os_open", path=b"dev/zero", flags=["O_RDONLY", "O_DIRECTORY"]), "ENOTDIR", "ENOTDIR"),
    (O("os_open", path=b"dev/zero", flags=["O_WRONLY", "O_DIRECTORY"]), "ENOTDIR", "ENOTDIR"),
    # nodev is about devices only.
    (O("os_open", path=b"dev/fifo", flags=["O_RDONLY"]), "ok fifo", "ok fifo"),
    # Copying a device node up makes a node (metadata), it does not open it.
    (O("chmod", path=b"dev/zero", mode=0o640), "ok", "ok"),
    (O("os_open", path=b"dev/zero", flags=["O_RDONLY"], read=4), "EACCES", ZEROS),
]


@pytest.mark.parametrize("devices", [False, True], ids=["nodev", "devices"])
def test_device_nodes_open_only_with_devices_true(tmp_path, devices):
    """A Stack reads its layers as a nodev mount does unless devices=True: opening
    a char or block device node gives EACCES (fs/namei.c:may_open_dev), in a
    lower layer and in the upper, for reading and for writing, after the
    EEXIST and ENOTDIR checks; a fifo opens, and a chmod copies the node up.
    With devices=True the node opens as on a mount without nodev."""

    def rule(up):
        assert set(up) == {"", "up", "up/zero", "dev", "dev/zero"}, sorted(up)
        assert up["dev/zero"]["type"] == "chr" and up["dev/zero"]["mode"] == "0640"

    ops = [op for op, _, _ in _DEVICE_OPS]
    check(tmp_path, {"upper": [("up/zero", "chr", 1, 5)],
                     "l1": [("dev/zero", "chr", 1, 5), ("dev/link", "symlink", "zero"), ("dev/fifo", "fifo")]},
          ops, [ok if devices else nodev for _, nodev, ok in _DEVICE_OPS], rule,
          stack_kwargs={"devices": devices})


@pytest.mark.parametrize("op,err", [
    (O("truncate", path=b"fifo", length=0), "EINVAL"),
    (O("truncate", path=b"d", length=0), "EISDIR"),
    (O("chmod", path=b"sl", mode=0o600, follow=False), "ENOTSUP"),
    (O("setxattr", path=b"sl", name=b"user.x", value=b"1", follow=False), "EPERM"),
    (O("removexattr", path=b"sl", name=b"user.x", follow=False), "EPERM"),
    (O("setxattr", path=b"dev", name=b"user.x", value=b"1"), "EPERM"),
    (O("os_open", path=b"f0", flags=["O_WRONLY", "O_CREAT", "O_EXCL"], mode=0o644), "EEXIST"),
    (O("mkdir", path=b"d/x"), "EEXIST"),
    (O("mknod", path=b"d/wh", mode=stat.S_IFCHR | 0o600, device=0), "EPERM"),
    (O("mknod", path=b"d/x", mode=stat.S_IFCHR | 0o600, device=0), "EEXIST"),  # EEXIST before EPERM
    (O("os_open", path=b"d/x/", flags=["O_WRONLY", "O_CREAT", "O_EXCL"], mode=0o600), "EISDIR"),
], ids=lambda v: v["op"] if isinstance(v, dict) else v)
def test_errors_that_come_before_copy_up(tmp_path, op, err):
    """Permission, type and existence checks fail before anything is copied up."""

    def rule(up):
        assert set(up) == {""}, sorted(up)

    check(tmp_path, {"l1": _lower_files(2) + [("fifo", "fifo"), ("d/x", "file"), ("sl", "symlink", "f0"),
                                              ("dev", "chr", 1, 3)]},
          [op], [err], rule)


@pytest.mark.parametrize("op", [
    O("os_open", path=b"f0", flags=["O_RDONLY", "O_CREAT"], mode=0o600),
    O("os_open", path=b"dev", flags=["O_WRONLY", "O_APPEND"], data=b"x"),
    O("os_open", path=b"dev", flags=["O_RDWR", "O_TRUNC"]),
    O("os_open", path=b"fifo", flags=["O_RDWR", "O_APPEND"], data=b"x"),
], ids=["creat-existing-rdonly", "dev-append", "dev-trunc", "fifo-append"])
def test_opens_that_do_not_copy_up(tmp_path, op):
    check(tmp_path, {"l1": _lower_files(1) + [("fifo", "fifo"), ("dev", "chr", 1, 3)]}, [op], ["ok"],
          lambda up: set(up) == {""}, stack_kwargs={"devices": True})


def test_operations_that_must_fail(tmp_path):
    check(tmp_path, {"upper": [("hid", "whiteout")],
                     "l1": [("m/a", "file"), ("file", "file"), ("hid", "file"), ("d", "dir"),
                            ("s", "symlink", "file")]},
          [O("rmdir", path=b"m"),
           O("unlink", path=b"d"),
           O("unlink", path=b"d/"),
           O("mkdir", path=b"file"),
           O("mkdir", path=b"m"),
           O("chmod", path=b"file/x", mode=0o600),
           O("os_open", path=b"file/new", flags=["O_WRONLY", "O_CREAT"], mode=0o600),
           O("removexattr", path=b"file", name=b"user.nope"),
           O("chmod", path=b"hid", mode=0o600),
           O("unlink", path=b"hid"),
           O("unlink", path=b"file/"),
           O("chown", path=b"file/", uid=1, gid=1),
           O("rmdir", path=b""),
           O("rmdir", path=b"file"),
           O("mkdir", path=b"m/" + b"z" * 256),
           O("os_open", path=b"newname/", flags=["O_WRONLY", "O_CREAT"], mode=0o600),
           O("os_open", path=b"d", flags=["O_WRONLY"]),
           O("os_open", path=b"s", flags=["O_WRONLY", "O_NOFOLLOW"]),
           O("truncate", path=b"file", length=-1)],
          ["ENOTEMPTY", "EISDIR", "EISDIR", "EEXIST", "EEXIST", "ENOTDIR", "ENOTDIR", "ENODATA", "ENOENT", "ENOENT",
           "ENOTDIR", "ENOTDIR", "EBUSY", "ENOTDIR", "ENAMETOOLONG", "EISDIR", "EISDIR", "ELOOP", "EINVAL"],
          lambda up: set(up) <= {"", "hid"})


def test_open_o_directory(tmp_path):
    check(tmp_path, {"l1": [("d/x", "file"), ("f", "file")]},
          [O("os_open", path=b"d", flags=["O_RDONLY", "O_DIRECTORY"]),
           O("os_open", path=b"f", flags=["O_RDONLY", "O_DIRECTORY"]),
           O("os_open", path=b"missing", flags=["O_RDONLY", "O_DIRECTORY"])],
          ["ok", "ENOTDIR", "ENOENT"])


def test_create_in_lower_only_dir_copies_up_the_parent_chain(tmp_path):
    def rule(up):
        assert up["a"]["mode"] == "0750" and (up["a"]["uid"], up["a"]["gid"]) == (123, 45)
        assert xattrs(up["a"]) == {"user.d": "76"}
        assert up["a/b"]["type"] == "dir" and "a/b/sib" not in up and "a/other" not in up
        assert up["a/b/new"]["type"] == "fifo"

    check(tmp_path, {"l1": [("a/b/sib", "file"), ("a/other", "file"), ("a", "mode", 0o750), ("a", "owner", 123, 45),
                            ("a", "xattr", "user.d", "v")]},
          [O("mkfifo", path=b"a/b/new", mode=0o644)], ["ok"], rule)


@pytest.mark.parametrize("hider", ["xwhiteout", "whiteout"])
def test_name_hidden_in_a_lower_layer_is_not_positive(tmp_path, hider):
    """A name whose only lower occurrence is a whiteout (char 0:0 or xattr whiteout)
    hides nothing: creating and then removing it leaves no whiteout."""

    def rule(up):
        assert "d/n" not in up

    check(tmp_path, {"l1": [("d/n", hider), ("d/keep", "file")], "l2": [("d/n", "file")]},
          [O("os_open", path=b"d/n", flags=["O_WRONLY", "O_CREAT"], mode=0o644, data=b"x"),
           O("unlink", path=b"d/n")],
          ["ok", "ok"], rule)


def test_umask_applies_to_created_objects(tmp_path):
    def rule(up):
        assert up["d"]["mode"] == "0700" and up["f"]["mode"] == "0600" and up["p"]["mode"] == "0600"
        assert up["m/n"]["mode"] == "0700" and up["m"]["mode"] == "0700"  # makedirs: parents too, from 0o777

    check(tmp_path, {"l1": [("keep", "file")]},
          [O("mkdir", path=b"d"), O("os_open", path=b"f", flags=["O_WRONLY", "O_CREAT"], mode=0o666),
           O("mkfifo", path=b"p", mode=0o666), O("makedirs", path=b"m/n", mode=0o755)],
          ["ok", "ok", "ok", "ok"], rule, umask=0o077)


def test_makedirs_gives_mode_to_the_leaf_only(tmp_path):
    """os.makedirs semantics: intermediate directories get 0o777 (minus the umask)."""

    def rule(up):
        assert up["a"]["mode"] == "0755" and up["a/b"]["mode"] == "0755" and up["a/b/c"]["mode"] == "0700"

    check(tmp_path, {"l1": [("keep", "file")]}, [O("makedirs", path=b"a/b/c", mode=0o700)], ["ok"], rule)


# -- rename / link ---------------------------------------------------------------


def test_rename_lower_file_leaves_whiteout(tmp_path):
    def rule(up):
        assert is_whiteout(up["lf"]) and up["moved"]["type"] == "reg"
        assert up["moved"]["mtime"] != "fresh"
        assert up["w"]["type"] == "reg" and "uf" not in up  # over a whiteout; upper-only source: no trace

    check(tmp_path, {"upper": [("uf", "file"), ("w", "whiteout")], "l1": [("lf", "file"), ("w", "file")]},
          [O("rename", src=b"lf", dst=b"moved"), O("rename", src=b"uf", dst=b"w")], ["ok", "ok"], rule)


def test_rename_dirs(tmp_path):
    """A merged/lower dir gives EXDEV (redirect_dir off); a pure-upper dir moved
    into a merged parent becomes opaque."""

    def rule(up):
        assert "ld" not in up and xattrs(up["m/ud"]) == {OPAQUE: "79"} and "ud" not in up

    check(tmp_path, {"upper": [("ud/f", "file")], "l1": [("ld/y", "file"), ("m/x", "file")]},
          [O("rename", src=b"ld", dst=b"ld2"), O("rename", src=b"ud", dst=b"m/ud")], ["EXDEV", "ok"], rule)


def test_rename_over_a_whiteout_switches_whiteouts(tmp_path):
    """docs/overlay-semantics.md §6.4 (trap 27): renaming an object that exists
    below onto an upper whiteout exchanges the two (dir.c:ovl_rename "Switch
    whiteouts"), so the old whiteout inode -- its mode, owner and mtime -- ends
    up at the source name."""

    def rule(up, layout):
        old = os.lstat(os.path.join(layout.upper, b"wo"))
        assert up["wo"]["type"] == "reg"
        assert is_whiteout(up["lf"]) and up["lf"]["mode"] == "0640" and (up["lf"]["uid"], up["lf"]["gid"]) == (5, 6)
        assert up["lf"]["mtime"] == old.st_mtime_ns

    check(tmp_path, {"upper": [("wo", "whiteout", 0o640), ("wo", "owner", 5, 6)],
                     "l1": [("lf", "file"), ("wo", "file")]},
          [O("rename", src=b"lf", dst=b"wo")], ["ok"], rule)


def test_rename_pure_upper_dir_over_a_whiteout_is_opaque(tmp_path):
    def rule(up):
        assert xattrs(up["wo"]) == {OPAQUE: "79"} and up["wo/x"]["type"] == "reg"
        assert "ud" not in up  # nothing below: no whiteout left behind

    check(tmp_path, {"upper": [("wo", "whiteout"), ("ud/x", "file")], "l1": [("wo/y", "file")]},
          [O("rename", src=b"ud", dst=b"wo")], ["ok"], rule)


def test_rename_dir_error_order(tmp_path):
    """docs/overlay-semantics.md §6.5 (dir.c:ovl_rename_start, ovl_rename_upper): EXDEV for a
    merged or lower dir comes before ENOTEMPTY of the target; a non-empty merged target
    is ENOTEMPTY before anything is changed, while a pure-upper one is judged by the
    upper rename itself, after a pure-upper source moved into a merged parent was
    marked opaque."""

    def rule(up):
        assert xattrs(up["pu"]) == {OPAQUE: "79"} and up["pu2/full"]["type"] == "dir"
        assert xattrs(up["pu3"]) == {} and "low" not in up

    check(tmp_path, {"upper": [("pu", "dir"), ("pu2/full", "dir"), ("pu3", "dir")],
                     "l1": [("low", "dir"), ("lowfull/x", "file"), ("mfull/y", "file")]},
          [O("rename", src=b"low", dst=b"lowfull"), O("rename", src=b"low", dst=b"pu2"),
           O("rename", src=b"pu", dst=b"pu2"), O("rename", src=b"pu3", dst=b"mfull")],
          ["EXDEV", "EXDEV", "ENOTEMPTY", "ENOTEMPTY"], rule)


def test_rename_resolves_the_new_parent_before_the_old_name(tmp_path):
    """do_renameat2 resolves both parents first: a symlink loop in the new path is ELOOP
    even when the old name does not exist; a too-long new name is found only after."""
    check(tmp_path, {"l1": [("loop", "symlink", "loop"), ("f", "file")]},
          [O("rename", src=b"missing", dst=b"loop/x"), O("rename", src=b"missing", dst=b"z" * 300)],
          ["ELOOP", "ENOENT"])


def test_rename_onto_an_ancestor_is_not_empty(tmp_path):
    """do_renameat2: a target that is an ancestor of the source is ENOTEMPTY, before
    the type checks (EISDIR for a file onto a dir)."""
    check(tmp_path, {"upper": [("u/f", "file")], "l1": [("d/e/f", "file"), ("d/g", "file")]},
          [O("rename", src=b"d/g", dst=b"d"), O("rename", src=b"d/e", dst=b"d"), O("rename", src=b"u/f", dst=b"u")],
          ["ENOTEMPTY", "ENOTEMPTY", "ENOTEMPTY"])


@pytest.mark.parametrize("kind", ["rename", "move"])
def test_rename_into_itself(tmp_path, kind):
    """EINVAL (the VFS check) comes before EXDEV, ENOTEMPTY or ENOTDIR."""
    check(tmp_path, {"upper": [("ud/x", "file")], "l1": [("ld/y/z", "file"), ("m/q", "file")]},
          [O(kind, src=b"ld", dst=b"ld/y/"), O(kind, src=b"ud", dst=b"ud/x/"), O(kind, src=b"m", dst=b"m/n")],
          ["EINVAL", "EINVAL", "EINVAL"], lambda up: set(up) == {"", "ud", "ud/x"})


def test_link_copies_up_the_source(tmp_path):
    def rule(up):
        assert up["m/z"]["links"] == ["m/z", "m/z2"] and up["m/z"]["nlink"] == 2

    check(tmp_path, {"l1": [("m/z", "file")]}, [O("link", src=b"m/z", dst=b"m/z2")], ["ok"], rule)


# ---------------------------------------------------------------------------
# Harness self-tests
# ---------------------------------------------------------------------------


def test_harness_copies_are_identical(tmp_path):
    """cp -a keeps everything the dumps compare, in every layer: all xattrs, data maps,
    directory times and sizes too (not atimes: cp reads the originals)."""
    layout = write_ops.build_random(tmp_path, 3)
    copy = layout.clone(os.path.join(tmp_path, "copy"))
    rules = dumps.Rules(ignore=("atime",))
    for a, b in zip(layout.layers, copy.layers):
        da, db = dumps.dump_tree(a), dumps.dump_tree(b)
        assert len(da) > 1 and set(da) == set(db)
        assert dumps.compare_dumps(da, db, rules, labels=("original", "copy")) == []


def test_harness_generator_is_reproducible(tmp_path):
    layout = write_ops.build_random(tmp_path, 5)
    probe = layout.clone(os.path.join(tmp_path, "probe"))  # a mount writes into the upper
    view = kernel.kernel_view(probe.lowers, probe.upper, probe.work)
    one = write_ops.make_ops(5, view, 40, ops=write_ops.ALL_OPS, layers=layout.layers)
    two = write_ops.make_ops(5, view, 40, ops=write_ops.ALL_OPS, layers=layout.layers)
    assert one == two and len(one) == 40
    assert write_ops.make_ops(5, view, 10, ops=[]) == []
    with pytest.raises(ValueError):
        write_ops.make_ops(5, view, 10, ops=["frobnicate"])


def test_harness_kernel_on_both_sides_agrees(tmp_path):
    """With the kernel on both sides, nothing differs; the sequences reach the intended errors."""
    seen = collections.Counter()
    for seed in range(N_SELFTEST):
        report = write_ops.run_random(tmp_path / str(seed), seed, ops=write_ops.ALL_OPS, both_kernel=True)
        assert not report.diffs, report.format()
        for op, out in zip(report.ops, report.a.outcomes):
            seen[op["op"]] += 1
            seen[out.split()[0]] += 1
    assert set(write_ops.ALL_OPS) <= set(seen), "operations never generated: %s" % (set(write_ops.ALL_OPS) - set(seen))
    for err in ("ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "ENOTEMPTY", "ENODATA"):
        assert seen[err], "no operation failed with %s in %d sequences: %r" % (err, N_SELFTEST, seen)


#: A sequence on which every mutator below has something to break.
_MUTATION_SPEC = {"upper": [("wo", "whiteout")],
                  "l1": [("low", "file"), ("f", "file", b"lower data"), ("wo/in", "file"), ("e", "file")]}
_MUTATION_OPS = [O("unlink", path=b"low"), O("mkdir", path=b"wo"), O("chmod", path=b"f", mode=0o600),
                 O("rmdir", path=b"f"), O("removexattr", path=b"e", name=b"user.none")]


@pytest.mark.parametrize("name", sorted(write_ops.MUTATORS))
def test_harness_catches_a_wrong_applier(tmp_path, name):
    layout = write_ops.make_layout(tmp_path, _MUTATION_SPEC)
    report = write_ops.run_case(tmp_path, layout, _MUTATION_OPS, both_kernel=True, mutate=write_ops.MUTATORS[name])
    assert report.b.mutations > 0
    assert report.diffs, "the harness missed mutation %r" % name
    if name != "errno":  # the upper-layer compare sees it, not only the views
        assert any(d.startswith("upper [") for d in report.diffs), report.format()


def test_harness_catches_wrong_appliers_on_random_sequences(tmp_path):
    """On random sequences, every effective mutation is reported."""
    effective = collections.Counter()
    for seed in range(6):
        for name, mutate in sorted(write_ops.MUTATORS.items()):
            if name == "errno":
                continue  # covered above; needs no random stack
            report = write_ops.run_random(tmp_path / ("%s-%d" % (name, seed)), seed, ops=write_ops.ALL_OPS,
                                          both_kernel=True, mutate=mutate)
            if report.b.mutations:
                effective[name] += 1
                assert report.diffs, "mutation %r of seed %d not caught" % (name, seed)
                assert any(d.startswith("upper [") for d in report.diffs), report.format()
    assert effective["drop_new_whiteouts"] and effective["copyup_mtime"]


def test_harness_reports_a_hanging_or_crashing_stack(tmp_path):
    """The Stack side runs in a forked child: a hang or crash fails one case, naming the operation."""

    class Hangs:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def unlink(self, p):
            import time
            time.sleep(3600)

        def rmdir(self, p):
            os.kill(os.getpid(), signal.SIGKILL)  # a crash (without faulthandler noise)

    layout = write_ops.make_layout(tmp_path, {"l1": [("a", "file")]})
    res = write_ops.apply_stack(Hangs, layout.lowers, layout.upper, layout.work, [O("unlink", path=b"a")], timeout=1)
    assert res["error"].startswith("TIMEOUT") and "unlink" in res["error"]
    res = write_ops.apply_stack(Hangs, layout.lowers, layout.upper, layout.work, [O("rmdir", path=b"a")], timeout=10)
    assert "signal" in res["error"] and "rmdir" in res["error"]


def test_trailing_slash_through_a_symlink_wants_a_directory(tmp_path):
    """A trailing slash makes the walk follow a final symlink and want a
    directory: ENOTDIR where the target is a file, for every call."""
    spec = {"l1": [("f", "file"), ("l", "symlink", "f"), ("d", "dir"), ("ld", "symlink", "d")]}
    up = check(tmp_path, spec,
               [O("os_open", path=b"l/", flags=["O_RDWR", "O_APPEND"]), O("os_open", path=b"f/", flags=["O_WRONLY"]),
                O("link", src=b"l/", dst=b"x"), O("unlink", path=b"l/"), O("rmdir", path=b"ld/"),
                O("os_open", path=b"ld/", flags=["O_RDONLY", "O_DIRECTORY"])],
               ["ENOTDIR", "ENOTDIR", "ENOTDIR", "ENOTDIR", "ENOTDIR", "ok"])
    assert set(up) == {""}  # nothing copied up


def test_move_of_a_lower_tree_keeps_its_hard_links(tmp_path):
    """EXDEV, then copy and delete (mv): two names of one file inside the
    moved tree stay one file, as mv keeps them through a mount."""
    def rule(up):
        assert up["e/a"]["nlink"] == 2 and up["e/b"]["nlink"] == 2
        assert up["d"]["type"] == "whiteout"

    check(tmp_path, {"l1": [("d/a", "file"), ("d/b", "link", "d/a"), ("d/s/c", "file")]},
          [O("move", src=b"d", dst=b"e")], ["ok"], rule)


def test_errno_order_with_trailing_slashes(tmp_path):
    """Found by a long random sweep: a new name with a trailing slash is
    ENOENT for mknod (EISDIR only for open's O_CREAT), a non-directory
    renamed to "dir/" is ENOTDIR before any ancestor check, and a trailing
    slash follows a final symlink even with O_NOFOLLOW."""
    spec = {"l1": [("d/f", "file"), ("d/dangling", "symlink", "nowhere")]}
    up = check(tmp_path, spec,
               [O("mknod", path=b"d/new/", mode=0o100640, device=0), O("mknod", path=b"d/wh/", mode=0o20600, device=0),
                O("rename", src=b"d/f", dst=b"d/"), O("os_open", path=b"d/dangling/", flags=["O_WRONLY", "O_NOFOLLOW"])],
               ["ENOENT", "ENOENT", "ENOTDIR", "ENOENT"])
    assert set(up) == {""}


def test_upper_dir_over_a_lower_whiteout_moved_into_a_merged_parent_is_marked_opaque(tmp_path):
    """Its lookup stops at the whiteout below, but only its own opaque mark
    counts (ovl_dentry_is_opaque): the kernel marks it before the rename."""
    def rule(up):
        assert up["y"]["type"] == "dir" and xattrs(up["y"]).get(OPAQUE) == "79"  # "y"

    check(tmp_path, {"upper": [("x/in", "file")], "l1": [("x", "whiteout"), ("m", "file")]},
          [O("rename", src=b"x", dst=b"y")], ["ok"], rule)


def test_a_change_through_one_hard_link_shows_through_the_other(tmp_path):
    """The live Stack's view of every name of a hard-linked upper file
    follows a change made through any of them (owner, link count)."""
    check(tmp_path, {"l1": [("file", "file"), ("d", "dir")]},
          [O("link", src=b"file", dst=b"d/h"), O("chown", path=b"d/h", uid=65534, gid=65534),
           O("link", src=b"d/h", dst=b"d/h2"), O("unlink", path=b"d/h"), O("chmod", path=b"d/h2", mode=0o600)],
          ["ok"] * 5)


def test_move_copies_the_xattrs_of_symlinks(tmp_path):
    """mv copies every xattr it can list, a symlink's trusted.* ones too
    (an escaped private name is stored escaped again)."""
    def rule(up):
        assert xattrs(up["e/s"]).get("trusted.overlay.overlay.esc") == b"v".hex()
        assert xattrs(up["e/s"]).get("trusted.t") == b"w".hex()

    check(tmp_path, {"l1": [("d/s", "symlink", "t"), ("d/s", "xattr", "X.overlay.esc", "v"),
                            ("d/s", "xattr", "trusted.t", "w")]},
          [O("move", src=b"d", dst=b"e")], ["ok"], rule)
