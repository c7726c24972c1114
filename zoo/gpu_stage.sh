#!/bin/bash
# Stage this worktree's code for the device machine: `run` sends the lead's checkout (/work/main), so the code
# under test goes to its git-ignored .scratch/gpu, named in `carry`. Wheels for what the device image lacks
# (pydantic, rfc8785, jsonschema and their needs) go to .scratch/gpu/.whl: pass their folder as $1, or
# let the script download them.
set -e
src=$(cd "$(dirname "$0")/.." && pwd); dst=/work/main/.scratch/gpu
rm -rf $dst; mkdir -p $dst/zoo
cp -r "$src/pearzoo" "$src/bench" "$src/recipes" "$src/registry" "$src/pyproject.toml" $dst/
cp -r "$src/zoo/tokenizer" $dst/zoo/
find $dst -name __pycache__ -prune -exec rm -rf {} +
# Without a folder: download them (versions as in the CPU venv of 2026-12-06; Python 3.12 on the device image).
whl=${1:-}
if [ -z "$whl" ]; then
  whl=$(mktemp -d)
  for p in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
           rfc8785==0.1.4 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$whl" "$p"
  done
fi
mkdir -p $dst/.whl && cp "$whl"/*.whl $dst/.whl/
du -sh $dst
