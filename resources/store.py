"""The content-addressed artefact store under `RUV_HOME` (default `.ruv/`).

Layout: `<root>/<asset>/<partition>/<data_version>/<files>`, where the data version is the
sha256 of the files it holds. An object is written into a temporary directory, fsynced and
renamed into place; once there it is never modified. `<root>/<asset>/<partition>/LATEST` names the
newest good version (an asset with blocking checks publishes only a version that passed them)
and is itself replaced atomically; downstream assets and retraining read that one.

Every read re-hashes the object and refuses bytes that no longer match their address (bit rot, a
bad NFS write, a hand edit), naming the object. Within one process an object is re-hashed only
when one of its files changed since it was last hashed there (inode, size, mtime or ctime): `make
run` reads each dataset and checkpoint several times, and re-hashing the same unchanged bytes was
a fifth of its time. Writers on several machines may publish the same
version or the same `LATEST` at once: the rename that loses finds the winner's identical, complete
object in place, and each `LATEST` replacement is one atomic rename of a uniquely named file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ruv_resources.errors import StoreError

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


# object directory -> the file signatures it had when this process last hashed it to its version
_HASHED: dict[str, tuple] = {}


def _signature(path: Path) -> tuple:
    """What changes when any file of an object changes, in place or replaced: name, inode, size,
    mtime and ctime of every file."""
    sig = []
    for file in sorted(Path(path).iterdir()):
        st = file.stat()
        sig.append((file.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(sig)


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
    os.chmod(path, 0o777 & ~_umask())


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
                try:
                    os.rename(tmp, final)
                    fsync_dir(parent)
                    _HASHED[os.path.abspath(final)] = _signature(final)  # hashed just now, as written
                except OSError as exc:  # another writer published the same version first
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                        raise
                    shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if set_latest:
            self._set_latest(parent, version)
        return StoredObject(final, version, asset, partition)

    def get(self, asset: str, partition: str, data_version: str | None = None, *, verify: bool = True) -> StoredObject:
        """The object of a given version, or the newest good one, after checking its bytes still
        hash to its version (`verify=False` only for listing, never before reading the files)."""
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
        stored = StoredObject(path, data_version, asset, partition)
        if verify:
            verify_object(stored)
        return stored

    def objects(self):
        """Every published object (asset, partition, version), without reading them."""
        if not self.root.is_dir():
            return
        for asset in sorted(p for p in self.root.iterdir() if p.is_dir() and _SAFE_NAME.match(p.name) and p.name != "slots"):
            for partition in sorted(p for p in asset.iterdir() if p.is_dir() and not p.name.startswith(".")):
                for version in self.versions(asset.name, partition.name):
                    yield StoredObject(partition / version, version, asset.name, partition.name)

    def verify(self) -> list[str]:
        """Every object re-hashed and every `LATEST` resolved: one line per problem (empty = sound)."""
        problems = []
        for stored in self.objects():
            try:
                verify_object(stored)
            except StoreError as exc:
                problems.append(str(exc))
        for asset in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
            for pointer in sorted(asset.glob(f"*/{LATEST}")):
                version = pointer.read_text().strip()
                if not (pointer.parent / version).is_dir():
                    problems.append(f"{asset.name}[{pointer.parent.name}]: {LATEST} names {version!r}, which is not stored")
        return problems

    def versions(self, asset: str, partition: str) -> list[str]:
        parent = self.partition_dir(asset, partition)
        if not parent.is_dir():
            return []
        return sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _set_latest(self, parent: Path, version: str) -> None:
        # unique per host and process: pids repeat across the machines sharing the store
        fd, name = tempfile.mkstemp(prefix=f".{LATEST}.{socket.gethostname()}.{os.getpid()}.", dir=parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(version + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(name, 0o666 & ~_umask())
            os.replace(name, parent / LATEST)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        fsync_dir(parent)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def verify_object(stored: StoredObject) -> None:
    """Refuse an object whose files no longer hash to its data version (unchanged since this
    process last hashed it: not hashed again)."""
    key, signature = os.path.abspath(stored.path), _signature(stored.path)
    if _HASHED.get(key) == signature:
        return
    actual = hash_directory(stored.path)
    if actual == stored.data_version:
        _HASHED[key] = signature
        return
    _HASHED.pop(key, None)
    if actual != stored.data_version:
        raise StoreError(f"{stored.asset}[{stored.partition}] version {stored.data_version[:12]} at {stored.path} is corrupt: "
                         f"its files hash to {actual[:12]}; it is not read (restore it or re-materialise the partition)")
