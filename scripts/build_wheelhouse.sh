#!/usr/bin/env bash
# Fill docker/wheelhouse/ with every wheel the Flame image needs, for an
# air-gapped image build (docker build --build-arg PIP_SOURCE=wheelhouse ...).
#
# Run on a machine that reaches a package index (or a mirror: pip's own
# configuration applies); the wheels are for Linux x86_64, CPython 3.11,
# whatever this machine is. Then copy the clone, wheelhouse included, to the
# build machine. Usage: bash scripts/build_wheelhouse.sh
#
# PyTorch: give pip the CPU wheel, or the image grows by gigabytes of CUDA
# libraries: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# Dependencies are downloaded once per pyproject.toml (a stamp file records
# its hash; FORCE=1 downloads again); Flame's own wheel is rebuilt every time
# so the image never carries stale code.
set -euo pipefail
cd "$(dirname "$0")/.."

out=docker/wheelhouse
stamp="$out/.requirements-sha256"
mkdir -p "$out"
python=${PYTHON:-python3}

# Flame's own wheel, from the working tree (an offline `pip install .` inside
# the image could not fetch the build backend).
rm -f "$out"/flame-*.whl
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" .
wheel=$(ls "$out"/flame-*.whl)
echo "built $wheel"

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "dependencies in $out are current for pyproject.toml; FORCE=1 to redo"
    exit 0
fi

# Every requirement of the wheel, as binary wheels for the image's platform:
# glibc up to 2.36 (Debian bookworm, python:3.11-slim). Older pips do not
# expand manylinux_2_36 to the older tags it covers, so list them all.
platforms=(--platform manylinux2014_x86_64 --platform linux_x86_64)
for minor in $(seq 17 36); do
    platforms+=(--platform "manylinux_2_${minor}_x86_64")
done
echo "downloading Flame's dependencies into $out ..."
"$python" -m pip download --quiet --dest "$out" \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    "${platforms[@]}" "$wheel"
echo "$want" >"$stamp"
echo "$(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1) in $out"
