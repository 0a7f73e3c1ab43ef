"""The content-addressed artefact store under `RUV_HOME` (default `.ruv/`).

Layout: `<root>/<asset>/<partition>/<data_version>/<files>`, where the data version is the
sha256 of the files it holds. An object is written into a temporary directory, fsynced and
renamed into place; once there it is never modified. `<root>/<asset>/<partition>/LATEST` names the
newest good version (an asset with blocking checks publishes only a version that passed them)
and is itself replaced atomically; downstream assets and retraining read that one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resources.errors import StoreError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LATEST = "LATEST"


def check_name(kind: str, name: str) -> str:
    """Refuse names that could escape the store (`..`, `/`, absolute paths, empty, hidden)."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise StoreError(
            f"{kind} {name!r} is not a safe name: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, with no '/' or '..'"
        )
    return name


def default_root() -> Path:
    return Path(os.environ.get("RUV_HOME", ".ruv"))


@dataclass(frozen=True)
class StoredObject:
    """A written, immutable store object: where it is and its content hash."""

    path: Path
    data_version: str
    asset: str
    partition: str

    def file(self, name: str) -> Path:
        return self.path / name


def hash_directory(path: Path) -> str:
    """sha256 over the sorted file names and each file's bytes: the object's data version."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0")
        digest.update(sha256_file(file).encode() + b"\0")
    return digest.hexdigest()


def sha256_and_size(path: Path) -> tuple[str, int]:
    """sha256 (hex) of a file's bytes and how many bytes were hashed, in one read."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> str:
    return sha256_and_size(path)[0]


def fsync_tree(path: Path) -> None:
    """Flush every file and the directory itself, so a rename publishes complete data."""
    for file in Path(path).iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)


def publishable_mode(path: Path) -> None:
    """mkdtemp makes 0700 directories; published ones follow the umask like any other directory,
    so a server running as another user can read them."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Write-once storage of adapters and datasets, addressed by asset, partition and content."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def partition_dir(self, asset: str, partition: str) -> Path:
        return self.root / check_name("asset", asset) / check_name("partition", partition)

    def write(self, asset: str, partition: str, writer: Callable[[Path], object], *, set_latest: bool = True) -> StoredObject:
        """Call `writer(tmp_dir)` to fill a fresh directory, then publish it under its hash.

        With `set_latest=False` the version is stored but `LATEST` keeps pointing at the previous
        good one. If `writer` raises, nothing is left behind and nothing stored changes.
        """
        parent = self.partition_dir(asset, partition)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
        try:
            writer(tmp)
            publishable_mode(tmp)
            fsync_tree(tmp)
            version = hash_directory(tmp)
            final = parent / version
            if final.exists():
                shutil.rmtree(tmp)  # identical content already stored: keep the original
            else:
                os.rename(tmp, final)
                fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if set_latest:
            self._set_latest(parent, version)
        return StoredObject(final, version, asset, partition)

    def get(self, asset: str, partition: str, data_version: str | None = None) -> StoredObject:
        """The object of a given version, or the newest one written."""
        parent = self.partition_dir(asset, partition)
        if data_version is None:
            pointer = parent / LATEST
            if not pointer.is_file():
                raise StoreError(f"nothing stored for {asset}[{partition}] under {self.root}; materialise it first")
            data_version = pointer.read_text().strip()
        check_name("data version", data_version)
        path = parent / data_version
        if not path.is_dir():
            raise StoreError(f"{asset}[{partition}] has no version {data_version} under {self.root}")
        return StoredObject(path, data_version, asset, partition)

    def versions(self, asset: str, partition: str) -> list[str]:
        parent = self.partition_dir(asset, partition)
        if not parent.is_dir():
            return []
        return sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _set_latest(self, parent: Path, version: str) -> None:
        tmp = parent / f".{LATEST}.{os.getpid()}"
        tmp.write_text(version + "\n")
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, parent / LATEST)
        fsync_dir(parent)
