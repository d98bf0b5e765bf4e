"""Overlay mounts as the kernel shows them in ``/proc/self/mountinfo``: :func:`mounts` and
:class:`MountInfo`, with the layers decoded (the kernel's ``\\ooo`` escapes, the legacy
``lowerdir=a:b::data`` form with its backslash escapes, ``lowerdir+``/``datadir+``).

Reads only: the one call that changes anything, :meth:`MountInfo.unmount`, is
``_mount.unmount``.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ._mount import unmount
from ._mountopts import StrPath

__all__ = ["MountInfo", "mounts"]


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
