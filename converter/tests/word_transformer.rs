//! The `word_language_model` example's `TransformerModel` (`models/rnn/word-transformer.onnx`,
//! trained by `models/rnn/train.py`, exported by the legacy ONNX exporter) on the
//! `torch_encoder` family: per-token log-probs against PyTorch's
//! (`models/rnn/reference.json`, scored in the windows `arq score --ctx 256` uses), f32
//! within 1e-4 and q8 perplexity within 1 %; the CLI; refusals of variants arq does not
//! run.

mod common;
use common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arq::{Model, Session, SessionConfig};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::onnx::{convert_onnx, OnnxConvertOptions};
use arq_convert::quantize::Quant;
use prost::Message;
use tract_onnx::pb;

const MODEL: &str = "word-transformer";

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/rnn")
}

fn arq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq")).args(args).output().expect("run arq")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn reference() -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("reference.json")).unwrap()).unwrap();
    all[MODEL].clone()
}

fn paths() -> (PathBuf, PathBuf) {
    (models_dir().join(format!("{MODEL}.onnx")), models_dir().join(format!("{MODEL}.vocab.json")))
}

fn convert(quant: Quant, dir: &TempDir) -> ModelBytes {
    let out = dir.path(&format!("{MODEL}-{}.arq", quant.name()));
    let (input, vocab) = paths();
    let opts = OnnxConvertOptions { quant, force: false, head: None, vocab: Some(vocab) };
    convert_onnx(&input, &out, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    ModelBytes::map(&out).unwrap()
}

/// The test text's ids and the log-prob of every token after the first, scored as
/// `arq score --ctx ctx` does.
fn score(bytes: &ModelBytes, text: &str, ctx: usize) -> (Vec<u32>, Vec<f64>) {
    let model = Model::load(bytes.bytes()).unwrap();
    let tok = model.tokenizer().unwrap();
    let ids = arq_convert::recurrent::encode(&tok, text).unwrap();
    let cfg = SessionConfig { ctx, batch: 64, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut session = Session::new(&model, &mut arena, cfg).unwrap();
    let scored = arq_convert::text::score(&mut session, &ids).unwrap();
    (ids, scored.scored.iter().map(|s| s.logprob).collect())
}

fn perplexity(logprobs: &[f64]) -> f64 {
    (-logprobs.iter().sum::<f64>() / logprobs.len() as f64).exp()
}

#[test]
fn matches_pytorch_f32_within_1e4_and_q8_perplexity_within_1_percent() {
    let r = reference();
    let dir = TempDir::new("wlm-transformer");
    let text = std::fs::read_to_string(models_dir().join(r["test_file"].as_str().unwrap())).unwrap();
    let ctx = r["score_ctx"].as_u64().unwrap() as usize;
    let f32_bytes = convert(Quant::F32, &dir);
    let m = Model::load(f32_bytes.bytes()).unwrap();
    let c = m.config();
    // d = 100 padded to 128, 2 heads of 50 padded to 64, ffn 200 padded to 224.
    assert_eq!((c.family.name(), c.dim, c.norm_dim, c.head_dim, c.ffn_dim), ("torch_encoder", 128, 100, 64, 224));
    assert_eq!((c.n_layers, c.n_heads, c.ctx_train), (2, 2, 5000));

    let (ids, lp) = score(&f32_bytes, &text, ctx);
    assert_eq!(ids.len() as u64, r["test_tokens"].as_u64().unwrap(), "token count");
    let want_ids: Vec<u32> = r["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(ids[..want_ids.len()], want_ids[..], "ids differ from the example's Corpus");
    let want: Vec<f64> = r["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let worst = lp.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "f32 log-probs differ from PyTorch by up to {worst:e}");
    let (ppl, ppl_ref) = (perplexity(&lp), r["perplexity"].as_f64().unwrap());
    assert!(((ppl - ppl_ref) / ppl_ref).abs() < 1e-5, "f32 perplexity {ppl} vs PyTorch {ppl_ref}");

    let (_, lq) = score(&convert(Quant::Q8, &dir), &text, ctx);
    let ppl_q8 = perplexity(&lq);
    let rel = (ppl_q8 - ppl_ref) / ppl_ref;
    eprintln!("{MODEL}: perplexity PyTorch {ppl_ref:.4}, arq f32 {ppl:.4}, q8 {ppl_q8:.4} ({:+.3} %)", 100.0 * rel);
    assert!(rel.abs() < 0.01, "q8 perplexity {ppl_q8} is {:.2} % off PyTorch's {ppl_ref}", 100.0 * rel);
}

#[test]
fn cli_scores_generates_words_and_refuses_a_long_ctx() {
    let dir = TempDir::new("wlm-transformer-cli");
    let model = dir.path("t.arq");
    let (onnx, vocab) = paths();
    let o = arq(&["convert", s(&onnx), "--vocab", s(&vocab), "-o", s(&model), "--quant", "f32"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let r = reference();
    let text = models_dir().join(r["test_file"].as_str().unwrap());
    let o = arq(&["score", s(&model), s(&text), "--ctx", "256", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (ppl, ppl_ref) = (v["perplexity"].as_f64().unwrap(), r["perplexity"].as_f64().unwrap());
    assert!(((ppl - ppl_ref) / ppl_ref).abs() < 1e-5, "CLI perplexity {ppl} vs PyTorch {ppl_ref}");

    let o = arq(&["generate", s(&model), "-p", "the king", "-n", "30", "--seed", "7", "--ctx", "64"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("the king "), "{out:?}");
    assert!(!out.contains("<eos>") && !out.contains("kingthe"), "{out:?}");
    // Words joined by spaces, each <eos> a line end: 2 prompt words and 30 tokens.
    let tokens = out.split_whitespace().count() + out.matches('\n').count() - out.ends_with('\n') as usize;
    assert_eq!(tokens, 32, "{out:?}");

    let o = arq(&["generate", s(&model), "-p", "the king", "--ctx", "5001"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("5000"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Refusals

/// The model with its graph edited by `f`, converted through the CLI: the refusal's one
/// line (exit 1), no output written.
fn refusal(tag: &str, f: impl FnOnce(&mut pb::GraphProto)) -> String {
    let dir = TempDir::new(&format!("wlm-bad-{tag}"));
    let (onnx, vocab) = paths();
    let mut m = pb::ModelProto::decode(std::fs::read(onnx).unwrap().as_slice()).unwrap();
    f(m.graph.as_mut().unwrap());
    let input = dir.path("bad.onnx");
    std::fs::write(&input, m.encode_to_vec()).unwrap();
    let out = dir.path("bad.arq");
    let o = arq(&["convert", s(&input), "--vocab", s(&vocab), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{tag}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{tag}: {err}");
    assert!(!out.exists(), "{tag}: no output on a refusal");
    err
}

#[test]
fn another_mlp_activation_is_refused_naming_the_node() {
    let err = refusal("sigmoid", |g| {
        let n = g.node.iter_mut().find(|n| n.op_type == "Relu").unwrap();
        n.op_type = "Sigmoid".into();
    });
    assert!(err.contains("(Sigmoid ") && err.contains("must be Relu"), "{err}");
}

#[test]
fn pre_ln_blocks_are_refused_naming_the_node() {
    // norm_first=True: a LayerNormalization of the block input before the in-projection,
    // made here by normalizing the stream with the first block's norm1.
    let err = refusal("pre-ln", |g| {
        let first_matmul = g.node.iter().position(|n| n.op_type == "MatMul").unwrap();
        let stream = g.node[first_matmul].input[0].clone();
        let ln = g.node.iter().find(|n| n.op_type == "LayerNormalization").unwrap().clone();
        let mut pre = ln;
        pre.name = "pre_norm".into();
        pre.input[0] = stream.clone();
        pre.output = vec!["pre_norm_out".into()];
        g.node[first_matmul].input[0] = "pre_norm_out".into();
        g.node.insert(first_matmul, pre);
    });
    assert!(err.contains("LayerNormalization \"pre_norm\"") && err.contains("norm_first=True"), "{err}");
}

#[test]
fn a_transformer_graph_needs_its_vocabulary() {
    let dir = TempDir::new("wlm-novocab");
    let (onnx, _) = paths();
    let out = dir.path("t.arq");
    let o = arq(&["convert", s(&onnx), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--vocab"), "{err}");
}

// ---------------------------------------------------------------------------------------
// PyTorch's own exports of variants (`models/rnn/variants.py`, untrained, d = 32)

fn variant(name: &str) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    (dir.join(format!("wlm-transformer-{name}.onnx")), dir.join("wlm-transformer-variants.vocab.json"))
}

fn convert_variant(name: &str) -> Output {
    let dir = TempDir::new(&format!("wlm-variant-{name}"));
    let (onnx, vocab) = variant(name);
    let out = dir.path("v.arq");
    let o = arq(&["convert", s(&onnx), "--vocab", s(&vocab), "-o", s(&out), "--quant", "f32"]);
    assert_eq!(out.exists(), o.status.success(), "{name}: an output only on success");
    o
}

#[test]
fn an_untrained_export_with_shared_zero_biases_converts() {
    // Its equal biases are one initializer behind Identity nodes; the import's own check
    // against tract's run of the graph passes.
    let o = convert_variant("untrained");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("d = 32, 2 layers, 2 heads"), "{err}");
}

#[test]
fn pytorch_norm_first_and_gelu_exports_are_refused_naming_the_node() {
    for (name, want) in
        [("norm-first", &["(LayerNormalization ", "norm_first=True"][..]), ("gelu", &["(Div ", "must be Relu"][..])]
    {
        let o = convert_variant(name);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        assert!(want.iter().all(|w| err.contains(w)), "{name}: {err}");
    }
}
