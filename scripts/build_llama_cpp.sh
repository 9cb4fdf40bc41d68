#!/usr/bin/env bash
# Builds the pinned llama-cpp-python wheel (the one llama.cpp kubetune converts, quantizes and
# verifies with) from the sdist that scripts/fetch_llama_cpp.py keeps, once per machine, and
# installs it into a venv. The wheel is cached OUTSIDE the repository, keyed by version and
# CMAKE_ARGS, so a fresh clone on the same machine installs in seconds instead of ~7 minutes.
#
#   scripts/build_llama_cpp.sh PYTHON SDIST
#     PYTHON  the venv's python (the wheel is installed there)
#     SDIST   llama_cpp_python-<version>.tar.gz
#   KUBETUNE_WHEEL_CACHE  cache folder (default: $HOME/.cache/kubetune/wheels)
#   CMAKE_ARGS            llama.cpp build flags (default below: portable x86-64 CPU build, AVX2, no AMX,
#                         no llava/mtmd). Not -march=native: on CPUs with AMX (Sapphire Rapids and
#                         later) ggml then repacks quantized weights for AMX, and in VMs that do not
#                         grant AMX tile state every quantized GGUF crashes llama.cpp (SIGSEGV).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 PYTHON SDIST   (SDIST comes from scripts/fetch_llama_cpp.py)" >&2
  exit 2
fi
PY=$1
SDIST=$2
if [ ! -f "$SDIST" ]; then
  echo "error: $SDIST not found; run scripts/fetch_llama_cpp.py --version X --dest .cache/llama.cpp first" >&2
  exit 1
fi

NAME=$(basename "$SDIST" .tar.gz)            # llama_cpp_python-0.3.36
VERSION=${NAME#llama_cpp_python-}
DEFAULT_CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=OFF"
if [ "$(uname -m)" = x86_64 ]; then
  DEFAULT_CMAKE_ARGS="$DEFAULT_CMAKE_ARGS -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
fi
export CMAKE_ARGS=${CMAKE_ARGS:-$DEFAULT_CMAKE_ARGS}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
KEY=$( (echo "$VERSION"; echo "$CMAKE_ARGS"; uname -m; "$PY" -c 'import sys; print(sys.implementation.cache_tag)') \
       | sha256sum | cut -c1-12)
CACHE=${KUBETUNE_WHEEL_CACHE:-$HOME/.cache/kubetune/wheels}/llama_cpp_python-$VERSION-$KEY
mkdir -p "$CACHE"

# which build the venv holds: version alone is not enough (CMAKE_ARGS change the binary)
STAMP="$("$PY" -c 'import sys; print(sys.prefix)')/kubetune-llama-cpp-python.key"
wheel=$(ls "$CACHE"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION-$KEY" ] \
   && "$PY" -c 'import llama_cpp' 2>/dev/null; then
  echo "    llama-cpp-python $VERSION ($KEY) already installed; wheel cached in $CACHE"
  exit 0
fi

if [ -z "$wheel" ]; then
  echo "    building llama-cpp-python $VERSION from $SDIST (CPU, about 7 minutes on 2 cores)"
  echo "    CMAKE_ARGS=$CMAKE_ARGS"
  tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  start=$(date +%s)
  if ! "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$tmp" "$SDIST" >"$tmp/build.log" 2>&1; then
    tail -n 40 "$tmp/build.log" >&2
    echo "error: building llama-cpp-python $VERSION failed (log above); it needs cmake, a C++17 compiler and ninja or make" >&2
    exit 1
  fi
  mv "$tmp"/llama_cpp_python-*.whl "$CACHE"/
  wheel=$(ls "$CACHE"/llama_cpp_python-*.whl | head -n1)
  echo "    built $(basename "$wheel") in $(( $(date +%s) - start ))s, cached in $CACHE"
fi

"$PY" -m pip install --quiet --force-reinstall --no-deps "$wheel"
# its runtime dependencies (numpy, jinja2, diskcache, typing-extensions) from the registry
"$PY" -m pip install --quiet "$wheel"
"$PY" -c 'import llama_cpp; assert hasattr(llama_cpp, "llama_model_quantize"); print("    llama_cpp", llama_cpp.__version__, "installed")'
echo "$VERSION-$KEY" > "$STAMP"
