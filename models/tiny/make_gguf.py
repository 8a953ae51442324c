#!/usr/bin/env python3
"""Convert each tiny HF directory to GGUF with llama.cpp's own converter (f32).

What it does
------------
Runs llama.cpp's convert_hf_to_gguf.py (not a copy of it: the script and its
conversion/ package and gguf-py, extracted from the llama-cpp-python sdist into
/work/cache/llama.cpp-convert, see models/tiny/README.md) on

    models/tiny/<family>/hf/   ->   models/tiny/<family>/<family>-f32.gguf

with `--outtype f32`, in this process, after registering our tokenizers'
pre-tokenizer hashes.

Why a registration is needed: for a byte-level BPE tokenizer the converter encodes
a fixed check text (CHK_TXT of convert_hf_to_gguf_update.py), hashes the ids and
looks the hash up in TextModel.get_vocab_base_pre, a function that
convert_hf_to_gguf_update.py generates from a list of (llama.cpp pre-tokenizer
name, tokenizer) rows. The hash depends on the merges, so a tokenizer we trained
ourselves is unknown and the converter stops ("BPE pre-tokenizer was not
recognized"). llama.cpp's documented fix is to add a row to that list and
regenerate the function; this script does the same thing at run time without
editing llama.cpp's files: for each family it computes the hash exactly as the
update script does (sha256 of str(tokenizer.encode(CHK_TXT)) with the HF
tokenizer of our directory) and wraps get_vocab_base_pre so that this hash maps to
the llama.cpp name of the regex the tokenizer really uses:

    gpt2   -> "gpt-2"      (GPT-2's ByteLevel regex)
    llama  -> "llama-bpe"  (Llama 3's Split regex, digits in groups of 1-3)
    qwen2  -> "qwen2"      (Qwen2's Split regex, single digits)
    qwen3  -> "qwen2"      (Qwen3 ships Qwen2's tokenizer; llama.cpp writes "qwen2")

Any other hash still goes to llama.cpp's own function. gemma3 needs no registration:
the converter reads its SentencePiece tokenizer.model (llama.cpp's
_set_vocab_sentencepiece), not the hash. The hashes are printed and written to
models/tiny/pre_tokenizer_hashes.json.

How to run
----------
    nice -n 10 /work/cache/venv/bin/python models/tiny/make_gguf.py [FAMILY ...] [--converter DIR]

DIR defaults to $LLAMA_CPP_CONVERT or /work/cache/llama.cpp-convert.
"""

import argparse
import ast
import json
import logging
import os
import sys
from hashlib import sha256

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
FAMILIES = ["llama", "qwen2", "qwen3", "gemma3", "gpt2"]
# family -> the llama.cpp pre-tokenizer name of the regex our tokenizer uses
PRE_NAME = {"gpt2": "gpt-2", "llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}


def check_text(converter_dir):
    """CHK_TXT exactly as convert_hf_to_gguf_update.py defines it (read, not imported:
    importing that script would start its download logic)."""
    src = open(os.path.join(converter_dir, "convert_hf_to_gguf_update.py"), encoding="utf-8").read()
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CHK_TXT" for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("CHK_TXT not found in convert_hf_to_gguf_update.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="*", default=FAMILIES)
    ap.add_argument("--converter", default=os.environ.get("LLAMA_CPP_CONVERT", "/work/cache/llama.cpp-convert"))
    args = ap.parse_args()
    conv = os.path.abspath(args.converter)
    if not os.path.isfile(os.path.join(conv, "convert_hf_to_gguf.py")):
        sys.exit(f"{conv}/convert_hf_to_gguf.py not found; see models/tiny/README.md")

    import torch
    torch.set_num_threads(1)
    # llama.cpp's converter puts its own gguf-py first on sys.path (unless NO_LOCAL_GGUF).
    sys.path.insert(0, conv)
    import convert_hf_to_gguf
    from conversion import TextModel
    from transformers import AutoTokenizer
    import gguf

    chk_txt = check_text(conv)
    original = TextModel.get_vocab_base_pre
    registered = {}  # chkhsh -> llama.cpp pre-tokenizer name

    def get_vocab_base_pre(self, tokenizer):
        chkhsh = sha256(str(tokenizer.encode(chk_txt)).encode()).hexdigest()
        if chkhsh in registered:
            logging.getLogger("make_gguf").info("registered pre-tokenizer hash %s -> %r", chkhsh, registered[chkhsh])
            return registered[chkhsh]
        return original(self, tokenizer)

    TextModel.get_vocab_base_pre = get_vocab_base_pre

    hashes_path = os.path.join(HERE, "pre_tokenizer_hashes.json")
    hashes = json.load(open(hashes_path)) if os.path.isfile(hashes_path) else {}
    for fam in args.families:
        hf_dir = os.path.join(HERE, fam, "hf")
        out = os.path.join(HERE, fam, f"{fam}-f32.gguf")
        if fam in PRE_NAME:
            tok = AutoTokenizer.from_pretrained(hf_dir)
            chkhsh = sha256(str(tok.encode(chk_txt)).encode()).hexdigest()
            try:  # is it known to llama.cpp already? (it never is for a self-trained tokenizer)
                logging.disable(logging.WARNING)
                known = original(None, tok)
            except NotImplementedError:
                known = None
            finally:
                logging.disable(logging.NOTSET)
            registered[chkhsh] = PRE_NAME[fam]
            hashes[fam] = {"chkhsh": chkhsh, "pre": PRE_NAME[fam], "known_to_llama_cpp": known}
            print(f"{fam}: chkhsh {chkhsh} -> {PRE_NAME[fam]!r} (llama.cpp's own table: {known!r})", flush=True)
        sys.argv = ["convert_hf_to_gguf.py", hf_dir, "--outtype", "f32", "--outfile", out]
        convert_hf_to_gguf.main()
        rd = gguf.GGUFReader(out)
        f = rd.fields

        def val(key):
            if key not in f:
                return None
            fld = f[key]
            v = fld.contents() if hasattr(fld, "contents") else fld.parts[fld.data[0]]
            return v

        print(f"{fam}: wrote {out} ({os.path.getsize(out)} bytes), arch {val('general.architecture')!r}, "
              f"tokenizer {val('tokenizer.ggml.model')!r} pre {val('tokenizer.ggml.pre')!r}, "
              f"add_bos {val('tokenizer.ggml.add_bos_token')}, {len(rd.tensors)} tensors "
              f"{sorted({t.tensor_type.name for t in rd.tensors})}", flush=True)

    with open(hashes_path, "w") as fh:
        json.dump(hashes, fh, indent=1, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    main()
