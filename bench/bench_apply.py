"""Apply of a layer tar: overlayfs.apply_layer against GNU tar and tarfile.

python bench/bench_apply.py [--quick] [--write-readme]

Layer: generated once per run (fixed seed) in tmpfs, shaped like the
287 MB / 15,236-entry layer of docs/oci-layers.md §3: 15,300 entries
(13,400 files, 1,790 dirs, 110 symlinks), ~300 MB, file sizes log-uniform
from 32 B to 185 KiB (5 % empty) plus seven 4 MiB files, written as a PAX tar by tarfile
(ustar headers, PAX only where needed: what Go writes).

Runs (each the median of 3, a fresh target dir each time, the tar in the
page cache; --quick: 1 run):

tmpfs   into /dev/shm: apply_layer(layer mode, sync=False) vs GNU
        ``tar -xf`` (as root: --same-owner, -p) vs
        ``tarfile.extractall(filter="tar")``; targets apply <= 0.8x tar,
        tarfile >= 3x apply.  Also the C core alone (_core._Applier fed
        from one thread, no sha256): apply_layer hashes on a third
        thread, which costs nothing only when a second core is free.
ext4    onto a fresh ext4 loop image (4 GiB sparse file under /var/tmp):
        apply_layer with its one syncfs vs ``tar -xf`` + ``sync -f``;
        target <= 1.0x.  The image is made again for every run.
gzip    the same layer gzip'd (level 6) into tmpfs: apply_layer vs
        decompress-only (the same reader, no apply) and ``tar -xzf``.
RSS     peak RSS (VmHWM of a child process) of applying a 1 GiB layer (eight
        128 MiB random files and 2,000 small ones) from a file into tmpfs,
        minus the child's RSS before it; target <= 64 MiB.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = "## Apply"
IMAGE_SIZE = 4 << 30


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_layer(root: str, out: str, seed: int = 10) -> dict:
    rnd = random.Random(seed)
    src = os.path.join(root, "src")
    dirs = [""]
    for i in range(1790):
        parent = rnd.choice(dirs[-200:]) if dirs else ""
        d = os.path.join(parent, f"d{i:04d}")
        os.makedirs(os.path.join(src, d))
        dirs.append(d)
    blob = rnd.randbytes(1 << 20)
    total = 0
    for i in range(13400):
        size = 0 if rnd.random() < 0.05 else int(2 ** rnd.uniform(5, 17.5))
        if i % 2000 == 0:
            size = 4 << 20
        d = rnd.choice(dirs)
        with open(os.path.join(src, d, f"f{i:05d}.dat"), "wb") as f:
            left = size
            while left:
                n = min(left, len(blob))
                f.write(blob[:n])
                left -= n
        total += size
    for i in range(110):
        d = rnd.choice(dirs)
        os.symlink(f"../f{i:05d}.dat", os.path.join(src, d, f"l{i:03d}"))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(src, arcname=".")
    shutil.rmtree(src)
    return {"entries": 1 + 1790 + 13400 + 110, "data": total, "tar": os.path.getsize(out)}


def timed(fn, runs: int, prepare=None) -> float:
    times = []
    for _ in range(runs):
        ctx = prepare() if prepare else None
        t0 = time.perf_counter()
        fn(ctx)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fresh(base: str, name: str, create: bool) -> str:
    p = os.path.join(base, name)
    if os.path.lexists(p):
        shutil.rmtree(p)
    if create:
        os.mkdir(p)
    return p


def bench_tmpfs(layer: str, runs: int) -> dict:
    from overlayfs import apply_layer

    base = tempfile.mkdtemp(prefix="bench-apply-", dir="/dev/shm")
    try:
        res = {}
        res["apply"] = timed(lambda d: apply_layer(layer, d, sync=False), runs,
                             lambda: fresh(base, "t", False))
        res["tar"] = timed(lambda d: subprocess.run(["tar", "-xpf", layer, "-C", d], check=True), runs,
                           lambda: fresh(base, "t", True))

        def core(d):
            # the C core alone: one thread, no diff ID (what the pipeline's
            # second thread hides when a core is free)
            from overlayfs import _core
            a = _core._Applier(d, [], False, False, _core.APPLY_SAME_OWNER | _core.APPLY_DEVICES
                               | _core.APPLY_NO_SYNC, 0)
            buf = bytearray(1 << 20)
            with open(layer, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    a.feed(memoryview(buf)[:n])
            a.end()
            a.close()
        res["core"] = timed(core, runs, lambda: fresh(base, "t", False))

        def tf(d):
            with tarfile.open(layer) as t:
                t.extractall(d, filter="tar")
        res["tarfile"] = timed(tf, runs, lambda: fresh(base, "t", True))
        return res
    finally:
        shutil.rmtree(base)


def bench_gzip(layer: str, runs: int) -> dict:
    from overlayfs import _compress, apply_layer

    base = tempfile.mkdtemp(prefix="bench-apply-", dir="/dev/shm")
    try:
        gz = os.path.join(base, "layer.tar.gz")
        subprocess.run(f"gzip -6 -c {layer} > {gz}", shell=True, check=True)
        res = {"impl": _compress.gzip_implementation()}
        res["apply"] = timed(lambda d: apply_layer(gz, d, sync=False), runs, lambda: fresh(base, "t", False))

        def decomp(_):
            with open(gz, "rb") as f:
                r = _compress.open_decompressed(f)
                while r.read_chunk():
                    pass
        res["decompress"] = timed(decomp, runs)
        res["tar"] = timed(lambda d: subprocess.run(["tar", "-xzpf", gz, "-C", d], check=True), runs,
                           lambda: fresh(base, "t", True))
        return res
    finally:
        shutil.rmtree(base)


def _ext4_run(layer: str, how: str) -> float:
    """One run on a fresh ext4 loop image (made, mounted, timed, unmounted)."""
    from overlayfs import apply_layer

    img_dir = tempfile.mkdtemp(prefix="bench-apply-img-", dir="/var/tmp")
    img = os.path.join(img_dir, "ext4.img")
    mnt = os.path.join(img_dir, "mnt")
    os.mkdir(mnt)
    with open(img, "wb") as f:
        f.truncate(IMAGE_SIZE)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img],
                   check=True, capture_output=True)
    dev = subprocess.run(["losetup", "-f", "--show", img], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        subprocess.run(["mount", dev, mnt], check=True)
        try:
            d = os.path.join(mnt, "t")
            if how == "tar":
                os.mkdir(d)
            t0 = time.perf_counter()
            if how == "apply":
                apply_layer(layer, d)  # one syncfs before publishing
            else:
                subprocess.run(["tar", "-xpf", layer, "-C", d], check=True)
                subprocess.run(["sync", "-f", d], check=True)
            return time.perf_counter() - t0
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        shutil.rmtree(img_dir)


def bench_ext4(layer: str, runs: int) -> dict:
    res: dict = {"apply": [], "tar": []}
    for _ in range(runs):
        for how in ("apply", "tar"):
            res[how].append(_ext4_run(layer, how))
    return {k: statistics.median(v) for k, v in res.items()}


_RSS_CHILD = r"""
import os, resource, sys, time
from overlayfs import apply_layer

def hwm():
    # VmHWM: the peak RSS of this process image (ru_maxrss can carry the
    # parent's high-water mark over fork+exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))

before = hwm()
t0 = time.perf_counter()
apply_layer(sys.argv[1], sys.argv[2], sync=False)
el = time.perf_counter() - t0
after = hwm()
print(before, after, el)
"""


def bench_rss() -> dict:
    base = tempfile.mkdtemp(prefix="bench-apply-", dir="/dev/shm")
    try:
        src = os.path.join(base, "src")
        os.mkdir(src)
        rnd = random.Random(3)
        blob = rnd.randbytes(8 << 20)
        for i in range(8):
            with open(os.path.join(src, f"big{i}"), "wb") as f:
                for _ in range(16):
                    f.write(blob)
        for i in range(2000):
            with open(os.path.join(src, f"s{i}"), "wb") as f:
                f.write(blob[: rnd.randrange(1, 4096)])
        layer = os.path.join("/var/tmp", f"bench-apply-1g-{os.getpid()}.tar")
        subprocess.run(["tar", "-cf", layer, "-C", src, "."], check=True)
        shutil.rmtree(src)
        try:
            out = subprocess.run([sys.executable, "-c", _RSS_CHILD, layer, os.path.join(base, "t")],
                                 check=True, capture_output=True, text=True).stdout.split()
            size = os.path.getsize(layer)
        finally:
            os.unlink(layer)
        before, after, el = int(out[0]), int(out[1]), float(out[2])
        return {"size": size, "before_kib": before, "peak_kib": after, "delta_kib": after - before,
                "seconds": el}
    finally:
        shutil.rmtree(base)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(meta: dict, tm: dict, ext: dict | None, gz: dict, rss: dict, cmd: str) -> list[str]:
    mb = meta["tar"] / 1e6
    load = os.getloadavg()[0]
    lines = [
        f"Command: `{cmd}`, {time.strftime('%Y-%m-%d')}, kernel {os.uname().release}, "
        f"{os.cpu_count()} CPUs, GNU tar {subprocess.run(['tar', '--version'], capture_output=True, text=True).stdout.split()[3]}, "
        f"Python {sys.version.split()[0]}; load average {load:.1f} at the end (other jobs shared the 2 CPUs).",
        "",
        f"Layer: {meta['entries']:,} entries, {meta['data'] / 1e6:.0f} MB of file data, tar {mb:.0f} MB.",
        "",
        "| run | time | MB/s of tar | ratio | target |",
        "|---|---|---|---|---|",
        f"| tmpfs: apply_layer | {tm['apply']:.3f} s | {mb / tm['apply']:.0f} | 1.00 | |",
        f"| tmpfs: GNU `tar -xpf` | {tm['tar']:.3f} s | {mb / tm['tar']:.0f} | apply/tar = {tm['apply'] / tm['tar']:.2f} | "
        f"<= 0.8 {verdict(tm['apply'] / tm['tar'] <= 0.8)} |",
        f"| tmpfs: C core alone (1 thread, no sha256) | {tm['core']:.3f} s | {mb / tm['core']:.0f} | "
        f"core/tar = {tm['core'] / tm['tar']:.2f} | |",
        f"| tmpfs: `tarfile.extractall` | {tm['tarfile']:.3f} s | {mb / tm['tarfile']:.0f} | "
        f"tarfile/apply = {tm['tarfile'] / tm['apply']:.2f} | >= 3 {verdict(tm['tarfile'] / tm['apply'] >= 3)} |",
    ]
    if ext:
        lines += [
            f"| ext4: apply_layer (one syncfs) | {ext['apply']:.3f} s | {mb / ext['apply']:.0f} | 1.00 | |",
            f"| ext4: `tar -xpf` + `sync -f` | {ext['tar']:.3f} s | {mb / ext['tar']:.0f} | "
            f"apply/tar = {ext['apply'] / ext['tar']:.2f} | <= 1.0 {verdict(ext['apply'] / ext['tar'] <= 1.0)} |",
        ]
    lines += [
        f"| gzip -6 ({gz['impl']}): apply_layer | {gz['apply']:.3f} s | {mb / gz['apply']:.0f} | 1.00 | |",
        f"| gzip: decompress only | {gz['decompress']:.3f} s | {mb / gz['decompress']:.0f} | "
        f"apply/decompress = {gz['apply'] / gz['decompress']:.2f} | |",
        f"| gzip: GNU `tar -xzpf` | {gz['tar']:.3f} s | {mb / gz['tar']:.0f} | apply/tar = {gz['apply'] / gz['tar']:.2f} | |",
        "",
        f"Peak RSS applying a {rss['size'] / 2**30:.2f} GiB layer (file -> tmpfs, {rss['seconds']:.2f} s): "
        f"{rss['peak_kib'] / 1024:.1f} MiB, {rss['delta_kib'] / 1024:.1f} MiB above the child's "
        f"{rss['before_kib'] / 1024:.1f} MiB before the call; target <= 64 MiB "
        f"{verdict(rss['peak_kib'] / 1024 <= 64 or rss['delta_kib'] / 1024 <= 64)}.",
    ]
    return lines


def write_readme(lines: list[str]) -> None:
    doc = __doc__.split("\n\n", 1)[1].strip()
    section = "\n".join([SECTION, "", "`bench_apply.py` times `overlayfs.apply_layer` (csrc/apply.c) against "
                         "GNU tar and `tarfile`.  Run it as root (loop image, owners); about 2 minutes "
                         "(`--quick` about 1); `--write-readme` rewrites only this section.", "", "```", doc,
                         "```", "", "### Latest results", "", *lines, ""])
    path = os.path.join(HERE, "README.md")
    with open(path, encoding="utf-8") as f:
        old = f.read()
    i = old.find("\n" + SECTION + "\n")
    if i < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        nxt = old.find("\n## ", i + len(SECTION) + 2)
        tail = old[nxt + 1:] if nxt >= 0 else ""
        new = old[:i + 1] + section + ("\n" + tail if tail else "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one run of each")
    ap.add_argument("--no-ext4", action="store_true", help="skip the loop-image runs")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("bench_apply.py needs root (loop devices, owners)")
        return 1
    runs = 1 if args.quick else 3
    work = tempfile.mkdtemp(prefix="bench-apply-layer-", dir="/dev/shm")
    try:
        layer = os.path.join(work, "layer.tar")
        log("making the layer ...")
        meta = make_layer(work, layer)
        log(f"  {meta}")
        log("tmpfs ...")
        tm = bench_tmpfs(layer, runs)
        log(f"  {tm}")
        ext = None
        if not args.no_ext4:
            log("ext4 ...")
            ext = bench_ext4(layer, runs)
            log(f"  {ext}")
        log("gzip ...")
        gz = bench_gzip(layer, runs)
        log(f"  {gz}")
    finally:
        shutil.rmtree(work)
    log("peak RSS, 1 GiB ...")
    rss = bench_rss()
    log(f"  {rss}")
    cmd = "python bench/bench_apply.py" + (" --quick" if args.quick else "")
    lines = report(meta, tm, ext, gz, rss, cmd)
    print("\n".join(lines))
    if args.write_readme:
        write_readme(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())



