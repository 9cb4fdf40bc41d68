"""The shared base GGUF of `export.mode: adapters`: the un-merged base model converted (and quantized) once per
content key, and reused by every job and matrix cell whose key is the same.

The key hashes what the file's bytes depend on: the base model's identity (a hub id at its resolved commit; a
local or `s3://` folder or `.gguf` file by the sha256 of its files), `model.dtype` and `model.quantization` (the
weights the adapter was trained against: QLoRA's round trip), the training tokenizer (its files' sha256: the vocabulary and
chat template embedded in the GGUF), the llama.cpp version and the GGUF type.

The store (`export.bases_uri`, default `bases/` next to the job's output folder) holds one folder per key:
`<key>/<writer>/<file>.gguf`, then `<key>/_SUCCESS` (JSON: which file, its sha256, the key's inputs), written
last. A reader trusts only the marker. A writer uploads into its own `<writer>` folder (no two writers ever write
the same object), looks for a marker once more, and writes its own only when there is none: two jobs racing both
leave complete files, and whichever marker lands last names a complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer import storage
from trainer.export.errors import ExportError
from trainer.export.gguf import sha256

MARKER = "_SUCCESS"


def store_uri(bases_uri: str | None, output: str, base_dir: Path) -> str:
    """`export.bases_uri` (a local path against the spec's folder), else `bases/` beside the job's output folder."""
    if bases_uri:
        return bases_uri if storage.is_remote(bases_uri) else storage.local_path(bases_uri, base_dir)
    parent = output.rstrip("/").rsplit("/", 1)[0]
    return storage.join(parent, "bases")


def tree_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (their relative paths and contents)."""
    if path.is_file():
        return sha256(path)
    h = hashlib.sha256()
    for p in sorted(x for x in path.rglob("*") if x.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + sha256(p).encode())
    return h.hexdigest()


def base_identity(base_model: str, base_dir: Path) -> str:
    """What the base model's weights are: `hub:<id>@<commit>` for a hub id (the snapshot the local Hugging Face
    cache resolved), else `sha256:<hash of its files>` of the local folder or file (an `s3://` one after download)."""
    from trainer.model.load import resolve_base_model

    ref = resolve_base_model(base_model, base_dir)
    if not ref.local:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref.location, "config.json")
        if isinstance(cached, str):
            return f"hub:{ref.location}@{Path(cached).parent.name}"
        return f"hub:{ref.location}@unresolved"
    path = Path(ref.location) / ref.gguf_file if ref.gguf_file else Path(ref.location)
    return f"sha256:{tree_sha256(path)}"


@dataclass(frozen=True)
class BaseKey:
    identity: str
    dtype: str
    quantization: str
    tokenizer: str  # sha256 of the training tokenizer's files
    llama_cpp: str

    def family(self) -> str:
        """The base's hash across GGUF types: one registered model per family."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def key(self, quant: str) -> str:
        return hashlib.sha256(json.dumps(asdict(self) | {"quant": quant}, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SharedBase:
    quant: str
    key: str
    file: str  # URI (or local path) of the GGUF in the store
    local: Path  # the GGUF on this machine (the store's own file when the store is local)
    sha256: str
    reused: bool  # False: this job wrote it
    seconds: float


def read_marker(store: str, key: str) -> dict | None:
    uri = storage.join(store, key, MARKER)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def _local_copy(store: str, key: str, marker: dict, cache: Path) -> Path:
    uri = storage.join(store, key, marker["file"])
    if not storage.is_remote(uri):
        return Path(uri.removeprefix("file://"))
    dest = cache / key / Path(marker["file"]).name
    if not (dest.is_file() and dest.stat().st_size == marker.get("size")):
        dest.parent.mkdir(parents=True, exist_ok=True)
        storage.get_file(uri, dest)
    return dest


def _upload(src: Path, uri: str) -> None:
    if storage.is_remote(uri):
        fs, path = storage.filesystem(uri)
        fs.put_file(str(src), path)
        return
    dest = Path(uri.removeprefix("file://"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def ensure(store: str, key: str, quant: str, inputs: dict, make: Callable[[], Path], cache: Path) -> SharedBase:
    """The base GGUF of `key` in `store`: the one there (reused), else `make()`'s file, stored under `key`."""
    started = time.perf_counter()
    found = read_marker(store, key)
    if found is not None:
        local = _local_copy(store, key, found, cache)
        if storage.is_remote(store) and sha256(local) != found["sha256"]:
            local.unlink()
            raise ExportError(f"the shared base {storage.join(store, key, found['file'])} does not match its sha256 "
                              f"in {MARKER} (corrupted or replaced): remove {storage.join(store, key)}/ and export "
                              "again, which writes it anew")
        return SharedBase(quant, key, storage.join(store, key, found["file"]), local, found["sha256"], True,
                          time.perf_counter() - started)
    made = make()
    digest = sha256(made)
    rel = f"{uuid.uuid4().hex[:12]}/{made.name}"
    target = storage.join(store, key, rel)
    _upload(made, target)
    raced = read_marker(store, key)
    if raced is not None:  # another job finished first: use its file, drop ours (no marker names it)
        storage.remove_tree(storage.join(store, key, rel.split("/")[0]))
        return ensure(store, key, quant, inputs, make, cache)
    marker = {"file": rel, "sha256": digest, "size": made.stat().st_size, "quant": quant, "inputs": inputs}
    storage.replace_text(storage.join(store, key, MARKER), json.dumps(marker, indent=2) + "\n")
    local = target if not storage.is_remote(target) else str(made)
    return SharedBase(quant, key, target, Path(str(local).removeprefix("file://")), digest, False,
                      time.perf_counter() - started)
