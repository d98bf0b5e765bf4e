"""Mount + unmount time of kernel overlays made by ``overlayfs.mount``, per strategy.

Metric: wall-clock time of one ``mount()`` followed by one ``unmount()`` (median of
``--repeat`` runs), for stacks of 1, 64 and 500 lower layers plus an upper, through
each strategy: ``new-api`` (fsopen + one ``lowerdir+`` fsconfig per layer, layers passed as
fds), ``new-api-path`` (the same with path strings) and ``legacy`` (mount(2), shortened
with relative paths or short links when the option string would pass a page).

Baseline: util-linux ``mount -t overlay overlay -o lowerdir=…`` followed by ``umount``
(each a process spawn) on the same layers, for the sizes whose option string fits in a
page; where the absolute paths do not fit, it runs from the layers' directory with
relative names, as a user would have to. The ratio column is ours / util-linux.

The ``long`` series repeats the 500-layer case with 200+ character layer paths full of
spaces, colons, commas and backslashes, where util-linux cannot be used at all.

Everything runs in a private mount namespace (a forked child) under a temporary
directory that is removed afterwards. Needs root (or run under ``unshare -Urm``).

    python bench/bench_mount.py [--sizes 1,64,500] [--repeat 15] [--no-long]
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

om = importlib.import_module("overlayfs._mount")
mopts = importlib.import_module("overlayfs._mountopts")
ns = importlib.import_module("overlayfs._namespace")

STRATEGIES = ("new-api", "new-api-path", "legacy")


def make_stack(base: str, count: int, long_names: bool) -> tuple[list[str], str, str, str]:
    """``count`` lower layers (one file each, plus a shared name), an upper, a work dir and
    a mount point under ``base``."""
    os.makedirs(base)
    tail = " sp:co,ba\\ " + "n" * 200 if long_names else ""
    lowers = []
    for i in range(count):
        layer = os.path.join(base, f"{i}{tail}")
        os.mkdir(layer)
        with open(os.path.join(layer, f"f{i}"), "w") as fh:
            fh.write(str(i))
        lowers.append(layer)
    dirs = [os.path.join(base, name) for name in ("up", "wk", "mnt")]
    for d in dirs:
        os.mkdir(d)
    return lowers, dirs[0], dirs[1], dirs[2]


def time_ours(lowers: list[str], upper: str, work: str, target: str, strategy: str,
              repeat: int) -> tuple[float, str]:
    samples = []
    used = ""
    for _ in range(repeat + 1):  # the first run warms the dentry cache and is dropped
        start = time.perf_counter()
        m = om.mount(target, lowers, upper, work, strategy=strategy)  # type: ignore[arg-type]
        m.unmount()
        samples.append(time.perf_counter() - start)
        used = m.strategy
    return statistics.median(samples[1:]), used


def time_util_linux(lowers: list[str], upper: str, work: str, target: str,
                    repeat: int) -> tuple[float | None, str]:
    if shutil.which("mount") is None:
        return None, "no util-linux mount"
    limit = os.sysconf("SC_PAGE_SIZE") - 1
    cwd = None
    data = om.legacy_options(lowers, upper, work)
    if len(data.encode()) > limit:
        cwd = os.path.dirname(upper)
        data = om.legacy_options([os.path.relpath(p, cwd) for p in lowers],
                                 os.path.relpath(upper, cwd), os.path.relpath(work, cwd))
        if len(data.encode()) > limit:
            return None, f"option string of {len(data.encode())} bytes passes a page"
    samples = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", data, target], check=True,
                       cwd=cwd)
        subprocess.run(["umount", target], check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples[1:]), "relative names" if cwd else "absolute names"


def run(sizes: list[int], repeat: int, long_series: bool) -> list[dict[str, Any]]:
    """(In the private namespace child.) Build, measure, clean up."""
    rows: list[dict[str, Any]] = []
    root = tempfile.mkdtemp(prefix="ovl-bench-")
    try:
        series = [(n, False) for n in sizes] + ([(500, True)] if long_series else [])
        for count, long_names in series:
            base = os.path.join(root, f"{count}{'-long' if long_names else ''}")
            lowers, upper, work, target = make_stack(base, count, long_names)
            reps = max(3, repeat // 3) if count >= 500 else repeat
            baseline, how = (None, "n/a: long paths with ':' ',' '\\'") if long_names else \
                time_util_linux(lowers, upper, work, target, reps)
            for strategy in STRATEGIES:
                seconds, used = time_ours(lowers, upper, work, target, strategy, reps)
                rows.append({"layers": count, "long": long_names, "strategy": used,
                             "ms": seconds * 1e3,
                             "util_linux_ms": None if baseline is None else baseline * 1e3,
                             "util_linux": how})
            shutil.rmtree(base)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,64,500",
                        help="comma-separated lower-layer counts (default 1,64,500)")
    parser.add_argument("--repeat", type=int, default=15, help="runs per case (median)")
    parser.add_argument("--no-long", action="store_true",
                        help="skip the 500-layer series with 200+ character paths")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(not 1 <= n <= mopts.MAX_LOWERS for n in sizes):
        parser.error(f"layer counts must be within 1..{mopts.MAX_LOWERS}")
    rows = ns.run_in_private_namespace(run, sizes, args.repeat, not args.no_long)
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs; mount+unmount, median ms")
    print(f"{'layers':>10}  {'strategy':<16} {'ours ms':>9} {'util-linux ms':>14} "
          f"{'ratio':>6}  util-linux")
    for row in rows:
        label = f"{row['layers']}{' long' if row['long'] else ''}"
        base = row["util_linux_ms"]
        ratio = f"{row['ms'] / base:6.2f}" if base else "     -"
        base_text = f"{base:14.2f}" if base else f"{'-':>14}"
        print(f"{label:>10}  {row['strategy']:<16} {row['ms']:9.2f} {base_text} {ratio}  "
              f"{row['util_linux']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
