"""Downloads that verify themselves and never leave a half-written file under the final name.

A file is streamed to ``<name>.part`` beside its destination with a progress bar, then its size
and sha256 are checked, and only then is it renamed into place. On a wrong size or checksum the
partial file is removed and a :class:`DownloadError` says exactly what to fetch by hand and where to
put it. A transfer that breaks off (network error, Ctrl-C) keeps its ``.part`` only when the server
accepts byte ranges: the next call resumes from there (the whole file is still verified at the end).

Where no checksum is published, the first complete download is *pinned*: its sha256 goes into
``<name>.sha256`` beside it, later uses are verified against that, and the message says the file
was not verified against a published digest. A file already at the destination is verified too.
Archives are unpacked into a staging folder with limits on the total size and the compression
ratio (a zip bomb stops before it fills the disk) and moved into place only when complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..progress import progress
from .errors import DataError

# extraction limits: the papers' largest archive (DomainNet's real.zip) unpacks to about 6 GB at a
# ratio near 1 (JPEG inside); a zip bomb's ratio is in the hundreds or thousands
MAX_EXTRACTED_BYTES = 64 << 30
MAX_RATIO = 100.0


class DownloadError(DataError):
    """A download failed or did not verify; the message holds the manual steps."""


def cache_dir() -> Path:
    """Where downloads are kept: ``$CDR_CACHE`` or ``~/.cache/cdrlib``."""
    return Path(os.environ.get("CDR_CACHE", Path.home() / ".cache" / "cdrlib")).expanduser()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manual(url: str, dest: Path, sha256: str | None, what: str) -> str:
    check = f"\n  and check: sha256sum {dest.name}  →  {sha256}" if sha256 else ""
    return (
        f"To install {what} by hand, download\n  {url}\nand save it as\n  {dest}{check}\n"
        f"then run the same command again."
    )


def pin_file(dest: Path) -> Path:
    """Where the digest of a file without a published checksum is pinned: ``<name>.sha256``."""
    return dest.with_name(dest.name + ".sha256")


def _pin(dest: Path, what: str) -> None:
    digest = file_sha256(dest)
    pin_file(dest).write_text(f"{digest}  {dest.name}\n")
    print(
        f"{what}: no published sha256 to verify against; pinned {digest} in {pin_file(dest).name} "
        f"(later uses are checked against this first download)"
    )


def _verify_existing(dest: Path, sha256: str | None, size: int | None, what: str, url: str) -> None:
    if size is not None and dest.stat().st_size != size:
        raise DownloadError(
            f"{dest} has {dest.stat().st_size} bytes, not the {size} of {what}: an incomplete or "
            f"other file. Delete it and run again.\n" + _manual(url, dest, sha256, what)
        )
    if sha256 is None:
        _pin(dest, what)
    elif file_sha256(dest) != sha256:
        raise DownloadError(
            f"{dest} is not {what} (sha256 differs from {sha256}): a damaged or other file. "
            f"Delete it and run again.\n" + _manual(url, dest, sha256, what)
        )


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    size: int | None = None,
    what: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``dest`` unless a verified copy is already there.

    Args:
        url: http(s) or file URL.
        dest: final path of the file.
        sha256: expected checksum (hex); ``None`` when none is published: the digest pinned in
            ``<dest>.sha256`` by the first download is used, or written by this one.
        size: expected size in bytes, when known.
        what: a name for messages (``"the PACS archive"``).
    Returns:
        ``dest``.
    Raises:
        DownloadError: with the manual steps.
    """
    dest = Path(dest)
    what = what or dest.name
    pinned = pin_file(dest)
    if sha256 is None and pinned.is_file():
        sha256 = pinned.read_text().split()[0]
    if dest.is_file():
        _verify_existing(dest, sha256, size, what, url)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    resumable, got, total = False, 0, size
    try:
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if start and getattr(resp, "status", 200) != 206:
                start = 0  # the server sent the whole file: start over
            resumable = resp.headers.get("Accept-Ranges", "").lower() == "bytes" or bool(start)
            length = int(resp.headers.get("Content-Length") or 0)
            full = re.search(r"/(\d+)$", resp.headers.get("Content-Range", ""))
            total = size or (int(full.group(1)) if full else (start + length if length else None))
            with (
                open(part, "ab" if start else "wb") as out,
                progress(total=total, unit="B", unit_scale=True, desc=what) as bar,
            ):
                bar.update(start)
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    got += len(block)
                    bar.update(len(block))
        if total and start + got != total:
            raise DownloadError(
                f"the transfer of {what} stopped after {start + got} of {total} bytes.\n"
                + _manual(url, dest, sha256, what)
            )
    except BaseException as e:
        kept = (
            resumable
            and part.is_file()
            and part.stat().st_size > 0
            and (total is None or part.stat().st_size < total)
        )
        if not kept:
            part.unlink(missing_ok=True)
        note = (
            f" {part.stat().st_size} bytes are kept in {part.name}: run again to resume."
            if kept
            else ""
        )
        if isinstance(e, DownloadError):
            raise DownloadError(str(e) + note) from None
        if isinstance(e, (urllib.error.URLError, OSError, ValueError)):
            raise DownloadError(
                f"could not download {what} from {url}: {e}.{note}\n"
                + _manual(url, dest, sha256, what)
            ) from e
        raise  # Ctrl-C and the like: as they are, the .part kept if resumable
    digest = file_sha256(part)
    if sha256 is not None and digest != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{what} failed its checksum (sha256 {digest}, expected {sha256}); the file was "
            f"removed. The server may have changed the file or the transfer was corrupted.\n"
            + _manual(url, dest, sha256, what)
        )
    part.replace(dest)
    if sha256 is None:
        _pin(dest, what)
    return dest


def extract(
    archive: Path, into: Path, max_bytes: int = MAX_EXTRACTED_BYTES, max_ratio: float = MAX_RATIO
) -> Path:
    """Unpack a .zip or .tar(.gz) archive into ``into``.

    Members that would land outside ``into`` (``..``, absolute paths), links and devices are
    refused; so is an archive whose members add up to more than ``max_bytes`` or to more than
    ``max_ratio`` times the archive's own size. Everything is unpacked into a staging folder first
    and moved into ``into`` only when complete; on any failure the staging folder is removed.
    """
    archive, into = Path(archive), Path(into)
    into.mkdir(parents=True, exist_ok=True)
    stage = into / f".extracting-{archive.name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    root = stage.resolve()

    def check_total(total: int) -> None:
        limit = min(max_bytes, max_ratio * max(archive.stat().st_size, 1))
        if total > limit:
            raise DownloadError(
                f"{archive} would unpack to {total} bytes, more than the limit of {int(limit)} "
                f"(max_bytes={max_bytes}, max_ratio={max_ratio} × its size): a damaged archive or "
                f"a zip bomb. Raise the limits only for an archive you trust."
            )

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                for info in infos:
                    if not (root / info.filename).resolve().is_relative_to(root):
                        raise DownloadError(
                            f"{archive} holds a path outside the target folder: {info.filename}"
                        )
                check_total(sum(i.file_size for i in infos))
                z.extractall(stage)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                members = t.getmembers()
                check_total(sum(m.size for m in members if m.isfile()))
                t.extractall(stage, members=members, filter="data")
        else:
            raise DownloadError(
                f"{archive} is neither a zip nor a tar archive; delete it and download again."
            )
        for child in stage.iterdir():
            target = into / child.name
            if target.is_dir() and child.is_dir():
                # a second archive into the same tree
                shutil.copytree(child, target, dirs_exist_ok=True)
            else:
                os.replace(child, target)
    except tarfile.TarError as e:
        raise DownloadError(
            f"{archive} holds a member that is refused ({e}); delete it and download again"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return into
