"""Seeded random OverlayFS layer stacks, plus a small DSL for hand-written ones.

:func:`make_stack` builds the layer directories of a random stack under a
root directory; the same ``(seed, nlayers, options)`` always gives the same
names, contents, metadata (mtimes included) and creation order, so two builds
look identical through a mount.  :func:`to_oci` rewrites a copy of the layers
from the kernel's on-disk whiteout forms to the OCI/AUFS ones.
:func:`populate` builds hand-written layers for targeted tests, and
:func:`extra_paths` picks interesting paths that a directory walk never
reaches (``..``, trailing slashes, paths through files, hidden names...).

The generated stacks cover nested directories, regular files of many sizes
(empty and sparse too), setuid/setgid/sticky modes, other owners, relative,
absolute, dangling, looping and root-escaping symlinks, hard links, FIFOs,
character devices, kernel whiteouts (char 0:0 with various modes, some sharing
one inode as the kernel makes them), xattr whiteouts in directories marked
``opaque=x`` and in unmarked ones, opaque directories and decoy opaque values
(``yy``, ``Y``, empty, ``x``), files over directories and directories over
files, relative and absolute directory redirects (and a few invalid ones),
metacopy files, ``user.*``, escaped and private xattrs, and names with spaces,
colons, commas, backslashes, newlines, non-UTF-8 bytes and 255 bytes.

Kernel behaviours that depend on lookup order, or that a form cannot express,
constrain the generator:

* readdir hides an xattr whiteout when its directory was found marked ``x`` in
  *some* layer during lookup and its own layer had *any* marked directory
  looked up before (a per-layer flag set lazily, so the result depends on
  lookup order).  To keep views deterministic, a middle layer is either an
  "x layer" (every directory holding xattr whiteouts is marked ``x``) or
  never marks anything; with ``redirect_follow`` off (``userxattr``) at most
  one layer is an x layer.
* readdir of a directory whose upper is "impure" (the kernel marks it so as
  soon as a merged subdirectory is looked up) re-looks-up every upper entry
  and hides the ones whose lookup fails, so an xattr whiteout or a broken
  metacopy file in the upper is listed before that and hidden after.  The
  kernel never creates xattr whiteouts, and only creates metacopy files with
  their data below, so the generator puts both in lower layers only.
* with an upper layer, the kernel refuses (ESTALE) to instantiate a second
  directory whose top-most lower directory is already the top-most lower of
  another one in its inode cache, when either has an upper directory.  A
  redirect (of the directory or of an ancestor) to a directory that is also
  merged under its own name does that, depending on lookup order; the kernel
  avoids it by whiting out the old name when it writes a redirect.  So
  redirects are only generated for stacks without an upper layer, and never
  in an upper layer.
* a ``.wh.NAME`` marker needs 4 more bytes than NAME, so names that are whited
  out stay under 252 bytes (else :func:`to_oci` could not represent them).
"""

from __future__ import annotations

import os
import random
import stat

__all__ = ["make_stack", "to_oci", "convert_to_oci", "copy_layer", "populate", "extra_paths", "layer_names"]

#: Deterministic timestamps: every created object gets BASE + k * STEP.
MTIME_BASE = 1_600_000_000 * 10**9
MTIME_STEP = 1_000_003_001

#: Name pool: plain, tricky for mount options, non-UTF-8, maximal length.
NAMES = [
    b"a", b"b", b"c", b"d", b"etc", b"usr", b"bin", b"lib", b"file", b"dir", b"data",
    b"x y", b"co:lon", b"com,ma", b"back\\slash", b"new\nline", b"tab\tname",
    b"\xff\xfe\xfd", b"caf\xc3\xa9", b"-dash", b".hidden", b"..dots", b"a" * 255, b"b" * 250,
]
FILE_SIZES = [0, 0, 1, 7, 100, 4095, 4096, 4097, 65536, 70000]
FILE_MODES = [0o644, 0o644, 0o600, 0o755, 0o444, 0o000, 0o4755, 0o2755, 0o6711, 0o1644]
DIR_MODES = [0o755, 0o755, 0o700, 0o1777, 0o2775, 0o555, 0o711]
OWNERS = [(0, 0), (0, 0), (0, 0), (1000, 1000), (65534, 65534), (12345, 0), (0, 4242)]
WHITEOUT_MODES = [0o000, 0o600, 0o644, 0o777, 0o4000]
DECOY_OPAQUE = [b"yy", b"Y", b"", b"n", b"y\x00"]


def layer_names(seed: int, count: int) -> list[str]:
    """Directory names for *count* lower layers; some seeds use names that need escaping."""
    rng = random.Random("names:%d" % seed)
    special = rng.random() < 0.35
    names = []
    for i in range(count):
        if special and rng.random() < 0.5:
            names.append(rng.choice(["l:%d", "l,%d", "l\\%d", "l %d", "l=%d"]) % i)
        else:
            names.append("L%d" % i)
    return names


class _Gen:
    """State of one random stack build."""

    def __init__(self, seed, nlayers, upper, xattr_ns, budget, redirects, metacopy, redirect_follow):
        self.rng = random.Random(seed)
        self.ns = xattr_ns.encode()
        self.nlayers = nlayers
        self.upper = upper
        self.budget = budget
        self.redirects = redirects
        self.metacopy = metacopy
        self.tick = 0
        # Union of everything created so far: dir path tuple -> {name: kind}.
        self.known: dict = {(): {}}
        self.meta: list = []  # (path, mode, uid, gid, mtime_ns) applied after the build, deepest first
        middle = list(range(1, nlayers - 1))  # build indices of middle lowers (0 = bottom)
        self.rng.shuffle(middle)
        if redirect_follow:
            self.xlayers = {i for i in middle if self.rng.random() < 0.5}
        else:
            self.xlayers = set(middle[:1]) if middle and self.rng.random() < 0.7 else set()

    def x(self, suffix: str) -> bytes:
        return self.ns + b".overlay." + suffix.encode()

    def next_mtime(self) -> int:
        self.tick += 1
        return MTIME_BASE + self.tick * MTIME_STEP

    def pick_name(self, path: tuple) -> bytes:
        known = self.known.setdefault(path, {})
        if known and self.rng.random() < 0.55:
            return self.rng.choice(sorted(known))
        if self.rng.random() < 0.6:
            return self.rng.choice(NAMES)
        return b"n%d" % self.rng.randrange(1000)

    def record_meta(self, path: bytes, kind: str) -> None:
        """Queue a random mode and owner and the next mtime for *path* (see apply_meta)."""
        rng = self.rng
        if kind == "dir":
            mode = rng.choice(DIR_MODES)
        elif kind == "whiteout":
            mode = rng.choice(WHITEOUT_MODES)
        elif kind == "symlink":
            mode = None
        else:
            mode = rng.choice(FILE_MODES)
        uid, gid = rng.choice(OWNERS)
        self.meta.append((path, mode, uid, gid, self.next_mtime()))

    def set_xattrs(self, path: bytes, kind: str) -> None:
        """Random xattrs; user.* only where Linux allows them (files and directories)."""
        rng = self.rng
        user_ok = kind in ("file", "dir")
        ns_ok = user_ok or self.ns == b"trusted"
        if user_ok and rng.random() < 0.3:
            for _ in range(rng.randint(1, 3)):
                value = bytes(rng.randrange(256) for _ in range(rng.randint(0, 20)))
                os.setxattr(path, b"user.k%d" % rng.randrange(20), value, follow_symlinks=False)
        if ns_ok and rng.random() < 0.1:
            # Escaped: shown through the overlay as <ns>.overlay.escN.
            os.setxattr(path, self.x("overlay.esc%d" % rng.randrange(3)), b"e", follow_symlinks=False)
        if ns_ok and rng.random() < 0.08:
            os.setxattr(path, self.x("custom"), b"hidden", follow_symlinks=False)  # private: hidden
        if rng.random() < 0.05:
            # The other namespace's overlay names are ordinary xattrs.
            other = b"trusted" if self.ns == b"user" else b"user"
            if other == b"trusted" or user_ok:
                os.setxattr(path, other + b".overlay.opaque", b"y", follow_symlinks=False)

    # -- object makers ---------------------------------------------------------

    def make_file(self, path: bytes, layer_files: list) -> None:
        rng = self.rng
        size = rng.choice(FILE_SIZES)
        data = bytes(rng.randrange(256) for _ in range(min(size, 64))) * (size // 64 + 1)
        with open(path, "wb") as f:
            if rng.random() < 0.1:  # sparse: a little data far into the file
                f.seek(rng.choice([4096, 1 << 20, 3 << 20]))
                f.write(data[:100] or b"s")
                if rng.random() < 0.5:
                    f.truncate(f.tell() + rng.choice([0, 4096, 1 << 20]))
            else:
                f.write(data[:size])
        layer_files.append(path)

    def make_symlink(self, path: bytes, dirpath: tuple) -> None:
        rng = self.rng
        names = sorted(self.known.get(dirpath, {})) or [b"a"]
        choice = rng.randrange(10)
        if choice == 0:
            target = rng.choice(names)
        elif choice == 1:
            target = b"../" * rng.randint(1, 6) + rng.choice(names)  # may climb above the root
        elif choice == 2:
            target = b"/" + b"/".join(dirpath + (rng.choice(names),))
        elif choice == 3:
            target = b"/" + rng.choice(NAMES[:10]) + b"/" + rng.choice(NAMES[:10])
        elif choice == 4:
            target = b"dangling-%d" % rng.randrange(100)
        elif choice == 5:
            target = os.path.basename(path)  # a loop onto itself
        elif choice == 6:
            target = rng.choice([b".", b"..", b"/", b"./", b"../.."])
        elif choice == 7:
            target = rng.choice(names) + b"/"
        elif choice == 8:
            target = b"/../../" + rng.choice(names)
        else:
            target = rng.choice(names) + b"/" + rng.choice(NAMES[:6])
        os.symlink(target, path)

    def make_whiteout(self, path: bytes, shared: list) -> None:
        if shared and self.rng.random() < 0.4:
            os.link(shared[0], path)  # one inode for many whiteouts, as the kernel does
            return
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))  # the mode comes from record_meta
        shared.append(path)

    def make_xwhiteout(self, path: bytes, dirhost: bytes, layer: int, marked: set) -> None:
        open(path, "wb").close()
        os.setxattr(path, self.x("whiteout"), self.rng.choice([b"", b"y", b"1"]), follow_symlinks=False)
        if layer in self.xlayers and dirhost not in marked:
            os.setxattr(dirhost, self.x("opaque"), b"x", follow_symlinks=False)
            marked.add(dirhost)

    # -- layers ------------------------------------------------------------------

    def build_layer(self, root: bytes, layer: int, is_upper: bool) -> None:
        """Populate one layer; *layer* is the build index (0 = bottom, upper last)."""
        state = {"files": [], "whiteouts": [], "marked": set()}
        self.populate_dir(root, (), 0, layer, is_upper, state)
        self.record_meta(root, "dir")

    def populate_dir(self, dirhost: bytes, dirpath: tuple, depth: int, layer: int, is_upper: bool, state) -> None:
        rng = self.rng
        is_bottom = layer == 0
        count = rng.randint(*((4, 10), (2, 7), (0, 5), (0, 3), (0, 2))[min(depth, 4)])
        used = set()
        for _ in range(count):
            if self.budget <= 0:
                return
            name = self.pick_name(dirpath)
            if name in used or name.startswith(b".wh."):
                continue
            used.add(name)
            self.budget -= 1
            host = dirhost + b"/" + name
            below = self.known[dirpath].get(name)
            kinds = ["file"] * 6 + ["dir"] * (6 if depth < 4 else 0) + ["symlink"] * 3 + ["fifo", "chr"]
            if state["files"]:
                kinds += ["hardlink"]
            if not is_bottom and len(name) < 252:
                kinds += ["whiteout"] * (4 if below else 1)
                if not is_upper:
                    kinds += ["xwhiteout"] * (3 if below else 1)
            if below == "dir" and depth < 4:
                kinds += ["dir"] * 4  # merge directories often
            if self.metacopy and below == "file" and not is_bottom and not is_upper:
                kinds += ["metacopy"] * 3
            kind = rng.choice(kinds)
            if kind == "file":
                self.make_file(host, state["files"])
                if rng.random() < 0.05 and os.stat(host).st_size:  # a non-empty "whiteout" is a normal file
                    os.setxattr(host, self.x("whiteout"), b"", follow_symlinks=False)
            elif kind == "dir":
                os.mkdir(host)
                self.dir_markers(host, dirpath + (name,), below, is_upper, is_bottom)
                self.known.setdefault(dirpath + (name,), {})
                self.populate_dir(host, dirpath + (name,), depth + 1, layer, is_upper, state)
            elif kind == "symlink":
                self.make_symlink(host, dirpath)
            elif kind == "fifo":
                os.mkfifo(host)
            elif kind == "chr":
                os.mknod(host, stat.S_IFCHR | 0o644, os.makedev(1, rng.choice([1, 3, 5])))
            elif kind == "hardlink":
                os.link(rng.choice(state["files"]), host)
            elif kind == "whiteout":
                self.make_whiteout(host, state["whiteouts"])
            elif kind == "xwhiteout":
                self.make_xwhiteout(host, dirhost, layer, state["marked"])
            elif kind == "metacopy":
                self.make_metacopy(host)
            if kind not in ("whiteout", "xwhiteout", "hardlink"):
                self.set_xattrs(host, kind)
            if kind != "hardlink":
                self.record_meta(host, kind)
            self.known[dirpath][name] = "dir" if kind == "dir" else "file"

    def dir_markers(self, host: bytes, path: tuple, below, is_upper: bool, is_bottom: bool) -> None:
        """Opaque values (real and decoy) and redirects on a new directory."""
        rng = self.rng
        r = rng.random()
        if r < 0.12:
            os.setxattr(host, self.x("opaque"), b"y", follow_symlinks=False)
        elif r < 0.2:
            os.setxattr(host, self.x("opaque"), rng.choice(DECOY_OPAQUE), follow_symlinks=False)
        elif r < 0.23 and (is_upper or is_bottom):
            os.setxattr(host, self.x("opaque"), b"x", follow_symlinks=False)  # ignored there
        if self.redirects and not is_bottom and not is_upper and rng.random() < 0.08:
            parent = path[:-1]
            dirs_below = [n for n, k in self.known.get(parent, {}).items() if k == "dir" and n != path[-1]]
            r = rng.random()
            if r < 0.45 and dirs_below:
                value = rng.choice(dirs_below)
            elif r < 0.9:
                candidates = [p for p in self.known if p and p != path]
                value = b"/" + b"/".join(rng.choice(candidates)) if candidates else b"/a"
            else:
                value = rng.choice([b"", b"a/b", b"/", b"/a/", b"..", b"//a"])  # invalid: EINVAL/EACCES
            os.setxattr(host, self.x("redirect"), value, follow_symlinks=False)

    def make_metacopy(self, host: bytes) -> None:
        """A metacopy file whose data is the same name below (sized like a real copy-up)."""
        with open(host, "wb") as f:
            f.truncate(self.rng.choice([0, 10, 5000]))
        os.setxattr(host, self.x("metacopy"), b"", follow_symlinks=False)

    def apply_meta(self) -> None:
        """Modes, owners and mtimes, deepest paths first so parents keep theirs."""
        for path, mode, uid, gid, mtime in sorted(self.meta, key=lambda m: -m[0].count(b"/")):
            os.lchown(path, uid, gid)
            if mode is not None:
                os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def make_stack(root, seed, nlayers, *, upper=True, whiteouts="kernel", xattr_ns="trusted", budget=None,
               redirects=None, metacopy=False, redirect_follow=None):
    """Build a random stack of *nlayers* lowers (plus an upper) under *root*.

    Returns ``(lowers, upper, work)`` as str paths, lowers top-most first;
    ``upper`` and ``work`` are None when ``upper=False``.  ``whiteouts="oci"``
    converts every layer to the OCI/AUFS forms (see :func:`convert_to_oci`),
    so its view should equal the kernel view of the same seed in kernel form.
    ``budget`` bounds the number of created entries (default 90-200, from the
    seed).  ``redirects`` (directory redirects in lower layers, a few invalid)
    defaults to True without an upper and False with one (see the module
    docstring).  ``metacopy`` adds metacopy files over files below (mount with
    ``metacopy=on``).  ``redirect_follow`` defaults to True for the trusted
    namespace and False for ``user`` (the ``userxattr`` mount forces nofollow).
    """
    if whiteouts not in ("kernel", "oci"):
        raise ValueError("whiteouts must be 'kernel' or 'oci'")
    if redirect_follow is None:
        redirect_follow = xattr_ns == "trusted"
    if redirects is None:
        redirects = not upper
    root = os.fsencode(root)
    rng = random.Random("budget:%d" % seed)
    gen = _Gen(seed, nlayers, upper, xattr_ns, budget or rng.randint(90, 200), redirects, metacopy, redirect_follow)
    names = [os.fsencode(n) for n in layer_names(seed, nlayers)]
    lowers = [root + b"/" + n for n in names]  # top-most first
    old_umask = os.umask(0)
    try:
        os.makedirs(root, exist_ok=True)
        for build_index, path in enumerate(reversed(lowers)):
            os.mkdir(path)
            gen.build_layer(path, build_index, is_upper=False)
        upper_path = work = None
        if upper:
            upper_path, work = root + b"/upper", root + b"/work"
            os.mkdir(upper_path)
            os.mkdir(work)
            gen.build_layer(upper_path, nlayers, is_upper=True)
        gen.apply_meta()
    finally:
        os.umask(old_umask)
    if whiteouts == "oci":
        for path in lowers + ([upper_path] if upper_path else []):
            convert_to_oci(path, xattr_ns=xattr_ns)
    dec = os.fsdecode
    return [dec(p) for p in lowers], dec(upper_path) if upper_path else None, dec(work) if work else None


# ---------------------------------------------------------------------------
# Hand-written layers
# ---------------------------------------------------------------------------


def populate(root, spec: dict) -> None:
    """Build hand-written layers: ``{layer_dir: [(path, kind, *args), ...]}``.

    Kinds: ``dir``; ``file`` [content bytes]; ``sparse`` size; ``symlink``
    target; ``whiteout`` [mode]; ``xwhiteout`` (zero-size file with the
    whiteout xattr, namespace from the ``ns`` key of *spec*, default trusted);
    ``fifo``; ``chr`` major minor; ``link`` existing-path; ``xattr`` name value
    (name may use ``X.`` for ``<ns>.overlay.``); ``mode`` mode; ``owner`` uid
    gid.  Parent directories are created as needed; paths are str or bytes.
    """
    spec = dict(spec)
    ns = os.fsencode(spec.pop("ns", "trusted"))
    root = os.fsencode(root)
    old_umask = os.umask(0)
    try:
        for layer, ops in spec.items():
            base = root + b"/" + os.fsencode(layer)
            os.makedirs(base, exist_ok=True)
            for op in ops:
                rel, kind, *args = op
                rel = os.fsencode(rel)
                path = base + b"/" + rel if rel else base
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if kind == "dir":
                    os.makedirs(path, exist_ok=True)
                elif kind == "file":
                    with open(path, "wb") as f:
                        f.write(args[0] if args else b"data:" + rel)
                elif kind == "sparse":
                    with open(path, "wb") as f:
                        f.truncate(args[0])
                elif kind == "symlink":
                    os.symlink(os.fsencode(args[0]), path)
                elif kind == "whiteout":
                    os.mknod(path, stat.S_IFCHR | (args[0] if args else 0o600), os.makedev(0, 0))
                elif kind == "xwhiteout":
                    open(path, "wb").close()
                    os.setxattr(path, ns + b".overlay.whiteout", b"", follow_symlinks=False)
                elif kind == "fifo":
                    os.mkfifo(path)
                elif kind == "chr":
                    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(args[0], args[1]))
                elif kind == "link":
                    os.link(base + b"/" + os.fsencode(args[0]), path)
                elif kind == "xattr":
                    name = os.fsencode(args[0])
                    if name.startswith(b"X."):
                        name = ns + b".overlay." + name[2:]
                    os.setxattr(path, name, os.fsencode(args[1]), follow_symlinks=False)
                elif kind == "mode":
                    os.chmod(path, args[0])
                elif kind == "owner":
                    os.lchown(path, args[0], args[1])
                else:
                    raise ValueError("unknown kind %r" % kind)
    finally:
        os.umask(old_umask)


# ---------------------------------------------------------------------------
# OCI conversion
# ---------------------------------------------------------------------------


def copy_layer(src, dst) -> None:
    """Copy a layer tree faithfully: types, modes, owners, xattrs, mtimes, holes, hard links."""
    src, dst = os.fsencode(src), os.fsencode(dst)
    inodes: dict = {}
    dir_times = []

    def copy_meta(s, d, st):
        for name in os.listxattr(s, follow_symlinks=False):
            os.setxattr(d, name, os.getxattr(s, name, follow_symlinks=False), follow_symlinks=False)
        os.lchown(d, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def copy_data(s, d):
        with open(s, "rb") as fin, open(d, "wb") as fout:
            fd = fin.fileno()
            size = os.fstat(fd).st_size
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break  # only a hole is left
                end = os.lseek(fd, start, os.SEEK_HOLE)
                fin.seek(start)
                fout.seek(start)
                fout.write(fin.read(end - start))
                pos = end
            fout.truncate(size)

    def walk(s, d):
        st = os.lstat(s)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d)
            with os.scandir(s) as it:
                names = [e.name for e in it]
            for name in names:
                walk(s + b"/" + name, d + b"/" + name)
            dir_times.append((s, d, st))
            return
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in inodes:
            os.link(inodes[key], d)
            return
        if stat.S_ISREG(mode):
            copy_data(s, d)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(d)
        else:
            os.mknod(d, mode, st.st_rdev)
        copy_meta(s, d, st)
        inodes[key] = d

    old_umask = os.umask(0)
    try:
        walk(src, dst)
        for s, d, st in dir_times:  # children first, so directory mtimes stick
            copy_meta(s, d, st)
    finally:
        os.umask(old_umask)


def convert_to_oci(layer, *, xattr_ns="trusted") -> None:
    """Rewrite one layer in place from kernel whiteout forms to OCI/AUFS forms.

    Char 0:0 whiteouts and xattr whiteouts become empty ``.wh.NAME`` files;
    ``opaque=y`` directories lose the xattr and gain ``.wh..wh..opq``.  The
    layer root is left alone (the kernel never treats a root as opaque).
    Directory mtimes are restored afterwards.
    """
    layer = os.fsencode(layer)
    ns = xattr_ns.encode()
    x_whiteout, x_opaque = ns + b".overlay.whiteout", ns + b".overlay.opaque"

    def has_xattr(path, name):
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            return None

    def walk(path, is_root):
        st_dir = os.lstat(path)
        with os.scandir(path) as it:
            entries = [(e.name, os.lstat(e.path)) for e in it]
        changed = False
        for name, st in entries:
            child = path + b"/" + name
            is_kernel_whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            is_xwhiteout = (stat.S_ISREG(st.st_mode) and st.st_size == 0
                            and has_xattr(child, x_whiteout) is not None)
            if is_kernel_whiteout or is_xwhiteout:
                os.unlink(child)
                open(path + b"/.wh." + name, "wb").close()
                changed = True
            elif stat.S_ISDIR(st.st_mode):
                walk(child, False)
        if not is_root and has_xattr(path, x_opaque) == b"y":
            os.removexattr(path, x_opaque, follow_symlinks=False)
            open(path + b"/.wh..wh..opq", "wb").close()
            changed = True
        if changed:
            os.utime(path, ns=(st_dir.st_atime_ns, st_dir.st_mtime_ns), follow_symlinks=False)

    walk(layer, True)


def to_oci(layers, dest_root, *, xattr_ns="trusted") -> list[str]:
    """Copy *layers* under *dest_root* (same base names) and convert the copies to OCI forms.

    Returns the new paths in the order given (None stays None, for a missing upper).
    """
    dest_root = os.fsencode(dest_root)
    os.makedirs(dest_root, exist_ok=True)
    out = []
    for layer in layers:
        if layer is None:
            out.append(None)
            continue
        dst = dest_root + b"/" + os.path.basename(os.fsencode(layer).rstrip(b"/"))
        copy_layer(layer, dst)
        convert_to_oci(dst, xattr_ns=xattr_ns)
        out.append(os.fsdecode(dst))
    return out


# ---------------------------------------------------------------------------
# Extra paths
# ---------------------------------------------------------------------------


def extra_paths(seed, layers, count=25) -> list[bytes]:
    """Interesting union paths a walk does not reach, drawn from the names in *layers*.

    Includes ``..`` and ``.`` components (also climbing above the root),
    trailing slashes, paths through files and symlinks, a leading ``/``,
    doubled slashes, missing names, 256-byte names and names that exist only
    as whiteouts or in hidden layers.
    """
    rng = random.Random("extra:%d" % seed)
    candidates = set()
    for layer in layers:
        if layer is None:
            continue
        layer = os.fsencode(layer)
        for dirpath, dirnames, filenames in os.walk(layer):
            rel = os.path.relpath(dirpath, layer)
            rel = b"" if rel == b"." else rel
            for name in dirnames + filenames:
                candidates.add(rel + b"/" + name if rel else name)
    pool = sorted(candidates) or [b"a"]
    out = [b"..", b"../..", b"/", b"//", b"./", b"missing", b"a" * 256, b"missing/" + b"b" * 256]
    for _ in range(count):
        p = rng.choice(pool)
        form = rng.randrange(12)
        if form == 0:
            out.append(p + b"/..")
        elif form == 1:
            out.append(p + b"/")
        elif form == 2:
            out.append(p + b"/.")
        elif form == 3:
            out.append(p + b"/missing")
        elif form == 4:
            out.append(b"../" * rng.randint(1, 3) + p)
        elif form == 5:
            out.append(b"/" + p)
        elif form == 6:
            out.append(p.replace(b"/", b"//") + b"//")
        elif form == 7:
            out.append(p + b"/../" + rng.choice(pool))
        elif form == 8:
            out.append(p + b"/./x/..")
        elif form == 9:
            out.append(p + b"/" + rng.choice(pool).rsplit(b"/", 1)[-1])
        else:
            out.append(p)
    # Unique, keeping the order.
    return list(dict.fromkeys(out))
