#!/bin/bash
# Stage this worktree's code for the device machine: `run` sends the lead's checkout (/work/main), so the code
# under test goes to its git-ignored .scratch/gpu, named in `carry`. Wheels for what the device image lacks
# (pydantic, rfc8785, jsonschema and their needs) go to .scratch/gpu/.whl; pass their folder as $1.
set -e
src=$(cd "$(dirname "$0")/.." && pwd); dst=/work/main/.scratch/gpu
rm -rf $dst; mkdir -p $dst/zoo
cp -r "$src/pearzoo" "$src/bench" "$src/recipes" "$src/registry" "$src/pyproject.toml" $dst/
cp -r "$src/zoo/tokenizer" $dst/zoo/
find $dst -name __pycache__ -prune -exec rm -rf {} +
if [ -n "$1" ]; then mkdir -p $dst/.whl && cp "$1"/*.whl $dst/.whl/; fi
du -sh $dst
