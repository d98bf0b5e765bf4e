"""Mount real kernel overlays from Python: :func:`mount`, :func:`unmount` and :class:`Mount`,
the checks on disk before mounting, the two mount strategies, and the errors they raise.

Strategy (see ``docs/overlay-semantics.md`` §7):

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

The arguments are checked and normalised by ``_mountopts``; :func:`overlayfs.mounts` is in
``_mountinfo``, :func:`overlayfs.check` in ``_check`` and the private namespaces in
``_namespace``. Everything here is stdlib-only and importable without the compiled core;
:class:`Stack` is imported lazily by the functions that return one.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import _syscalls as _sys
from ._mountopts import _STRATEGIES, Strategy, StrPath, _build_spec, _path, _Spec

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs import Stack

__all__ = ["Mount", "mount", "unmount"]

#: fsconfig copies a string value with strndup_user(value, 256): at most 255 bytes.
FSCONFIG_VALUE_MAX: Final = 255

T = TypeVar("T")


# =========================================================================================
# Checks on disk before mounting
# =========================================================================================


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
        except BaseException as exc:  # re-raised in the caller
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
    pair = [spec.upper, spec.work] if spec.upper is not None and spec.work is not None else []
    every = [*spec.lowers, *spec.data_layers, *pair]

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
