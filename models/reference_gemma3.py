#!/usr/bin/env python3
"""Independent reference for arq's correctness tests: Gemma 3 270M (GGUF, Q4_K_M).

What it computes
----------------
Loads Gemma 3 270M *from the same GGUF file arq converts*
(models/cache/gemma-3-270m-q4_k_m.gguf, fetched by models/fetch_gemma3.sh) with
Hugging Face transformers on CPU, in float32, with eager attention. transformers
dequantizes every tensor (Q4_K / Q5_0 / Q6_K / Q8_0 / F32) to f32 and undoes
llama.cpp's +1 on Gemma's RMSNorm weights (llama.cpp stores 1 + w, transformers'
Gemma3RMSNorm computes x * (1 + w)); the script measures that shift on the raw
tensors and records it. The model is then PyTorch's stock Gemma3ForCausalLM
(text-only), which shares no code with arq.

For each of a few texts (English prose of ~150 tokens, Python code, a factual
paragraph, a Gemma chat with literal <start_of_turn>/<end_of_turn>, non-ASCII text,
and a text of more than 600 tokens so that the 512-token sliding window of five
layers in six matters) it tokenizes with the tokenizer transformers builds from the
same GGUF (which adds <bos> by itself), runs one teacher-forced forward pass and
records:
  * the token ids;
  * logprobs[k] = log p(ids[k+1] | ids[:k+1]) (log_softmax in float64 of the f32
    logits) and the argmax of the same distribution;
  * total NLL in nats, number of scored tokens, perplexity.
For the long text it also records how much the logprobs change if the window is
switched off (every layer global): proof that the window is exercised.
Plus: the top-5 next tokens after "The capital of France is", the greedy 16-token
continuation of "Once upon a time" (with and without the KV cache; they must
agree), the model config (hidden, heads, head_dim, KV heads, sliding_window,
layer_types, both rope thetas, query_pre_attn_scalar, softcapping, embedding
scale) and the GGUF's own metadata as arq reads it.

Output: models/fixtures/gemma3_reference.json (logprobs rounded to 6 decimals),
with a "generator" field naming the versions and the GGUF's sha256.

How to run
----------
    nice -n 10 /work/cache/venv/bin/python models/reference_gemma3.py [GGUF] [--out JSON] [--numpy-check]

GGUF defaults to models/cache/gemma-3-270m-q4_k_m.gguf ($ARQ_MODEL_CACHE instead of
models/cache/ if set, as for fetch_gemma3.sh), --out to
models/fixtures/gemma3_reference.json (both relative to the repo root). Needs torch,
transformers, accelerate, gguf, numpy; runs offline (HF_HUB_OFFLINE=1 is set), one
thread, about ten minutes on a busy 2-core CPU (loading dequantizes 268M weights).
--numpy-check adds a PyTorch-free numpy forward pass with llama.cpp's gemma3
semantics on the raw GGUF tensors for the 'factual' text (numpy_gemma3_logprobs,
also used by models/tiny/reference_tiny.py on the tiny gemma3) and stores its
max logprob difference in "numpy_check".
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
transformers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GGUF = os.path.join(os.environ.get("ARQ_MODEL_CACHE", os.path.join(REPO, "models", "cache")),
                            "gemma-3-270m-q4_k_m.gguf")
DEFAULT_OUT = os.path.join(REPO, "models", "fixtures", "gemma3_reference.json")

LONG_TEXT = (
    "The town of Harrowgate sits where two rivers meet, and for most of its history the rivers decided "
    "everything. They decided where the mill would stand, where the bridge would be built, and which families "
    "would grow rich on the trade that passed beneath it. In spring the water rose and covered the low meadows, "
    "leaving behind a fine grey silt that made the soil the best for thirty miles around. In late summer it "
    "dropped so low that children could walk across the stones at the ford without wetting their knees.\n\n"
    "The first bridge was made of timber. It lasted forty years before a winter flood carried it away, along "
    "with the toll keeper's hut and, the story goes, the toll keeper's goat. The second bridge was built of "
    "stone by a mason from the coast who had never seen a river in flood. He made the arches too narrow, and "
    "every spring the water piled up behind them until the whole town could hear it roaring at night. People "
    "learned to sleep through the noise. Visitors never did.\n\n"
    "When the railway came, it did not cross the rivers at all. The engineers laid the line along the eastern "
    "bank and built a small station with a red roof and a clock that was always four minutes slow. Trade moved "
    "from the bridge to the station, and the families who had grown rich on tolls found that their money was "
    "worth less every year. Some of them sold their houses by the water and moved to the city. Others opened "
    "shops near the station and did rather well.\n\n"
    "The mill kept working longer than anyone expected. It ground wheat, then barley, then, for a few strange "
    "years during the war, acorns, which the miller insisted made a perfectly good flour if you were hungry "
    "enough. After the war it ground nothing at all. The wheel was left to turn in the current, and moss grew "
    "over the paddles until they looked like the green backs of sleeping animals.\n\n"
    "Schoolteachers in Harrowgate liked to say that the town was a lesson in patience. Nothing there happened "
    "quickly, and nothing that mattered happened by accident. The rivers cut their banks a finger's width each "
    "year; the hills behind the church lost a little soil with every storm; the oak in the market square, which "
    "had been planted to mark a coronation, took two hundred years to become the tree that everyone now "
    "describes as ancient. Children who grew up there learned to measure change in generations rather than in "
    "seasons, and many of them found the rest of the world exhausting when they finally left.\n\n"
    "In the end it was not the rivers or the railway that changed the town most, but a single road. It was "
    "built to carry lorries from the quarry in the hills to the motorway in the south, and it ran straight "
    "through the old market square. The council argued about it for eleven years. The oak was saved, after a "
    "petition signed by nearly every household, and the road was bent around it in a curve that drivers still "
    "complain about. The quarry closed a decade later, but the road stayed, and with it came the cafes, the "
    "petrol station and the tourists who wanted to see a town where nothing had happened for a very long time.\n\n"
    "Today the mill is a museum. The wheel has been cleaned and repaired, and on Sundays a volunteer lets "
    "the water through so that visitors can watch it turn. The toll keeper's goat appears on the town's "
    "coat of arms, standing on a broken plank above a wavy blue line. Most people who buy the postcards assume "
    "it is a symbol of stubbornness. The older residents, who know the story, say it is a symbol of bad luck, "
    "and that is why they keep it: a town that remembers its bad luck, they argue, is less likely to repeat it."
)

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
        "<start_of_turn>user\nWhat is the difference between a list and a tuple in Python?<end_of_turn>\n"
        "<start_of_turn>model\nA list is mutable, which means you can add, remove or change its "
        "elements after it is created. A tuple is immutable: once it is created, its contents "
        "cannot be changed. Lists use square brackets, like [1, 2, 3], while tuples use "
        "parentheses, like (1, 2, 3).<end_of_turn>\n"
        "<start_of_turn>user\nThanks! Which one is faster?<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "non_ascii": (
        "Le café était déjà fermé quand nous sommes arrivés à Montréal. "
        "Über den Wolken muss die Freiheit wohl grenzenlos sein. "
        "El niño comió paella en la señorial plaza de España. "
        "Москва — столица России. 東京は日本の首都です。 "
        "The temperature dropped to −5 °C, and the price was 12 € (≈ £10). "
        "Emoji: 🙂🚀✨."
    ),
    "long": LONG_TEXT,
}
LONG_MIN_TOKENS = 600

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
    # add_special_tokens=True: the GGUF tokenizer adds <bos> by itself
    # (tokenizer.ggml.add_bos_token = true); <start_of_turn>/<end_of_turn> written in
    # the text are matched as single ids.
    return tok(text, add_special_tokens=True)["input_ids"]


@torch.no_grad()
def logits_for(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, use_cache=False).logits[0]  # [T, V] f32


@torch.no_grad()
def token_logprobs(model, ids):
    logits = logits_for(model, ids)
    assert logits.dtype == torch.float32
    tgt = torch.tensor(ids[1:], dtype=torch.long)
    lp = torch.log_softmax(logits[:-1].double(), dim=-1)  # [T-1, V] f64
    return lp.gather(1, tgt[:, None])[:, 0], logits[:-1].argmax(dim=-1)


def score(model, ids):
    tok_lp, argmax = token_logprobs(model, ids)
    tgt = torch.tensor(ids[1:], dtype=torch.long)
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
    }, tok_lp


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


def gguf_metadata(path):
    """The GGUF's own key/values (what arq reads), without the vocabulary arrays,
    and the raw norm weights for the shift check."""
    import gguf

    rd = gguf.GGUFReader(path)
    meta = {}
    for k, f in rd.fields.items():
        if k.startswith("GGUF.") or k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                          "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
            continue
        v = f.contents()
        meta[k] = round(v, 9) if isinstance(v, float) else v
    types = {}
    for t in rd.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    raw_norms = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in rd.tensors
                 if t.name.endswith("norm.weight") and t.tensor_type.name == "F32"}
    return meta, types, len(rd.tensors), raw_norms


def norm_shift(model, raw_norms):
    """raw GGUF norm weight minus the weight transformers loaded, over every norm."""
    pairs = [("output_norm.weight", model.model.norm.weight)]
    for i, layer in enumerate(model.model.layers):
        p = f"blk.{i}."
        pairs += [(p + "attn_norm.weight", layer.input_layernorm.weight),
                  (p + "post_attention_norm.weight", layer.post_attention_layernorm.weight),
                  (p + "ffn_norm.weight", layer.pre_feedforward_layernorm.weight),
                  (p + "post_ffw_norm.weight", layer.post_feedforward_layernorm.weight),
                  (p + "attn_q_norm.weight", layer.self_attn.q_norm.weight),
                  (p + "attn_k_norm.weight", layer.self_attn.k_norm.weight)]
    diffs = np.concatenate([raw_norms[n] - w.detach().float().numpy() for n, w in pairs])
    return {
        "norm_tensors_compared": len(pairs),
        "mean_raw_minus_loaded": round(float(diffs.mean()), 7),
        "max_abs_dev_from_1": float(f"{float(np.abs(diffs - 1).max()):.3e}"),
        "shifted_by_plus_1_in_gguf": bool(np.abs(diffs - 1).max() < 1e-5),
        "note": "llama.cpp's converter stores 1 + w for every Gemma 3 RMSNorm weight (its norm computes x * w); "
                "transformers' GGUF loader subtracts 1 again because Gemma3RMSNorm computes x * (1 + w). "
                "arq reading the GGUF must use the stored weight as is (x * w_gguf).",
    }


def numpy_gemma3_logprobs(gguf_path, ids):
    """A second, PyTorch-free forward pass straight from the raw GGUF, with llama.cpp's
    gemma3 semantics rather than transformers': every hyperparameter from the GGUF's
    metadata, norm weights used as stored (x * w, the +1 already in them), NEOX RoPE
    (halves of each head) on Q/K as stored, rope.freq_base for the full layers and
    rope.freq_base_swa (10000 when absent) for the sliding ones, layers with
    il % 6 < 5 sliding (llama.cpp's fixed gemma3 pattern), a sliding layer masking
    keys with i - j >= attention.sliding_window, attention scale
    1/sqrt(attention.key_length), embeddings scaled by sqrt(embedding_length), tied
    output unless output.weight exists, final softcapping if the key exists.
    Returns log p(ids[k+1] | ids[:k+1]) for k = 0..len(ids)-2 (float64)."""
    import gguf
    from gguf import dequantize

    rd = gguf.GGUFReader(gguf_path)

    def meta(key, default=None):
        return rd.fields[key].contents() if key in rd.fields else default

    assert meta("general.architecture") == "gemma3"
    n_embd, n_layer = meta("gemma3.embedding_length"), meta("gemma3.block_count")
    H, KV, D = meta("gemma3.attention.head_count"), meta("gemma3.attention.head_count_kv"), \
        meta("gemma3.attention.key_length")
    eps = meta("gemma3.attention.layer_norm_rms_epsilon")
    theta_full, theta_swa = meta("gemma3.rope.freq_base"), meta("gemma3.rope.freq_base_swa", 10000.0)
    n_swa, softcap = meta("gemma3.attention.sliding_window"), meta("gemma3.final_logit_softcapping")
    W = {}
    for t in rd.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        W[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if len(t.shape) > 1 else a.reshape(-1)
    T = len(ids)

    def rms(x, w):
        x64 = x.astype(np.float64)
        return (x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps)).astype(np.float32) * w

    def rope_neox(q, theta):  # q [T, heads, D]: rotate (i, i + D/2) pairs
        half = D // 2
        ang = np.arange(T)[:, None] * (theta ** (-np.arange(half) * 2.0 / D))[None]
        cos, sin = np.cos(ang).astype(np.float32)[:, None], np.sin(ang).astype(np.float32)[:, None]
        a, b = q[..., :half], q[..., half:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x ** 3)))

    i_idx, j_idx = np.arange(T)[:, None], np.arange(T)[None]
    causal = np.where(j_idx > i_idx, -np.inf, 0).astype(np.float32)
    window = np.where((j_idx > i_idx) | (i_idx - j_idx >= n_swa), -np.inf, 0).astype(np.float32)
    x = W["token_embd.weight"][ids] * np.float32(math.sqrt(n_embd))
    for il in range(n_layer):
        p = f"blk.{il}."
        swa = il % 6 < 5
        h = rms(x, W[p + "attn_norm.weight"])
        q = rms((h @ W[p + "attn_q.weight"].T).reshape(T, H, D), W[p + "attn_q_norm.weight"])
        k = rms((h @ W[p + "attn_k.weight"].T).reshape(T, KV, D), W[p + "attn_k_norm.weight"])
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, KV, D)
        th = theta_swa if swa else theta_full
        q, k = rope_neox(q, th), rope_neox(k, th)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.float32(math.sqrt(D)) + (window if swa else causal)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", s, v).reshape(T, H * D) @ W[p + "attn_output.weight"].T
        x = x + rms(o, W[p + "post_attention_norm.weight"])
        h = rms(x, W[p + "ffn_norm.weight"])
        g = gelu_tanh(h @ W[p + "ffn_gate.weight"].T) * (h @ W[p + "ffn_up.weight"].T)
        x = x + rms(g @ W[p + "ffn_down.weight"].T, W[p + "post_ffw_norm.weight"])
    out_w = W.get("output.weight", W["token_embd.weight"])
    logits = (rms(x, W["output_norm.weight"]) @ out_w.T).astype(np.float64)
    if softcap:
        logits = np.tanh(logits / softcap) * softcap
    lp = logits - logits.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    return lp[np.arange(T - 1), ids[1:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", nargs="?", default=DEFAULT_GGUF)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--numpy-check", action="store_true",
                    help="also run a PyTorch-free numpy forward pass with llama.cpp's gemma3 semantics on the raw "
                         "GGUF (numpy_gemma3_logprobs) on the 'factual' text and store its max logprob difference")
    args = ap.parse_args()

    torch.set_num_threads(1)
    t0 = time.time()
    torch.manual_seed(0)
    gguf_path = os.path.abspath(args.gguf)
    if not os.path.isfile(gguf_path):
        sys.exit(f"{gguf_path} not found; run models/fetch_gemma3.sh first")
    gdir, gname = os.path.split(gguf_path)

    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    t_load = time.time() - t0

    cfg = model.config
    meta, tensor_types, n_tensors, raw_norms = gguf_metadata(gguf_path)
    shift = norm_shift(model, raw_norms)
    del raw_norms

    probe = encode(tok, "Hello")
    adds_bos = tok.bos_token_id is not None and probe[0] == tok.bos_token_id
    special = {
        "adds_bos": bool(adds_bos),
        "bos_id": tok.bos_token_id, "bos_token": tok.bos_token,
        "eos_id": tok.eos_token_id, "eos_token": tok.eos_token,
        "unk_id": tok.unk_token_id, "pad_id": tok.pad_token_id,
        "start_of_turn_id": tok.convert_tokens_to_ids("<start_of_turn>"),
        "end_of_turn_id": tok.convert_tokens_to_ids("<end_of_turn>"),
        "len_tokenizer": len(tok),
        "tokenizer_class": type(tok).__name__,
        "chat_template": getattr(tok, "chat_template", None),
    }

    texts = {}
    for name, text in TEXTS.items():
        ids = encode(tok, text)
        rec = {"text": text, "ids": ids, "n_tokens": len(ids)}
        s, lp = score(model, ids)
        rec.update(s)
        if name == "long":
            assert len(ids) > LONG_MIN_TOKENS, len(ids)
            # Same ids with the window switched off: every layer global. The mask is
            # built from config.sliding_window at call time.
            sw = cfg.sliding_window
            cfg.sliding_window = 1 << 20
            lp_global, _ = token_logprobs(model, ids)
            cfg.sliding_window = sw
            d = (lp_global - lp).abs()
            rec["no_window_comparison"] = {
                "note": "logprobs recomputed with sliding_window disabled (all layers global); logprobs[k] for "
                        "k >= sliding_window (query position k sees k+1 > window keys) must differ, earlier ones not",
                "max_abs_diff_positions_below_window": float(f"{float(d[:sw].max()):.3e}"),
                "max_abs_diff_positions_from_window": float(f"{float(d[sw:].max()):.3e}"),
                "nll_no_window": round(-float(lp_global.sum()), 6),
            }
        texts[name] = rec

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

    rp = cfg.rope_parameters
    hp = {
        "model_type": cfg.model_type,
        "model_class": type(model).__name__,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "heads_x_head_dim": cfg.num_attention_heads * cfg.head_dim,
        "sliding_window": cfg.sliding_window,
        "layer_types": cfg.layer_types,
        "full_attention_layers": [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"],
        "rope_theta_full": rp["full_attention"]["rope_theta"],
        "rope_theta_sliding": rp["sliding_attention"]["rope_theta"],
        "rope_parameters": rp,
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
        "attention_scale": cfg.query_pre_attn_scalar ** -0.5,
        "final_logit_softcapping": cfg.final_logit_softcapping,
        "attn_logit_softcapping": cfg.attn_logit_softcapping,
        "rms_norm_eps": cfg.rms_norm_eps,
        "hidden_activation": cfg.hidden_activation,
        "embedding_scale": "sqrt(hidden_size) = %.6f, applied to the embeddings (in the embedding dtype)"
                           % math.sqrt(cfg.hidden_size),
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "lm_head_is_embedding": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        "rmsnorm": "x / sqrt(mean(x^2) + eps) * (1 + w) with w as transformers holds it",
        "norm_weights": shift,
    }

    out = {
        "generator": {
            "script": "models/reference_gemma3.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "gguf_py": __import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else None,
            "python": platform.python_version(),
            "dtype": "float32 weights/activations on CPU (GGUF dequantized), eager attention; log_softmax in float64",
            "gguf_file": gname,
            "gguf_sha256": sha256_file(gguf_path),
        },
        "conventions": {
            "ids": "tokenizer from the same GGUF, add_special_tokens=True (it adds <bos>, so ids[0] = bos_id)",
            "logprobs[k]": "log p(ids[k+1] | ids[:k+1]) for k = 0..n_tokens-2",
            "argmax[k]": "argmax of the same distribution (predicts ids[k+1])",
            "nll": "-sum(logprobs), nats; perplexity = exp(nll / n_scored)",
            "sliding_window": "a sliding layer at position i attends to j with i - sliding_window < j <= i "
                              "(transformers' definition; llama.cpp's is the same)",
            "rounding": "logprobs rounded to 6 decimals",
        },
        "hyperparameters": hp,
        "gguf_metadata": meta,
        "gguf_tensor_types": tensor_types,
        "gguf_tensor_count": n_tensors,
        "tokenizer": special,
        "texts": texts,
        "next_token_top5": top5,
        "greedy": greedy,
    }

    if args.numpy_check:
        del model
        ids = texts["factual"]["ids"]
        mine = numpy_gemma3_logprobs(gguf_path, ids)
        diff = float(np.abs(mine - np.asarray(texts["factual"]["logprobs"])).max())
        out["numpy_check"] = {
            "text": "factual",
            "max_abs_logprob_diff": float(f"{diff:.3e}"),
            "note": "numpy_gemma3_logprobs: raw GGUF tensors with llama.cpp's gemma3 semantics (stored norm "
                    "weights as is, NEOX RoPE, metadata hyperparameters), no transformers; vs the rounded "
                    "logprobs above",
        }

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")

    print(f"transformers {transformers.__version__}, torch {torch.__version__}; "
          f"load {t_load:.1f}s, total {time.time() - t0:.1f}s")
    print(f"adds_bos={special['adds_bos']} bos={special['bos_id']} eos={special['eos_id']} "
          f"norm shift={shift['mean_raw_minus_loaded']} tensor types={tensor_types}")
    for name, r in texts.items():
        print(f"{name:10s} tokens={r['n_tokens']:4d} nll={r['nll']:10.4f} "
              f"ppl={r['perplexity']:8.3f} argmax_acc={r['argmax_matches']}/{r['n_scored']}")
    print("long text, window off:", texts["long"]["no_window_comparison"])
    print("top5 after %r:" % PROMPT_TOP5,
          list(zip(top5["top5_tokens"], top5["top5_ids"], top5["top5_logprobs"])))
    print("greedy %r ->" % PROMPT_GREEDY, repr(greedy["continuation_text"]), g_nc,
          "cache_agrees=%s" % greedy["cache_agrees"])
    if args.numpy_check:
        print("numpy check (raw GGUF, llama.cpp semantics) on 'factual': max |dlogprob| =",
              out["numpy_check"]["max_abs_logprob_diff"])
    print("wrote", args.out, os.path.getsize(args.out), "bytes")


if __name__ == "__main__":
    main()
