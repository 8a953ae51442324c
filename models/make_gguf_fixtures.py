#!/usr/bin/env python3
"""Build the GGUF reader's test fixtures with the independent reference, gguf-py.

Writes into converter/tests/fixtures/gguf/:

  tiny.gguf        a few-KB GGUF v3 made by gguf.GGUFWriter: metadata of every value
                   type (arrays of strings and nested arrays included) and one tensor
                   of each type the converter dequantizes, plus one it does not (IQ4_NL)
  tiny.json        per tensor: GGUF type, dims (GGUF order, dims[0] innermost) and the
                   values gguf-py's dequantizer gives, as little-endian f32 bit patterns
                   (integers, so JSON float parsing cannot blur them)
  aligned64.gguf   two tensors written with general.alignment = 64
  aligned64.json   as tiny.json
  smollm2_rows.json  (only when models/cache/SmolLM2-135M-Instruct.Q4_1.gguf exists)
                   a few rows of three tensors of the real model, dequantized by gguf-py

Quantized blocks come from gguf.quants.quantize where gguf-py implements quantization
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16); for the K-quants, which gguf-py only dequantizes,
the blocks are seeded random bytes with finite f16 scales. Every expected value is read
back from the written file with gguf.GGUFReader and dequantized by gguf.quants.dequantize.

Run with the project venv:  /work/cache/venv/bin/python models/make_gguf_fixtures.py
Deterministic: the same gguf-py version gives byte-identical fixtures.
"""
from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "converter" / "tests" / "fixtures" / "gguf"
SMOLLM2 = ROOT / "models" / "cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"

QK_K = 256


def f32_bits(values: np.ndarray) -> list[int]:
    return [int(b) for b in np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view("<u4")]


def random_k_blocks(rng: np.random.Generator, qtype: Q, n_blocks: int) -> np.ndarray:
    """Random K-quant blocks whose f16 scale fields hold finite, moderate values."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)

    def put_f16(offset: int, scale: float) -> None:
        values = (rng.standard_normal(n_blocks) * scale).astype(np.float16)
        blocks[:, offset:offset + 2] = values.reshape(n_blocks, 1).view(np.uint8)

    if qtype == Q.Q2_K:  # scales[16] qs[64] d dmin
        put_f16(80, 0.02)
        put_f16(82, 0.01)
    elif qtype == Q.Q3_K:  # hmask[32] qs[64] scales[12] d
        put_f16(108, 0.01)
    elif qtype in (Q.Q4_K, Q.Q5_K):  # d dmin scales[12] ...
        put_f16(0, 0.01)
        put_f16(2, 0.005)
    elif qtype == Q.Q6_K:  # ql[128] qh[64] scales[16] d
        put_f16(208, 0.002)
    else:
        raise ValueError(qtype)
    return blocks


def add_metadata(w: gguf.GGUFWriter) -> None:
    # general.architecture is written by the GGUFWriter constructor.
    w.add_name("arq tiny gguf fixture")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.1)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.str", "héllo, GGUF ✓")
    w.add_key_value("test.str_empty", "", V.STRING)  # add_string() skips empty strings
    w.add_uint64("test.u64", 18000000000000000000)
    w.add_int64("test.i64", -9000000000000000000)
    w.add_float64("test.f64", 3.141592653589793)
    w.add_array("test.arr_str", ["<s>", "</s>", "Ġthe", "ĊĊ", ""])
    w.add_key_value("test.arr_u8", [0, 1, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("test.arr_u16", [7, 65535], V.ARRAY, sub_type=V.UINT16)
    w.add_key_value("test.arr_i64", [-1, 2**62], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("test.arr_f64", [0.5, -2.25], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_f32", [1.5, -0.25])
    w.add_array("test.arr_bool", [True, False, True])
    w.add_array("test.arr_nested", [[1, 2], [3]])
    w.add_uint32("llama.context_length", 64)
    w.add_uint32("llama.embedding_length", 32)


def tiny_tensors(rng: np.random.Generator) -> list[tuple[str, np.ndarray, Q | None]]:
    """(name, array, raw_dtype): numpy shape is (rows, cols), GGUF dims are reversed."""
    tensors: list[tuple[str, np.ndarray, Q | None]] = []

    f32 = rng.standard_normal((3, 40)).astype(np.float32)
    f32[0, :6] = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -3.4e38], dtype=np.float32)
    tensors.append(("t.f32", f32, None))
    tensors.append(("t.norm", (1.0 + 0.1 * rng.standard_normal(40)).astype(np.float32), None))

    f16 = (rng.standard_normal((4, 24)) * 3).astype(np.float16)
    f16[0, :6] = np.array([0.0, -0.0, np.inf, -np.inf, 6e-8, 65504.0], dtype=np.float16)
    f16[0, 6] = np.float16(np.nan)  # quiet NaN 0x7e00
    tensors.append(("t.f16", f16, None))

    bf16_src = rng.standard_normal((2, 3, 16)).astype(np.float32)
    bf16_src[0, 0, :4] = np.array([0.0, -0.0, np.inf, 1e-40], dtype=np.float32)
    tensors.append(("t.bf16", gguf.quants.quantize(bf16_src, Q.BF16), Q.BF16))

    for name, qtype, shape in [
        ("t.q8_0", Q.Q8_0, (4, 64)),
        ("t.q4_0", Q.Q4_0, (3, 64)),
        ("t.q4_1", Q.Q4_1, (3, 64)),
        ("t.q5_0", Q.Q5_0, (2, 96)),
        ("t.q5_1", Q.Q5_1, (2, 96)),
    ]:
        src = (rng.standard_normal(shape) * 0.5 + rng.standard_normal((shape[0], 1)) * 0.1).astype(np.float32)
        tensors.append((name, gguf.quants.quantize(src, qtype), qtype))

    for name, qtype in [
        ("t.q2_k", Q.Q2_K),
        ("t.q3_k", Q.Q3_K),
        ("t.q4_k", Q.Q4_K),
        ("t.q5_k", Q.Q5_K),
        ("t.q6_k", Q.Q6_K),
    ]:
        rows = 2
        blocks = random_k_blocks(rng, qtype, rows)
        tensors.append((name, blocks.reshape(rows, -1), qtype))

    # A type the converter does not dequantize: reading its bytes works, dequantizing
    # it must fail with UnsupportedType.
    iq4 = rng.integers(0, 256, size=(1, 18), dtype=np.uint8)
    iq4[:, 0:2] = np.array([0.01], dtype=np.float16).view(np.uint8)
    tensors.append(("t.iq4_nl", iq4, Q.IQ4_NL))
    return tensors


def write_gguf(path: Path, tensors, alignment: int | None, with_metadata: bool) -> None:
    w = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if with_metadata:
        add_metadata(w)
    for name, array, raw_dtype in tensors:
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def expected_from_file(path: Path, skip: set[str]) -> dict:
    """Read the file back with gguf-py and dequantize every tensor it can."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        entry = {"type": t.tensor_type.name, "dims": [int(d) for d in t.shape]}
        if t.name not in skip:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
            assert values.size == int(np.prod(t.shape)), t.name
            entry["f32_bits"] = f32_bits(values)
        out[t.name] = entry
    return out


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")) + "\n")


def smollm2_rows() -> dict | None:
    if not SMOLLM2.exists():
        print(f"note: {SMOLLM2} missing, smollm2_rows.json not regenerated", file=sys.stderr)
        return None
    reader = gguf.GGUFReader(SMOLLM2)
    by_name = {t.name: t for t in reader.tensors}
    picks = [
        ("blk.0.attn_q.weight", [0, 1, 575]),
        ("token_embd.weight", [0, 1, 49151]),
        ("blk.0.attn_norm.weight", [0]),
    ]
    out = {"file": SMOLLM2.name, "file_size": SMOLLM2.stat().st_size, "tensors": []}
    for name, rows in picks:
        t = by_name[name]
        # t.data has shape (rows, bytes per row) for quantized types, (rows, cols) else.
        data = t.data.reshape(len(t.data) if t.data.ndim > 1 else 1, -1)
        entry = {"name": name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape], "rows": {}}
        for r in rows:
            values = gguf.quants.dequantize(data[r:r + 1], t.tensor_type)
            entry["rows"][str(r)] = f32_bits(values)
        out["tensors"].append(entry)
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261101)

    tiny = OUT / "tiny.gguf"
    write_gguf(tiny, tiny_tensors(rng), alignment=None, with_metadata=True)
    write_json(OUT / "tiny.json", expected_from_file(tiny, skip={"t.iq4_nl"}))

    aligned = OUT / "aligned64.gguf"
    src = rng.standard_normal((2, 64)).astype(np.float32)
    write_gguf(
        aligned,
        [
            ("a.f32", rng.standard_normal((3, 5)).astype(np.float32), None),
            ("a.q8_0", gguf.quants.quantize(src, Q.Q8_0), Q.Q8_0),
        ],
        alignment=64,
        with_metadata=False,
    )
    write_json(OUT / "aligned64.json", expected_from_file(aligned, skip=set()))

    rows = smollm2_rows()
    if rows is not None:
        write_json(OUT / "smollm2_rows.json", rows)

    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes, gguf-py {importlib.metadata.version('gguf')})")


if __name__ == "__main__":
    main()
