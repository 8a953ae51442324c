//! The SentencePiece tokenizer on Gemma 3's real vocabulary (262,144 pieces) against
//! Hugging Face: ids identical to `models/fixtures/gemma3_tokenizer_ids.json` (written by
//! `models/reference_gemma3_tokenizer.py` with transformers), decode round trips, and
//! streaming decode that never emits half a character.
//!
//! Needs the Gemma 3 270M GGUF: `ARQ_GEMMA3_GGUF`, default
//! `models/cache/gemma-3-270m-q4_k_m.gguf` (`models/fetch_gemma3.sh`). Without it the
//! tests fail, unless `ARQ_SKIP_GEMMA3=1`.

use arq::tokenizer::{TokenType, Tokenizer, TokenizerKind, Utf8Stream};
use arq_convert::import::gguf::GgufFile;
use arq_convert::import::vocab::Vocab;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

const FIXTURE: &str = include_str!("../../models/fixtures/gemma3_tokenizer_ids.json");

fn gguf_path() -> Option<PathBuf> {
    let path = match std::env::var_os("ARQ_GEMMA3_GGUF") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cache/gemma-3-270m-q4_k_m.gguf")),
    };
    if path.exists() {
        return Some(path);
    }
    if std::env::var("ARQ_SKIP_GEMMA3").is_ok_and(|v| v == "1") {
        eprintln!("note: Gemma 3 GGUF not found at {}; skipped (ARQ_SKIP_GEMMA3=1)", path.display());
        return None;
    }
    panic!(
        "Gemma 3 GGUF not found at {}: run models/fetch_gemma3.sh (or set ARQ_GEMMA3_GGUF, or ARQ_SKIP_GEMMA3=1 to skip)",
        path.display()
    );
}

/// The blob, built once from the GGUF through the converter's `Vocab`.
fn blob() -> Option<&'static [u8]> {
    static BLOB: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    BLOB.get_or_init(|| {
        let path = gguf_path()?;
        let g = GgufFile::open(&path).expect("open the Gemma 3 GGUF");
        let vocab = Vocab::from_gguf(&g).expect("Gemma 3 vocabulary");
        assert_eq!(vocab.model_name(), "llama");
        assert_eq!(
            (vocab.bos, vocab.eos, vocab.unk, vocab.pad, vocab.add_bos),
            (Some(2), Some(1), Some(3), Some(0), true)
        );
        let t = Instant::now();
        let blob = vocab.blob().expect("Gemma 3 blob");
        eprintln!("built the Gemma 3 tokenizer blob in {:.2?}", t.elapsed());
        Some(blob)
    })
    .as_deref()
}

struct Case {
    text: String,
    ids: Vec<u32>,
    ids_plain: Vec<u32>,
    decoded: String,
}

fn cases() -> (u32, Vec<Case>) {
    let v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture JSON");
    let ids = |c: &serde_json::Value, k: &str| -> Vec<u32> {
        c[k].as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
    };
    let cases = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").into(),
            ids: ids(c, "ids"),
            ids_plain: ids(c, "ids_plain"),
            decoded: c["decoded"].as_str().expect("decoded").into(),
        })
        .collect();
    (v["bos_id"].as_u64().expect("bos_id") as u32, cases)
}

#[test]
fn gemma3_ids_match_hugging_face() {
    let Some(blob) = blob() else { return };
    let tok = Tokenizer::from_blob(blob).unwrap();
    assert_eq!(tok.kind(), TokenizerKind::SentencePiece { add_space_prefix: false });
    assert_eq!(tok.vocab_size(), 262_144);
    let (bos, cases) = cases();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for c in &cases {
        let mut ours = vec![bos];
        ours.extend(tok.encode(&c.text, true));
        if ours != c.ids {
            failures.push(format!("{:?} (special): ours {ours:?}\n  hf {:?}", c.text, c.ids));
        }
        let plain = tok.encode(&c.text, false);
        if plain != c.ids_plain {
            failures.push(format!("{:?} (plain): ours {plain:?}\n  hf {:?}", c.text, c.ids_plain));
        }
        assert_eq!(tok.decode(&plain), c.decoded, "decode of {:?}", c.text);
        // encode_with_scratch is the same encoder without allocation.
        let mut scratch = vec![0u32; arq::tokenizer::SCRATCH_WORDS_PER_BYTE * (c.text.len() + 1)];
        let mut no_alloc = Vec::new();
        tok.encode_with_scratch(&c.text, false, &mut scratch, |id| no_alloc.push(id)).unwrap();
        assert_eq!(no_alloc, plain, "encode_with_scratch of {:?}", c.text);
    }
    assert!(
        failures.is_empty(),
        "{} of {} encodings differ:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
    // Long texts go through encode's cache of merge lookups: the same ids as without.
    let long = cases.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(" ").repeat(3);
    let mut scratch = vec![0u32; arq::tokenizer::SCRATCH_WORDS_PER_BYTE * (long.len() + 1)];
    for special in [false, true] {
        let mut no_cache = Vec::new();
        tok.encode_with_scratch(&long, special, &mut scratch, |id| no_cache.push(id)).unwrap();
        assert_eq!(tok.encode(&long, special), no_cache);
    }
}

#[test]
fn gemma3_decode_round_trips_and_streams_whole_characters() {
    let Some(blob) = blob() else { return };
    let tok = Tokenizer::from_blob(blob).unwrap();
    let (_, cases) = cases();
    for c in &cases {
        let ids = tok.encode(&c.text, true);
        // `▁` in the text is a space to the normalizer, so it decodes to one.
        assert_eq!(tok.decode(&ids), c.text.replace('\u{2581}', " "), "round trip of {:?}", c.text);
        let mut stream = Utf8Stream::new();
        let mut streamed = String::new();
        for &id in &ids {
            stream.push(tok.token_bytes(id).unwrap(), |s| streamed.push_str(s));
        }
        stream.flush(|s| streamed.push_str(s));
        assert_eq!(streamed, tok.decode(&ids));
    }
    // A char with no piece of its own falls back to byte tokens; the stream holds the
    // partial bytes back until the character is complete.
    let rare = "\u{e0041}";
    let ids = tok.encode(rare, false);
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.iter().all(|&id| tok.token_type(id) == Some(TokenType::Byte)));
    let mut stream = Utf8Stream::new();
    let mut out = Vec::new();
    for &id in &ids {
        stream.push(tok.token_bytes(id).unwrap(), |s| out.push(s.to_string()));
    }
    assert_eq!(out, [rare]);
    assert_eq!(tok.decode(&tok.encode("a\u{2581}b  c", false)), "a b  c");
    // Control tokens: whole with `special`, text without; skipped on request.
    let turn = tok.token_id(b"<start_of_turn>").unwrap();
    assert_eq!(turn, 105);
    assert!(tok.is_control(turn));
    assert_eq!(tok.encode("<start_of_turn>", true), [turn]);
    assert!(!tok.encode("<start_of_turn>", false).contains(&turn));
    assert_eq!(tok.decode_skip_control(&tok.encode("<start_of_turn>user", true)), "user");
}

/// Loading cost of a 262k vocabulary (printed, not asserted: speed is measured by
/// benchmarks), and corruptions of the real blob are refused.
#[test]
fn gemma3_blob_loads_zero_copy_and_refuses_corruption() {
    let Some(blob) = blob() else { return };
    let t = Instant::now();
    let n = 20;
    for _ in 0..n {
        std::hint::black_box(Tokenizer::from_blob(std::hint::black_box(blob)).unwrap());
    }
    eprintln!("Gemma 3 tokenizer blob: {} bytes, from_blob {:.2?} per load", blob.len(), t.elapsed() / n);
    let tok = Tokenizer::from_blob(blob).unwrap();
    // Zero-copy: the token bytes point into the blob.
    let bytes = tok.token_bytes(105).unwrap();
    assert!(blob.as_ptr_range().contains(&bytes.as_ptr()));
    // Break the sorted index (swap two entries), a byte table entry, an offset.
    let sorted_at = 32 + 256 * 4 + (262_144 + 1) * 4;
    let mut bad = blob.to_vec();
    bad.copy_within(sorted_at..sorted_at + 4, sorted_at + 400);
    assert!(Tokenizer::from_blob(&bad).is_err());
    let mut bad = blob.to_vec();
    bad[32 + 4 * 0x41] ^= 1;
    assert!(Tokenizer::from_blob(&bad).is_err());
    let mut bad = blob.to_vec();
    bad[32 + 256 * 4 + 4 * 1000 + 1] ^= 0x40;
    assert!(Tokenizer::from_blob(&bad).is_err());
    assert!(Tokenizer::from_blob(&blob[..blob.len() - 1]).is_err());
}
