#!/usr/bin/env python3
"""Path-lookup benchmark: overlayfs.Stack against mounted overlays and the floor.

    python bench/bench_lookup.py [--quick] [--write-readme]

Stacks (built in a temp dir by bench/_stacks.py, removed afterwards):
``synthetic-N`` for N = 1, 8, 64, 256, 500 layers -- the same merged tree of
3,000 files in 200 directories for every N, spread over the layers with
modified files, whiteouts (char 0:0) and opaque directories -- and
``python3-32``, this machine's /usr/lib/python3* split over 32 layers.

Metrics, each for every implementation that can do it:

lstat warm (ns/path)
    lstat of every merged path (shuffled, same order everywhere), looped in
    Python; best of several passes over an already-warm object / mount.
lstat fresh (ns/path)
    The same single pass right after creating the object: a new Stack, a
    just-mounted overlay (host caches warm).  Best over several fresh objects.
resolve warm (ns/path)
    Stack.resolve (host path of the winning entry).  The kernel has no
    equivalent; its target baseline is kernel os.lstat.
listdir warm (us/dir)
    listdir of every merged directory, best of several passes.
walk warm / fresh / cold (ms per whole tree)
    A whole-tree walk (Stack.walk, os.walk): on a warm object; on a fresh one;
    on a fresh one with ``echo 3 > /proc/sys/vm/drop_caches`` right before the
    walk (after the mount / Stack creation).
cache (bytes/name)
    cache_info().bytes / cache_info().entries after lstat of every path on a
    fresh Stack.

Implementations (columns):

Stack   overlayfs.Stack(layers), default options (cache on).
kernel  (a) os.lstat / os.listdir / os.walk through a kernel overlay mount of
        the same layers: mount(2) with lowerdir=<relative short names> after
        chdir into the stack dir (fits the 4095-byte option page for 500
        layers), read-only; the kernel wants >= 2 lowers without an upper, so
        the 1-layer stack is mounted with an extra empty bottom layer.
fuse    (b) the same through fuse-overlayfs -o lowerdir=... (no upper, so
        read-only), run in the foreground.
ref     (c) overlayfs._reference.ReferenceStack, the plain-Python resolver.
ext4    (d) os.* on the merged tree copied into one plain directory: the floor.

Targets (printed as ratios with PASS/MISS): warm lstat <= 0.5x kernel and
<= 1.0x ext4 lstat; warm resolve <= 0.1x kernel lstat; warm listdir <= 0.05x
kernel listdir; warm costs at 500 layers <= 1.2x those at 1 layer; fresh
lstat <= 1.0x a fresh kernel mount's; fresh walk <= 1.0x the kernel's warm
walk and <= 0.5x its cold walk (the cold Stack walk is compared with the
cold kernel walk too); cache <= 150 bytes per cached name.

All measuring runs in one child process started with
``unshare -m --propagation private`` (mounts stay private and vanish with
it; they are unmounted explicitly anyway).  OS-side calls use the same
relative path strings as the Stack, with the working directory inside the
mount.  A single pass of a slow implementation stops at a time budget; such
figures are marked ``~`` and come from the sample that fitted.  Timings are
never asserted: the ratios against the targets of the issue are printed with
PASS/MISS and the exit status is 0.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from time import perf_counter_ns

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _stacks

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FUSE_OVERLAYFS = shutil.which("fuse-overlayfs") or "/usr/bin/fuse-overlayfs"

IMPLS = ["Stack", "kernel", "fuse", "ref", "ext4"]
SYNTHETIC_LAYERS = [1, 8, 64, 256, 500]
PYTHON_LAYERS = 32


class Config:
    """Repeat counts and time budgets (seconds) for one run."""

    def __init__(self, quick: bool):
        self.quick = quick
        self.repeats = 5 if quick else 9  # warm timings (best of)
        self.fresh_repeats = 2 if quick else 5  # fresh objects (best of)
        self.cold_repeats = 1 if quick else 3  # drop_caches + walk (best of)
        self.min_timing = 0.005 if quick else 0.02  # a warm timing loops passes to last this long
        self.pass_budget = 0.5 if quick else 2.0  # one pass of a slow implementation stops here
        self.measure_budget = 1.5 if quick else 5.0  # no new repeat starts after this
        self.cold_budget = 3.0 if quick else 6.0  # one cold walk stops here

    def to_json(self):
        return dict(vars(self))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- timing -------------------------------------------------------------------------

CHUNK = 256


def chunked(items: list, n: int = CHUNK) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def timed_pass(fn, chunks, deadline_ns: int) -> tuple[int, int]:
    """One timed pass calling fn on every item; (ns, items done).

    The inner loop is the plain ``for x in chunk: fn(x)``; the deadline is
    checked between chunks only."""
    done = 0
    t0 = perf_counter_ns()
    for chunk in chunks:
        for x in chunk:
            fn(x)
        done += len(chunk)
        if perf_counter_ns() > deadline_ns:
            break
    return perf_counter_ns() - t0, done


def result(v: float, partial: bool = False, n: int = 0) -> dict:
    return {"v": v, "partial": partial, "n": n}


def warm_per_item(fn, items: list, cfg: Config, sample: bool = False) -> dict:
    """ns per item of fn over items once warm: best of cfg.repeats timings.

    Call after a warm-up pass; a pass too slow for the budget is timed on the
    prefix of items that fitted."""
    start = perf_counter_ns()
    chunks = chunked(items)
    t, done = timed_pass(fn, chunks, start + int(cfg.pass_budget * 1e9))
    partial = done < len(items)
    if partial:
        chunks = chunked(items[:done])
    loops = max(1, math.ceil(cfg.min_timing * 1e9 / max(t, 1)))
    best = t / done
    for _ in range(cfg.repeats):
        if perf_counter_ns() - start > cfg.measure_budget * 1e9:
            break
        t0 = perf_counter_ns()
        for _ in range(loops):
            for chunk in chunks:
                for x in chunk:
                    fn(x)
        best = min(best, (perf_counter_ns() - t0) / (loops * done))
    return result(best, partial or sample, done)


def loop_overhead(cfg: Config) -> float:
    """ns per item of the measuring loop itself (calling a builtin that does nothing)."""
    items = [str(i) for i in range(4096)]
    return warm_per_item(str.__str__, items, cfg)["v"]


def walk_pass(walk, deadline_ns: int) -> tuple[int, int, list]:
    """Time one whole walk; (ns, entries seen, [(top, dirs, files)])."""
    seen = 0
    out = []
    t0 = perf_counter_ns()
    for top, dirs, files in walk():
        seen += len(dirs) + len(files)
        out.append((top, dirs, files))
        if perf_counter_ns() > deadline_ns:
            break
    return perf_counter_ns() - t0, seen, out


def walk_result(t: int, seen: int, total: int) -> dict:
    """ms for the whole tree (scaled up from the entries seen if cut short)."""
    partial = seen < total
    return result(t * total / max(seen, 1) / 1e6, partial, seen)


# -- mounts (used inside the private mount namespace only) ---------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_RDONLY = 1
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1


def sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if len(data) > 4095:
        raise ValueError(f"mount options are {len(data)} bytes, over the 4095-byte page")
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()):
        e = ctypes.get_errno()
        raise OSError(e, f"mount({fstype}): {os.strerror(e)}", target)


def sys_umount(target: str, flags: int = 0) -> None:
    if _libc.umount2(target.encode(), flags):
        e = ctypes.get_errno()
        raise OSError(e, f"umount2: {os.strerror(e)}", target)


def mounted_at(target: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# -- implementations -----------------------------------------------------------------


class Impl:
    """One implementation: open() a fresh handle, per-path callables on it.

    union=True: paths are union paths and the root is ""; otherwise OS paths
    relative to the working directory, which open() moves into the view."""

    name = ""
    union = False
    fresh = True  # "fresh" and "cold" mean something for it
    has_resolve = False

    def open(self):
        raise NotImplementedError

    def close(self, h) -> None:
        pass

    def lstat(self, h):
        return os.lstat

    def listdir(self, h):
        return os.listdir

    def walk(self, h):
        return lambda: os.walk(".")

    def resolve(self, h):
        raise NotImplementedError


class StackImpl(Impl):
    union = True

    def __init__(self, name: str, cls, layers: list[str]):
        self.name, self.cls, self.layers = name, cls, layers
        self.has_resolve = hasattr(cls, "resolve")

    def open(self):
        return self.cls(self.layers)

    def close(self, h) -> None:
        h.close()

    def lstat(self, h):
        return h.lstat

    def listdir(self, h):
        return h.listdir

    def walk(self, h):
        return lambda: h.walk("")

    def resolve(self, h):
        return h.resolve


class KernelMount(Impl):
    name = "kernel"

    def __init__(self, spec: _stacks.BuiltStack, mnt: str):
        self.spec, self.mnt = spec, mnt
        layers = spec.rel_layers + ([_stacks.EMPTY_LAYER] if spec.nlayers < 2 else [])
        self.options = "lowerdir=" + ":".join(layers)
        self.mount_ns: list[int] = []

    def open(self):
        os.chdir(self.spec.root)
        t0 = perf_counter_ns()
        sys_mount("overlay", self.mnt, "overlay", MS_RDONLY, self.options)
        self.mount_ns.append(perf_counter_ns() - t0)
        os.chdir(self.mnt)
        return self.mnt

    def close(self, h) -> None:
        os.chdir(self.spec.root)
        sys_umount(self.mnt)


class FuseMount(Impl):
    name = "fuse"

    def __init__(self, spec: _stacks.BuiltStack, mnt: str):
        self.spec, self.mnt = spec, mnt
        self.options = "lowerdir=" + ":".join(spec.rel_layers)
        self.proc: subprocess.Popen | None = None
        self.start_ns: list[int] = []

    def open(self):
        errlog = tempfile.TemporaryFile()
        t0 = perf_counter_ns()
        self.proc = subprocess.Popen(
            [FUSE_OVERLAYFS, "-f", "-o", self.options, self.mnt], cwd=self.spec.root,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errlog,
            preexec_fn=_die_with_parent)
        while not mounted_at(self.mnt):
            if self.proc.poll() is not None or perf_counter_ns() - t0 > 60e9:
                self._stop()
                errlog.seek(0)
                raise OSError(f"fuse-overlayfs did not mount: {errlog.read().decode()[-500:]}")
            time.sleep(0.002)
        self.start_ns.append(perf_counter_ns() - t0)
        errlog.close()
        os.chdir(self.mnt)
        return self.mnt

    def close(self, h) -> None:
        os.chdir(self.spec.root)
        try:
            sys_umount(self.mnt)
        finally:
            self._stop()

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()  # our own child, by pid
            proc.wait(timeout=10)
        if mounted_at(self.mnt):
            sys_umount(self.mnt, MNT_DETACH)


class PlainTree(Impl):
    name = "ext4"
    fresh = False

    def __init__(self, spec: _stacks.BuiltStack):
        self.spec = spec

    def open(self):
        os.chdir(self.spec.plain)
        return self.spec.plain

    def close(self, h) -> None:
        os.chdir(self.spec.root)


def load_reference():
    """overlayfs._reference.ReferenceStack, installed or from the source tree."""
    try:
        from overlayfs._reference import ReferenceStack
        return ReferenceStack, "overlayfs._reference"
    except ImportError:
        pass
    path = os.path.join(REPO, "src", "overlayfs", "_reference.py")
    if not os.path.exists(path):
        return None, "not found"
    spec = importlib.util.spec_from_file_location("_overlayfs_reference", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.ReferenceStack, os.path.relpath(path, REPO)


# -- measuring one stack (child process) ----------------------------------------------


class Expected:
    """What every implementation must show for a stack (for the sanity checks)."""

    def __init__(self, spec: _stacks.BuiltStack):
        self.paths = set(spec.paths)
        self.children: dict[str, set[str]] = {d: set() for d in spec.dirs}
        for p in spec.paths:
            parent, _, name = p.rpartition("/")
            self.children[parent].add(name)
        self.lstat = {}
        for p in spec.paths:
            st = os.lstat(os.path.join(spec.plain, p))
            self.lstat[p] = (stat.S_IFMT(st.st_mode), None if stat.S_ISDIR(st.st_mode) else st.st_size)


def _norm_top(top: str, union: bool) -> str:
    if union:
        return top
    return "" if top == "." else top[2:]


def check_walk(out: list, union: bool, exp: Expected) -> list[str]:
    seen = set()
    for top, dirs, files in out:
        t = _norm_top(top, union)
        seen.update(f"{t}/{n}" if t else n for n in dirs + files)
    problems = [f"walk shows {p!r}, not in the merged tree" for p in sorted(seen - exp.paths)[:3]]
    if len(out) == len(exp.children):  # complete walk
        problems += [f"walk misses {p!r}" for p in sorted(exp.paths - seen)[:3]]
    return problems


def prewarm(spec: _stacks.BuiltStack) -> None:
    """Bring the layers and the plain tree into the page / dentry / inode
    caches (an earlier cold measurement dropped them), so that "fresh" means a
    new Stack or mount over warm host caches, for every implementation."""
    for dirpath, dirnames, filenames in os.walk(spec.root):
        if os.path.basename(dirpath).startswith("mnt-"):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))


def check_pass(impl: Impl, h, items: list, dirs: list, exp: Expected, cfg: Config):
    """Untimed warm-up pass doubling as a correctness check.

    Returns (paths checked without error, paths that failed, problems); a
    slow implementation stops at a time budget."""
    problems, ok, failed = [], [], set()
    fn = impl.lstat(h)
    deadline = perf_counter_ns() + 4 * cfg.pass_budget * 1e9
    bad = 0
    for p in items:
        try:
            st = fn(p)
        except OSError as e:
            bad += 1
            failed.add(p)
            if bad <= 3:
                problems.append(f"lstat({p!r}): {e}")
            continue
        ok.append(p)
        got = (stat.S_IFMT(st.st_mode), None if stat.S_ISDIR(st.st_mode) else st.st_size)
        if got != exp.lstat[p]:
            bad += 1
            if bad <= 3:
                problems.append(f"lstat({p!r}) gives type/size {got}, expected {exp.lstat[p]}")
        if perf_counter_ns() > deadline:
            break
    if bad > 3:
        problems.append(f"... {bad} lstat problems in all")
    if len(ok) + len(failed) < len(items):
        log(f"    {impl.name}: checked {len(ok) + len(failed)} of {len(items)} paths in the time budget")
    ls = impl.listdir(h)
    for d in dirs[:50 if cfg.quick else len(dirs)]:
        try:
            names = ls(d if impl.union or d else ".")
        except OSError as e:
            problems.append(f"listdir({d!r}): {e}")
            continue
        if sorted(names) != sorted(exp.children[d]) or len(names) != len(set(names)):
            problems.append(f"listdir({d!r}) differs from the merged tree")
        if perf_counter_ns() > deadline:
            break
    return ok, failed, problems


def best(results: list[dict]) -> dict:
    return min(results, key=lambda r: r["v"])


def measure(impl: Impl, spec: _stacks.BuiltStack, order: list[str], exp: Expected,
            cfg: Config, cold_ok: bool) -> dict:
    """Every metric for one implementation on one stack; m["checks"] lists
    where its view differs from the merged tree."""
    m: dict = {"checks": []}
    dirs = spec.dirs if impl.union else ["."] + spec.dirs[1:]
    total = len(spec.paths)

    def attempt(metric, fn, *args):
        try:
            gc.collect()
            m[metric] = fn(*args)
        except Exception as e:  # report it and measure the rest
            m[metric] = {"error": f"{type(e).__name__}: {e}"}
            log(f"    {impl.name} {metric}: {m[metric]['error']}")

    # Warm: one object, warmed by the checking pass.
    prewarm(spec)
    h = impl.open()
    try:
        good, failed, problems = check_pass(impl, h, order, spec.dirs, exp, cfg)
        m["checks"] += problems
        sample = len(good) < len(order)  # the check ran out of time, or paths failed
        attempt("lstat_warm", warm_per_item, impl.lstat(h), good, cfg, sample)
        if impl.has_resolve:
            attempt("resolve_warm", warm_per_item, impl.resolve(h), good, cfg, sample)
        attempt("listdir_warm", warm_per_item, impl.listdir(h), dirs, cfg)
        attempt("walk_warm", warm_walk, impl, h, total, exp, cfg, m["checks"])
    finally:
        impl.close(h)

    if impl.fresh:
        valid = [p for p in order if p not in failed]
        attempt("lstat_fresh", fresh_lstat, impl, valid, total, cfg, m)
        attempt("walk_fresh", fresh_walk, impl, total, cfg, False)
    if cold_ok:
        attempt("walk_cold", fresh_walk, impl, total, cfg, True)
    if impl.name == "Stack":
        attempt("open", time_open, impl, cfg)
    return m


def warm_walk(impl: Impl, h, total: int, exp: Expected, cfg: Config, checks: list) -> dict:
    """ms per whole-tree walk on a warm object (the first walk is checked)."""
    _, _, out = walk_pass(impl.walk(h), perf_counter_ns() + int(cfg.pass_budget * 1e9))
    checks.extend(check_walk(out, impl.union, exp))
    runs = []
    start = perf_counter_ns()
    for _ in range(cfg.repeats):
        t, seen, _ = walk_pass(impl.walk(h), perf_counter_ns() + int(cfg.pass_budget * 1e9))
        runs.append(walk_result(t, seen, total))
        if perf_counter_ns() - start > cfg.measure_budget * 1e9:
            break
    return best(runs)


def fresh_lstat(impl: Impl, paths: list, total: int, cfg: Config, m: dict) -> dict:
    """ns per path of the first lstat pass on fresh objects (best of several).

    For the Stack, the cache statistics after the complete pass go to m["cache"]."""
    chunks = chunked(paths)
    runs = []
    start = perf_counter_ns()
    for _ in range(cfg.fresh_repeats):
        h = impl.open()
        try:
            gc.collect()
            t, done = timed_pass(impl.lstat(h), chunks, perf_counter_ns() + int(cfg.pass_budget * 1e9))
            if impl.name == "Stack" and done == len(paths):
                m["cache"] = h.cache_info()._asdict()
        finally:
            impl.close(h)
        runs.append(result(t / done, done < total, done))
        if runs[-1]["partial"] or perf_counter_ns() - start > cfg.measure_budget * 1e9:
            break
    return best(runs)


def fresh_walk(impl: Impl, total: int, cfg: Config, cold: bool) -> dict:
    """ms per whole-tree walk of a fresh object; cold: drop_caches first."""
    budget = cfg.cold_budget if cold else cfg.pass_budget
    runs = []
    start = perf_counter_ns()
    for _ in range(cfg.cold_repeats if cold else cfg.fresh_repeats):
        h = impl.open()
        try:
            if cold:
                drop_caches()
            gc.collect()
            t, seen, _ = walk_pass(impl.walk(h), perf_counter_ns() + int(budget * 1e9))
        finally:
            impl.close(h)
        runs.append(walk_result(t, seen, total))
        if runs[-1]["partial"] or perf_counter_ns() - start > max(budget, cfg.measure_budget) * 1e9:
            break
    return best(runs)


def time_open(impl: StackImpl, cfg: Config) -> dict:
    """ms to create the object (closed again untimed), best of fresh_repeats."""
    runs = []
    for _ in range(cfg.fresh_repeats):
        t0 = perf_counter_ns()
        h = impl.open()
        runs.append(result((perf_counter_ns() - t0) / 1e6))
        impl.close(h)
    return best(runs)


def run_child(args) -> None:
    """Measure every stack; runs inside the private mount namespace."""
    cfg = Config(args.quick)
    specs = _stacks.load(args.child)
    import overlayfs
    ref_cls, ref_from = load_reference()
    log(f"overlayfs {overlayfs.__version__} from {os.path.dirname(overlayfs.__file__)}; "
        f"reference resolver: {ref_from}")
    cold_ok = True
    try:
        drop_caches()
    except OSError as e:
        cold_ok = False
        log(f"cold measurements skipped: cannot drop caches ({e})")
    can_mount = os.geteuid() == 0 and not args.no_mount
    use_fuse = can_mount and os.path.exists(FUSE_OVERLAYFS) and os.path.exists("/dev/fuse")
    gc.disable()
    results = {"config": cfg.to_json(), "reference": ref_from, "cold": cold_ok,
               "overlayfs": getattr(overlayfs, "__version__", "?"),
               "loop_ns": loop_overhead(cfg), "stacks": []}
    for spec in specs:
        log(f"{spec.name}: {len(spec.paths)} paths, {len(spec.dirs)} dirs, {spec.nlayers} layers")
        order = list(spec.paths)
        random.Random(12345).shuffle(order)
        exp = Expected(spec)
        kmnt, fmnt = os.path.join(spec.root, "mnt-kernel"), os.path.join(spec.root, "mnt-fuse")
        os.makedirs(kmnt, exist_ok=True)
        os.makedirs(fmnt, exist_ok=True)
        os.chdir(spec.root)
        impls: list[Impl] = [StackImpl("Stack", overlayfs.Stack, spec.layers)]
        if can_mount:
            impls.append(KernelMount(spec, kmnt))
        if use_fuse:
            impls.append(FuseMount(spec, fmnt))
        if ref_cls is not None:
            impls.append(StackImpl("ref", ref_cls, spec.layers))
        impls.append(PlainTree(spec))
        entry = {"name": spec.name, "nlayers": spec.nlayers, "npaths": len(spec.paths),
                 "ndirs": len(spec.dirs), "stats": spec.stats, "m": {}, "info": {}}
        for impl in impls:
            t0 = time.monotonic()
            try:
                m = measure(impl, spec, order, exp, cfg, cold_ok)
            except Exception as e:
                m = {"checks": [f"failed: {type(e).__name__}: {e}"]}
                traceback.print_exc()
            finally:
                for mnt in (kmnt, fmnt):
                    if mounted_at(mnt):
                        sys_umount(mnt, MNT_DETACH)
            for p in m.get("checks", []):
                log(f"    CHECK {impl.name}: {p}")
            entry["m"][impl.name] = m
            log(f"  {impl.name:6s} {time.monotonic() - t0:5.1f}s")
            if isinstance(impl, KernelMount) and impl.mount_ns:
                entry["info"]["kernel_mount_ms"] = min(impl.mount_ns) / 1e6
                entry["info"]["kernel_options_bytes"] = len(impl.options)
            if isinstance(impl, FuseMount) and impl.start_ns:
                entry["info"]["fuse_start_ms"] = min(impl.start_ns) / 1e6
        results["stacks"].append(entry)
        os.chdir("/")
    with open(args.results, "w") as f:
        json.dump(results, f)


# -- report ------------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    """Three significant digits, thousands separated."""
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def get(entry: dict, impl: str, metric: str) -> dict | None:
    r = entry["m"].get(impl, {}).get(metric)
    return r if r and "v" in r else None


def cell(entry: dict, impl: str, metric: str, scale: float) -> str:
    r = get(entry, impl, metric)
    if r is None:
        err = entry["m"].get(impl, {}).get(metric)
        return "error" if err else "n/a"
    return ("~" if r["partial"] else "") + fmt(r["v"] * scale)


def ratio(entry: dict, a: tuple, b: tuple) -> float | None:
    ra, rb = get(entry, *a), get(entry, *b)
    if ra is None or rb is None or rb["v"] <= 0:
        return None
    return ra["v"] / rb["v"]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return [line(header), sep] + [line(r) for r in rows]


METRICS = [
    # key, title, unit, scale of the stored value, ratio columns (label, (impl, metric))
    ("lstat_warm", "lstat, warm", "ns/path", 1,
     [("Stack/kernel", ("kernel", "lstat_warm")), ("Stack/ext4", ("ext4", "lstat_warm"))]),
    ("lstat_fresh", "lstat, first pass on a fresh Stack / fresh mount", "ns/path", 1,
     [("Stack/kernel", ("kernel", "lstat_fresh"))]),
    ("resolve_warm", "resolve, warm (kernel column: its os.lstat, warm)", "ns/path", 1,
     [("Stack/kernel lstat", ("kernel", "lstat_warm"))]),
    ("listdir_warm", "listdir of every directory, warm", "us/dir", 1e-3,
     [("Stack/kernel", ("kernel", "listdir_warm"))]),
    ("walk_warm", "walk of the whole tree, warm", "ms", 1,
     [("Stack/kernel", ("kernel", "walk_warm"))]),
    ("walk_fresh", "walk of the whole tree, fresh Stack / fresh mount", "ms", 1,
     [("Stack/kernel warm", ("kernel", "walk_warm")),
      ("Stack/kernel cold", ("kernel", "walk_cold"))]),
    ("walk_cold", "walk of the whole tree, fresh, drop_caches right before", "ms", 1,
     [("Stack/kernel", ("kernel", "walk_cold"))]),
]

# name, limit, numerator (impl, metric), denominator (impl, metric)
TARGETS = [
    ("warm lstat / kernel warm lstat", 0.5, ("Stack", "lstat_warm"), ("kernel", "lstat_warm")),
    ("warm lstat / ext4 warm lstat", 1.0, ("Stack", "lstat_warm"), ("ext4", "lstat_warm")),
    ("warm resolve / kernel warm lstat", 0.1, ("Stack", "resolve_warm"), ("kernel", "lstat_warm")),
    ("warm listdir / kernel warm listdir", 0.05, ("Stack", "listdir_warm"), ("kernel", "listdir_warm")),
    ("fresh lstat / kernel fresh-mount lstat", 1.0, ("Stack", "lstat_fresh"), ("kernel", "lstat_fresh")),
    ("fresh walk / kernel warm walk", 1.0, ("Stack", "walk_fresh"), ("kernel", "walk_warm")),
    ("fresh walk / kernel cold walk", 0.5, ("Stack", "walk_fresh"), ("kernel", "walk_cold")),
    ("cold walk / kernel cold walk", 0.5, ("Stack", "walk_cold"), ("kernel", "walk_cold")),
]
FLAT = [("lstat_warm", "warm lstat"), ("resolve_warm", "warm resolve"),
        ("listdir_warm", "warm listdir"), ("walk_warm", "warm walk")]


def verdict(x: float | None, limit: float) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g} {'PASS' if x <= limit else 'MISS'}"


def report(res: dict) -> tuple[list[str], list[str]]:
    """(lines of the report, list of misses)."""
    stacks = res["stacks"]
    out, misses = [], []
    impls = [i for i in IMPLS if any(i in e["m"] for e in stacks)]
    rows = [[e["name"], e["nlayers"], e["npaths"], e["ndirs"], e["stats"]["layer_entries"],
             e["stats"]["shadowed"], e["stats"]["whiteouts"], e["stats"]["opaque"]]
            for e in stacks]
    out += ["### Stacks", ""]
    out += md_table(["stack", "layers", "merged paths", "dirs", "layer entries",
                     "shadowed copies", "whiteouts", "opaque dirs"], rows)
    out += ["", "The kernel refuses a single lower without an upper, so its 1-layer mount "
            "has an extra empty bottom layer.  `~`: too slow for the time budget; the figure "
            "comes from the part of the pass that fitted."]
    detail = []
    for key, title, unit, scale, ratios in METRICS:
        cols = ["Stack", "ref", "kernel"] if key == "resolve_warm" else IMPLS
        cols = [c for c in cols if c in impls]
        rows = []
        for e in stacks:
            row = [e["name"]]
            for c in cols:
                metric = "lstat_warm" if key == "resolve_warm" and c == "kernel" else key
                row.append(cell(e, c, metric, scale))
            row += [fmt(ratio(e, ("Stack", key), r)) for _, r in ratios]
            rows.append(row)
        header = ["stack"] + cols + [label for label, _ in ratios]
        detail += ["", f"### {title} ({unit})", ""] + md_table(header, rows)

    # cache memory and set-up costs
    rows = []
    for e in stacks:
        c = e["m"].get("Stack", {}).get("cache")
        per = c["bytes"] / c["entries"] if c and c["entries"] else None
        op = get(e, "Stack", "open")
        rows.append([e["name"], c["entries"] if c else "n/a", c["dirs"] if c else "n/a",
                     f"{c['bytes']:,}" if c else "n/a", fmt(per), fmt(op["v"]) if op else "n/a",
                     fmt(e["info"].get("kernel_mount_ms")), fmt(e["info"].get("fuse_start_ms"))])
    detail += ["", "### Stack cache after lstat of every path on a fresh Stack; set-up costs", ""]
    detail += md_table(["stack", "entries", "dirs", "bytes", "bytes/name", "Stack() ms",
                        "kernel mount ms", "fuse start ms"], rows)

    # targets
    rows = []
    for name, limit, num, den in TARGETS:
        row = [name, f"<= {limit:g}"]
        for e in stacks:
            v = verdict(ratio(e, num, den), limit)
            row.append(v)
            if v.endswith("MISS"):
                misses.append(f"{e['name']}: {name} = {v}")
        rows.append(row)
    row = ["cache bytes per cached name", "<= 150"]
    for e in stacks:
        c = e["m"].get("Stack", {}).get("cache")
        v = verdict(c["bytes"] / c["entries"] if c and c["entries"] else None, 150)
        row.append(v)
        if v.endswith("MISS"):
            misses.append(f"{e['name']}: cache bytes per name = {v}")
    rows.append(row)
    out += ["", "### Targets (ratio, PASS/MISS; never a failure)", ""]
    out += md_table(["target", "limit"] + [e["name"] for e in stacks], rows)

    syn = sorted((e for e in stacks if e["name"].startswith("synthetic-")),
                 key=lambda e: e["nlayers"])
    if len(syn) >= 2:
        lo, hi = syn[0], syn[-1]
        rows = []
        for key, label in FLAT:
            a, b = get(hi, "Stack", key), get(lo, "Stack", key)
            x = a["v"] / b["v"] if a and b else None
            v = verdict(x, 1.2)
            rows.append([f"{label}: {hi['name']} / {lo['name']}", "<= 1.2", v])
            if v.endswith("MISS"):
                misses.append(f"flatness {label} {hi['name']}/{lo['name']} = {v}")
        out += ["", "### Warm cost flat in the number of layers", ""]
        out += md_table(["Stack", "limit", "ratio"], rows)
    out += detail

    checks = [f"{e['name']} {impl}: {p}" for e in stacks for impl, m in e["m"].items()
              for p in m.get("checks", [])]
    out += ["", "Sanity checks (every view against the known merged tree): "
            + ("all agree." if not checks else f"{len(checks)} problems:")]
    out += [f"- {c}" for c in checks]
    return out, misses


def machine_info() -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    fuse_version = "n/a"
    if os.path.exists(FUSE_OVERLAYFS):
        try:
            p = subprocess.run([FUSE_OVERLAYFS, "--version"], capture_output=True, text=True,
                               timeout=10)
            fuse_version = next((line.split(":", 1)[1].strip()
                                 for line in (p.stdout + p.stderr).splitlines()
                                 if line.startswith("fuse-overlayfs")), "?")
        except (OSError, subprocess.SubprocessError):
            pass
    return {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(),
            "python": platform.python_version(), "fuse_overlayfs": fuse_version,
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def header_lines(meta: dict, res: dict, command: str) -> list[str]:
    cfg = res["config"]
    return [
        f"Command: `{command}`",
        f"Date: {meta['date']}; kernel {meta['kernel']}; CPU {meta['cpu']} x{meta['cpus']}; "
        f"Python {meta['python']}; overlayfs {res['overlayfs']}; fuse-overlayfs "
        f"{meta['fuse_overlayfs']}; reference resolver: {res['reference']}; "
        f"load average at start {meta['load']}.",
        f"The Python loop itself costs {res['loop_ns']:.0f} ns per item (included in every "
        f"per-path figure).",
        f"Warm figures: best of {cfg['repeats']} timings; fresh: best of {cfg['fresh_repeats']} "
        f"fresh objects; cold: best of {cfg['cold_repeats']}"
        + ("" if res["cold"] else " (skipped: drop_caches not writable)") + ".",
    ]


def write_readme(lines: list[str], head: list[str]) -> None:
    doc = __doc__.split("\n\n", 1)[1].strip()
    text = "\n".join([
        "# Benchmarks",
        "",
        "`bench_lookup.py` times path lookups through `overlayfs.Stack` against a kernel "
        "overlay mount, fuse-overlayfs, the plain-Python reference resolver and a plain "
        "ext4 tree.  Run it as root (it mounts inside a private mount namespace and drops "
        "the page cache for the cold figures); on the machine below `--quick` takes about "
        "1.5 minutes and a full run about 3; `--write-readme` rewrites this part of the "
        "file (the sections other benchmarks write below it are kept).",
        "",
        "```",
        doc,
        "```",
        "",
        "## Latest results",
        "",
        *head,
        "",
        *lines,
        "",
    ])
    path = os.path.join(HERE, "README.md")
    # Keep the sections written by the other benchmarks (bench_copy_up.py,
    # bench_mount.py): everything from the first "## " heading not ours.
    rest = ""
    try:
        with open(path) as f:
            old = f.read()
        starts = [old.find(h) for h in ("\n## Copy-up", "\n## Mounting") if h in old]
        if starts:
            rest = old[min(starts):]
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(text + rest)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller budgets")
    ap.add_argument("--write-readme", action="store_true", help="write the table to bench/README.md")
    ap.add_argument("--layers", default=",".join(map(str, SYNTHETIC_LAYERS)),
                    help="synthetic stack sizes (default %(default)s)")
    ap.add_argument("--python-layers", type=int, default=PYTHON_LAYERS,
                    help="layers of the /usr/lib/python3* stack, 0 to skip (default %(default)s)")
    ap.add_argument("--files", type=int, default=3000, help="files per synthetic stack")
    ap.add_argument("--no-mount", action="store_true", help="skip the kernel and fuse baselines")
    ap.add_argument("--tmpdir", default=None, help="where to build the stacks (default: $TMPDIR)")
    ap.add_argument("--json", help="also save the raw results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_child(args)
        return 0

    command = "python bench/bench_lookup.py" + "".join(
        " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = machine_info()
    t_start = time.monotonic()
    base = tempfile.mkdtemp(prefix="overlayfs-bench-", dir=args.tmpdir)
    try:
        specs = []
        for n in (int(x) for x in args.layers.split(",") if x):
            log(f"building synthetic-{n}")
            specs.append(_stacks.build_synthetic(base, n, nfiles=args.files))
        if args.python_layers and _stacks.python_tree_sources():
            log(f"building python3-{args.python_layers}")
            specs.append(_stacks.build_python_tree(base, args.python_layers))
        manifest = os.path.join(base, "stacks.json")
        results = os.path.join(base, "results.json")
        _stacks.save(specs, manifest)
        child = [sys.executable, os.path.abspath(__file__), "--child", manifest,
                 "--results", results] + (["--quick"] if args.quick else [])
        if os.geteuid() == 0 and shutil.which("unshare") and not args.no_mount:
            child = ["unshare", "-m", "--propagation", "private", "--"] + child
        else:
            log("not root (or --no-mount): no kernel / fuse baselines")
            child.append("--no-mount")
        subprocess.run(child, check=True)
        with open(results) as f:
            res = json.load(f)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **res}, f, indent=1)
    head = header_lines(meta, res, command)
    lines, misses = report(res)
    print("\n".join(head + [""] + lines))
    print(f"\n{len(misses)} target misses; run took {time.monotonic() - t_start:.0f} s.")
    if args.write_readme:
        write_readme(lines, head)
        log("wrote bench/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
