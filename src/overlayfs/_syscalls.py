"""ctypes bindings for the mount-related system calls used by :mod:`overlayfs._mount` and
its siblings (``_namespace``, ``_check``) and by :mod:`overlayfs.store`.

Only what the mount orchestration needs lives here, each call as a thin wrapper that
raises ``OSError(errno, strerror, filename)`` on failure and does nothing else:

* the new mount API — ``fsopen``/``fsconfig``/``fsmount``/``move_mount``/``open_tree``;
* ``mount(2)``, ``umount2(2)``, ``unshare(2)``, ``renameat2(2)``, ``statx(2)``;
* ``opendir``/``readdir64`` to read ``d_type`` (which :func:`os.scandir` hides).

Calls go through glibc's own wrappers when the C library has them (glibc >= 2.36 for the
mount API, 2.28 for ``statx``/``renameat2``), so no syscall number is needed at all. When a
wrapper is missing, the new mount API falls back to ``syscall(2)`` with the numbers from the
kernel's unified table: 428 ``open_tree``, 429 ``move_mount``, 430 ``fsopen``, 431
``fsconfig``, 432 ``fsmount`` — the same on x86_64, aarch64, arm, riscv, powerpc, s390,
loongarch, i386 and every other architecture that uses the generic table.  Only three
ABIs offset that table: alpha (+110) and ia64 (+1024) are handled here; MIPS (o32 +4000,
n64 +5000, n32 +6000) cannot be told apart from Python, so MIPS needs the libc wrappers.

Structures are laid out from the kernel UAPI (``struct statx`` from ``linux/stat.h``) and
glibc (``struct dirent64``); both are architecture-independent because they only use
fixed-width fields, and ``tests/test_mount.py`` checks sizes and offsets.

Every wrapper costs one system call plus about 1 µs of ctypes overhead.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from _ctypes import CFuncPtr as _CFunc  # a C function as ctypes loads it
from typing import Final

__all__ = [
    "AT_EMPTY_PATH", "AT_FDCWD", "AT_SYMLINK_NOFOLLOW", "CLONE_FS", "CLONE_NEWNS",
    "CLONE_NEWUSER", "DT_DIR", "DT_REG", "DT_UNKNOWN", "Dirent64", "FSCONFIG_CMD_CREATE",
    "FSCONFIG_SET_FD", "FSCONFIG_SET_FLAG", "FSCONFIG_SET_STRING", "FSMOUNT_CLOEXEC",
    "FSOPEN_CLOEXEC", "MNT_DETACH", "MOUNT_ATTR_RDONLY", "MOVE_MOUNT_F_EMPTY_PATH",
    "MS_BIND", "MS_PRIVATE", "MS_RDONLY", "MS_REC", "MS_REMOUNT", "NEW_MOUNT_API_SYSCALLS",
    "RENAME_NOREPLACE", "RENAME_WHITEOUT", "STATX_ATTR_MOUNT_ROOT", "STATX_MNT_ID", "Statx",
    "StatxTimestamp", "UMOUNT_NOFOLLOW", "fsconfig", "fsmount", "fsopen", "mount",
    "move_mount", "mount_id", "new_mount_api_numbers", "read_dir_types", "renameat2", "statx",
    "umount2", "unshare",
]

# --- constants (include/uapi/linux/{fcntl,mount,sched,stat,fs}.h) -------------------------

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_EMPTY_PATH: Final = 0x1000

CLONE_FS: Final = 0x00000200
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUSER: Final = 0x10000000

MS_RDONLY: Final = 1
MS_REMOUNT: Final = 32
MS_BIND: Final = 4096
MS_REC: Final = 16384
MS_PRIVATE: Final = 1 << 18

MNT_DETACH: Final = 2
UMOUNT_NOFOLLOW: Final = 8

FSOPEN_CLOEXEC: Final = 1
FSCONFIG_SET_FLAG: Final = 0
FSCONFIG_SET_STRING: Final = 1
FSCONFIG_SET_FD: Final = 5
FSCONFIG_CMD_CREATE: Final = 6
FSMOUNT_CLOEXEC: Final = 1
MOUNT_ATTR_RDONLY: Final = 0x1
MOVE_MOUNT_F_EMPTY_PATH: Final = 0x4

RENAME_NOREPLACE: Final = 1
RENAME_WHITEOUT: Final = 4

STATX_MNT_ID: Final = 0x1000
STATX_ATTR_MOUNT_ROOT: Final = 0x2000

DT_UNKNOWN: Final = 0
DT_DIR: Final = 4
DT_REG: Final = 8

#: Syscall numbers of the new mount API in the kernel's unified table (scripts/syscall.tbl).
NEW_MOUNT_API_SYSCALLS: Final = {
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
}

# --- structures ---------------------------------------------------------------------------


class StatxTimestamp(ctypes.Structure):
    """``struct statx_timestamp``: 16 bytes on every architecture."""

    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("_reserved", ctypes.c_int32)]


class Statx(ctypes.Structure):
    """``struct statx`` (linux/stat.h): 256 bytes, ``stx_mnt_id`` at offset 0x90."""

    _fields_ = [
        ("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32), ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32), ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", StatxTimestamp), ("stx_btime", StatxTimestamp),
        ("stx_ctime", StatxTimestamp), ("stx_mtime", StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("stx_dio_mem_align", ctypes.c_uint32), ("stx_dio_offset_align", ctypes.c_uint32),
        ("_spare3", ctypes.c_uint64 * 12),
    ]


class Dirent64(ctypes.Structure):
    """glibc ``struct dirent64`` (musl ``struct dirent``): the same field offsets on every
    architecture (280 bytes on 64-bit ones)."""

    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


# --- libc ---------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_c_int, _c_uint = ctypes.c_int, ctypes.c_uint
_c_char_p, _c_void_p = ctypes.c_char_p, ctypes.c_void_p


def _libc_func(name: str, restype: type, argtypes: list[type]) -> _CFunc | None:
    """Return the typed glibc wrapper ``name`` or None if this C library lacks it."""
    func = getattr(_libc, name, None)
    if func is None:
        return None
    func.restype = restype
    func.argtypes = argtypes
    return func


def new_mount_api_numbers(machine: str | None = None) -> dict[str, int] | None:
    """The new-mount-API syscall numbers for ``machine`` (default: this one).

    Returns None where they cannot be known from Python (MIPS, whose offset depends on the
    ABI). Cost: none beyond a dict copy.
    """
    machine = (machine or platform.machine()).lower()
    if machine.startswith("mips"):
        return None
    offset = 110 if machine.startswith("alpha") else 1024 if machine.startswith("ia64") else 0
    return {name: nr + offset for name, nr in NEW_MOUNT_API_SYSCALLS.items()}


_NUMBERS = new_mount_api_numbers()
_syscall = _libc_func("syscall", ctypes.c_long, [])  # variadic: argtypes stay open
if _syscall is not None:
    _syscall.argtypes = None  # type: ignore[assignment]  # variadic: ctypes takes None here


def _via_syscall(name: str) -> _CFunc | None:
    """A callable issuing syscall ``name`` by number, for C libraries without the wrapper."""
    if _syscall is None or _NUMBERS is None:
        return None
    number = ctypes.c_long(_NUMBERS[name])

    def call(*args: object) -> int:
        # Every argument is passed as a full machine word: variadic ints would be 32-bit.
        words = [a if isinstance(a, (ctypes.c_char_p, ctypes.c_void_p))
                 else ctypes.c_long(a) for a in args]  # type: ignore[arg-type]
        return int(_syscall(number, *words))

    return call  # type: ignore[return-value]


def _wrapped_args(args: tuple[object, ...]) -> tuple[object, ...]:
    """Wrap bytes/None in pointer types so the raw-syscall path passes them as pointers."""
    return tuple(ctypes.c_char_p(a) if isinstance(a, bytes) or a is None else a for a in args)


_fsopen = _libc_func("fsopen", _c_int, [_c_char_p, _c_uint])
_fsconfig = _libc_func("fsconfig", _c_int, [_c_int, _c_uint, _c_char_p, _c_char_p, _c_int])
_fsmount = _libc_func("fsmount", _c_int, [_c_int, _c_uint, _c_uint])
_move_mount = _libc_func("move_mount", _c_int, [_c_int, _c_char_p, _c_int, _c_char_p, _c_uint])
_raw = {name: _via_syscall(name) for name in NEW_MOUNT_API_SYSCALLS}

_mount = _libc_func("mount", _c_int, [_c_char_p, _c_char_p, _c_char_p, ctypes.c_ulong, _c_char_p])
_umount2 = _libc_func("umount2", _c_int, [_c_char_p, _c_int])
_unshare = _libc_func("unshare", _c_int, [_c_int])
_renameat2 = _libc_func("renameat2", _c_int, [_c_int, _c_char_p, _c_int, _c_char_p, _c_uint])
_statx = _libc_func("statx", _c_int, [_c_int, _c_char_p, _c_int, _c_uint, ctypes.POINTER(Statx)])
_opendir = _libc_func("opendir", _c_void_p, [_c_char_p])
_readdir64 = (_libc_func("readdir64", ctypes.POINTER(Dirent64), [_c_void_p])
              # musl >= 1.2.4 dropped the *64 aliases; its struct dirent is this layout
              or _libc_func("readdir", ctypes.POINTER(Dirent64), [_c_void_p]))
_closedir = _libc_func("closedir", _c_int, [_c_void_p])


def _check(result: int, name: str, filename: object = None) -> int:
    """Turn a -1 return into ``OSError(errno, "<name>: <strerror>", filename)``."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}", filename)
    return result


def _call_mount_api(name: str, wrapper: _CFunc | None, *args: object) -> int:
    """Call a new-mount-API function through glibc, else by number, else fail with ENOSYS."""
    if wrapper is not None:
        return int(wrapper(*args))
    raw = _raw[name]
    if raw is None:
        ctypes.set_errno(errno.ENOSYS)  # neither a wrapper nor a known number
        return -1
    return raw(*_wrapped_args(args))


def _b(path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


# --- the wrappers -------------------------------------------------------------------------


def fsopen(fsname: str, flags: int = FSOPEN_CLOEXEC) -> int:
    """``fsopen(2)``: a new filesystem context fd for ``fsname``. Raises OSError."""
    return _check(_call_mount_api("fsopen", _fsopen, fsname.encode(), flags), "fsopen")


def fsconfig(fd: int, cmd: int, key: str | None = None, value: bytes | None = None,
             aux: int = 0) -> None:
    """``fsconfig(2)`` on context ``fd``. ``value`` is sent as-is (at most 255 bytes for
    strings, or the kernel gives EINVAL). Raises OSError."""
    _check(_call_mount_api("fsconfig", _fsconfig, fd, cmd, _b(key), value, aux), "fsconfig")


def fsmount(fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    """``fsmount(2)``: a detached mount fd for the created superblock. Raises OSError."""
    return _check(_call_mount_api("fsmount", _fsmount, fd, flags, attr_flags), "fsmount")


def move_mount(from_dfd: int, from_path: str, to_dfd: int, to_path: str | os.PathLike[str],
               flags: int) -> None:
    """``move_mount(2)``: attach a mount, e.g. ``(mfd, "", AT_FDCWD, target,
    MOVE_MOUNT_F_EMPTY_PATH)``. Raises OSError naming ``to_path``."""
    _check(_call_mount_api("move_mount", _move_mount, from_dfd, _b(from_path), to_dfd,
                           _b(to_path), flags), "move_mount", os.fspath(to_path))


def mount(source: str | None, target: str | os.PathLike[str], fstype: str | None, flags: int,
          data: bytes | None) -> None:
    """``mount(2)``. ``data`` is copied by the kernel up to one page (4095 bytes plus NUL on
    4 KiB pages) and silently cut beyond: callers must check the length. Raises OSError."""
    assert _mount is not None, "the C library has no mount()"
    _check(_mount(_b(source), _b(target), _b(fstype), flags, data), "mount", os.fspath(target))


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    """``umount2(2)``. Raises OSError naming ``target``."""
    assert _umount2 is not None, "the C library has no umount2()"
    _check(_umount2(_b(target), flags), "umount2", os.fspath(target))


def unshare(flags: int) -> None:
    """``unshare(2)`` for the calling thread (``CLONE_FS``) or process. Raises OSError."""
    assert _unshare is not None, "the C library has no unshare()"
    _check(_unshare(flags), "unshare")


def renameat2(old: str | os.PathLike[str], new: str | os.PathLike[str], flags: int,
              old_dfd: int = AT_FDCWD, new_dfd: int = AT_FDCWD) -> None:
    """``renameat2(2)``; EINVAL where the filesystem lacks ``flags``. Raises OSError."""
    if _renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2: not provided by the C library", os.fspath(old))
    _check(_renameat2(old_dfd, _b(old), new_dfd, _b(new), flags), "renameat2", os.fspath(old))


def statx(path: str | os.PathLike[str], mask: int, flags: int = AT_SYMLINK_NOFOLLOW,
          dfd: int = AT_FDCWD) -> Statx:
    """``statx(2)`` returning the raw :class:`Statx`; check ``stx_mask`` for what the kernel
    filled. Raises OSError."""
    if _statx is None:
        raise OSError(errno.ENOSYS, "statx: not provided by the C library", os.fspath(path))
    buf = Statx()
    _check(_statx(dfd, _b(path), flags, mask, ctypes.byref(buf)), "statx", os.fspath(path))
    return buf


def mount_id(path: str | os.PathLike[str], follow_symlinks: bool = True) -> int | None:
    """The id of the mount that ``path`` is on, as in the first field of
    /proc/self/mountinfo, or None if the kernel cannot tell (before 5.8). One statx call."""
    st = statx(path, STATX_MNT_ID, 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW)
    return int(st.stx_mnt_id) if st.stx_mask & STATX_MNT_ID else None


def read_dir_types(path: str | os.PathLike[str]) -> list[tuple[bytes, int]]:
    """``(name, d_type)`` for each entry of directory ``path`` (without ``.`` and ``..``), as
    getdents returned them; ``d_type`` is ``DT_UNKNOWN`` on filesystems without d_type
    support. Cost: one opendir plus a getdents call per 32 KiB of entries."""
    assert _opendir is not None and _readdir64 is not None and _closedir is not None
    handle = _opendir(_b(path))
    if not handle:
        _check(-1, "opendir", os.fspath(path))
    try:
        entries: list[tuple[bytes, int]] = []
        while True:
            ctypes.set_errno(0)
            entry = _readdir64(handle)
            if not entry:
                if ctypes.get_errno():
                    _check(-1, "readdir", os.fspath(path))
                return entries
            name = entry.contents.d_name
            if name not in (b".", b".."):
                entries.append((name, int(entry.contents.d_type)))
    finally:
        _closedir(handle)
