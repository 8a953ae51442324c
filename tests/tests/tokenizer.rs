//! The byte-level BPE tokenizer against Hugging Face `tokenizers` on SmolLM2's real
//! vocabulary: same ids on a varied corpus, random strings and every code point's
//! pre-tokenization, lossless round trips, streaming decode.
//!
//! Needs the SmolLM2 GGUF (`ARQ_SMOLLM2_GGUF`, default
//! `models/cache/SmolLM2-135M-Instruct.Q4_1.gguf`); each test prints a note and passes
//! when it is absent.

use arq::tokenizer::{build_blob, PreTokenizer, Tokenizer, Utf8Stream};
use arq_convert::import::gguf::GgufFile;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::{AddedToken, OffsetReferential, OffsetType, PreTokenizedString};

const CORPUS: &str = include_str!("../fixtures/tokenizer/corpus.txt");

struct Fixture {
    blob: Vec<u8>,
    /// Reference with control tokens matched whole.
    hf_special: tokenizers::Tokenizer,
    /// Reference with control tokens encoded as text (`encode_special_tokens`).
    hf_plain: tokenizers::Tokenizer,
}

fn gguf_path() -> PathBuf {
    match std::env::var_os("ARQ_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cache/SmolLM2-135M-Instruct.Q4_1.gguf")),
    }
}

fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    let f = FIXTURE.get_or_init(|| {
        let path = gguf_path();
        if !path.exists() {
            return None;
        }
        let gguf = GgufFile::open(&path).expect("open SmolLM2 GGUF");
        let strings = |key: &str| -> Vec<String> {
            let v = gguf.get(key).and_then(|v| v.as_array()).unwrap_or_else(|| panic!("{key} missing"));
            v.iter().map(|s| s.as_str().expect("string").to_owned()).collect()
        };
        let tokens = strings("tokenizer.ggml.tokens");
        let merges = strings("tokenizer.ggml.merges");
        let types: Vec<i32> = gguf
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .expect("token_type")
            .iter()
            .map(|v| v.as_i64().expect("int") as i32)
            .collect();
        assert_eq!(gguf.get("tokenizer.ggml.model").and_then(|v| v.as_str()), Some("gpt2"));
        let pre = gguf.get("tokenizer.ggml.pre").and_then(|v| v.as_str());
        assert_eq!(pre.and_then(PreTokenizer::from_gguf_name), Some(PreTokenizer::Smollm));

        let blob = build_blob(&tokens, &types, &merges).expect("build tokenizer blob");

        // The reference, built the way SmolLM2's tokenizer.json describes it.
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        assert_eq!(vocab.len(), tokens.len(), "duplicate token strings");
        let pairs = merges
            .iter()
            .map(|m| {
                let (l, r) = m.split_once(' ').expect("merge");
                (l.to_owned(), r.to_owned())
            })
            .collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, pairs).build().expect("reference BPE");
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(smollm_pre_tokenizer()));
        hf.with_decoder(Some(ByteLevel::default()));
        let control =
            tokens.iter().zip(&types).filter(|(_, &t)| t == 3).map(|(t, _)| AddedToken::from(t.clone(), true));
        hf.add_special_tokens(control.collect::<Vec<_>>()).expect("special tokens");
        let hf_special = hf.clone();
        let mut hf_plain = hf;
        hf_plain.set_encode_special_tokens(true);
        Some(Fixture { blob, hf_special, hf_plain })
    });
    if f.is_none() {
        eprintln!("note: {} not found (set ARQ_SMOLLM2_GGUF); skipping", gguf_path().display());
    }
    f.as_ref()
}

fn smollm_pre_tokenizer() -> Sequence {
    Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()])
}

fn reference_ids(f: &Fixture, text: &str, special: bool) -> Vec<u32> {
    let hf = if special { &f.hf_special } else { &f.hf_plain };
    hf.encode(text, false).expect("reference encode").get_ids().to_vec()
}

/// Compares ids both ways of treating control tokens, and the round trips.
fn check(f: &Fixture, tok: &Tokenizer<'_>, text: &str) {
    for special in [true, false] {
        let ours = tok.encode(text, special);
        let theirs = reference_ids(f, text, special);
        assert_eq!(ours, theirs, "ids differ (special = {special}) for {text:?}");
        assert_eq!(tok.decode(&ours), text, "round trip (special = {special})");
    }
}

#[test]
fn blob_tables() {
    let Some(f) = fixture() else { return };
    let tok = Tokenizer::from_blob(&f.blob).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.pre_tokenizer(), Some(PreTokenizer::Smollm));
    assert_eq!(tok.token_id(b"<|endoftext|>"), Some(0));
    assert_eq!(tok.token_id(b"<|im_start|>"), Some(1));
    assert_eq!(tok.token_id(b"<|im_end|>"), Some(2));
    assert!((0..17).all(|id| tok.is_control(id)) && !tok.is_control(17));
    assert_eq!(tok.token_bytes(tok.token_id(b" the").unwrap()), Some(&b" the"[..]));
    assert_eq!(tok.special_tokens().count(), 17);
    for id in 0..tok.vocab_size() {
        let bytes = tok.token_bytes(id).unwrap();
        let hf_token = f.hf_special.id_to_token(id).unwrap();
        let hf_bytes = f.hf_special.decode(&[id], false).unwrap();
        if let Ok(s) = std::str::from_utf8(bytes) {
            assert_eq!(s, hf_bytes, "token {id} ({hf_token:?})");
        }
        assert_eq!(tok.token_id(bytes), Some(id), "token {id} ({hf_token:?}) not found by its bytes");
    }
    println!("tokenizer blob: {} bytes for {} tokens", f.blob.len(), tok.vocab_size());
}

#[test]
fn corpus_matches_reference() {
    let Some(f) = fixture() else { return };
    let tok = Tokenizer::from_blob(&f.blob).unwrap();
    for line in CORPUS.split_inclusive('\n') {
        check(f, &tok, line);
        check(f, &tok, line.trim_end_matches('\n'));
    }
    check(f, &tok, CORPUS);
    let ids = tok.encode(CORPUS, true);
    println!("corpus: {} bytes, {} tokens", CORPUS.len(), ids.len());
}

#[test]
fn decode_matches_reference_and_streams() {
    let Some(f) = fixture() else { return };
    let tok = Tokenizer::from_blob(&f.blob).unwrap();
    let ids = tok.encode(CORPUS, true);
    assert_eq!(tok.decode(&ids), f.hf_special.decode(&ids, false).unwrap());
    assert_eq!(tok.decode_skip_control(&ids), f.hf_special.decode(&ids, true).unwrap());

    // Token by token through the stream: the same text, and never half a character.
    let mut stream = Utf8Stream::new();
    let mut out = String::new();
    for &id in &ids {
        stream.push(tok.token_bytes(id).unwrap(), |s| out.push_str(s));
    }
    stream.flush(|s| out.push_str(s));
    assert_eq!(out, CORPUS);
    assert!(ids.iter().any(|&id| std::str::from_utf8(tok.token_bytes(id).unwrap()).is_err()), "no split chars");

    // Ids that cut characters (invalid on their own): lossy like the reference.
    let odd: Vec<u32> = ids.iter().rev().step_by(3).copied().collect();
    let mut stream = Utf8Stream::new();
    let mut out = String::new();
    for &id in &odd {
        stream.push(tok.token_bytes(id).unwrap(), |s| out.push_str(s));
    }
    stream.flush(|s| out.push_str(s));
    assert_eq!(out, f.hf_special.decode(&odd, false).unwrap());
    assert_eq!(tok.decode(&odd), out);
}

#[test]
fn special_tokens_match_reference() {
    let Some(f) = fixture() else { return };
    let tok = Tokenizer::from_blob(&f.blob).unwrap();
    for text in [
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>",
        "<|endoftext|><|endoftext|>",
        "a<|im_end|>b",
        " <|im_end|> ",
        "<|im_start|",
        "<<|im_end|>>",
        "<|im_start|><|im_end|",
        "<filename>main.rs<file_sep><reponame>arq<gh_stars>10",
        "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
        "12<|im_end|>34",
        "é<|im_end|>😀",
    ] {
        check(f, &tok, text);
    }
    let ids = tok.encode("<|im_start|>user", true);
    assert_eq!(ids[0], 1);
    assert!(!tok.encode("<|im_start|>user", false).contains(&1));
}

/// Deterministic xorshift, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_strings_match_reference() {
    let Some(f) = fixture() else { return };
    let tok = Tokenizer::from_blob(&f.blob).unwrap();
    // Fragments chosen to hit the pattern's edges: contractions, optional leading
    // spaces, white-space runs before letters, digits and punctuation, non-ASCII
    // letters, numbers and marks, special tokens.
    let fragments = [
        "a",
        "Z",
        "the",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{85}",
        "\u{1f}",
        "'",
        "'s",
        "'t",
        "'re",
        "'ve",
        "'m",
        "'ll",
        "'d",
        "'S",
        "1",
        "23",
        "٣",
        "½",
        "Ⅻ",
        "²",
        ".",
        "!",
        "?!",
        ",",
        "-",
        "_",
        "$",
        "é",
        "e\u{301}",
        "ß",
        "中文",
        "カナ",
        "한",
        "ب",
        "😀",
        "👩‍👩‍👧",
        "🇩🇪",
        "\u{200d}",
        "\u{fe0f}",
        "<|im_end|>",
        "<|endoftext|>",
        "<|",
        "|>",
        "\u{0}",
        "\u{7f}",
        "\u{10ffff}",
        "ǅ",
        "ʰ",
        "〇",
        "𝟙",
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..3000 {
        let mut s = String::new();
        for _ in 0..rng.below(24) {
            s.push_str(fragments[rng.below(fragments.len())]);
        }
        check(f, &tok, &s);
    }
}

/// Byte ranges of the reference pre-tokenizer's pieces.
fn reference_pieces(pre: &impl tokenizers::PreTokenizer, text: &str) -> Vec<(usize, usize)> {
    let mut p = PreTokenizedString::from(text);
    pre.pre_tokenize(&mut p).expect("reference pre-tokenize");
    p.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(_, o, _)| o).collect()
}

fn our_pieces(pre: PreTokenizer, text: &str) -> Vec<(usize, usize)> {
    let mut at = 0;
    pre.pieces(text)
        .map(|p| {
            at += p.len();
            (at - p.len(), at)
        })
        .collect()
}

/// Every code point of the assigned planes in contexts that tell its pattern class
/// (letter, number, white space, other) apart: `\p{L}`, `\p{N}` and `\s` agree with
/// Oniguruma's (Unicode 16) and Digits' `char::is_numeric` for all of them.
#[test]
fn pre_tokenizer_matches_reference_on_every_code_point() {
    if fixture().is_none() {
        return;
    }
    let smollm = smollm_pre_tokenizer();
    let gpt2 = ByteLevel::new(false, true, true);
    let planes = (0..0x4_0000u32).chain(0xe_0000..0xe_1000);
    let chars: Vec<char> = planes.filter_map(char::from_u32).collect();
    let mut gpt2_differences = Vec::new();
    for chunk in chars.chunks(2048) {
        let mut text = String::new();
        for &c in chunk {
            for ctx in ["a", "!", " ", "1", "'", "\n"] {
                text.push_str(ctx);
                text.push(c);
            }
            text.push(c);
            text.push(c);
            text.push_str("  x");
        }
        let theirs = reference_pieces(&smollm, &text);
        let ours = our_pieces(PreTokenizer::Smollm, &text);
        if ours != theirs {
            let i = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
            let at = ours.get(i).or(theirs.get(i)).map_or(0, |p| p.0);
            let near: String = text[at..].chars().take(12).collect();
            panic!(
                "smollm pieces differ at byte {at} ({near:?}): ours {:?}, reference {:?}",
                ours.get(i),
                theirs.get(i)
            );
        }
        if our_pieces(PreTokenizer::Gpt2, &text) != reference_pieces(&gpt2, &text) {
            gpt2_differences.extend(chunk.iter().copied().filter(|&c| {
                let s: String = ["a", "!", " ", "1"].iter().flat_map(|ctx| [ctx.to_string(), c.to_string()]).collect();
                our_pieces(PreTokenizer::Gpt2, &s) != reference_pieces(&gpt2, &s)
            }));
        }
    }
    // Without the digit split, `\p{N}` is Oniguruma's (Unicode 16) against our
    // `char::is_numeric` (this toolchain's Unicode): only numbers added after 16.0 may
    // differ.
    for c in &gpt2_differences {
        assert!(c.is_numeric(), "gpt2 pattern differs on U+{:04X}", *c as u32);
    }
    println!("{} code points checked; gpt2 pattern differs on {} newer numbers", chars.len(), gpt2_differences.len());
}

/// Llama 3's split pattern (`llama-bpe` and its aliases; DBRX's is the same) and Qwen2's
/// (single digits), as their `tokenizer.json` files write them.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Llama 3 and Qwen2 pre-tokenizers against Oniguruma running their patterns
/// (`Split(Regex, Isolated)`), on every code point of the assigned planes in contexts
/// that tell its class apart, and on random mixtures. Needs no model.
#[test]
fn llama3_and_qwen2_pre_tokenizers_match_reference_on_every_code_point() {
    let planes = (0..0x4_0000u32).chain(0xe_0000..0xe_1000);
    let chars: Vec<char> = planes.filter_map(char::from_u32).collect();
    for (pre, pattern) in [(PreTokenizer::Llama3, LLAMA3_PATTERN), (PreTokenizer::Qwen2, QWEN2_PATTERN)] {
        let reference =
            Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false).expect("regex");
        let mut differences = Vec::new();
        for chunk in chars.chunks(2048) {
            let mut text = String::new();
            for &c in chunk {
                for ctx in ["a", "!", " ", "1", "'", "\n", "\r", "\t", " !"] {
                    text.push_str(ctx);
                    text.push(c);
                }
                text.push(c);
                text.push(c);
                text.push_str("  x\r\n ");
            }
            if our_pieces(pre, &text) != reference_pieces(&reference, &text) {
                differences.extend(chunk.iter().copied().filter(|&c| {
                    let s: String = ["a", "!", " ", "1", "'", "\n", "\r", " !"]
                        .iter()
                        .flat_map(|ctx| [ctx.to_string(), c.to_string()])
                        .collect();
                    our_pieces(pre, &s) != reference_pieces(&reference, &s)
                }));
            }
        }
        // `\p{N}` is Oniguruma's (Unicode 16) against our `char::is_numeric` (this
        // toolchain's Unicode): only numbers added after 16.0 may differ.
        for c in &differences {
            assert!(c.is_numeric(), "{pre:?} pattern differs on U+{:04X}", *c as u32);
        }
        let fragments = [
            "a", "Z", "é", "中", " ", "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{3000}", "1", "234", "5678", "'",
            "'s", "'LL", "'Re", "'ve", "'D", "'m", "'T", "\u{17f}", "!", "??", "$", "😀", "\u{301}", "\u{85}",
            "\u{1c}",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..rng.below(16) {
                s.push_str(fragments[rng.below(fragments.len())]);
            }
            assert_eq!(our_pieces(pre, &s), reference_pieces(&reference, &s), "{pre:?} on {s:?}");
        }
    }
}
