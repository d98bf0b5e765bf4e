"""Command line: ``python -m overlayfs demo | tree LOWER... | check [PATH] | diff | export | squash``.

demo  builds a small layer stack (whiteouts, an opaque directory, a symlink)
      in a temp dir, prints the merged tree and the layer each path comes
      from, and -- where the kernel lets us mount -- compares it with a real
      overlay mount made in a private mount namespace.
tree  prints the merged tree of the given layers (top-most first).
check reports whether this machine can mount overlays here: kernel version,
      overlay support, d_type and xattrs on the backing filesystem, the new
      mount API, privileges.

Images (IMAGE := oci:DIR[:REF] | oci-archive:TAR[:REF] | docker-archive:TAR[:REPO:TAG],
or a path, auto-detected; - reads stdin):
layers IMAGE  lists the layers: digest, diff ID, media type, size, chain ID.
diffid LAYER  prints the diff ID (sha256 of the uncompressed tar) of a layer blob.
unpack IMAGE STORE_DIR  imports the image into an overlay2-style layer store.

apply applies a layer tar (plain, gzip, zstd; "-" for stdin) to a new layer
      directory as dockerd's overlay2 does, or with --rootfs into an existing
      tree (``python -m overlayfs apply --help``).

diff    UPPER -o OUT|- [--compress gzip|zstd] [--source-date-epoch N] [--all-xattrs] [--json]
        exports a layer dir as an OCI layer tar (graphdriver Diff).
export  LAYER... -o OUT|-  flattens layers (top-most first) into one tar, no mount.
squash  LAYER... -o OUT [--below DIR]...  squashes layers into one layer tar.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, cast

from . import Stack
from ._check import check

if TYPE_CHECKING:  # pragma: no cover
    from .image import Image


def _layer_name(stack: Stack, idx: int) -> str:
    return "upper" if idx == 0 else f"lower{idx}"


def print_tree(stack: Stack, out=sys.stdout) -> list[str]:
    """Print every merged path with its type and supplying layer, depth
    first; return the paths."""
    paths: list[str] = []

    def visit(dirpath: str, depth: int) -> None:
        for entry in sorted(stack.scandir(dirpath), key=lambda e: e.name):
            paths.append(entry.path)
            if entry.is_symlink():
                kind = "link -> " + stack.readlink(entry.path)
            elif entry.is_dir():
                kind = "dir"
            else:
                kind = f"file {entry.stat().st_size} B"
            print(f"  {'  ' * depth}{entry.name:<{18 - 2 * depth}} {kind:<24} "
                  f"from {_layer_name(stack, entry.layer)}", file=out)
            if entry.is_dir(follow_symlinks=False):
                visit(entry.path, depth + 1)

    visit("", 0)
    return paths


def _build_demo(root: str) -> tuple[list[str], str, str]:
    """Three lowers and an upper with a whiteout, an opaque dir and a symlink."""
    def w(rel: str, text: str) -> None:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    w("base/etc/os-release", "NAME=base\n")
    w("base/etc/motd", "hello from the base layer\n")
    w("base/app/config/defaults.ini", "[base]\n")
    w("base/app/config/legacy.ini", "[legacy]\n")
    w("base/bin/tool", "#!/bin/sh\necho v1\n")
    w("mid/bin/tool", "#!/bin/sh\necho v2\n")
    w("mid/app/config/site.ini", "[site]\n")
    w("top/etc/motd", "hello from the top layer\n")
    os.makedirs(os.path.join(root, "top/app/config"))
    w("top/app/config/only.ini", "[fresh]\n")
    os.symlink("../bin/tool", os.path.join(root, "top/etc/tool-link"))
    os.makedirs(os.path.join(root, "upper/etc"))
    os.makedirs(os.path.join(root, "work"))
    # Delete etc/os-release in the upper layer: a whiteout (char device 0:0).
    os.mknod(os.path.join(root, "upper/etc/os-release"), 0o600 | 0o020000, os.makedev(0, 0))
    # Replace app/config wholesale in the top lower: an opaque directory.
    os.setxattr(os.path.join(root, "top/app/config"), "trusted.overlay.opaque", b"y")
    lowers = [os.path.join(root, n) for n in ("top", "mid", "base")]
    return lowers, os.path.join(root, "upper"), os.path.join(root, "work")


_KERNEL_VIEW = r"""
import json, os, subprocess, sys
lowers, upper, work, target = json.loads(sys.argv[1])
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}", target], check=True)
try:
    paths = []
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames + filenames:
            paths.append(os.path.relpath(os.path.join(dirpath, name), target))
    print(json.dumps(sorted(paths)))
finally:
    subprocess.run(["umount", target], check=True)
"""


def _kernel_paths(lowers: list[str], upper: str, work: str, target: str) -> list[str] | str:
    """Merged paths through a real overlay mount in a private mount namespace,
    or a string saying why that was not possible."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return "not root, or util-linux unshare/mount missing"
    os.makedirs(target, exist_ok=True)
    proc = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", _KERNEL_VIEW,
         json.dumps([lowers, upper, work, target])],
        capture_output=True, text=True)
    if proc.returncode:
        return proc.stderr.strip() or f"exit status {proc.returncode}"
    return json.loads(proc.stdout)


def demo() -> int:
    with tempfile.TemporaryDirectory(prefix="overlayfs-demo-") as root:
        lowers, upper, work = _build_demo(root)
        print(f"Layer stack in {root}: upper, then lowers top-most first:")
        print(f"  upper  = {upper}")
        for i, lower in enumerate(lowers, 1):
            print(f"  lower{i} = {lower}")
        print("\nMerged view (overlayfs.Stack, no mount):")
        with Stack(lowers, upper, work) as st:
            ours = sorted(print_tree(st))
            print(f"\n  etc/os-release exists? {st.exists('etc/os-release')} (whited out in the upper)")
            print(f"  app/config lists {st.listdir('app/config')} (opaque in lower1)")
            with st.open("etc/tool-link") as f:
                print(f"  etc/tool-link resolves inside the union to {st.resolve('bin/tool')!r}:"
                      f" {f.read().decode().splitlines()[-1]!r}")
            print(f"  cache: {st.cache_info()}")
        kernel = _kernel_paths(lowers, upper, work, os.path.join(root, "merged"))
        if isinstance(kernel, str):
            print(f"\nKernel comparison skipped: {kernel}")
            return 0
        same = kernel == ours
        print(f"\nKernel overlay mount (private mount namespace): {len(kernel)} paths, "
              f"{'identical to' if same else 'DIFFERENT from'} Stack's view.")
        if not same:
            print(f"  only kernel: {sorted(set(kernel) - set(ours))}")
            print(f"  only Stack:  {sorted(set(ours) - set(kernel))}")
            return 1
    return 0


def main_check(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """``python -m overlayfs check [PATH] [--json]``: print the :func:`check` report.

    Returns 0 when overlays can be mounted over PATH's filesystem, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="python -m overlayfs check",
        description="Check kernel overlayfs prerequisites for layers on PATH's filesystem.")
    parser.add_argument("path", nargs="?", default=None,
                        help="a directory on the backing filesystem (default: the temp dir)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(list(argv) if argv is not None else None)
    report = check(args.path)
    stream = out if out is not None else sys.stdout
    if args.json:
        json.dump(report.as_dict(), stream, indent=2)
        stream.write("\n")
    else:
        stream.write(f"{report}\n")
    return 0 if report.ok else 1


# --- images: layers, diffid, unpack ---------------------------------------------------------

_IMAGE_VERBS = {
    "layers": "list an image's layers (digest, diff ID, media type, size, chain ID)",
    "diffid": "print the diff ID of a layer tar (any compression)",
    "unpack": "import an image into an overlay2-style layer store",
}


class _Progress:
    """A one-line progress display on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, total: int | None = None, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.on = self.stream.isatty()
        self.label = label
        self.total = total
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.on:
            return
        mb = self.done / 1e6
        if self.total:
            text = f"{self.label}: {mb:.1f} / {self.total / 1e6:.1f} MB"
        else:
            text = f"{self.label}: {mb:.1f} MB"
        self.stream.write("\r" + text[:78].ljust(78))
        self.stream.flush()

    def close(self) -> None:
        if self.on and self.done:
            self.stream.write("\r" + " " * 78 + "\r")
            self.stream.flush()


def _spool_stdin() -> IO[bytes]:
    """stdin copied to an anonymous temp file (image archives are read with seeks)."""
    tmp = tempfile.TemporaryFile(prefix="overlayfs-image-")
    shutil.copyfileobj(sys.stdin.buffer, tmp, 1 << 20)
    tmp.seek(0)
    return tmp


def _open_image_arg(text: str, platform: str | None) -> Image:
    from .image import ImageError, open_image, parse_image_ref

    transport, path, ref = parse_image_ref(text)
    src: str | IO[bytes] = _spool_stdin() if path == "-" else path
    if transport == "oci" and not (path != "-" and os.path.isdir(path)):
        raise ImageError(f"oci:{path}: not a directory (use oci-archive: for a tar)")
    if transport in ("oci-archive", "docker-archive") and path != "-" and os.path.isdir(path):
        raise ImageError(f"{transport}:{path}: a directory (use oci: for a layout dir)")
    image = open_image(src, platform=platform, ref=ref)
    if transport == "oci-archive" and image.format != "oci-archive":
        image.close()
        raise ImageError(f"{path}: a {image.format}, not an oci-archive")
    if transport == "docker-archive" and image.format not in ("docker-archive", "docker-dir"):
        image.close()
        raise ImageError(f"{path}: a {image.format}, not a docker-archive")
    return image


def _cmd_layers(args: argparse.Namespace, out: IO[str]) -> int:
    with _open_image_arg(args.image, args.platform) as image:
        rows = [{"digest": la.digest, "diff_id": la.diff_id, "media_type": la.media_type,
                 "size": la.size, "chain_id": la.chain_id} for la in image.layers]
        if args.json:
            json.dump({"format": image.format, "ref": image.ref, "id": image.id,
                       "platform": str(image.platform), "manifest_digest": image.manifest_digest,
                       "layers": rows}, out, indent=2)
            out.write("\n")
            return 0
        out.write(f"# {image.format} {image.ref or ''} {image.platform} id {image.id}\n")
        for r in rows:
            out.write(f"{r['digest']}  diff {r['diff_id']}  chain {r['chain_id']}  "
                      f"{r['size']}  {r['media_type']}\n")
    return 0


def _cmd_diffid(args: argparse.Namespace, out: IO[str]) -> int:
    from .image import diff_id

    for layer in args.layers:
        if layer == "-":
            src: IO[bytes] = sys.stdin.buffer
            total = None
        else:
            src = open(layer, "rb")
            total = os.fstat(src.fileno()).st_size
        progress = _Progress(f"diffid {layer}", total)
        try:
            result = diff_id(cast(IO[bytes], _Counting(src, progress)))
        finally:
            progress.close()
            if src is not sys.stdin.buffer:
                src.close()
        out.write(f"{result}  {layer}\n" if len(args.layers) > 1 else f"{result}\n")
    return 0


class _Counting:
    """A file object that reports the bytes read through it to *progress*."""

    def __init__(self, inner: IO[bytes], progress: _Progress):
        self._inner = inner
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._progress(len(data))
        return data


def _cmd_unpack(args: argparse.Namespace, out: IO[str]) -> int:
    from .store import LayerStore

    if not hasattr(LayerStore, "import_image"):
        raise ValueError("unpack: this build has no LayerStore.import_image")
    store = LayerStore(args.store)
    with _open_image_arg(args.image, args.platform) as image:
        progress = _Progress(f"unpack {args.image}")
        try:
            result = store.import_image(image, progress=progress)  # type: ignore[attr-defined]
        finally:
            progress.close()
        if args.json:
            json.dump(result.as_dict(), out, indent=2)
            out.write("\n")
        else:
            out.write(f"{result.top}\n")
    return 0


def main_image(argv: Sequence[str], out: IO[str] | None = None) -> int:
    """``python -m overlayfs layers|diffid|unpack ...``; one-line errors, exit status 1."""
    parser = argparse.ArgumentParser(prog="python -m overlayfs",
                                     description="Read container images and layers.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    image_help = ("oci:DIR[:REF], oci-archive:TAR[:REF], docker-archive:TAR[:REPO:TAG], "
                  "or a path (auto-detected); - for stdin")
    p = sub.add_parser("layers", help=_IMAGE_VERBS["layers"])
    p.add_argument("image", help=image_help)
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("diffid", help=_IMAGE_VERBS["diffid"])
    p.add_argument("layers", nargs="+", metavar="LAYER", help="a layer tar (any compression) or -")
    p = sub.add_parser("unpack", help=_IMAGE_VERBS["unpack"])
    p.add_argument("image", help=image_help)
    p.add_argument("store", help="the layer store directory (created if missing)")
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine)")
    p.add_argument("--json", action="store_true")
    args = parser.parse_args(list(argv))
    stream = out if out is not None else sys.stdout
    cmd = {"layers": _cmd_layers, "diffid": _cmd_diffid, "unpack": _cmd_unpack}[args.cmd]
    try:
        return cmd(args, stream)
    except BrokenPipeError:  # `... | head`
        sys.stderr.close()
        return 1
    except (ValueError, OSError) as e:  # ImageError is a ValueError
        msg = str(e) if not isinstance(e, OSError) or e.strerror is None or not e.filename \
            else f"{e.strerror}: {e.filename}"
        sys.stderr.write(f"overlayfs {args.cmd}: error: {' '.join(msg.split())}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"overlayfs {args.cmd}: interrupted\n")
        return 130


# --- apply: a layer tar into a layer dir or a rootfs ------------------------

def main_apply(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """``python -m overlayfs apply LAYER|- DIR [...]``: apply a layer tar.

    Prints the diff ID (or a JSON report with ``--json``); one-line errors on
    stderr and exit status 1; a progress line on stderr when it is a terminal.
    """
    from . import errors
    from .apply import apply_layer

    parser = argparse.ArgumentParser(
        prog="python -m overlayfs apply",
        description="Apply a layer tar (plain, gzip, zstd, bzip2 or xz; '-' reads stdin) to DIR: "
                    "a new overlay layer directory (whiteouts as char 0:0 or xattrs, opaque dirs "
                    "as <ns>.overlay.opaque), published atomically; or with --rootfs into an existing "
                    "tree, whiteouts deleting.")
    parser.add_argument("layer", help="the layer tar, or - for stdin")
    parser.add_argument("dir", help="the layer directory to create (or, --rootfs, the tree to apply to)")
    parser.add_argument("--lower", action="append", default=[], metavar="DIR",
                        help="a lower layer directory, top-most first (repeat): implied parent "
                             "attributes, hardlinks to lower files, an opaque root")
    parser.add_argument("--rootfs", action="store_true", help="apply into an existing tree (moby ApplyLayer)")
    parser.add_argument("--whiteouts", choices=["chardev", "xattr"], default="chardev",
                        help="whiteout form in layer mode (default: chardev, char 0:0)")
    parser.add_argument("--userxattr", action="store_true", help="user.overlay.* instead of trusted.overlay.*")
    parser.add_argument("--no-devices", action="store_true", help="skip char and block devices")
    parser.add_argument("--no-same-owner", action="store_true", help="do not chown to the tar's ids")
    parser.add_argument("--verify-diff-id", metavar="sha256:HEX", help="refuse a layer with another diff ID")
    parser.add_argument("--max-size", type=int, metavar="BYTES", help="refuse more uncompressed bytes")
    parser.add_argument("--tar-split", metavar="FILE", help="write the tar-split record (gzip) to FILE")
    parser.add_argument("--no-sync", action="store_true", help="skip the syncfs before publishing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(list(argv) if argv is not None else None)
    stream = out if out is not None else sys.stdout
    total = None
    if args.layer != "-":
        try:
            total = os.path.getsize(args.layer)
        except OSError:
            total = None
    progress = None
    if sys.stderr.isatty():
        def progress(done: int) -> None:
            pct = f" {100 * done // total:3d}%" if total else ""
            sys.stderr.write(f"\rapplying {args.layer}: {done / 2**20:8.1f} MiB{pct}")
    try:
        result = apply_layer(
            sys.stdin.buffer if args.layer == "-" else args.layer, args.dir,
            lowers=args.lower, mode="rootfs" if args.rootfs else "layer", whiteouts=args.whiteouts,
            xattr_ns="user" if args.userxattr else "trusted", same_owner=not args.no_same_owner,
            devices=not args.no_devices, expect_diff_id=args.verify_diff_id, max_size=args.max_size,
            sync=not args.no_sync, tar_split=args.tar_split, progress=progress)
    except (errors.ArchiveError, OSError, ValueError) as e:
        if progress is not None:
            sys.stderr.write("\n")
        print(f"overlayfs apply: {args.layer}: {e}", file=sys.stderr)
        return 1
    if progress is not None:
        sys.stderr.write("\n")
    if args.json:
        json.dump(result.__dict__, stream, indent=2)
        stream.write("\n")
    else:
        stream.write(f"{result.diff_id}\n")
    return 0


# -- diff / export / squash: layers out as tars (overlayfs.export) --------------------

_EXPORT_HELP = {
    "diff": "export a layer dir (an upper or overlay2 diff dir) as an OCI layer tar",
    "export": "flatten layers (top-most first) into one tar of the merged tree, no mount",
    "squash": "squash layers (top-most first) into one layer tar, keeping needed whiteouts",
}


def main_export(argv: Sequence[str]) -> int:
    """``python -m overlayfs diff|export|squash ...``: write a layer tar (see
    :mod:`overlayfs.export`).  Errors are one line on stderr and exit status 1."""
    from . import export as ex

    verb = argv[0]
    parser = argparse.ArgumentParser(prog=f"python -m overlayfs {verb}", description=_EXPORT_HELP[verb])
    if verb == "diff":
        parser.add_argument("layer", help="the layer dir (kernel form: char 0:0 whiteouts, opaque xattrs)")
        parser.add_argument("--lower", action="append", default=None, metavar="DIR",
                            help="its lower layers, top-most first (for a layer with redirects or "
                                 "metacopy files: the naive diff); repeatable")
    elif verb == "export":
        parser.add_argument("layers", nargs="*", help="layer dirs, top-most first")
        parser.add_argument("--upper", metavar="DIR", help="the top-most layer (before the others)")
        parser.add_argument("--lower", action="append", default=[], metavar="DIR",
                            help="a lower layer, top-most first; repeatable")
    else:
        parser.add_argument("layers", nargs="+", help="the layer dirs to squash, top-most first")
        parser.add_argument("--below", action="append", default=None, metavar="DIR",
                            help="a layer under them, top-most first (keeps only the whiteouts "
                                 "whose target exists there); repeatable")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the tar to write, - for stdout")
    parser.add_argument("--compress", choices=["gzip", "zstd"], default=None)
    parser.add_argument("--source-date-epoch", type=int, default=None, metavar="N",
                        help="no mtime later than N (default: $SOURCE_DATE_EPOCH if set)")
    parser.add_argument("--all-xattrs", action="store_true",
                        help="write every xattr, not only security.capability")
    if verb != "export":
        parser.add_argument("--userxattr", action="store_true",
                            help="the layers use user.overlay.* xattrs")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    args = parser.parse_args(list(argv[1:]))
    sde = args.source_date_epoch
    if sde is None and os.environ.get("SOURCE_DATE_EPOCH", "").strip():
        try:
            sde = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            print(f"overlayfs {verb}: error: SOURCE_DATE_EPOCH is not an integer", file=sys.stderr)
            return 1
    to_stdout = args.output == "-"
    out = sys.stdout.buffer if to_stdout else args.output
    common: dict = {"compression": args.compress, "source_date_epoch": sde,
                    "xattrs": "all" if args.all_xattrs else "capability"}
    if verb != "export":
        common["xattr_ns"] = "user" if args.userxattr else "trusted"
    try:
        if verb == "diff":
            r = ex.export_layer(args.layer, out, lowers=args.lower, **common)
        elif verb == "squash":
            r = ex.squash(args.layers, out, below=args.below, **common)
        else:
            layers = ([args.upper] if args.upper else []) + list(args.layers) + args.lower
            if not layers:
                parser.error("no layers given")
            with Stack(layers) as st:
                r = ex.flatten(st, out, **common)
    except (OSError, ValueError) as e:
        print(f"overlayfs {verb}: error: {e}", file=sys.stderr)
        return 1
    summary = {"diff_id": r.diff_id, "digest": r.digest, "size": r.size, "entries": r.entries}
    if args.json:
        print(json.dumps(summary), file=sys.stderr if to_stdout else sys.stdout)
    elif not to_stdout:
        print(f"{args.output}: {r.entries} entries, {r.size} bytes, diff ID {r.diff_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlayfs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="build a small stack and show its merged view")
    tree = sub.add_parser("tree", help="print the merged tree of layers")
    tree.add_argument("lowers", nargs="+", help="lower layers, top-most first")
    tree.add_argument("--upper")
    tree.add_argument("--work")
    tree.add_argument("--whiteouts", default="kernel", choices=["kernel", "oci", "auto"])
    sub.add_parser("check", help="check the prerequisites for mounting overlays",
                   add_help=False)
    sub.add_parser("apply", help="apply a layer tar to a layer directory or a rootfs",
                   add_help=False)
    for verb in _IMAGE_VERBS:
        sub.add_parser(verb, help=_IMAGE_VERBS[verb], add_help=False)
    for verb, text in _EXPORT_HELP.items():
        sub.add_parser(verb, help=text, add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        return main_check(argv[1:])
    if argv and argv[0] == "apply":
        return main_apply(argv[1:])
    if argv and argv[0] in _IMAGE_VERBS:
        return main_image(argv)
    if argv and argv[0] in _EXPORT_HELP:
        return main_export(argv)
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        return demo()
    with Stack(args.lowers, args.upper, args.work, whiteouts=args.whiteouts) as st:
        print_tree(st)
    return 0


if __name__ == "__main__":
    sys.exit(main())
