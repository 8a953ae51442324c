//! Hugging Face directories → `.arq`.
//!
//! Synthetic checkpoints written here (config.json, safetensors, tokenizer.json) of each
//! family are converted and run, and their log-probs compared with a forward pass
//! written in this file from the `transformers` modeling code (rotate-half rotary
//! embeddings on the checkpoint's own q and k rows, Gemma's `1 + w` norms, GPT-2's
//! `Conv1D`): that proves the layout changes (LLaMA's q/k permutation, Gemma's +1, the
//! `c_attn` split) without any other converter. Sharded, bf16 and f16 inputs must give
//! the same tensors; bad inputs one line, exit 1, nothing written.
//!
//! With the tiny models saved by transformers and converted by llama.cpp's own script
//! (`models/tiny/<family>/hf/`, `models/tiny/<family>/<family>-f32.gguf`,
//! `models/fixtures/tiny_<family>.json`), each family's tensors must equal the GGUF's
//! and its log-probs the fixture's; without those files the test prints a note and passes
//! (unless `ARQ_TINY_REQUIRED` is set).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use arq::format::ArqFile;
use arq::{math, Model, Session, SessionConfig};
use arq_convert::aligned::ModelBytes;
use arq_convert::import::gguf::GgufFile;
use arq_convert::import::{hf, vocab};
use arq_convert::quantize::Quant;
use arq_convert::ConvertOptions;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

// ---------------------------------------------------------------- synthetic models

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fam {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Gpt2,
}
const FAMILIES: [Fam; 5] = [Fam::Llama, Fam::Qwen2, Fam::Qwen3, Fam::Gemma3, Fam::Gpt2];

/// The shapes of the synthetic models: 2 layers, dim 64, 4 heads, 2 KV heads (GPT-2:
/// 4), head dim 16 (Gemma 3: 32, which is not dim / heads), 256 byte tokens + 3 merges
/// + 3 special tokens + 2 padding rows.
const D: usize = 64;
const LAYERS: usize = 2;
const FFN: usize = 128;
const HEADS: usize = 4;
const VOCAB: usize = 264;
const CTX: usize = 32;
const WINDOW: usize = 16;

fn kv_heads(f: Fam) -> usize {
    if f == Fam::Gpt2 {
        HEADS
    } else {
        2
    }
}
fn head_dim(f: Fam) -> usize {
    if f == Fam::Gemma3 {
        32
    } else {
        D / HEADS
    }
}

/// Values k/256 for k in [-51, 51] (+ 1 for norms), rounded to bf16: exact in bf16, f16
/// and f32, so every dtype of the same checkpoint holds the same numbers.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % 103) as f32 / 256.0 - 51.0 / 256.0
    }
    fn vec(&mut self, n: usize, offset: f32) -> Vec<f32> {
        // Rounded to bf16, which leaves 1 + k/256 a neighbour of it: exact in all three.
        (0..n).map(|_| half::bf16::from_f32(offset + self.next()).to_f32()).collect()
    }
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The checkpoint's tensors under their Hugging Face names.
fn tensors(f: Fam, seed: u64) -> Tensors {
    let mut r = Lcg(seed);
    let mut t: Tensors = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, offset: f32, r: &mut Lcg| {
        let n = shape.iter().product();
        t.push((name, shape, r.vec(n, offset)));
    };
    let (hd, kv) = (head_dim(f), kv_heads(f));
    if f == Fam::Gpt2 {
        add("transformer.wte.weight".into(), vec![VOCAB, D], 0.0, &mut r);
        add("transformer.wpe.weight".into(), vec![CTX, D], 0.0, &mut r);
        for l in 0..LAYERS {
            let p = format!("transformer.h.{l}");
            for (n, shape, off) in [
                ("ln_1.weight", vec![D], 1.0),
                ("ln_1.bias", vec![D], 0.0),
                ("attn.c_attn.weight", vec![D, 3 * D], 0.0),
                ("attn.c_attn.bias", vec![3 * D], 0.0),
                ("attn.c_proj.weight", vec![D, D], 0.0),
                ("attn.c_proj.bias", vec![D], 0.0),
                ("ln_2.weight", vec![D], 1.0),
                ("ln_2.bias", vec![D], 0.0),
                ("mlp.c_fc.weight", vec![D, FFN], 0.0),
                ("mlp.c_fc.bias", vec![FFN], 0.0),
                ("mlp.c_proj.weight", vec![FFN, D], 0.0),
                ("mlp.c_proj.bias", vec![D], 0.0),
            ] {
                add(format!("{p}.{n}"), shape, off, &mut r);
            }
        }
        add("transformer.ln_f.weight".into(), vec![D], 1.0, &mut r);
        add("transformer.ln_f.bias".into(), vec![D], 0.0, &mut r);
        return t;
    }
    // Gemma stores w for a norm of 1 + w.
    let norm = if f == Fam::Gemma3 { 0.0 } else { 1.0 };
    add("model.embed_tokens.weight".into(), vec![VOCAB, D], 0.0, &mut r);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), vec![D], norm, &mut r);
        add(format!("{p}.self_attn.q_proj.weight"), vec![HEADS * hd, D], 0.0, &mut r);
        add(format!("{p}.self_attn.k_proj.weight"), vec![kv * hd, D], 0.0, &mut r);
        add(format!("{p}.self_attn.v_proj.weight"), vec![kv * hd, D], 0.0, &mut r);
        if f == Fam::Qwen2 {
            add(format!("{p}.self_attn.q_proj.bias"), vec![HEADS * hd], 0.0, &mut r);
            add(format!("{p}.self_attn.k_proj.bias"), vec![kv * hd], 0.0, &mut r);
            add(format!("{p}.self_attn.v_proj.bias"), vec![kv * hd], 0.0, &mut r);
        }
        if matches!(f, Fam::Qwen3 | Fam::Gemma3) {
            add(format!("{p}.self_attn.q_norm.weight"), vec![hd], norm, &mut r);
            add(format!("{p}.self_attn.k_norm.weight"), vec![hd], norm, &mut r);
        }
        add(format!("{p}.self_attn.o_proj.weight"), vec![D, HEADS * hd], 0.0, &mut r);
        add(format!("{p}.post_attention_layernorm.weight"), vec![D], norm, &mut r);
        if f == Fam::Gemma3 {
            add(format!("{p}.pre_feedforward_layernorm.weight"), vec![D], norm, &mut r);
            add(format!("{p}.post_feedforward_layernorm.weight"), vec![D], norm, &mut r);
        }
        add(format!("{p}.mlp.gate_proj.weight"), vec![FFN, D], 0.0, &mut r);
        add(format!("{p}.mlp.up_proj.weight"), vec![FFN, D], 0.0, &mut r);
        add(format!("{p}.mlp.down_proj.weight"), vec![D, FFN], 0.0, &mut r);
    }
    add("model.norm.weight".into(), vec![D], norm, &mut r);
    if f != Fam::Gemma3 {
        add("lm_head.weight".into(), vec![VOCAB, D], 0.0, &mut r);
    }
    t
}

fn config(f: Fam) -> Value {
    let mut c = match f {
        Fam::Gpt2 => json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": D, "n_layer": LAYERS,
            "n_head": HEADS, "n_inner": FFN, "n_positions": CTX, "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new"}),
        _ => json!({"hidden_size": D, "num_hidden_layers": LAYERS, "intermediate_size": FFN,
            "num_attention_heads": HEADS, "num_key_value_heads": kv_heads(f), "vocab_size": VOCAB,
            "max_position_embeddings": CTX, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false}),
    };
    match f {
        Fam::Llama => c["architectures"] = json!(["LlamaForCausalLM"]),
        Fam::Qwen2 => c["architectures"] = json!(["Qwen2ForCausalLM"]),
        Fam::Qwen3 => {
            c["architectures"] = json!(["Qwen3ForCausalLM"]);
            c["head_dim"] = json!(head_dim(f));
        }
        Fam::Gemma3 => {
            c["architectures"] = json!(["Gemma3ForCausalLM"]);
            c["head_dim"] = json!(head_dim(f));
            c["tie_word_embeddings"] = json!(true);
            c["sliding_window"] = json!(WINDOW);
            c["layer_types"] = json!(["sliding_attention", "full_attention"]);
            c["query_pre_attn_scalar"] = json!(24);
            c["hidden_activation"] = json!("gelu_pytorch_tanh");
            c["final_logit_softcapping"] = Value::Null;
            c["attn_logit_softcapping"] = Value::Null;
            c["rope_parameters"] = json!({
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}});
        }
        Fam::Gpt2 => {}
    }
    c
}

/// GPT-2's byte-to-unicode alphabet: the string form of each single-byte token.
fn byte_token(b: u8) -> String {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return char::from(b).to_string();
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap().to_string()
}

/// A byte-level BPE `tokenizer.json`: the 256 bytes, merges "Ġ t", "h e", "Ġt he", and
/// three special tokens (ids 259..261); ids 262 and 263 are padding rows.
fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_token(b), json!(b));
    }
    for (i, t) in ["Ġt", "he", "Ġthe"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(256 + i));
    }
    let added: Vec<Value> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": 259 + i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    json!({"version": "1.0", "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false,
                  "vocab": vocab, "merges": [["Ġ", "t"], ["h", "e"], ["Ġt", "he"]]}})
}

fn tokenizer_config() -> Value {
    json!({"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "add_bos_token": false,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"})
}

fn bytes_of(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        _ => unreachable!(),
    }
}

fn write_safetensors(path: &Path, t: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> =
        t.iter().map(|(n, s, v)| (n.clone(), s.clone(), bytes_of(v, dtype))).collect();
    let views: Vec<(String, TensorView<'_>)> =
        data.iter().map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// A fresh directory under the target dir.
fn tmpdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the synthetic checkpoint of `f` into `dir` in `dtype`, in `shards` files.
fn write_model(dir: &Path, f: Fam, dtype: Dtype, shards: usize) -> Tensors {
    let t = tensors(f, 7 + f as u64);
    write_json(&dir.join("config.json"), &config(f));
    write_json(&dir.join("tokenizer.json"), &tokenizer_json());
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config());
    if shards == 1 {
        write_safetensors(&dir.join("model.safetensors"), &t, dtype);
    } else {
        let per = t.len().div_ceil(shards);
        let mut map = serde_json::Map::new();
        for (i, chunk) in t.chunks(per).enumerate() {
            let name = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
            write_safetensors(&dir.join(&name), chunk, dtype);
            for (n, _, _) in chunk {
                map.insert(n.clone(), json!(name));
            }
        }
        write_json(&dir.join("model.safetensors.index.json"), &json!({"metadata": {}, "weight_map": map}));
    }
    t
}

fn opts(quant: Quant) -> ConvertOptions {
    ConvertOptions {
        quant,
        force: false,
        calib: None,
        skip_calibration: true,
        progress: false,
        head: None,
        levels: None,
        vocab: None,
    }
}

fn convert(input: &Path, out: &Path) -> ModelBytes {
    arq_convert::convert(input, out, &opts(Quant::F32)).unwrap_or_else(|e| panic!("{}: {e:#}", input.display()));
    ModelBytes::map(out).unwrap()
}

fn tensor_map(bytes: &[u8]) -> HashMap<String, (Vec<u64>, Vec<f32>)> {
    let f = ArqFile::parse(bytes).unwrap();
    f.tensors().filter_map(|t| Some((t.name.to_string(), (t.shape.dims().to_vec(), t.as_f32()?.to_vec())))).collect()
}

// ---------------------------------------------------------------- the reference forward

fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}
/// `x · W` for a GPT-2 `Conv1D` weight `[in, out]`.
fn conv1d(w: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
    let out = b.len();
    let mut y = b.to_vec();
    for (i, xi) in x.iter().enumerate() {
        for j in 0..out {
            y[j] += xi * w[i * out + j];
        }
    }
    y
}
fn rms(x: &[f32], w: &[f32], eps: f32, plus_one: bool) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * r * if plus_one { 1.0 + w } else { *w }).collect()
}
fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let r = 1.0 / (var + eps).sqrt();
    x.iter().zip(w.iter().zip(b)).map(|(v, (w, b))| (v - mean) * r * w + b).collect()
}
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}
/// transformers' `apply_rotary_pos_emb` with `rotate_half` on one head.
fn rope_half(v: &mut [f32], pos: usize, theta: f32) {
    let half = v.len() / 2;
    for i in 0..half {
        let freq = 1.0 / theta.powf(2.0 * i as f32 / v.len() as f32);
        let (s, c) = (pos as f32 * freq).sin_cos();
        let (a, b) = (v[i], v[i + half]);
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}
fn log_softmax_at(logits: &[f32], id: usize) -> f64 {
    let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    logits[id] as f64 - m - z.ln()
}

/// Per-token log-probs of `ids[1..]` by the transformers modeling code, on the
/// checkpoint's own tensors.
fn reference_log_probs(f: Fam, t: &Tensors, ids: &[u32]) -> Vec<f64> {
    let w: HashMap<&str, &[f32]> = t.iter().map(|(n, _, v)| (n.as_str(), v.as_slice())).collect();
    let g = |n: &str| *w.get(n).unwrap_or_else(|| panic!("{n}"));
    let (hd, kv) = (head_dim(f), kv_heads(f));
    let group = HEADS / kv;
    let gemma = f == Fam::Gemma3;
    let scale = if gemma { 1.0 / 24f32.sqrt() } else { 1.0 / (hd as f32).sqrt() };
    let mut keys: Vec<Vec<Vec<f32>>> = vec![Vec::new(); LAYERS];
    let mut values: Vec<Vec<Vec<f32>>> = vec![Vec::new(); LAYERS];
    let mut out = Vec::new();
    for (p, &id) in ids.iter().enumerate() {
        let row = |name: &str| g(name)[id as usize * D..(id as usize + 1) * D].to_vec();
        let mut x = if f == Fam::Gpt2 {
            let pe = &g("transformer.wpe.weight")[p * D..(p + 1) * D];
            row("transformer.wte.weight").iter().zip(pe).map(|(a, b)| a + b).collect()
        } else if gemma {
            row("model.embed_tokens.weight").iter().map(|v| v * (D as f32).sqrt()).collect()
        } else {
            row("model.embed_tokens.weight")
        };
        for l in 0..LAYERS {
            let (q, k, v);
            if f == Fam::Gpt2 {
                let pre = format!("transformer.h.{l}");
                let n = |s: &str| g(&format!("{pre}.{s}"));
                let h = layer_norm(&x, n("ln_1.weight"), n("ln_1.bias"), 1e-5);
                let qkv = conv1d(n("attn.c_attn.weight"), n("attn.c_attn.bias"), &h);
                (q, k, v) = (qkv[..D].to_vec(), qkv[D..2 * D].to_vec(), qkv[2 * D..].to_vec());
            } else {
                let pre = format!("model.layers.{l}");
                let n = |s: &str| g(&format!("{pre}.{s}"));
                let h = rms(&x, n("input_layernorm.weight"), 1e-6, gemma);
                let proj = |s: &str| {
                    let mut y = matvec(n(&format!("self_attn.{s}_proj.weight")), &h);
                    if f == Fam::Qwen2 {
                        y.iter_mut().zip(n(&format!("self_attn.{s}_proj.bias"))).for_each(|(a, b)| *a += b);
                    }
                    y
                };
                let (mut qq, mut kk) = (proj("q"), proj("k"));
                if matches!(f, Fam::Qwen3 | Fam::Gemma3) {
                    for (vec, norm) in [(&mut qq, "q_norm"), (&mut kk, "k_norm")] {
                        for head in vec.chunks_exact_mut(hd) {
                            let normed = rms(head, n(&format!("self_attn.{norm}.weight")), 1e-6, gemma);
                            head.copy_from_slice(&normed);
                        }
                    }
                }
                let sliding = gemma && l % 2 == 0;
                let theta = if gemma && !sliding { 1e6 } else { 1e4 };
                qq.chunks_exact_mut(hd).for_each(|h| rope_half(h, p, theta));
                kk.chunks_exact_mut(hd).for_each(|h| rope_half(h, p, theta));
                (q, k, v) = (qq, kk, proj("v"));
            }
            keys[l].push(k);
            values[l].push(v);
            let mut attn = vec![0.0f32; HEADS * hd];
            for h in 0..HEADS {
                let kh = h / group;
                let qh = &q[h * hd..(h + 1) * hd];
                let scores: Vec<f32> = keys[l]
                    .iter()
                    .map(|k| qh.iter().zip(&k[kh * hd..(kh + 1) * hd]).map(|(a, b)| a * b).sum::<f32>() * scale)
                    .collect();
                let m = scores.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for (o, vv) in attn[h * hd..(h + 1) * hd].iter_mut().zip(&values[l][j][kh * hd..(kh + 1) * hd]) {
                        *o += ej / z * vv;
                    }
                }
            }
            if f == Fam::Gpt2 {
                let pre = format!("transformer.h.{l}");
                let n = |s: &str| g(&format!("{pre}.{s}"));
                let o = conv1d(n("attn.c_proj.weight"), n("attn.c_proj.bias"), &attn);
                x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let h = layer_norm(&x, n("ln_2.weight"), n("ln_2.bias"), 1e-5);
                let up: Vec<f32> =
                    conv1d(n("mlp.c_fc.weight"), n("mlp.c_fc.bias"), &h).into_iter().map(gelu_tanh).collect();
                let m = conv1d(n("mlp.c_proj.weight"), n("mlp.c_proj.bias"), &up);
                x.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
            } else {
                let pre = format!("model.layers.{l}");
                let n = |s: &str| g(&format!("{pre}.{s}"));
                let mut o = matvec(n("self_attn.o_proj.weight"), &attn);
                if gemma {
                    o = rms(&o, n("post_attention_layernorm.weight"), 1e-6, true);
                }
                x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let h = if gemma {
                    rms(&x, n("pre_feedforward_layernorm.weight"), 1e-6, true)
                } else {
                    rms(&x, n("post_attention_layernorm.weight"), 1e-6, false)
                };
                let act = if gemma { gelu_tanh } else { silu };
                let gate = matvec(n("mlp.gate_proj.weight"), &h);
                let up = matvec(n("mlp.up_proj.weight"), &h);
                let a: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| act(*g) * u).collect();
                let mut m = matvec(n("mlp.down_proj.weight"), &a);
                if gemma {
                    m = rms(&m, n("post_feedforward_layernorm.weight"), 1e-6, true);
                }
                x.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
            }
        }
        let (xf, head) = match f {
            Fam::Gpt2 => (
                layer_norm(&x, g("transformer.ln_f.weight"), g("transformer.ln_f.bias"), 1e-5),
                g("transformer.wte.weight"),
            ),
            Fam::Gemma3 => (rms(&x, g("model.norm.weight"), 1e-6, true), g("model.embed_tokens.weight")),
            _ => (rms(&x, g("model.norm.weight"), 1e-6, false), g("lm_head.weight")),
        };
        if p + 1 < ids.len() {
            out.push(log_softmax_at(&matvec(head, &xf), ids[p + 1] as usize));
        }
    }
    out
}

/// Teacher-forced log-probs of `ids[1..]` by the runtime.
fn arq_log_probs(bytes: &[u8], ids: &[u32]) -> Vec<f64> {
    let model = Model::load(bytes).unwrap();
    let cfg = SessionConfig { ctx: ids.len(), batch: 8, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
    let mut s = Session::new(&model, &mut arena, cfg).unwrap();
    let mut lps = Vec::new();
    s.forward_all(ids, |i, logits| {
        if i + 1 < ids.len() {
            lps.push(math::log_prob(logits, ids[i + 1] as usize));
        }
    })
    .unwrap();
    lps
}

/// Ids of a short text in the synthetic vocabulary, within the sliding window.
const IDS: [u32; 12] = [259, 256, 257, 32, 116, 104, 101, 258, 65, 10, 261, 200];

// ---------------------------------------------------------------- tests

#[test]
fn every_family_converts_and_matches_the_transformers_forward() {
    for f in FAMILIES {
        let d = tmpdir(&format!("{f:?}"));
        let model = d.join("m");
        std::fs::create_dir(&model).unwrap();
        let t = write_model(&model, f, Dtype::F32, 1);
        let out = d.join("m.arq");
        let bytes = convert(&model, &out);
        let ours = arq_log_probs(bytes.bytes(), &IDS);
        let reference = reference_log_probs(f, &t, &IDS);
        assert_eq!(ours.len(), reference.len());
        let worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        eprintln!("{f:?}: worst |Δ log p| {worst:.2e}");
        assert!(
            worst < 1e-4,
            "{f:?}: log-probs differ by {worst} from the transformers forward\n{ours:?}\n{reference:?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn layout_changes_on_named_tensors() {
    let d = tmpdir("layout");
    let (llama, gemma, gpt2) = (d.join("llama"), d.join("gemma"), d.join("gpt2"));
    for (dir, f) in [(&llama, Fam::Llama), (&gemma, Fam::Gemma3), (&gpt2, Fam::Gpt2)] {
        std::fs::create_dir(dir).unwrap();
        write_model(dir, f, Dtype::F32, 1);
    }
    let get = |dir: &Path, name: &str| -> Vec<f32> {
        let ck = hf::open(dir).unwrap();
        let dims: Vec<u64> = ck.hp.tensor_names(ck.tied).into_iter().find(|t| t.0 == name).unwrap().1;
        ck.fetch(name, &dims).unwrap()
    };
    let raw = |dir: &Path, name: &str, dims: &[u64]| hf::open(dir).unwrap().weights.read(name, dims).unwrap();
    // LLaMA's k: head h, row 2j + t of ours is row t * hd/2 + j of Hugging Face's.
    let hd = 16;
    let hf_k = raw(&llama, "model.layers.1.self_attn.k_proj.weight", &[32, 64]);
    let k = get(&llama, "blk.1.attn_k");
    for h in 0..2 {
        for j in 0..hd / 2 {
            for t in 0..2 {
                let (to, from) = (h * hd + 2 * j + t, h * hd + t * hd / 2 + j);
                assert_eq!(k[to * 64..(to + 1) * 64], hf_k[from * 64..(from + 1) * 64]);
            }
        }
    }
    // ... and v as stored.
    assert_eq!(get(&llama, "blk.1.attn_v"), raw(&llama, "model.layers.1.self_attn.v_proj.weight", &[32, 64]));
    // Gemma: every norm + 1, the q norm included; ffn_norm is the pre-feed-forward norm.
    for (ours, theirs, n) in [
        ("blk.0.attn_q_norm", "model.layers.0.self_attn.q_norm.weight", 32),
        ("blk.0.ffn_norm", "model.layers.0.pre_feedforward_layernorm.weight", 64),
        ("blk.0.post_attention_norm", "model.layers.0.post_attention_layernorm.weight", 64),
        ("output_norm", "model.norm.weight", 64),
    ] {
        let want: Vec<f32> = raw(&gemma, theirs, &[n]).iter().map(|w| w + 1.0).collect();
        assert_eq!(get(&gemma, ours), want, "{ours}");
    }
    // GPT-2: k is the middle third of c_attn's columns, transposed.
    let c_attn = raw(&gpt2, "transformer.h.0.attn.c_attn.weight", &[64, 192]);
    let k = get(&gpt2, "blk.0.attn_k");
    for r in 0..64 {
        for c in 0..64 {
            assert_eq!(k[r * 64 + c], c_attn[c * 192 + 64 + r]);
        }
    }
    assert_eq!(get(&gpt2, "blk.0.attn_k.bias"), raw(&gpt2, "transformer.h.0.attn.c_attn.bias", &[192])[64..128]);
    let _ = std::fs::remove_dir_all(&d);
}

fn assert_same(a: &HashMap<String, (Vec<u64>, Vec<f32>)>, b: &HashMap<String, (Vec<u64>, Vec<f32>)>, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: tensor count");
    for (name, t) in a {
        assert!(b.get(name) == Some(t), "{what}: tensor {name} differs from the f32 input's");
    }
}

#[test]
fn sharded_bf16_and_f16_inputs_give_the_same_tensors() {
    let d = tmpdir("dtypes");
    let mut files = Vec::new();
    for (name, dtype, shards) in [("f32", Dtype::F32, 1), ("bf16", Dtype::BF16, 1), ("f16x3", Dtype::F16, 3)] {
        let dir = d.join(name);
        std::fs::create_dir(&dir).unwrap();
        write_model(&dir, Fam::Qwen2, dtype, shards);
        files.push((name, tensor_map(convert(&dir, &d.join(format!("{name}.arq"))).bytes())));
    }
    for (name, t) in &files[1..] {
        assert_same(t, &files[0].1, name);
    }
    // A .safetensors file converts with the config.json beside it.
    let single = convert(&d.join("bf16/model.safetensors"), &d.join("file.arq"));
    assert_same(&tensor_map(single.bytes()), &files[0].1, "model.safetensors");
    // So do its config.json and its shard index.
    let config = convert(&d.join("bf16/config.json"), &d.join("config.arq"));
    assert_same(&tensor_map(config.bytes()), &files[0].1, "config.json");
    let index = convert(&d.join("f16x3/model.safetensors.index.json"), &d.join("index.arq"));
    assert_same(&tensor_map(index.bytes()), &files[0].1, "the index");
    // And a shard of an index reads all of the index's shards.
    let shard = convert(&d.join("f16x3/model-00002-of-00003.safetensors"), &d.join("shard.arq"));
    assert_same(&tensor_map(shard.bytes()), &files[0].1, "a shard");
    // q8 as well.
    arq_convert::convert(&d.join("bf16"), &d.join("q8.arq"), &opts(Quant::Q8)).unwrap();
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tokenizer_and_its_metadata() {
    let d = tmpdir("tok");
    let dir = d.join("m");
    std::fs::create_dir(&dir).unwrap();
    write_model(&dir, Fam::Llama, Dtype::BF16, 1);
    std::fs::write(dir.join("chat_template.jinja"), "{{ messages[0]['content'] }}").unwrap();
    let bytes = convert(&dir, &d.join("m.arq"));
    let file = ArqFile::parse(bytes.bytes()).unwrap();
    assert_eq!(file.meta_str("tokenizer.pre").unwrap(), "gpt2");
    assert_eq!(file.meta("tokenizer.bos_id").and_then(|v| v.as_u64()), Some(259));
    assert_eq!(file.meta("tokenizer.eos_id").and_then(|v| v.as_u64()), Some(261));
    assert_eq!(file.meta("tokenizer.add_bos").and_then(|v| v.as_bool()), Some(false));
    // chat_template.jinja (transformers 5) wins over tokenizer_config.json's.
    assert_eq!(file.meta_str("tokenizer.chat_template").unwrap(), "{{ messages[0]['content'] }}");
    let model = Model::load(bytes.bytes()).unwrap();
    let tok = model.tokenizer().unwrap();
    assert_eq!(tok.encode(" the", false), vec![258]);
    assert_eq!(tok.encode("<|im_start|>he", true), vec![260, 257]);
    assert_eq!(tok.vocab_size(), VOCAB as u32);
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs `arq convert IN -o OUT` and asserts exit 1, one line on stderr containing each
/// of `needles`, and no output file.
fn refused(input: &Path, out: &Path, needles: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_arq"))
        .args(["convert", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--no-calib"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}: {err}", input.display());
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' not in: {err}");
    }
    assert!(!out.exists() || out.is_dir(), "{} was written", out.display());
}

#[test]
fn bad_directories_are_refused_in_one_line() {
    let d = tmpdir("bad");
    let out = d.join("out.arq");
    let fresh = |name: &str, f: Fam| {
        let dir = d.join(name);
        std::fs::create_dir(&dir).unwrap();
        write_model(&dir, f, Dtype::BF16, 1);
        dir
    };
    let edit_json = |path: &Path, edit: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        edit(&mut v);
        write_json(path, &v);
    };

    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(&empty, &out, &["is a directory without config.json"]);

    let dir = fresh("mistral", Fam::Llama);
    edit_json(&dir.join("config.json"), &|c| c["architectures"] = json!(["MistralForCausalLM"]));
    refused(&dir, &out, &["architecture 'MistralForCausalLM' is not supported", "LlamaForCausalLM", "GPT2LMHeadModel"]);

    let dir = fresh("vision", Fam::Gemma3);
    edit_json(&dir.join("config.json"), &|c| c["architectures"] = json!(["Gemma3ForConditionalGeneration"]));
    refused(&dir, &out, &["'Gemma3ForConditionalGeneration' is not supported"]);

    let dir = fresh("shape", Fam::Llama);
    edit_json(&dir.join("config.json"), &|c| c["intermediate_size"] = json!(96));
    refused(
        &dir,
        &out,
        &["tensor 'model.layers.0.mlp.gate_proj.weight' has shape [128, 64], config.json says [96, 64]"],
    );

    let dir = fresh("missing", Fam::Llama);
    let t: Tensors =
        tensors(Fam::Llama, 1).into_iter().filter(|t| t.0 != "model.layers.1.mlp.up_proj.weight").collect();
    write_safetensors(&dir.join("model.safetensors"), &t, Dtype::F32);
    refused(&dir, &out, &["tensor 'model.layers.1.mlp.up_proj.weight' is missing"]);

    let dir = fresh("extra", Fam::Llama);
    let mut t = tensors(Fam::Llama, 1);
    t.push(("model.layers.0.self_attn.q_proj.bias".into(), vec![64], vec![0.5; 64]));
    write_safetensors(&dir.join("model.safetensors"), &t, Dtype::F32);
    refused(&dir, &out, &["tensor 'model.layers.0.self_attn.q_proj.bias' is not part of a llama model"]);

    let dir = fresh("unigram", Fam::Llama);
    edit_json(&dir.join("tokenizer.json"), &|t| t["model"]["type"] = json!("Unigram"));
    refused(&dir, &out, &["tokenizer.json: model type 'Unigram' is not supported"]);

    let dir = fresh("pre", Fam::Llama);
    edit_json(&dir.join("tokenizer.json"), &|t| t["pre_tokenizer"] = json!({"type": "Whitespace"}));
    refused(&dir, &out, &["pre-tokenizer", "Whitespace", "is not supported"]);

    let dir = fresh("scaling", Fam::Llama);
    edit_json(&dir.join("config.json"), &|c| c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0}));
    refused(&dir, &out, &["'yarn' rope scaling"]);

    let dir = fresh("softcap", Fam::Gemma3);
    edit_json(&dir.join("config.json"), &|c| c["final_logit_softcapping"] = json!(30.0));
    refused(&dir, &out, &["final_logit_softcapping is 30.0"]);

    let dir = fresh("huge", Fam::Llama);
    edit_json(&dir.join("config.json"), &|c| c["num_hidden_layers"] = json!(1u64 << 40));
    refused(&dir, &out, &["more than the cap"]);

    let dir = fresh("notst", Fam::Llama);
    std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
    refused(&dir, &out, &["not a valid safetensors file"]);

    let dir = fresh("escape", Fam::Llama);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    write_json(&dir.join("model.safetensors.index.json"), &json!({"weight_map": {"a": "../x.safetensors"}}));
    refused(&dir, &out, &["is not a file name"]);

    // The output is never the input or one of its files.
    let dir = fresh("self", Fam::Llama);
    refused(&dir, &dir, &["is a directory"]);
    let cfg = dir.join("config.json");
    let before = std::fs::read(&cfg).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_arq"))
        .args(["convert", dir.to_str().unwrap(), "-o", cfg.to_str().unwrap(), "--force"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is one of the input files"));
    assert_eq!(std::fs::read(&cfg).unwrap(), before);

    // A .safetensors file without a config.json beside it.
    let lone = d.join("lone");
    std::fs::create_dir(&lone).unwrap();
    write_safetensors(&lone.join("w.safetensors"), &tensors(Fam::Llama, 1), Dtype::F32);
    refused(&lone.join("w.safetensors"), &out, &["no config.json beside it"]);
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- the reference models

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(rel)
}

/// Each family's tiny transformers model: the tensors of its HF directory equal those
/// of the GGUF llama.cpp's converter made from it (1e-6), and its f32 `.arq` scores the
/// fixture's ids as transformers did (1e-4 per token).
#[test]
fn tiny_models_match_llama_cpp_and_transformers() {
    // With ARQ_TINY_REQUIRED set, a missing model, GGUF or fixture fails the test.
    let required = std::env::var_os("ARQ_TINY_REQUIRED").is_some();
    let absent = |p: &Path| {
        assert!(!required, "{} is missing (ARQ_TINY_REQUIRED is set)", p.display());
        eprintln!("note: {} not found", p.display());
    };
    for family in ["llama", "gpt2", "qwen2", "qwen3", "gemma3"] {
        let dir = repo(&format!("models/tiny/{family}/hf"));
        if !dir.join("config.json").exists() {
            absent(&dir);
            continue;
        }
        let ck = hf::open(&dir).unwrap();
        let gguf_path = repo(&format!("models/tiny/{family}/{family}-f32.gguf"));
        if gguf_path.exists() {
            let g = GgufFile::open(&gguf_path).unwrap();
            for (name, dims, _) in ck.hp.tensor_names(ck.tied) {
                let ours = ck.fetch(&name, &dims).unwrap();
                let theirs = gguf_tensor(&g, family, &name, &dims);
                let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert_eq!(ours.len(), theirs.len(), "{family} {name}");
                assert!(worst <= 1e-6, "{family} {name}: differs from the GGUF by {worst}");
            }
            eprintln!("{family}: every tensor equals the GGUF's within 1e-6");
            vocab_matches_gguf(family, &ck, &g);
        } else {
            absent(&gguf_path);
        }
        let fixture = repo(&format!("models/fixtures/tiny_{family}.json"));
        let Ok(text) = std::fs::read_to_string(&fixture) else {
            absent(&fixture);
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        // The special ids and BOS rule transformers' tokenizer reports.
        let vocab = vocab::Vocab::from_tokenizer_json(&ck.dir, &ck.config, ck.hp.vocab).unwrap();
        let tok = &v["tokenizer"];
        let id = |k: &str| tok[k].as_u64().map(|i| i as u32);
        assert_eq!(
            (vocab.bos, vocab.eos, vocab.pad),
            (id("bos_id"), id("eos_id"), id("pad_id")),
            "{family} special ids"
        );
        assert_eq!(Some(vocab.add_bos), tok["adds_bos"].as_bool(), "{family} add_bos");
        let d = tmpdir(&format!("tiny-{family}"));
        arq_convert::convert(&dir, &d.join("m.arq"), &opts(Quant::F32)).unwrap_or_else(|e| panic!("{family}: {e:#}"));
        let bytes = ModelBytes::map(&d.join("m.arq")).unwrap();
        let cases: Vec<&Value> = match v.get("texts").and_then(Value::as_object) {
            Some(t) => t.values().collect(),
            None => vec![&v],
        };
        for case in cases {
            let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let want: Vec<f64> = case["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            if let Some(text) = case.get("text").and_then(Value::as_str) {
                let model = Model::load(bytes.bytes()).unwrap();
                let mut ours = if vocab.add_bos { vec![vocab.bos.unwrap()] } else { vec![] };
                ours.extend(model.tokenizer().unwrap().encode(text, true));
                assert_eq!(ours, ids, "{family}: token ids of {text:?}");
            }
            let ours = arq_log_probs(bytes.bytes(), &ids);
            assert_eq!(ours.len(), want.len(), "{family}");
            let worst = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            eprintln!("{family}: worst |Δ log p| vs transformers {worst:.2e}");
            assert!(worst < 1e-4, "{family}: log-probs differ from transformers by {worst}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// The vocabulary read from `tokenizer.json` has the tokens, types and merges that
/// llama.cpp's converter wrote (for SentencePiece, from `tokenizer.model`), and scores
/// that order the merged pieces as the GGUF's do.
fn vocab_matches_gguf(family: &str, ck: &hf::Checkpoint, g: &GgufFile) {
    use arq_convert::import::gguf::Value as G;
    use arq_convert::import::vocab::{Vocab, VocabModel};
    let vocab = Vocab::from_tokenizer_json(&ck.dir, &ck.config, ck.hp.vocab).unwrap();
    let arr = |k: &str| g.get(k).and_then(G::as_array).unwrap_or_else(|| panic!("GGUF has no {k}")).to_vec();
    let tokens: Vec<String> = arr("tokenizer.ggml.tokens").iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let types: Vec<i32> = arr("tokenizer.ggml.token_type").iter().map(|v| v.as_i64().unwrap() as i32).collect();
    assert_eq!(vocab.tokens.len(), tokens.len(), "{family}: token count");
    for (i, (a, b)) in vocab.tokens.iter().zip(&tokens).enumerate() {
        assert_eq!(a, b, "{family}: token {i}");
        assert_eq!(vocab.token_types[i], types[i], "{family}: type of token {i} {a:?}");
    }
    match &vocab.model {
        VocabModel::ByteLevelBpe { merges, .. } => {
            let theirs: Vec<String> = arr("tokenizer.ggml.merges").iter().map(|v| v.as_str().unwrap().into()).collect();
            assert_eq!(merges, &theirs, "{family}: merges");
        }
        VocabModel::SentencePiece { scores, .. } => {
            let theirs: Vec<f32> = arr("tokenizer.ggml.scores").iter().map(|v| v.as_f32().unwrap()).collect();
            // Over the pieces a merge makes (score < 0 here), the two orders agree.
            let merged: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] < 0.0).collect();
            assert!(!merged.is_empty(), "{family}: no merged pieces");
            for w in merged.windows(2) {
                let (a, b) = (w[0], w[1]);
                assert_eq!(
                    scores[a].total_cmp(&scores[b]),
                    theirs[a].total_cmp(&theirs[b]),
                    "{family}: pieces {:?} and {:?} ordered unlike the GGUF's scores",
                    vocab.tokens[a],
                    vocab.tokens[b]
                );
            }
        }
    }
    eprintln!("{family}: tokens, types and merges (or score order) equal the GGUF's");
}

/// `.arq` tensor `name` from llama.cpp's GGUF (GPT-2's q, k, v: thirds of `attn_qkv`).
fn gguf_tensor(g: &GgufFile, family: &str, name: &str, dims: &[u64]) -> Vec<f32> {
    let read = |gname: &str| {
        let t = g.tensor(gname).unwrap_or_else(|| panic!("GGUF has no {gname}"));
        g.dequantize(t).unwrap()
    };
    if family == "gpt2" {
        for (i, part) in ["attn_q", "attn_k", "attn_v"].into_iter().enumerate() {
            if let Some((layer, role)) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
                if role.trim_end_matches(".bias") == part {
                    let suffix = if role.ends_with(".bias") { "bias" } else { "weight" };
                    let all = read(&format!("blk.{layer}.attn_qkv.{suffix}"));
                    let n = all.len() / 3;
                    return all[i * n..(i + 1) * n].to_vec();
                }
            }
        }
    }
    let gname = if name.ends_with(".bias") { name.to_string() } else { format!("{name}.weight") };
    let v = read(&gname);
    assert_eq!(v.len() as u64, dims.iter().product::<u64>(), "{gname}");
    v
}
