#!/usr/bin/env python3
"""Writes corpus/gguf/llama_1block.gguf: a complete one-block LLaMA (dim 32, byte-level
vocabulary of 256, every tensor F32) that the LLaMA importer accepts, so that the GGUF
target's mutants reach past the importer's header checks. The header is the one of
converter/tests/fixtures/hostile/make.py. Run from anywhere."""
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
# make.py writes its fixtures when run, so only its helpers (before `FILES`) are run here.
src = (HERE / "../converter/tests/fixtures/hostile/make.py").read_text().split("FILES = {")[0]
m = {"__file__": str(HERE / "../converter/tests/fixtures/hostile/make.py")}
exec(src, m)

dim, vocab, ff = 32, 256, 32
names = [("token_embd.weight", (dim, vocab)), ("output_norm.weight", (dim,)), ("output.weight", (dim, vocab))]
for w, shape in [("attn_norm", (dim,)), ("attn_q", (dim, dim)), ("attn_k", (dim, dim)), ("attn_v", (dim, dim)),
                 ("attn_output", (dim, dim)), ("ffn_norm", (dim,)), ("ffn_gate", (dim, ff)), ("ffn_up", (dim, ff)),
                 ("ffn_down", (ff, dim))]:
    names.append((f"blk.0.{w}.weight", shape))
table, data = b"", b""
for name, dims in names:
    n = 1
    for d in dims:
        n *= d
    table += m["s"](name.encode()) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) \
        + struct.pack("<IQ", 0, len(data))
    data += struct.pack(f"<{n}f", *[0.01 * ((i * 7 + len(name)) % 13 - 6) + (1.0 if "norm" in name else 0.0) for i in range(n)])
    data += b"\0" * (-len(data) % 32)
kvs = m["llama"]()[24:]  # the header's key/values, after magic, version and counts
head = b"GGUF" + struct.pack("<IQQ", 3, len(names), 9) + kvs + table
head += b"\0" * (-len(head) % 32)
(HERE / "corpus/gguf/llama_1block.gguf").write_bytes(head + data)
print(len(head + data), "bytes")
