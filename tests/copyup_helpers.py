"""Helpers for the copy-up tests (tests/test_copy_up.py).

* :func:`build_parity_layers` lays out two lowers, an upper and a work dir
  full of the things copy-up must preserve (odd modes, owners, times, set-id
  bits, xattrs of both namespaces, escaped and private overlay xattrs, sparse
  and empty files, symlinks, fifos, devices, hard links, odd names) with
  deterministic times, so two builds are identical but for inode numbers.
* :func:`kernel_copy_up` makes the kernel copy paths up through a real
  overlay mount (``kernel.run_in_mount``: a private mount namespace), with
  operations that copy up and change nothing else (the tests copy the same
  paths up with ``Stack.copy_up``).  The two upper dirs are compared
  with ``dumps.dump_tree`` / ``dumps.compare_dumps`` under
  ``dumps.copy_up_rules``.
* :class:`LoopFs` makes a filesystem image in a file, attaches it to a loop
  device and always detaches it again.

Stdlib only (plus the sibling ``kernel`` module, and ``overlayfs`` for the Stack),
so the namespace child can load it by path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import time

import kernel

MiB = 1 << 20

#: Mount options per xattr namespace of the stack.
NS_OPTIONS = {"trusted": (), "user": ("userxattr",)}

#: A VFS_CAP_REVISION_2 security.capability value: cap_net_raw, effective.
CAP_NET_RAW_V2 = struct.pack("<IIIII", 0x02000000 | 0x000001, 1 << 13, 0, 0, 0)

#: Fixed times (ns) for the build; every object gets its own distinct pair.
T0 = 1_000_000_000_000_000_000  # 2001-09-09


def lutime(path, atime_ns, mtime_ns):
    os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)


def write_file(path, data=b"", mode=0o644, uid=0, gid=0, xattrs=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)


def write_sparse(path, size, chunks, mode=0o644):
    """A file of *size* bytes with data only at the ``(offset, length)`` chunks."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        for off, length in chunks:
            block = hashlib.sha256(b"%d" % off).digest() * (MiB // 32)
            done = 0
            while done < length:
                n = min(len(block), length - done)
                os.pwrite(fd, block[:n], off + done)
                done += n
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def mkdir(path, mode=0o755, uid=0, gid=0, xattrs=None):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)


def mknod(path, kind, mode, rdev=0, uid=0, gid=0, xattrs=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, kind | mode, rdev)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)


def symlink(path, target, uid=0, gid=0, xattrs=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)
    os.chown(path, uid, gid, follow_symlinks=False)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v, follow_symlinks=False)


def fix_times(root, start=T0):
    """Give every object under *root* (and *root*) a distinct, fixed atime/mtime,
    in a deterministic order, children before their directory."""
    t = start

    def visit(p):
        nonlocal t
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(p)):
                visit(os.path.join(p, name))
        t += 1_000_003_000  # about a second apart, odd ns
        lutime(p, t - 86400 * 10**9 * 30, t)  # atime a month before mtime

    visit(os.fsencode(root))
    return t


# ---------------------------------------------------------------------------
# The parity layers
# ---------------------------------------------------------------------------

#: Names that stress escaping and encodings (bytes: one is not UTF-8).
ODD_NAMES = [b"with space", b"co:lon", b"com,ma", b"back\\slash", b"new\nline", b"bad\xff\xfeutf8", b"-dash"]


def build_parity_layers(root, ns="trusted"):
    """Build ``l1`` (top), ``l2``, ``upper`` and ``work`` under *root* (bytes paths).

    Returns a dict with ``lowers``, ``upper``, ``work`` and ``targets``: the
    union paths (bytes) to copy up, in order.  Everything that could differ
    between two builds (times, owners) is fixed, so building twice gives
    identical trees.
    """
    root = os.fsencode(root)
    other = "user" if ns == "trusted" else "trusted"
    l1, l2, up, wk = (os.path.join(root, n) for n in (b"l1", b"l2", b"upper", b"work"))
    for d in (l1, l2, up, wk):
        os.makedirs(d)
    X = ns + ".overlay."
    j = os.path.join
    targets = []

    # Nested parents with odd modes, owners, xattrs (private ones dropped,
    # escaped and other-namespace ones kept); the deepest file pulls them all up.
    mkdir(j(l1, b"a"), 0o2751, 123, 456, {"user.a": b"1", "trusted.a": b"2",
                                            X + "overlay.esc": b"escaped-dir",
                                            X + "impure": b"y",
                                            other + ".overlay.opaque": b"y"})
    mkdir(j(l1, b"a/b"), 0o700, 1000, 1000, {"user.b": b"\x00\xff", "trusted.b": b"b" * 300})
    mkdir(j(l1, b"a/b/c"), 0o1777, 65534, 65534)
    mkdir(j(l1, b"a/b/c/d"), 0o000, 7, 8, {X + "opaque": b"y"})
    write_file(j(l1, b"a/b/c/d/deep"), b"deep data\n", 0o640, 5, 6, {"user.deep": b"d"})
    targets.append(b"a/b/c/d/deep")
    # A directory copied up on its own (contents stay below).
    mkdir(j(l1, b"a/dironly"), 0o3755, 42, 43, {"trusted.dironly": b"x"})
    write_file(j(l1, b"a/dironly/stays"), b"below", 0o600)
    targets.append(b"a/dironly")

    # Set-id bits (root-owned, other-owned), odd permission bits.
    write_file(j(l1, b"a/suid"), b"#!/bin/sh\n", 0o4755)
    write_file(j(l1, b"a/suid_other"), b"x", 0o4711, 1234, 1234)
    write_file(j(l1, b"a/sgid"), b"x", 0o2750, 1000, 2000)
    write_file(j(l1, b"a/sugid_sticky"), b"x", 0o7755, 1234, 4321)
    write_file(j(l1, b"a/nomode"), b"secret", 0o000, 99, 98)
    targets += [b"a/suid", b"a/suid_other", b"a/sgid", b"a/sugid_sticky", b"a/nomode"]
    # File capabilities (security.capability) on a set-uid file and a plain one.
    write_file(j(l1, b"a/cap"), b"x", 0o755, 0, 0, {"security.capability": CAP_NET_RAW_V2, "user.c": b"c"})
    write_file(j(l1, b"a/cap_suid"), b"x", 0o4750, 0, 10, {"security.capability": CAP_NET_RAW_V2})
    targets += [b"a/cap", b"a/cap_suid"]

    # Data shapes: empty, sparse (data islands, a trailing hole, all hole), plain.
    write_file(j(l1, b"data/empty"), b"", 0o600, 1, 2, {"user.on_empty": b"e"})
    write_sparse(j(l1, b"data/sparse"), 64 * MiB, [(0, MiB), (30 * MiB, 2 * MiB), (63 * MiB, MiB // 2)])
    write_sparse(j(l1, b"data/tail_hole"), 40 * MiB, [(4096, 8192)])
    write_sparse(j(l1, b"data/all_hole"), 16 * MiB, [])
    write_sparse(j(l1, b"data/dense"), 3 * MiB + 17, [(0, 3 * MiB + 17)])
    targets += [b"data/empty", b"data/sparse", b"data/tail_hole", b"data/all_hole", b"data/dense"]

    # xattrs on files: both namespaces, escaped names of both, private ones,
    # a large value, an empty value.
    write_file(j(l1, b"x/escaped"), b"esc", 0o644, 0, 0, {
        X + "overlay.esc": b"verbatim",
        X + "overlay.overlay.twice": b"twice",
        X + "origin": b"",              # private: dropped
        X + "unknown_private": b"zz",   # private: dropped
        other + ".overlay.origin": b"not ours",  # the other namespace: copied
        "user.big": os.urandom(0) + b"v" * 3000,
        "trusted.empty": b"",
        "user.empty": b"",
    })
    targets.append(b"x/escaped")

    # Symlinks of every shape, with owners.
    symlink(j(l1, b"links/rel"), b"../a/b/c/d/deep", 12, 34, {"trusted.on_symlink": b"s"})
    symlink(j(l1, b"links/abs"), b"/etc/passwd")
    symlink(j(l1, b"links/dangling"), b"does/not/exist")
    symlink(j(l1, b"links/long"), b"L" * 200 + b"/" + b"M" * 200 + b"/" + b"N" * 500)
    symlink(j(l1, b"links/odd target"), b"sp ace:co,lon\xff")
    targets += [b"links/rel", b"links/abs", b"links/dangling", b"links/long", b"links/odd target"]

    # fifos and devices (not whiteouts: rdev != 0:0).
    mknod(j(l1, b"dev/fifo"), stat.S_IFIFO, 0o620, 0, 3, 4, {"trusted.on_fifo": b"f"})
    mknod(j(l1, b"dev/null"), stat.S_IFCHR, 0o666, os.makedev(1, 3))
    mknod(j(l1, b"dev/chr"), stat.S_IFCHR, 0o4640, os.makedev(10, 200), 5, 6, {"trusted.on_chr": b"c"})
    mknod(j(l1, b"dev/blk"), stat.S_IFBLK, 0o660, os.makedev(7, 200), 0, 6, {"trusted.on_blk": b"b" * 100})
    targets += [b"dev/fifo", b"dev/null", b"dev/chr", b"dev/blk"]

    # Hard links: copy-up breaks them (index=off).  h1 up alone; t1 and t2 up
    # (two new inodes), t3 stays below.
    write_file(j(l1, b"hl/h1"), b"hard", 0o640, 3, 3, {"user.hl": b"1"})
    os.link(j(l1, b"hl/h1"), j(l1, b"hl/h2"))
    write_file(j(l1, b"hl/t1"), b"triple", 0o604)
    os.link(j(l1, b"hl/t1"), j(l1, b"hl/t2"))
    os.link(j(l1, b"hl/t1"), j(l1, b"hl/t3"))
    targets += [b"hl/h1", b"hl/t1", b"hl/t2"]

    # Odd names, for files, dirs, symlinks and a fifo.
    for i, name in enumerate(ODD_NAMES):
        d = b"odd dir:" + name
        write_file(j(l1, d, name), b"odd %d" % i, 0o644, i, i, {"user.i": b"%d" % i})
        targets.append(d + b"/" + name)
    symlink(j(l1, b"odd dir:with space/lnk " + ODD_NAMES[5]), ODD_NAMES[5])
    mknod(j(l1, b"odd dir:com,ma/fi,fo"), stat.S_IFIFO, 0o644)
    targets += [b"odd dir:with space/lnk " + ODD_NAMES[5], b"odd dir:com,ma/fi,fo"]

    # Merged dirs: 'a' is in l2 as well (copy up a file only l2 has); 'm' is
    # already in the upper (the upper parent's times must be restored); a
    # deep chain only the bottom layer has.
    mkdir(j(l2, b"a"), 0o755, 0, 0, {"user.l2": b"hidden by l1's a"})
    write_file(j(l2, b"a/from_l2"), b"bottom", 0o644, 8, 9)
    targets.append(b"a/from_l2")
    mkdir(j(up, b"m"), 0o750, 11, 12, {"user.upper_m": b"u"})
    write_file(j(up, b"m/already_up"), b"upper", 0o644)
    mkdir(j(l2, b"m"), 0o777, 0, 0)
    write_file(j(l2, b"m/lowfile"), b"low", 0o640, 1, 1)
    mknod(j(l2, b"m/lowfifo"), stat.S_IFIFO, 0o600)
    targets += [b"m/lowfile", b"m/lowfifo"]
    mkdir(j(l2, b"bottom"), 0o711, 21, 22)
    mkdir(j(l2, b"bottom/x"), 0o5755, 23, 24, {"trusted.x": b"x"})
    write_file(j(l2, b"bottom/x/y"), b"y", 0o444, 25, 26)
    targets.append(b"bottom/x/y")

    for d in (l1, l2, up):
        os.chmod(d, 0o755)
    t = fix_times(l1, T0)
    t = fix_times(l2, t + 10**12)
    fix_times(up, t + 10**12)
    # Some objects share atime == mtime, or have times before the epoch's
    # second boundary (odd nanoseconds), or in the future.
    lutime(j(l1, b"a/suid"), 123_456_789, 123_456_789)
    lutime(j(l1, b"data/empty"), 4_000_000_000_999_999_999, 4_100_000_000_000_000_001)
    return {"lowers": [l1, l2], "upper": up, "work": wk, "targets": targets, "ns": ns}


# ---------------------------------------------------------------------------
# Copy-up through the kernel and through the Stack
# ---------------------------------------------------------------------------


def kernel_trigger(full):
    """Make the kernel copy *full* (a path in a mounted overlay) up, changing nothing else."""
    st = os.lstat(full)
    if stat.S_ISREG(st.st_mode):
        os.close(os.open(full, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    elif stat.S_ISLNK(st.st_mode):
        os.chown(full, st.st_uid, st.st_gid, follow_symlinks=False)
    else:
        os.chmod(full, stat.S_IMODE(st.st_mode))


def _trigger_copy_ups(root, paths):
    """Worker of :func:`kernel_copy_up` (run by ``kernel.run_in_mount``, *root* is the mount point)."""
    for p in paths:
        kernel_trigger(os.path.join(root, p))


def kernel_copy_up(lowers, upper, work, paths, options=()):
    """Copy *paths* up with the kernel (a mount in a private namespace)."""
    kernel.run_in_mount(_trigger_copy_ups, list(paths), lowers, upper, work, options=options, chroot=False,
                        what="kernel copy-up")


# ---------------------------------------------------------------------------
# Loop-device filesystems
# ---------------------------------------------------------------------------


class LoopFs:
    """A filesystem image in a sparse file, attached to a loop device.

    ``with LoopFs(dir, "xfs", 2 << 30) as fs:`` creates the image, runs mkfs
    and ``losetup -f --show``; ``fs.dev`` is the device.  Mount it yourself
    inside a private mount namespace.  The device is always detached and the
    image removed on exit.  :meth:`unavailable` says why images cannot be
    made here (or None).
    """

    MKFS = {
        "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"],
        "ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    }

    def __init__(self, directory, fstype, size):
        self.directory = directory
        self.fstype = fstype
        self.size = size
        self.image = None
        self.dev = None

    @classmethod
    def unavailable(cls, fstype):
        if os.geteuid() != 0:
            return "loop devices need root"
        for tool in ("losetup", cls.MKFS[fstype][0]):
            if shutil.which(tool) is None:
                return "%s is not installed" % tool
        if not os.path.exists("/dev/loop-control"):
            return "no /dev/loop-control"
        return None

    def __enter__(self):
        fd, self.image = tempfile.mkstemp(prefix="%s-" % self.fstype, suffix=".img", dir=self.directory)
        try:
            os.ftruncate(fd, self.size)
        finally:
            os.close(fd)
        try:
            subprocess.run(self.MKFS[self.fstype] + [self.image], check=True, capture_output=True, timeout=120)
            res = subprocess.run(["losetup", "-f", "--show", self.image], capture_output=True, timeout=60)
            if res.returncode:
                raise OSError("losetup -f --show failed: %s" % res.stderr.decode(errors="replace").strip())
            self.dev = res.stdout.decode().strip()
        except BaseException:
            self._cleanup()
            raise
        return self

    def _cleanup(self):
        if self.dev:
            for _ in range(50):
                res = subprocess.run(["losetup", "-d", self.dev], capture_output=True)
                if res.returncode == 0 or not self._attached():
                    break
                time.sleep(0.1)  # still busy: a namespace child is exiting
            self.dev = None
        if self.image:
            try:
                os.unlink(self.image)
            except OSError:
                pass
            self.image = None

    def _attached(self):
        res = subprocess.run(["losetup", "-j", self.image], capture_output=True)
        return bool(res.stdout.strip())

    def __exit__(self, *exc):
        self._cleanup()
        return False


def fs_magic_name(path):
    """The filesystem type name of *path* (``stat -f -c %T``)."""
    res = subprocess.run(["stat", "-f", "-c", "%T", os.fsencode(path)], capture_output=True)
    return res.stdout.decode().strip() or "?"


def fiemap_extents(path):
    """[(logical, physical, length, flags)] (in filesystem blocks) from
    ``filefrag -v``; equal physical offsets of two files mean shared extents."""
    res = subprocess.run([b"filefrag", b"-v", os.fsencode(path)], capture_output=True, check=True)
    extents = []
    for line in res.stdout.decode(errors="replace").splitlines():
        parts = [p.strip() for p in line.split(":")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        try:
            logical = int(parts[1].split("..")[0])
            physical = int(parts[2].split("..")[0])
            length = int(parts[3])
        except ValueError:
            continue
        flags = parts[-1] if len(parts) > 4 and not parts[-1].isdigit() else ""
        extents.append((logical, physical, length, flags))
    return extents
