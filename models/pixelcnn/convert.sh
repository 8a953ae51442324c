#!/usr/bin/env bash
# Converts the three ONNX PixelCNNs to the committed .arq files (q8 and f32), with the
# arq binary built from this checkout. converter/tests/pixel.rs checks that the
# committed files are exactly what this writes.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p arq-convert --bin arq
ARQ="${CARGO_TARGET_DIR:-target}/release/arq"
for m in digits17 digits-binary digits-dlm; do
  for q in q8 f32; do
    "$ARQ" convert "models/pixelcnn/$m.onnx" -o "models/pixelcnn/$m-$q.arq" --quant "$q" --force
  done
done
