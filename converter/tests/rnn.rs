//! Recurrent language models (`models/rnn`, trained after PyTorch's
//! `word_language_model` example and exported by its legacy ONNX exporter): the
//! vocabulary's ids and the runtime's per-token log-probs against PyTorch's
//! (`models/rnn/reference.json`), f32 within 1e-4 and q8 perplexity within 1 %; the
//! stacked LSTM, the one-layer GRU and the character LSTM; exact arena plans; the CLI;
//! and refusals of graphs arq does not run (bidirectional, peepholes, other activations).

mod common;
use common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arq::{Error, Rnn, RnnSession};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::onnx::{convert_onnx, OnnxConvertOptions};
use arq_convert::quantize::Quant;
use prost::Message;
use tract_onnx::pb;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/rnn")
}

fn arq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq")).args(args).output().expect("run arq")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn reference(model: &str) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("reference.json")).unwrap()).unwrap();
    all[model].clone()
}

fn opts(quant: Quant, vocab: Option<PathBuf>) -> OnnxConvertOptions {
    OnnxConvertOptions { quant, force: false, head: None, vocab }
}

/// `models/rnn/<model>.onnx` converted with its vocabulary, as 64-byte aligned bytes.
fn convert(model: &str, quant: Quant, dir: &TempDir) -> ModelBytes {
    convert_export(model, "onnx", quant, dir)
}

/// `models/rnn/<model>.<ext>` (`onnx`, or `dynamo.onnx` for the dynamo exporter's file).
fn convert_export(model: &str, ext: &str, quant: Quant, dir: &TempDir) -> ModelBytes {
    let out = dir.path(&format!("{model}-{ext}-{}.arq", quant.name()));
    let (input, vocab) =
        (models_dir().join(format!("{model}.{ext}")), models_dir().join(format!("{model}.vocab.json")));
    convert_onnx(&input, &out, &opts(quant, Some(vocab))).unwrap_or_else(|e| panic!("{model}: {e:#}"));
    ModelBytes::map(&out).unwrap()
}

/// The reference test text's ids, and every token's log-prob after the first.
fn run(bytes: &ModelBytes, text: &str) -> (Vec<u32>, Vec<f64>) {
    let model = Rnn::load(bytes.bytes()).unwrap();
    let tok = model.tokenizer().unwrap();
    let ids = arq_convert::recurrent::encode(&tok, text).unwrap();
    let mut arena = vec![0u8; model.memory_plan().unwrap()];
    let mut session = RnnSession::new(&model, &mut arena).unwrap();
    let scored = arq_convert::recurrent::score(&mut session, &ids).unwrap();
    (ids, scored.iter().map(|s| s.logprob).collect())
}

fn perplexity(logprobs: &[f64]) -> f64 {
    (-logprobs.iter().sum::<f64>() / logprobs.len() as f64).exp()
}

/// f32 per-token log-probs within 1e-4 of PyTorch, the same ids as the example's
/// `Corpus`, the test perplexity; q8 perplexity within 1 %.
fn check_against_pytorch(model: &str, cell: &str, layers: usize) {
    let r = reference(model);
    let dir = TempDir::new(&format!("rnn-{model}"));
    let text = std::fs::read_to_string(models_dir().join(r["test_file"].as_str().unwrap())).unwrap();
    let f32_bytes = convert(model, Quant::F32, &dir);
    let m = Rnn::load(f32_bytes.bytes()).unwrap();
    assert_eq!((m.config().cell.name(), m.config().layers), (cell, layers));

    let (ids, lp) = run(&f32_bytes, &text);
    assert_eq!(ids.len() as u64, r["test_tokens"].as_u64().unwrap(), "{model}: token count");
    let want_ids: Vec<u32> = r["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(ids[..want_ids.len()], want_ids[..], "{model}: ids differ from the example's Corpus");
    let want: Vec<f64> = r["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let worst = lp.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "{model}: f32 log-probs differ from PyTorch by up to {worst:e}");
    let (ppl, ppl_ref) = (perplexity(&lp), r["perplexity"].as_f64().unwrap());
    assert!(((ppl - ppl_ref) / ppl_ref).abs() < 1e-5, "{model}: f32 perplexity {ppl} vs PyTorch {ppl_ref}");

    let (_, lq) = run(&convert(model, Quant::Q8, &dir), &text);
    let ppl_q8 = perplexity(&lq);
    let rel = (ppl_q8 - ppl_ref) / ppl_ref;
    eprintln!("{model}: perplexity PyTorch {ppl_ref:.4}, arq f32 {ppl:.4}, q8 {ppl_q8:.4} ({:+.3} %)", 100.0 * rel);
    assert!(rel.abs() < 0.01, "{model}: q8 perplexity {ppl_q8} is {:.2} % off PyTorch's {ppl_ref}", 100.0 * rel);
}

/// The same character LSTM as PyTorch's dynamo exporter writes it: W and R assembled from
/// PyTorch's weights by Slice/Concat/Unsqueeze (folded at import), Y transposed and
/// reshaped instead of squeezed.
#[test]
fn char_lstm_from_the_dynamo_exporter_matches_pytorch() {
    let r = reference("char-lstm");
    let dir = TempDir::new("rnn-dynamo");
    let text = std::fs::read_to_string(models_dir().join(r["test_file"].as_str().unwrap())).unwrap();
    let (_, lp) = run(&convert_export("char-lstm", "dynamo.onnx", Quant::F32, &dir), &text);
    let want: Vec<f64> = r["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let worst = lp.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "dynamo export: f32 log-probs differ from PyTorch by up to {worst:e}");
    let (ppl, ppl_ref) = (perplexity(&lp), r["perplexity"].as_f64().unwrap());
    assert!(((ppl - ppl_ref) / ppl_ref).abs() < 1e-5, "dynamo export: perplexity {ppl} vs PyTorch {ppl_ref}");
}

#[test]
fn word_lstm_two_layers_matches_pytorch() {
    check_against_pytorch("word-lstm", "lstm", 2);
}

#[test]
fn word_gru_matches_pytorch() {
    check_against_pytorch("word-gru", "gru", 1);
}

#[test]
fn char_lstm_matches_pytorch() {
    check_against_pytorch("char-lstm", "lstm", 2);
}

/// Widths 50 and 40 are stored padded to 64 with zeros, which changes no output; the
/// ONNX `RNN` op with `Relu`.
#[test]
fn padded_relu_rnn_matches_pytorch() {
    check_against_pytorch("word-rnn-relu", "rnn_relu", 2);
    let dir = TempDir::new("rnn-padded");
    let bytes = convert("word-rnn-relu", Quant::F32, &dir);
    let c = *Rnn::load(bytes.bytes()).unwrap().config();
    assert_eq!((c.embed, c.hidden, c.vocab), (64, 64, 1000));
}

#[test]
fn the_arena_is_the_state_and_one_steps_scratch() {
    let dir = TempDir::new("rnn-arena");
    let bytes = convert("word-lstm", Quant::Q8, &dir);
    let model = Rnn::load(bytes.bytes()).unwrap();
    let c = *model.config();
    assert_eq!((c.vocab, c.embed, c.hidden, c.layers), (3000, 64, 64, 2));
    let need = model.memory_plan().unwrap();
    // 63 alignment bytes; state 2 layers x (h, c) x 64 f32; x 64 f32; 2 q8 blocks;
    // gates 2 x 256 f32; logits 3000 f32 (each buffer padded to 64 bytes).
    assert_eq!(need, 63 + 1024 + 256 + 128 + 1024 + 1024 + 12032);
    let mut arena = vec![0u8; need];
    assert!(RnnSession::new(&model, &mut arena).is_ok());
    let mut short = vec![0u8; need - 1];
    assert_eq!(RnnSession::new(&model, &mut short).err(), Some(Error::ArenaTooSmall { need, have: need - 1 }));
    // The state does not grow: a long text runs in the same arena.
    let mut session = RnnSession::new(&model, &mut arena).unwrap();
    for i in 0..5000 {
        session.step(i % 3000).unwrap();
    }
    assert_eq!(session.pos(), 5000);
    assert_eq!(session.step(3000).err(), Some(Error::TokenOutOfRange { id: 3000, vocab: 3000 }));
}

#[test]
fn cli_scores_generates_and_refuses_ctx() {
    let dir = TempDir::new("rnn-cli");
    let model = dir.path("lstm.arq");
    let (onnx, vocab) = (models_dir().join("word-lstm.onnx"), models_dir().join("word-lstm.vocab.json"));
    let o = arq(&["convert", s(&onnx), "--vocab", s(&vocab), "-o", s(&model), "--quant", "f32"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let r = reference("word-lstm");
    let text = models_dir().join(r["test_file"].as_str().unwrap());
    let o = arq(&["score", s(&model), s(&text), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (ppl, ppl_ref) = (v["perplexity"].as_f64().unwrap(), r["perplexity"].as_f64().unwrap());
    assert!(((ppl - ppl_ref) / ppl_ref).abs() < 1e-5, "CLI perplexity {ppl} vs PyTorch {ppl_ref}");
    assert_eq!(v["level"], "word");

    let o = arq(&["generate", s(&model), "-p", "the king", "-n", "30", "--seed", "7"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("the king "), "{out:?}");
    // The prompt and 30 tokens: words joined by spaces, each <eos> a line end (and the
    // final line end of the output).
    let tokens = out.split_whitespace().count() + out.matches('\n').count() - 1;
    assert_eq!(tokens, 32, "{out:?}");
    assert!(!out.contains("<eos>"));
    let again = arq(&["generate", s(&model), "-p", "the king", "-n", "30", "--seed", "7"]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), out, "the same seed gives the same words");

    let o = arq(&["next", s(&model), "-p", "my lord", "--json", "--top", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["top"].as_array().unwrap().len(), 3);

    for args in [
        vec!["score", s(&model), s(&text), "--ctx", "64"],
        vec!["generate", s(&model), "--chat", "-p", "hi"],
        vec!["generate", s(&model), "--kv", "q8"],
    ] {
        let o = arq(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn char_vocabulary_refuses_an_unknown_character() {
    let dir = TempDir::new("rnn-chars");
    let model = dir.path("chars.arq");
    let (onnx, vocab) = (models_dir().join("char-lstm.onnx"), models_dir().join("char-lstm.vocab.json"));
    let o = arq(&["convert", s(&onnx), "--vocab", s(&vocab), "-o", s(&model)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = arq(&["next", s(&model), "-p", "To be, or not"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = arq(&["next", s(&model), "-p", "snow ☃"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("char \"☃\" is not in the model's vocabulary"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Refusals

fn load_proto(path: &Path) -> pb::ModelProto {
    pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

/// The word LSTM with its first LSTM node edited by `f`, converted through the CLI: the
/// refusal's one line (exit 1).
fn refusal(tag: &str, f: impl FnOnce(&mut pb::NodeProto)) -> String {
    let dir = TempDir::new(&format!("rnn-bad-{tag}"));
    let mut m = load_proto(&models_dir().join("word-lstm.onnx"));
    let node = m.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == "LSTM").unwrap();
    f(node);
    let input = dir.path("bad.onnx");
    std::fs::write(&input, m.encode_to_vec()).unwrap();
    let out = dir.path("bad.arq");
    let vocab = models_dir().join("word-lstm.vocab.json");
    let o = arq(&["convert", s(&input), "--vocab", s(&vocab), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{tag}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{tag}: {err}");
    assert!(!out.exists(), "{tag}: no output on a refusal");
    err
}

fn string_attr(name: &str, values: &[&str]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 8, // STRINGS
        strings: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

#[test]
fn bidirectional_lstm_is_refused() {
    let err = refusal("bidirectional", |n| {
        n.attribute.push(pb::AttributeProto {
            name: "direction".into(),
            r#type: 3, // STRING
            s: b"bidirectional".to_vec(),
            ..Default::default()
        })
    });
    assert!(err.contains("direction 'bidirectional' is not supported (only forward)"), "{err}");
    assert!(err.contains("LSTM"), "the line names the node: {err}");
}

#[test]
fn peephole_lstm_is_refused() {
    let err = refusal("peephole", |n| {
        while n.input.len() < 7 {
            n.input.push(String::new());
        }
        n.input.push("encoder.weight".into());
    });
    assert!(err.contains("peephole weights (input P) are not supported"), "{err}");
}

#[test]
fn unsupported_activation_is_refused() {
    let err = refusal("activation", |n| n.attribute.push(string_attr("activations", &["Sigmoid", "Relu", "Tanh"])));
    assert!(err.contains("activations [\"sigmoid\", \"relu\", \"tanh\"] are not supported"), "{err}");
}

#[test]
fn a_recurrent_graph_needs_its_vocabulary() {
    let dir = TempDir::new("rnn-novocab");
    let out = dir.path("m.arq");
    let o = arq(&["convert", s(&models_dir().join("word-lstm.onnx")), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--vocab"), "{err}");
    // A vocabulary of another size.
    let vocab = dir.path("v.json");
    std::fs::write(&vocab, r#"{"level": "word", "tokens": ["a", "b"]}"#).unwrap();
    let o = arq(&["convert", s(&models_dir().join("word-lstm.onnx")), "--vocab", s(&vocab), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("2 tokens, but the model's embedding has 3000 rows"), "{err}");
}

#[test]
fn bench_times_a_recurrent_step() {
    let model = models_dir().join("char-lstm-q8.arq");
    let o = arq(&["bench", s(&model), "--prompt-tokens", "16", "--gen-tokens", "8", "--reps", "2", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["architecture"].as_str(), v["prompt_tokens"].as_u64(), v["gen_tokens"].as_u64()),
        (Some("rnn"), Some(16), Some(8))
    );
    for key in ["prompt_tokens_per_s", "gen_tokens_per_s", "prompt_us_per_step", "gen_us_per_step"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0 && x.is_finite()), "{key}: {v}");
    }
    // The state of a 2-layer LSTM of 128 (h and c, f32) and the pinned arena.
    assert_eq!((v["state_bytes"].as_u64(), v["arena_bytes"].as_u64()), (Some(2048), Some(7295)));
    let o = arq(&["bench", s(&model)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("µs/step"));
    for args in [vec!["bench", s(&model), "--backend", "gpu"], vec!["bench", s(&model), "--prompt-tokens", "1"]] {
        let o = arq(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
