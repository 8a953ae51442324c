#!/usr/bin/env python3
"""Independent reference for arq's correctness tests: SmolLM2-135M-Instruct.

What it computes
----------------
Loads SmolLM2-135M-Instruct *from the same GGUF file arq converts*
(models/cache/SmolLM2-135M-Instruct.Q4_1.gguf, fetched by
models/fetch_smollm2.sh) with Hugging Face transformers on CPU. transformers
dequantizes every tensor (Q4_1 / Q8_0 / F32) to f32 and reverses llama.cpp's
Q/K row permutation, so the model below is the GGUF's exact weights run by
PyTorch's stock LlamaForCausalLM in f32. Nothing here shares code with arq,
which makes it an independent reference: if arq and this script agree, both
the GGUF decoding and the forward pass are right.

For each of a few varied texts (English prose, Python code, a factual
paragraph, a ChatML chat with literal <|im_start|>/<|im_end|> special tokens,
non-ASCII text) it tokenizes with the HF tokenizer built from the GGUF
(adding a BOS only if that tokenizer does so by itself), runs one
teacher-forced forward pass and records:
  * the token ids;
  * for every scored position i >= 1: log p(ids[i] | ids[<i]) (log_softmax in
    float64 of the f32 logits) and the argmax id of that same distribution;
  * total NLL in nats, number of scored tokens (len(ids) - 1), perplexity.
Plus: the top-5 (ids, logprobs) of the next-token distribution after
"The capital of France is", and the greedy 16-token continuation of
"Once upon a time" (computed with and without the KV cache; they must agree),
the model hyperparameters from model.config, and the tokenizer's special ids.

Output: models/fixtures/smollm2_reference.json (logprobs rounded to 6
decimals), with a "generator" field naming the transformers/torch versions
and the GGUF's sha256.

How to run
----------
    /work/cache/venv/bin/python models/reference_smollm2.py [GGUF] [--out JSON] [--numpy-check]

GGUF defaults to models/cache/SmolLM2-135M-Instruct.Q4_1.gguf, --out to
models/fixtures/smollm2_reference.json (both relative to the repo root).
Needs torch, transformers, gguf, numpy; runs offline (HF_HUB_OFFLINE=1 is
set) in about a minute on a 2-core CPU. --numpy-check adds a second,
PyTorch-free forward pass (numpy, raw GGUF tensors, llama.cpp adjacent-pair
RoPE) on one text and prints the max logprob difference (~1e-5 expected).
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # silence the GGUF de-quantization progress bar

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = os.path.join(REPO, "models", "cache", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_OUT = os.path.join(REPO, "models", "fixtures", "smollm2_reference.json")

TEXTS = {
    "prose": (
        "The old lighthouse keeper climbed the spiral staircase every evening, "
        "counting the one hundred and twelve steps as his father had done before him. "
        "At the top he trimmed the wick, polished the great lens until it gleamed, and "
        "watched the grey sea turn to ink as the sun went down. Ships no longer needed "
        "his light, the harbour master had told him, because they carried machines that "
        "knew exactly where they were. Still, he lit the lamp each night, because somewhere "
        "out there a small boat without such machines might be looking for the shore."
    ),
    "python": (
        "def fibonacci(n):\n"
        "    \"\"\"Return the first n Fibonacci numbers as a list.\"\"\"\n"
        "    if n <= 0:\n"
        "        return []\n"
        "    seq = [0, 1]\n"
        "    while len(seq) < n:\n"
        "        seq.append(seq[-1] + seq[-2])\n"
        "    return seq[:n]\n"
        "\n"
        "\n"
        "def is_prime(k):\n"
        "    if k < 2:\n"
        "        return False\n"
        "    for d in range(2, int(k ** 0.5) + 1):\n"
        "        if k % d == 0:\n"
        "            return False\n"
        "    return True\n"
        "\n"
        "\n"
        "if __name__ == \"__main__\":\n"
        "    primes = [x for x in fibonacci(20) if is_prime(x)]\n"
        "    print(primes)\n"
    ),
    "factual": (
        "Water boils at 100 degrees Celsius at sea level. The Earth orbits the Sun once "
        "every 365.25 days, which is why a leap year adds an extra day every four years. "
        "The Pacific Ocean is the largest and deepest ocean on Earth, covering more than "
        "sixty million square miles. Mount Everest, on the border between Nepal and China, "
        "is the highest mountain above sea level, at 8,849 metres. The human heart beats "
        "about one hundred thousand times a day."
    ),
    "chat": (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the difference between a list and a tuple in Python?<|im_end|>\n"
        "<|im_start|>assistant\nA list is mutable, which means you can add, remove or change its "
        "elements after it is created. A tuple is immutable: once it is created, its contents "
        "cannot be changed. Lists use square brackets, like [1, 2, 3], while tuples use "
        "parentheses, like (1, 2, 3).<|im_end|>\n"
        "<|im_start|>user\nThanks! Which one is faster?<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "non_ascii": (
        "Le café était déjà fermé quand nous sommes arrivés à Montréal. "
        "Über den Wolken muss die Freiheit wohl grenzenlos sein. "
        "El niño comió paella en la señorial plaza de España. "
        "Москва — столица России. 東京は日本の首都です。 "
        "The temperature dropped to −5 °C, and the price was 12 € (≈ £10). "
        "Emoji: 🙂🚀✨."
    ),
}

PROMPT_TOP5 = "The capital of France is"
PROMPT_GREEDY = "Once upon a time"
GREEDY_STEPS = 16


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def r6(x):
    return round(float(x), 6)


def encode(tok, text):
    # add_special_tokens=True so the tokenizer adds a BOS if (and only if) it is
    # configured to; special tokens written literally in the text
    # (<|im_start|>, <|im_end|>) are matched as single ids.
    return tok(text, add_special_tokens=True)["input_ids"]


@torch.no_grad()
def logits_for(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, use_cache=False).logits[0]  # [T, V] f32


@torch.no_grad()
def score(model, ids):
    logits = logits_for(model, ids)
    assert logits.dtype == torch.float32
    lp = torch.log_softmax(logits.double(), dim=-1)  # [T, V] f64
    tgt = torch.tensor(ids[1:], dtype=torch.long)
    tok_lp = lp[:-1].gather(1, tgt[:, None])[:, 0]  # log p(ids[i] | ids[<i]), i >= 1
    argmax = logits[:-1].argmax(dim=-1)  # prediction for position i from ids[<i]
    nll = -float(tok_lp.sum())
    n = len(ids) - 1
    return {
        "logprobs": [r6(v) for v in tok_lp.tolist()],
        "argmax": [int(v) for v in argmax.tolist()],
        "argmax_matches": int((argmax == tgt).sum()),
        "nll": round(nll, 6),
        "n_scored": n,
        "mean_nll": round(nll / n, 6),
        "perplexity": round(math.exp(nll / n), 6),
    }


@torch.no_grad()
def greedy_no_cache(model, ids, steps):
    ids = list(ids)
    out = []
    for _ in range(steps):
        nxt = int(logits_for(model, ids)[-1].argmax())
        out.append(nxt)
        ids.append(nxt)
    return out


@torch.no_grad()
def greedy_cache(model, ids, steps):
    res = model(input_ids=torch.tensor([ids]), use_cache=True)
    past = res.past_key_values
    nxt = int(res.logits[0, -1].argmax())
    out = [nxt]
    for _ in range(steps - 1):
        res = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = res.past_key_values
        nxt = int(res.logits[0, -1].argmax())
        out.append(nxt)
    return out


def numpy_check(gguf_path, cfg, ids, ref_logprobs):
    """Second, PyTorch-free forward pass straight from the raw GGUF tensors.

    Uses gguf-py's dequantizer and llama.cpp's "normal" RoPE (rotate adjacent
    pairs (2i, 2i+1) of each head) on the Q/K rows exactly as stored in the
    GGUF, i.e. without transformers' de-permutation. Agreement with the
    transformers logprobs shows both the weight decoding and the RoPE layout.
    Returns max |logprob difference| over ids[1:].
    """
    import gguf
    from gguf import dequantize

    rd = gguf.GGUFReader(gguf_path)
    W = {}
    for t in rd.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        W[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim > 1 else a.reshape(-1)
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.hidden_size // H
    eps = cfg.rms_norm_eps
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    T = len(ids)

    def rms(x, w):
        return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * w

    ang = np.arange(T)[:, None] * (theta ** (-np.arange(0, D, 2) / D))[None]
    cos, sin = np.cos(ang).astype(np.float32)[:, None], np.sin(ang).astype(np.float32)[:, None]

    def rope_adjacent(q):  # [T, heads, D]
        a, b = q[..., 0::2], q[..., 1::2]
        o = np.empty_like(q)
        o[..., 0::2] = a * cos - b * sin
        o[..., 1::2] = a * sin + b * cos
        return o

    mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)
    x = W["token_embd.weight"][ids]
    for layer in range(cfg.num_hidden_layers):
        p = f"blk.{layer}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = rope_adjacent((h @ W[p + "attn_q.weight"].T).reshape(T, H, D))
        k = rope_adjacent((h @ W[p + "attn_k.weight"].T).reshape(T, KV, D))
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, KV, D)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", s, v).reshape(T, H * D) @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g, u = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
    out_w = W.get("output.weight", W["token_embd.weight"])
    logits = (rms(x, W["output_norm.weight"]) @ out_w.T).astype(np.float64)
    lp = logits - logits.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    mine = lp[np.arange(T - 1), ids[1:]]
    return float(np.abs(mine - np.asarray(ref_logprobs)).max())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", nargs="?", default=DEFAULT_GGUF)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--numpy-check", action="store_true",
                    help="also run a PyTorch-free numpy forward pass (adjacent-pair RoPE on the "
                         "raw GGUF Q/K) on the 'prose' text and compare logprobs (~15 s)")
    args = ap.parse_args()

    t0 = time.time()
    torch.manual_seed(0)
    gguf_path = os.path.abspath(args.gguf)
    gdir, gname = os.path.split(gguf_path)

    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    model.eval()
    model.to("cpu")
    assert next(model.parameters()).dtype == torch.float32
    t_load = time.time() - t0

    cfg = model.config
    probe = tok("Hello", add_special_tokens=True)["input_ids"]
    adds_bos = tok.bos_token_id is not None and len(probe) > 0 and probe[0] == tok.bos_token_id
    special = {
        "adds_bos": bool(adds_bos),
        "bos_id": tok.bos_token_id,
        "bos_token": tok.bos_token,
        "eos_id": tok.eos_token_id,
        "eos_token": tok.eos_token,
        "unk_id": tok.unk_token_id,
        "pad_id": tok.pad_token_id,
        "im_start_id": tok.convert_tokens_to_ids("<|im_start|>"),
        "im_end_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "len_tokenizer": len(tok),
        "chat_template": getattr(tok, "chat_template", None),
    }

    texts = {}
    for name, text in TEXTS.items():
        ids = encode(tok, text)
        rec = {"text": text, "ids": ids, "n_tokens": len(ids)}
        rec.update(score(model, ids))
        texts[name] = rec

    # Top-5 of the next-token distribution after PROMPT_TOP5.
    p_ids = encode(tok, PROMPT_TOP5)
    last = logits_for(model, p_ids)[-1]
    lp = torch.log_softmax(last.double(), dim=-1)
    top = torch.topk(lp, 5)
    top5 = {
        "prompt": PROMPT_TOP5,
        "ids": p_ids,
        "top5_ids": [int(i) for i in top.indices.tolist()],
        "top5_logprobs": [r6(v) for v in top.values.tolist()],
        "top5_tokens": [tok.decode([int(i)]) for i in top.indices.tolist()],
    }

    # Greedy continuation, with and without the KV cache.
    g_ids = encode(tok, PROMPT_GREEDY)
    g_nc = greedy_no_cache(model, g_ids, GREEDY_STEPS)
    g_c = greedy_cache(model, g_ids, GREEDY_STEPS)
    if g_nc != g_c:
        print(f"WARNING: greedy differs with/without cache: {g_nc} vs {g_c}", file=sys.stderr)
    greedy = {
        "prompt": PROMPT_GREEDY,
        "ids": g_ids,
        "steps": GREEDY_STEPS,
        "continuation_ids": g_nc,
        "continuation_ids_kv_cache": g_c,
        "cache_agrees": g_nc == g_c,
        "continuation_text": tok.decode(g_nc),
        "note": "argmax at every step, no sampling, no stop at EOS",
    }

    hp = {
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
        "rope_theta": (getattr(cfg, "rope_theta", None)
                       or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")),
        "rope_parameters": getattr(cfg, "rope_parameters", None),
        "rms_norm_eps": cfg.rms_norm_eps,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "lm_head_is_embedding": model.lm_head.weight.data_ptr()
        == model.model.embed_tokens.weight.data_ptr(),
        "hidden_act": cfg.hidden_act,
    }

    out = {
        "generator": {
            "script": "models/reference_smollm2.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "dtype": "float32 weights/activations on CPU; log_softmax in float64",
            "gguf_file": gname,
            "gguf_sha256": sha256_file(gguf_path),
        },
        "conventions": {
            "logprobs[k]": "log p(ids[k+1] | ids[:k+1]) for k = 0..n_tokens-2 (position i = k+1 >= 1)",
            "argmax[k]": "argmax of the same distribution (predicts ids[k+1])",
            "nll": "-sum(logprobs), nats; perplexity = exp(nll / n_scored)",
            "rounding": "logprobs rounded to 6 decimals",
        },
        "hyperparameters": hp,
        "tokenizer": special,
        "texts": texts,
        "next_token_top5": top5,
        "greedy": greedy,
    }

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")

    # Summary.
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; "
          f"load {t_load:.1f}s, total {time.time() - t0:.1f}s")
    print(f"adds_bos={special['adds_bos']} bos={special['bos_id']} eos={special['eos_id']}")
    for name, r in texts.items():
        print(f"{name:10s} tokens={r['n_tokens']:4d} nll={r['nll']:10.4f} "
              f"ppl={r['perplexity']:8.3f} argmax_acc={r['argmax_matches']}/{r['n_scored']}")
    print("top5 after %r:" % PROMPT_TOP5,
          list(zip(top5["top5_tokens"], top5["top5_ids"], top5["top5_logprobs"])))
    print("greedy %r ->" % PROMPT_GREEDY, repr(greedy["continuation_text"]), g_nc,
          "cache_agrees=%s" % greedy["cache_agrees"])
    if args.numpy_check:
        diff = numpy_check(gguf_path, cfg, texts["prose"]["ids"], texts["prose"]["logprobs"])
        print(f"numpy check (raw GGUF, adjacent-pair RoPE) on 'prose': max |dlogprob| = {diff:.2e}")
        if diff > 1e-3:
            print("WARNING: numpy check disagrees", file=sys.stderr)
    print("wrote", args.out, os.path.getsize(args.out), "bytes")


if __name__ == "__main__":
    main()
