"""Layer and image verbs: apply, diff (-o: a layer tar), export, squash, layers, diffid,
unpack."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, cast

from ._common import (
    CliError,
    Progress,
    Resolved,
    UsageError,
    output_arg,
    print_json,
    resolve,
    spool_stdin,
)

if TYPE_CHECKING:  # pragma: no cover
    from overlayfs.image import Image


# --- apply ---------------------------------------------------------------------------------

def add_apply(p: argparse.ArgumentParser) -> None:
    p.add_argument("layer", help="the layer tar (plain, gzip, zstd, bzip2 or xz), or - for stdin")
    p.add_argument("dir", help="the layer directory to create (or, --rootfs, the tree to apply to)")
    p.add_argument("--lower", action="append", default=[], metavar="DIR",
                   help="a lower layer directory, top-most first (repeat): implied parent "
                        "attributes, hardlinks to lower files, an opaque root")
    p.add_argument("--rootfs", action="store_true", help="apply into an existing tree (moby ApplyLayer)")
    p.add_argument("--whiteouts", choices=["chardev", "xattr"], default="chardev",
                   help="whiteout form in layer mode (default: chardev, char 0:0)")
    p.add_argument("--userxattr", action="store_true", help="user.overlay.* instead of trusted.overlay.*")
    p.add_argument("--no-devices", action="store_true", help="skip char and block devices")
    p.add_argument("--no-same-owner", action="store_true", help="do not chown to the tar's ids")
    p.add_argument("--verify-diff-id", metavar="sha256:HEX", help="refuse a layer with another diff ID")
    p.add_argument("--max-size", type=int, metavar="BYTES", help="refuse more uncompressed bytes")
    p.add_argument("--tar-split", metavar="FILE", help="write the tar-split record (gzip) to FILE")
    p.add_argument("--no-sync", action="store_true", help="skip the syncfs before publishing")


def cmd_apply(args: argparse.Namespace) -> int:
    from overlayfs.apply import apply_layer

    total = None
    if args.layer != "-":
        try:
            total = os.path.getsize(args.layer)
        except OSError:
            total = None
    progress = Progress(f"applying {args.layer}", total)
    last = [0]

    def report(done: int) -> None:
        progress(done - last[0])
        last[0] = done

    try:
        result = apply_layer(
            sys.stdin.buffer if args.layer == "-" else args.layer, args.dir,
            lowers=args.lower, mode="rootfs" if args.rootfs else "layer", whiteouts=args.whiteouts,
            xattr_ns="user" if args.userxattr else "trusted", same_owner=not args.no_same_owner,
            devices=not args.no_devices, expect_diff_id=args.verify_diff_id, max_size=args.max_size,
            sync=not args.no_sync, tar_split=args.tar_split, progress=report)
    finally:
        progress.close()
    if args.json:
        print_json(result.__dict__)
    else:
        sys.stdout.write(f"{result.diff_id}\n")
    return 0


# --- diff, export, squash ------------------------------------------------------------------

def add_tar_output(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("-o", "--output", required=required, metavar="OUT",
                   help="the tar to write, - for stdout (never a terminal)")
    p.add_argument("--compress", choices=["gzip", "zstd"], default=None)
    p.add_argument("--source-date-epoch", type=int, default=None, metavar="N",
                   help="no mtime later than N (default: $SOURCE_DATE_EPOCH if set)")
    p.add_argument("--all-xattrs", action="store_true",
                   help="write every xattr, not only security.capability")


def _tar_options(args: argparse.Namespace) -> dict[str, Any]:
    sde = args.source_date_epoch
    if sde is None and os.environ.get("SOURCE_DATE_EPOCH", "").strip():
        try:
            sde = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            raise CliError("SOURCE_DATE_EPOCH is not an integer") from None
    return {"compression": args.compress, "source_date_epoch": sde,
            "xattrs": "all" if args.all_xattrs else "capability"}


def _summary(args: argparse.Namespace, r: Any) -> int:
    summary = {"diff_id": r.diff_id, "digest": r.digest, "size": r.size, "entries": r.entries}
    to_stdout = args.output == "-"
    if args.json:  # with the tar on stdout, the summary goes to stderr
        print(json.dumps(summary), file=sys.stderr if to_stdout else sys.stdout)
    elif not to_stdout:
        print(f"{args.output}: {r.entries} entries, {r.size} bytes, diff ID {r.diff_id}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """``diff TARGET`` lists changes; ``diff TARGET -o OUT`` writes the top layer's tar."""
    from overlayfs import export as ex

    from .inspect import list_changes

    with contextlib.ExitStack() as stack:
        words = list(args.words)
        if len(words) == 1 and args.lower and not args.upper:
            # the historical form: diff LAYER --lower DIR...: LAYER over those lowers
            from ._common import _need_dir
            target = Resolved(words[0], "dirs", [_need_dir(p) for p in args.lower],
                              upper=_need_dir(words[0]), whiteouts=args.whiteouts or "kernel")
        else:
            target = resolve(args, words, stack)
        if args.output is None:
            return list_changes(args, target)
        layer, below = target.change_pair()
        opts = _tar_options(args)
        if args.userxattr:
            opts["xattr_ns"] = "user"
        else:
            opts["xattr_ns"] = target.xattr_namespace
        lowers = below if (below or args.lower) else None
        with _progress(f"exporting {layer}") as progress:
            r = ex.export_layer(layer, output_arg(args.output), lowers=lowers, progress=progress,
                                **opts)
    return _summary(args, r)


def cmd_export(args: argparse.Namespace) -> int:
    from overlayfs import export as ex

    with contextlib.ExitStack() as stack:
        target = resolve(args, list(args.words), stack)
        st = stack.enter_context(target.stack())
        with _progress("flattening") as progress:
            r = ex.flatten(st, output_arg(args.output), progress=progress, **_tar_options(args))
    return _summary(args, r)


def cmd_squash(args: argparse.Namespace) -> int:
    from overlayfs import export as ex

    with contextlib.ExitStack() as stack:
        target = resolve(args, list(args.words), stack)
        opts = _tar_options(args)
        opts["xattr_ns"] = "user" if args.userxattr else target.xattr_namespace
        with _progress("squashing") as progress:
            r = ex.squash(target.layers, output_arg(args.output), below=args.below,
                          progress=progress, **opts)
    return _summary(args, r)


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Progress]:
    """A Progress line for a tar being written (bytes of tar so far), cleared after."""
    progress = Progress(label)
    try:
        yield progress
    finally:
        progress.close()


# --- images: layers, diffid, unpack ----------------------------------------------------------

IMAGE_HELP = ("oci:DIR[:REF], oci-archive:TAR[:REF], docker-archive:TAR[:REPO:TAG], "
              "or a path (auto-detected); - for stdin")


def open_image_arg(text: str, platform: str | None) -> Image:
    from overlayfs.image import ImageError, open_image, parse_image_ref

    transport, path, ref = parse_image_ref(text)
    src: str | IO[bytes] = spool_stdin() if path == "-" else path
    if transport == "oci" and not (path != "-" and os.path.isdir(path)):
        raise ImageError(f"oci:{path}: not a directory (use oci-archive: for a tar)")
    if transport in ("oci-archive", "docker-archive") and path != "-" and os.path.isdir(path):
        raise ImageError(f"{transport}:{path}: a directory (use oci: for a layout dir)")
    image = open_image(src, platform=platform, ref=ref)
    if transport == "oci-archive" and image.format != "oci-archive":
        image.close()
        raise ImageError(f"{path}: a {image.format}, not an oci-archive")
    if transport == "docker-archive" and image.format not in ("docker-archive", "docker-dir"):
        image.close()
        raise ImageError(f"{path}: a {image.format}, not a docker-archive")
    return image


def cmd_layers(args: argparse.Namespace) -> int:
    out = sys.stdout
    with open_image_arg(args.image, args.platform) as image:
        rows = [{"digest": la.digest, "diff_id": la.diff_id, "media_type": la.media_type,
                 "size": la.size, "chain_id": la.chain_id} for la in image.layers]
        if args.json:
            print_json({"format": image.format, "ref": image.ref, "id": image.id,
                        "platform": str(image.platform), "manifest_digest": image.manifest_digest,
                        "layers": rows})
            return 0
        out.write(f"# {image.format} {image.ref or ''} {image.platform} id {image.id}\n")
        for r in rows:
            out.write(f"{r['digest']}  diff {r['diff_id']}  chain {r['chain_id']}  "
                      f"{r['size']}  {r['media_type']}\n")
    return 0


class _Counting:
    """A file object that reports the bytes read through it to *progress*."""

    def __init__(self, inner: IO[bytes], progress: Progress):
        self._inner = inner
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n)
        self._progress(len(data))
        return data


def cmd_diffid(args: argparse.Namespace) -> int:
    from overlayfs.image import diff_id

    results = []
    for layer in args.layers:
        if layer == "-":
            src: IO[bytes] = sys.stdin.buffer
            total = None
        else:
            src = open(layer, "rb")
            total = os.fstat(src.fileno()).st_size
        progress = Progress(f"diffid {layer}", total)
        try:
            result = diff_id(cast(IO[bytes], _Counting(src, progress)))
        finally:
            progress.close()
            if src is not sys.stdin.buffer:
                src.close()
        results.append({"layer": layer, "diff_id": result})
        if not args.json:
            sys.stdout.write(f"{result}  {layer}\n" if len(args.layers) > 1 else f"{result}\n")
    if args.json:
        print_json(results)
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from overlayfs.store import LayerStore

    store = LayerStore(args.store)
    with open_image_arg(args.image, args.platform) as image:
        progress = Progress(f"unpack {args.image}")
        try:
            result = store.import_image(image, progress=progress)
        finally:
            progress.close()
        if args.json:
            print_json(result.as_dict())
        else:
            sys.stdout.write(f"{result.top}\n")
    return 0


def check_diff_args(args: argparse.Namespace) -> None:
    if args.output is None and (args.compress or args.all_xattrs or args.source_date_epoch is not None):
        raise UsageError("--compress, --all-xattrs and --source-date-epoch need -o OUT")
