"""Where inputs come from and outputs go: a local path or an `s3://` URI, both through fsspec.

S3 endpoints and credentials come from the usual AWS environment (`AWS_ENDPOINT_URL_S3`,
`AWS_ACCESS_KEY_ID`, ... or the pod's workload identity); nothing here names a provider.
Writes are staged in a local folder first and published file by file, so a reader that
waits for a marker written last never sees half a result.

S3 faults. Every S3 filesystem made here (`filesystem`) carries botocore's own retry
configuration: `adaptive` mode (exponential backoff with jitter, plus client-side rate limiting
once the server throttles) for 5xx answers, `SlowDown` / throttling, timeouts and dropped
connections, up to `S3_RETRIES["max_attempts"]` retries per request. `AWS_RETRY_MODE` /
`AWS_MAX_ATTEMPTS` in the environment replace these two settings. A connection cut in the middle
of a body is covered by s3fs: it reads files in byte ranges and fetches a range again when its
body breaks off (`S3_RETRYABLE_ERRORS`), so reading resumes at the offset it had reached.
Permanent errors (403 AccessDenied, NoSuchBucket, NoSuchKey) are not retried: they surface at
once, and `describe_error` words them for the message that names the URI.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

S3_PROTOCOLS = ("s3", "s3a")
S3_RETRIES = {"mode": "adaptive", "max_attempts": 10}
S3_TIMEOUTS = {"connect_timeout": 10, "read_timeout": 60}  # seconds; a read that stalls longer is retried
S3_BLOCK = 16 * 2**20  # bytes per ranged GET when reading (s3fs fetches a range again when its body breaks off)


def is_remote(uri: str) -> bool:
    """True for `s3://...` and other fsspec URLs; False for local paths and `file://`."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme not in ("file", "local")


def local_path(path: str, base: Path) -> str:
    """A path on this machine made absolute against `base` (`~` expanded; a `file://` URI is one too)."""
    return os.path.normpath(base / os.path.expanduser(path.removeprefix("file://")))


def output_location(uri: str | None, job_name: str, base: Path) -> str:
    """Where a job's outputs go: `output.uri` (remote as given, a local path against `base`, the spec's folder);
    unset, `runs/<job name>` next to the spec. The one default, for the launcher, the trainer and the export."""
    if uri is None:
        return local_path(str(Path("runs") / job_name), base)
    return uri if is_remote(uri) else local_path(uri, base)


def options(uri: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for `uri`: for S3, botocore's retry and timeout configuration and the read
    block size, under `extra` (which wins key by key, `config_kwargs` included)."""
    extra = dict(extra or {})
    if uri.partition("://")[0] not in S3_PROTOCOLS:
        return extra
    config: dict[str, Any] = dict(S3_TIMEOUTS)
    if not ({"AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"} & os.environ.keys()):
        config["retries"] = dict(S3_RETRIES)
    extra["config_kwargs"] = config | dict(extra.get("config_kwargs") or {})
    extra.setdefault("default_block_size", S3_BLOCK)
    return extra


def filesystem(uri: str, extra: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of `uri`, with the retry configuration of `options`."""
    return url_to_fs(uri, **options(uri, extra))


def describe_error(e: BaseException) -> str:
    """What an S3 / filesystem error means, in words: `access denied (403)`, `no such bucket` ..."""
    cause = e.__cause__ if e.__cause__ is not None else e
    code = (getattr(cause, "response", None) or {}).get("Error", {}).get("Code")
    if isinstance(e, PermissionError):
        return "access denied (403): the credentials may not read or write it"
    if code == "NoSuchBucket":
        return "no such bucket (NoSuchBucket)"
    if code == "NoSuchKey":
        return "no such object (NoSuchKey)"
    if isinstance(e, FileNotFoundError):
        return "not found (404)"
    text = str(e) or type(e).__name__
    return f"{text} (the storage kept failing after retries)" if code or isinstance(e, TimeoutError) else text


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path)


def remove_tree(uri: str) -> None:
    """Delete a folder (or S3 prefix) and everything under it; nothing happens when it does not exist."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def read_text(uri: str) -> str:
    """A text file's content; a UTF-8 byte-order mark (Notepad writes one) is not part of it."""
    fs, path = filesystem(uri)
    with fs.open(path, "r", encoding="utf-8-sig") as f:
        return f.read()


def write_text(uri: str, text: str) -> None:
    fs, path = filesystem(uri)
    if not is_remote(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open(path, "w", encoding="utf-8") as f:
        f.write(text)


def replace_text(uri: str, text: str) -> None:
    """Replace the file at `uri` in one write: a reader sees the old text or the new one, never half (an
    `os.replace` of a local file; for S3 one PUT, which shows the whole object or the previous one)."""
    if is_remote(uri):
        write_text(uri, text)
        return
    path = Path(uri.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def folders(uri: str) -> list[str]:
    """Names of the folders (S3: prefixes) directly under `uri`; [] when it does not exist."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    return [info["name"].rstrip("/").rsplit("/", 1)[-1] for info in fs.ls(path, detail=True)
            if info["type"] == "directory"]


def get_file(uri: str, dest: Path) -> None:
    """Download one file to the local path `dest`; FileNotFoundError when there is none."""
    fs, path = filesystem(uri)
    fs.get_file(path, str(dest))


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
    fs, path = filesystem(uri)
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
    fs, root = filesystem(uri)
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
