//! ONNX GPT-2 import with the trained character model `models/tinygpt`: the converted
//! tensors against the ONNX initializers, q8 against f32, tract against the PyTorch
//! reference logits, the runtime against tract and the held-out perplexity, the
//! committed `.arq` files, accepted graph variants, and refusals of graphs that do not
//! fit the pattern.

mod common;
use common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arq::format::{ArqFile, Dtype};
use arq::tokenizer::Tokenizer;
use arq::{KvDtype, Model, Session, SessionConfig};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::onnx::{convert_onnx, tract_logits, Gpt2Source, OnnxConvertOptions};
use arq_convert::quantize::Quant;
use prost::Message;
use tract_onnx::pb;

const D: usize = 96;
const LAYERS: usize = 4;
const FFN: usize = 384;
const VOCAB: usize = 78;
const CTX: usize = 64;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tinygpt")
}

fn model_path() -> PathBuf {
    models_dir().join("tinygpt.onnx")
}

fn arq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arq")).args(args).output().expect("run arq")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn opts(quant: Quant) -> OnnxConvertOptions {
    OnnxConvertOptions { quant, force: false, head: None, vocab: None }
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(models_dir().join("reference.json")).unwrap()).unwrap()
}

/// The `.arq` bytes of a conversion, 64-byte aligned as the reader requires.
fn arq_bytes(path: &Path, quant: Quant) -> ModelBytes {
    ModelBytes::copy_of(&Gpt2Source::from_onnx(path).unwrap().to_arq(quant).unwrap().0)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------------
// The ONNX side

fn load_proto(path: &Path) -> pb::ModelProto {
    pb::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn save_proto(m: &pb::ModelProto, path: &Path) {
    std::fs::write(path, m.encode_to_vec()).unwrap();
}

fn graph(m: &mut pb::ModelProto) -> &mut pb::GraphProto {
    m.graph.as_mut().unwrap()
}

/// An initializer's values as f32 (f32 or f16 data) and its dims.
fn init_values(m: &pb::ModelProto, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == name).unwrap();
    let dims = t.dims.iter().map(|&d| d as usize).collect();
    let v = match t.data_type {
        1 => t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        10 => t.raw_data.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        other => panic!("{name}: data type {other}"),
    };
    (dims, v)
}

fn f32_init(name: &str, dims: &[usize], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: 1,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn set_init(m: &mut pb::ModelProto, t: pb::TensorProto) {
    let g = graph(m);
    let i = g.initializer.iter().position(|x| x.name == t.name).unwrap();
    g.initializer[i] = t;
}

/// The name of the scalar f32 initializer with value `v` (within 1e-6 relative).
fn scalar_named(m: &pb::ModelProto, v: f32) -> String {
    let g = m.graph.as_ref().unwrap();
    g.initializer
        .iter()
        .find(|t| {
            t.data_type == 1 && t.raw_data.len() == 4 && {
                let x = f32::from_le_bytes(t.raw_data[..].try_into().unwrap());
                ((x - v) / v).abs() < 1e-6
            }
        })
        .unwrap_or_else(|| panic!("no scalar {v}"))
        .name
        .clone()
}

fn transpose(w: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = w[i * c + j];
        }
    }
    out
}

fn set_meta(m: &mut pb::ModelProto, key: &str, value: Option<&str>) {
    m.metadata_props.retain(|e| e.key != key);
    if let Some(v) = value {
        m.metadata_props.push(pb::StringStringEntryProto { key: key.into(), value: v.into() });
    }
}

// ---------------------------------------------------------------------------------------
// The .arq side

fn f32s<'a>(f: &ArqFile<'a>, name: &str) -> &'a [f32] {
    let (_, t) = f.find(name).unwrap_or_else(|| panic!("no tensor {name}"));
    assert_eq!(t.dtype, Dtype::F32, "{name}");
    t.as_f32().unwrap()
}

fn expected_tensor_names() -> Vec<String> {
    let mut v: Vec<String> =
        ["token_embd", "position_embd", "output_norm", "output_norm.bias", "tokenizer"].map(String::from).into();
    for l in 0..LAYERS {
        for role in ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_up", "ffn_down"] {
            v.push(format!("blk.{l}.{role}"));
            v.push(format!("blk.{l}.{role}.bias"));
        }
    }
    v
}

/// (a) The f32 file holds the ONNX initializers exactly: matrices transposed to
/// `(out, in)`, the qkv split by rows; metadata, tensor order and tokenizer per FORMAT.md.
#[test]
fn f32_tensors_are_the_onnx_initializers() {
    let dir = TempDir::new("f32");
    let out = dir.path("t.arq");
    let summary = convert_onnx(&model_path(), &out, &opts(Quant::F32)).unwrap();
    println!("{}", summary.description);
    assert_eq!(
        summary.description,
        "GPT-2, d = 96, 4 layers, 4 heads (head_dim 24), ffn 384, vocab 78 (characters), context 64, LayerNorm eps \
         1e-5, tied head"
    );
    assert!(summary.tensor_errors.is_empty());
    let bytes = ModelBytes::map(&out).unwrap();
    assert_eq!(summary.bytes, bytes.bytes().len() as u64);
    let f = ArqFile::parse(bytes.bytes()).unwrap();
    f.verify_checksum().unwrap();

    // Metadata.
    assert_eq!(f.meta_str("arq.architecture").unwrap(), "gpt2");
    assert_eq!(f.meta_str("arq.quant").unwrap(), "f32");
    assert_eq!(f.meta_str("general.name").unwrap(), "tinygpt");
    assert_eq!(f.meta_str("general.source").unwrap(), "tinygpt.onnx");
    assert_eq!(f.meta_u64("gpt2.vocab_size").unwrap(), VOCAB as u64);
    assert_eq!(f.meta_u64("gpt2.context_length").unwrap(), CTX as u64);
    assert_eq!(f.meta_u64("gpt2.embedding_length").unwrap(), D as u64);
    assert_eq!(f.meta_u64("gpt2.block_count").unwrap(), LAYERS as u64);
    assert_eq!(f.meta_u64("gpt2.feed_forward_length").unwrap(), FFN as u64);
    assert_eq!(f.meta_u64("gpt2.attention.head_count").unwrap(), 4);
    assert_eq!(f.meta_f32("gpt2.attention.layer_norm_epsilon").unwrap(), 1e-5);
    assert_eq!(f.meta_str("tokenizer.model").unwrap(), "gpt2");
    assert_eq!(f.meta("tokenizer.add_bos").and_then(|v| v.as_bool()), Some(false));

    // Tensor order: no `output` (tied).
    let names: Vec<&str> = f.tensors().map(|t| t.name).collect();
    assert_eq!(names, expected_tensor_names());

    let m = load_proto(&model_path());
    let init = |name: &str| init_values(&m, name).1;
    assert_eq!(f32s(&f, "token_embd"), &init("tok_emb.weight")[..]);
    assert_eq!(f.find("token_embd").unwrap().1.shape.dims(), [VOCAB as u64, D as u64]);
    assert_eq!(f32s(&f, "position_embd"), &init("pos_emb.weight")[..]);
    assert_eq!(f.find("position_embd").unwrap().1.shape.dims(), [CTX as u64, D as u64]);
    assert_eq!(f32s(&f, "output_norm"), &init("ln_f.weight")[..]);
    assert_eq!(f32s(&f, "output_norm.bias"), &init("ln_f.bias")[..]);
    for l in 0..LAYERS {
        let b = |s: &str| format!("blocks.{l}.{s}");
        let t = |s: &str| format!("blk.{l}.{s}");
        assert_eq!(f32s(&f, &t("attn_norm")), &init(&b("ln_1.weight"))[..]);
        assert_eq!(f32s(&f, &t("attn_norm.bias")), &init(&b("ln_1.bias"))[..]);
        assert_eq!(f32s(&f, &t("ffn_norm")), &init(&b("ln_2.weight"))[..]);
        assert_eq!(f32s(&f, &t("ffn_norm.bias")), &init(&b("ln_2.bias"))[..]);
        // ONNX MatMul B is (in, out).
        let (dims, qkv) = init_values(&m, &b("attn.qkv.weight"));
        assert_eq!(dims, [D, 3 * D]);
        let qkv = transpose(&qkv, D, 3 * D);
        let qkv_bias = init(&b("attn.qkv.bias"));
        for (j, role) in ["attn_q", "attn_k", "attn_v"].iter().enumerate() {
            assert_eq!(f32s(&f, &t(role)), &qkv[j * D * D..(j + 1) * D * D], "layer {l} {role}");
            assert_eq!(f.find(&t(role)).unwrap().1.shape.dims(), [D as u64, D as u64]);
            assert_eq!(f32s(&f, &t(&format!("{role}.bias"))), &qkv_bias[j * D..(j + 1) * D]);
        }
        for (role, src, rows, cols) in
            [("attn_output", "attn.proj", D, D), ("ffn_up", "mlp.fc", FFN, D), ("ffn_down", "mlp.fc2", D, FFN)]
        {
            let w = transpose(&init(&b(&format!("{src}.weight"))), cols, rows);
            assert_eq!(f32s(&f, &t(role)), &w[..], "layer {l} {role}");
            assert_eq!(f.find(&t(role)).unwrap().1.shape.dims(), [rows as u64, cols as u64]);
            assert_eq!(f32s(&f, &t(&format!("{role}.bias"))), &init(&b(&format!("{src}.bias")))[..]);
        }
    }

    // The tokenizer: one token per character of arq.vocab, in id order.
    let vocab: String = serde_json::from_str(reference()["onnx_metadata"]["arq.vocab"].as_str().unwrap()).unwrap();
    let (_, blob) = f.find("tokenizer").unwrap();
    let tok = Tokenizer::from_blob(blob.data).unwrap();
    assert_eq!(tok.vocab_size() as usize, VOCAB);
    for (id, c) in vocab.chars().enumerate() {
        assert_eq!(tok.token_bytes(id as u32).unwrap(), [c as u8], "id {id}");
    }
    let text = "The teacher asked.\nThen she said: \"Yes, 42%!\"";
    let text = text.replace('!', "?");
    let ids = tok.encode(&text, false);
    let want: Vec<u32> = text.chars().map(|c| vocab.find(c).unwrap() as u32).collect();
    assert_eq!(ids, want);
    assert_eq!(tok.decode(&ids), text);
    let r = reference();
    let ref_ids: Vec<u32> =
        r["logits"][0]["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(tok.encode(r["logits"][0]["prompt"].as_str().unwrap(), false), ref_ids);
}

/// Dequantizes a q8 tensor.
fn q8_values(f: &ArqFile, name: &str) -> Vec<f32> {
    let (_, t) = f.find(name).unwrap();
    assert_eq!(t.dtype, Dtype::Q8, "{name}");
    let blocks = t.as_q8().unwrap();
    let mut v = vec![0.0f32; blocks.len() * 32];
    arq::quant::dequantize_row_q8(blocks, &mut v);
    v
}

/// (b) q8: every matrix within the q8 bound of its f32 values (half a step, plus the f16
/// rounding of the scale at the block maximum); norms and biases unchanged. q4: the
/// layer matrices q4, the embeddings q8.
#[test]
fn q8_and_q4_tensors_stay_within_their_bounds() {
    let path = model_path();
    let f32_bytes = arq_bytes(&path, Quant::F32);
    let q8_bytes = arq_bytes(&path, Quant::Q8);
    let (ff, fq) = (ArqFile::parse(f32_bytes.bytes()).unwrap(), ArqFile::parse(q8_bytes.bytes()).unwrap());
    assert_eq!(fq.meta_str("arq.quant").unwrap(), "q8");
    let mut worst = 0.0f32;
    for t in ff.tensors() {
        if t.name == "tokenizer" {
            assert_eq!(fq.find("tokenizer").unwrap().1.data, t.data);
            continue;
        }
        let exact = t.as_f32().unwrap();
        if t.shape.dims().len() == 1 {
            assert_eq!(f32s(&fq, t.name), exact, "{}", t.name);
            continue;
        }
        let (_, qt) = fq.find(t.name).unwrap();
        assert_eq!(qt.shape.dims(), t.shape.dims());
        let deq = q8_values(&fq, t.name);
        for (b, (x, y)) in exact.chunks(32).zip(deq.chunks(32)).enumerate() {
            let scale = half::f16::from_le_bytes(qt.as_q8().unwrap()[b].d).to_f32();
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let bound = 0.5 * scale + amax / 2048.0 + 1e-7;
            let err = max_abs_diff(x, y);
            worst = worst.max(err / amax.max(1e-30));
            assert!(err <= bound, "{} block {b}: q8 error {err} over {bound}", t.name);
        }
    }
    println!("q8: worst block error relative to the block maximum {worst:.5}");

    let q4_bytes = arq_bytes(&path, Quant::Q4);
    let f4 = ArqFile::parse(q4_bytes.bytes()).unwrap();
    assert_eq!(f4.meta_str("arq.quant").unwrap(), "q4");
    for t in f4.tensors() {
        let want = match t.name {
            "token_embd" | "position_embd" => Dtype::Q8,
            "tokenizer" => Dtype::U8,
            n if t.shape.dims().len() == 2 => {
                assert!(n.starts_with("blk."), "{n}");
                Dtype::Q4
            }
            _ => Dtype::F32,
        };
        assert_eq!(t.dtype, want, "{}", t.name);
    }
}

/// (c) tract runs the ONNX model and its logits equal the PyTorch f32 reference logits in
/// `reference.json` within 1e-4: the reference the runtime is compared with is pinned.
#[test]
fn tract_matches_the_pytorch_reference() {
    let r = reference();
    let mut worst = 0.0f32;
    for case in r["logits"].as_array().unwrap() {
        let ids: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let logits = tract_logits(&model_path(), &ids).unwrap();
        assert_eq!(logits.len(), ids.len() * VOCAB);
        for (pos, want) in case["logits_f32"].as_array().unwrap().iter().enumerate() {
            let want: Vec<f32> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let d = max_abs_diff(&logits[pos * VOCAB..(pos + 1) * VOCAB], &want);
            worst = worst.max(d);
        }
    }
    println!("tract vs PyTorch f32 reference logits: max |diff| {worst:.2e}");
    assert!(worst < 1e-4, "tract vs PyTorch: {worst}");
}

/// Logits of every position of `ids` from the runtime, `(ids.len(), vocab)`: one
/// `forward_all` pass, or one `step` per token (`stepwise`).
fn arq_logits(model: &Model, ids: &[u32], stepwise: bool) -> Vec<f32> {
    let cfg = SessionConfig { ctx: CTX, batch: 32, threads: 1, kv: KvDtype::F32, seqs: 1 };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut session = Session::new(model, &mut arena, cfg).unwrap();
    let mut out = Vec::with_capacity(ids.len() * VOCAB);
    if stepwise {
        for &id in ids {
            out.extend_from_slice(session.step(id).unwrap());
        }
    } else {
        session.forward_all(ids, |_, logits| out.extend_from_slice(logits)).unwrap();
    }
    out
}

/// (e) The runtime on the converted f32 file computes tract's logits (within 1e-4) on
/// the reference windows, in one pass and step by step; and the q8 file's.
#[test]
fn runtime_logits_match_tract() {
    let r = reference();
    let f32_bytes = ModelBytes::map(&models_dir().join("tinygpt-f32.arq")).unwrap();
    let q8_bytes = ModelBytes::map(&models_dir().join("tinygpt-q8.arq")).unwrap();
    let (m32, m8) = (Model::load(f32_bytes.bytes()).unwrap(), Model::load(q8_bytes.bytes()).unwrap());
    let (mut d_all, mut d_step, mut d_torch, mut d_q8) = (0f32, 0f32, 0f32, 0f32);
    for case in r["logits"].as_array().unwrap() {
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        let tract = tract_logits(&model_path(), &ids64).unwrap();
        let all = arq_logits(&m32, &ids, false);
        let step = arq_logits(&m32, &ids, true);
        d_all = d_all.max(max_abs_diff(&all, &tract));
        d_step = d_step.max(max_abs_diff(&step, &tract));
        d_q8 = d_q8.max(max_abs_diff(&arq_logits(&m8, &ids, false), &tract));
        for (pos, want) in case["logits_f32"].as_array().unwrap().iter().enumerate() {
            let want: Vec<f32> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            d_torch = d_torch.max(max_abs_diff(&all[pos * VOCAB..(pos + 1) * VOCAB], &want));
        }
    }
    println!(
        "arq f32 vs tract, max |logit diff| over 2 windows x 16 positions: forward_all {d_all:.2e}, step {d_step:.2e}; \
         vs PyTorch (first 3 positions) {d_torch:.2e}; arq q8 vs tract {d_q8:.3}"
    );
    assert!(d_all < 1e-4, "forward_all vs tract: {d_all}");
    assert!(d_step < 1e-4, "step vs tract: {d_step}");
    assert!(d_torch < 1e-4, "vs PyTorch: {d_torch}");
}

/// (e) `arq score` over the held-out text (ctx 64, stride 32, like `reference.json`):
/// f32 gives PyTorch's bits/char, q8 stays within 2% of f32 in perplexity.
#[test]
fn heldout_perplexity_q8_within_two_percent_of_f32() {
    let heldout = models_dir().join("heldout.txt");
    let score = |quant: &str, kv: &str| -> serde_json::Value {
        let model = models_dir().join(format!("tinygpt-{quant}.arq"));
        let o = arq(&["score", s(&model), s(&heldout), "--ctx", "64", "--kv", kv, "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (f, q, qq) = (score("f32", "f32"), score("q8", "f32"), score("q8", "q8"));
    let torch = reference()["heldout_bits_per_char"]["f32"].as_f64().unwrap();
    let bpc = |v: &serde_json::Value| v["bits_per_token"].as_f64().unwrap();
    let ppl = |v: &serde_json::Value| v["perplexity"].as_f64().unwrap();
    for v in [&f, &q, &qq] {
        assert_eq!(v["tokens"], 12406);
        assert_eq!(v["windows"]["stride"], 32);
    }
    let change = ppl(&q) / ppl(&f) - 1.0;
    println!(
        "held-out bits/char: PyTorch f32 {torch:.5}, arq f32 {:.5}, arq q8 {:.5} (perplexity {:+.3}%), arq q8 with a q8 \
         KV cache {:.5}",
        bpc(&f),
        bpc(&q),
        100.0 * change,
        bpc(&qq)
    );
    assert!((bpc(&f) - torch).abs() < 1e-4, "arq f32 {} vs PyTorch {torch}", bpc(&f));
    assert!(change.abs() < 0.02, "q8 perplexity {} vs f32 {}", ppl(&q), ppl(&f));
    assert!((ppl(&qq) / ppl(&f) - 1.0).abs() < 0.02, "q8 + q8 KV perplexity {}", ppl(&qq));
}

/// `models/tinygpt/convert.sh` wrote the committed files with this converter.
#[test]
fn committed_arq_files_are_what_the_converter_writes() {
    let dir = TempDir::new("reconvert");
    for quant in ["f32", "q8"] {
        let out = dir.path(&format!("tinygpt-{quant}.arq"));
        let o = arq(&["convert", s(&model_path()), "-o", s(&out), "--quant", quant]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("GPT-2, d = 96, 4 layers"), "{err}");
        let fresh = std::fs::read(&out).unwrap();
        let committed = std::fs::read(models_dir().join(format!("tinygpt-{quant}.arq"))).unwrap();
        assert!(fresh == committed, "tinygpt-{quant}.arq is stale: rerun models/tinygpt/convert.sh");
    }
}

// ---------------------------------------------------------------------------------------
// Variants and refusals

/// Converting `m` (saved as `tinygpt.onnx`, so `general.source` matches) gives the
/// original model's f32 bytes.
fn converts_like_the_original(tag: &str, m: &pb::ModelProto) {
    let dir = TempDir::new(tag);
    let input = dir.path("tinygpt.onnx");
    save_proto(m, &input);
    let out = dir.path("out.arq");
    convert_onnx(&input, &out, &opts(Quant::F32)).unwrap_or_else(|e| panic!("{tag}: {e:#}"));
    assert!(std::fs::read(&out).unwrap() == arq_bytes(&model_path(), Quant::F32).bytes(), "{tag}: different file");
}

#[test]
fn accepts_graph_variants() {
    let original = load_proto(&model_path());
    // No arq.head_count / context / epsilon metadata: taken from the graph.
    let mut m = original.clone();
    for k in ["arq.head_count", "arq.context_length", "arq.layer_norm_epsilon"] {
        set_meta(&mut m, k, None);
    }
    converts_like_the_original("no-meta", &m);

    // f32 matrices, no Cast (the Cast nodes become Identity).
    let mut m = original.clone();
    let matrices: Vec<String> = original
        .graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .filter(|t| t.data_type == 10)
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(matrices.len(), 18);
    for name in &matrices {
        let (dims, v) = init_values(&original, name);
        set_init(&mut m, f32_init(name, &dims, &v));
    }
    for n in graph(&mut m).node.iter_mut().filter(|n| n.op_type == "Cast") {
        n.op_type = "Identity".into();
        n.attribute.clear();
    }
    converts_like_the_original("f32-identity", &m);

    // f64 matrices through Cast.
    let mut m = original.clone();
    for name in &matrices {
        let (dims, v) = init_values(&original, name);
        let t = pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: 11,
            raw_data: v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
            ..Default::default()
        };
        set_init(&mut m, t);
    }
    converts_like_the_original("f64", &m);

    // Gemm in place of MatMul + bias Add.
    let mut m = original.clone();
    let g = graph(&mut m);
    let mut i = 0;
    let mut gemms = 0;
    while i + 1 < g.node.len() {
        let (a, b) = (&g.node[i], &g.node[i + 1]);
        let bias = b.input.get(1).filter(|x| x.ends_with(".bias")).cloned();
        let linear = a.op_type == "MatMul" && b.op_type == "Add" && b.input[0] == a.output[0];
        if let (true, Some(bias)) = (linear, bias) {
            let gemm = pb::NodeProto {
                op_type: "Gemm".into(),
                name: format!("{}/Gemm", a.name),
                input: vec![a.input[0].clone(), a.input[1].clone(), bias],
                output: b.output.clone(),
                ..Default::default()
            };
            g.node.splice(i..i + 2, [gemm]);
            gemms += 1;
        }
        i += 1;
    }
    assert_eq!(gemms, 16);
    converts_like_the_original("gemm", &m);

    // The head as a separate constant equal to tok_emb^T (the exporter folded the
    // Transpose): still tied.
    let mut m = original.clone();
    let (_, tok) = init_values(&original, "tok_emb.weight");
    let head_t = transpose(&tok, VOCAB, D);
    let g = graph(&mut m);
    let t = g.node.iter().position(|n| n.op_type == "Transpose" && n.input[0] == "tok_emb.weight_f32").unwrap();
    let t_out = g.node[t].output[0].clone();
    g.node.remove(t);
    g.initializer.push(f32_init(&t_out, &[D, VOCAB], &head_t));
    converts_like_the_original("folded-head", &m);

    // An untied head: `output` holds it, (vocab, d).
    let head: Vec<f32> = head_t.iter().enumerate().map(|(j, &x)| x + (j % 7) as f32 * 0.01).collect();
    set_init(&mut m, f32_init(&t_out, &[D, VOCAB], &head));
    let src = Gpt2Source::from_proto(Path::new("tinygpt.onnx"), &m).unwrap();
    assert!(src.describe().ends_with("untied head"), "{}", src.describe());
    let bytes = ModelBytes::copy_of(&src.to_arq(Quant::F32).unwrap().0);
    let f = ArqFile::parse(bytes.bytes()).unwrap();
    assert_eq!(f32s(&f, "output"), &transpose(&head, D, VOCAB)[..]);
    let names: Vec<&str> = f.tensors().map(|t| t.name).collect();
    assert_eq!(names[4..6], ["output", "tokenizer"]);
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn i64_init(name: &str, dims: &[i64], v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 7,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// Replaces the nodes named `names` (consecutive) by `with`.
fn replace_nodes(m: &mut pb::ModelProto, names: &[&str], with: Vec<pb::NodeProto>) {
    let g = graph(m);
    let i = g.node.iter().position(|n| n.name == names[0]).unwrap();
    for (j, name) in names.iter().enumerate() {
        assert_eq!(g.node[i + j].name, *name);
    }
    g.node.splice(i..i + names.len(), with);
}

/// More rewrites that compute the same function: positions by Range + Gather, a
/// Dropout, the qkv cut by one Split, a `Gelu(approximate = "tanh")` node, the mask
/// negated with `Where(not_mask, scores, -inf)`, the scale after the mask.
#[test]
fn accepts_equivalent_rewrites() {
    let mut m = load_proto(&model_path());
    graph(&mut m).initializer.extend([
        f32_init("test_zero", &[], &[0.0]),
        f32_init("test_one_f", &[], &[1.0]),
        i64_init("test_zero_i", &[], &[0]),
        i64_init("test_one_i", &[], &[1]),
        i64_init("test_axis0", &[1], &[0]),
        i64_init("test_split", &[3], &[96, 96, 96]),
    ]);
    let s =
        |name: &str, v: &str| pb::AttributeProto { name: name.into(), r#type: 3, s: v.into(), ..Default::default() };
    let i = |name: &str, v: i64| pb::AttributeProto { name: name.into(), r#type: 2, i: v, ..Default::default() };
    // pos_emb[0:T] as Gather(pos_emb, Range(0, T, 1)), then a Dropout on the sum.
    replace_nodes(
        &mut m,
        &["model/Slice", "model/Add"],
        vec![
            node("Squeeze", "t/Squeeze", &["val_1", "test_axis0"], &["t_scalar"], vec![]),
            node("Range", "t/Range", &["test_zero_i", "t_scalar", "test_one_i"], &["t_positions"], vec![]),
            node("Gather", "t/Gather", &["pos_emb.weight_f32", "t_positions"], &["slice_1"], vec![]),
            node("Add", "model/Add", &["embedding", "slice_1"], &["t_add"], vec![]),
            node("Dropout", "t/Dropout", &["t_add"], &["add"], vec![]),
        ],
    );
    // Block 0: one Split for q, k, v (in place of the first Slice; the others go).
    let g = graph(&mut m);
    let first = g.node.iter().position(|n| n.name == "blocks.0.attn/Slice").unwrap();
    g.node[first] =
        node("Split", "t/Split", &["linear", "test_split"], &["slice_4", "slice_5", "slice_6"], vec![i("axis", 2)]);
    g.node.retain(|n| n.name != "blocks.0.attn/Slice_1" && n.name != "blocks.0.attn/Slice_2");
    // Block 1: the Gelu operator.
    replace_nodes(
        &mut m,
        &[
            "blocks.1.mlp/Pow",
            "blocks.1.mlp/Mul",
            "blocks.1.mlp/Add",
            "blocks.1.mlp/Mul_1",
            "blocks.1.mlp/Tanh",
            "blocks.1.mlp/Add_1",
            "blocks.1.mlp/Mul_2",
            "blocks.1.mlp/Mul_3",
        ],
        vec![node("Gelu", "t/Gelu", &["linear_6"], &["gelu_1"], vec![s("approximate", "tanh")])],
    );
    // Block 3: the scale after the mask, which is negated.
    replace_nodes(
        &mut m,
        &["blocks.3.attn/Mul", "blocks.3.attn/Where"],
        vec![
            node("Not", "t/Not", &["slice_3"], &["t_keep"], vec![]),
            node("Where", "t/Where", &["t_keep", "matmul_6", "val_86"], &["t_masked"], vec![]),
            node("Mul", "t/Mul", &["t_masked", "val_84"], &["masked_fill_3"], vec![]),
        ],
    );
    converts_like_the_original("rewrites", &m);

    // A Linear without a bias: zeros.
    let mut m = load_proto(&model_path());
    let g = graph(&mut m);
    g.node.retain(|n| n.name != "blocks.3.attn.proj/Add");
    for n in g.node.iter_mut().filter(|n| n.name == "blocks.3/Add") {
        n.input[1] = "val_327".into();
    }
    let src = Gpt2Source::from_proto(Path::new("tinygpt.onnx"), &m).unwrap();
    assert!(src.layers[3].attn_output.bias.iter().all(|&b| b == 0.0));
    assert!(src.layers[2].attn_output.bias.iter().any(|&b| b != 0.0));
}

/// Converting `m` fails with one line containing every `want`; no output is left and
/// the input is unchanged.
fn refused(tag: &str, m: &pb::ModelProto, want: &[&str]) {
    let dir = TempDir::new(tag);
    let input = dir.path("model.onnx");
    save_proto(m, &input);
    let before = std::fs::read(&input).unwrap();
    let out = dir.path("out.arq");
    let err = format!("{:#}", convert_onnx(&input, &out, &opts(Quant::Q8)).expect_err("conversion should fail"));
    println!("{tag}: {err}");
    assert!(!err.contains('\n'), "not one line: {err}");
    for w in want {
        assert!(err.contains(w), "{tag}: '{err}' does not contain '{w}'");
    }
    assert!(!out.exists(), "output left behind");
    assert_eq!(dir.listing(), ["model.onnx"], "files left behind");
    assert_eq!(std::fs::read(&input).unwrap(), before, "input modified");
}

fn edited(f: impl FnOnce(&mut pb::ModelProto)) -> pb::ModelProto {
    let mut m = load_proto(&model_path());
    f(&mut m);
    m
}

fn node_index(m: &pb::ModelProto, name: &str) -> usize {
    m.graph.as_ref().unwrap().node.iter().position(|n| n.name == name).unwrap()
}

#[test]
fn refuses_graphs_off_the_pattern() {
    // A wrong GELU constant (0.044715 -> 0.05).
    let m = edited(|m| {
        let name = scalar_named(m, 0.044715);
        set_init(m, f32_init(&name, &[], &[0.05]));
    });
    let fc2 = node_index(&m, "blocks.0.mlp.fc2/MatMul");
    refused(
        "gelu-constant",
        &m,
        &[&format!("node {fc2} (MatMul"), "layer 0's MLP activation is not the tanh GELU", "check its constants"],
    );

    // Relu in place of Tanh.
    let m = edited(|m| {
        let n = graph(m).node.iter_mut().find(|n| n.op_type == "Tanh").unwrap();
        n.op_type = "Relu".into();
    });
    let relu = node_index(&m, "blocks.0.mlp/Tanh");
    refused(
        "relu",
        &m,
        &[
            &format!("node {relu} (Relu \"blocks.0.mlp/Tanh\")"),
            "unsupported operator Relu in layer 0's MLP activation",
        ],
    );

    // A non-causal mask: query 3 sees key 5.
    let m = edited(|m| {
        let g = graph(m);
        let t = g.initializer.iter_mut().find(|t| t.name == "causal_mask").unwrap();
        assert_eq!(t.data_type, 9);
        t.raw_data[3 * CTX + 5] = 0;
    });
    let wh = node_index(&m, "blocks.0.attn/Where");
    refused("mask", &m, &[&format!("node {wh} (Where"), "the attention mask is not causal: query 3 sees key 5"]);

    // No mask at all: the Softmax reads the scaled scores.
    let m = edited(|m| {
        let g = graph(m);
        let wh = g.node.iter().position(|n| n.name == "blocks.2.attn/Where").unwrap();
        let scores = g.node[wh].input[2].clone();
        let masked = g.node[wh].output[0].clone();
        g.node.remove(wh);
        for n in g.node.iter_mut() {
            for x in n.input.iter_mut().filter(|x| **x == masked) {
                *x = scores.clone();
            }
        }
    });
    refused("no-mask", &m, &["Softmax", "layer 2: Softmax of unmasked attention scores"]);

    // A wrong attention scale.
    let m = edited(|m| {
        let name = scalar_named(m, 1.0 / 24f32.sqrt());
        set_init(m, f32_init(&name, &[], &[0.125]));
    });
    refused("scale", &m, &["Softmax", "scaled by 0.125; expected 1/sqrt(head_dim) = 1/sqrt(24)"]);

    // Missing vocabulary.
    let m = edited(|m| set_meta(m, "arq.vocab", None));
    refused("no-vocab", &m, &["model metadata arq.vocab is missing"]);

    // A vocabulary entry of two bytes ('W' -> 'é').
    let vocab: String = serde_json::from_str(reference()["onnx_metadata"]["arq.vocab"].as_str().unwrap()).unwrap();
    let bad = vocab.replace('W', "é");
    let id = vocab.find('W').unwrap();
    let m = edited(|m| set_meta(m, "arq.vocab", Some(&serde_json::to_string(&bad).unwrap())));
    refused("multibyte", &m, &[&format!("arq.vocab entry {id} is 'é' (U+00E9, 2 bytes in UTF-8)")]);

    // Metadata that contradicts the graph.
    let m = edited(|m| set_meta(m, "arq.head_count", Some("3")));
    refused("heads", &m, &["arq.head_count = 3, but the attention Reshapes split 4 heads"]);
    let m = edited(|m| set_meta(m, "arq.vocab", Some("\"abc\"")));
    refused("vocab-size", &m, &["arq.vocab has 3 characters, but tok_emb has 78 rows"]);

    // A head count that does not fit (q split into 3 x 32 heads in block 0 only).
    let m = edited(|m| {
        let g = graph(m);
        g.initializer.push(pb::TensorProto {
            name: "test_shape".into(),
            dims: vec![4],
            data_type: 7,
            int64_data: vec![0, 0, 3, 32],
            ..Default::default()
        });
        let r = g.node.iter().position(|n| n.name == "blocks.1.attn/Reshape").unwrap();
        g.node[r].input[1] = "test_shape".into();
        g.node[r].attribute.clear();
    });
    let r = node_index(&m, "blocks.1.attn/Reshape");
    refused("head-split", &m, &[&format!("node {r} (Reshape"), "3 heads, but node", "split 4 heads"]);

    // A com.microsoft operator.
    let m = edited(|m| {
        let n = graph(m).node.iter_mut().find(|n| n.op_type == "Softmax").unwrap();
        n.domain = "com.microsoft".into();
    });
    refused("domain", &m, &["domain 'com.microsoft'"]);
}

/// Through the binary: `--head` with a GPT-2 graph is an error; q4 converts.
#[test]
fn cli_rules() {
    let dir = TempDir::new("cli");
    let (input, out) = (model_path(), dir.path("x.arq"));
    for flags in [&["--head", "categorical"][..], &["--levels", "4"][..]] {
        let mut args = vec!["convert", s(&input), "-o", s(&out)];
        args.extend_from_slice(flags);
        let o = arq(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("--head and --levels apply to PixelCNN models; this is a gpt2 text model"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert!(dir.listing().is_empty());
    let o = arq(&["convert", s(&input), "-o", s(&out), "--quant", "q4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(dir.listing(), ["x.arq"]);
}
