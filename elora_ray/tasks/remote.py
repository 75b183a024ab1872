"""Task data in a bucket: ``train: s3://bucket/tasks/reviews.csv``, ``path: gs://bucket/glue/SST-2``.

A file or folder named by a URI is downloaded once into ``$ELORA_CACHE/remote_data/<hash>/`` and
read from there with the ordinary readers (a file already there at the bucket's size is not
downloaded again; each download lands under a temporary name first). The data fingerprint uses the
bucket's own (URI, size, modification time) of every object, so a run prepared on one machine is
current on another. Credentials and endpoints are the standard ones (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, …; Google application-default credentials), read by pyarrow's filesystems.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..errors import DataError
from ..io import cache_dir, is_uri

log = logging.getLogger(__name__)


def _open(uri: str):
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(uri.rstrip("/"))
        info = fs.get_file_info(root)
    except Exception as exc:  # noqa: BLE001 - any filesystem error is a data-location problem
        raise DataError(f"cannot open {uri} ({exc}); check the bucket name, the AWS_* / Google credentials and the "
                        "endpoint (AWS_ENDPOINT_URL)") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri}: no such file or folder in the bucket")
    return fs, root, info


def _objects(uri: str) -> tuple[object, str, list]:
    """(filesystem, root, file infos) of the object or of every object under the folder."""
    import pyarrow.fs as pafs

    fs, root, info = _open(uri)
    if info.type == pafs.FileType.File:
        return fs, root, [info]
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return fs, root, sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def remote_stats(uri: str) -> list[list]:
    """[uri of each object, size, mtime in ns] (what the data fingerprint hashes)."""
    _, root, infos = _objects(uri)
    base = uri.rstrip("/")
    return [[base + i.path[len(root):], i.size, i.mtime_ns or 0] for i in infos]


def localize(path: str | None) -> str | None:
    """``path`` itself when local; else the local copy of the bucket's file or folder (a ``::split``
    suffix of a saved ``datasets`` folder is kept)."""
    if path is None or not is_uri(path):
        return path
    uri, sep, split = str(path).partition("::")
    fs, root, infos = _objects(uri)
    name = Path(root.rstrip("/")).name
    dest = cache_dir() / "remote_data" / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16] / name
    single = len(infos) == 1 and infos[0].path == root.rstrip("/")
    got = 0
    for info in infos:
        target = dest if single else dest / info.path[len(root.rstrip("/")) + 1:]
        if target.is_file() and target.stat().st_size == info.size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.download")
        with fs.open_input_stream(info.path) as src, open(tmp, "wb") as fh:
            while chunk := src.read(1 << 22):
                fh.write(chunk)
        os.replace(tmp, target)
        got += 1
    if got:
        log.info("data: %d file(s) of %s downloaded into %s", got, uri, dest)
    if not single:
        dest.mkdir(parents=True, exist_ok=True)  # an empty folder stays a folder
    return str(dest) + (sep + split if sep else "")
