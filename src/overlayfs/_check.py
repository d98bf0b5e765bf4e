""":func:`check`: whether and how kernel overlays work on this machine, for layers on a given
filesystem, as a :class:`CheckReport` (``python -m overlayfs check`` prints it).

The probes: kernel version, ``/proc/filesystems`` and the overlay module parameters, the
backing filesystem (d_type, xattrs, O_TMPFILE, RENAME_WHITEOUT), the new mount API,
privileges, and a real test mount with :func:`overlayfs.mount` in a private namespace.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import stat
import tempfile
from typing import Any

from . import _syscalls as _sys
from ._mount import _api_support, mount
from ._mountopts import StrPath, _path
from ._namespace import _in_user_namespace, _read, run_in_private_namespace, run_in_user_namespace

__all__ = ["CheckReport", "check"]


def _kernel_version(release: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not match:
        return (0, 0, 0)
    return (int(match[1]), int(match[2]), int(match[3] or 0))


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
            except Exception as exc:  # reported, not raised
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
