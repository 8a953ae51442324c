//! ONNX → `.arq` for GPT-2 models (`runtime/FORMAT.md`, "GPT-2 models"), and tract-onnx
//! as an independent f32 reference ([`tract_logits`]).
//!
//! Like the PixelCNN importer ([`super::pixelcnn`]), this reads the protobuf with
//! tract-onnx's prost types and interprets the graph symbolically: walking the nodes in
//! file order, every computed tensor gets a role in the GPT-2 forward pass (the residual
//! stream after `p` sublayers, layer `l`'s queries split into heads, its masked
//! attention scores, an intermediate of its MLP activation, ...) from its operator and
//! the roles of its inputs, with its symbolic shape (`B`, `T` and numbers). Node names
//! are never used.
//! The first node that fits no role stops the import with one line naming it (`node 52
//! (Relu "blocks.0.mlp/Relu"): ...`, nodes counted from 0 in file order).
//!
//! Accepted (`d` = model width, `H` heads, `ffn` the MLP width):
//!
//! - input: one integer tensor `(batch, seq)` of token ids; output: one tensor, the
//!   logits.
//! - embedding: `Gather(tok_emb (V, d), tokens)` plus the positions, either
//!   `Slice(pos_emb (C, d), 0, T)` on axis 0 with `T` from `Shape(tokens)`, or
//!   `Gather(pos_emb, Range(0, T, 1))`.
//! - per block: `LayerNormalization` → linear `d → 3d` (qkv) → Slices `[0, d)`,
//!   `[d, 2d)`, `[2d, 3d)` of the last axis (or one Split) → Reshapes to `(B, T, H, d/H)`
//!   → Transposes to `q (B, H, T, d/H)`, `kᵀ (B, H, d/H, T)`, `v (B, H, T, d/H)` →
//!   `MatMul(q, kᵀ)` → scaling by `1/sqrt(d/H)` in total (Mul or Div by constants, on q,
//!   k or the scores) → `Where(mask, fill, scores)` with a causal mask and a fill
//!   `<= -1e4` → `Softmax` on the last axis → `MatMul(probs, v)` → Transpose to
//!   `(B, T, H, d/H)` → Reshape to `(B, T, d)` → linear `d → d` (proj) → residual Add →
//!   `LayerNormalization` → linear `d → ffn` (fc) → the tanh GELU → linear `ffn → d`
//!   (fc2) → residual Add.
//! - head: `LayerNormalization` → `MatMul` with `Transpose(tok_emb)` or any constant
//!   equal to it (tied), or with another `(d, V)` matrix (untied); no bias.
//! - linear: `MatMul(x, W (in, out))` then `Add` of a bias (`out` values), or `Gemm`
//!   (`alpha = beta = 1`, `transA = 0`, `transB` 0 or 1); a missing bias is zero.
//! - GELU: any composition of Add/Sub/Mul/Div/Pow/Tanh/Sqrt/Neg/Reciprocal of the fc
//!   output and scalar constants (or `Gelu` with `approximate = "tanh"`), checked by
//!   evaluating it on a grid against `x/2 (1 + tanh(sqrt(2/π) (x + 0.044715 x³)))`.
//! - the causal mask: a constant `(…, m, m)` (leading dimensions 1, `m` at least the
//!   context length) sliced to `[0, T)` on its last two axes, optionally through `Not`
//!   and `Cast`; which positions it masks is checked entry by entry.
//! - matrices: f32, f16, bf16 or f64 initializers, directly or through `Cast(to =
//!   FLOAT)`; `Identity`, `Dropout` (inference) and `Constant` nodes anywhere.
//!
//! The head count comes from the attention Reshapes and must agree with the model
//! metadata `arq.head_count` where present; likewise the context length (the rows of
//! `pos_emb`) with `arq.context_length` and the LayerNorm epsilon (one for all, from
//! the nodes) with `arq.layer_norm_epsilon`. The vocabulary is `arq.vocab`: a JSON
//! string of the characters in id order (or a JSON array of one-character strings),
//! each a single byte (ASCII), since a byte-level vocabulary without merges has one
//! token per byte.

mod vocab;
mod walker;

use arq::format::keys;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use arq::tokenizer::PreTokenizer;
use tract_onnx::pb;

pub use vocab::byte_level_char;
use vocab::parse_vocab;

use super::proto::read_proto;
use crate::quantize::{write_matrix, write_vector, Quant, TensorError};

// ---------------------------------------------------------------------------------------
// The model

/// A linear layer in `.arq` layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `out`.
    pub rows: usize,
    /// `in`.
    pub cols: usize,
    /// `(out, in)`, row-major: the transpose of the ONNX MatMul's `B`.
    pub weight: Vec<f32>,
    /// `out` values (zeros where the graph has none).
    pub bias: Vec<f32>,
}

impl Linear {
    /// Rows `start..end` (the q, k or v part of the fused qkv).
    fn rows(&self, start: usize, end: usize) -> Linear {
        Linear {
            rows: end - start,
            cols: self.cols,
            weight: self.weight[start * self.cols..end * self.cols].to_vec(),
            bias: self.bias[start..end].to_vec(),
        }
    }
}

/// A LayerNorm's weight and bias (`d` values each).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One transformer block.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Layer {
    pub attn_norm: LayerNorm,
    pub attn_q: Linear,
    pub attn_k: Linear,
    pub attn_v: Linear,
    pub attn_output: Linear,
    pub ffn_norm: LayerNorm,
    pub ffn_up: Linear,
    pub ffn_down: Linear,
}

/// A GPT-2 read from ONNX: hyperparameters, vocabulary and f32 weights.
#[derive(Clone, Debug)]
pub struct Gpt2Source {
    /// The model name (`general.name`): the file stem.
    pub name: String,
    /// The file it was read from.
    pub source: PathBuf,
    /// One single-byte character per token id.
    pub vocab: Vec<char>,
    /// `d`.
    pub dim: usize,
    pub heads: usize,
    pub ffn: usize,
    /// Rows of `position_embd`.
    pub context_length: usize,
    pub epsilon: f32,
    /// `(vocab, d)`.
    pub token_embd: Vec<f32>,
    /// `(context_length, d)`.
    pub position_embd: Vec<f32>,
    pub output_norm: LayerNorm,
    /// `(vocab, d)`; `None`: tied to `token_embd`.
    pub output: Option<Vec<f32>>,
    pub layers: Vec<Gpt2Layer>,
}

impl Gpt2Source {
    /// Reads a GPT-2 from an ONNX file.
    pub fn from_onnx(path: &Path) -> Result<Self> {
        Self::from_proto(path, &read_proto(path)?)
    }

    /// [`Gpt2Source::from_onnx`] for a model already read from `path`.
    pub fn from_proto(path: &Path, proto: &pb::ModelProto) -> Result<Self> {
        let at = |e: String| anyhow!("{}: {e}", path.display());
        let meta: HashMap<&str, &str> =
            proto.metadata_props.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        let vocab = match meta.get("arq.vocab") {
            Some(v) => parse_vocab(v).map_err(at)?,
            None => {
                return Err(at("model metadata arq.vocab is missing: a gpt2 import needs the vocabulary (a JSON \
                               string of the characters in id order)"
                    .into()))
            }
        };
        let opset =
            proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(1, |o| o.version);
        let graph = proto.graph.as_ref().ok_or_else(|| at("no graph".into()))?;
        let p = walker::parse(graph, opset).map_err(at)?;

        let meta_count = |key: &str| -> std::result::Result<Option<usize>, String> {
            meta.get(key)
                .map(|v| v.trim().parse::<usize>().map_err(|_| format!("model metadata {key} = '{v}' is not a count")))
                .transpose()
        };
        if let Some(h) = meta_count("arq.head_count").map_err(at)? {
            if h != p.heads {
                return Err(at(format!(
                    "model metadata arq.head_count = {h}, but the attention Reshapes split {} heads",
                    p.heads
                )));
            }
        }
        if let Some(c) = meta_count("arq.context_length").map_err(at)? {
            if c != p.context_length {
                return Err(at(format!(
                    "model metadata arq.context_length = {c}, but pos_emb has {} rows",
                    p.context_length
                )));
            }
        }
        if let Some(e) = meta.get("arq.layer_norm_epsilon") {
            let v = e
                .trim()
                .parse::<f32>()
                .map_err(|_| at(format!("model metadata arq.layer_norm_epsilon = '{e}' is not a number")))?;
            if ((v - p.epsilon) / p.epsilon).abs() > 1e-6 {
                return Err(at(format!(
                    "model metadata arq.layer_norm_epsilon = {e}, but the LayerNormalization nodes use {:e}",
                    p.epsilon
                )));
            }
        }
        if vocab.len() != p.vocab_size {
            return Err(at(format!(
                "model metadata arq.vocab has {} characters, but tok_emb has {} rows",
                vocab.len(),
                p.vocab_size
            )));
        }
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Gpt2Source {
            name,
            source: path.to_path_buf(),
            vocab,
            dim: p.dim,
            heads: p.heads,
            ffn: p.ffn,
            context_length: p.context_length,
            epsilon: p.epsilon,
            token_embd: p.token_embd,
            position_embd: p.position_embd,
            output_norm: p.output_norm,
            output: p.output,
            layers: p.layers,
        })
    }

    /// One line: sizes, vocabulary, head.
    pub fn describe(&self) -> String {
        format!(
            "GPT-2, d = {}, {} layers, {} heads (head_dim {}), ffn {}, vocab {} (characters), context {}, LayerNorm \
             eps {:e}, {} head",
            self.dim,
            self.layers.len(),
            self.heads,
            self.dim / self.heads,
            self.ffn,
            self.vocab.len(),
            self.context_length,
            self.epsilon,
            if self.output.is_some() { "untied" } else { "tied" }
        )
    }

    /// The tokenizer blob: one byte-level token per character, no merges.
    pub fn tokenizer_blob(&self) -> Result<Vec<u8>> {
        let tokens: Vec<String> = self.vocab.iter().map(|&c| byte_level_char(c as u8).to_string()).collect();
        let types = vec![1i32; tokens.len()];
        arq::tokenizer::build_blob_with(PreTokenizer::Gpt2, &tokens, &types, &[] as &[&str])
            .map_err(|e| anyhow!("{}: tokenizer: {e}", self.source.display()))
    }

    /// Serializes the model with matrices in `quant` (norms and biases f32); returns the
    /// file bytes and each quantized matrix's relative error.
    pub fn to_arq(&self, quant: Quant) -> Result<(Vec<u8>, Vec<TensorError>)> {
        let mut w = ArqWriter::new();
        let file_name = self.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for (k, val) in [
            (keys::ARCHITECTURE, Meta::Str(keys::ARCH_GPT2.into())),
            (keys::QUANT, Meta::Str(quant.name().into())),
            (keys::GENERAL_NAME, Meta::Str(self.name.clone())),
            ("general.source", Meta::Str(file_name)),
            ("gpt2.vocab_size", Meta::U64(self.vocab.len() as u64)),
            ("gpt2.context_length", Meta::U64(self.context_length as u64)),
            ("gpt2.embedding_length", Meta::U64(self.dim as u64)),
            ("gpt2.block_count", Meta::U64(self.layers.len() as u64)),
            ("gpt2.feed_forward_length", Meta::U64(self.ffn as u64)),
            ("gpt2.attention.head_count", Meta::U64(self.heads as u64)),
            ("gpt2.attention.layer_norm_epsilon", Meta::F32(self.epsilon)),
            ("tokenizer.model", Meta::Str("gpt2".into())),
            ("tokenizer.add_bos", Meta::Bool(false)),
        ] {
            w.meta(k, val);
        }
        let mut errors = Vec::new();
        let mut matrix = |w: &mut ArqWriter, name: &str, rows: usize, cols: usize, values: &[f32]| {
            write_matrix(w, (quant, &mut errors), name, (rows, cols), values)
        };
        let vector = write_vector;
        let (d, v, ctx) = (self.dim, self.vocab.len(), self.context_length);
        matrix(&mut w, "token_embd", v, d, &self.token_embd)?;
        matrix(&mut w, "position_embd", ctx, d, &self.position_embd)?;
        vector(&mut w, "output_norm", &self.output_norm.weight)?;
        vector(&mut w, "output_norm.bias", &self.output_norm.bias)?;
        if let Some(out) = &self.output {
            matrix(&mut w, "output", v, d, out)?;
        }
        let blob = self.tokenizer_blob()?;
        w.tensor("tokenizer", Dtype::U8, &[blob.len() as u64], blob)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let norms = [("attn_norm", &layer.attn_norm), ("ffn_norm", &layer.ffn_norm)];
            let linears = [
                ("attn_q", &layer.attn_q),
                ("attn_k", &layer.attn_k),
                ("attn_v", &layer.attn_v),
                ("attn_output", &layer.attn_output),
            ];
            let mlp = [("ffn_up", &layer.ffn_up), ("ffn_down", &layer.ffn_down)];
            let norm = |w: &mut ArqWriter, (role, n): (&str, &LayerNorm)| -> Result<()> {
                vector(w, &format!("blk.{l}.{role}"), &n.weight)?;
                vector(w, &format!("blk.{l}.{role}.bias"), &n.bias)
            };
            let mut linear = |w: &mut ArqWriter, (role, lin): (&str, &Linear)| -> Result<()> {
                let name = format!("blk.{l}.{role}");
                matrix(w, &name, lin.rows, lin.cols, &lin.weight)?;
                vector(w, &format!("{name}.bias"), &lin.bias)
            };
            norm(&mut w, norms[0])?;
            for lin in linears {
                linear(&mut w, lin)?;
            }
            norm(&mut w, norms[1])?;
            for lin in mlp {
                linear(&mut w, lin)?;
            }
        }
        let mut out = Vec::new();
        w.write(&mut out)?;
        Ok((out, errors))
    }
}

// ---------------------------------------------------------------------------------------
// tract reference

/// Runs the ONNX model in f32 with tract on one sequence of token ids and returns its
/// logits, `(tokens.len(), vocab)` flattened.
pub fn tract_logits(path: &Path, tokens: &[i64]) -> Result<Vec<f32>> {
    use tract_onnx::prelude::{tvec, DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor};
    let proto = read_proto(path)?;
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("{}: no graph", path.display()))?;
    let int32 = walker::token_input(graph).map_err(|e| anyhow!("{}: {e}", path.display()))?.1 == 6;
    if tokens.is_empty() {
        bail!("tract_logits: no tokens");
    }
    let t = tokens.len();
    let err = |e: anyhow::Error| anyhow!("{}: tract: {e:#}", path.display());
    let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    let fact = if int32 { i32::fact([1, t]) } else { i64::fact([1, t]) };
    let model = onnx
        .model_for_proto_model(&proto)
        .and_then(|m| m.with_input_fact(0, fact.into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(err)?;
    let input = if int32 {
        let v: Vec<i32> = tokens.iter().map(|&x| x as i32).collect();
        Tensor::from_shape(&[1, t], &v)
    } else {
        Tensor::from_shape(&[1, t], tokens)
    }
    .map_err(err)?;
    let out = model.run(tvec!(input.into_tvalue())).map_err(err)?;
    let view = out[0].to_plain_array_view::<f32>().map_err(err)?;
    Ok(view.iter().copied().collect())
}
