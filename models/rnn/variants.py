#!/usr/bin/env python3
"""Small untrained variants of the word_language_model TransformerModel for arq's import
tests (converter/tests/word_transformer.rs), exported as train.py exports the trained one
(legacy exporter, opset 17, a (seq, 1) int64 input):

    python models/rnn/variants.py   # writes converter/tests/fixtures/wlm-transformer-*.onnx

- untrained: the default post-LN, ReLU encoder; its equal zero biases come out shared
  through Identity nodes (which the trained model's do not);
- norm-first: nn.TransformerEncoderLayer(norm_first=True), refused;
- gelu: activation="gelu" (exported as Div/Erf/Add/Mul), refused.
"""
import os
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train import TransformerModel  # noqa: E402

OUT = os.path.join(HERE, "../../converter/tests/fixtures")
V, D, HEADS, FFN, LAYERS, SEQ = 20, 32, 2, 32, 2, 8


def main():
    torch.manual_seed(0)
    for name, variant in [("untrained", {}), ("norm-first", dict(norm_first=True)), ("gelu", dict(activation="gelu"))]:
        model = TransformerModel(V, D, HEADS, FFN, LAYERS, dropout=0.2)
        layer = nn.TransformerEncoderLayer(D, HEADS, FFN, **variant)
        model.encoder = nn.TransformerEncoder(layer, LAYERS, norm=nn.LayerNorm(D), enable_nested_tensor=False)
        model.eval()
        path = os.path.join(OUT, f"wlm-transformer-{name}.onnx")
        torch.onnx.export(model, (torch.zeros(SEQ, 1, dtype=torch.int64),), path, dynamo=False, opset_version=17)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    with open(os.path.join(OUT, "wlm-transformer-variants.vocab.json"), "w") as f:
        f.write('{"level": "word", "tokens": [' + ", ".join(f'"w{i}"' for i in range(V)) + "]}\n")


if __name__ == "__main__":
    main()
