"""Stack.copy_up against the kernel's own copy-up, and its crash, race and reflink behaviour.

* **Kernel parity.**  The same layers are built twice (``copyup_helpers.
  build_parity_layers``: odd modes, owners, times, set-id bits, file
  capabilities, xattrs of both namespaces, escaped and private overlay xattrs,
  sparse/empty files, symlinks, fifos, devices, hard links, odd names).  In
  one build the kernel copies the paths up through a real overlay mount (in a
  private mount namespace: ``open(O_WRONLY|O_APPEND)`` for files, ``chmod`` to
  the same mode for dirs, fifos and devices, ``lchown`` to the same owner for
  symlinks -- each copies up and changes nothing else); in the other
  ``Stack.copy_up`` does.  The two upper dirs are dumped without disturbing
  them (``dumps.dump_tree``) and every difference is sorted into a class
  (``dumps.compare_dumps`` under ``dumps.copy_up_rules``, classes in
  ``dumps.DIFF_CLASSES``): names, types, modes, owners, sizes, content,
  link counts, symlink targets, devices, mtimes and atimes of everything
  (dirs too), xattrs; the kernel's ``origin``/``impure``/``uuid`` xattrs are
  ignored (the Stack does not write them yet) and no private xattr may be
  on ours; our copy may not take more blocks than the kernel's or the
  lower file's; hard links are broken.  Every difference fails the parity
  test, and a self-test makes sure wrong copies are reported.
  Both xattr namespaces run (``user`` with the ``userxattr`` mount option).
* **Views.**  After copy-up the Stack's view equals the kernel's view of the
  resulting layers (``kernel.kernel_view``/``stack_view``), and equals the
  Stack's view before the copy (copy-up is invisible but for inodes, link
  counts and blocks).
* **Crash safety.**  A child copying up a chain of symlinks, fifos and dirs
  (named temps) and a 256 MiB file (O_TMPFILE) is SIGKILLed at random
  moments, 20 times: the upper holds nothing or complete copies, the lower is
  intact, and a new Stack on the work dir removes the dead child's temps.
* **Races.**  8 threads on one Stack and 4 processes with their own Stacks
  copy the same files at once: one complete copy each, no temps left.
* **Reflink.**  XFS (``reflink=1``) and btrfs loop images: copy-up clones
  (``copy_up(p).method == "clone"``, shared extents per ``filefrag -v``); the
  times for 16 MiB and 1 GiB are printed.

Needs root; the kernel and loop-device tests skip without them (and fail
under ``OVERLAYFS_REQUIRE_KERNEL=1``).
"""

from __future__ import annotations

import collections
import errno
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import copyup_helpers as H
import dumps
import kernel
import pytest

import overlayfs

MiB = H.MiB
skip_or_fail = kernel.skip_or_fail

def require_kernel():
    kernel.skip_unless_mountable()


def lower_dump_diffs(before, after):
    """(class, message) for every change in a lower layer between two dumps."""
    out = []
    for path in sorted(set(before) | set(after)):
        b, a = before.get(path), after.get(path)
        if b is None or a is None:
            out.append(("lower-names", "%r %s" % (path, "appeared" if b is None else "vanished")))
            continue
        for key in sorted(set(b) | set(a)):
            if b.get(key) != a.get(key):
                cls = "lower-atime" if key == "atime" else "lower-" + key
                out.append((cls, "%r: %s %r -> %r" % (path, key, dumps.short(b.get(key)), dumps.short(a.get(key)))))
    return out


# ---------------------------------------------------------------------------
# Kernel parity of the copies
# ---------------------------------------------------------------------------


class Parity:
    """Two identical builds: one copied up by the kernel, one by Stack.copy_up."""

    def __init__(self, root, ns):
        self.ns = ns
        self.k = H.build_parity_layers(os.path.join(root, "k"), ns)
        self.s = H.build_parity_layers(os.path.join(root, "s"), ns)
        self.k_lowers_before = [dumps.dump_tree(lw) for lw in self.k["lowers"]]
        self.s_lowers_before = [dumps.dump_tree(lw) for lw in self.s["lowers"]]
        H.kernel_copy_up(self.k["lowers"], self.k["upper"], self.k["work"], self.k["targets"], H.NS_OPTIONS[ns])
        self.returned = {}
        self.methods = {}
        with overlayfs.Stack(self.s["lowers"], self.s["upper"], self.s["work"], xattr_namespace=ns) as st:
            for p in self.s["targets"]:
                self.returned[p], self.methods[p] = st.copy_up(p)
        self.kdump = dumps.dump_tree(self.k["upper"])
        self.sdump = dumps.dump_tree(self.s["upper"])
        self.k_lowers_after = [dumps.dump_tree(lw) for lw in self.k["lowers"]]
        self.s_lowers_after = [dumps.dump_tree(lw) for lw in self.s["lowers"]]
        self.lower_blocks = {}
        for d in reversed(self.s_lowers_before):
            self.lower_blocks.update({p: r["blocks"] for p, r in d.items() if r["type"] == "reg"})
        self.rules = dumps.copy_up_rules(ns, self.lower_blocks)
        self.diffs = dumps.compare_dumps(self.kdump, self.sdump, self.rules)
        self.lower_diffs = [d for b, a in zip(self.s_lowers_before, self.s_lowers_after)
                            for d in lower_dump_diffs(b, a)]


@pytest.fixture(scope="module", params=["trusted", "user"])
def parity(request, tmp_path_factory):
    require_kernel()
    return Parity(tmp_path_factory.mktemp("parity-" + request.param), request.param)


def _fmt(diffs, limit=40):
    lines = ["  [%s] %s" % d for d in diffs[:limit]]
    if len(diffs) > limit:
        lines.append("  ... and %d more" % (len(diffs) - limit))
    return "\n".join(lines)


def test_copies_match_the_kernels(parity):
    assert not parity.diffs, "%d difference(s) between the kernel's and the Stack's copy-up (%s):\n%s" % (
        len(parity.diffs), parity.ns, _fmt(parity.diffs))


def test_the_harness_really_copied_everything(parity):
    """Guard against a vacuous pass: every target and its ancestors are in both uppers,
    the kernel wrote its origin xattrs (so it really copied up), and nothing else is there."""
    origin = parity.ns + ".overlay.origin"
    expected = {""}
    for p in parity.k["targets"]:
        parts = os.fsdecode(p).split("/")
        expected.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    expected.add("m/already_up")
    assert set(parity.kdump) == expected
    assert set(parity.sdump) == expected
    for p in map(os.fsdecode, parity.k["targets"]):
        low = parity.k_lowers_before[0].get(p) or parity.k_lowers_before[1][p]
        if parity.ns == "user" and low["type"] not in ("reg", "dir"):
            continue  # user.* xattrs cannot be set on symlinks, fifos, devices
        if low["nlink"] == 1 or low["type"] == "dir":
            assert origin in parity.kdump[p].get("xattrs", {}), p
    # Our copies: the path Stack.copy_up returned is the upper host path.
    for p, host in parity.returned.items():
        assert os.fsencode(host) == os.path.join(parity.s["upper"], p)


def test_kernel_copy_up_leaves_the_lowers_alone(parity):
    """The harness's premise: the kernel changes nothing in the lowers (not even atimes)."""
    for b, a in zip(parity.k_lowers_before, parity.k_lowers_after):
        assert lower_dump_diffs(b, a) == []


def test_copy_up_leaves_the_lowers_intact(parity):
    """Names, types, modes, owners, sizes, data, mtimes, xattrs, link counts of the lowers."""
    changed = [d for d in parity.lower_diffs if d[0] != "lower-atime"]
    assert not changed, _fmt(changed)


def test_copy_up_leaves_lower_atimes_alone(parity):
    """Lower layers are read through read-only noatime clones of their
    mounts, as the kernel reads them: not even a symlink's atime changes."""
    changed = [d for d in parity.lower_diffs if d[0] == "lower-atime"]
    assert not changed, _fmt(changed, 10)


def test_sparse_files_stay_sparse(parity):
    up, k = parity.sdump, parity.kdump
    # 64 MiB holding 3.5 MiB of data: exactly that much is allocated (the
    # kernel copies in 1 MiB chunks and may allocate a little more).
    assert up["data/sparse"]["size"] == 64 * MiB
    assert up["data/sparse"]["blocks"] * 512 <= 3.5 * MiB + 256 * 1024
    assert up["data/sparse"]["blocks"] <= k["data/sparse"]["blocks"]
    assert up["data/tail_hole"]["blocks"] * 512 <= 64 * 1024
    assert up["data/all_hole"]["blocks"] == 0
    assert up["data/empty"]["size"] == 0


def test_hard_links_are_broken(parity):
    up = parity.sdump
    low = parity.s_lowers_after[0]
    assert up["hl/h1"]["nlink"] == 1 and low["hl/h1"]["nlink"] == 2
    assert up["hl/t1"]["nlink"] == up["hl/t2"]["nlink"] == 1
    assert up["hl/t1"]["ino"] != up["hl/t2"]["ino"]
    assert low["hl/t3"]["nlink"] == 3
    with overlayfs.Stack(parity.s["lowers"], parity.s["upper"], parity.s["work"],
                         xattr_namespace=parity.ns) as st:
        assert st.layer_of("hl/h1") == 0 and st.layer_of("hl/h2") == 1
        assert st.lstat("hl/h2").st_nlink == 2
        assert st.lstat("hl/h1").st_ino != st.lstat("hl/h2").st_ino


def test_set_id_bits_and_private_xattrs(parity):
    up = parity.sdump
    assert up["a/suid"]["mode"] == "4755"
    assert up["a/suid_other"]["mode"] == "4711" and up["a/suid_other"]["uid"] == 1234
    assert up["a/sgid"]["mode"] == "2750" and up["a/sgid"]["gid"] == 2000
    assert up["a/sugid_sticky"]["mode"] == "7755"
    assert up["a"]["mode"] == "2751" and up["a/b/c"]["mode"] == "1777" and up["a/b/c/d"]["mode"] == "0000"
    ns, other = parity.ns, "user" if parity.ns == "trusted" else "trusted"
    x = {n: bytes.fromhex(v) for n, v in up["x/escaped"]["xattrs"].items()}
    assert x[ns + ".overlay.overlay.esc"] == b"verbatim"
    assert x[ns + ".overlay.overlay.overlay.twice"] == b"twice"
    assert x[other + ".overlay.origin"] == b"not ours"
    assert ns + ".overlay.origin" not in x and ns + ".overlay.unknown_private" not in x
    assert x["trusted.empty"] == b"" and x["user.empty"] == b"" and len(x["user.big"]) == 3000
    assert ns + ".overlay.opaque" not in up["a/b/c/d"].get("xattrs", {})
    assert ns + ".overlay.impure" not in up["a"]["xattrs"]
    assert up["a"]["xattrs"][ns + ".overlay.overlay.esc"] == b"escaped-dir".hex()


def _keep_times(path):
    """A function that puts *path*'s atime and mtime back (after a deliberate change)."""
    st = os.lstat(path)
    return lambda: os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _corrupt_copies(upper, ns):
    """Deliberately wrong copy-ups: change one thing each in a Stack's upper *upper*.
    Returns the ``(class, path)`` each must be reported as."""
    j = os.path.join
    up = os.fsencode(upper)
    restore_root, restore_hl, restore_links = _keep_times(up), _keep_times(j(up, b"hl")), \
        _keep_times(j(up, b"links"))
    st = os.lstat(j(up, b"a/suid"))
    os.utime(j(up, b"a/suid"), ns=(st.st_atime_ns, st.st_mtime_ns + 1))       # a changed mtime
    st = os.lstat(j(up, b"a/b"))
    os.utime(j(up, b"a/b"), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))       # ... of a directory
    st = os.lstat(j(up, b"data/dense"))
    os.utime(j(up, b"data/dense"), ns=(st.st_atime_ns - 1, st.st_mtime_ns))    # a changed atime
    os.removexattr(j(up, b"a/b/c/d/deep"), "user.deep")                         # a dropped xattr
    os.removexattr(j(up, b"a/cap"), "security.capability")                      # a dropped capability
    os.setxattr(j(up, b"x/escaped"), ns + ".overlay.origin", b"")               # a private xattr written
    os.chmod(j(up, b"a/sgid"), 0o750)                                           # a lost set-gid bit
    os.chown(j(up, b"links/abs"), 1, 0, follow_symlinks=False)                  # a wrong owner
    restore = _keep_times(j(up, b"data/sparse"))                                # a filled hole (same data)
    fd = os.open(j(up, b"data/sparse"), os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(8 * MiB), 8 * MiB)
        os.fsync(fd)
    finally:
        os.close(fd)
    restore()
    restore = _keep_times(j(up, b"x/escaped"))                                  # other data, same size
    with open(j(up, b"x/escaped"), "r+b") as f:
        f.write(b"ESC")
    restore()
    os.unlink(j(up, b"hl/t2"))                                                  # a hard link kept
    os.link(j(up, b"hl/t1"), j(up, b"hl/t2"))
    restore_hl()
    restore = _keep_times(j(up, b"links/dangling"))                             # another symlink target
    os.unlink(j(up, b"links/dangling"))
    os.symlink(b"does/not/exisT", j(up, b"links/dangling"))
    restore()
    restore_links()
    os.close(os.open(j(up, b"extra"), os.O_WRONLY | os.O_CREAT, 0o644))         # a name too many
    restore_root()
    return [("mtime", "a/suid"), ("mtime", "a/b"), ("atime", "data/dense"), ("xattr", "a/b/c/d/deep"),
            ("capability", "a/cap"), ("private-xattr", "x/escaped"), ("mode", "a/sgid"), ("owner", "links/abs"),
            ("sparse", "data/sparse"), ("data", "x/escaped"), ("shared-inode", "hl/t1"), ("nlink", "hl/t2"),
            ("links", "hl/t1"), ("target", "links/dangling"), ("names", "extra")]


def test_the_parity_compare_catches_wrong_copies(parity, tmp_path):
    """Harness self-test: a third build, copied up by the Stack, compares with the
    kernel's copy like the parity build; then every deliberate corruption of a copy
    (a changed mtime or atime, a dropped xattr or capability, a private xattr, a
    filled hole, other data, a kept hard link...) is reported in its class."""
    b = H.build_parity_layers(os.path.join(tmp_path, "m"), parity.ns)
    with overlayfs.Stack(b["lowers"], b["upper"], b["work"], xattr_namespace=parity.ns) as st:
        for p in b["targets"]:
            st.copy_up(p)
    baseline = dumps.compare_dumps(parity.kdump, dumps.dump_tree(b["upper"]), parity.rules)
    assert sorted(c for c, _ in baseline) == sorted(c for c, _ in parity.diffs), _fmt(baseline)
    expected = _corrupt_copies(b["upper"], parity.ns)
    got = [d for d in dumps.compare_dumps(parity.kdump, dumps.dump_tree(b["upper"]), parity.rules)
           if d not in baseline]
    missed = [(cls, path) for cls, path in expected
              if not any(c == cls and m.startswith(repr(path)) for c, m in got)]
    assert not missed, "mutations not reported: %r\ngot:\n%s" % (missed, _fmt(got))
    # The hole filled with zeros is reported as allocation only (content, size and times kept).
    assert [c for c, m in got if m.startswith(repr("data/sparse"))] == ["sparse"], _fmt(got)


def test_copy_up_method(parity):
    for p, method in parity.methods.items():
        rec = parity.s_lowers_before[0].get(os.fsdecode(p)) or parity.s_lowers_before[1].get(os.fsdecode(p))
        if rec["type"] == "reg" and rec["size"] > 0:
            assert method in ("clone", "copy_file_range", "sendfile", "read_write"), (p, method)
        else:
            assert method == "none", (p, method)
    with overlayfs.Stack(parity.s["lowers"], parity.s["upper"], parity.s["work"],
                         xattr_namespace=parity.ns) as st:
        before = os.lstat(os.path.join(parity.s["upper"], b"data/dense")).st_mtime_ns
        res = st.copy_up("data/dense")
        assert type(res) is overlayfs.CopyUp
        assert os.fsencode(res.path) == os.path.join(parity.s["upper"], b"data/dense")
        assert res.method == "none"  # already up: nothing happens
        assert os.lstat(os.path.join(parity.s["upper"], b"data/dense")).st_mtime_ns == before


# -- the known bugs, each in a minimal reproduction ---------------------------


@pytest.fixture
def mini(tmp_path):
    """l1 / upper / work under tmp_path, with helpers."""
    class Mini:
        root = os.fsencode(tmp_path)
        l1 = os.path.join(root, b"l1")
        upper = os.path.join(root, b"upper")
        work = os.path.join(root, b"work")

        def stack(self, **kw):
            return overlayfs.Stack([self.l1], self.upper, self.work, **kw)

    m = Mini()
    for d in (m.l1, m.upper, m.work):
        os.mkdir(d)
    return m


def test_file_capabilities_survive(mini):
    H.write_file(os.path.join(mini.l1, b"ping"), b"x", 0o755, 0, 0, {"security.capability": H.CAP_NET_RAW_V2})
    with mini.stack() as st:
        up = st.copy_up("ping").path
    assert os.getxattr(up, "security.capability") == H.CAP_NET_RAW_V2


def test_xattrs_of_symlinks_fifos_devices_are_copied(mini):
    """(Was a bug until copy_special() copied xattrs with the *xattrat calls.)"""
    H.symlink(os.path.join(mini.l1, b"s"), b"t", xattrs={"trusted.k": b"s"})
    H.mknod(os.path.join(mini.l1, b"f"), stat.S_IFIFO, 0o644, xattrs={"trusted.k": b"f"})
    H.mknod(os.path.join(mini.l1, b"c"), stat.S_IFCHR, 0o644, os.makedev(1, 3), xattrs={"trusted.k": b"c"})
    with mini.stack() as st:
        got = {n: os.getxattr(st.copy_up(n).path, "trusted.k", follow_symlinks=False) for n in ("s", "f", "c")}
    assert got == {"s": b"s", "f": b"f", "c": b"c"}


def test_copied_dir_keeps_the_lower_atime(mini):
    H.write_file(os.path.join(mini.l1, b"d/f"), b"x")
    H.lutime(os.path.join(mini.l1, b"d"), 10**18, 2 * 10**18)  # atime < mtime: relatime updates it on read
    with mini.stack() as st:
        st.copy_up("d/f")
    assert os.lstat(os.path.join(mini.l1, b"d")).st_atime_ns == 10**18
    assert os.lstat(os.path.join(mini.upper, b"d")).st_atime_ns == 10**18


def test_upper_parent_atime_is_restored(mini):
    H.write_file(os.path.join(mini.l1, b"m/f"), b"x")
    os.mkdir(os.path.join(mini.upper, b"m"))
    H.lutime(os.path.join(mini.upper, b"m"), 10**18, 2 * 10**18)
    with mini.stack() as st:
        st.copy_up("m/f")
    assert os.lstat(os.path.join(mini.upper, b"m")).st_atime_ns == 10**18


def test_copied_symlink_keeps_the_lower_atime(mini):
    os.symlink(b"target", os.path.join(mini.l1, b"s"))
    H.lutime(os.path.join(mini.l1, b"s"), 10**18, 2 * 10**18)
    with mini.stack() as st:
        st.copy_up("s")
    assert os.lstat(os.path.join(mini.upper, b"s")).st_atime_ns == 10**18


def test_copy_up_does_not_touch_the_lower_files_atime(mini):
    """The data is read with O_NOATIME, as the kernel does (fixed in ed85f2f)."""
    H.write_file(os.path.join(mini.l1, b"f"), b"data")
    H.lutime(os.path.join(mini.l1, b"f"), 10**18, 2 * 10**18)
    with mini.stack() as st:
        st.copy_up("f")
    assert os.lstat(os.path.join(mini.upper, b"f")).st_atime_ns == 10**18  # holds: stat before the read
    assert os.lstat(os.path.join(mini.l1, b"f")).st_atime_ns == 10**18


# -- smaller contracts ---------------------------------------------------------


def test_copy_up_errors_and_no_ops(mini):
    H.write_file(os.path.join(mini.l1, b"f"), b"x")
    with overlayfs.Stack([mini.l1, mini.upper]) as ro:
        with pytest.raises(OSError) as e:
            ro.copy_up("f")
        assert e.value.errno == errno.EROFS
    with mini.stack() as st:
        with pytest.raises(FileNotFoundError):
            st.copy_up("missing")
        with pytest.raises(FileNotFoundError):
            st.copy_up("missing/f")
        with pytest.raises(NotADirectoryError):
            st.copy_up("f/x")
        assert st.copy_up("") == (os.fsdecode(mini.upper), "none")  # the root is always up
        assert os.listdir(mini.upper) == []
        first, again = st.copy_up("f"), st.copy_up(b"f")
        assert isinstance(first.path, str) and isinstance(again.path, bytes)
        assert first.method != "none" and again.method == "none"
        assert first.path == first[0] and first.method == first[1]


def test_follow_symlinks_copies_the_target(mini):
    H.write_file(os.path.join(mini.l1, b"dir/target"), b"t")
    os.symlink(b"dir/target", os.path.join(mini.l1, b"lnk"))
    with mini.stack() as st:
        host = st.copy_up("lnk", follow_symlinks=True).path
        assert os.fsencode(host) == os.path.join(mini.upper, b"dir/target")
        assert st.layer_of("dir/target") == 0 and st.layer_of("lnk") == 1
        st.copy_up("lnk")
        assert st.layer_of("lnk") == 0 and os.readlink(os.path.join(mini.upper, b"lnk")) == b"dir/target"


def test_a_dir_is_copied_alone(mini):
    H.mkdir(os.path.join(mini.l1, b"d"), 0o750, 3, 4, {"user.d": b"1"})
    H.write_file(os.path.join(mini.l1, b"d/f"), b"x")
    os.mkdir(os.path.join(mini.l1, b"d/sub"))
    with mini.stack() as st:
        st.copy_up("d")
        assert os.listdir(os.path.join(mini.upper, b"d")) == []
        assert st.layer_of("d") == 0 and st.layer_of("d/f") == 1 and st.layer_of("d/sub") == 1
        assert sorted(st.listdir("d")) == ["f", "sub"]


def _strace_calls(tmp, code, args):
    out = os.path.join(tmp, b"strace.out")
    res = subprocess.run([b"strace", b"-f", b"-qq", b"-o", out, b"-e",
                          b"trace=fsync,fdatasync,openat,linkat,renameat2,mkdirat,ioctl,copy_file_range",
                          os.fsencode(sys.executable), b"-c", code.encode()] + list(args), capture_output=True)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    with open(out, "rb") as f:
        return f.read().decode(errors="replace")


@pytest.mark.parametrize("volatile", [False, True])
def test_tmpfile_link_and_fsync_unless_volatile(mini, volatile):
    """Regular files are built as O_TMPFILE in <work>/work and linked in; fsync
    unless volatile.  Dirs are made under a temp name and renamed (no-replace)."""
    if shutil.which("strace") is None:
        skip_or_fail("strace is not installed (.ci/run installs it)")
    H.write_file(os.path.join(mini.l1, b"d/f"), b"y" * 100000)
    code = ("import sys, overlayfs\n"
            "st = overlayfs.Stack([sys.argv[1]], sys.argv[2], sys.argv[3], volatile=%r)\n"
            "print('MARK', flush=True)\n"
            "st.copy_up('d/f')\n" % volatile)
    calls = _strace_calls(mini.root, code, [mini.l1, mini.upper, mini.work]).splitlines()

    def lines(*words):
        return [c for c in calls if all(w in c for w in words)]

    assert lines("openat(", "O_TMPFILE"), calls
    assert lines("linkat(", "AT_EMPTY_PATH") or lines("linkat(", "/proc/self/fd"), calls
    assert lines("mkdirat(", '"#ovl.'), calls  # the dir d, under a temp name...
    assert lines("renameat2(", '"#ovl.', '"d"', "RENAME_NOREPLACE"), calls  # ...moved into place
    fsyncs = lines("fsync(") + lines("fdatasync(")
    if volatile:
        assert fsyncs == [], calls
    else:
        assert fsyncs, calls


def test_work_dir_leftovers_of_dead_processes_are_removed(mini):
    wdir = os.path.join(mini.work, b"work")
    os.makedirs(wdir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        names = {
            b"#ovl.%d.1" % dead.pid: "file",
            b"#ovl.%d.2" % dead.pid: "dir",
            b"#ovl.%d.3" % dead.pid: "symlink",
            b"#ovl.%d.4" % dead.pid: "fifo",
            b"#ovl.%d.5" % live.pid: "file",
            b"#ovl.%d.6" % os.getpid(): "file",
            b"#ovl.garbage": "file",
            b"unrelated": "file",
        }
        for name, kind in names.items():
            p = os.path.join(wdir, name)
            if kind == "file":
                os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0))
            elif kind == "dir":
                os.mkdir(p, 0)
            elif kind == "symlink":
                os.symlink(b"x", p)
            else:
                os.mkfifo(p, 0)
        with mini.stack():
            pass
        left = set(os.listdir(wdir))
        assert left == {b"#ovl.%d.5" % live.pid, b"#ovl.%d.6" % os.getpid(), b"#ovl.garbage", b"unrelated"}
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["trusted", "user"])
def views(request, tmp_path_factory):
    require_kernel()
    ns = request.param
    b = H.build_parity_layers(os.path.join(tmp_path_factory.mktemp("views-" + ns), "v"), ns)
    opts = dict(xattr_namespace=ns)
    with overlayfs.Stack(b["lowers"], b["upper"], b["work"], **opts) as st:
        before = kernel.stack_view(st)
        for p in b["targets"]:
            st.copy_up(p)
        same_stack = kernel.stack_view(st)
    with overlayfs.Stack(b["lowers"], b["upper"], b["work"], **opts) as st:
        after = kernel.stack_view(st)
    # The kernel writes origin/impure xattrs into the upper while it looks
    # around; view the Stack again on that same state.
    kview = kernel.kernel_view(b["lowers"], b["upper"], b["work"], options=H.NS_OPTIONS[ns])
    with overlayfs.Stack(b["lowers"], b["upper"], b["work"], **opts) as st:
        after_kernel = kernel.stack_view(st)
    return {"before": before, "same_stack": same_stack, "after": after, "kernel": kview,
            "after_kernel": after_kernel, "ns": ns}


def test_view_after_copy_up_matches_the_kernel(views):
    kernel.assert_views_equal(views["kernel"], views["after_kernel"], context="after copy-up, " + views["ns"])


def test_view_after_copy_up_is_the_same_from_the_copying_stack(views):
    kernel.assert_views_equal(views["after"], views["same_stack"], context="copying Stack vs a new one")


def test_copy_up_does_not_change_the_view(views):
    """Only inodes, link counts (broken hard links), blocks and dir sizes may change."""
    kernel.assert_views_equal(views["before"], views["after"],
                              ignore={"ino", "nlink", "blocks", "dir_size", "dir_blocks"},
                              context="Stack view before vs after copy-up")


# ---------------------------------------------------------------------------
# Crash safety
# ---------------------------------------------------------------------------

CRASH_CHILD = r"""
import os, sys, overlayfs
lower, upper, work, n = sys.argv[1:5]
st = overlayfs.Stack([lower], upper, work)
os.write(1, b"R")
for i in range(int(n)):
    st.copy_up("chain/s%04d" % i)
    st.copy_up("chain/f%04d" % i)
    st.copy_up("chain/d%04d" % i)
st.copy_up("chain/d1/d2/d3/big")
os.write(1, b"D")
"""

CRASH_ROUNDS = 20
CRASH_SPECIALS = 150
CRASH_BIG = 256 * MiB


def _run_crash_child(lower, upper, work, kill_after):
    """Run the copying child; SIGKILL it *kill_after* s after it is ready (None: let it finish).
    Returns (pid, finished, seconds from ready to exit or kill)."""
    proc = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, lower, upper, work, str(CRASH_SPECIALS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = proc.stdout.read(1)
        assert ready == b"R", proc.stderr.read().decode(errors="replace")
        t0 = time.perf_counter()
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        elapsed = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    finished = out.endswith(b"D")
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0 and finished, err.decode(errors="replace")
    return proc.pid, finished, elapsed


def _check_partial_upper(lower_dump, upper, label):
    """Everything in the upper is a complete copy of its lower (atime aside: a known bug)."""
    up = dumps.dump_tree(upper)
    for path, rec in up.items():
        if path == "":
            continue
        low = lower_dump.get(path)
        assert low is not None, "%s: %r in the upper is not in the lower" % (label, path)
        # A dir's mtime (restored after each child is added) and size may
        # differ after a crash, as with the kernel.  (A dir's names: every
        # path of the upper is checked to be in the lower.)
        keys = ("type", "mode", "uid", "gid", "xattrs") if rec["type"] == "dir" else \
            ("type", "mode", "uid", "gid", "size", "mtime", "xattrs", "target", "sha256", "rdev")
        for key in keys:
            assert rec.get(key) == low.get(key), "%s: %r: %s upper %r lower %r" % (
                label, path, key, dumps.short(rec.get(key)), dumps.short(low.get(key)))
    return up


def test_sigkill_during_copy_up_leaves_no_partial_copy(tmp_path):
    try:
        _sigkill_rounds(os.fsencode(tmp_path))
    finally:  # pytest keeps the last few tmp dirs: drop the 2 x 256 MiB
        shutil.rmtree(tmp_path, ignore_errors=True)


def _sigkill_rounds(root):
    lower, upper, work = (os.path.join(root, n) for n in (b"lower", b"upper", b"work"))
    for d in (lower, upper, work):
        os.mkdir(d)
    H.write_sparse(os.path.join(lower, b"chain/d1/d2/d3/big"), CRASH_BIG, [(0, CRASH_BIG)], 0o640)
    os.setxattr(os.path.join(lower, b"chain/d1/d2/d3/big"), "user.big", b"B")
    for i in range(CRASH_SPECIALS):
        os.symlink(b"t%d" % i, os.path.join(lower, b"chain/s%04d" % i))
        os.mkfifo(os.path.join(lower, b"chain/f%04d" % i), 0o604)
        os.setxattr(os.path.join(lower, b"chain/f%04d" % i), "trusted.f", b"%d" % i)
        H.mkdir(os.path.join(lower, b"chain/d%04d" % i), 0o705, i, i, {"user.d": b"%d" % i})
    H.fix_times(lower)
    lower_dump = dumps.dump_tree(lower)
    big_sha = lower_dump["chain/d1/d2/d3/big"]["sha256"]
    st_big = os.lstat(os.path.join(lower, b"chain/d1/d2/d3/big"))
    big_stat = (st_big.st_size, st_big.st_mtime_ns, st_big.st_ctime_ns)
    wdir = os.path.join(work, b"work")

    # One undisturbed run to learn how long a whole copy takes.
    _, finished, total = _run_crash_child(lower, upper, work, None)
    assert finished
    _check_partial_upper(lower_dump, upper, "full run")
    shutil.rmtree(os.path.join(upper, b"chain"))

    rnd = random.Random(20260)
    stats = {"killed": 0, "big_complete": 0, "named_temps_seen": 0, "entries_seen": 0}
    window = total
    for rnd_i in range(CRASH_ROUNDS):
        pid, finished, _ = _run_crash_child(lower, upper, work, rnd.uniform(0, window))
        stats["killed"] += not finished
        st_big = os.lstat(os.path.join(lower, b"chain/d1/d2/d3/big"))
        assert (st_big.st_size, st_big.st_mtime_ns, st_big.st_ctime_ns) == big_stat  # the lower is untouched
        assert len(os.listdir(os.path.join(lower, b"chain"))) == 3 * CRASH_SPECIALS + 1
        if finished:
            window *= 0.7  # the first run was slow (cold caches, writeback): aim earlier
        label = "round %d (pid %d)" % (rnd_i, pid)
        up = _check_partial_upper(lower_dump, upper, label)
        stats["entries_seen"] += len(up) - 1
        stats["big_complete"] += "chain/d1/d2/d3/big" in up
        leftovers = [n for n in os.listdir(wdir) if n.startswith(b"#ovl.")]
        assert all(n.startswith(b"#ovl.%d." % pid) for n in leftovers), (label, leftovers)
        stats["named_temps_seen"] += len(leftovers)
        assert len(leftovers) <= 1, (label, leftovers)  # one copy at a time
        with overlayfs.Stack([lower], upper, work):
            pass
        assert os.listdir(wdir) == [], (label, os.listdir(wdir))  # O_TMPFILEs vanish, named temps are removed
        # Sometimes carry on from the crashed state, sometimes start over.
        if rnd_i % 3 != 2:
            shutil.rmtree(os.path.join(upper, b"chain"), ignore_errors=True)
    # A last run completes whatever the crashes left.
    _, finished, _ = _run_crash_child(lower, upper, work, None)
    assert finished
    up = _check_partial_upper(lower_dump, upper, "final run")
    assert set(up) == set(lower_dump)
    assert dumps.sha256(os.path.join(lower, b"chain/d1/d2/d3/big")) == big_sha
    assert os.listdir(wdir) == []
    print("\ncrash rounds: %d, full copy %.2f s; %s" % (CRASH_ROUNDS, total, stats))
    assert stats["killed"] >= CRASH_ROUNDS // 2, stats


# ---------------------------------------------------------------------------
# Races
# ---------------------------------------------------------------------------


def _build_race_layers(root):
    root = os.fsencode(root)
    lower, upper, work = (os.path.join(root, n) for n in (b"lower", b"upper", b"work"))
    for d in (lower, upper, work):
        os.mkdir(d)
    sizes = [0, 1, 4096, 65537, MiB, 8 * MiB]
    paths = []
    for d in range(4):
        H.mkdir(os.path.join(lower, b"c/d%d" % d), 0o751, d, d + 1, {"user.dir": b"%d" % d})
        for f in range(10):
            p = b"c/d%d/sub/f%d" % (d, f)
            size = sizes[(d + f) % len(sizes)]
            H.write_sparse(os.path.join(lower, p), size, [(0, size)] if size else [], 0o640 + f)
            os.setxattr(os.path.join(lower, p), "user.f", p)
            paths.append(p)
        H.write_sparse(os.path.join(lower, b"c/d%d/sparse" % d), 32 * MiB, [(16 * MiB, MiB)])
        os.symlink(b"sub/f0", os.path.join(lower, b"c/d%d/lnk" % d))
        os.mkfifo(os.path.join(lower, b"c/d%d/fifo" % d))
        os.mkdir(os.path.join(lower, b"c/d%d/emptydir" % d))
        paths += [b"c/d%d/sparse" % d, b"c/d%d/lnk" % d, b"c/d%d/fifo" % d, b"c/d%d/emptydir" % d]
    H.fix_times(lower)
    return lower, upper, work, paths


def _check_race_result(lower, upper, work, paths, dir_mtimes=True):
    lower_dump = dumps.dump_tree(lower)
    up = dumps.dump_tree(upper)
    for p in paths:
        assert os.fsdecode(p) in up, p
    for path, rec in up.items():
        if path == "":
            continue
        low = lower_dump[path]
        keys = ("type", "mode", "uid", "gid", "xattrs") + (("mtime",) if dir_mtimes else ()) \
            if rec["type"] == "dir" else \
            ("type", "mode", "uid", "gid", "size", "mtime", "xattrs", "target", "sha256")
        for key in keys:
            assert rec.get(key) == low.get(key), (path, key, dumps.short(rec.get(key)), dumps.short(low.get(key)))
        if rec["type"] == "reg":
            assert rec["nlink"] == 1, path
            if path.endswith("sparse"):
                assert rec["blocks"] * 512 <= 2 * MiB, path
    assert os.listdir(os.path.join(work, b"work")) == []


def test_threads_copying_the_same_files(tmp_path):
    lower, upper, work, paths = _build_race_layers(tmp_path)
    errors = []
    moved = collections.Counter()  # path -> calls that say they moved its data
    barrier = threading.Barrier(8)
    with overlayfs.Stack([lower], upper, work) as st:
        def worker(seed):
            order = paths[:]
            random.Random(seed).shuffle(order)
            try:
                barrier.wait()
                for p in order:
                    host, method = st.copy_up(p)
                    if os.fsencode(host) != os.path.join(upper, p):
                        errors.append((p, host))
                    if method != "none":
                        moved[p] += 1
            except BaseException as e:  # report everything
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert all(st.layer_of(p) == 0 for p in paths)
        # Each call says how it moved the data, whatever the other threads
        # do meanwhile: copy-ups in one Stack take turns, so of the 8 calls
        # for a file with data exactly one moved it and 7 found it up.
        with_data = {p for p in paths if stat.S_ISREG(os.lstat(os.path.join(lower, p)).st_mode)
                     and os.lstat(os.path.join(lower, p)).st_size > 0}
        assert dict(moved) == dict.fromkeys(with_data, 1)
    _check_race_result(lower, upper, work, paths)


RACE_CHILD = r"""
import os, random, sys, overlayfs
lower, upper, work, seed = sys.argv[1:5]
paths = [l.encode("utf-8", "surrogateescape") for l in sys.stdin.buffer.read().decode("utf-8", "surrogateescape").split("\n")[1:] if l]
st = overlayfs.Stack([lower], upper, work)
random.Random(int(seed)).shuffle(paths)
for p in paths:
    st.copy_up(p)
print("OK")
"""


def test_processes_copying_the_same_files(tmp_path):
    lower, upper, work, paths = _build_race_layers(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", RACE_CHILD, lower, upper, work, str(i)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(4)]
    try:
        # Let all children start up, then release them together.
        time.sleep(0.3)
        payload = b"go\n" + b"\n".join(paths) + b"\n"
        for p in procs:
            p.stdin.write(payload)
        for p in procs:
            p.stdin.close()
        outs = [(p.stdout.read(), p.stderr.read()) for p in procs]
        for p in procs:
            p.wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == b"OK", err.decode(errors="replace")
    # Not the parents' mtimes: each copier reads them before its copy and
    # writes them back after its link/rename, and one that reads between
    # another's link and write-back restores a changed mtime.  The kernel
    # does the same (ovl_copy_up_one reads pstat unlocked): 6 processes
    # copying 1,000 files up through one mount left 1-4 of 40 parents with
    # a new mtime.  Within one process the Stack serializes copy-ups
    # (the threads test checks the mtimes).
    _check_race_result(lower, upper, work, paths, dir_mtimes=False)


# ---------------------------------------------------------------------------
# Reflink filesystems
# ---------------------------------------------------------------------------


def _reflink_child(dev, fstype, mnt):
    """In a private mount namespace: mount *dev*, copy up 16 MiB and 1 GiB files."""
    res = subprocess.run(["mount", "-t", fstype, dev, mnt], capture_output=True)
    if res.returncode:
        return {"mount_error": res.stderr.decode(errors="replace").strip()}
    try:
        lower, upper, work = (os.path.join(mnt, n) for n in ("lower", "upper", "work"))
        for d in (lower, upper, work):
            os.mkdir(d)
        out = {"fs": H.fs_magic_name(mnt)}
        for name, size in (("small", 16 * MiB), ("big", 1024 * MiB)):
            H.write_sparse(os.path.join(lower, "d", name), size, [(0, size)], 0o640)
            fd = os.open(os.path.join(lower, "d", name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        res = {}
        with overlayfs.Stack([lower], upper, work) as st:
            st.copy_up("d")  # the parent first, so the timings are the files'
            for name in ("small", "big"):
                t = time.perf_counter()
                method = st.copy_up("d/" + name).method
                elapsed = time.perf_counter() - t
                lo, up = os.path.join(lower, "d", name), os.path.join(upper, "d", name)
                res[name] = {
                    "method": method,
                    "seconds": elapsed,
                    "lower_extents": H.fiemap_extents(lo),
                    "upper_extents": H.fiemap_extents(up),
                    "same_data": dumps.sha256(lo) == dumps.sha256(up),
                    "size": os.stat(up).st_size,
                }
        out["files"] = res
        return out
    finally:
        subprocess.run(["umount", mnt], check=False, capture_output=True)


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_reflink_copy_up_clones(tmp_path, fstype):
    reason = H.LoopFs.unavailable(fstype)
    if reason:
        skip_or_fail(reason)
    mnt = os.path.join(tmp_path, "mnt")
    os.mkdir(mnt)
    loop = H.LoopFs(str(tmp_path), fstype, 3 << 30)
    try:
        loop.__enter__()
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        skip_or_fail("cannot make a %s loop device here: %s %s" % (fstype, e, detail.decode(errors="replace")))
    try:
        out = overlayfs.run_in_private_namespace(_reflink_child, loop.dev, fstype, mnt)
    finally:
        loop.__exit__(None, None, None)
    if "mount_error" in out:
        skip_or_fail("cannot mount the %s loop device: %s" % (fstype, out["mount_error"]))
    files = out["files"]
    print("\n%s reflink copy-up: 16 MiB %.2f ms, 1 GiB %.2f ms" % (
        fstype, files["small"]["seconds"] * 1e3, files["big"]["seconds"] * 1e3))
    for name, r in files.items():
        assert r["method"] == "clone", (name, r["method"])
        assert r["same_data"] and r["size"] == (16 if name == "small" else 1024) * MiB
        lo = {(e[0], e[1], e[2]) for e in r["lower_extents"]}
        up = {(e[0], e[1], e[2]) for e in r["upper_extents"]}
        shared = all("shared" in e[3] for e in r["upper_extents"])
        assert up and (up == lo or shared), (name, r["lower_extents"][:5], r["upper_extents"][:5])
