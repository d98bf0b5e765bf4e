"""Layers out as tars: export of a layer dir, flatten of a Stack, peak RSS.

Metrics (wall clock, median of ``--repeat`` warm runs, ours and the baseline run
alternately so that a change in the machine's load weighs on both):

* ``export``: ``overlayfs.export.export_layer`` of a generated layer dir (15,236 entries:
  13,384 files, 1,745 dirs, 107 symlinks, ~300 MB, the shape of docs/oci-layers.md §3)
  against GNU ``tar -cf`` of the same dir (``-C dir .``), both to a tmpfs file
  (/dev/shm).  Ours also computes the diff ID (sha256) while writing; tar does not.
  To /dev/null: ours writes every byte; GNU tar detects /dev/null and skips reading
  file data altogether, so its /dev/null time is shown for information only.
  ``tarfile.add`` (PAX) of the same dir is the stdlib reference.
* ``flatten``: ``overlayfs.export.flatten`` of a ``Stack`` (fresh each time, and one kept
  open, warm as the mount is) over 4 layers (the
  layer above at the bottom, three change layers with new and modified files,
  whiteouts and an opaque directory) against GNU ``tar -cf`` of a warm kernel overlay
  mount of the same layers (made by ``overlayfs.mount`` in a private mount namespace,
  tar run inside it), both to a tmpfs file.
* ``docker export``: when a dockerd is reachable (``$OVERLAYFS_DOCKER_HOST``, else one
  started privately as tests/peers.py does, if ``dockerd`` is installed): the merged
  tree imported as an image, a container created from it, ``docker export -o`` it to
  tmpfs, against our flatten of that container's own layers (its overlay2 diff and
  init layers) to tmpfs.
* ``rss``: peak RSS (ru_maxrss) of a child process exporting a layer with a 1 GiB
  (sparse) file to /dev/null, and of the same child only importing overlayfs.

Targets (issue 10): export <= 1.0x tar -cf; flatten <= 1.0x tar -cf of a warm mount;
flatten <= 0.5x docker export; peak RSS <= 64 MiB.  Needs root.

    python bench/bench_export.py [--repeat 5] [--dir /var/tmp] [--no-docker] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Any

from overlayfs import Stack, mount, run_in_private_namespace
from overlayfs.export import export_layer, flatten

SHM = "/dev/shm"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_layer(root: str, seed: int = 10) -> dict:
    """The §3 layer shape: 1,745 dirs, 13,384 files, 107 symlinks, ~300 MB."""
    rng = random.Random(seed)
    os.makedirs(root)
    dirs = [""]
    for i in range(1745):
        parent = rng.choice(dirs[-200:]) if len(dirs) > 1 and rng.random() < 0.7 else ""
        d = os.path.join(parent, f"dir{i:04d}")
        os.mkdir(os.path.join(root, d))
        dirs.append(d)
    total = 0
    for i in range(13384):
        d = rng.choice(dirs)
        size = rng.randint(0, 40 * 1024) if i % 700 else 2 * 1024 * 1024
        with open(os.path.join(root, d, f"file{i:05d}.dat"), "wb") as f:
            f.write(rng.randbytes(size))
        total += size
    for i in range(107):
        d = rng.choice(dirs)
        os.symlink(f"../target{i}", os.path.join(root, d, f"link{i:03d}"))
    return {"entries": 1745 + 13384 + 107, "bytes": total}


def make_changes(base: str, root: str, seed: int) -> None:
    """A change layer over ``base``: new and modified files, whiteouts, an opaque dir."""
    rng = random.Random(seed)
    os.makedirs(root)
    names = []
    for dirpath, _, filenames in os.walk(base):
        rel = os.path.relpath(dirpath, base)
        names += [os.path.normpath(os.path.join(rel, n)) for n in filenames]
    rng.shuffle(names)
    for i, rel in enumerate(names[:1200]):
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if i % 4 == 0:
            os.mknod(p, 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
        else:
            with open(p, "wb") as f:
                f.write(rng.randbytes(rng.randint(0, 40 * 1024)))
    opq = os.path.join(root, f"dir{seed:04d}")
    os.makedirs(opq, exist_ok=True)
    os.setxattr(opq, "trusted.overlay.opaque", b"y")
    with open(os.path.join(opq, "fresh"), "wb") as f:
        f.write(b"new\n")


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired(a: Callable[[], Any], b: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Medians of a and b run alternately (a, b, a, b...), after one warm run each: a
    machine whose load changes during the run weighs on both alike."""
    a()
    b()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, times in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def gnu_tar(src: str, out: str) -> None:
    # Exit status 1: warnings.  Through a mount, readdir lists a few names whited out
    # in a middle layer whose lookup then fails ("File removed before we read it").
    p = subprocess.run(["tar", "-cf", out, "-C", src, "."], stderr=subprocess.DEVNULL)
    if p.returncode not in (0, 1):
        raise RuntimeError(f"tar -cf failed ({p.returncode})")


def _flatten_and_tar_of_mount(lowers: list[str], mnt: str, out: str, repeat: int) -> dict:
    """In a private mount namespace: mount; then our flatten (of a fresh Stack each time,
    and of one Stack kept open: warm, as the mount is) and tar -cf of the warm mount,
    alternately."""
    m = mount(mnt, lowers)
    out2 = out + ".tar"
    try:
        fresh, tar1 = paired(lambda: _flatten(lowers, out), lambda: gnu_tar(mnt, out2), repeat)
        with Stack(lowers) as st:
            warm, tar2 = paired(lambda: flatten(st, out), lambda: gnu_tar(mnt, out2), repeat)
        return {"fresh": fresh, "tar_fresh": tar1, "warm": warm, "tar_warm": tar2}
    finally:
        m.unmount()
        os.unlink(out2)


def _flatten(lowers: list[str], out: str) -> None:
    with Stack(lowers) as st:
        flatten(st, out)


def rss_child(layer: str) -> dict:
    code = ("import resource, sys\nfrom overlayfs.export import export_layer\n"
            "if sys.argv[1] == 'export': export_layer(sys.argv[2], '/dev/null')\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = {}
    for what in ("import", "export"):
        p = subprocess.run([sys.executable, "-c", code, what, layer], capture_output=True, text=True, check=True)
        out[what] = int(p.stdout) / 1024
    return out


def docker_export(base: str, flat_tar: str, repeat: int) -> dict | None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    try:
        import peers  # type: ignore[import-not-found]
        docker = peers.start_docker()
    except BaseException as e:  # no docker: skipped (pytest's Skipped is a BaseException)
        log(f"docker export skipped: {e}")
        return None
    try:
        docker.run("import", flat_tar, "ovlbench-export:1")
        cid = docker.run("create", "ovlbench-export:1", "/x").stdout.strip()
        try:
            out = os.path.join(SHM, "bench-docker.tar")
            data = json.loads(docker.run("container", "inspect", cid).stdout)[0]["GraphDriver"]["Data"]
            layers = [data["UpperDir"], *data["LowerDir"].split(":")]
            t_ours, t_docker = paired(lambda: _flatten(layers, out),
                                      lambda: docker.run("export", "-o", out, cid), repeat)
            os.unlink(out)
            return {"docker": t_docker, "ours": t_ours, "version": docker.version}
        finally:
            docker.run("rm", cid, check=False)
            docker.run("rmi", "ovlbench-export:1", check=False)
    finally:
        docker.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp", help="where the layers are made (default: /var/tmp)")
    ap.add_argument("--no-docker", action="store_true")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("needs root")
        return 2
    t0 = time.perf_counter()
    base = tempfile.mkdtemp(prefix="ovl-bench-export-", dir=args.dir)
    out = os.path.join(SHM, "bench-export.tar")
    res: dict[str, Any] = {}
    try:
        layer = os.path.join(base, "base")
        shape = make_layer(layer)
        res["layer"] = shape
        log(f"layer: {shape['entries']} entries, {shape['bytes'] / 1e6:.0f} MB")
        out2 = os.path.join(SHM, "bench-export-tar.tar")
        res["export_tmpfs"], res["tar_tmpfs"] = paired(lambda: export_layer(layer, out),
                                                       lambda: gnu_tar(layer, out2), args.repeat)
        res["tar_size"] = os.path.getsize(out2)
        os.unlink(out2)
        res["export_null"], res["tar_null"] = paired(lambda: export_layer(layer, "/dev/null"),
                                                     lambda: gnu_tar(layer, "/dev/null"), args.repeat)
        t = time.perf_counter()
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
            for name in sorted(os.listdir(layer)):
                tf.add(os.path.join(layer, name), arcname=name)
        res["tarfile"] = time.perf_counter() - t
        log(f"export {res['export_tmpfs']:.3f}s, tar {res['tar_tmpfs']:.3f}s, tarfile {res['tarfile']:.3f}s")

        lowers = [os.path.join(base, f"c{i}") for i in (3, 2, 1)]
        for i, d in zip((3, 2, 1), lowers, strict=True):
            make_changes(layer, d, i)
        lowers.append(layer)
        mnt = os.path.join(base, "mnt")
        os.mkdir(mnt)
        fl = run_in_private_namespace(_flatten_and_tar_of_mount, lowers, mnt, out, args.repeat)
        res["flatten_tmpfs"], res["tar_mount_tmpfs"] = fl["fresh"], fl["tar_fresh"]
        res["flatten_warm_tmpfs"], res["tar_mount_tmpfs_2"] = fl["warm"], fl["tar_warm"]
        flat = os.path.join(base, "flat.tar")
        _flatten(lowers, flat)
        log(f"flatten {res['flatten_tmpfs']:.3f}s, tar of a mount {res['tar_mount_tmpfs']:.3f}s")

        if not args.no_docker:
            res["docker"] = docker_export(layer, flat, args.repeat)

        big = os.path.join(base, "big")
        os.mkdir(big)
        with open(os.path.join(big, "sparse-1g"), "wb") as f:
            f.truncate(1 << 30)
        res["rss_mib"] = rss_child(big)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        for f in (out,):
            if os.path.exists(f):
                os.unlink(f)
    rows = [
        ("export layer -> tmpfs: ours / tar -cf", res["export_tmpfs"] / res["tar_tmpfs"], "<= 1.0"),
        ("export layer: tarfile.add / ours", res["tarfile"] / res["export_tmpfs"], ">= 2 (§3)"),
        ("flatten 4 layers -> tmpfs, fresh Stack: ours / tar -cf of a warm mount",
         res["flatten_tmpfs"] / res["tar_mount_tmpfs"], "<= 1.0"),
        ("flatten 4 layers -> tmpfs, warm Stack: ours / tar -cf of a warm mount",
         res["flatten_warm_tmpfs"] / res["tar_mount_tmpfs_2"], "<= 1.0"),
    ]
    if res.get("docker"):
        rows.append(("flatten: ours / docker export", res["docker"]["ours"] / res["docker"]["docker"], "<= 0.5"))
    rows.append(("peak RSS exporting 1 GiB (MiB)", res["rss_mib"]["export"], "<= 64"))
    print(f"layer: {res['layer']['entries']} entries, {res['layer']['bytes'] / 1e6:.0f} MB of data, "
          f"tar {res['tar_size'] / 1e6:.0f} MB")
    print(f"export -> tmpfs {res['export_tmpfs']:.3f} s, -> /dev/null {res['export_null']:.3f} s; "
          f"tar -cf -> tmpfs {res['tar_tmpfs']:.3f} s, -> /dev/null {res['tar_null']:.3f} s (no data read); "
          f"tarfile.add {res['tarfile']:.3f} s")
    print(f"flatten -> tmpfs: fresh Stack {res['flatten_tmpfs']:.3f} s (tar -cf of a warm mount "
          f"{res['tar_mount_tmpfs']:.3f} s), warm Stack {res['flatten_warm_tmpfs']:.3f} s "
          f"(tar {res['tar_mount_tmpfs_2']:.3f} s)")
    if res.get("docker"):
        d = res["docker"]
        print(f"docker {d['version']}: docker export {d['docker']:.3f} s; our flatten of its layers {d['ours']:.3f} s")
    print(f"peak RSS: export of 1 GiB {res['rss_mib']['export']:.1f} MiB (import alone {res['rss_mib']['import']:.1f} MiB)")
    print()
    print("| metric | target | value |")
    print("|---|---|---|")
    for name, v, target in rows:
        print(f"| {name} | {target} | {v:.2f} |")
    print(f"\nTotal run time {time.perf_counter() - t0:.0f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
