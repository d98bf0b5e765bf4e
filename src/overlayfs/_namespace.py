"""Private mount namespaces, and which user namespace this process is in.

:func:`run_in_private_namespace` calls a function in a forked child that unshared its mount
namespace (``unshare -m``) and made every mount private, and hands back its result or
exception; :func:`run_in_user_namespace` does the same in a new user namespace too
(``unshare -Urm``). :func:`_in_user_namespace` tells whether this process is outside the
initial user namespace, where overlay needs ``userxattr``.

Stdlib-only and a leaf: it imports nothing from the rest of the package but ``_syscalls``.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from . import _syscalls as _sys

__all__ = ["run_in_private_namespace", "run_in_user_namespace"]

T = TypeVar("T")


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _in_user_namespace() -> bool:
    """True unless this process is in the initial user namespace (full identity map)."""
    text = _read("/proc/self/uid_map")
    if text is None:
        return False
    return text.split() != ["0", "0", "4294967295"]


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
            except BaseException as exc:  # sent to the parent
                payload = ("error", exc, traceback.format_exc())
            try:
                blob = pickle.dumps(payload)
                pickle.loads(blob)  # what cannot be rebuilt in the parent goes as text
            except Exception as exc:
                what = payload[1] if payload[0] == "error" else "the result"
                blob = pickle.dumps(("error", RuntimeError(
                    f"{what!r} could not be sent back from the namespace child: {exc}"),
                    payload[2] if payload[0] == "error" else ""))
            with os.fdopen(write_end, "wb") as out:
                out.write(blob)
        except BaseException:
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
    error = payload[1]
    if payload[2]:
        error.add_note(f"raised in the private mount namespace child (pid {pid}):\n"
                       f"{payload[2].rstrip()}")
    raise error


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
