#!/usr/bin/env python3
"""Reference token ids of Gemma 3's tokenizer, from Hugging Face `transformers`.

transformers builds a fast tokenizer from the GGUF's own vocabulary
(`AutoTokenizer.from_pretrained(dir, gguf_file=name)`: a BPE with byte fallback whose
merges it derives from the vocabulary, a normalizer turning " " into "\u2581", the control
tokens as special added tokens and the user-defined ones as plain added tokens). This
script encodes a varied corpus with it and writes the texts and ids to
`models/fixtures/gemma3_tokenizer_ids.json`, which `converter/tests/tokenizer_spm.rs`
compares the runtime's SentencePiece tokenizer with.

Per text it records
  `ids`: `tok(text, add_special_tokens=True)` -- `<bos>` first, control tokens written in
         the text (`<start_of_turn>`) matched whole: arq's `[bos] + encode(text, true)`;
  `ids_plain`: `tok(text, add_special_tokens=False, split_special_tokens=True)`:
         control tokens are ordinary text, user-defined ones still matched whole: arq's
         `encode(text, false)`.
  `decoded`: `tok.decode(ids_plain)`.

Usage (offline; transformers 5 reads GGUF metadata through torch, so it needs torch):
    HF_HUB_OFFLINE=1 python models/reference_gemma3_tokenizer.py [GEMMA3.gguf]
The GGUF defaults to $ARQ_GEMMA3_GGUF, then models/cache/gemma-3-270m-q4_k_m.gguf
(`models/fetch_gemma3.sh`).
"""

import json
import os
import sys
from pathlib import Path

import tokenizers
import transformers
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent

CORPUS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "a  b   c    d     e      f",
    " " * 40,
    "tabs\tand\t\ttabs\t\t\tmixed \t \t spaces",
    "line one\nline two\n\nline four\n\n\n\nafter four newlines\r\nwindows\r\n",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    "mixed \n \n\n  \t\n whitespace \u00a0non-breaking\u2009thin\u3000ideographic",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the Quick bRoWn fox?",
    "It's a dog's life; they're sure we'll go, I'd say, you've been, I'm here.",
    "Numbers: 0 1 12 123 1234 12345 123456 3.14159 -2.5e-10 1,000,000 0x1F 0b1010 #42 $9.99 50%",
    "Dates 2024-01-15, 15/01/2024, 10:30:45 PM; phone +1 (555) 123-4567.",
    "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "fn main() {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!(\"{:?}\", v);\n}\n",
    "<html><body class=\"main\"><p>Hi &amp; bye</p></body></html>",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    '{"key": [1, 2.5, true, null], "nested": {"a": "b"}}',
    "https://example.com/path/to/page?query=1&x=y#frag user@mail.example.org",
    "Punctuation!!! ??? ... --- ___ *** ((( ))) [[[ ]]] {{{ }}} ~~~ ``` ''' \"\"\"",
    "中文测试：今天天气很好，我们去公园散步吧。",
    "日本語のテキスト、ひらがなとカタカナと漢字。",
    "한국어 텍스트도 있습니다.",
    "العربية: مرحبا بالعالم، كيف حالك اليوم؟",
    "Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "हिन्दी: नमस्ते दुनिया, आप कैसे हैं?",
    "Ελληνικά: Γειά σου Κόσμε. עברית: שלום עולם. ไทย: สวัสดีชาวโลก",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🦀🐍 ✨",
    "Rare chars: \U0001d54f\U0001d552\U0001d55f ᚠᚢᚦ ⵣ 𓀀 \U000e0041 \ufeffbom",
    "Control chars: \x00\x01\x07\x1b[31mred\x1b[0m \x7f",
    "Accents: café naïve résumé Ångström Zürich señor crème brûlée e\u0301 a\u0308",
    "Math: ∑_{i=1}^{n} x_i² ≤ ∫ f(x) dx ≈ π·r² → ∞; α β γ δ ∀x∃y",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "<bos>text<eos> and <pad><unk><mask> tokens",
    "<unused0><unused42>[multimodal]<start_of_image><end_of_image>",
    "<start_of_turn <end_of_turn> <start_of_turnx <0x41> <0xFF>",
    "\u2581literal lower one eighth block\u2581\u2581 and \u2581 spaced",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "========================================================================",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
    "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco "
    "laboris nisi ut aliquip ex ea commodo consequat.",
    "Mixed 混合 text with English, 日本語, العربية and русский in one line 123 😀!",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilistic",
    "CamelCaseIdentifier snake_case_identifier kebab-case-identifier SCREAMING_SNAKE",
    "    indented with four spaces\n        eight\n\t\ttwo tabs\n",
]


def main():
    path = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "ARQ_GEMMA3_GGUF", HERE / "cache" / "gemma-3-270m-q4_k_m.gguf"))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    cases = []
    for text in CORPUS:
        ids = tok(text, add_special_tokens=True)["input_ids"]
        ids_plain = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        cases.append({
            "text": text,
            "ids": ids,
            "ids_plain": ids_plain,
            "decoded": tok.decode(ids_plain),
        })
    out = {
        "source": f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
                  f"AutoTokenizer.from_pretrained(gguf_file={path.name!r})",
        "bos_id": tok.bos_token_id,
        "texts": len(cases),
        "chars": sum(len(c["text"]) for c in cases),
        "tokens": sum(len(c["ids"]) for c in cases),
        "cases": cases,
    }
    dest = HERE / "fixtures" / "gemma3_tokenizer_ids.json"
    dest.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"{dest}: {out['texts']} texts, {out['chars']} chars, {out['tokens']} tokens")


if __name__ == "__main__":
    main()
