"""Inspection verbs over any target: ls, stat, cat, readlink, tree, find, du, which,
changes (and ``diff`` without ``-o``), mount, umount, check."""

from __future__ import annotations

import argparse
import base64
import errno
import fnmatch
import math
import os
import stat
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._common import (
    TYPE_LETTERS,
    CliError,
    Progress,
    Resolved,
    UsageError,
    layer_dir,
    layer_label,
    open_target,
    print_json,
    record,
    rel_path,
    resolve,
    type_name,
    union_path,
    uses_options,
)

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs import Stack


def split_words(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(target words, path words) of a verb whose positionals are ``TARGET [PATH...]``:
    with --lower/--upper every positional is a path."""
    words: list[str] = list(args.words)
    if uses_options(args):
        return [], words
    if not words:
        raise UsageError("no TARGET given")
    return words[:1], words[1:]


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _sorted_names(stack: Stack, rel: str) -> list[str]:
    return sorted(stack.listdir(rel), key=os.fsencode)


def _lstat(stack: Stack, rel: str, shown: str) -> os.stat_result:
    try:
        return stack.lstat(rel)
    except OSError as e:
        raise OSError(e.errno, e.strerror or os.strerror(e.errno or 0), shown) from None


def _mtime_text(st: os.stat_result) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))


# --- ls ----------------------------------------------------------------------------------

def cmd_ls(args: argparse.Namespace) -> int:
    target, paths = split_words(args)
    with open_target(args, target) as (_, st):
        paths = paths or ["/"]
        groups: list[tuple[str, list[tuple[str, os.stat_result, int, str]]]] = []
        for shown in paths:
            rel = rel_path(shown)
            s = _lstat(st, rel, shown)
            listing = stat.S_ISDIR(s.st_mode) or (not args.long and stat.S_ISLNK(s.st_mode)
                                                    and st.isdir(rel))
            if args.directory or not listing:
                groups.append(("", [(rel, s, st.layer_of(rel), shown)]))
                continue
            items = []
            for entry in sorted(st.scandir(rel), key=lambda e: os.fsencode(e.name)):
                if not args.all and entry.name.startswith("."):
                    continue
                items.append((entry.path, entry.stat(follow_symlinks=False), entry.layer, entry.name))
            groups.append((shown if len(paths) > 1 else "", items))
        if args.json:
            print_json([record(st, r, s, la) for _, items in groups for r, s, la, _n in items])
            return 0
        out = sys.stdout
        for n, (header, items) in enumerate(groups):
            if header:
                out.write(f"{'' if n == 0 else chr(10)}{header}:\n")
            if args.long:
                _long(st, items, out)
            else:
                for _r, _s, _la, name in items:
                    out.write(f"{name}\n")
    return 0


def _long(stack: Stack, items: list[tuple[str, os.stat_result, int, str]], out: Any) -> None:
    rows = []
    for r, s, la, shown in items:
        if stat.S_ISCHR(s.st_mode) or stat.S_ISBLK(s.st_mode):
            size = f"{os.major(s.st_rdev)}, {os.minor(s.st_rdev)}"
        else:
            size = str(s.st_size)
        name = shown
        if stat.S_ISLNK(s.st_mode):
            name += " -> " + stack.readlink(r)
        rows.append((stat.filemode(s.st_mode), str(s.st_nlink), str(s.st_uid), str(s.st_gid), size,
                     _mtime_text(s), name, layer_label(stack, la) if la is not None else ""))
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(8)]
    for row in rows:
        out.write(f"{row[0]} {row[1]:>{widths[1]}} {row[2]:<{widths[2]}} {row[3]:<{widths[3]}} "
                  f"{row[4]:>{widths[4]}} {row[5]} {row[6]}\n")


# --- stat, cat, readlink -----------------------------------------------------------------

def cmd_stat(args: argparse.Namespace) -> int:
    target, paths = split_words(args)
    if not paths:
        raise UsageError("no PATH given")
    with open_target(args, target) as (_, st):
        recs = []
        for shown in paths:
            rel = rel_path(shown)
            recs.append(record(st, rel, _lstat(st, rel, shown), st.layer_of(rel)))
        if args.json:
            print_json(recs)
            return 0
        for rec in recs:
            kind = rec["type"]
            extra = f"  Device type: {rec['major']},{rec['minor']}" if "major" in rec else ""
            link = f" -> {rec['target']}" if "target" in rec else ""
            sys.stdout.write(
                f"  File: {rec['path']}{link}\n"
                f"  Type: {kind}  Size: {rec['size']}  Blocks: {rec['blocks']}  "
                f"Links: {rec['nlink']}{extra}\n"
                f"Access: ({rec['mode']:04o}/{rec['mode_text']})  Uid: {rec['uid']}  Gid: {rec['gid']}\n"
                f"Modify: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rec['mtime']))}\n"
                f" Layer: {layer_label(st, rec['layer'])}  {rec['layer_dir']}\n")
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    target, paths = split_words(args)
    if not paths:
        raise UsageError("no PATH given")
    with open_target(args, target) as (_, st):
        if args.json:
            recs = []
            for shown in paths:
                with _open(st, shown) as f:
                    data = f.read()
                rec: dict[str, Any] = {"path": union_path(rel_path(shown)), "size": len(data)}
                try:
                    rec["text"] = data.decode()
                except UnicodeDecodeError:
                    rec["base64"] = base64.b64encode(data).decode()
                recs.append(rec)
            print_json(recs)
            return 0
        sys.stdout.flush()
        out = sys.stdout.buffer
        for shown in paths:
            with _open(st, shown) as f:
                while chunk := f.read(1 << 20):
                    out.write(chunk)
        out.flush()
    return 0


def _open(st: Stack, shown: str) -> Any:
    rel = rel_path(shown)
    try:
        if st.isdir(rel):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), shown)
        return st.open(rel, "rb")
    except OSError as e:
        raise OSError(e.errno, e.strerror or os.strerror(e.errno or 0), shown) from None


def cmd_readlink(args: argparse.Namespace) -> int:
    target, paths = split_words(args)
    if not paths:
        raise UsageError("no PATH given")
    with open_target(args, target) as (_, st):
        recs = []
        for shown in paths:
            try:
                recs.append({"path": union_path(rel_path(shown)), "target": st.readlink(rel_path(shown))})
            except OSError as e:
                raise OSError(e.errno, e.strerror or os.strerror(e.errno or 0), shown) from None
        if args.json:
            print_json(recs)
        else:
            for rec in recs:
                sys.stdout.write(rec["target"] + "\n")
    return 0


# --- tree, find, du ----------------------------------------------------------------------

def _walk(st: Stack, rel: str, depth: int, max_depth: int | None, progress: Progress
          ) -> Iterator[tuple[str, os.stat_result, int, int]]:
    """(path, lstat, layer, depth) of everything under the directory ``rel``, depth
    first, names sorted; symlinks are not followed."""
    if max_depth is not None and depth >= max_depth:
        return
    for entry in sorted(st.scandir(rel), key=lambda e: os.fsencode(e.name)):
        s = entry.stat(follow_symlinks=False)
        progress.count()
        yield entry.path, s, entry.layer, depth
        if stat.S_ISDIR(s.st_mode):
            yield from _walk(st, entry.path, depth + 1, max_depth, progress)


def _kind_text(st: Stack, rel: str, s: os.stat_result) -> str:
    kind = type_name(s.st_mode)
    if kind == "file":
        return f"file {s.st_size} B"
    if kind == "symlink":
        return "symlink -> " + st.readlink(rel)
    if kind in ("char", "block"):
        return f"{kind} {os.major(s.st_rdev)}:{os.minor(s.st_rdev)}"
    return kind


def cmd_tree(args: argparse.Namespace) -> int:
    target, paths = split_words(args)
    if len(paths) > 1:
        raise UsageError("tree takes one PATH")
    shown = paths[0] if paths else "/"
    with open_target(args, target) as (_, st):
        rel = rel_path(shown)
        top = _lstat(st, rel, shown)
        progress = Progress("tree")
        try:
            rows = list(_walk(st, rel, 0, args.depth, progress)) if stat.S_ISDIR(top.st_mode) else []
        finally:
            progress.close()
        if args.json:
            out = []
            for r, s, la, d in rows:
                rec = record(st, r, s, la)
                rec["depth"] = d
                out.append(rec)
            print_json(out)
            return 0
        w = sys.stdout.write
        w(f"{union_path(rel)}  ({_kind_text(st, rel, top)}, from {layer_label(st, st.layer_of(rel))})\n")
        for r, s, la, d in rows:
            name = r.rsplit("/", 1)[-1]
            w(f"  {'  ' * d}{name:<{max(1, 22 - 2 * d)}} {_kind_text(st, r, s):<28} "
              f"from {layer_label(st, la)}\n")
    return 0


def _perm_test(spec: str) -> Any:
    """GNU find -perm: MODE exact, -MODE all of these bits, /MODE any of them (octal)."""
    how, digits = ("all", spec[1:]) if spec.startswith("-") else \
        ("any", spec[1:]) if spec.startswith("/") else ("exact", spec)
    try:
        want = int(digits, 8)
    except ValueError:
        raise UsageError(f"-perm {spec}: not an octal mode (MODE, -MODE or /MODE)") from None
    if how == "exact":
        return lambda m: stat.S_IMODE(m) == want
    if how == "all":
        return lambda m: stat.S_IMODE(m) & want == want
    return lambda m: want == 0 or bool(stat.S_IMODE(m) & want)


def cmd_find(args: argparse.Namespace) -> int:
    target, paths = split_words(args)
    types: set[str] | None = None
    if args.type:
        types = set()
        for letter in args.type.split(","):
            if letter not in TYPE_LETTERS:
                raise UsageError(f"-type {args.type}: use f, d, l, c, b, p or s")
            types.add(TYPE_LETTERS[letter])
    perm = _perm_test(args.perm) if args.perm else None
    with open_target(args, target) as (_, st):
        progress = Progress("find")
        recs: list[dict[str, Any]] = []
        try:
            for shown in paths or ["/"]:
                rel = rel_path(shown)
                top = _lstat(st, rel, shown)
                rows = [(rel, top, st.layer_of(rel))]
                if stat.S_ISDIR(top.st_mode):
                    rows += [(r, s, la) for r, s, la, _d in _walk(st, rel, 0, args.maxdepth, progress)]
                for r, s, la in rows:
                    name = r.rsplit("/", 1)[-1] if r else "/"
                    if types is not None and type_name(s.st_mode) not in types:
                        continue
                    if args.name is not None and not fnmatch.fnmatchcase(name, args.name):
                        continue
                    if perm is not None and not perm(s.st_mode):
                        continue
                    if args.json:
                        recs.append(record(st, r, s, la))
                    else:
                        sys.stdout.write(union_path(r) + "\n")
        finally:
            progress.close()
        if args.json:
            print_json(recs)
    return 0


def human(n: int) -> str:
    """GNU du -h: powers of 1024, rounded up, one decimal below 10."""
    if n < 1024:
        return str(n)
    amount = float(n)
    for unit in "KMGTPEZY":
        amount /= 1024
        if amount < 10:
            tenths = math.ceil(amount * 10 - 1e-9) / 10
            if tenths < 10:
                return f"{tenths:.1f}{unit}"
            return f"10{unit}"
        if math.ceil(amount - 1e-9) < 1024:
            return f"{math.ceil(amount - 1e-9)}{unit}"
    return f"{n}B"


def cmd_du(args: argparse.Namespace) -> int:
    target, paths = split_words(args)
    with open_target(args, target) as (_, st):
        seen: set[tuple[int, int]] = set()
        out: list[tuple[str, int, int]] = []
        progress = Progress("du")

        def usage(rel: str, s: os.stat_result) -> tuple[int, int]:
            key = (s.st_dev, s.st_ino)
            if s.st_nlink > 1 and not stat.S_ISDIR(s.st_mode):
                if key in seen:
                    return 0, 0
                seen.add(key)
            return s.st_blocks * 512, s.st_size

        def visit(rel: str, s: os.stat_result, depth: int) -> tuple[int, int]:
            disk, apparent = usage(rel, s)
            progress.count()
            if stat.S_ISDIR(s.st_mode):
                for name in _sorted_names(st, rel):
                    child = _join(rel, name)
                    d, a = visit(child, st.lstat(child), depth + 1)
                    disk += d
                    apparent += a
                if not args.summarize or depth == 0:
                    out.append((rel, disk, apparent))
            elif depth == 0:
                out.append((rel, disk, apparent))
            return disk, apparent

        try:
            for shown in paths or ["/"]:
                rel = rel_path(shown)
                visit(rel, _lstat(st, rel, shown), 0)
        finally:
            progress.close()
        if args.json:
            print_json([{"path": union_path(r), "size": d, "apparent_size": a} for r, d, a in out])
            return 0
        for r, d, _a in out:
            size = human(d) if args.human_readable else str(-(-d // 1024))
            sys.stdout.write(f"{size}\t{union_path(r)}\n")
    return 0


# --- which -------------------------------------------------------------------------------

def _host_lstat(layer: str, rel: str) -> os.stat_result | None:
    """lstat of ``rel`` inside the layer dir, never through a symlink of the layer."""
    fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = [p for p in rel.split("/") if p]
        for i, part in enumerate(parts):
            try:
                s = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except OSError:
                return None
            if i == len(parts) - 1:
                return s
            if not stat.S_ISDIR(s.st_mode):
                return None
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.stat(fd)
    finally:
        os.close(fd)


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def which_record(target: Resolved, st: Stack, rel: str, shown: str) -> dict[str, Any]:
    try:
        supplier: int | None = st.layer_of(rel)
        s_merged: os.stat_result | None = st.lstat(rel)
    except FileNotFoundError:
        supplier, s_merged = None, None
    ns = st.xattr_namespace
    indices = ([0] if st.upper is not None else []) + list(range(1, len(st.lowers) + 1))
    layers = []
    hidden = False
    found_any = False
    for idx in indices:
        host = layer_dir(st, idx)
        if host is None:
            continue
        s = _host_lstat(host, rel)
        if s is None:
            continue
        found_any = True
        full = os.path.join(host, rel)
        kind = type_name(s.st_mode)
        whiteout = (stat.S_ISCHR(s.st_mode) and s.st_rdev == 0) or \
            _xattr(full, f"{ns}.overlay.whiteout") is not None
        opaque = kind == "dir" and _xattr(full, f"{ns}.overlay.opaque") == b"y"
        if supplier is not None and idx == supplier:
            state = "supplies"
        elif hidden or (supplier is not None and idx < supplier):
            state = "hidden"
        elif whiteout:
            state = "whiteout"
        elif kind == "dir" and s_merged is not None and stat.S_ISDIR(s_merged.st_mode):
            state = "merged"
        else:
            state = "hidden"
        if whiteout or opaque or kind != "dir":
            hidden = True  # what lies below is not seen
        layers.append({"index": idx, "label": layer_label(st, idx), "dir": host,
                       "host_path": full, "type": "whiteout" if whiteout else kind,
                       "opaque": opaque, "state": state})
    if supplier is None and not found_any:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)
    return {"path": union_path(rel), "exists": supplier is not None, "layer": supplier,
            "layer_dir": layer_dir(st, supplier) if supplier is not None else None,
            "type": type_name(s_merged.st_mode) if s_merged is not None else None,
            "layers": layers}


def cmd_which(args: argparse.Namespace) -> int:
    target_words, paths = split_words(args)
    if not paths:
        raise UsageError("no PATH given")
    with open_target(args, target_words) as (target, st):
        recs = [which_record(target, st, rel_path(p), p) for p in paths]
        if args.json:
            print_json(recs)
            return 0 if all(rec["exists"] for rec in recs) else 1
        for rec in recs:
            if rec["exists"]:
                sys.stdout.write(f"{rec['path']}: {rec['type']} from "
                                 f"{layer_label(st, rec['layer'])} {rec['layer_dir']}\n")
            else:
                sys.stdout.write(f"{rec['path']}: deleted (whited out)\n")
            for la in rec["layers"]:
                flag = " opaque" if la["opaque"] else ""
                sys.stdout.write(f"  {la['label']:<8} {la['state']:<9} {la['type'] + flag:<15} "
                                 f"{la['host_path']}\n")
        if not all(rec["exists"] for rec in recs):
            return 1
    return 0


# --- changes -----------------------------------------------------------------------------

_LETTER = {"added": "A", "changed": "C", "deleted": "D"}


def list_changes(args: argparse.Namespace, target: Resolved) -> int:
    from overlayfs.changes import changes

    layer, below = target.change_pair()
    found = changes(layer, below, xattr_namespace=target.xattr_namespace,  # type: ignore[arg-type]
                    whiteouts=target.whiteouts)  # type: ignore[arg-type]
    if args.json:
        print_json([{"kind": c.kind, "op": _LETTER[c.kind], "path": union_path(c.path),
                     "opaque": c.opaque} for c in found])
        return 0
    for c in found:
        sys.stdout.write(f"{_LETTER[c.kind]} {union_path(c.path)}\n")
    return 0


def cmd_changes(args: argparse.Namespace) -> int:
    import contextlib

    with contextlib.ExitStack() as stack:
        return list_changes(args, resolve(args, list(args.words), stack))


# --- mount, umount, check ------------------------------------------------------------------

def cmd_mount(args: argparse.Namespace) -> int:
    import contextlib

    from overlayfs import mount

    words = list(args.words)
    if not words:
        raise UsageError("no MOUNTPOINT given")
    point = words.pop()
    with contextlib.ExitStack() as stack:
        target = resolve(args, words, stack)
        if target.kind == "image":
            raise CliError(f"{target.spec}: an image archive is read through a temporary store; "
                           f"import it first (overlayfs unpack IMAGE STORE) and mount a layer of it")
        if target.upper and target.work:
            m = mount(point, target.lowers, target.upper, target.work, readonly=args.read_only)
        else:
            m = mount(point, target.layers, options={"userxattr": target.xattr_namespace == "user"}
                      if target.xattr_namespace == "user" else None)
    info = {"mountpoint": m.target, "lowers": [os.fsdecode(p) for p in m.lowers],
            "upper": m.upper, "work": m.work, "readonly": m.readonly, "strategy": m.strategy}
    if args.json:
        print_json(info)
    else:
        sys.stdout.write(f"{m.target}\n")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from overlayfs import unmount

    unmount(args.mountpoint, lazy=args.lazy)
    if args.json:
        print_json({"mountpoint": os.path.abspath(args.mountpoint), "unmounted": True})
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from overlayfs._check import check

    report = check(args.path)
    if args.json:
        print_json(report.as_dict())
    else:
        sys.stdout.write(f"{report}\n")
    return 0 if report.ok else 1
