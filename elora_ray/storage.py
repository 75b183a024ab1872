"""Run directories on object storage (``--out s3://bucket/runs/exp1``, ``gs://…``).

Stages keep writing a local working copy with their usual atomic rules; this module mirrors it to
the bucket. Configured the standard way: pyarrow's S3 filesystem reads ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_DEFAULT_REGION``
(and ``~/.aws``), as boto3 does; GCS uses the Google application-default credentials.

* **Open** (:func:`open_run_dir`): the bucket's copy of the run is downloaded into the working copy
  (``$ELORA_CACHE/remote_runs/<hash>``), so a resubmitted job resumes where the last one stopped,
  on any machine.
* **After every stage and at the end** (:func:`sync_up`): files that changed are uploaded. Every
  object upload is atomic; the order keeps the bucket consistent at every moment: stale JSON
  (stage states, fingerprints, records) is deleted first, then data files are uploaded, stale
  data deleted, and the new JSON uploaded last. A run killed mid-upload leaves at worst data
  without the JSON that declares it done, which the stage then recomputes.

Multi-node clusters: stages write the run directory from whichever node runs them, so the working
copy must be on storage every node mounts at the same path. Set ``$ELORA_REMOTE_WORKDIR`` to such a
directory (NFS, EFS, a ReadWriteMany volume); the bucket stays the durable copy that any later job,
on any cluster, resumes from. Before the first stage the driver checks that every node sees the
working copy (:func:`elora_ray.raysession.check_shared_storage`) and stops, naming the blind nodes
and this variable, when one does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError
from .io import is_uri

log = logging.getLogger(__name__)

MANIFEST = ".remote-manifest.json"  # in the working copy only: what the bucket holds (size, mtime)
WORKDIR_ENV = "ELORA_REMOTE_WORKDIR"
_MIRRORS: dict[str, RemoteRun] = {}


def is_remote(out: str | Path) -> bool:
    """Whether ``--out`` names a bucket (:func:`elora_ray.io.is_uri`)."""
    return is_uri(out)


def workdir_root() -> Path:
    """Where working copies of bucket runs live: ``$ELORA_REMOTE_WORKDIR`` (a directory every node
    of a multi-node cluster mounts), else ``$ELORA_CACHE/remote_runs``."""
    env = os.environ.get(WORKDIR_ENV)
    if env:
        return Path(env).expanduser().absolute()
    from .models.registry import cache_root

    return cache_root() / "remote_runs"


class RemoteRun:
    """A run directory in a bucket and its local working copy."""

    def __init__(self, uri: str, cache: Path | None = None) -> None:
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except Exception as exc:  # noqa: BLE001 - any filesystem error is a configuration problem
            raise ConfigError(f"--out {uri}: cannot open the bucket ({exc})") from None
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.local = Path(cache or workdir_root()) / key / Path(self.root).name

    def _remote_files(self) -> dict[str, int]:
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise ConfigError(f"--out {self.uri}: cannot list the bucket ({exc})") from None
        return {i.path[len(self.root) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}

    def check_writable(self) -> None:
        """Fail before any work when the bucket is missing or not writable with these credentials."""
        import uuid

        probe = f"{self.root}/.write-check-{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(probe) as fh:
                fh.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise ConfigError(f"--out {self.uri}: cannot write to the bucket ({exc}); check the bucket name and the "
                              "AWS_* / Google credentials and endpoint (AWS_ENDPOINT_URL)") from None

    def pull(self) -> int:
        """Download what the bucket has and the working copy lacks (or holds at another size)."""
        self.check_writable()
        remote = self._remote_files()
        self.local.mkdir(parents=True, exist_ok=True)
        got = 0
        for rel, size in sorted(remote.items()):
            dest = self.local / rel
            if dest.is_file() and dest.stat().st_size == size:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.download")
            with self.fs.open_input_stream(f"{self.root}/{rel}") as src, open(tmp, "wb") as fh:
                while chunk := src.read(1 << 22):
                    fh.write(chunk)
            os.replace(tmp, dest)
            got += 1
        self._write_manifest({rel: self._stamp(self.local / rel) for rel in remote if (self.local / rel).is_file()})
        if got:
            log.info("run directory %s: %d files downloaded into %s", self.uri, got, self.local)
        return got

    def push(self) -> int:
        """Upload changed files, delete removed ones, in the order that keeps the bucket consistent."""
        before = self._read_manifest()
        now = {rel: self._stamp(self.local / rel) for rel in self._local_files()}
        changed = [rel for rel, stamp in now.items() if before.get(rel) != stamp]
        removed = [rel for rel in before if rel not in now]

        def is_json(rel: str) -> bool:
            return rel.endswith(".json")

        self._delete([r for r in removed + changed if is_json(r) and r in before])
        for rel in sorted(r for r in changed if not is_json(r)):
            self._upload(rel)
        self._delete([r for r in removed if not is_json(r)])
        for rel in sorted(r for r in changed if is_json(r)):
            self._upload(rel)
        self._write_manifest(now)
        return len(changed) + len(removed)

    def _local_files(self) -> list[str]:
        out = []
        for p in self.local.rglob("*"):
            rel = p.relative_to(self.local).as_posix()
            if p.is_file() and not any(part.startswith(".") for part in Path(rel).parts):  # temporaries, our manifest
                out.append(rel)
        return out

    def _upload(self, rel: str) -> None:
        with open(self.local / rel, "rb") as src, self.fs.open_output_stream(f"{self.root}/{rel}") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)

    def _delete(self, rels: list[str]) -> None:
        for rel in rels:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.delete_file(f"{self.root}/{rel}")

    @staticmethod
    def _stamp(path: Path) -> list[int]:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]

    def _read_manifest(self) -> dict[str, list[int]]:
        path = self.local / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else {}

    def _write_manifest(self, data: dict) -> None:
        tmp = self.local / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.local / MANIFEST)


@contextlib.contextmanager
def open_run_dir(out: str | Path) -> Iterator[Path]:
    """The local path stages write to: ``out`` itself, or the working copy of a bucket's run
    directory (downloaded on entry, uploaded after every stage and on exit, also after an error)."""
    if not is_remote(out):
        yield Path(out)
        return
    mirror = RemoteRun(str(out))
    mirror.pull()
    key = str(mirror.local.absolute())
    _MIRRORS[key] = mirror
    try:
        yield mirror.local
    finally:
        try:
            mirror.push()
        finally:
            _MIRRORS.pop(key, None)
        log.info("run directory uploaded to %s", mirror.uri)


def sync_up(local: Path) -> int:
    """Upload a working copy's changes now (after a stage); no-op for a plain local run directory."""
    mirror = _MIRRORS.get(str(Path(local).absolute()))
    return mirror.push() if mirror is not None else 0


def remote_of(local: Path) -> str | None:
    """The bucket URI a working copy mirrors, or None."""
    mirror = _MIRRORS.get(str(Path(local).absolute()))
    return mirror.uri if mirror is not None else None
