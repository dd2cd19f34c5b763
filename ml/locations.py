"""Where ingest's files live: local paths or fsspec URLs (``s3://bucket/landing``), and the few operations on them.

The landing, archive, quarantine and reports locations come from :meth:`ml.settings.Settings.location`; each may be
a local directory or any fsspec URL whose backend is installed. This module lists new event files
(:func:`discover_files`), names a free target in a folder (:func:`free_uri`), moves or writes files
(:func:`put_file`, :func:`write_text`) and compares locations (:func:`is_under`). Nothing here touches the database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import PipelineError

if TYPE_CHECKING:
    from ml.settings import Settings

log = logging.getLogger(__name__)

SUFFIXES: dict[str, tuple[str, str | None]] = {
    ".csv": ("csv", None),
    ".csv.gz": ("csv", "gzip"),
    ".parquet": ("parquet", None),
    ".pq": ("parquet", None),
}


def fs_of(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of a local path or URL. Raises ImportError when the backend is missing."""
    import fsspec

    return fsspec.core.url_to_fs(uri)


def join_uri(base: str, name: str) -> str:
    """``base/name`` for a local directory or a URL."""
    return f"{base.rstrip('/')}/{name}" if "://" in base else str(Path(base) / name)


def norm_uri(uri: str) -> str:
    """A comparable form of a location: an absolute local path, or ``protocol://`` + fsspec's stripped path."""
    if "://" in uri and not uri.startswith("file://"):
        protocol, rest = uri.split("://", 1)
        try:
            _, rest = fs_of(uri)
        except ImportError:  # backend not installed: compare the URLs as written
            pass
        return f"{protocol}://{rest.rstrip('/')}"
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return str(Path(path).expanduser().resolve())


def is_under(uri: str, base: str) -> bool:
    """True if ``uri`` is ``base`` or lies inside it (compared in :func:`norm_uri` form)."""
    u, b = norm_uri(uri), norm_uri(base)
    return u == b or u.startswith(b.rstrip("/") + "/")


def file_format(name: str) -> tuple[str, str | None]:
    """(format, compression) from a file name: ``csv``/``parquet`` and None/``gzip``. Raises PipelineError."""
    lower = name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return SUFFIXES[suffix]
    raise PipelineError(f"{name}: unsupported file type (expected one of {', '.join(SUFFIXES)})")


def discover_files(
    settings: Settings, location: str | None = None, *, date: dt.date | None = None, limit: int | None = None
) -> list[str]:
    """New event files under ``location`` (default: the landing location), oldest name first.

    Recursive; skips hidden or temporary names (a path part starting with ``.`` or ``_``: writers should upload
    under such a name and rename) and the archive/quarantine locations if they sit inside landing. ``date``
    (a UTC ``dt.date``) keeps files whose name holds that date (``2019-10-01`` or ``20191001``). ``location`` may be one
    file. Returns local paths or URLs; ``limit`` caps the count (default settings.ingest_max_files_per_run).
    Raises PipelineError when an explicit ``location`` does not exist or is one file of an unsupported type."""
    base = location or settings.location("landing")
    fs, root = fs_of(base)
    if not fs.exists(root):
        if location is None:  # no landing folder yet: nothing has arrived
            return []
        raise PipelineError(f"{location}: no such file or folder")
    protocol = base.split("://", 1)[0] if "://" in base else None
    if fs.isfile(root):
        file_format(str(location or root))  # a file given by name must be a supported type: PipelineError if not
        candidates = [root]
    else:
        candidates = sorted(fs.find(root))
    skip = [settings.location("archive"), settings.location("quarantine")]
    tokens = [date.isoformat(), f"{date:%Y%m%d}"] if date else []
    out: list[str] = []
    for p in candidates:
        rel = posixpath.relpath(p, root) if p != root else posixpath.basename(p)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        try:
            file_format(p)
        except PipelineError:
            continue
        uri = f"{protocol}://{p}" if protocol and protocol != "file" else p
        if any(is_under(uri, s) for s in skip) and not is_under(base, skip[0]) and not is_under(base, skip[1]):
            continue
        if tokens and not any(t in posixpath.basename(p) for t in tokens):
            continue
        out.append(uri)
    cap = limit if limit is not None else settings.ingest_max_files_per_run
    if len(out) > cap:
        log.info("discovered %d files; taking the first %d this run", len(out), cap)
    return out[:cap]


def free_uri(directory: str, name: str, checksum: str) -> str:
    """``directory/name``, or ``directory/<sha12>-name`` if another file already holds that name."""
    fs, d = fs_of(directory)
    fs.makedirs(d, exist_ok=True)
    uri = join_uri(directory, name)
    _, p = fs_of(uri)
    if fs.exists(p):
        if hashlib.sha256(fs.cat_file(p)).hexdigest() == checksum:
            return uri
        uri = join_uri(directory, f"{checksum[:12]}-{name}")
    return uri


def put_file(src_uri: str, dst_uri: str, data: bytes, move: bool) -> None:
    """Move ``src`` to ``dst`` (rename when both are on one filesystem), or write ``data`` there if not moving."""
    sfs, sp = fs_of(src_uri)
    dfs, dp = fs_of(dst_uri)
    same_fs = type(sfs) is type(dfs) and getattr(sfs, "storage_options", None) == getattr(dfs, "storage_options", None)
    if move and same_fs:
        sfs.mv(sp, dp)
        return
    with dfs.open(dp, "wb") as f:
        f.write(data)
    if move:
        sfs.rm(sp)


def write_text(uri: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``uri``, replacing any file there."""
    fs, p = fs_of(uri)
    with fs.open(p, "wb") as f:
        f.write(text.encode("utf-8"))


def data_docs_dir(settings: Settings) -> str | None:
    """The local directory of the GX Data Docs site: ``<reports>/data_docs``; None when settings.data_docs_enabled
    is off or reports is a remote URL (GX's filesystem site needs a local directory)."""
    reports = settings.location("reports")
    if not settings.data_docs_enabled or "://" in reports:
        return None
    path = Path(reports) / "data_docs"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)

