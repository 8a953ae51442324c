#!/usr/bin/env python3
"""Tiny text models of every family arq imports, built with transformers' own classes.

What it makes
-------------
For each family (llama, qwen2, qwen3, gemma3, gpt2) this script

  1. trains a ~512-entry tokenizer on models/tinygpt/corpus.txt (minus the held-out
     tail, models/tinygpt/heldout.txt) with the *real family's* pre-tokenization:
       gpt2    byte-level BPE, GPT-2's ByteLevel regex (use_regex=True)
       llama   Llama 3's Split regex (digits in runs of 1-3) + ByteLevel(use_regex=False),
               BOS <|begin_of_text|> added by a TemplateProcessing post-processor
       qwen2   Qwen2's Split regex (single digits) + ByteLevel, NFC normalizer, no BOS
       qwen3   the same tokenizer as qwen2 (as Qwen3 ships Qwen2's)
       gemma3  SentencePiece BPE with byte_fallback, trained by the `sentencepiece`
               package (tokenizer.model), turned into tokenizer.json by transformers'
               Gemma tokenizer, as Gemma ships both; BOS <bos> added
     Special tokens are appended after the learned vocabulary (as Llama 3 / Qwen2 /
     GPT-2 place theirs), except Gemma's, which SentencePiece puts at fixed low ids.
  2. builds the model from transformers' own config/model classes (LlamaForCausalLM,
     Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM with a text-only
     Gemma3TextConfig, GPT2LMHeadModel): hidden 64, intermediate 128 (gpt2: 256, see
     build_model), 2 layers
     (gemma3: 6, so its 5 sliding : 1 full pattern has one full layer), max 128
     positions;
  3. trains it for a fixed number of Adam steps (about a minute on one thread) on
     random 64-token windows of the training text, so its predictions are not flat;
  4. saves it with save_pretrained into models/tiny/<family>/hf/ in a per-family dtype
     (llama f32, qwen2 bf16 *sharded into 2 files with an index*, qwen3 f16, gemma3
     f32, gpt2 f32), with the tokenizer files next to it.

Everything is seeded (torch, python, numpy; tokenizer trainers single-threaded), so a
rerun with the same package versions rewrites identical files. The GGUF files are
made afterwards by models/tiny/make_gguf.py (llama.cpp's own converter).

How to run
----------
    nice -n 10 /work/cache/venv/bin/python models/tiny/make_tiny.py [FAMILY ...] [--steps-scale X]

Without FAMILY, all five. Offline (HF_HUB_OFFLINE=1); about 5-6 minutes on one thread.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
warnings.filterwarnings("ignore")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(REPO, "models", "tinygpt", "corpus.txt")
HELDOUT = os.path.join(REPO, "models", "tinygpt", "heldout.txt")

FAMILIES = ["llama", "qwen2", "qwen3", "gemma3", "gpt2"]
VOCAB = 512
HIDDEN = 64
INTER = 128
MAX_POS = 128
SEQ = 64
BATCH = 16
LR = 3e-3
SEED = 1234
# Fixed step counts (about one minute each on one 2-core-shared thread) so reruns
# reproduce; the wall time is only printed.
STEPS = {"llama": 1000, "qwen2": 1000, "qwen3": 1000, "gemma3": 400, "gpt2": 1000}

# The pre-tokenizer regexes exactly as the real models' tokenizer.json files carry them.
GPT2_REGEX = None  # ByteLevel(use_regex=True) has GPT-2's regex built in
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
    "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_text():
    corpus = open(CORPUS, encoding="utf-8").read()
    heldout = open(HELDOUT, encoding="utf-8").read()
    assert corpus.endswith(heldout), "heldout.txt must be the tail of corpus.txt"
    return corpus[: len(corpus) - len(heldout)]


def train_text_chunks(text):
    # Documents are separated by blank-line triples; the BPE trainers see documents.
    return [d for d in text.split("\n\n\n") if d.strip()]


# ---------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------

def bpe_tokenizer(family, text):
    """Byte-level BPE with the family's pre-tokenizer; returns a PreTrainedTokenizerFast."""
    if family == "gpt2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        regex = LLAMA3_REGEX if family == "llama" else QWEN2_REGEX
        tk = Tokenizer(models.BPE(ignore_merges=(family == "llama")))
        if family != "llama":
            tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
        if family == "llama":
            specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
        else:
            specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(specials),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tk.train_from_iterator(train_text_chunks(text), trainer=trainer)
    assert tk.get_vocab_size() == VOCAB - len(specials), tk.get_vocab_size()
    tk.add_special_tokens(specials)  # appended after the learned vocabulary
    ids = {s: tk.token_to_id(s) for s in specials}
    if family == "llama":
        bos = "<|begin_of_text|>"
        tk.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                special_tokens=[(bos, ids[bos])],
            ),
        ])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tk, bos_token=bos, eos_token="<|end_of_text|>",
            model_max_length=MAX_POS,
        )
        fast.chat_template = None
    elif family == "gpt2":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
            unk_token="<|endoftext|>", model_max_length=MAX_POS,
        )
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tk, eos_token="<|im_end|>" if family == "qwen3" else "<|endoftext|>",
            pad_token="<|endoftext|>", model_max_length=MAX_POS,
        )
        fast.chat_template = CHATML_TEMPLATE
    return fast


def gemma_tokenizer(text, workdir, out_dir):
    """SentencePiece BPE (byte_fallback) as Gemma's: writes out_dir/tokenizer.model and
    returns transformers' Gemma tokenizer built from it (GemmaTokenizerFast of
    transformers 4 is GemmaTokenizer in transformers 5: the tokenizers-backed class,
    which converts tokenizer.model into the tokenizer.json that save_pretrained writes,
    as Gemma's own repositories ship both)."""
    import sentencepiece as spm
    from transformers import GemmaTokenizer

    txt = os.path.join(workdir, "sp_train.txt")
    with open(txt, "w", encoding="utf-8") as f:
        for doc in train_text_chunks(text):
            for line in doc.split("\n"):
                if line.strip():
                    f.write(line + "\n")
    prefix = os.path.join(workdir, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=txt,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=VOCAB,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        num_threads=1,
        minloglevel=2,
    )
    shutil.copy(prefix + ".model", os.path.join(out_dir, "tokenizer.model"))
    # mask_token=None: Gemma's class default would append a <mask> id past the
    # SentencePiece vocabulary (real Gemma 3 has <mask> at id 4 of its own model).
    fast = GemmaTokenizer.from_pretrained(out_dir, add_bos_token=True, mask_token=None,
                                          model_max_length=MAX_POS)
    fast.chat_template = GEMMA_TEMPLATE
    return fast


def tidy_tokenizer_config(out_dir, family):
    """Drop the keys transformers 5 records about *this* machine's load (paths, flags).

    For gemma3 also mark <start_of_turn>/<end_of_turn> special and write the
    added_tokens_decoder table into tokenizer_config.json, as Gemma 3's own
    repository has them (transformers 4 wrote that table; 5 does not). llama.cpp's
    converter reads that table to type these ids CONTROL, as in Google's GGUFs."""
    p = os.path.join(out_dir, "tokenizer_config.json")
    cfg = json.load(open(p, encoding="utf-8"))
    if family == "gemma3":
        tj_path = os.path.join(out_dir, "tokenizer.json")
        tj = json.load(open(tj_path, encoding="utf-8"))
        for a in tj["added_tokens"]:
            if a["content"] in ("<start_of_turn>", "<end_of_turn>"):
                a["special"] = True
        with open(tj_path, "w", encoding="utf-8") as f:
            json.dump(tj, f, indent=2, ensure_ascii=False)
            f.write("\n")
        cfg["added_tokens_decoder"] = {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in tj["added_tokens"]}
    for k in ("vocab_file", "is_local", "local_files_only", "name_or_path"):
        cfg.pop(k, None)
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"  # what Llama 3's repository names
    with open(p, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ---------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------

def build_model(family, tok):
    v = len(tok)
    assert v == VOCAB, (family, v)
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER,
                  max_position_embeddings=MAX_POS)
    if family == "llama":
        cfg = LlamaConfig(**common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          hidden_act="silu")
        return LlamaForCausalLM(cfg)
    if family == "qwen2":
        cfg = Qwen2Config(**common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                          bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                          eos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                          use_sliding_window=False, hidden_act="silu")
        return Qwen2ForCausalLM(cfg)
    if family == "qwen3":
        cfg = Qwen3Config(**common, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=32, rms_norm_eps=1e-6, rope_theta=1000000.0,
                          tie_word_embeddings=False,
                          bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                          eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                          use_sliding_window=False, hidden_act="silu")
        return Qwen3ForCausalLM(cfg)
    if family == "gemma3":
        cfg = Gemma3TextConfig(
            **common, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1,
            head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            rms_norm_eps=1e-6, final_logit_softcapping=None, attn_logit_softcapping=None,
            hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
            pad_token_id=0, eos_token_id=1, bos_token_id=2,
        )
        assert cfg.layer_types == ["sliding_attention"] * 5 + ["full_attention"], cfg.layer_types
        return Gemma3ForCausalLM(cfg)
    if family == "gpt2":
        eot = tok.convert_tokens_to_ids("<|endoftext|>")
        # n_inner=None (MLP width 4 x n_embd = 256), as every released GPT-2: llama.cpp's
        # GPT-2 converter writes feed_forward_length = 4 * n_embd whatever n_inner says,
        # so a narrower MLP would give a GGUF whose metadata contradicts its tensors
        # (llama.cpp itself would refuse to load it).
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_inner=None, n_layer=2, n_head=4,
                         n_positions=MAX_POS, n_ctx=MAX_POS, bos_token_id=eot, eos_token_id=eot,
                         tie_word_embeddings=True, activation_function="gelu_new")
        # n_ctx: transformers 5 no longer writes it, but every real GPT-2 config.json
        # has it and llama.cpp's converter reads it for the context length.
        return GPT2LMHeadModel(cfg)
    raise ValueError(family)


SAVE_DTYPE = {"llama": torch.float32, "qwen2": torch.bfloat16, "qwen3": torch.float16,
              "gemma3": torch.float32, "gpt2": torch.float32}
SHARD = {"qwen2": "150KB"}


def train(model, tok, text, steps, family):
    # The training stream: documents joined by EOS; BOS (when the tokenizer adds one)
    # comes from tok() itself at each document start.
    eos = tok.eos_token_id
    stream = []
    for doc in train_text_chunks(text):
        stream.extend(tok(doc, add_special_tokens=True)["input_ids"])
        stream.append(eos)
    data = torch.tensor(stream, dtype=torch.long)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * max(0.1, 1 - s / steps))
    model.train()
    t0 = time.time()
    losses = []
    for step in range(steps):
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        x = torch.stack([data[s: s + SEQ] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == steps - 1:
            print(f"  {family} step {step:4d} loss {np.mean(losses[-50:]):.3f} ({time.time() - t0:.0f}s)",
                  flush=True)
    model.eval()
    return {"steps": steps, "tokens_in_stream": len(stream), "final_loss_avg50": round(float(np.mean(losses[-50:])), 4),
            "seconds": round(time.time() - t0, 1)}


def make(family, steps_scale):
    seed_all(SEED)
    text = training_text()
    out_dir = os.path.join(HERE, family, "hf")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    with tempfile.TemporaryDirectory() as work:
        if family == "gemma3":
            tok = gemma_tokenizer(text, work, out_dir)
        else:
            tok = bpe_tokenizer(family, text)
    seed_all(SEED)
    model = build_model(family, tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{family}: {n_params} parameters, vocab {len(tok)}", flush=True)
    stats = train(model, tok, text, max(1, int(STEPS[family] * steps_scale)), family)
    model = model.to(SAVE_DTYPE[family])
    kw = {"max_shard_size": SHARD[family]} if family in SHARD else {}
    model.save_pretrained(out_dir, **kw)
    tok.save_pretrained(out_dir)
    tidy_tokenizer_config(out_dir, family)
    stats.update({"family": family, "parameters": n_params, "saved_dtype": str(SAVE_DTYPE[family]).replace("torch.", ""),
                  "transformers": transformers.__version__, "torch": torch.__version__})
    with open(os.path.join(HERE, family, "train_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
        f.write("\n")
    sizes = {n: os.path.getsize(os.path.join(out_dir, n)) for n in sorted(os.listdir(out_dir))}
    print(f"{family}: saved {out_dir} {sizes}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="*", default=FAMILIES)
    ap.add_argument("--steps-scale", type=float, default=1.0,
                    help="multiply the fixed step counts (for a quick trial; 1.0 reproduces the committed models)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for fam in args.families:
        if fam not in FAMILIES:
            sys.exit(f"unknown family {fam!r}; one of {FAMILIES}")
        make(fam, args.steps_scale)


if __name__ == "__main__":
    main()
