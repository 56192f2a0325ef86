#!/usr/bin/env bash
# Download the wheels a GPU machine lacks into .whl/ (git-ignored), for Python 3.12 on
# x86-64: what `fuseinfer serve` needs (fastapi and its requirements, which include
# opentelemetry-api; uvicorn with httptools) and the CUTLASS headers. device_run.sh and
# before_after.sh callers carry .whl and install it with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
WHEELS=(fastapi==0.165.0 starlette==1.10.0 pydantic==2.13.4 pydantic_core==2.46.4
        uvicorn==0.54.0 httptools==0.9.0 annotated-types==0.7.0 typing-inspection==0.4.2
        opentelemetry-api==1.45.2 annotated-doc anyio idna sniffio click h11
        typing-extensions nvidia-cutlass==4.2.0.0)
for w in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d .whl "$w"
done
ls .whl
