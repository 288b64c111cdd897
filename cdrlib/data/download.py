"""Downloads that verify themselves and never leave a half-written file under the final name.

A file is streamed to ``<name>.part`` beside its destination with a progress bar, then its size
and sha256 are checked, and only then is it renamed into place. On any failure (network error,
interrupted transfer, wrong size, wrong checksum) the partial file is removed and a
:class:`DownloadError` says exactly what to fetch by hand and where to put it.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..profile import progress
from .errors import DataError


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
    return (f"To install {what} by hand, download\n  {url}\nand save it as\n  {dest}{check}\n"
            f"then run the same command again.")


def download(url: str, dest: str | Path, sha256: str | None = None, size: int | None = None,
             what: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` unless a verified copy is already there.

    Args:
        url: http(s) or file URL.
        dest: final path of the file.
        sha256: expected checksum (hex); ``None`` when not recorded yet (the computed one is printed).
        size: expected size in bytes, when known.
        what: a name for messages (``"the PACS archive"``).
    Returns:
        ``dest``.
    Raises:
        DownloadError: with the manual steps.
    """
    dest = Path(dest)
    what = what or dest.name
    if dest.is_file() and (sha256 is None or file_sha256(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or size
            with progress(total=total, unit="B", unit_scale=True, desc=what) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    got += len(block)
                    bar.update(len(block))
        expected = size or total
        if expected and got != expected:
            raise DownloadError(f"the transfer of {what} stopped after {got} of {expected} bytes.\n"
                                + _manual(url, dest, sha256, what))
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not download {what} from {url}: {e}\n" + _manual(url, dest, sha256, what)) from e
    digest = file_sha256(part)
    if sha256 is not None and digest != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{what} failed its checksum (sha256 {digest}, expected {sha256}); the file was "
                            f"removed. The server may have changed the file or the transfer was corrupted.\n"
                            + _manual(url, dest, sha256, what))
    if sha256 is None:
        print(f"{what}: sha256 {digest} (no checksum recorded to compare with)")
    part.replace(dest)
    return dest


def extract(archive: Path, into: Path) -> Path:
    """Unpack a .zip or .tar(.gz) archive into ``into``, refusing members that escape it."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise DownloadError(f"{archive} holds a path outside the target folder: {name}")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive; delete it and download again.")
    return into
