#!/usr/bin/env python3
"""Reference pieces of the Llama 3 and Qwen2 pre-tokenizer patterns, from Hugging Face
`tokenizers` (Oniguruma): `Split(Regex(pattern), behavior="isolated")`, the first step
of both models' `tokenizer.json` pre-tokenizer (the `ByteLevel` after it has
`use_regex=false` and splits nothing). Writes `models/fixtures/pretokenizer_pieces.json`,
which `converter/tests/pretokenizers.rs` compares `arq::tokenizer::PreTokenizer` with.

It also trains a small byte-level BPE (400 tokens) on the texts, adds one token no merge
makes (`Ġqwerty`), and records the full ids of each text under three Hugging Face
tokenizers: Llama 3's (`ignore_merges=True`), DBRX's (the same pattern, merges always)
and Qwen2's (single digits; without Qwen2's NFC normalizer, which arq does not apply).

The patterns are those of transformers' `tokenization_qwen2.py` and of its GGUF
tokenizer mapping (Llama 3), which are llama.cpp's `LLAMA3` and `QWEN2` regexes before
llama.cpp's rewrite of `(?i:...)`.

Usage: python models/reference_pretokenizers.py   (needs only `tokenizers`)
"""

import json
import random
from pathlib import Path

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).resolve().parent

PATTERNS = {
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}

TEXTS = [
    "Hello world",
    "Hello, world! How are you?",
    "I'm sure they're here; we'll see, I'd say you've it's",
    "I'M SURE THEY'RE HERE; WE'LL SEE, I'D SAY YOU'VE IT'S",
    "'s 't 're 've 'm 'll 'd 'x 'S 'T 'Re 'rE 'VE 'M 'LL 'lL 'D",
    "'\u017f '\u017ft \u017f's don\u2019t '\u212a",
    "12 123 1234 12345 1234567 3.14159 1,000,000 -42 +7 \u0663\u0664\u0665\u0666 \u00bd\u00be \u2167\u2168",
    "a  b   c    d\t\te\n\nf\r\ng \r\n\r\n h  \n  i",
    "   leading and trailing   ",
    "\n\n\nnewlines first",
    "tabs\t\t\tthen text",
    "$hello #tag @user %percent &amp; *bold* _under_ ~tilde~",
    "!!!hello ...world ???\n\n!!!\r\n",
    " !!! ?? .. \n",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))\n",
    "fn main() { let v = vec![1, 2, 3]; }\n",
    "\u4e2d\u6587\u6d4b\u8bd5\uff1a\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002 \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629: \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442, \u0434\u0430.",
    "\u0939\u093f\u0928\u094d\u0926\u0940: \u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "e\u0301t\u00e9 cafe\u0301 a\u0308b \u0915\u093f",
    "emoji \U0001f600\U0001f603 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467 x\U0001f600y",
    "nbsp\u00a0here thin\u2009space ideo\u3000space nel\u0085line ls\u2028ps\u2029",
    "ctrl\x1c\x1d\x1e\x1f chars \x00 \x7f \x0b\x0c",
    "MixedCASE camelCase snake_case kebab-case 3D 4K 1st 2nd",
    "",
    " ",
    "\n",
    "\r",
    " \r",
    "x \r\n y",
    "a\u200bb zero width",
]


def random_texts(n, seed=7):
    fragments = [
        "a", "Z", "\u00e9", "\u4e2d", "\u0627", "\u0416", " ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0",
        "\u3000", "1", "23", "4567", "\u0663", "\u00bd", "'", "'s", "'S", "'ll", "'Re", "'ve", "'d", "'m",
        "'t", "\u017f", "!", "??", ".", "$", "-", "_", "\U0001f600", "\u0301", "\u200d", "\x1c", "\x85",
        "hello", " world", "don't", "I'M",
    ]
    rng = random.Random(seed)
    return ["".join(rng.choice(fragments) for _ in range(rng.randrange(1, 24))) for _ in range(n)]


def pre_tokenizer(pattern):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def small_bpe(texts):
    special = ["<|begin_of_text|>", "<|eot_id|>"]
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizer(PATTERNS["llama3"])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    trainer_tok.train_from_iterator(texts * 3, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = dict(trained["vocab"])
    vocab["\u0120qwerty"] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    sample = texts[:132] + ["qwerty qwerty, qwertyqwerty <|eot_id|>"]
    ids = {}
    for name, pattern, ignore in [("llama3", "llama3", True), ("dbrx", "llama3", False), ("qwen2", "qwen2", False)]:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore))
        tok.pre_tokenizer = pre_tokenizer(PATTERNS[pattern])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(special)
        ids[name] = [tok.encode(t, add_special_tokens=False).ids for t in sample]
    return {
        "tokens": tokens,
        "special": special,
        "merges": [f"{a} {b}" for a, b in merges],
        "texts": sample,
        "ids": ids,
    }


def main():
    texts = TEXTS + random_texts(400)
    out = {
        "source": f"tokenizers {tokenizers.__version__}: pre_tokenizers.Split(Regex(pattern), behavior='isolated')",
        "patterns": PATTERNS,
        "texts": texts,
        "pieces": {},
    }
    for name, pattern in PATTERNS.items():
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        out["pieces"][name] = [[piece for piece, _ in split.pre_tokenize_str(t)] for t in texts]
    out["bpe"] = small_bpe(texts)
    dest = HERE / "fixtures" / "pretokenizer_pieces.json"
    dest.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"{dest}: {len(texts)} texts, {sum(len(t) for t in texts)} chars")


if __name__ == "__main__":
    main()
