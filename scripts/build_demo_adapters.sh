#!/usr/bin/env bash
# Trains the demo adapters shipped in the package (served by `adaptformer serve` out of the box).
# Every figure in the README's demo table comes from these commands on the embedded backbone.
set -euo pipefail
cd "$(dirname "$0")/.."
AF=${AF:-.venv/bin/adaptformer}
OUT=adapters/adaptformer/demo
mkdir -p "$OUT"
"$AF" train --task digits --data digits --method adaptformer --bottleneck 64 --scale 0.1 --epochs 15 --batch-size 64 --out "$OUT/digits.safetensors"
"$AF" train --task emoji --data emoji --method adaptformer --bottleneck 64 --scale 0.1 --epochs 15 --batch-size 64 --out "$OUT/emoji.safetensors"
"$AF" train --task motion --data motion --frames 8 --method adaptformer --bottleneck 64 --scale 0.1 --epochs 6 --batch-size 64 --temporal diff --out "$OUT/motion.safetensors"
.venv/bin/python -m adaptformer.embedded --export-fashion-head "$OUT/fashion.safetensors"
