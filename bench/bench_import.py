"""Image import: ``LayerStore.import_image`` against ``docker load`` and ``umoci unpack``.

Image: a busybox rootfs plus a synthetic tree (``--files`` regular files of mixed sizes,
``--mb`` MB in all, in directories of 100, compressible content) imported into a private
dockerd as one base layer, and two ``docker build --network none`` layers over it (files
added, deleted, a directory replaced). ``docker save`` gives the archive (legacy format,
uncompressed layers); ``skopeo copy`` makes the OCI layout (gzip layers).

Metrics (wall clock, median of ``--repeat`` runs, each into a fresh target on the
filesystem of dockerd's data root, page cache warm for the inputs):

docker-archive
    ``LayerStore.import_image(archive)`` (apply_layer per layer, one syncfs per layer,
    diff IDs verified) vs ``docker load -i archive`` into the private dockerd's overlay2
    (the image and its layers removed before each load). Target: ours <= 0.7x.
oci (gzip)
    ``LayerStore.import_image(layout)`` vs ``umoci unpack --image layout:tag bundle`` of
    the same layout (umoci makes one rootfs, we make one dir per layer). Target: <= 0.5x.

Needs root, dockerd, docker, skopeo and umoci; ``$OVERLAYFS_DOCKER_HOST`` names a
running daemon to use, else one is started under /var/tmp and stopped at the end.
``--tmpfs`` runs everything (a dockerd of its own, its data root, the archive, the targets)
on a tmpfs in a private mount namespace: the CPU cost without the disk, whose writeback
makes the same run vary 2-10x on a VM disk.

    python bench/bench_import.py [--files 15000] [--mb 300] [--repeat 3] [--tmpfs]
                                 [--write-readme]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from overlayfs import LayerStore
from overlayfs._compress import gzip_implementation

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = "## Image import"
TAG = "ovlbench-import:1"
BASE_TAG = "ovlbench-import-base:1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _peers() -> Any:
    tests = os.path.join(HERE, "..", "tests")
    sys.path.insert(0, tests)
    spec = importlib.util.spec_from_file_location("peers", os.path.join(tests, "peers.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_tree(root: str, files: int, mb: int) -> None:
    """``files`` files totalling about ``mb`` MB, 100 per directory, sizes 1 KiB..~4x mean."""
    block = os.urandom(4096) * 16  # 64 KiB, repeated: compressible like real files
    mean = mb * 1_000_000 // max(files, 1)
    state = 12345
    for i in range(files):
        d = os.path.join(root, "usr", "share", "bench", f"d{i // 100:04d}")
        if i % 100 == 0:
            os.makedirs(d, exist_ok=True)
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        size = 1024 + (state % max(2 * mean - 1024, 1))
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            left = size
            while left > 0:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n


def build_image(docker: Any, peers: Any, work: str, files: int, mb: int) -> tuple[str, str]:
    """The archive and OCI layout paths of the bench image."""
    root = peers.busybox_rootfs(os.path.join(work, "rootfs"))
    make_tree(root, files, mb)
    docker.import_rootfs(root, BASE_TAG)
    shutil.rmtree(root)
    docker.build(
        f"FROM {BASE_TAG}\n"
        "RUN rm -rf /usr/share/bench/d0001 /usr/share/bench/d0002 && mkdir -p /opt/a "
        "&& for i in 1 2 3 4 5 6 7 8 9; do echo $i > /opt/a/$i; done\n"
        "RUN rm -rf /opt/a && mkdir /opt/a && echo new > /opt/a/new "
        "&& dd if=/dev/zero of=/opt/big bs=1M count=8 2>/dev/null\n", TAG)
    archive = docker.save(TAG, os.path.join(work, "image.tar"))
    layout = os.path.join(work, "oci")
    subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{layout}:bench"],
                   check=True)
    return archive, layout


def timed(fn: Callable[[], object], before: Callable[[], object] | None = None) -> tuple[float, float]:
    """(time of fn, time of fn + sync): the page cache is flushed before, so one run's
    writeback does not land on the next; the second figure is the cost until the result
    is on disk (docker load and umoci leave it in the page cache, import_image syncfs's
    each layer)."""
    if before is not None:
        before()
    os.sync()
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    os.sync()
    return t1 - t0, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=15000)
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tmpfs", action="store_true",
                    help="dockerd, archive and targets on a tmpfs (private mount namespace)")
    ap.add_argument("--write-readme", action="store_true",
                    help=f"write the {SECTION} section of bench/README.md")
    args = ap.parse_args()
    for tool in ("docker", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            log(f"{tool} is not installed")
            return 2
    t_start = time.monotonic()
    peers = _peers()
    docker = start_tmpfs_docker(peers) if args.tmpfs else peers.start_docker()
    work = tempfile.mkdtemp(prefix="ovl-bench-import-", dir=os.path.dirname(docker.data_root))
    try:
        log(f"building the image ({args.files} files, {args.mb} MB) ...")
        archive, layout = build_image(docker, peers, work, args.files, args.mb)
        archive_mb = os.path.getsize(archive) / 1e6
        layers = len(docker.inspect(TAG)["RootFS"]["Layers"])
        counter = [0]

        def target() -> str:
            counter[0] += 1
            path = os.path.join(work, f"t{counter[0]}")
            return path

        def ours(src: str) -> Callable[[], object]:
            def run() -> None:
                LayerStore(target()).import_image(src)
            return run

        def docker_clean() -> None:
            docker.run("rmi", "-f", TAG, BASE_TAG, check=False)
            docker.run("image", "prune", "-f", check=False)

        def docker_load() -> None:
            docker.run("load", "-q", "-i", archive)

        def umoci() -> None:
            subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", target()],
                           check=True, capture_output=True)

        raw: dict[str, list[float]] = {}
        synced: dict[str, list[float]] = {}
        log("timing ...")
        for _ in range(args.repeat):  # interleaved, one of each per round
            for name, fn, before in (
                ("import_image(docker-archive)", ours(archive), None),
                ("docker load", docker_load, docker_clean),
                ("import_image(oci layout)", ours(layout), None),
                ("umoci unpack", umoci, None),
            ):
                a, b = timed(fn, before)
                raw.setdefault(name, []).append(a)
                synced.setdefault(name, []).append(b)
                for entry in os.listdir(work):
                    if entry.startswith("t"):
                        shutil.rmtree(os.path.join(work, entry), ignore_errors=True)
        med = {k: statistics.median(v) for k, v in synced.items()}
        lines = [
            f"Image: {layers} layers, {args.files} files / {args.mb} MB in the base layer; "
            f"docker-archive {archive_mb:.0f} MB; gzip via {gzip_implementation()}; "
            f"dockerd {docker.version}, umoci {_version(['umoci', '--version'])}; "
            f"{os.cpu_count()} CPUs; median of {args.repeat}; on "
            f"{'tmpfs' if args.tmpfs else 'the ext4 VM disk'}.",
            "",
            "| operation | time (s) | time + sync (s) |",
            "|---|---|---|",
            *[f"| {k} | {statistics.median(raw[k]):.2f} | {v:.2f} |" for k, v in med.items()],
            "",
            "| target (times + sync) | limit | ratio | |",
            "|---|---|---|---|",
        ]
        met = 0
        for label, a, b, limit in (
                ("import docker-archive / docker load", "import_image(docker-archive)",
                 "docker load", 0.7),
                ("import oci / umoci unpack", "import_image(oci layout)", "umoci unpack", 0.5)):
            ratio = med[a] / med[b]
            ok = ratio <= limit
            met += ok
            lines.append(f"| {label} | <= {limit} | {ratio:.2f} | {'PASS' if ok else 'MISS'} |")
        lines += ["", f"{met} of 2 targets met. Total run time {time.monotonic() - t_start:.0f} s."]
        print("\n".join(lines))
        if args.write_readme:
            write_readme(lines)
            log(f"wrote the {SECTION} section of bench/README.md")
    finally:
        docker.run("rmi", "-f", TAG, BASE_TAG, check=False)
        shutil.rmtree(work, ignore_errors=True)
        docker.close()
    return 0


def start_tmpfs_docker(peers: Any) -> Any:
    """A private dockerd whose data root is on a tmpfs, in a mount namespace of this
    process (dockerd inherits it; everything goes when the processes exit)."""
    from overlayfs import _syscalls

    _syscalls.unshare(_syscalls.CLONE_NEWNS)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    base = tempfile.mkdtemp(prefix="ovl-bench-tmpfs-", dir="/var/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12g,mode=0755", "tmpfs", base], check=True)
    host = "unix://" + os.path.join(base, "docker.sock")
    proc = subprocess.Popen(
        ["dockerd", "--host", host, "--data-root", os.path.join(base, "root"),
         "--exec-root", os.path.join(base, "exec"), "--pidfile", os.path.join(base, "docker.pid"),
         "--iptables=false", "--bridge=none", "--storage-driver", "overlay2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env = dict(os.environ, DOCKER_HOST=host)
    for _ in range(300):
        if subprocess.run(["docker", "version"], env=env, capture_output=True).returncode == 0:
            return peers.Docker(host, proc, base)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("dockerd did not start on the tmpfs")


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.split()[-1]
    except (OSError, IndexError):
        return "?"


def write_readme(lines: list[str]) -> None:
    """Replace (or append) the ``## Image import`` section of bench/README.md."""
    doc = __doc__.split("\n\n", 1)[1].strip()
    section = "\n".join([
        SECTION, "",
        "`bench_import.py` times importing a whole image into a `LayerStore` against "
        "`docker load` of the same archive and `umoci unpack` of the same OCI layout. "
        "Run it as root; the default run takes a few minutes; `--write-readme` rewrites "
        "only this section of the file.",
        "", "```", doc, "```", "", *lines, ""])
    path = os.path.join(HERE, "README.md")
    with open(path, encoding="utf-8", newline="") as f:
        old = f.read()
    i = old.find("\n" + SECTION + "\n")
    if i < 0:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        j = old.find("\n## ", i + 1)
        new = old[:i + 1] + section + (old[j:] if j >= 0 else "")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(new)


if __name__ == "__main__":
    sys.exit(main())
