"""The ``overlayfs`` command line (also ``python -m overlayfs``).

One dispatcher (:func:`main`), one target syntax (:mod:`._common`, ``TARGET_HELP``) and
one error/JSON/progress policy for every verb:

* errors are one line ``overlayfs VERB: error: ...`` on stderr, exit status 1; usage
  errors exit 2; Ctrl-C 130; a closed stdout (``| head``) 141, silently; never a
  traceback (``OVERLAYFS_DEBUG=1`` shows them);
* ``--json`` on every verb prints documented shapes (README "Command line");
* ``-`` is stdin or stdout where a file is read or written; a tar is never written to a
  terminal; long work shows progress on stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._common import PROG, TARGET_HELP, Parser, add_target_options, run_verb

__all__ = ["VERBS", "main"]


@dataclass(frozen=True)
class Verb:
    name: str
    group: str
    summary: str
    example: str
    build: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    target: bool = True  #: reads a stack: takes the target options


GROUPS = ("inspect", "layers & images", "mount", "misc")


def _paths(metavar: str, help: str) -> Callable[[argparse.ArgumentParser], None]:
    def build(p: argparse.ArgumentParser) -> None:
        p.add_argument("words", nargs="*", metavar=metavar, help=help)
    return build


def _b_ls(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="*", metavar="TARGET [PATH...]",
                   help="the target, then union paths (default /)")
    p.add_argument("-l", dest="long", action="store_true", help="long listing (numeric ids, like ls -ln)")
    p.add_argument("-a", "-A", dest="all", action="store_true", help="include names starting with '.'")
    p.add_argument("-d", dest="directory", action="store_true", help="list a directory itself")


def _b_tree(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="*", metavar="TARGET [PATH]", help="the target, then a union path")
    p.add_argument("--depth", type=int, default=None, metavar="N", help="descend at most N levels")


def _b_find(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="*", metavar="TARGET [PATH...]", help="the target, then union paths")
    p.add_argument("-type", dest="type", metavar="X", help="f, d, l, c, b, p or s (comma list)")
    p.add_argument("-name", dest="name", metavar="GLOB", help="the base name matches GLOB")
    p.add_argument("-perm", dest="perm", metavar="MODE",
                   help="octal MODE exactly, -MODE all of its bits, /MODE any of them")
    p.add_argument("-maxdepth", dest="maxdepth", type=int, metavar="N", help="descend at most N levels")


def _b_du(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="*", metavar="TARGET [PATH...]", help="the target, then union paths")
    p.add_argument("-s", dest="summarize", action="store_true", help="only a total for each PATH")
    p.add_argument("-h", dest="human_readable", action="store_true", help="sizes like 4.0K 12M")


def _b_diff(p: argparse.ArgumentParser) -> None:
    from .layers import add_tar_output
    p.add_argument("words", nargs="*", metavar="TARGET", help="the target (its upper, or top layer)")
    add_tar_output(p, required=False)
    p.add_argument("--userxattr", action="store_true", help="the layers use user.overlay.* xattrs")


def _b_export(p: argparse.ArgumentParser) -> None:
    from .layers import add_tar_output
    p.add_argument("words", nargs="*", metavar="TARGET", help="the target to flatten")
    add_tar_output(p, required=True)


def _b_squash(p: argparse.ArgumentParser) -> None:
    from .layers import add_tar_output
    p.add_argument("words", nargs="*", metavar="TARGET", help="the layers to squash, top-most first")
    p.add_argument("--below", action="append", default=None, metavar="DIR",
                   help="a layer under them, top-most first (keeps only the whiteouts whose "
                        "target exists there); repeatable")
    add_tar_output(p, required=True)
    p.add_argument("--userxattr", action="store_true", help="the layers use user.overlay.* xattrs")


def _b_image(p: argparse.ArgumentParser) -> None:
    from .layers import IMAGE_HELP
    p.add_argument("image", help=IMAGE_HELP)
    p.add_argument("--platform", help="os/arch[/variant] (default: this machine)")


def _b_unpack(p: argparse.ArgumentParser) -> None:
    _b_image(p)
    p.add_argument("store", help="the layer store directory (created if missing)")


def _b_diffid(p: argparse.ArgumentParser) -> None:
    p.add_argument("layers", nargs="+", metavar="LAYER", help="a layer tar (any compression) or -")


def _b_mount(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="*", metavar="TARGET MOUNTPOINT",
                   help="the target, then the mount point (an existing directory)")
    p.add_argument("--read-only", action="store_true", help="with --upper/--work: mount read-only")


def _b_umount(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint")
    p.add_argument("-l", "--lazy", action="store_true", help="detach now, clean up when not busy")


def _b_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=None,
                   help="a directory on the backing filesystem (default: the temp dir)")


def _b_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=None, help="where to build it (default: a new temp dir)")


def _lazy_build(name: str) -> Callable[[argparse.ArgumentParser], None]:
    def build(p: argparse.ArgumentParser) -> None:
        from . import layers
        getattr(layers, name)(p)
    return build


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib
        func: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"overlayfs.cli.{module}"), name)
        return func(args)
    return run


def _run_diff(args: argparse.Namespace) -> int:
    from .layers import check_diff_args, cmd_diff
    check_diff_args(args)
    return cmd_diff(args)


_I, _L, _M, _X = GROUPS
VERBS: dict[str, Verb] = {v.name: v for v in [
    Verb("ls", _I, "list a directory of the merged view", "overlayfs ls -l docker:web /etc",
         _b_ls, _lazy("inspect", "cmd_ls")),
    Verb("stat", _I, "show the metadata of union paths and the layer each comes from",
         "overlayfs stat top:mid:base /etc/passwd",
         _paths("TARGET PATH...", "the target, then union paths"), _lazy("inspect", "cmd_stat")),
    Verb("cat", _I, "write files of the merged view to stdout", "overlayfs cat docker-image:nginx /etc/os-release",
         _paths("TARGET PATH...", "the target, then union paths"), _lazy("inspect", "cmd_cat")),
    Verb("readlink", _I, "print the target of symlinks", "overlayfs readlink oci:./img /bin/sh",
         _paths("TARGET PATH...", "the target, then union paths"), _lazy("inspect", "cmd_readlink")),
    Verb("tree", _I, "print the merged tree with each entry's type and layer",
         "overlayfs tree --depth 2 /var/lib/docker/overlay2/<id> /etc", _b_tree, _lazy("inspect", "cmd_tree")),
    Verb("find", _I, "find paths by type, name and permission (like find(1))",
         "overlayfs find docker:web / -type f -perm -4000", _b_find, _lazy("inspect", "cmd_find")),
    Verb("du", _I, "disk usage of the merged view (like du(1), 1K blocks)", "overlayfs du -sh docker:web /usr",
         _b_du, _lazy("inspect", "cmd_du")),
    Verb("which", _I, "the layer that supplies a path, and every layer that has it underneath",
         "overlayfs which docker:web /etc/nginx/nginx.conf",
         _paths("TARGET PATH...", "the target, then union paths"), _lazy("inspect", "cmd_which")),
    Verb("changes", _I, "A/C/D changes of the upper (or top layer) over its lowers, like docker diff",
         "overlayfs changes docker:web", _paths("TARGET", "the target"), _lazy("inspect", "cmd_changes")),
    Verb("diff", _L, "without -o: list changes like docker diff; with -o: write the upper (or top "
         "layer) as an OCI layer tar (graphdriver Diff)", "overlayfs diff docker:web -o layer.tar",
         _b_diff, _run_diff),
    Verb("export", _L, "flatten any target (layers, container, image) into one tar, no mount",
         "overlayfs export docker-archive:app.tar -o rootfs.tar", _b_export, _lazy("layers", "cmd_export")),
    Verb("squash", _L, "squash layers (top-most first) into one layer tar, keeping needed whiteouts",
         "overlayfs squash top mid --below base -o squashed.tar", _b_squash, _lazy("layers", "cmd_squash")),
    Verb("apply", _L, "apply a layer tar to a new layer directory (overlay2 ApplyDiff) or a rootfs",
         "overlayfs apply layer.tar.gz ./newlayer --lower ./parent", _lazy_build("add_apply"),
         _lazy("layers", "cmd_apply"), target=False),
    Verb("layers", _L, "list an image's layers (digest, diff ID, media type, size, chain ID)",
         "overlayfs layers oci-archive:img.tar", _b_image, _lazy("layers", "cmd_layers"), target=False),
    Verb("diffid", _L, "print the diff ID of layer tars (any compression)",
         "overlayfs diffid - < layer.tar.zst", _b_diffid, _lazy("layers", "cmd_diffid"), target=False),
    Verb("unpack", _L, "import an image into an overlay2-style layer store",
         "overlayfs unpack docker-archive:app.tar ./store", _b_unpack, _lazy("layers", "cmd_unpack"),
         target=False),
    Verb("mount", _M, "mount a target with the kernel (read-only, or writable with --upper/--work)",
         "overlayfs mount docker-image:nginx /mnt/nginx", _b_mount, _lazy("inspect", "cmd_mount")),
    Verb("umount", _M, "unmount an overlay", "overlayfs umount /mnt/nginx", _b_umount,
         _lazy("inspect", "cmd_umount"), target=False),
    Verb("check", _X, "check whether this machine can mount overlays over PATH's filesystem",
         "overlayfs check /var/lib/containers", _b_check, _lazy("inspect", "cmd_check"), target=False),
    Verb("demo", _X, "build a small image-like layer store to try the other verbs on",
         "overlayfs demo /tmp/demo", _b_demo, _lazy("demo", "cmd_demo"), target=False),
]}


def usage() -> str:
    lines = [f"usage: {PROG} VERB [options] [TARGET] [ARGS...]   ({PROG} VERB --help for each)", ""]
    for group in GROUPS:
        lines.append(f"{group}:")
        for v in VERBS.values():
            if v.group == group:
                lines.append(f"  {v.name:<9} {v.summary}")
        lines.append("")
    lines.append(TARGET_HELP)
    lines.append("")
    lines.append("Every verb takes --json. Errors: one line on stderr, exit status 1 (usage: 2).")
    return "\n".join(lines) + "\n"


def parser_for(verb: Verb) -> argparse.ArgumentParser:
    epilog = f"example:\n  {verb.example}"
    if verb.target:
        epilog += "\n\n" + TARGET_HELP
    p = Parser(prog=f"{PROG} {verb.name}", description=verb.summary, epilog=epilog,
               formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    # du's -h is --human-readable, as in du(1); elsewhere -h is --help
    p.add_argument(*(("--help",) if verb.name == "du" else ("-h", "--help")), action="help",
                   help="show this help and exit")
    verb.build(p)
    if verb.target:
        add_target_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``overlayfs ARGV...``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):  # names that are not UTF-8 print as their bytes
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")
    if not args or args[0] in ("-h", "--help", "help"):
        if len(args) > 1 and args[0] == "help" and args[1] in VERBS:
            args = [args[1], "--help"]
        else:
            sys.stdout.write(usage())
            return 0 if args else 2
    if args[0] == "--version":
        from overlayfs import __version__
        sys.stdout.write(f"{PROG} {__version__}\n")
        return 0
    name = args[0]
    verb = VERBS.get(name)
    if verb is None:
        sys.stderr.write(f"{PROG}: error: unknown verb {name!r} (see '{PROG} --help')\n")
        return 2

    def run() -> int:
        try:
            ns = parser_for(verb).parse_intermixed_args(args[1:])
        except SystemExit as e:  # --help
            return int(e.code or 0)
        return verb.run(ns)

    return run_verb(name, run)


