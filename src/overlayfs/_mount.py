"""Mount real kernel overlays from Python: :func:`mount`, :func:`unmount`, :func:`mounts`,
:func:`check`, and :func:`run_in_private_namespace` for tests.

Strategy (see section 7 of ``docs/overlay-semantics.md``):

1. **New mount API** (Linux 6.8+): ``fsopen("overlay")``, one ``fsconfig`` ``lowerdir+`` per
   layer (``datadir+`` per data-only layer), ``upperdir``/``workdir``, the options,
   ``FSCONFIG_CMD_CREATE``, ``fsmount``, ``move_mount``.  Layers go in as open directory fds
   (``FSCONFIG_SET_FD``, 6.13+) so neither their length nor their characters matter; before
   6.13 they go in as raw path strings, and a path over the 255-byte fsconfig limit goes
   relative to an ancestor directory, from a helper thread that changes directory there.
2. **mount(2)** for kernels without ``lowerdir+`` (or when forced with
   ``strategy="legacy"``): one ``lowerdir=a:b,upperdir=…`` string with ``\\``, ``:`` and ``,``
   escaped the way ``fs/overlayfs/params.c`` unescapes them.  The kernel silently cuts that
   string at one page (4095 bytes), so it is never sent longer: paths are first made relative
   to their common directory, and if that is still too long each layer gets a one- or
   two-character symlink in a private temporary directory (overlay2's ``l/`` trick).  The
   ``chdir`` this needs happens in a helper thread that did ``unshare(CLONE_FS)``, never in
   the interpreter's own working directory.

Errors are ``OSError(errno, message, filename)``; the message names the failing step
(``"fsconfig(lowerdir+ #3)"``, ``"mount(2)"``, ``"validate"``…) and adds the kernel's own
words when it gave any — from the fs_context log of the fsopen fd, and, where readable
(root), from the overlayfs lines the kernel printed to ``/dev/kmsg`` during the attempt.  The
exception also carries ``.step`` and ``.kernel_messages``.  Argument mistakes (501 lowers, a
read-only overlay with one lower, unknown options…) are ``ValueError`` raised before any
system call.

Everything here is stdlib-only and importable without the compiled core; :class:`Stack` is
imported lazily by the functions that return one.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import pickle
import re
import shutil
import stat
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Final, Literal, TypeVar

from . import _syscalls as _sys

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs import Stack

__all__ = [
    "MAX_LOWERS", "CheckReport", "Mount", "MountInfo", "check", "main_check", "mount",
    "mounts", "run_in_private_namespace", "run_in_user_namespace", "unmount",
]

#: The kernel's cap on lower layers, data-only layers included (OVL_MAX_STACK, params.h).
MAX_LOWERS: Final = 500
#: fsconfig copies a string value with strndup_user(value, 256): at most 255 bytes.
FSCONFIG_VALUE_MAX: Final = 255

StrPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]
Strategy = Literal["auto", "new-api", "new-api-path", "legacy"]
T = TypeVar("T")

_ON_OFF: Final = ("on", "off")
#: Option name -> accepted values (None: a flag without a value), params.c:ovl_parameter_spec.
_OPTIONS: Final[dict[str, tuple[str, ...] | None]] = {
    "index": _ON_OFF,
    "redirect_dir": ("on", "follow", "nofollow", "off"),
    "metacopy": _ON_OFF,
    "volatile": None,
    "userxattr": None,
    "xino": ("off", "auto", "on"),
    "nfs_export": _ON_OFF,
    "uuid": ("off", "null", "auto", "on"),
    "verity": ("off", "on", "require"),
}
_STRATEGIES: Final = ("auto", "new-api", "new-api-path", "legacy")


# =========================================================================================
# Arguments
# =========================================================================================


def _path(value: StrPath, what: str) -> str:
    """An absolute str path (bytes decoded with the filesystem encoding); ValueError if
    empty. Relative paths resolve against the current directory now, once."""
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        text = os.fsdecode(os.fspath(value))
    else:
        raise ValueError(f"{what} must be a path, not {type(value).__name__}")
    if not text:
        raise ValueError(f"{what} is an empty path")
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL byte")
    return os.path.abspath(text)


def _paths(values: Iterable[StrPath] | StrPath, what: str) -> list[str]:
    if isinstance(values, (str, bytes)) or hasattr(values, "__fspath__"):
        raise ValueError(f"{what} must be a sequence of paths, not a single path "
                         f"(use [{values!r}])")
    return [_path(v, f"{what}[{i}]") for i, v in enumerate(values)]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A validated mount request: absolute paths and the option list in kernel spelling."""

    target: str
    lowers: tuple[str, ...]
    data_layers: tuple[str, ...]
    upper: str | None
    work: str | None
    readonly: bool
    options: tuple[tuple[str, str | None], ...]  # (key, value); value None for a flag

    @property
    def userxattr(self) -> bool:
        return any(key == "userxattr" for key, _ in self.options)


def _option_value(key: str, value: object) -> str | None:
    """Normalise one option value to the kernel's spelling; None means "leave unset"."""
    accepted = _OPTIONS[key]
    if accepted is None:  # a flag
        if value is None or value is False:
            return None
        if value is True:
            return ""
        raise ValueError(f"option {key!r} is a flag: pass True or False, not {value!r}")
    if value is None:
        return None
    if value is True or value is False:
        text = "on" if value else "off"
    elif isinstance(value, str):
        text = value.lower()
    else:
        raise ValueError(f"option {key!r} takes one of {', '.join(accepted)}, not {value!r}")
    if text not in accepted:
        raise ValueError(f"option {key!r} takes one of {', '.join(accepted)}, not {value!r}")
    return text


def _check_conflicts(opts: Mapping[str, str]) -> None:
    """Reject the option combinations params.c:ovl_fs_params_verify rejects."""
    def conflict(why: str) -> ValueError:
        return ValueError(f"conflicting options: {why} (the kernel would refuse the mount)")

    if "userxattr" in opts:
        if opts.get("metacopy") == "on":
            raise conflict("userxattr forces metacopy=off")
        if opts.get("redirect_dir") in ("on", "follow"):
            raise conflict(f"userxattr forces redirect_dir=nofollow, got "
                           f"redirect_dir={opts['redirect_dir']}")
        if opts.get("verity") in ("on", "require"):
            raise conflict("userxattr cannot be combined with verity")
    if opts.get("metacopy") == "on" and opts.get("redirect_dir", "on") != "on":
        raise conflict(f"metacopy=on needs redirect_dir=on, got "
                       f"redirect_dir={opts['redirect_dir']}")
    if opts.get("nfs_export") == "on":
        if opts.get("index") == "off":
            raise conflict("nfs_export=on needs index=on")
        if opts.get("metacopy") == "on":
            raise conflict("nfs_export=on excludes metacopy=on")
    if opts.get("verity") == "require" and opts.get("metacopy") == "off":
        raise conflict("verity=require needs metacopy=on")


def _build_spec(target: StrPath, lowers: Sequence[StrPath], upper: StrPath | None,
                work: StrPath | None, readonly: bool,
                options: Mapping[str, Any] | None) -> _Spec:
    """Check the arguments and normalise them; ValueError before any system call."""
    lower_list = _paths(lowers, "lowers")
    options = dict(options or {})
    data_layers = _paths(options.pop("data_layers", None) or [], "data_layers")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown overlay option(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(sorted([*_OPTIONS, 'data_layers']))}")
    if not lower_list:
        raise ValueError("an overlay needs at least one lower layer")
    total = len(lower_list) + len(data_layers)
    if total > MAX_LOWERS:
        raise ValueError(f"{total} lower layers given ({len(lower_list)} lowers + "
                         f"{len(data_layers)} data layers); the kernel allows at most "
                         f"{MAX_LOWERS} (OVL_MAX_STACK)")
    if (upper is None) != (work is None):
        raise ValueError("upper and work must be given together (the kernel needs a workdir "
                         "on the same mount as the upperdir)")
    if upper is None and total < 2:
        raise ValueError(
            f"a read-only overlay (no upper layer) needs at least 2 lower layers, got "
            f"{total}: add another lower (an empty directory will do) or pass upper= and "
            f"work= (with readonly=True for a read-only mount of it)")
    if readonly not in (True, False):
        raise ValueError(f"readonly must be a bool, not {readonly!r}")

    normalised: dict[str, str] = {}
    for key, value in options.items():
        text = _option_value(key, value)
        if text is not None:
            normalised[key] = text
    if options.get("userxattr") is None and _in_user_namespace():
        normalised["userxattr"] = ""  # unprivileged: trusted.* is not writable here
    _check_conflicts(normalised)
    flags = tuple((k, None if v == "" else v) for k, v in normalised.items())
    return _Spec(
        target=_path(target, "target"), lowers=tuple(lower_list),
        data_layers=tuple(data_layers),
        upper=None if upper is None else _path(upper, "upper"),
        work=None if work is None else _path(work, "work"),
        readonly=readonly, options=flags)


def _validate(spec: _Spec) -> None:
    """Check on disk what the kernel would reject, with a clear message.

    Cost: one stat per layer plus two realpath and two statx calls for upper/work.
    """
    seen: dict[tuple[int, int], str] = {}

    def check_dir(role: str, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise _error(exc.errno or errno.EIO, "validate", role, path) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise _error(errno.ENOTDIR, "validate", f"{role} is not a directory", path)
        if role != "target":
            other = seen.setdefault((st.st_dev, st.st_ino), role)
            if other != role:
                raise _error(errno.ELOOP, "validate",
                             f"{role} is the same directory as {other} (the kernel refuses "
                             f"duplicate layers)", path)

    check_dir("target", spec.target)
    for i, path in enumerate(spec.lowers, 1):
        check_dir(f"lowerdir #{i}", path)
    for i, path in enumerate(spec.data_layers, 1):
        check_dir(f"data layer #{i}", path)
    if spec.upper is None or spec.work is None:
        return
    check_dir("upperdir", spec.upper)
    check_dir("workdir", spec.work)
    real_upper, real_work = os.path.realpath(spec.upper), os.path.realpath(spec.work)
    if _nested(real_upper, real_work):
        raise _error(errno.EINVAL, "validate",
                     "workdir and upperdir must be separate subtrees (one contains the other)",
                     spec.work)
    upper_mnt, work_mnt = _mount_id_or_none(spec.upper), _mount_id_or_none(spec.work)
    if upper_mnt is not None and work_mnt is not None and upper_mnt != work_mnt:
        raise _error(errno.EINVAL, "validate",
                     "workdir and upperdir must be on the same mount (the same filesystem "
                     "through a different mount, e.g. a bind mount, does not count)",
                     spec.work)


def _nested(a: str, b: str) -> bool:
    """True if one of the two real paths is the other or inside it."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _mount_id_or_none(path: str) -> int | None:
    try:
        return _sys.mount_id(path)
    except OSError:
        return None


# =========================================================================================
# Errors and kernel messages
# =========================================================================================


_HINTS: Final = {
    errno.ELOOP: "overlayfs gives ELOOP for overlapping or duplicate layer directories",
    errno.EBUSY: "the directory is busy: an open file or a process's cwd inside the mount, "
                 "or an upper/work dir in use with index=on",
    errno.EPERM: "mounting needs CAP_SYS_ADMIN (root), or a user namespace that owns the "
                 "mount namespace (unshare -Urm), where userxattr is used",
    errno.ENODEV: "the kernel has no overlay filesystem (modprobe overlay)",
}


def _error(code: int, step: str, detail: str | None, filename: object = None,
           messages: Sequence[str] = ()) -> OSError:
    """``OSError(code, "<step>: <strerror>[: detail][; kernel: …]", filename)`` with
    ``.step`` and ``.kernel_messages`` attached."""
    text = f"{step}: {os.strerror(code)}"
    if detail:
        text += f": {detail}"
    if messages:
        text += "; kernel: " + " | ".join(messages)
    elif code in _HINTS and step != "validate":
        text += f" ({_HINTS[code]})"
    exc = OSError(code, text, filename)
    exc.step = step  # type: ignore[attr-defined]
    exc.kernel_messages = list(messages)  # type: ignore[attr-defined]
    return exc


class _StepFailed(Exception):
    """Internal: an OSError tagged with the step and path that produced it."""

    def __init__(self, step: str, filename: object, cause: OSError) -> None:
        super().__init__(step)
        self.step, self.filename, self.cause = step, filename, cause


def _step(step: str, filename: object, fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except OSError as exc:
        raise _StepFailed(step, filename, exc) from exc


class _KernelLog:
    """The overlayfs lines the kernel logs while a mount is attempted.

    overlayfs reports most of its refusals ("workdir and upperdir must be separate
    subtrees", "overlapping lowerdir path"…) with pr_err, not in the fs_context log, so the
    tail of /dev/kmsg is read when it is readable (root; CAP_SYSLOG). Lines another mount
    logs at the same moment may appear too. Cost: one open and lseek per mount attempt.
    """

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK
                                           | os.O_CLOEXEC)
        except OSError:
            self._fd = None
            return
        try:
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self.close()

    def messages(self) -> list[str]:
        found: list[str] = []
        while self._fd is not None:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten in the ring buffer: skip it
                    continue
                break
            if not record:
                break
            text = record.decode("utf-8", "replace").partition(";")[2].split("\n", 1)[0]
            if text.startswith(("overlayfs:", "overlay:")):
                found.append(text.strip())
        return found

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _drain_fc_log(fd: int) -> list[str]:
    """Read the fs_context's queued messages ("e overlay: Bad value for 'xino'")."""
    found: list[str] = []
    for _ in range(64):  # the kernel keeps at most 8
        try:
            data = os.read(fd, 4096)
        except OSError:  # ENODATA: no more messages
            break
        if not data:
            break
        text = data.decode("utf-8", "replace").rstrip("\n")
        found.append(text[2:] if text[:2] in ("e ", "w ", "i ") else text)
    return found


# =========================================================================================
# Strategy 1: the new mount API
# =========================================================================================


@dataclasses.dataclass(frozen=True)
class _ApiSupport:
    fsopen: bool        # fsopen("overlay") works here
    lowerdir_plus: bool  # Linux 6.8+
    layer_fds: bool      # FSCONFIG_SET_FD for layers, Linux 6.13+
    error: int | None = None  # errno of fsopen when it failed


_api_support_cache: _ApiSupport | None = None


def _api_support() -> _ApiSupport:
    """Probe the new mount API once per process (cached when conclusive).

    Cost: one fsopen, two fsconfig calls and one open of "/" (about 20 µs); nothing is
    mounted.
    """
    global _api_support_cache
    if _api_support_cache is not None:
        return _api_support_cache
    try:
        fd = _sys.fsopen("overlay")
    except OSError as exc:
        support = _ApiSupport(False, False, False, exc.errno)
        if exc.errno == errno.ENOSYS:
            _api_support_cache = support  # a property of the kernel, not of our privileges
        return support
    try:
        try:
            _sys.fsconfig(fd, _sys.FSCONFIG_SET_STRING, "lowerdir+", b"/")
            plus = True
        except OSError:
            plus = False
        fds = False
        if plus:
            root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _sys.fsconfig(fd, _sys.FSCONFIG_SET_FD, "lowerdir+", None, root)
                fds = True
            except OSError:
                fds = False
            finally:
                os.close(root)
    finally:
        os.close(fd)
    _api_support_cache = _ApiSupport(True, plus, fds)
    return _api_support_cache


def _fsconfig_name(key: str, path: str) -> bytes:
    """The string value fsconfig wants for a layer path: ``lowerdir+``/``datadir+`` take
    it raw, while ``upperdir``/``workdir`` strings are unescaped by the kernel
    (params.c:ovl_unescape), so their backslashes are doubled."""
    if key in ("upperdir", "workdir"):
        path = path.replace("\\", "\\\\")
    return os.fsencode(path)


def _split_for_fsconfig(key: str, path: str) -> tuple[str, bytes]:
    """Split an absolute path into (directory, rest) with the rest as long as possible
    within the fsconfig limit (a single name is at most 255 bytes: NAME_MAX)."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        rest = _fsconfig_name(key, "/".join(parts[i:]))
        if len(rest) <= FSCONFIG_VALUE_MAX:
            return "/".join(parts[:i]) or "/", rest
    return os.path.dirname(path), _fsconfig_name(key, os.path.basename(path))


def _set_layer(fd: int, key: str, path: str, use_fds: bool, step: str, confined: bool) -> None:
    """Hand one layer to fsconfig: as an fd (6.13+), else as a path string. A path over
    the 255-byte limit goes relative to a directory we chdir to, which is only done in a
    ``confined`` thread (see :func:`_call_in_dir`); elsewhere it goes as the
    /proc/self/fd/N name of an O_PATH fd."""
    if use_fds:
        try:
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            dfd = -1  # not readable by us (but maybe searchable): fall back to its name
        except OSError as exc:
            raise _StepFailed(f"open({step})", path, exc) from exc
        if dfd >= 0:
            try:
                _step(f"fsconfig({step})", path, _sys.fsconfig, fd, _sys.FSCONFIG_SET_FD,
                      key, None, dfd)
            finally:
                os.close(dfd)
            return
    value = _fsconfig_name(key, path)
    if len(value) <= FSCONFIG_VALUE_MAX:
        _step(f"fsconfig({step})", path, _sys.fsconfig, fd, _sys.FSCONFIG_SET_STRING, key,
              value)
    elif confined:
        directory, rest = _split_for_fsconfig(key, path)
        _step(f"chdir({step})", directory, os.chdir, directory)
        _step(f"fsconfig({step})", path, _sys.fsconfig, fd, _sys.FSCONFIG_SET_STRING, key,
              rest)
    else:
        pfd = _step(f"open({step})", path, os.open, path,
                    os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _step(f"fsconfig({step})", path, _sys.fsconfig, fd, _sys.FSCONFIG_SET_STRING,
                  key, f"/proc/self/fd/{pfd}".encode())
        finally:
            os.close(pfd)


def _mount_new_api(spec: _Spec, use_fds: bool) -> str:
    """Mount through fsopen/fsconfig/fsmount/move_mount; returns the strategy name.

    With path strings and a layer over 255 bytes, the whole sequence runs in a helper
    thread with its own cwd, so that such layers can be named relative to a directory.
    Cost: about 2 system calls per layer (open + fsconfig, or one fsconfig) plus 6.
    """
    layers = [("lowerdir+", p) for p in (*spec.lowers, *spec.data_layers)]
    if spec.upper is not None and spec.work is not None:
        layers += [("upperdir", spec.upper), ("workdir", spec.work)]
    if not use_fds and any(len(_fsconfig_name(k, p)) > FSCONFIG_VALUE_MAX for k, p in layers):
        return _call_in_dir("/", lambda: _mount_new_api_here(spec, use_fds, confined=True))
    return _mount_new_api_here(spec, use_fds, confined=False)


def _mount_new_api_here(spec: _Spec, use_fds: bool, confined: bool) -> str:
    log = _KernelLog()
    fd = -1
    try:
        fd = _step("fsopen", None, _sys.fsopen, "overlay")
        _step("fsconfig(source)", None, _sys.fsconfig, fd, _sys.FSCONFIG_SET_STRING,
              "source", b"overlay")
        for i, path in enumerate(spec.lowers, 1):
            _set_layer(fd, "lowerdir+", path, use_fds, f"lowerdir+ #{i}", confined)
        for i, path in enumerate(spec.data_layers, 1):
            _set_layer(fd, "datadir+", path, use_fds, f"datadir+ #{i}", confined)
        if spec.upper is not None and spec.work is not None:
            _set_layer(fd, "upperdir", spec.upper, use_fds, "upperdir", confined)
            _set_layer(fd, "workdir", spec.work, use_fds, "workdir", confined)
        for key, value in spec.options:
            if value is None:
                _step(f"fsconfig({key})", None, _sys.fsconfig, fd, _sys.FSCONFIG_SET_FLAG, key)
            else:
                _step(f"fsconfig({key}={value})", None, _sys.fsconfig, fd,
                      _sys.FSCONFIG_SET_STRING, key, value.encode())
        _step("fsconfig(create)", None, _sys.fsconfig, fd, _sys.FSCONFIG_CMD_CREATE)
        attrs = _sys.MOUNT_ATTR_RDONLY if spec.readonly else 0
        mfd = _step("fsmount", None, _sys.fsmount, fd, _sys.FSMOUNT_CLOEXEC, attrs)
        try:
            _step("move_mount", spec.target, _sys.move_mount, mfd, "", _sys.AT_FDCWD,
                  spec.target, _sys.MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(mfd)  # an open mount fd would keep the mount busy
    except _StepFailed as failed:
        messages = (_drain_fc_log(fd) if fd >= 0 else []) + log.messages()
        code = failed.cause.errno or errno.EIO
        raise _error(code, failed.step, None, failed.filename, messages) from failed.cause
    finally:
        if fd >= 0:
            os.close(fd)
        log.close()
    return "new-api-fd" if use_fds else "new-api-path"


# =========================================================================================
# Strategy 2: mount(2) with the legacy option string
# =========================================================================================


def escape_legacy(path: str) -> str:
    """Escape one path for a legacy ``lowerdir=``/``upperdir=``/``workdir=`` value: ``\\``,
    ``:`` and ``,`` get a backslash, as params.c:ovl_unescape expects."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def legacy_options(lowers: Sequence[str], upper: str | None = None, work: str | None = None,
                   data_layers: Sequence[str] = (),
                   options: Sequence[tuple[str, str | None]] = ()) -> str:
    """The mount(2) data string for these (already absolute or relative) layer names."""
    lowerdir = ":".join(map(escape_legacy, lowers))
    if data_layers:
        lowerdir += "::" + "::".join(map(escape_legacy, data_layers))
    parts = [f"lowerdir={lowerdir}"]
    if upper is not None and work is not None:
        parts += [f"upperdir={escape_legacy(upper)}", f"workdir={escape_legacy(work)}"]
    parts += [key if value is None else f"{key}={value}" for key, value in options]
    return ",".join(parts)


def _page_limit() -> int:
    """The longest mount(2) data string the kernel keeps whole: one page minus the NUL."""
    return os.sysconf("SC_PAGE_SIZE") - 1


def _call_in_dir(directory: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a helper thread whose working directory is ``directory``.

    The thread first unshares its fs_struct (``unshare(CLONE_FS)``), so the chdir never
    touches the interpreter's own cwd. Cost: one thread start (about 100 µs).
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _sys.unshare(_sys.CLONE_FS)
            os.chdir(directory)
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="overlayfs-mount-chdir", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _short_name(index: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    name = ""
    while True:
        index, rest = divmod(index, 36)
        name = digits[rest] + name
        if not index:
            return name


def _scratch_parent() -> str:
    """Where to put the short links: /dev/shm (tmpfs: a symlink costs microseconds there,
    while a long target on a disk filesystem needs a block) or else the temp dir."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


def _mount_legacy(spec: _Spec) -> str:
    """Mount with mount(2), shortening the data as needed; returns the strategy name
    (``legacy``, ``legacy-relative`` or ``legacy-links``).

    Cost: one mount(2); plus a thread for the relative forms; plus one symlink per layer
    and a temporary directory (on /dev/shm when there is one) for the links form.
    """
    flags = _sys.MS_RDONLY if spec.readonly else 0
    limit = _page_limit()
    every = [*spec.lowers, *spec.data_layers, *([spec.upper, spec.work] if spec.upper else [])]

    def data_for(names: Sequence[str]) -> bytes:
        n, d = len(spec.lowers), len(spec.data_layers)
        upper, work = (names[n + d], names[n + d + 1]) if spec.upper else (None, None)
        return os.fsencode(legacy_options(names[:n], upper, work, names[n:n + d],
                                          spec.options))

    def attempt(data: bytes, cwd: str | None) -> None:
        log = _KernelLog()
        try:
            if cwd is None:
                _sys.mount("overlay", spec.target, "overlay", flags, data)
            else:
                _call_in_dir(cwd, lambda: _sys.mount("overlay", spec.target, "overlay",
                                                     flags, data))
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise _error(code, "mount(2)", f"{len(data)}-byte option string",
                         spec.target, log.messages()) from exc
        finally:
            log.close()

    data = data_for(every)
    if len(data) <= limit:
        attempt(data, None)
        return "legacy"
    base = os.path.commonpath(every)
    if base != "/":
        data = data_for([os.path.relpath(p, base) for p in every])
        if len(data) <= limit:
            attempt(data, base)
            return "legacy-relative"
    links = tempfile.mkdtemp(prefix="ovl-links-", dir=_scratch_parent())
    try:
        names = [_short_name(i) for i in range(len(every))]
        for name, path in zip(names, every):
            os.symlink(path, os.path.join(links, name))
        data = data_for(names)
        if len(data) > limit:  # cannot happen within MAX_LOWERS, but never truncate
            raise _error(errno.E2BIG, "mount(2)", f"the option string needs {len(data)} "
                         f"bytes even with short links; the kernel keeps {limit}",
                         spec.target)
        attempt(data, links)
    finally:
        shutil.rmtree(links, ignore_errors=True)  # the kernel holds the resolved dirs
    return "legacy-links"


# =========================================================================================
# Public API: mount / unmount / Mount
# =========================================================================================


class Mount:
    """A kernel overlay mounted by :func:`mount`; a context manager that unmounts on exit.

    Attributes: ``target``, ``lowers`` (top first), ``data_layers``, ``upper``, ``work``,
    ``readonly``, ``options`` (the options sent, kernel spelling, flags as True),
    ``strategy`` (``new-api-fd``, ``new-api-path``, ``legacy``, ``legacy-relative`` or
    ``legacy-links``) and ``mount_id`` (the id in /proc/self/mountinfo).
    """

    def __init__(self, spec: _Spec, strategy: str, mount_id: int | None) -> None:
        self.target = spec.target
        self.lowers = spec.lowers
        self.data_layers = spec.data_layers
        self.upper = spec.upper
        self.work = spec.work
        self.readonly = spec.readonly
        self.options: dict[str, str | bool] = {
            k: True if v is None else v for k, v in spec.options}
        self.strategy = strategy
        self.mount_id = mount_id
        self._unmounted = False

    def __repr__(self) -> str:
        state = "mounted" if self.mounted else "unmounted"
        return (f"<overlayfs.Mount {self.target!r} {len(self.lowers)} lowers "
                f"upper={self.upper!r} {self.strategy} {state}>")

    @property
    def mounted(self) -> bool:
        """Whether this overlay is still the mount at ``target``. One statx call."""
        if self._unmounted:
            return False
        try:
            current = _sys.mount_id(self.target)
        except OSError:
            return False
        return current is None or current == self.mount_id

    @property
    def stack(self) -> Stack:
        """An ``overlayfs.Stack`` over the same layers (no mount involved), for comparing
        views: in the kernel's whiteout form (a file named ``.wh.x`` is a file) and the
        mount's xattr namespace. Imports the compiled core on first use."""
        from overlayfs import Stack

        namespace = "user" if self.options.get("userxattr") else "trusted"
        return Stack(list(self.lowers), self.upper, self.work, xattr_namespace=namespace,
                     whiteouts="kernel")

    def unmount(self, lazy: bool = False) -> None:
        """Unmount (``lazy=True``: detach now, free when no longer busy). Idempotent: does
        nothing once this overlay is no longer mounted at ``target``."""
        if not self.mounted:
            self._unmounted = True
            return
        unmount(self.target, lazy=lazy)
        self._unmounted = True

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Unmount; if the mount is busy, detach it lazily so it never outlives the block."""
        try:
            self.unmount()
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            self.unmount(lazy=True)


def mount(target: StrPath, lowers: Sequence[StrPath], upper: StrPath | None = None,
          work: StrPath | None = None, *, readonly: bool = False,
          options: Mapping[str, Any] | None = None, strategy: Strategy = "auto") -> Mount:
    """Mount an overlay of ``lowers`` (top first) at ``target`` and return a :class:`Mount`.

    ``upper`` and ``work`` make it writable: ``work`` is a directory on the same mount as
    ``upper`` and outside it (it need not be empty). Without them the overlay is read-only
    and needs at least two layers. ``readonly=True`` mounts a writable layout read-only.

    ``options`` keys: ``index``, ``redirect_dir``, ``metacopy``, ``xino``, ``nfs_export``,
    ``uuid``, ``verity`` (strings, or True/False for on/off), ``volatile``, ``userxattr``
    (flags; ``userxattr`` defaults to on inside a user namespace), and ``data_layers`` (a
    list of data-only lower layers, Linux 6.5+).

    ``strategy``: ``"auto"`` (the new mount API when the kernel has ``lowerdir+``, else
    mount(2)), ``"new-api"``, ``"new-api-path"`` (the new API with path strings even where
    fds work) or ``"legacy"`` (mount(2)).

    Raises ValueError for bad arguments before any system call, and OSError (with ``.step``
    and ``.kernel_messages``) when the layout or the kernel refuses. Cost: a stat per layer
    for validation, then about two system calls per layer: ~1 ms for 64 layers, ~8 ms for
    500 (``bench/bench_mount.py``).
    """
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}, not {strategy!r}")
    spec = _build_spec(target, lowers, upper, work, readonly, options)
    _validate(spec)
    support = _api_support() if strategy != "legacy" else None
    if support is None:
        used = _mount_legacy(spec)
    elif not support.fsopen:
        if strategy == "auto" and support.error in (errno.ENOSYS, errno.EOPNOTSUPP):
            used = _mount_legacy(spec)  # a kernel before 5.2, or a filter hiding fsopen
        else:  # EPERM, ENODEV…: mount(2) would be refused too; report fsopen's reason
            used = _mount_new_api(spec, use_fds=False)
    elif not support.lowerdir_plus:
        if strategy != "auto":
            raise _error(errno.EOPNOTSUPP, "fsconfig(lowerdir+)", "this kernel has no "
                         "'lowerdir+' (Linux 6.8+); use strategy='legacy'", spec.target)
        used = _mount_legacy(spec)
    else:
        used = _mount_new_api(spec, use_fds=support.layer_fds and strategy != "new-api-path")
    return Mount(spec, used, _mount_id_or_none(spec.target))


def unmount(target: StrPath, lazy: bool = False) -> None:
    """Unmount whatever is mounted at ``target`` (``lazy=True``: ``MNT_DETACH``).

    Raises OSError: EINVAL if ``target`` is not a mount point, EBUSY if busy. One umount2.
    """
    path = _path(target, "target")
    flags = _sys.UMOUNT_NOFOLLOW | (_sys.MNT_DETACH if lazy else 0)
    try:
        _sys.umount2(path, flags)
    except OSError as exc:
        code = exc.errno or errno.EIO
        detail = {errno.EINVAL: "not a mount point",
                  errno.EBUSY: "busy (an open file or a cwd inside it); lazy=True detaches "
                               "it anyway"}.get(code)
        raise _error(code, "umount2", detail, path) from exc


# =========================================================================================
# mounts(): /proc/self/mountinfo
# =========================================================================================


@dataclasses.dataclass(frozen=True)
class MountInfo:
    """One overlay mount from /proc/self/mountinfo, with its layers decoded.

    Layer paths are as the kernel shows them: the paths handed to it (relative ones stay
    relative, e.g. after the ``legacy-relative``/``legacy-links`` strategies), or the real
    paths of layers passed as fds.
    """

    mount_id: int
    parent_id: int
    target: str
    source: str
    readonly: bool
    lowers: tuple[str, ...]
    data_layers: tuple[str, ...]
    upper: str | None
    work: str | None
    options: dict[str, str | bool]
    mount_options: str

    def unmount(self, lazy: bool = False) -> None:
        """:func:`unmount` this mount's target."""
        unmount(self.target, lazy=lazy)


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unoctal(raw: bytes) -> bytes:
    """Undo the kernel's ``\\ooo`` escaping of mountinfo fields (seq_escape)."""
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), raw)


def split_legacy_lowerdir(value: str) -> tuple[list[str], list[str]]:
    """Split a legacy ``lowerdir`` value into (lowers, data layers): ``:`` separates layers,
    ``::`` starts the data-only ones, and a backslash escapes the next character."""
    lowers: list[str] = []
    data: list[str] = []
    current: list[str] = []
    in_data = False
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            current.append(value[i + 1])
            i += 2
            continue
        if char == ":":
            (data if in_data else lowers).append("".join(current))
            current = []
            if value[i + 1:i + 2] == ":":
                in_data = True
                i += 1
            i += 1
            continue
        current.append(char)
        i += 1
    (data if in_data else lowers).append("".join(current))
    return lowers, data


def _unescape(value: str) -> str:
    """params.c:ovl_unescape: drop each backslash and keep the character after it."""
    return re.sub(r"\\(.)", r"\1", value, flags=re.DOTALL)


def _shown_dir(value: str | None, legacy: bool) -> str | None:
    """An upperdir/workdir as mountinfo shows it, back to the real path. Legacy mounts
    show the escaped string given; new-API mounts show a path given as an fd raw (always
    absolute), and one given as a string escaped — told apart by which of the two exists."""
    if value is None or "\\" not in value:
        return value
    plain = _unescape(value)
    if legacy or not value.startswith("/"):  # only strings can be relative
        return plain
    return plain if not os.path.isdir(value) and os.path.isdir(plain) else value


def _parse_mountinfo_line(line: bytes) -> MountInfo | None:
    fields = line.rstrip(b"\n").split(b" ")
    try:
        sep = fields.index(b"-", 6)
    except ValueError:
        return None
    if fields[sep + 1] != b"overlay":
        return None
    decode = lambda raw: os.fsdecode(_unoctal(raw))  # noqa: E731
    lowers: list[str] = []
    data: list[str] = []
    upper = work = None
    legacy = False
    options: dict[str, str | bool] = {}
    readonly = b"ro" in fields[5].split(b",")
    for item in fields[sep + 3].split(b",") if len(fields) > sep + 3 else []:
        key, has_value, raw = item.partition(b"=")
        name = key.decode("ascii", "replace")
        value = decode(raw)
        if name == "lowerdir":
            legacy = True
            more, more_data = split_legacy_lowerdir(value)
            lowers += more
            data += more_data
        elif name == "lowerdir+":
            lowers.append(value)
        elif name == "datadir+":
            data.append(value)
        elif name == "upperdir":
            upper = value
        elif name == "workdir":
            work = value
        elif name in ("ro", "rw"):
            readonly = readonly or name == "ro"
        else:
            options[name] = value if has_value else True
    return MountInfo(
        mount_id=int(fields[0]), parent_id=int(fields[1]), target=decode(fields[4]),
        source=decode(fields[sep + 2]), readonly=readonly, lowers=tuple(lowers),
        data_layers=tuple(data), upper=_shown_dir(upper, legacy),
        work=_shown_dir(work, legacy), options=options,
        mount_options=fields[5].decode("ascii", "replace"))


def mounts(mountinfo: StrPath = "/proc/self/mountinfo") -> list[MountInfo]:
    """The overlay mounts visible to this process, in mountinfo order. One file read."""
    with open(mountinfo, "rb") as fh:
        return [info for line in fh if (info := _parse_mountinfo_line(line)) is not None]


# =========================================================================================
# Private mount namespaces
# =========================================================================================


def _enter_private_namespace(user_namespace: bool, uid: int, gid: int) -> None:
    """In a freshly forked child: new mount namespace (and user namespace), propagation
    private, so nothing mounted here is seen by or leaks to the parent's namespace."""
    if user_namespace:
        _sys.unshare(_sys.CLONE_NEWUSER | _sys.CLONE_NEWNS)
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                           ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as fh:
                fh.write(text)
    else:
        _sys.unshare(_sys.CLONE_NEWNS)
    _sys.mount(None, "/", None, _sys.MS_REC | _sys.MS_PRIVATE, None)


def _run_in_child(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
                  user_namespace: bool) -> T:
    uid, gid = os.geteuid(), os.getegid()
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(read_end)
            try:
                _enter_private_namespace(user_namespace, uid, gid)
                payload: tuple[Any, ...] = ("ok", fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - sent to the parent
                payload = ("error", exc, traceback.format_exc())
            try:
                blob = pickle.dumps(payload)
                pickle.loads(blob)  # what cannot be rebuilt in the parent goes as text
            except Exception as exc:  # noqa: BLE001
                what = payload[1] if payload[0] == "error" else "the result"
                blob = pickle.dumps(("error", RuntimeError(
                    f"{what!r} could not be sent back from the namespace child: {exc}"),
                    payload[2] if payload[0] == "error" else ""))
            with os.fdopen(write_end, "wb") as out:
                out.write(blob)
        except BaseException:  # noqa: BLE001
            code = 70
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        blob = inp.read()
    _, status = os.waitpid(pid, 0)
    if not blob:
        raise ChildProcessError(f"the private-namespace child {pid} died without a result "
                                f"(wait status {status:#x})")
    payload = pickle.loads(blob)
    if payload[0] == "ok":
        return payload[1]  # type: ignore[no-any-return]
    exc = payload[1]
    if payload[2]:
        exc.add_note(f"raised in the private mount namespace child (pid {pid}):\n"
                     f"{payload[2].rstrip()}")
    raise exc


def run_in_private_namespace(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a forked child that unshared its mount namespace and
    made every mount private, and return its result or re-raise its exception here.

    Mounts made by ``fn`` never appear outside the child and vanish when it exits. The
    result and exception travel back pickled. Needs CAP_SYS_ADMIN over the current user
    namespace (root, or inside ``unshare -Ur``). Cost: one fork (a few ms for a large
    interpreter) plus the pickling.
    """
    return _run_in_child(fn, args, kwargs, user_namespace=False)


def run_in_user_namespace(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Like :func:`run_in_private_namespace`, in a new user namespace too, mapping the
    caller to root as ``unshare -Urm`` does: the unprivileged case, where overlay needs
    ``userxattr`` and trusted xattrs are not writable."""
    return _run_in_child(fn, args, kwargs, user_namespace=True)


# =========================================================================================
# check()
# =========================================================================================


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _kernel_version(release: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not match:
        return (0, 0, 0)
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def _in_user_namespace() -> bool:
    """True unless this process is in the initial user namespace (full identity map)."""
    text = _read("/proc/self/uid_map")
    if text is None:
        return False
    return text.split() != ["0", "0", "4294967295"]


def _has_cap_sys_admin() -> bool:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 21))
    return False


def _fstype_of(path: str) -> str | None:
    """The filesystem type of the mount ``path`` is on, from mountinfo."""
    try:
        wanted = _sys.mount_id(path)
        dev = os.stat(path).st_dev
    except OSError:
        return None
    with open("/proc/self/mountinfo", "rb") as fh:
        for line in fh:
            fields = line.split(b" ")
            sep = fields.index(b"-", 6)
            major, minor = (int(x) for x in fields[2].split(b":"))
            if (wanted is not None and int(fields[0]) == wanted) or (
                    wanted is None and os.makedev(major, minor) == dev):
                return fields[sep + 1].decode("ascii", "replace")
    return None


def _probe_mount(base: str) -> str:
    """(Runs in a private namespace child.) Mount a 2-lower overlay with an upper under
    ``base``, write through it and check the upper; returns the strategy used."""
    dirs = {name: os.path.join(base, name) for name in ("l1", "l2", "up", "wk", "mnt")}
    for path in dirs.values():
        os.mkdir(path)
    with open(os.path.join(dirs["l2"], "f"), "w") as fh:
        fh.write("lower")
    with mount(dirs["mnt"], [dirs["l1"], dirs["l2"]], dirs["up"], dirs["wk"]) as m:
        with open(os.path.join(dirs["mnt"], "f"), "a") as fh:
            fh.write("+upper")
        if not os.path.exists(os.path.join(dirs["up"], "f")):
            raise OSError(errno.EIO, "the write did not reach the upper layer")
        return m.strategy


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found. ``None`` means "could not be probed" (see ``problems``)."""

    path: str
    kernel_release: str
    kernel_version: tuple[int, int, int]
    overlay_in_proc_filesystems: bool
    module_parameters: dict[str, str]
    backing_fstype: str | None
    d_type: bool | None
    trusted_xattr: bool | None
    user_xattr: bool | None
    o_tmpfile: bool | None
    rename_whiteout: bool | None
    new_mount_api: bool | None
    lowerdir_plus: bool | None
    lowerdir_fd: bool | None
    root: bool
    in_user_namespace: bool
    needs_userxattr: bool
    can_mount: bool
    mount_strategy: str | None
    mount_in_user_namespace: bool
    mount_error: str | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Overlays can be mounted here over this backing filesystem."""
        return self.can_mount and self.d_type is not False and self.kernel_version >= (4, 0, 0)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data (plus ``ok``)."""
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        return data

    def __str__(self) -> str:
        def mark(value: bool | None) -> str:
            return {True: "yes", False: "NO", None: "unknown"}[value]

        rows = [
            ("kernel", f"{self.kernel_release} (overlay2 needs 4.0+, lowerdir+ 6.8+, "
                       f"layer fds 6.13+)"),
            ("overlay in /proc/filesystems", mark(self.overlay_in_proc_filesystems)),
            ("module parameters", " ".join(f"{k}={v}" for k, v in
                                           sorted(self.module_parameters.items())) or "-"),
            ("path", self.path),
            ("backing filesystem", self.backing_fstype or "unknown"),
            ("d_type", mark(self.d_type)),
            ("trusted.* xattrs", mark(self.trusted_xattr)),
            ("user.* xattrs", mark(self.user_xattr)),
            ("O_TMPFILE", mark(self.o_tmpfile)),
            ("RENAME_WHITEOUT", mark(self.rename_whiteout)),
            ("new mount API (fsopen)", mark(self.new_mount_api)),
            ("lowerdir+", mark(self.lowerdir_plus)),
            ("layers as fds (FSCONFIG_SET_FD)", mark(self.lowerdir_fd)),
            ("root", mark(self.root)),
            ("in a user namespace", mark(self.in_user_namespace)),
            ("needs userxattr", mark(self.needs_userxattr)),
            ("can mount", mark(self.can_mount) + (
                f" ({self.mount_strategy}, in a new user namespace with userxattr as "
                f"unshare -Urm makes)" if self.can_mount and self.mount_in_user_namespace
                else f" ({self.mount_strategy})" if self.can_mount else "")),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        if self.mount_error:
            lines.append(f"{'mount error':<{width}}  {self.mount_error}")
        lines += [f"problem: {p}" for p in self.problems]
        lines.append(f"{'overall':<{width}}  {'OK' if self.ok else 'NOT OK'}")
        return "\n".join(lines)


def _probe_files(directory: str, problems: list[str]) -> dict[str, bool | None]:
    """d_type, xattrs, O_TMPFILE and RENAME_WHITEOUT, probed in a scratch ``directory``."""
    found: dict[str, bool | None] = {}
    regular = os.path.join(directory, "f")
    with open(regular, "w"):
        pass
    os.mkdir(os.path.join(directory, "d"))
    types = dict(_sys.read_dir_types(directory))
    found["d_type"] = types.get(b"f") == _sys.DT_REG and types.get(b"d") == _sys.DT_DIR
    for namespace in ("trusted", "user"):
        try:
            os.setxattr(regular, f"{namespace}.overlay.check", b"y")
            found[f"{namespace}_xattr"] = True
        except OSError as exc:
            found[f"{namespace}_xattr"] = False
            if namespace == "user" or (_has_cap_sys_admin() and not _in_user_namespace()):
                problems.append(f"{namespace}.* xattrs: {exc.strerror}")
    try:
        os.close(os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600))
        found["o_tmpfile"] = True
    except OSError as exc:
        found["o_tmpfile"] = False
        problems.append(f"O_TMPFILE: {exc.strerror} (copy-up falls back to a named temp)")
    try:
        _sys.renameat2(regular, os.path.join(directory, "g"), _sys.RENAME_WHITEOUT)
        st = os.lstat(regular)
        found["rename_whiteout"] = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    except OSError as exc:
        found["rename_whiteout"] = False
        problems.append(f"RENAME_WHITEOUT: {exc.strerror}")
    return found


def check(path: StrPath | None = None) -> CheckReport:
    """Report whether and how kernel overlays work here, for layers on ``path``'s
    filesystem (default: the temporary directory).

    Looks at the kernel version, /proc/filesystems, the overlay module parameters, the
    backing filesystem (d_type — XFS needs ``ftype=1`` —, trusted/user xattrs, O_TMPFILE,
    RENAME_WHITEOUT, probed in a scratch directory under ``path`` that is removed again),
    the new mount API (``fsopen``, ``lowerdir+``, layer fds), privileges, and finally does a
    real test mount in a private mount namespace (a user namespace when not privileged).

    Cost: one fork and one small mount, a dozen files, well under 100 ms.
    """
    base = _path(path if path is not None else tempfile.gettempdir(), "path")
    problems: list[str] = []
    release = os.uname().release
    version = _kernel_version(release)
    if version < (4, 0, 0):
        problems.append(f"kernel {release} is older than 4.0, the minimum for overlay2 "
                        f"(multiple lower layers); RHEL/CentOS need 3.10.0-514 or later")
    filesystems = _read("/proc/filesystems") or ""
    in_filesystems = any(line.split()[-1:] == ["overlay"] for line in filesystems.splitlines())
    if not in_filesystems:
        problems.append("overlay is not in /proc/filesystems (not built in, module not "
                        "loaded yet: modprobe overlay)")
    params: dict[str, str] = {}
    param_dir = "/sys/module/overlay/parameters"
    if os.path.isdir(param_dir):
        for name in sorted(os.listdir(param_dir)):
            value = _read(os.path.join(param_dir, name))
            if value is not None:
                params[name] = value.strip()

    fstype = _fstype_of(base)
    probes: dict[str, bool | None] = dict.fromkeys(
        ("d_type", "trusted_xattr", "user_xattr", "o_tmpfile", "rename_whiteout"))
    scratch = None
    try:
        scratch = tempfile.mkdtemp(prefix=".overlayfs-check-", dir=base)
    except OSError as exc:
        problems.append(f"cannot create a scratch directory in {base}: {exc.strerror}; "
                        f"only d_type of existing entries was checked")
        try:
            types = [t for _, t in _sys.read_dir_types(base)]
            probes["d_type"] = (all(t != _sys.DT_UNKNOWN for t in types) if types else None)
        except OSError:
            pass
    in_userns = _in_user_namespace()
    root = _has_cap_sys_admin() and not in_userns
    can_mount, strategy, mount_error, via_userns = False, None, None, False
    try:
        if scratch is not None:
            probes.update(_probe_files(scratch, problems))
            try:
                probe_dir = tempfile.mkdtemp(prefix="mount-", dir=scratch)
                if _has_cap_sys_admin():
                    strategy = run_in_private_namespace(_probe_mount, probe_dir)
                else:
                    via_userns = True
                    strategy = run_in_user_namespace(_probe_mount, probe_dir)
                can_mount = True
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                mount_error = f"{type(exc).__name__}: {exc}"
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if probes["d_type"] is False:
        hint = (" — this XFS was made with ftype=0; recreate it with mkfs.xfs -n ftype=1"
                if fstype == "xfs" else "")
        problems.append(f"the {fstype or 'backing'} filesystem at {base} does not report "
                        f"d_type: overlay cannot hide whiteouts there{hint}")
    if not can_mount and not _has_cap_sys_admin():
        problems.append("not root: mounting needs root, or a user namespace (unshare -Urm, "
                        "Linux 5.11+) where userxattr is used")

    support = _api_support()
    if support.fsopen:
        api: bool | None = True
        plus: bool | None = support.lowerdir_plus
        fds: bool | None = support.layer_fds
    elif support.error in (errno.ENOSYS, errno.ENODEV):
        api, plus, fds = False, False, False
    elif strategy and strategy.startswith("new-api"):  # refused here, worked in the userns
        api, plus, fds = True, True, strategy == "new-api-fd"
    else:
        api = plus = fds = None  # fsopen refused us: cannot tell
    return CheckReport(
        path=base, kernel_release=release, kernel_version=version,
        overlay_in_proc_filesystems=in_filesystems, module_parameters=params,
        backing_fstype=fstype, d_type=probes["d_type"], trusted_xattr=probes["trusted_xattr"],
        user_xattr=probes["user_xattr"], o_tmpfile=probes["o_tmpfile"],
        rename_whiteout=probes["rename_whiteout"], new_mount_api=api, lowerdir_plus=plus,
        lowerdir_fd=fds, root=root, in_user_namespace=in_userns,
        needs_userxattr=in_userns or not root, can_mount=can_mount,
        mount_strategy=strategy, mount_in_user_namespace=via_userns, mount_error=mount_error,
        problems=tuple(problems))


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
