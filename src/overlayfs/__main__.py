"""Command line: ``python -m overlayfs demo | tree LOWER... | check [PATH] | diff | export | squash``.

demo  builds a small layer stack (whiteouts, an opaque directory, a symlink)
      in a temp dir, prints the merged tree and the layer each path comes
      from, and -- where the kernel lets us mount -- compares it with a real
      overlay mount made in a private mount namespace.
tree  prints the merged tree of the given layers (top-most first).
check reports whether this machine can mount overlays here: kernel version,
      overlay support, d_type and xattrs on the backing filesystem, the new
      mount API, privileges.
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
from typing import IO

from . import Stack
from ._check import check


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
    for verb, text in _EXPORT_HELP.items():
        sub.add_parser(verb, help=text, add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check":
        return main_check(argv[1:])
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
