#!/usr/bin/env bash
# Converts the committed ONNX recurrent models to the committed .arq files (q8): the
# character LSTM (the microcontroller-sized one) and the sunspots series model. The
# runtime's mutation loop (runtime/tests/mutated_models.rs) reads both.
#   bash models/rnn/convert.sh [path/to/arq]
set -euo pipefail
cd "$(dirname "$0")/../.."
arq=${1:-target/release/arq}
"$arq" convert models/rnn/char-lstm.onnx --vocab models/rnn/char-lstm.vocab.json -o models/rnn/char-lstm-q8.arq --force
"$arq" convert models/series/sunspots.onnx -o models/series/sunspots-q8.arq --force
