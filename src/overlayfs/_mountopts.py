"""The arguments of :func:`overlayfs.mount`: layer paths, the layer count and the overlay
options, checked and normalised into a :class:`_Spec` (absolute paths, options in the
kernel's spelling), with ``ValueError`` before any system call.

The option table follows ``fs/overlayfs/params.c`` (``ovl_parameter_spec``) and the
conflicts ``ovl_fs_params_verify`` rejects; the layer cap is ``OVL_MAX_STACK``. What can only
be checked on disk (missing layers, workdir inside upperdir…) is ``_mount._validate``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from ._namespace import _in_user_namespace

__all__ = ["MAX_LOWERS"]

#: The kernel's cap on lower layers, data-only layers included (OVL_MAX_STACK, params.h).
MAX_LOWERS: Final = 500

StrPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]
Strategy = Literal["auto", "new-api", "new-api-path", "legacy"]

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
