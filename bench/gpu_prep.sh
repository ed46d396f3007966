#!/usr/bin/env bash
# Here, before a session's first device call: puts what the GPU machine lacks into ignored folders,
# each small enough to travel in one call (64 MiB a call, bench/README.md section 4):
#   .whl/        pydantic and its needs (from ../shared/gpu/fetch-wheels.sh, without rdkit)  ~4 MB
#   .whl_rdkit/  rdkit (evaluation: bonds, validity, SMILES, SDF)                          ~32 MB
#   .whl_bench/  POT, torchcfm, flow_matching (bench_engine's peers, bench_ot's solver)    ~33 MB
#   .gpu_data/   qm9/qm9_hcno.xyz.xz from ../shared/data                                    ~38 MB
# and checks the sizes. Run from anywhere: bash bench/gpu_prep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "$(git rev-parse --git-path info)"  # fetch-wheels.sh appends to .git/info/exclude
rm -rf .whl .whl_rdkit .whl_bench
bash ../shared/gpu/fetch-wheels.sh >/dev/null
mkdir -p .whl_rdkit .whl_bench .gpu_data/qm9
mv .whl/rdkit-*.whl .whl_rdkit/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl_bench pot torchcfm flow_matching
cp ../shared/data/qm9/qm9_hcno.xyz.xz .gpu_data/qm9/
limit=$((64 * 1024 * 1024))
for d in .whl .whl_rdkit .whl_bench .gpu_data; do
  git check-ignore -q "$d" || { echo "$d is not ignored by git: it would travel in every call" >&2; exit 1; }
  size=$(du -sb "$d" | cut -f1)
  awk -v d="$d" -v s="$size" 'BEGIN { printf "%-12s %6.1f MB\n", d, s / 1e6 }'
done
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)  # the tracked files travel in every call
for carry in ".whl .gpu_data" ".whl_rdkit" ".whl_bench"; do  # what calls 1, 2 and 3 carry
  # shellcheck disable=SC2086  # the folder list is meant to split
  total=$(( $(du -scb $carry | tail -1 | cut -f1) + tree ))
  [ "$total" -lt "$((limit - 4 * 1024 * 1024))" ] || { echo "tree + $carry = $total bytes: too close to 64 MiB" >&2; exit 1; }
  echo "a call carrying $carry: $((total / 1000000)) MB with the tree"
done
echo "ready; see bench/README.md section 4"
