"""Where inputs come from and outputs go: a local path or an `s3://` URI, both through fsspec.

S3 endpoints and credentials come from the usual AWS environment (`AWS_ENDPOINT_URL_S3`,
`AWS_ACCESS_KEY_ID`, ... or the pod's workload identity); nothing here names a provider.
Writes are staged in a local folder first and published file by file, so a reader that
waits for a marker written last never sees half a result.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs


def is_remote(uri: str) -> bool:
    """True for `s3://...` and other fsspec URLs; False for local paths and `file://`."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme not in ("file", "local")


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    return fs.exists(path)


def remove(uri: str) -> None:
    fs, path = url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path)


def remove_tree(uri: str) -> None:
    """Delete a folder (or S3 prefix) and everything under it; nothing happens when it does not exist."""
    fs, path = url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def read_text(uri: str) -> str:
    with fsspec.open(uri, "r", encoding="utf-8") as f:
        return f.read()


def write_text(uri: str, text: str) -> None:
    fs, path = url_to_fs(uri)
    if not is_remote(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open(path, "w", encoding="utf-8") as f:
        f.write(text)


def fetch(uri: str, cache_root: Path) -> Path:
    """A local copy of a remote file or prefix (downloaded once into `cache_root`); local paths pass through."""
    if not is_remote(uri):
        return Path(uri.removeprefix("file://")).expanduser()
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "root"
    target = cache_root / f"{key}-{name}"
    done = cache_root / f"{key}-{name}.complete"
    if done.exists():
        return target
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri} does not exist: check the URI and that the S3 credentials can read it")
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    cache_root.mkdir(parents=True, exist_ok=True)
    if fs.isdir(path):
        files = [p for p in fs.find(path) if not fs.isdir(p)]
        if not files:
            raise FileNotFoundError(f"{uri} is an empty prefix: expected a model folder (config.json, weights)")
        for src in files:
            dest = target / Path(src).relative_to(path.rstrip("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(src, str(dest))
    else:
        fs.get_file(path, str(target))
    done.touch()
    return target


def publish_dir(local_dir: Path, uri: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy every file under `local_dir` to `uri` (same relative layout); returns the relative paths."""
    fs, root = url_to_fs(uri)
    written: list[str] = []
    for src in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = src.relative_to(local_dir).as_posix()
        if rel.split("/", 1)[0] in skip:
            continue
        dest = f"{root.rstrip('/')}/{rel}"
        if is_remote(uri):
            fs.put_file(str(src), dest)
        else:
            if Path(dest).resolve() == src.resolve():
                written.append(rel)
                continue
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        written.append(rel)
    return written
