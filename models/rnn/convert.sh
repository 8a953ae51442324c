#!/usr/bin/env bash
# Converts the committed ONNX recurrent models to the committed .arq files (q8): the
# character LSTM (the microcontroller-sized one) and the sunspots series model. The
# runtime's mutation loop (runtime/tests/mutated_models.rs) reads both. Then the
# word_language_model Transformer to models/rnn/word-transformer-q8.arq (not committed;
# converter/tests/word_transformer.rs converts it itself) and its test perplexity in the
# windows of PyTorch's reference (reference.json's score_ctx).
#   bash models/rnn/convert.sh [path/to/arq]
set -euo pipefail
cd "$(dirname "$0")/../.."
arq=${1:-target/release/arq}
"$arq" convert models/rnn/char-lstm.onnx --vocab models/rnn/char-lstm.vocab.json -o models/rnn/char-lstm-q8.arq --force
"$arq" convert models/series/sunspots.onnx -o models/series/sunspots-q8.arq --force
"$arq" convert models/rnn/word-transformer.onnx --vocab models/rnn/word-transformer.vocab.json \
  -o models/rnn/word-transformer-q8.arq --force
"$arq" score models/rnn/word-transformer-q8.arq models/rnn/test-words-1000.txt --ctx 256
