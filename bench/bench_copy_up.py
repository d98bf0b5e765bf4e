#!/usr/bin/env python3
"""Copy-up benchmark: Stack.copy_up against the kernel's own copy-up, shutil.copy2 and cp.

    python bench/bench_copy_up.py [--quick] [--fs ext4,xfs,btrfs] [--write-readme]

Filesystems: ext4, XFS (``mkfs.xfs -m reflink=1``) and btrfs, each made in a
sparse image file under a temp dir, attached with ``losetup -f --show`` and
mounted in a private mount namespace (a forked child); everything is
unmounted, detached and removed at the end, also on errors.

Cases (lower files of random data, written and fsynced before timing):
``4 KiB``, ``1 MiB``, ``64 MiB`` and ``1 GiB`` files (a batch of each, spread
over a few directories), ``storm``: 10,000 files of 4 KiB in 100 directories
of 100, and (full run, ext4, volatile pair only) ``storm-1dir``: 10,000 files
of 4 KiB in one directory.

Methods (columns), each on a fresh upper and work dir, the batch timed as a
whole and reported per file (best of the repetitions; the order of the
methods rotates between repetitions; ``syncfs`` before each timing):

Stack        overlayfs.Stack([lower], upper, work).copy_up(path) for each path
             (fsync per file).
kernel       the kernel's copy-up: ``os.open(path, O_WRONLY|O_APPEND)`` and
             close, through an overlay mounted on the same layers (it fsyncs
             each data copy, but not a whole-file clone: ``ovl_copy_up_file``
             returns before its ``vfs_fsync`` then).  Mount and unmount untimed.
Stack vol    Stack(..., volatile=True): no fsync.
kernel vol   the same through a ``-o volatile`` mount (its
             ``work/incompat/volatile/dirty`` goes with the work dir).
copy2+fsync  shutil.copy2 of each file (parents made with os.makedirs) and an
             fsync of the copy.
cp+syncfs    one ``cp -a --reflink=auto`` of the case's directory, then
             ``syncfs``: a whole-tree copy made durable once.

Targets (ratios with PASS/MISS; timings are never asserted, the exit status
is 0): on ext4, Stack <= 1.0x kernel at every size, both with fsync and
volatile; Stack vol <= 0.7x kernel vol for 4 KiB files and for the storm; on
XFS and btrfs (reflink), Stack <= 1.5x kernel at every size (both pairs), and
constant in file size: Stack's time for 1 GiB <= 10x its time for 4 KiB (the
size grows 262,144x; copying the data would cost ~1,000x).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import overlayfs

HERE = os.path.dirname(os.path.abspath(__file__))
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

METHODS = ["stack", "kernel", "stack-vol", "kernel-vol", "copy2", "cp"]
HEAD = {"stack": "Stack", "kernel": "kernel", "stack-vol": "Stack vol", "kernel-vol": "kernel vol",
        "copy2": "copy2+fsync", "cp": "cp+syncfs"}

#: (case, file size, files per batch, dirs, repetitions) for a full and a quick run.
FULL = [("4 KiB", 4 * KiB, 1000, 10, 5), ("1 MiB", MiB, 100, 4, 5), ("64 MiB", 64 * MiB, 4, 2, 3),
        ("1 GiB", GiB, 1, 1, 2), ("storm", 4 * KiB, 10000, 100, 2)]
QUICK = [("4 KiB", 4 * KiB, 300, 3, 3), ("1 MiB", MiB, 40, 2, 3), ("64 MiB", 64 * MiB, 2, 1, 2),
         ("1 GiB", GiB, 1, 1, 1), ("storm", 4 * KiB, 10000, 100, 1)]
#: Full run only, ext4 only, volatile pair only.
STORM_1DIR = ("storm-1dir", 4 * KiB, 10000, 1, 1)

IMAGE_SIZE = 6 * GiB
MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}

_libc = ctypes.CDLL(None, use_errno=True)


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Inside the namespace child: one filesystem
# ---------------------------------------------------------------------------


def build_lower(lower: str, cases) -> dict:
    """Write every case's files; return {case: [relative paths]}."""
    block = os.urandom(MiB)
    paths = {}
    for name, size, count, dirs, _ in cases:
        key = name.replace(" ", "")
        ps = []
        for i in range(count):
            rel = f"{key}/d{i % dirs:03d}/f{i:05d}"
            full = os.path.join(lower, rel)
            if i < dirs:
                os.makedirs(os.path.dirname(full), exist_ok=True)
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                done = 0
                head = i.to_bytes(8, "little")
                while done < size:
                    n = min(size - done, MiB)
                    os.write(fd, head + block[8:n] if n > 8 else head[:n])
                    done += n
            finally:
                os.close(fd)
            ps.append(rel)
        paths[name] = ps
    syncfs(lower)
    return paths


def fresh_dirs(root: str) -> tuple[str, str]:
    upper, work = os.path.join(root, "upper"), os.path.join(root, "work")
    for d in (upper, work):
        if os.path.lexists(d):
            shutil.rmtree(d)
        os.mkdir(d)
    return upper, work


def run_stack(lower, upper, work, paths, volatile):
    with overlayfs.Stack([lower], upper, work, volatile=volatile) as st:
        t = time.perf_counter()
        method = "none"
        for p in paths:
            method = st.copy_up(p).method
        elapsed = time.perf_counter() - t
        return elapsed, method


def run_kernel(lower, upper, work, paths, volatile, mnt):
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (",volatile" if volatile else "")
    subprocess.run(["mount", "-n", "-t", "overlay", "overlay", "-o", opts, mnt], check=True, capture_output=True)
    try:
        t = time.perf_counter()
        flags = os.O_WRONLY | os.O_APPEND
        for p in paths:
            os.close(os.open(os.path.join(mnt, p), flags))
        return time.perf_counter() - t, ""
    finally:
        subprocess.run(["umount", "-n", mnt], check=False, capture_output=True)


def run_copy2(lower, upper, paths):
    made = set()
    t = time.perf_counter()
    for p in paths:
        dst = os.path.join(upper, p)
        parent = os.path.dirname(dst)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        shutil.copy2(os.path.join(lower, p), dst)
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t, ""


def run_cp(lower, upper, key):
    t = time.perf_counter()
    subprocess.run(["cp", "-a", "--reflink=auto", os.path.join(lower, key), upper + "/"], check=True)
    syncfs(upper)
    return time.perf_counter() - t, ""


def bench_fs(dev: str, fstype: str, mnt: str, cases, methods_for) -> dict:
    """Mount *dev* at *mnt* (private namespace), run every case, unmount."""
    subprocess.run(["mount", "-t", fstype, dev, mnt], check=True, capture_output=True)
    try:
        lower = os.path.join(mnt, "lower")
        ovl = os.path.join(mnt, "ovl")
        os.mkdir(lower)
        os.mkdir(ovl)
        t = time.perf_counter()
        paths = build_lower(lower, cases)
        log(f"  {fstype}: lower built in {time.perf_counter() - t:.1f} s")
        results = {}
        for name, size, count, dirs, reps in cases:
            key = name.replace(" ", "")
            methods = methods_for(name)
            times = {m: [] for m in methods}
            copy_methods = set()
            for rep in range(reps):
                order = methods[rep % len(methods):] + methods[:rep % len(methods)]
                for m in order:
                    upper, work = fresh_dirs(mnt)
                    syncfs(mnt)
                    ps = paths[name]
                    if m in ("stack", "stack-vol"):
                        elapsed, how = run_stack(lower, upper, work, ps, m == "stack-vol")
                        copy_methods.add(how)
                    elif m in ("kernel", "kernel-vol"):
                        elapsed, _ = run_kernel(lower, upper, work, ps, m == "kernel-vol", ovl)
                    elif m == "copy2":
                        elapsed, _ = run_copy2(lower, upper, ps)
                    else:
                        elapsed, _ = run_cp(lower, upper, key)
                    check_copy(lower, upper, ps)
                    times[m].append(elapsed / count)
            for d in ("upper", "work"):
                shutil.rmtree(os.path.join(mnt, d), ignore_errors=True)
            best = {m: min(v) for m, v in times.items()}
            results[name] = {"size": size, "count": count, "dirs": dirs, "reps": reps, "best": best,
                             "copy_method": "/".join(sorted(copy_methods))}
            log(f"  {fstype} {name:>10} x{count}: " + "  ".join(
                f"{HEAD[m]} {fmt_time(best[m])}" for m in methods))
        return results
    finally:
        subprocess.run(["umount", "-n", os.path.join(mnt, "ovl")], check=False, capture_output=True)
        subprocess.run(["umount", mnt], check=False, capture_output=True)


def check_copy(lower: str, upper: str, paths) -> None:
    """A cheap sanity check of every method's result: sizes of the first and last copy."""
    for p in (paths[0], paths[-1]):
        a, b = os.stat(os.path.join(lower, p)), os.stat(os.path.join(upper, p))
        if a.st_size != b.st_size:
            raise RuntimeError(f"bad copy of {p}: {b.st_size} bytes, want {a.st_size}")


# ---------------------------------------------------------------------------
# The parent: loop devices and the report
# ---------------------------------------------------------------------------


class Loop:
    def __init__(self, directory: str, fstype: str):
        self.directory, self.fstype = directory, fstype
        self.image = self.dev = None

    def __enter__(self):
        fd, self.image = tempfile.mkstemp(prefix=self.fstype + "-", suffix=".img", dir=self.directory)
        os.ftruncate(fd, IMAGE_SIZE)
        os.close(fd)
        try:
            subprocess.run(MKFS[self.fstype] + [self.image], check=True, capture_output=True)
            out = subprocess.run(["losetup", "-f", "--show", self.image], check=True, capture_output=True)
            self.dev = out.stdout.decode().strip()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.dev:
            for _ in range(50):
                if subprocess.run(["losetup", "-d", self.dev], capture_output=True).returncode == 0:
                    break
                if not subprocess.run(["losetup", "-j", self.image], capture_output=True).stdout.strip():
                    break
                time.sleep(0.1)
            self.dev = None
        if self.image:
            os.unlink(self.image)
            self.image = None
        return False


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    us = seconds * 1e6
    if us < 1000:
        return f"{us:.0f} us" if us >= 100 else f"{us:.1f} us"
    ms = us / 1000
    if ms < 1000:
        return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}" if r < 10 else f"{r:.1f}"


def table(rows: list[list[str]], align: str) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        cells = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)]
        out.append("| " + " | ".join(cells) + " |")
        if j == 0:
            out.append("|" + "|".join(("-" * (w + 2)) if a == "l" else ("-" * (w + 1) + ":")
                                      for w, a in zip(widths, align)) + "|")
    return out


def ratio(res, case, a, b):
    r = res.get(case, {}).get("best", {})
    if r.get(a) is None or r.get(b) is None or r[b] == 0:
        return None
    return r[a] / r[b]


def report(all_res: dict, meta: dict, cmd: str) -> list[str]:
    lines = [
        f"Command: `{cmd}`",
        f"Date: {meta['date']}; kernel {meta['kernel']}; CPU {meta['cpu']} x{meta['cpus']}; "
        f"Python {meta['python']}; overlayfs {meta['overlayfs']}; load average at start {meta['load']}.",
        "Each filesystem is a 6 GiB sparse image on the host's ext4 (virtio disk), attached to a loop device. "
        "Times are per file, best of the repetitions (files x repetitions in the first columns).",
        "",
    ]
    targets = []
    for fstype, res in all_res.items():
        if "error" in res:
            lines += [f"### {fstype}", "", f"Not run: {res['error']}", ""]
            continue
        lines += [f"### {fstype}: time per file", ""]
        rows = [["case", "files x reps", "Stack", "kernel", "ratio", "Stack vol", "kernel vol", "ratio",
                 "copy2+fsync", "cp+syncfs", "Stack copied by"]]
        for case, r in res.items():
            b = r["best"]
            rows.append([case, f"{r['count']} x {r['reps']}", fmt_time(b.get("stack")), fmt_time(b.get("kernel")),
                         fmt_ratio(ratio(res, case, "stack", "kernel")), fmt_time(b.get("stack-vol")),
                         fmt_time(b.get("kernel-vol")), fmt_ratio(ratio(res, case, "stack-vol", "kernel-vol")),
                         fmt_time(b.get("copy2")), fmt_time(b.get("cp")), r["copy_method"]])
        lines += table(rows, "llrrrrrrrrl") + [""]
        limit = 1.0 if fstype == "ext4" else 1.5
        for case in res:
            for a, b_, what in (("stack", "kernel", "fsync"), ("stack-vol", "kernel-vol", "volatile")):
                if ratio(res, case, a, b_) is not None:
                    targets.append((f"{fstype} {case}: Stack / kernel ({what})", limit, ratio(res, case, a, b_)))
            if fstype == "ext4" and case in ("4 KiB", "storm", "storm-1dir"):
                targets.append((f"ext4 {case}: Stack vol / kernel vol", 0.7,
                                ratio(res, case, "stack-vol", "kernel-vol")))
        if fstype != "ext4" and "1 GiB" in res and "4 KiB" in res:
            for m, what in (("stack", "fsync"), ("stack-vol", "volatile")):
                big, small = res["1 GiB"]["best"].get(m), res["4 KiB"]["best"].get(m)
                if big and small:
                    targets.append((f"{fstype}: Stack 1 GiB / Stack 4 KiB ({what})", 10.0, big / small))
    rows = [["target", "limit", "ratio", ""]]
    npass = 0
    for name, limit, r in targets:
        ok = r is not None and r <= limit
        npass += ok
        rows.append([name, f"<= {limit:g}", fmt_ratio(r), "PASS" if ok else ("MISS" if r is not None else "n/a")])
    lines += ["### Targets (ratio, PASS/MISS; never a failure)", ""] + table(rows, "lrrl")
    if "storm-1dir" in all_res.get("ext4", {}):
        lines += ["", "`storm-1dir`: 10,000 copies into one directory.  A copy-up into a directory that is "
                      "already in the upper layer patches the Stack's cached index of it in place (the name's "
                      "top-most copy is now the upper one) instead of reading the directory again, so the "
                      "cost per file stays close to the 100-per-directory storm's, as the kernel's does."]
    if any(f != "ext4" for f in all_res):
        lines += ["", "On XFS and btrfs neither the kernel nor the Stack fsyncs a cloned copy "
                      "(`ovl_copy_up_file` returns right after a whole-file clone, before its `vfs_fsync`; "
                      "the Stack does the same), so default and volatile times are the same there."]
    lines += ["", f"{npass} of {len(targets)} targets met."]
    return lines


def metadata() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version
        ver = version("overlayfs")
    except Exception:
        ver = "?"
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version(), "overlayfs": ver,
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


SECTION = "## Copy-up"


def write_readme(lines: list[str]) -> None:
    """Replace (or append) the ``## Copy-up`` section of bench/README.md; keep the rest byte-identical."""
    doc = __doc__.split("\n\n", 1)[1].strip()
    section = "\n".join([
        SECTION,
        "",
        "`bench_copy_up.py` times copy-up of whole files: `Stack.copy_up` against the kernel's own copy-up "
        "through an overlay mount, `shutil.copy2` and `cp`, on ext4, XFS and btrfs loop images.  Run it as "
        "root; `--quick` takes about 1.5 minutes and a full run about 4; `--write-readme` rewrites only "
        "this section of the file.",
        "",
        "```",
        doc,
        "```",
        "",
        *lines,
        "",
    ])
    path = os.path.join(HERE, "README.md")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if old.startswith(SECTION + "\n"):
        start = 0
    else:
        i = old.find("\n" + SECTION + "\n")
        start = i + 1 if i >= 0 else -1
    if start < 0:  # append below everything, after a blank line
        if old and not old.endswith("\n"):
            old += "\n"
        if old and not old.endswith("\n\n"):
            old += "\n"
        new = old + section
    else:  # replace our section up to the next "## " heading (kept as it is)
        nxt = old.find("\n## ", start + len(SECTION))
        tail = old[nxt + 1:] if nxt >= 0 else ""
        new = old[:start] + section + ("\n" + tail if tail else "")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(new)


def methods_for(name: str) -> list[str]:
    return ["stack-vol", "kernel-vol"] if name == "storm-1dir" else list(METHODS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller batches, fewer repetitions (~2 min)")
    ap.add_argument("--fs", default="ext4,xfs,btrfs", help="comma-separated filesystems (ext4, xfs, btrfs)")
    ap.add_argument("--write-readme", action="store_true", help="write the ## Copy-up section of bench/README.md")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("bench_copy_up.py needs root (loop devices, mounts)")
        return 1
    cases = QUICK if args.quick else FULL
    meta = metadata()
    t0 = time.perf_counter()
    all_res: dict = {}
    base = tempfile.mkdtemp(prefix="bench-copy-up-")
    try:
        for fstype in [f.strip() for f in args.fs.split(",") if f.strip()]:
            fs_cases = list(cases) + ([STORM_1DIR] if fstype == "ext4" and not args.quick else [])

            log(f"{fstype}: making the image")
            mnt = os.path.join(base, fstype + "-mnt")
            os.mkdir(mnt)
            try:
                with Loop(base, fstype) as loop:
                    all_res[fstype] = overlayfs.run_in_private_namespace(bench_fs, loop.dev, fstype, mnt,
                                                                          fs_cases, methods_for)
            except (OSError, subprocess.CalledProcessError) as e:
                detail = getattr(e, "stderr", b"") or b""
                all_res[fstype] = {"error": f"{e} {detail.decode(errors='replace').strip()}"}
                log(f"{fstype}: not run: {all_res[fstype]['error']}")
            finally:
                os.rmdir(mnt)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    cmd = "python bench/bench_copy_up.py" + (" --quick" if args.quick else "") + \
        (f" --fs {args.fs}" if args.fs != "ext4,xfs,btrfs" else "") + (" --write-readme" if args.write_readme else "")
    lines = report(all_res, meta, cmd)
    lines.append(f"Total run time {time.perf_counter() - t0:.0f} s.")
    print("\n".join(lines))
    if args.write_readme:
        write_readme(lines)
        log("wrote the ## Copy-up section of bench/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
