//! Every family as llama.cpp's own converter writes it: the tiny llama, qwen2, qwen3,
//! gemma3 and gpt2 of `models/tiny/` (built and trained with transformers' classes, saved
//! by `save_pretrained`, turned into GGUF by `convert_hf_to_gguf.py`; see
//! `models/tiny/README.md`), converted by arq and compared with transformers' f32 run of
//! the Hugging Face directory (`models/fixtures/tiny_<family>.json`): token ids,
//! per-token log-probs, argmaxes and the greedy continuation.

use std::path::PathBuf;

mod common;

use arq::{math, Model, Session, SessionConfig};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::gguf::text::read_gguf;
use arq_convert::quantize::Quant;
use common::{ids_of, teacher_forced};
use serde_json::Value;

const FAMILIES: [&str; 5] = ["llama", "qwen2", "qwen3", "gemma3", "gpt2"];

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn fixture(family: &str) -> Value {
    let path = root().join(format!("models/fixtures/tiny_{family}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The family's GGUF converted to `quant`.
fn convert(family: &str, quant: Quant) -> ModelBytes {
    let src = read_gguf(&root().join(format!("models/tiny/{family}/{family}-f32.gguf")), false).unwrap();
    ModelBytes::copy_of(&src.to_arq(quant, false).unwrap().0)
}

#[test]
fn every_family_from_llama_cpps_gguf_matches_transformers() {
    for family in FAMILIES {
        let r = fixture(family);
        let bytes = convert(family, Quant::F32);
        let model = Model::load(bytes.bytes()).unwrap();
        assert_eq!(model.config().family.name(), family);
        let tok = model.tokenizer().unwrap();
        let bos = r["tokenizer"]["adds_bos"].as_bool().unwrap().then(|| r["tokenizer"]["bos_id"].as_u64().unwrap());
        let mut worst = 0.0f64;
        for (name, t) in r["texts"].as_object().unwrap() {
            let want = ids_of(&t["ids"]);
            // transformers matches added special tokens in any text.
            let mut ids: Vec<u32> = bos.map(|b| b as u32).into_iter().collect();
            ids.extend(tok.encode(t["text"].as_str().unwrap(), true));
            assert_eq!(ids, want, "{family} {name}: token ids");
            // Passes of 7 tokens straddle the tiny gemma3's sliding window of 8.
            let (lps, top) = teacher_forced(&model, &want, 7, 1);
            let diff = lps
                .iter()
                .zip(t["logprobs"].as_array().unwrap())
                .map(|(a, b)| (a - b.as_f64().unwrap()).abs())
                .fold(0.0, f64::max);
            worst = worst.max(diff);
            assert!(diff < 1e-4, "{family} {name}: log-probs differ from transformers by up to {diff}");
            assert_eq!(top, ids_of(&t["argmax"]), "{family} {name}: argmax");
        }
        let g = &r["greedy"];
        let expected = ids_of(&g["continuation_ids"]);
        let cfg = SessionConfig { ctx: 64, batch: 4, threads: 1, ..Default::default() };
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        let mut s = Session::new(&model, &mut arena, cfg).unwrap();
        let mut next = math::argmax(s.prefill(&ids_of(&g["ids"])).unwrap()) as u32;
        let mut out = vec![next];
        while out.len() < expected.len() {
            next = math::argmax(s.step(next).unwrap()) as u32;
            out.push(next);
        }
        assert_eq!(out, expected, "{family}: greedy continuation");
        eprintln!("{family:<7} GGUF f32: max |log-prob diff| vs transformers {worst:.2e}, greedy equal");
    }
}

#[test]
fn every_family_converts_to_q8_and_q4_close_to_f32() {
    for family in FAMILIES {
        let r = fixture(family);
        let ids = ids_of(&r["texts"]["prose"]["ids"]);
        let f32 = convert(family, Quant::F32);
        let (want, _) = teacher_forced(&Model::load(f32.bytes()).unwrap(), &ids, 7, 1);
        let nll = |lps: &[f64]| -lps.iter().sum::<f64>() / lps.len() as f64;
        for quant in [Quant::Q8, Quant::Q4] {
            let bytes = convert(family, quant);
            let (lps, _) = teacher_forced(&Model::load(bytes.bytes()).unwrap(), &ids, 7, 1);
            let rel = nll(&lps) / nll(&want) - 1.0;
            eprintln!(
                "{family:<7} {}: mean NLL {:.4} vs f32 {:.4} ({:+.2}%)",
                quant.name(),
                nll(&lps),
                nll(&want),
                100.0 * rel
            );
            assert!(rel.abs() < 0.05, "{family} {}: mean NLL off by {:.2}%", quant.name(), 100.0 * rel);
        }
    }
}

/// A prompt's logits do not depend on how it is fed: token by token, in passes of 7
/// (attention by blocks of tokens per KV head, `attend_tokens`), or in one pass split
/// between 2 or 3 threads by work. Every family: GQA (llama, qwen2, qwen3), one KV head
/// with a sliding window (gemma3), no grouping (gpt2).
#[test]
fn every_family_gives_the_same_log_probs_however_a_prompt_is_fed() {
    for family in FAMILIES {
        let r = fixture(family);
        let bytes = convert(family, Quant::F32);
        let model = Model::load(bytes.bytes()).unwrap();
        for (name, t) in r["texts"].as_object().unwrap() {
            let ids = ids_of(&t["ids"]);
            let one = teacher_forced(&model, &ids, 1, 1);
            for (batch, threads) in [(7, 1), (ids.len(), 2), (ids.len(), 3)] {
                let got = teacher_forced(&model, &ids, batch, threads);
                let same = one.0.iter().zip(&got.0).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same && one.1 == got.1, "{family} {name}: batch {batch}, {threads} threads");
            }
        }
    }
}
