#!/usr/bin/env python3
"""Independent references for the tiny models of models/tiny/ (one fixture per family).

What it computes
----------------
For each family (llama, qwen2, qwen3, gemma3, gpt2) it loads the Hugging Face
directory models/tiny/<family>/hf/ with transformers' own classes, in float32
(bf16 / f16 checkpoints are upcast to f32 on load), eager attention, on CPU, and
for four texts (prose from models/tinygpt/heldout.txt, a line of Python, digits and
whitespace runs, text with the family's special tokens written literally) records

  * the ids from the directory's HF tokenizer (tokenizer(text), so a BOS appears
    only where the tokenizer adds one itself: llama and gemma3 do, the others not);
  * logprobs[k] = log p(ids[k+1] | ids[:k+1]) for k = 0..n-2 (f32 logits,
    log_softmax in float64), the argmax of the same distributions, the total NLL;
  * a 16-token greedy continuation of one prompt, computed without and with the
    KV cache (they must agree; the script fails otherwise).

Then it loads the same model and tokenizer from the GGUF that llama.cpp's converter
wrote (models/tiny/<family>/<family>-f32.gguf) through transformers' GGUF loader
(from_pretrained(dir, gguf_file=...)), scores the same ids and stores the largest
|logprob difference| against the HF directory, and whether the GGUF's tokenizer
gives the same ids. That checks llama.cpp's conversion (tensor names, Q/K row
permutation, Gemma's +1 on norm weights, vocabulary) independently of arq.

Output: models/fixtures/tiny_<family>.json (logprobs rounded to 6 decimals); the
"conventions" field of each file explains the fields.

How to run
----------
    nice -n 10 /work/cache/venv/bin/python models/tiny/reference_tiny.py [FAMILY ...]

Offline (HF_HUB_OFFLINE=1), a few seconds per family, one thread.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(REPO, "models", "fixtures")
HELDOUT = os.path.join(REPO, "models", "tinygpt", "heldout.txt")
FAMILIES = ["llama", "qwen2", "qwen3", "gemma3", "gpt2"]
MAX_TOKENS = 128  # every tiny model has 128 positions
# Where the GGUFs came from (make_gguf.py; see models/tiny/README.md).
LLAMA_CPP_CONVERTER = ("convert_hf_to_gguf.py + conversion/ + gguf-py 0.19.0 from the llama-cpp-python 0.3.36 "
                       "sdist (vendor/llama.cpp), --outtype f32")
GREEDY_PROMPT = "Once upon a time"
GREEDY_STEPS = 16


def prose_text():
    # The first held-out document's opening, cut at a sentence end (never trained on).
    doc = open(HELDOUT, encoding="utf-8").read().split("\n\n\n")[0].strip()
    cut = doc[:240]
    return cut[: cut.rfind(".") + 1]


TEXTS = {
    "code": "for i in range(10):\n    total += values[i] * 2  # double it\n",
    "digits_whitespace": "Call 555-0199 at 10:45,  then   pay $1,234.56\t(or 12345678).\n\n   Done.  ",
}

SPECIAL_TEXT = {
    # (no literal <|begin_of_text|>: the tokenizer adds it, as Llama 3's does)
    "llama": "Once upon a time, there was a king.<|eot_id|>The end.<|end_of_text|>",
    "qwen2": "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\nOnce upon a time<|im_end|><|endoftext|>",
    "qwen3": "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\nOnce upon a time<|im_end|><|endoftext|>",
    "gemma3": "<start_of_turn>user\nTell me a story.<end_of_turn>\n<start_of_turn>model\nOnce upon a time<end_of_turn>\n<eos>",
    "gpt2": "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\nOnce upon a time<|im_end|><|endoftext|>",
}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def r6(x):
    return round(float(x), 6)


@torch.no_grad()
def logprobs_of(model, ids):
    logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
    assert logits.dtype == torch.float32
    lp = torch.log_softmax(logits.double(), dim=-1)
    tgt = torch.tensor(ids[1:])
    return lp[:-1].gather(1, tgt[:, None])[:, 0], logits[:-1].argmax(-1)


def score(model, ids):
    tok_lp, argmax = logprobs_of(model, ids)
    nll = -float(tok_lp.sum())
    n = len(ids) - 1
    return {
        "logprobs": [r6(v) for v in tok_lp.tolist()],
        "argmax": [int(v) for v in argmax.tolist()],
        "argmax_matches": int((argmax == torch.tensor(ids[1:])).sum()),
        "nll": round(nll, 6),
        "n_scored": n,
        "mean_nll": round(nll / n, 6),
    }, tok_lp


@torch.no_grad()
def greedy(model, ids, steps, use_cache):
    if not use_cache:
        ids, out = list(ids), []
        for _ in range(steps):
            nxt = int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
        return out
    res = model(input_ids=torch.tensor([ids]), use_cache=True)
    out = [int(res.logits[0, -1].argmax())]
    for _ in range(steps - 1):
        res = model(input_ids=torch.tensor([[out[-1]]]), past_key_values=res.past_key_values, use_cache=True)
        out.append(int(res.logits[0, -1].argmax()))
    return out


def config_summary(cfg, model):
    keys = ["model_type", "architectures", "vocab_size", "hidden_size", "n_embd", "intermediate_size", "n_inner",
            "num_hidden_layers", "n_layer", "num_attention_heads", "n_head", "num_key_value_heads", "head_dim",
            "max_position_embeddings", "n_positions", "rms_norm_eps", "layer_norm_epsilon", "rope_parameters",
            "rope_theta", "sliding_window", "layer_types", "query_pre_attn_scalar", "final_logit_softcapping",
            "attn_logit_softcapping", "hidden_act", "hidden_activation", "activation_function", "attention_bias",
            "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"]
    d = cfg.to_dict()
    out = {k: d[k] for k in keys if k in d and d[k] is not None}
    lm = model.get_output_embeddings().weight
    out["lm_head_is_embedding"] = lm.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return out


def tokenizer_info(tok, family):
    probe = tok("Hello")["input_ids"]
    adds_bos = tok.bos_token_id is not None and probe[0] == tok.bos_token_id
    specials = {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens}
    for t in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>",
              "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<unk>"]:
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id or t == tok.unk_token:
            specials[t] = i
    return {
        "adds_bos": bool(adds_bos),
        "bos_id": tok.bos_token_id, "bos_token": tok.bos_token,
        "eos_id": tok.eos_token_id, "eos_token": tok.eos_token,
        "pad_id": tok.pad_token_id, "unk_id": tok.unk_token_id,
        "len_tokenizer": len(tok),
        "special_ids": dict(sorted(specials.items(), key=lambda kv: kv[1])),
        "kind": "SentencePiece BPE, byte_fallback (tokenizer.model + tokenizer.json)" if family == "gemma3"
        else "byte-level BPE (tokenizer.json)",
        "chat_template": getattr(tok, "chat_template", None),
    }


# transformers' GGUF loader does not carry everything these files need; the fixes
# below change only config values the GGUF itself states (or llama.cpp implies), never
# the tensors, and are recorded in the fixture next to the unfixed attempt.
GGUF_FIXES = {
    "qwen3": "transformers' GGUF_CONFIG_MAPPING['qwen3'] lacks attention.key_length -> head_dim (its qwen3_moe "
             "entry has it), so head_dim falls back to hidden/heads = 16 and the q/k/v shapes mismatch; fix: add "
             "that mapping entry",
    "gemma3": "the GGUF has no query_pre_attn_scalar, so transformers uses Gemma3TextConfig's default 256; "
              "llama.cpp scales gemma3 attention by 1/sqrt(attention.key_length) (all sizes but 27B); fix: "
              "query_pre_attn_scalar = attention.key_length (32)",
    "gpt2": "transformers' GGUF_CONFIG_MAPPING['gpt2'] maps context_length to n_ctx, but GPT2Config sizes the "
            "position table by n_positions (default 1024), so a GGUF with another context length fails to load "
            "(size mismatch of wpe); fix: n_positions = gpt2.context_length",
}


def load_gguf(gdir, gname, fix):
    kw = {}
    if fix == "qwen3":
        from transformers.integrations import ggml
        ggml.GGUF_CONFIG_MAPPING["qwen3"]["attention.key_length"] = "head_dim"
    if fix == "gemma3":
        import gguf
        rd = gguf.GGUFReader(os.path.join(gdir, gname))
        kw["query_pre_attn_scalar"] = int(rd.fields["gemma3.attention.key_length"].contents())
    if fix == "gpt2":
        import gguf
        rd = gguf.GGUFReader(os.path.join(gdir, gname))
        kw["n_positions"] = int(rd.fields["gpt2.context_length"].contents())
    gtok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    gmodel = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32,
                                                  attn_implementation="eager", **kw).eval()
    return gtok, gmodel


def compare(gtok, gmodel, texts):
    max_diff, ids_same, per_text = 0.0, {}, {}
    for name, rec in texts.items():
        ids_same[name] = gtok(rec["text"])["input_ids"] == rec["ids"]
        lp, _ = logprobs_of(gmodel, rec["ids"])
        d = float((lp - torch.tensor(rec["_lp"])).abs().max())
        per_text[name] = float(f"{d:.3e}")
        max_diff = max(max_diff, d)
    return {"model_class": type(gmodel).__name__,
            "max_abs_logprob_diff_vs_hf_dir": float(f"{max_diff:.3e}"),
            "max_abs_logprob_diff_per_text": per_text,
            "gguf_tokenizer_ids_equal_hf": ids_same}


def gguf_check(family, gguf_path, texts):
    """Load the llama.cpp-converted GGUF through transformers and compare."""
    gdir, gname = os.path.split(gguf_path)
    res = {"gguf_file": gname}
    try:
        res["as_loaded"] = {"loaded": True, **compare(*load_gguf(gdir, gname, None), texts)}
    except Exception as e:  # noqa: BLE001 - record why; the HF-dir reference still stands
        res["as_loaded"] = {"loaded": False, "error": f"{type(e).__name__}: {e}"[:400]}
    final = res["as_loaded"]
    if family in GGUF_FIXES:
        try:
            res["with_fix"] = {"fix": GGUF_FIXES[family], "loaded": True,
                               **compare(*load_gguf(gdir, gname, family), texts)}
        except Exception as e:  # noqa: BLE001
            res["with_fix"] = {"fix": GGUF_FIXES[family], "loaded": False,
                               "error": f"{type(e).__name__}: {e}"[:400]}
        final = res["with_fix"]
    res["loaded"] = final["loaded"]
    if final["loaded"]:
        res["max_abs_logprob_diff_vs_hf_dir"] = final["max_abs_logprob_diff_vs_hf_dir"]
        res["gguf_tokenizer_ids_equal_hf"] = final["gguf_tokenizer_ids_equal_hf"]
    else:
        res["error"] = final["error"]
    return res


def run_family(family):
    hf_dir = os.path.join(HERE, family, "hf")
    gguf_path = os.path.join(HERE, family, f"{family}-f32.gguf")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    saved_cfg = json.load(open(os.path.join(hf_dir, "config.json")))

    texts = {"prose": prose_text(), **TEXTS, "special_tokens": SPECIAL_TEXT[family]}
    recs = {}
    for name, text in texts.items():
        ids = tok(text)["input_ids"]
        assert len(ids) <= MAX_TOKENS, (family, name, len(ids))
        rec = {"text": text, "ids": ids, "n_tokens": len(ids)}
        s, lp = score(model, ids)
        rec.update(s)
        rec["_lp"] = lp.tolist()
        recs[name] = rec
    if family == "gemma3":
        sw = model.config.sliding_window
        assert recs["prose"]["n_tokens"] > 2 * sw, "gemma3 needs a text longer than 2 x sliding_window"

    g_ids = tok(GREEDY_PROMPT)["input_ids"]
    g_nc = greedy(model, g_ids, GREEDY_STEPS, use_cache=False)
    g_c = greedy(model, g_ids, GREEDY_STEPS, use_cache=True)
    if g_nc != g_c:
        sys.exit(f"{family}: greedy differs with/without KV cache: {g_nc} vs {g_c}")

    gg = gguf_check(family, gguf_path, recs) if os.path.isfile(gguf_path) else {"loaded": False,
                                                                               "error": "no GGUF file"}
    numpy_check = None
    if family == "gemma3" and os.path.isfile(gguf_path):
        # llama.cpp's gemma3 semantics on the raw GGUF, no transformers (the numpy pass of
        # models/reference_gemma3.py): checks the converted file the way arq reads it,
        # sliding window included (prose is > 2 x window tokens).
        sys.path.insert(0, os.path.join(REPO, "models"))
        from reference_gemma3 import numpy_gemma3_logprobs
        per = {n: float(np.abs(numpy_gemma3_logprobs(gguf_path, r["ids"]) - np.asarray(r["_lp"])).max())
               for n, r in recs.items()}
        numpy_check = {
            "max_abs_logprob_diff_vs_hf_dir": float(f"{max(per.values()):.3e}"),
            "per_text": {n: float(f"{d:.3e}") for n, d in per.items()},
            "note": "numpy_gemma3_logprobs of models/reference_gemma3.py: raw GGUF tensors, llama.cpp's gemma3 "
                    "semantics (stored norm weights as is, NEOX RoPE, rope.freq_base / freq_base_swa, il % 6 < 5 "
                    "sliding, scale 1/sqrt(key_length)), no transformers",
        }
    for rec in recs.values():
        del rec["_lp"]

    files = {}
    for root in (hf_dir, os.path.dirname(gguf_path)):
        for n in sorted(os.listdir(root)):
            p = os.path.join(root, n)
            if os.path.isfile(p) and (root == hf_dir or n.endswith(".gguf")):
                rel = os.path.relpath(p, REPO)
                files[rel] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}

    out = {
        "generator": {
            "script": "models/tiny/reference_tiny.py",
            "models_made_by": "models/tiny/make_tiny.py (HF dir), models/tiny/make_gguf.py (GGUF, llama.cpp's "
                              "convert_hf_to_gguf.py --outtype f32)",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "sentencepiece": __import__("sentencepiece").__version__,
            "gguf_py": __import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else None,
            "python": platform.python_version(),
            "llama_cpp_converter": LLAMA_CPP_CONVERTER,
            "dtype": "float32 weights/activations on CPU (checkpoint dtype upcast on load), eager attention; "
                     "log_softmax in float64",
        },
        "conventions": {
            "ids": "tokenizer(text)['input_ids'] of the HF directory's tokenizer (add_special_tokens=True: BOS only "
                   "if the tokenizer adds it itself, see tokenizer.adds_bos); special tokens written in the text "
                   "are single ids",
            "logprobs[k]": "log p(ids[k+1] | ids[:k+1]) for k = 0..n_tokens-2",
            "argmax[k]": "argmax of the same distribution (predicts ids[k+1])",
            "nll": "-sum(logprobs), nats; mean_nll = nll / n_scored",
            "greedy": "argmax at every step after the prompt ids, no sampling, no stop at EOS; computed without "
                      "and with the KV cache (equal)",
            "gguf_check": "the GGUF written by llama.cpp's converter, loaded by transformers' GGUF loader, scored on "
                          "the same ids; max |logprob difference| against the HF directory. as_loaded: stock "
                          "transformers; with_fix (qwen3, gemma3, gpt2): after the named config fix; the top-level "
                          "values are from with_fix where present",
            "sliding_window": "gemma3 only: a sliding layer at position i attends to j with i - sliding_window < j <= i "
                              "(transformers' definition; layer_types gives which layers slide)",
            "rounding": "logprobs rounded to 6 decimals",
        },
        "family": family,
        "hf_dir": os.path.relpath(hf_dir, REPO),
        "gguf": os.path.relpath(gguf_path, REPO),
        "checkpoint_dtype": saved_cfg.get("dtype", saved_cfg.get("torch_dtype")),
        "sharded": os.path.isfile(os.path.join(hf_dir, "model.safetensors.index.json")),
        "files": files,
        "config": config_summary(model.config, model),
        "tokenizer": tokenizer_info(tok, family),
        "texts": recs,
        "greedy": {"prompt": GREEDY_PROMPT, "ids": g_ids, "steps": GREEDY_STEPS, "continuation_ids": g_nc,
                   "continuation_ids_kv_cache": g_c, "cache_agrees": g_nc == g_c,
                   "continuation_text": tok.decode(g_nc)},
        "gguf_check": gg,
    }
    if numpy_check:
        out["gguf_numpy_check"] = numpy_check
    stats = os.path.join(HERE, family, "train_stats.json")
    if os.path.isfile(stats):
        out["training"] = json.load(open(stats))
    os.makedirs(FIXTURES, exist_ok=True)
    path = os.path.join(FIXTURES, f"tiny_{family}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{family}: adds_bos={out['tokenizer']['adds_bos']} " + " ".join(
        f"{n}:{r['n_tokens']}tok/nll{r['mean_nll']:.3f}/acc{r['argmax_matches']}/{r['n_scored']}" for n, r in recs.items()))
    print(f"  greedy {tok.decode(g_nc)!r}; gguf: " + (
        f"max|dlp|={gg['max_abs_logprob_diff_vs_hf_dir']:.2e} ids_equal={gg['gguf_tokenizer_ids_equal_hf']}"
        if gg.get("loaded") else f"NOT LOADED: {gg.get('error')}"))
    if numpy_check:
        print(f"  numpy (llama.cpp semantics) on the GGUF: max|dlp|={numpy_check['max_abs_logprob_diff_vs_hf_dir']:.2e}")
    print(f"  wrote {path} ({os.path.getsize(path)} bytes)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="*", default=FAMILIES)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for fam in args.families:
        run_family(fam)


if __name__ == "__main__":
    main()
