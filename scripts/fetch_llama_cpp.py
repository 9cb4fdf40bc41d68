"""Fetch the pinned llama.cpp tree from the llama-cpp-python sdist on PyPI (never committed).

Extracts what kubetune uses into DEST: `models/` (vocab-only GGUFs that transformers loads as
real tokenizers, and real chat templates), the converter (`convert_hf_to_gguf.py`,
`convert_lora_to_gguf.py`, `conversion/`, `gguf-py/`). Idempotent: a VERSION file records what
is there. Standard library only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KEEP = ("models/", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--version", required=True, help="llama-cpp-python version, e.g. 0.3.36")
    ap.add_argument("--dest", required=True, type=Path)
    args = ap.parse_args()
    stamp = args.dest / "VERSION"
    if stamp.exists() and stamp.read_text().strip() == args.version:
        print(f"    {args.dest} already holds llama-cpp-python {args.version}'s llama.cpp")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={args.version}", "-d", tmp]
        if subprocess.run(cmd).returncode != 0:
            print(f"error: could not download the llama-cpp-python {args.version} sdist from PyPI", file=sys.stderr)
            return 1
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"llama_cpp_python-{args.version}/vendor/llama.cpp/"
        staging = Path(tmp) / "out"
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                if rel.startswith(KEEP) and (m.isfile() or m.isdir()):
                    m.name = rel
                    members.append(m)
            tar.extractall(staging, members=members, filter="data")
        if not (staging / "convert_hf_to_gguf.py").exists():
            print(f"error: {sdist.name} does not carry vendor/llama.cpp/convert_hf_to_gguf.py", file=sys.stderr)
            return 1
        if args.dest.exists():
            shutil.rmtree(args.dest)
        args.dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), args.dest)
        # the sdist itself is kept: the llama.cpp build (export) starts from it
        shutil.copy2(sdist, args.dest / sdist.name)
    stamp.write_text(args.version + "\n")
    print(f"    {args.dest}: models/, converter and gguf-py of llama-cpp-python {args.version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
