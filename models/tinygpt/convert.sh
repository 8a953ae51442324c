#!/usr/bin/env bash
# Converts tinygpt.onnx to the committed .arq files (q8 and f32), with the arq binary
# built from this checkout. converter/tests/gpt2.rs checks that the committed files are
# exactly what this writes.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p arq-convert --bin arq
ARQ="${CARGO_TARGET_DIR:-target}/release/arq"
for q in q8 f32; do
  "$ARQ" convert models/tinygpt/tinygpt.onnx -o "models/tinygpt/tinygpt-$q.arq" --quant "$q" --force
done
