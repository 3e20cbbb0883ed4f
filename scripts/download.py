#!/usr/bin/env python
"""Fetch the real datasets and weights: resumable HTTP downloads with sha256 checks, extraction, the SA-1B index.

Training never downloads anything; this script is the one place that does, run by hand before training.
Where each file comes from and what is published about it: docs/data_and_weights.md.

Usage::

    # SA-1B: the links file from https://ai.meta.com/datasets/segment-anything-downloads/ ("file_name<TAB>cdn_link")
    python scripts/download.py sa1b --links sa1b_links.txt --out data/sa1b --select 'sa_00000*.tar' --workers 4
    # SA-V or any list of archives (a links file, or one URL per line): extracted to OUT/<archive name>/
    python scripts/download.py archives --links sav_links.txt --out data/sav --select 'sav_0*.tar'
    python scripts/download.py archives --links urls.txt --out data/davis       # e.g. DAVIS-2017-trainval-480p.zip
    # weights by name (python scripts/download.py weights --list shows them)
    python scripts/download.py weights sam2.1_hiera_base_plus edgetam repvit_m1 --out weights

Each download goes to ``<file>.part`` and continues from its size with an HTTP ``Range`` request (after an
interruption, on the next run or the next of ``--retries`` tries); a server that ignores ``Range`` restarts it from
zero. The finished file's sha256 is compared with ``--sha256`` (a ``sha256sum`` file: ``<hex>  <file name>`` per line;
for weights ``NAME=HEX`` or the registry's value) when one is known: a mismatch deletes the file and stops with an
error naming it; the sha256 is printed and written next to the file (``<file>.sha256``; deleted with an extracted
archive). An archive is extracted into ``OUT/.<name>.partial/`` and renamed to ``OUT/<name>/`` when complete, so an
interrupted extraction is redone from scratch on the next run and a finished one is skipped (the archive is deleted
after extraction unless ``--keep-archives``). ``sa1b`` then builds the file index the loader reads
(``OUT/.edgetam_index.txt``, ``edgetam_train.data.formats.sa1b.load_index``).

Exit status: 0 OK, 1 a download, checksum or extraction failed (the message names the file), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import unquote, urlparse

CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
USER_AGENT = "edgetam-train-download/1"


class DownloadError(RuntimeError):
    """A download, checksum or extraction failure; the message names the file."""


@dataclass(frozen=True)
class Weight:
    """A weights file by name: where it is published, the file name it is saved as, its sha256 when published."""

    url: str
    file: str
    sha256: str | None
    what: str


SAM21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
WEIGHTS: dict[str, Weight] = {
    **{f"sam2.1_hiera_{size}": Weight(f"{SAM21}/sam2.1_hiera_{size}.pt", f"sam2.1_hiera_{size}.pt", None,
                                      f"SAM 2.1 Hiera-{label} (official checkpoint; teacher)")
       for size, label in (("tiny", "T"), ("small", "S"), ("base_plus", "B+"), ("large", "L"))},
    "edgetam": Weight("https://github.com/facebookresearch/EdgeTAM/raw/main/checkpoints/edgetam.pt", "edgetam.pt", None,
                      "EdgeTAM (official checkpoint)"),
    "repvit_m1": Weight("https://huggingface.co/timm/repvit_m1.dist_in1k/resolve/main/model.safetensors",
                        "repvit_m1.dist_in1k.safetensors", None, "timm RepViT-M1 ImageNet-1k weights (trunk init)"),
}


# ----------------------------------------------------------------------------------------------- downloading

def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_of(content_range: str) -> int | None:
    """The full size N of a ``Content-Range`` value (``bytes */N`` or ``bytes a-b/N``); None when absent or ``*``."""
    total = content_range.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (from its size on; from zero when the server ignores ``Range``).
    Raises OSError / urllib errors on a failed or short transfer (the caller retries)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        # Range not satisfiable: finished only when the part is exactly the size the server gives ("bytes */N").
        # A stale part larger than the file (another version, a wrong link) would otherwise pass as done.
        total = _total_of(err.headers.get("Content-Range", "") if err.headers else "")
        if total == offset:
            return
        part.unlink()
        _fetch_once(url, part, timeout)  # from zero; offset 0 never asks for a Range, so this cannot loop
        return
    with resp:
        if offset and resp.status != 206:  # the server sent the whole file: start again
            offset = 0
        elif offset:
            start = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                raise OSError(f"asked for bytes {offset}- of {url} but got Content-Range "
                              f"{resp.headers.get('Content-Range')!r}")
        length = resp.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if offset else "wb") as f:
            while block := resp.read(CHUNK):
                f.write(block)
                received += len(block)
        if length is not None and received != int(length):
            raise OSError(f"{url}: connection closed after {received} of {length} bytes")


def download(url: str, dest: Path, sha256: str | None = None, retries: int = 3, timeout: float = 60.0,
             log=print) -> str:
    """``url`` -> ``dest`` through ``dest.part`` (resumed with HTTP Range), checked against ``sha256`` when given;
    returns the file's sha256 (also written to ``<dest>.sha256``). An existing ``dest`` is only checked.
    Raises :class:`DownloadError` (a failed transfer after ``retries`` more tries, or a checksum mismatch: the file
    is deleted)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if not dest.exists():
        for attempt in range(retries + 1):
            try:
                if part.exists():
                    log(f"{dest.name}: resuming at {part.stat().st_size} bytes")
                _fetch_once(url, part, timeout)
                break
            except (OSError, http.client.HTTPException) as err:  # HTTP/URL errors, timeouts, resets, short reads
                if isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code not in (408, 429):
                    raise DownloadError(f"{dest.name}: {url} answered {err.code} {err.reason} (an expired link? "
                                        "get a fresh links file)") from None
                if attempt == retries:
                    raise DownloadError(f"{dest.name}: download from {url} failed after {retries + 1} tries "
                                        f"({type(err).__name__}: {err}); run again to resume from "
                                        f"{part.stat().st_size if part.exists() else 0} bytes") from None
                log(f"{dest.name}: {type(err).__name__}: {err}; retrying")
                time.sleep(min(2.0 ** attempt, 30.0))
        os.replace(part, dest)
    digest = sha256_of(dest)
    if sha256 is not None and digest != sha256.lower():
        dest.unlink()
        raise DownloadError(f"{dest.name}: sha256 {digest} does not match the expected {sha256.lower()}; the file "
                            f"was deleted (a changed or corrupted download from {url})")
    dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
    return digest


# ----------------------------------------------------------------------------------------------- archives

def archive_stem(name: str) -> str | None:
    """``sa_000000.tar`` -> ``sa_000000``; None for a file that is not a tar / zip archive."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def extract(archive: Path, out: Path) -> Path:
    """Extract ``archive`` into ``out/<stem>/`` through ``out/.<stem>.partial/`` (an interrupted extraction left
    there is removed and redone); returns the folder. Member paths outside the folder are refused."""
    stem = archive_stem(archive.name)
    if stem is None:
        raise DownloadError(f"{archive}: not a .tar / .tar.gz / .tgz / .zip archive")
    target, tmp = out / stem, out / f".{stem}.partial"
    if target.is_dir():
        return target
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    if not (tmp / member).resolve().is_relative_to(tmp.resolve()):
                        raise DownloadError(f"{archive}: member {member!r} points outside the extraction folder")
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")  # refuses absolute paths, '..', devices, links outside
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise DownloadError(f"{archive}: cannot extract it ({type(err).__name__}: {err}); delete it to download "
                            "it again") from None
    os.replace(tmp, target)
    return target


# ----------------------------------------------------------------------------------------------- inputs

def read_links(path: Path) -> list[tuple[str, str]]:
    """(file name, URL) pairs of a links file: Meta's ``file_name<TAB>cdn_link`` table (header optional), or one URL
    per line (the name is the URL path's last part), or ``name URL`` per line; '#' comments and blank lines skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"--links {path} does not exist")
    pairs: list[tuple[str, str]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or line.replace(" ", "\t").split("\t")[0] == "file_name":
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) == 1:
            name = unquote(Path(urlparse(parts[0]).path).name)
            pairs.append((name, parts[0]))
        elif len(parts) == 2:
            pairs.append((parts[0], parts[1]))
        else:
            raise ValueError(f"--links {path} line {n}: expected 'URL', 'name URL' or 'name<TAB>URL', got {line!r}")
        name = pairs[-1][0]
        if name in ("", ".", "..") or "/" in name or "\\" in name:  # names a folder, not a file under --out
            raise ValueError(f"--links {path} line {n}: file name {name!r} is not a plain file name (in {line!r}); "
                             "give 'name URL' with a name such as data.tar")
        if not urlparse(pairs[-1][1]).scheme.startswith("http"):
            raise ValueError(f"--links {path} line {n}: bad URL in {line!r} (expected http:// or https://)")
    if not pairs:
        raise ValueError(f"--links {path} lists no file")
    return pairs


def check_stems(pairs: list[tuple[str, str]]) -> None:
    """Raise ``ValueError`` when two archives would extract to the same ``OUT/<stem>/`` folder (``x.tar``, ``x.zip``):
    the second would be taken as "already extracted" and silently never unpacked."""
    seen: dict[str, str] = {}
    for name, _ in pairs:
        stem = archive_stem(name)
        if stem is None:
            continue
        if stem in seen:
            raise ValueError(f"archives {seen[stem]} and {name} would both extract to the folder {stem}/; rename one "
                             "in the links file ('name URL' lines) or select one with --select")
        seen[stem] = name


def read_sums(path: Path | None) -> dict[str, str]:
    """{file name: sha256} of a ``sha256sum``-style file (``<hex>  <name>``, ``*`` binary marks allowed)."""
    if path is None:
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[Path(parts[1].lstrip("*")).name] = parts[0].lower()
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"--sha256 {path}: expected '<64 hex digits>  <file name>' lines, got {line!r}")
    return sums


def select(pairs: list[tuple[str, str]], patterns: Sequence[str], limit: int | None) -> list[tuple[str, str]]:
    """Pairs whose name matches one of ``patterns`` (all when none), at most ``limit``."""
    chosen = [p for p in pairs if not patterns or any(fnmatch.fnmatch(p[0], pat) for pat in patterns)]
    if not chosen:
        raise ValueError(f"--select {list(patterns)} matches none of the {len(pairs)} files (e.g. {pairs[0][0]})")
    return chosen[:limit] if limit else chosen


# ----------------------------------------------------------------------------------------------- commands

def fetch_archives(pairs: list[tuple[str, str]], out: Path, sums: dict[str, str], workers: int, keep: bool,
                   do_extract: bool, retries: int) -> list[str]:
    """Download (and extract) every pair; returns the names that failed (their errors are printed)."""
    out.mkdir(parents=True, exist_ok=True)

    def one(pair: tuple[str, str]) -> None:
        name, url = pair
        stem = archive_stem(name)
        if do_extract and stem is not None and (out / stem).is_dir():
            print(f"{name}: already extracted to {out / stem}")
            return
        path = out / name
        digest = download(url, path, sums.get(name), retries=retries)
        print(f"{name}: downloaded, sha256 {digest}")
        if do_extract and stem is not None:
            folder = extract(path, out)
            print(f"{name}: extracted to {folder}")
            if not keep:  # the sha256 was printed above
                path.unlink()
                path.with_name(path.name + ".sha256").unlink(missing_ok=True)

    failed = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (name, _), future in zip(pairs, [pool.submit(one, p) for p in pairs]):
            try:
                future.result()
            except DownloadError as err:
                print(f"error: {err}", file=sys.stderr)
                failed.append(name)
    return failed


def check_weights(path: Path) -> None:
    """Open a downloaded weights file the way training will (``weights_only`` torch.load / safetensors): an HTML
    error page saved under the name is caught here, not at the start of a run."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                f.keys()
        else:
            from edgetam_train.models.checkpoint import read_state_dict

            read_state_dict(path)
    except Exception as err:  # noqa: BLE001 -- any failure to read is reported with the file
        raise DownloadError(f"{path}: downloaded but not readable as weights ({type(err).__name__}: {err})") from None


def run_weights(args: argparse.Namespace) -> int:
    if args.list or not args.names:
        for name, w in WEIGHTS.items():
            print(f"{name:24s} {w.file:34s} {w.what}\n{'':24s} {w.url}  sha256: {w.sha256 or 'not published'}")
        if not args.list:
            print("error: name the weights to download (listed above)", file=sys.stderr)
        return 0 if args.list else 2
    bad = [item for item in args.sha256 if "=" not in item]
    if bad:
        print(f"error: --sha256 expects NAME=HEX, got {bad}", file=sys.stderr)
        return 2
    expected = dict(item.split("=", 1) for item in args.sha256)
    unknown = sorted(set(args.names) - set(WEIGHTS)) + sorted(set(expected) - set(args.names))
    if unknown:
        print(f"error: unknown or unrequested weights {unknown}; known: {', '.join(WEIGHTS)}", file=sys.stderr)
        return 2
    failed = 0
    for name in args.names:
        w = WEIGHTS[name]
        try:
            digest = download(w.url, args.out / w.file, expected.get(name, w.sha256), retries=args.retries)
            check_weights(args.out / w.file)
            print(f"{name}: {args.out / w.file} sha256 {digest}")
        except DownloadError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def run_archives(args: argparse.Namespace) -> int:
    pairs = select(read_links(args.links), args.select, args.limit)
    if not args.no_extract:
        check_stems(pairs)
    failed = fetch_archives(pairs, args.out, read_sums(args.sha256), args.workers, args.keep_archives,
                            not args.no_extract, args.retries)
    if failed:
        print(f"error: {len(failed)} of {len(pairs)} file(s) failed: {failed[:10]}; run again to resume",
              file=sys.stderr)
        return 1
    if args.command == "sa1b":
        from edgetam_train.data.formats.sa1b import default_index_cache, load_index

        files = load_index(args.out)
        print(f"SA-1B index: {len(files)} images with annotations under {args.out} ({default_index_cache(args.out)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("sa1b", "SA-1B tars from Meta's links file: download, extract, build the index"),
                       ("archives", "archives (or plain files) from a links file or a URL list")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--links", required=True, type=Path, help="links file (file_name<TAB>cdn_link) or URL list")
        p.add_argument("--out", required=True, type=Path, help="destination folder (the dataset root)")
        p.add_argument("--select", action="append", default=[], help="only file names matching this glob (repeat)")
        p.add_argument("--limit", type=int, default=None, help="at most this many files (after --select)")
        p.add_argument("--sha256", type=Path, default=None, help="sha256sum file of expected checksums")
        p.add_argument("--workers", type=int, default=1, help="parallel downloads (default 1)")
        p.add_argument("--keep-archives", action="store_true", help="keep each archive after extracting it")
        p.add_argument("--no-extract", action="store_true", help="download only")
        p.add_argument("--retries", type=int, default=3, help="tries after a failed transfer (default 3)")
        p.set_defaults(run=run_archives)
    p = sub.add_parser("weights", help="checkpoints by name", description="checkpoints by name")
    p.add_argument("names", nargs="*", help=f"any of {', '.join(WEIGHTS)}")
    p.add_argument("--out", type=Path, default=Path("weights"), help="destination folder (default weights/)")
    p.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX", help="expected sha256 of a file")
    p.add_argument("--list", action="store_true", help="list the known weights and where they come from")
    p.add_argument("--retries", type=int, default=3, help="tries after a failed transfer (default 3)")
    p.set_defaults(run=run_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
