//! Gemma 3 270M end to end against the independent reference: Hugging Face transformers
//! in f32 on the same GGUF (`models/reference_gemma3.py`, fixture in
//! `models/fixtures/gemma3_reference.json`), with eager attention and its 512-token
//! sliding window, on six texts (one of 755 tokens, past the window).
//!
//! The GGUF (Q4_K_M, 253 MB) comes from `models/fetch_gemma3.sh`; `scripts/test-all.sh`
//! fetches it and sets `ARQ_GEMMA3_GGUF`. Without that variable and without the default
//! file the tests print a note and pass; with the variable set, a missing file fails.

use std::path::PathBuf;
use std::sync::OnceLock;

mod common;

use arq::{math, Model, Session, SessionConfig};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::gguf::text::read_gguf;
use arq_convert::quantize::Quant;
use common::{floats, ids_of, teacher_forced};
use serde_json::Value;

fn gguf_path() -> Option<PathBuf> {
    common::fetched_gguf("ARQ_GEMMA3_GGUF", "gemma-3-270m-q4_k_m.gguf", "fetch_gemma3.sh")
}

struct Converted {
    q8: ModelBytes,
    f32: ModelBytes,
}

/// The two conversions, made once per test binary.
fn models() -> Option<&'static Converted> {
    static M: OnceLock<Option<Converted>> = OnceLock::new();
    M.get_or_init(|| {
        let src = read_gguf(&gguf_path()?, false).expect("convert Gemma 3");
        let (q8, _) = src.to_arq(Quant::Q8, false).expect("q8");
        let (f32, _) = src.to_arq(Quant::F32, false).expect("f32");
        Some(Converted { q8: ModelBytes::copy_of(&q8), f32: ModelBytes::copy_of(&f32) })
    })
    .as_ref()
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fixtures/gemma3_reference.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// Over all reference texts: (our perplexity, the reference's, top-1 agreement with the
/// reference's argmax, the largest |log-prob difference|).
fn compare_with_reference(model: &Model<'_>, label: &str) -> (f64, f64, f64, f64) {
    let (mut nll, mut nll_ref, mut n, mut agree, mut worst) = (0.0, 0.0, 0usize, 0usize, 0.0f64);
    for (name, t) in reference()["texts"].as_object().unwrap() {
        let ids = ids_of(&t["ids"]);
        let (lps, top) = teacher_forced(model, &ids, 32, 2);
        let ref_lps = floats(&t["logprobs"]);
        assert_eq!(lps.len(), ref_lps.len(), "{name}");
        let diff = lps.iter().zip(&ref_lps).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let text_nll: f64 = -lps.iter().sum::<f64>();
        eprintln!(
            "  {label} {name:<10} {:>4} tokens, ppl {:.4} (reference {:.4}), max |logprob diff| {diff:.2e}",
            ids.len(),
            (text_nll / lps.len() as f64).exp(),
            t["perplexity"].as_f64().unwrap()
        );
        worst = worst.max(diff);
        nll += text_nll;
        nll_ref -= ref_lps.iter().sum::<f64>();
        n += lps.len();
        agree += top.iter().zip(&ids_of(&t["argmax"])).filter(|(a, b)| a == b).count();
    }
    ((nll / n as f64).exp(), (nll_ref / n as f64).exp(), agree as f64 / n as f64, worst)
}

#[test]
fn f32_logprobs_match_transformers() {
    let Some(m) = models() else { return };
    let model = Model::load(m.f32.bytes()).unwrap();
    let c = model.config();
    assert_eq!((c.dim, c.n_heads, c.head_dim, c.n_kv_heads, c.sliding_window), (640, 4, 256, 1, 512));
    let (ppl, ppl_ref, top1, worst) = compare_with_reference(&model, "f32");
    eprintln!("f32: perplexity {ppl:.4} vs transformers {ppl_ref:.4}, top-1 {:.2}%, worst {worst:.2e}", 100.0 * top1);
    assert!(worst < 1e-4, "f32 log-probs differ from transformers by up to {worst}");
    assert!((ppl / ppl_ref - 1.0).abs() < 1e-4, "f32 perplexity {ppl} vs {ppl_ref}");
    assert!(top1 >= 0.995, "f32 top-1 agreement {:.2}%", 100.0 * top1);
}

#[test]
fn q8_perplexity_within_1_percent_and_top1_at_least_96_percent() {
    let Some(m) = models() else { return };
    let model = Model::load(m.q8.bytes()).unwrap();
    let (ppl, ppl_ref, top1, _) = compare_with_reference(&model, "q8");
    let rel = ppl / ppl_ref - 1.0;
    eprintln!(
        "q8: perplexity {ppl:.4} vs transformers f32 {ppl_ref:.4} ({:+.3}%), top-1 agreement {:.2}%",
        100.0 * rel,
        100.0 * top1
    );
    assert!(rel.abs() < 0.01, "q8 perplexity off by {:.3}%", 100.0 * rel);
    assert!(top1 >= 0.96, "q8 top-1 agreement {:.2}%", 100.0 * top1);
}

#[test]
fn tokenizer_ids_equal_the_reference_tokenization() {
    let Some(m) = models() else { return };
    let model = Model::load(m.q8.bytes()).unwrap();
    let tok = model.tokenizer().unwrap();
    let bos = reference()["tokenizer"]["bos_id"].as_u64().unwrap() as u32;
    for (name, t) in reference()["texts"].as_object().unwrap() {
        let text = t["text"].as_str().unwrap();
        // transformers always matches added special tokens; arq does in chat mode.
        let special = text.contains("<start_of_turn>");
        let mut ids = vec![bos];
        ids.extend(tok.encode(text, special));
        assert_eq!(ids, ids_of(&t["ids"]), "{name}");
    }
}

#[test]
fn next_token_and_greedy_continuation_match_reference() {
    let Some(m) = models() else { return };
    let model = Model::load(m.f32.bytes()).unwrap();
    let cfg = SessionConfig { ctx: 64, batch: 32, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let r = &reference()["next_token_top5"];
    let mut s = Session::new(&model, &mut arena, cfg).unwrap();
    let logits = s.prefill(&ids_of(&r["ids"])).unwrap();
    for (id, lp) in ids_of(&r["top5_ids"]).iter().zip(floats(&r["top5_logprobs"])) {
        let ours = math::log_prob(logits, *id as usize);
        assert!((ours - lp).abs() < 1e-3, "token {id}: {ours} vs {lp}");
    }
    let r = &reference()["greedy"];
    let expected = ids_of(&r["continuation_ids"]);
    let mut s = Session::new(&model, &mut arena, cfg).unwrap();
    let mut next = math::argmax(s.prefill(&ids_of(&r["ids"])).unwrap()) as u32;
    let mut out = vec![next];
    while out.len() < expected.len() {
        next = math::argmax(s.step(next).unwrap()) as u32;
        out.push(next);
    }
    assert_eq!(out, expected);
}

#[test]
fn the_sliding_window_shrinks_the_kv_cache() {
    let Some(m) = models() else { return };
    let model = Model::load(m.q8.bytes()).unwrap();
    let cfg = SessionConfig { ctx: 2048, batch: 32, threads: 1, ..Default::default() };
    let (windowed, full) = (model.kv_cache_bytes(&cfg, true).unwrap(), model.kv_cache_bytes(&cfg, false).unwrap());
    // 15 sliding layers of 512 + 31 rows and 3 global layers of 2048, 256 floats a row.
    assert_eq!(windowed, 2 * (15 * 543 + 3 * 2048) * 256 * 4);
    assert_eq!(full, 2 * 18 * 2048 * 256 * 4);
    let arena = model.memory_plan(&cfg).unwrap();
    eprintln!("ctx 2048: arena {arena} bytes, KV cache {windowed} bytes ({full} without the window)");
    assert_eq!(Session::new(&model, &mut vec![0u8; arena], cfg).err(), None);
}
