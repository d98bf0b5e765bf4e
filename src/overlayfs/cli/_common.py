"""What every verb shares: the parser class, the error/exit-status policy, JSON and
human output, progress on a terminal, ``-`` for stdin/stdout, and the target syntax.

Exit statuses: 0 success; 1 an error (one line ``overlayfs VERB: error: ...`` on
stderr); 2 a usage error (one line too); 130 interrupted (Ctrl-C); 141 stdout closed
early (``| head``), silently.  ``OVERLAYFS_DEBUG=1`` re-raises instead (tracebacks).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs import Stack

PROG = "overlayfs"


class CliError(Exception):
    """An error to report as one line (exit status 1)."""


class UsageError(CliError):
    """A usage error (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2) instead of a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(exc: BaseException) -> str:
    """The one-line message for an exception: ``FILE: strerror`` for an OSError with a
    file name (as coreutils print it), else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename
        if name is not None:  # a union path or a host path, as the user gave it
            return one_line(f"{os.fsdecode(name)}: {exc.strerror}")
        return one_line(exc.strerror)
    text = str(exc)
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    return one_line(text) or type(exc).__name__


def run_verb(verb: str, func: Callable[[], int]) -> int:
    """Run a verb under the shared error policy; returns the exit status."""
    debug = os.environ.get("OVERLAYFS_DEBUG", "") not in ("", "0")
    try:
        status = func()
        sys.stdout.flush()
        return status
    except BrokenPipeError:  # `... | head`: stop quietly, as cat and ls do
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROG} {verb}: interrupted\n")
        return 130
    except UsageError as e:
        sys.stderr.write(f"{PROG} {verb}: error: {describe(e)}\n")
        return 2
    except Exception as e:  # one line, never a traceback
        if debug:
            raise
        if isinstance(e, OSError) and e.errno == errno.EPIPE:
            _silence_stdout()
            return 141
        msg = describe(e)
        if not isinstance(e, (CliError, OSError, ValueError, LookupError)):
            msg = f"{type(e).__name__}: {msg}"
        sys.stderr.write(f"{PROG} {verb}: error: {msg}\n")
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# --- output ----------------------------------------------------------------------------

def print_json(obj: Any, out: IO[str] | None = None) -> None:
    stream = out if out is not None else sys.stdout
    json.dump(obj, stream, indent=2)
    stream.write("\n")


def binary_stdout(what: str = "a tar") -> IO[bytes]:
    """stdout for binary data: refused when it is a terminal (as tar and crane do)."""
    if sys.stdout.isatty():
        raise CliError(f"refusing to write {what} to a terminal (use -o FILE, or redirect stdout)")
    sys.stdout.flush()
    return sys.stdout.buffer


def output_arg(value: str, what: str = "a tar") -> str | IO[bytes]:
    """``-o`` OUT: a path, or ``-`` for stdout (refused on a terminal)."""
    return binary_stdout(what) if value == "-" else value


class Progress:
    """A one-line progress display on stderr when it is a terminal; silent otherwise.
    Call it with a number of bytes done since the previous call."""

    def __init__(self, label: str, total: int | None = None, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.on = self.stream.isatty()
        except (ValueError, OSError):
            self.on = False
        self.label = label
        self.total = total
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.on:
            return
        mb = self.done / 1e6
        if self.total:
            figures = f"{mb:.1f} / {self.total / 1e6:.1f} MB ({100 * self.done // self.total}%)"
        else:
            figures = f"{mb:.1f} MB"
        self._show(figures)

    def _show(self, figures: str) -> None:
        room = 78 - len(figures) - 2
        label = self.label if len(self.label) <= room else "..." + self.label[-(room - 3):]
        self.stream.write("\r" + f"{label}: {figures}".ljust(78))
        self.stream.flush()

    def count(self) -> None:
        """One more item (a walk): shown every 1000 items."""
        self.done += 1
        if self.on and self.done % 1000 == 0:
            self._show(f"{self.done} entries")

    def close(self) -> None:
        if self.on and self.done:
            self.stream.write("\r" + " " * 78 + "\r")
            self.stream.flush()


def spool_stdin() -> IO[bytes]:
    """stdin copied to an anonymous temp file (image archives are read with seeks)."""
    tmp = tempfile.TemporaryFile(prefix="overlayfs-image-")
    shutil.copyfileobj(sys.stdin.buffer, tmp, 1 << 20)
    tmp.seek(0)
    return tmp


# --- entries ---------------------------------------------------------------------------

_TYPES = ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"),
          (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
          (stat.S_ISSOCK, "socket"))
#: find -type letters
TYPE_LETTERS = {"f": "file", "d": "dir", "l": "symlink", "c": "char", "b": "block",
                "p": "fifo", "s": "socket"}


def type_name(mode: int) -> str:
    for test, name in _TYPES:
        if test(mode):
            return name
    return "unknown"


def union_path(rel: str) -> str:
    """A Stack path ("etc/motd", "") as the CLI prints it ("/etc/motd", "/")."""
    return "/" + rel.strip("/")


def rel_path(path: str) -> str:
    """A user's union path ("/etc/motd", "etc/motd/", "/") as a Stack path."""
    parts = [p for p in path.split("/") if p and p != "."]
    return "/".join(parts)


def layer_dir(stack: Stack, index: int) -> str | None:
    """The host dir of a Stack layer index: 0 the upper, 1.. the lowers, then data layers."""
    if index == 0:
        return os.fsdecode(stack.upper) if stack.upper is not None else None
    below = list(stack.lowers) + list(stack.data_layers)
    return os.fsdecode(below[index - 1]) if 0 < index <= len(below) else None


def layer_label(stack: Stack, index: int) -> str:
    return "upper" if index == 0 else f"lower{index}"


def record(stack: Stack, rel: str, st: os.stat_result, layer: int | None) -> dict[str, Any]:
    """The JSON object of one path: the shape every inspection verb prints."""
    kind = type_name(st.st_mode)
    rec: dict[str, Any] = {
        "path": union_path(rel), "name": rel.rsplit("/", 1)[-1] if rel else "/", "type": kind,
        "mode": stat.S_IMODE(st.st_mode), "mode_text": stat.filemode(st.st_mode),
        "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size, "nlink": st.st_nlink,
        "mtime": st.st_mtime, "mtime_ns": st.st_mtime_ns, "blocks": st.st_blocks,
    }
    if kind in ("char", "block"):
        rec["major"], rec["minor"] = os.major(st.st_rdev), os.minor(st.st_rdev)
    if kind == "symlink":
        rec["target"] = stack.readlink(rel)
    if layer is not None:
        rec["layer"] = layer
        rec["layer_dir"] = layer_dir(stack, layer)
    return rec


# --- targets ---------------------------------------------------------------------------

TARGET_HELP = """\
TARGET (one syntax for every verb that reads a stack):
  DIR                  a layer dir; DIR:DIR:... several, top first (lowerdir= order)
  --lower DIR (repeat, top first) [--upper DIR [--work DIR]]   the same, spelled out
  OVERLAY2_LAYER_DIR   an overlay2 layer dir (diff/ + lower): its diff over its lowers
  docker:NAME|ID       a Docker container (read from the daemon's files, no daemon)
  docker-image:REF     a Docker image
  podman:NAME|ID       a podman (containers-storage) container
  podman-image:REF     a podman image
  oci:DIR[:REF]  oci-archive:TAR  docker-archive:TAR   an image (imported into a temp
                       layer store for the command, removed at exit)
Engine stores are read in the kernel's whiteout form only."""

_ENGINE = ("docker:", "docker-image:", "podman:", "podman-image:", "containers-storage:")
_IMAGES = ("oci:", "oci-archive:", "docker-archive:")


def add_target_options(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """The target options; with ``positional`` the verb also takes TARGET... words
    (the verb's own positionals decide how many)."""
    g = p.add_argument_group("target")
    g.add_argument("--lower", action="append", default=[], metavar="DIR",
                   help="a lower layer dir, top-most first (repeat)")
    g.add_argument("--upper", metavar="DIR", help="the upper layer dir")
    g.add_argument("--work", metavar="DIR", help="the work dir (with --upper: a writable stack)")
    g.add_argument("--whiteouts", choices=["kernel", "oci", "auto"], default=None,
                   help="whiteout form of plain layer dirs (default: kernel)")
    g.add_argument("--docker-root", metavar="DIR", help="Docker's data root (default: /var/lib/docker)")
    g.add_argument("--podman-root", metavar="DIR",
                   help="containers-storage root (default: /var/lib/containers/storage)")
    g.add_argument("--platform", help="image targets: os/arch[/variant] (default: this machine)")


def uses_options(args: argparse.Namespace) -> bool:
    return bool(args.lower or args.upper)


@dataclass
class Resolved:
    """A target: its layer dirs and how to open a Stack over them."""

    spec: str
    kind: str  #: dirs, overlay2, docker, docker-image, podman, podman-image, image
    lowers: list[str]
    upper: str | None = None
    work: str | None = None
    whiteouts: str = "kernel"
    xattr_namespace: str = "trusted"
    opener: Callable[[], Stack] | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        """Every layer dir, top first."""
        return ([self.upper] if self.upper else []) + self.lowers

    def stack(self) -> Stack:
        from overlayfs import Stack

        if self.opener is not None:
            return self.opener()
        if self.upper is not None and self.work is not None:
            return Stack(self.lowers, self.upper, self.work, whiteouts=self.whiteouts,
                         xattr_namespace=self.xattr_namespace)
        return Stack(self.layers, whiteouts=self.whiteouts, xattr_namespace=self.xattr_namespace)

    def change_pair(self) -> tuple[str, list[str]]:
        """(layer, its lowers) for ``changes``: the upper over the lowers, else the top
        layer over the rest."""
        layers = self.layers
        if not layers:
            raise CliError("no layers")
        return layers[0], layers[1:]


def _is_overlay2_layer(path: str) -> bool:
    return (os.path.isdir(os.path.join(path, "diff"))
            and (os.path.isfile(os.path.join(path, "lower")) or os.path.isfile(os.path.join(path, "link"))))


def _need_dir(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    return path


def resolve(args: argparse.Namespace, words: list[str], stack: contextlib.ExitStack) -> Resolved:
    """The target of ``words`` (the verb's TARGET positionals) or of --lower/--upper."""
    wh = args.whiteouts or "kernel"
    if uses_options(args):
        # DIR words with --upper are the layers under it, before any --lower
        lowers = [_need_dir(p) for p in [*words, *args.lower]]
        upper = _need_dir(args.upper) if args.upper else None
        work = _need_dir(args.work) if args.work else None
        if work and not upper:
            raise UsageError("--work needs --upper")
        if not lowers and not upper:
            raise UsageError("no layers given")
        return Resolved("--lower", "dirs", lowers, upper, work, whiteouts=wh)
    if args.work:
        raise UsageError("--work needs --upper")
    if not words:
        raise UsageError("no TARGET given")
    if len(words) > 1:
        return Resolved(" ".join(words), "dirs", [_need_dir(w) for w in words], whiteouts=wh)
    spec = words[0]
    if spec.startswith(_ENGINE):
        return _engine(spec, args)
    if spec.startswith(_IMAGES) or (not os.path.isdir(spec) and _is_archive(spec)):
        return _image(spec, args, stack)
    if ":" in spec and not os.path.exists(spec):
        prefix = spec.split(":", 1)[0]
        if prefix and "/" not in prefix and not os.path.exists(prefix):
            raise UsageError(f"unknown target prefix '{prefix}:' (docker:, docker-image:, "
                             f"podman:, podman-image:, oci:, oci-archive:, docker-archive:)")
        return Resolved(spec, "dirs", [_need_dir(p) for p in spec.split(":") if p], whiteouts=wh)
    _need_dir(spec)
    if _is_overlay2_layer(spec):
        from overlayfs import stack_from_layer_dir

        probe = stack_from_layer_dir(spec)
        try:
            layers = [os.fsdecode(p) for p in probe.lowers]
            ns = probe.xattr_namespace
        finally:
            probe.close()
        return Resolved(spec, "overlay2", layers, xattr_namespace=ns,
                        opener=lambda: stack_from_layer_dir(spec))
    return Resolved(spec, "dirs", [spec], whiteouts=wh)


def _is_archive(path: str) -> bool:
    return os.path.isfile(path) and path.endswith((".tar", ".tar.gz", ".tgz", ".tar.zst"))


def _engine(spec: str, args: argparse.Namespace) -> Resolved:
    from overlayfs.containers import resolve_target

    if args.whiteouts not in (None, "kernel"):
        raise UsageError(f"{spec.split(':', 1)[0]} stores are read in the kernel whiteout form only")
    root = args.docker_root if spec.startswith("docker") else args.podman_root
    target = resolve_target(spec, root=root)
    # read-only: the container's upper is the top lower, as Target.stack() gives it
    return Resolved(spec, target.kind, list(target.layers), xattr_namespace=target.xattr_namespace,
                    opener=target.stack)


def _image(spec: str, args: argparse.Namespace, stack: contextlib.ExitStack) -> Resolved:
    """An image imported into a temp LayerStore (removed when ``stack`` closes)."""
    from overlayfs.image import ImageError, open_image, parse_image_ref
    from overlayfs.store import LayerStore

    transport, path, ref = parse_image_ref(spec)
    if path == "-":
        raise UsageError("an image target cannot be read from stdin")
    if transport == "oci" and not os.path.isdir(path):
        raise ImageError(f"oci:{path}: not a directory (use oci-archive: for a tar)")
    if transport in ("oci-archive", "docker-archive") and os.path.isdir(path):
        raise ImageError(f"{transport}:{path}: a directory (use oci: for a layout dir)")
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    tmp = tempfile.mkdtemp(prefix="overlayfs-image-")
    stack.callback(shutil.rmtree, tmp, True)
    store = LayerStore(os.path.join(tmp, "store"), durable=False, xattr_namespace="trusted")
    image = stack.enter_context(open_image(path, platform=args.platform, ref=ref))
    progress = Progress(f"importing {spec}")
    try:
        result = store.import_image(image, progress=progress)
    finally:
        progress.close()
    if not result.top:
        raise ImageError(f"{spec}: the image has no layers")
    top = result.top
    layers = [os.path.join(store.root, top, "diff"), *store.lower_dirs(top)]
    return Resolved(spec, "image", layers, xattr_namespace=store.xattr_namespace,
                    opener=lambda: store.stack(top))


@contextlib.contextmanager
def open_target(args: argparse.Namespace, words: list[str]) -> Iterator[tuple[Resolved, Stack]]:
    """Resolve the target and open a Stack over it; everything is cleaned up at exit."""
    with contextlib.ExitStack() as stack:
        target = resolve(args, words, stack)
        st = stack.enter_context(target.stack())
        yield target, st
