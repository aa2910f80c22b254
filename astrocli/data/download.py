"""Resumable, verified downloads with a progress bar.

``download_file`` writes to ``<dest>.part``, resumes an interrupted transfer with an HTTP ``Range``
request, checks the sha256 and only then renames the file to ``dest``: a bad or partial file never
carries the final name. Uses the standard library (urllib), no extra dependency.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path

from astrocli.errors import DataError

CHUNK_BYTES = 1 << 20
USER_AGENT = "astro-cli (https://github.com/; dataset download)"


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> str:
    """The hex sha256 of a file, read in chunks (a 2.5 GB file never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_size(response, offset: int) -> int | None:
    """The full file size from ``Content-Range`` (206) or ``Content-Length`` (200), if the server says."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) + offset if length is not None else None


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _fetch_into(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its size); raise on an interrupted transfer."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part already holds the whole file
            return
        raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {url} ({reason}); are you offline? Place the file by hand"
        ) from None
    with response:
        if offset and response.status != 206:  # the server ignored Range: start again
            offset = 0
        total = _total_size(response, offset)
        written = offset
        with open(part, "ab" if offset else "wb") as out, _progress(progress) as bar:
            task = bar.add_task(Path(part.name).stem, total=total, completed=offset)
            try:
                while block := response.read(CHUNK_BYTES):
                    out.write(block)
                    written += len(block)
                    bar.update(task, completed=written)
            except (OSError, HTTPException) as exc:
                raise DataError(
                    f"download of {url} interrupted at {written:,} bytes ({exc}); "
                    f"run again to resume from {part}"
                ) from None
    if total is not None and written < total:
        raise DataError(
            f"download of {url} interrupted at {written:,} of {total:,} bytes; "
            f"run again to resume from {part}"
        )


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resumably, verifying ``sha256`` when given.

    Args:
        url: http(s) URL.
        dest: final file path; the transfer goes to ``dest + ".part"`` until verified.
        sha256: expected hex digest, or None to skip verification.
        progress: show a rich progress bar.
        timeout: seconds to wait on the connection.

    Returns:
        ``dest`` as a Path.

    Raises:
        DataError: offline/HTTP failure, interrupted transfer (the ``.part`` is kept to resume),
            or checksum mismatch (the bad file is deleted).
    """
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _fetch_into(url, part, timeout, progress)
    if sha256:
        actual = sha256_file(part)
        if actual.lower() != sha256.lower():
            part.unlink(missing_ok=True)
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; the bad file was "
                f"deleted. Retry, or check data.url / data.sha256"
            )
    os.replace(part, dest)
    return dest


def extract_archive(archive: Path, into: Path) -> None:
    """Extract a zip or tar archive into ``into``, refusing paths that escape it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            root = into.resolve()
            for name in zf.namelist():
                if not (into / name).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: refusing to extract '{name}' outside {into}")
            zf.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(into, filter="data")  # the "data" filter rejects absolute paths, links out
    else:
        raise DataError(f"{archive} is neither a zip nor a tar archive; delete it and download again")


def download_and_extract(url: str, root: str | os.PathLike[str], sha256: str | None = None) -> Path:
    """Download an archive into ``root`` (resumable, verified) and extract it there."""
    root = Path(root).expanduser()
    archive = root / Path(urllib.request.urlparse(url).path).name
    if not archive.exists():
        download_file(url, archive, sha256)
    extract_archive(archive, root)
    return root
