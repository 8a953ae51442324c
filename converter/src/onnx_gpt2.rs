//! ONNX → `.arq` for GPT-2 models (`runtime/FORMAT.md`, "GPT-2 models"), and tract-onnx
//! as an independent f32 reference ([`tract_logits`]).
//!
//! Like the PixelCNN importer (`onnx.rs`), this reads the protobuf with tract-onnx's
//! prost types and interprets the graph symbolically: walking the nodes in file order,
//! every computed tensor gets a role in the GPT-2 forward pass (the residual stream after
//! `p` sublayers, layer `l`'s queries split into heads, its masked attention scores, an
//! intermediate of its MLP activation, ...) from its operator and the roles of its
//! inputs, with its symbolic shape (`B`, `T` and numbers). Node names are never used.
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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{anyhow, bail, Result};
use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use arq::quant::QK8;
use arq::tokenizer::PreTokenizer;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use crate::onnx::{
    attr, attr_int, attr_ints, attr_str, clamp_index, decode_tensor, read_proto, Const, OnnxConvertSummary,
};
use crate::output::write_validated;
use crate::quantize::{encode_matrix, Quant, TensorError};

/// The GELU is checked on `x` in `-GELU_RANGE..=GELU_RANGE`, step `1/16`.
const GELU_RANGE: f64 = 8.0;
/// Allowed deviation from the tanh GELU, relative to `1 + |gelu(x)|`: the f32 rounding
/// of the constants is ~1e-7; a wrong constant in any digit that matters is ~1e-4.
const GELU_TOLERANCE: f64 = 1e-6;
/// Allowed relative deviation of the attention scale from `1/sqrt(head_dim)` (f32
/// rounding of the constant, or of `sqrt(head_dim)` as a divisor).
const SCALE_TOLERANCE: f64 = 1e-6;
/// A masked score must be filled with at most this (`-inf`, `finfo.min`, GPT-2's -1e4).
const MASK_FILL_MAX: f32 = -1e4;

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

/// GPT-2's byte-level alphabet: the character that stands for byte `b` in token strings
/// (`bytes_to_unicode`: printable Latin-1 stands for itself, the other 68 bytes for
/// U+0100, U+0101, ... in increasing order).
pub fn byte_level_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// `arq.vocab`: a JSON string of the characters in id order, or a JSON array of
/// one-character strings. Every character must be one byte in UTF-8, and distinct.
fn parse_vocab(json: &str) -> std::result::Result<Vec<char>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("model metadata arq.vocab is not JSON ({e})"))?;
    let chars: Vec<char> = match value {
        serde_json::Value::String(s) => s.chars().collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(id, v)| {
                let s = v.as_str().ok_or_else(|| format!("model metadata arq.vocab entry {id} is not a string"))?;
                let mut cs = s.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) => Ok(c),
                    _ => Err(format!(
                        "model metadata arq.vocab entry {id} is {s:?}: only one-character tokens can be imported \
                         (a character vocabulary; merges are not supported)"
                    )),
                }
            })
            .collect::<std::result::Result<_, _>>()?,
        _ => return Err("model metadata arq.vocab is neither a JSON string nor an array of strings".into()),
    };
    if chars.is_empty() {
        return Err("model metadata arq.vocab is empty".into());
    }
    let mut seen: HashMap<char, usize> = HashMap::new();
    for (id, &c) in chars.iter().enumerate() {
        if !c.is_ascii() {
            return Err(format!(
                "model metadata arq.vocab entry {id} is {c:?} (U+{:04X}, {} bytes in UTF-8): a byte-level vocabulary \
                 without merges has one token per byte, so only single-byte (ASCII) characters can be tokens",
                c as u32,
                c.len_utf8()
            ));
        }
        if let Some(first) = seen.insert(c, id) {
            return Err(format!("model metadata arq.vocab lists {c:?} twice (ids {first} and {id})"));
        }
    }
    Ok(chars)
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
        let p = Walker::run(graph, opset).map_err(at)?;

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
            ("arq.architecture", Meta::Str("gpt2".into())),
            ("arq.quant", Meta::Str(quant.name().into())),
            ("general.name", Meta::Str(self.name.clone())),
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
        let mut matrix = |w: &mut ArqWriter, name: &str, rows: usize, cols: usize, values: &[f32]| -> Result<()> {
            let dtype = quant.dtype_of(name);
            let (data, err) = encode_matrix(values, dtype);
            if let Some(e) = err {
                errors.push((name.to_string(), e));
            }
            w.tensor(name, dtype, &[rows as u64, cols as u64], data)?;
            Ok(())
        };
        let vector = |w: &mut ArqWriter, name: &str, values: &[f32]| -> Result<()> {
            w.tensor(name, Dtype::F32, &[values.len() as u64], bytemuck::cast_slice(values).to_vec())?;
            Ok(())
        };
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
// Conversion

/// `arq convert` for an ONNX GPT-2 (see [`crate::onnx::convert_onnx`], which reads the
/// file, checks the paths and dispatches here).
pub(crate) fn convert_proto(
    input: &Path,
    proto: &pb::ModelProto,
    out: &Path,
    quant: Quant,
) -> Result<OnnxConvertSummary> {
    let src = Gpt2Source::from_proto(input, proto)?;
    let (bytes, tensor_errors) = src.to_arq(quant)?;
    write_validated(&bytes, out)?;
    Ok(OnnxConvertSummary { bytes: bytes.len() as u64, tensor_errors, description: src.describe() })
}

// ---------------------------------------------------------------------------------------
// tract reference

/// Runs the ONNX model in f32 with tract on one sequence of token ids and returns its
/// logits, `(tokens.len(), vocab)` flattened.
pub fn tract_logits(path: &Path, tokens: &[i64]) -> Result<Vec<f32>> {
    use tract_onnx::prelude::{tvec, DatumExt, InferenceModelExt, IntoRunnable, IntoTValue, Tensor};
    let proto = read_proto(path)?;
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("{}: no graph", path.display()))?;
    let int32 = graph_input(graph).map_err(|e| anyhow!("{}: {e}", path.display()))?.1 == 6;
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

// ---------------------------------------------------------------------------------------
// The graph walker

type R<T> = std::result::Result<T, String>;

/// A decoded constant.
#[derive(Clone, Debug)]
struct Tensor {
    dims: Vec<usize>,
    data: Data,
}

#[derive(Clone, Debug)]
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl Tensor {
    fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    /// The one value of a one-element tensor.
    fn scalar(&self) -> Option<f64> {
        if self.len() != 1 {
            return None;
        }
        Some(match &self.data {
            Data::F32(v) => v[0] as f64,
            Data::I64(v) => v[0] as f64,
            Data::Bool(v) => v[0] as u8 as f64,
        })
    }

    fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }

    fn floats(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` as a truth value (non-zero).
    fn truth(&self, i: usize) -> bool {
        match &self.data {
            Data::F32(v) => v[i] != 0.0,
            Data::I64(v) => v[i] != 0,
            Data::Bool(v) => v[i],
        }
    }

    fn show_dims(&self) -> String {
        format!("{:?}", self.dims)
    }
}

/// Decodes a TensorProto: floats (f32/f16/bf16/f64, as f32), integers, booleans.
fn decode(t: &pb::TensorProto) -> R<Tensor> {
    if t.data_type == 9 {
        let dims: Vec<usize> = t.dims.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
        let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let data: Vec<bool> = if !t.raw_data.is_empty() {
            t.raw_data.iter().map(|&b| b != 0).collect()
        } else {
            t.int32_data.iter().map(|&b| b != 0).collect()
        };
        if count != Some(data.len()) {
            return Err(format!("tensor '{}' holds {} values for its shape {:?}", t.name, data.len(), t.dims));
        }
        return Ok(Tensor { dims, data: Data::Bool(data) });
    }
    match decode_tensor(t)? {
        Const::F32 { dims, data } => Ok(Tensor { dims, data: Data::F32(data) }),
        Const::I64 { data } => Ok(Tensor { dims: t.dims.iter().map(|&d| d as usize).collect(), data: Data::I64(data) }),
    }
}

/// The graph's one real input (not an initializer): its name and ONNX element type.
fn graph_input(g: &pb::GraphProto) -> R<(String, i32)> {
    use pb::type_proto::Value as T;
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = g.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect();
    let [x] = inputs.as_slice() else {
        return Err(format!("the graph has {} inputs; a GPT-2 has one, the token ids (batch, seq)", inputs.len()));
    };
    let Some(T::TensorType(tt)) = x.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(format!("input '{}' is not a tensor", x.name));
    };
    if tt.elem_type != 7 && tt.elem_type != 6 {
        return Err(format!("input '{}' has ONNX data type {}; expected int64 token ids", x.name, tt.elem_type));
    }
    if let Some(rank) = tt.shape.as_ref().map(|s| s.dim.len()) {
        if rank != 2 {
            return Err(format!("input '{}' has rank {rank}; expected token ids (batch, seq)", x.name));
        }
    }
    Ok((x.name.clone(), tt.elem_type))
}

/// A symbolic dimension `B^b T^t n` (`B` batch, `T` sequence length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dim {
    b: u8,
    t: u8,
    n: u64,
}

impl Dim {
    const B: Dim = Dim { b: 1, t: 0, n: 1 };
    const T: Dim = Dim { b: 0, t: 1, n: 1 };
    fn n(n: u64) -> Dim {
        Dim { b: 0, t: 0, n }
    }
    fn mul(self, o: Dim) -> Dim {
        Dim { b: self.b.saturating_add(o.b), t: self.t.saturating_add(o.t), n: self.n.saturating_mul(o.n) }
    }
    fn div(self, o: Dim) -> Option<Dim> {
        if o.n == 0 || !self.n.is_multiple_of(o.n) {
            return None;
        }
        Some(Dim { b: self.b.checked_sub(o.b)?, t: self.t.checked_sub(o.t)?, n: self.n / o.n })
    }
    fn show(self) -> String {
        let mut parts = Vec::new();
        if self.b > 0 {
            parts.push(if self.b == 1 { "B".to_string() } else { format!("B^{}", self.b) });
        }
        if self.t > 0 {
            parts.push(if self.t == 1 { "T".to_string() } else { format!("T^{}", self.t) });
        }
        if self.n != 1 || parts.is_empty() {
            parts.push(self.n.to_string());
        }
        parts.join("*")
    }
}

/// An element of an integer shape tensor: a dimension, or Reshape's `0` (copy) and `-1`
/// (infer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Dim(Dim),
    Zero,
    Infer,
}

impl Item {
    fn from_const(v: i64) -> R<Item> {
        match v {
            0 => Ok(Item::Zero),
            -1 => Ok(Item::Infer),
            v if v > 0 => Ok(Item::Dim(Dim::n(v as u64))),
            v => Err(format!("shape value {v}")),
        }
    }
    fn show(self) -> String {
        match self {
            Item::Dim(d) => d.show(),
            Item::Zero => "0".into(),
            Item::Infer => "-1".into(),
        }
    }
}

fn show_items(items: &[Item]) -> String {
    format!("({})", items.iter().map(|i| i.show()).collect::<Vec<_>>().join(", "))
}

fn show_dims(dims: &[Dim]) -> String {
    format!("({})", dims.iter().map(|d| d.show()).collect::<Vec<_>>().join(", "))
}

/// The end of a Slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    At(i64),
    /// The sequence length.
    T,
}

impl End {
    fn show(self) -> String {
        match self {
            End::At(v) => v.to_string(),
            End::T => "T".into(),
        }
    }
}

/// The axes of a per-head tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ax {
    B,
    T,
    /// Heads.
    H,
    /// Within a head.
    D,
}

const BTHD: [Ax; 4] = [Ax::B, Ax::T, Ax::H, Ax::D];
const BHTD: [Ax; 4] = [Ax::B, Ax::H, Ax::T, Ax::D];
const BHDT: [Ax; 4] = [Ax::B, Ax::H, Ax::D, Ax::T];

fn show_axes(a: &[Ax; 4]) -> String {
    let s: Vec<&str> = a
        .iter()
        .map(|x| match x {
            Ax::B => "B",
            Ax::T => "T",
            Ax::H => "heads",
            Ax::D => "head_dim",
        })
        .collect();
    format!("({})", s.join(", "))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Qkv {
    Q,
    K,
    V,
}

impl Qkv {
    fn name(self) -> &'static str {
        match self {
            Qkv::Q => "q",
            Qkv::K => "k",
            Qkv::V => "v",
        }
    }
}

/// A linear layer's place in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Qkv,
    Proj,
    Fc,
    Fc2,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Qkv => "qkv",
            Role::Proj => "proj",
            Role::Fc => "fc",
            Role::Fc2 => "fc2",
        }
    }
}

/// A node of a scalar function of the fc output `x` (the MLP activation).
#[derive(Clone, Copy, Debug)]
enum Expr {
    X,
    C(f64),
    Un(Un, usize),
    Bin(Bin, usize, usize),
}

#[derive(Clone, Copy, Debug)]
enum Un {
    Tanh,
    Sqrt,
    Neg,
    Reciprocal,
    GeluTanh,
}

#[derive(Clone, Copy, Debug)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl Bin {
    fn from_op(op: &str) -> Option<Bin> {
        Some(match op {
            "Add" => Bin::Add,
            "Sub" => Bin::Sub,
            "Mul" => Bin::Mul,
            "Div" => Bin::Div,
            "Pow" => Bin::Pow,
            _ => return None,
        })
    }
    fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            Bin::Add => a + b,
            Bin::Sub => a - b,
            Bin::Mul => a * b,
            Bin::Div => a / b,
            Bin::Pow => a.powf(b),
        }
    }
}

impl Un {
    fn from_op(op: &str) -> Option<Un> {
        Some(match op {
            "Tanh" => Un::Tanh,
            "Sqrt" => Un::Sqrt,
            "Neg" => Un::Neg,
            "Reciprocal" => Un::Reciprocal,
            _ => return None,
        })
    }
    fn apply(self, x: f64) -> f64 {
        match self {
            Un::Tanh => x.tanh(),
            Un::Sqrt => x.sqrt(),
            Un::Neg => -x,
            Un::Reciprocal => 1.0 / x,
            Un::GeluTanh => gelu_tanh(x),
        }
    }
}

/// GPT-2's `gelu_new`, the runtime's GELU.
fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// `exprs[id]` at `x`. Operands always precede their uses in `exprs`, so one pass in
/// order evaluates it (no recursion, and shared operands are evaluated once).
fn eval(exprs: &[Expr], id: usize, x: f64) -> f64 {
    let mut v = Vec::with_capacity(id + 1);
    for e in &exprs[..=id] {
        let y = match *e {
            Expr::X => x,
            Expr::C(c) => c,
            Expr::Un(op, a) => op.apply(v[a]),
            Expr::Bin(op, a, b) => op.apply(v[a], v[b]),
        };
        v.push(y);
    }
    v[id]
}

/// The role of a computed tensor.
#[derive(Clone, Debug)]
enum Kind {
    Tokens,
    /// An integer shape tensor (1-D, or a scalar).
    Shape {
        items: Vec<Item>,
        scalar: bool,
    },
    /// `Range(0, T, 1)`.
    Positions,
    /// `tok_emb[tokens]`.
    Emb,
    /// A constant sliced to `[0, T)` on its second-to-last (`rows`) and/or last (`cols`)
    /// axis: the positions `pos_emb[0:T]` or the causal mask; `rank` is its current rank
    /// (Unsqueeze adds leading axes), `negated` counts Not nodes.
    TSlice {
        t: Rc<Tensor>,
        rank: usize,
        rows: bool,
        cols: bool,
        negated: bool,
    },
    /// The residual stream after `p` sublayers (`2l + 1`: layer `l`'s attention).
    X(usize),
    /// A LayerNormalization of `X(p)`; `id` indexes the walker's `norms`.
    Norm {
        p: usize,
        id: usize,
    },
    /// A linear layer's output, with or without its bias added yet.
    Lin {
        role: Role,
        l: usize,
        biased: bool,
    },
    /// The q, k or v part of layer `l`'s qkv, `(B, T, d)`.
    Part {
        l: usize,
        which: Qkv,
    },
    /// The part split into heads; `scale`: the product of constant factors applied.
    Heads {
        l: usize,
        which: Qkv,
        axes: [Ax; 4],
        scale: f64,
    },
    /// `q kᵀ`, `(B, H, T, T)`, times `scale`; `masked` once the causal mask is applied.
    Scores {
        l: usize,
        masked: bool,
        scale: f64,
    },
    Probs(usize),
    /// `probs v` per head.
    Ctx {
        l: usize,
        axes: [Ax; 4],
    },
    /// The heads concatenated, `(B, T, d)`.
    Merged(usize),
    /// Layer `l`'s MLP activation so far: `exprs[expr]` of the fc output.
    Act {
        l: usize,
        expr: usize,
    },
    Logits,
}

#[derive(Clone, Debug)]
struct Val {
    kind: Kind,
    /// The node that computed it (`usize::MAX` for the graph input).
    node: usize,
}

/// An input of a node: computed, or a constant.
enum Operand {
    V(Val),
    C(Rc<Tensor>),
}

/// A linear layer found in the graph.
#[derive(Clone, Debug)]
struct FoundLinear {
    node: usize,
    lin: Linear,
    has_bias: bool,
    /// Its output was used without a bias, so none may be added later.
    used_unbiased: bool,
}

#[derive(Clone, Debug)]
struct FoundNorm {
    node: usize,
    p: usize,
    norm: LayerNorm,
}

#[derive(Clone, Debug, Default)]
struct LayerParts {
    ln_1: Option<usize>,
    qkv: Option<FoundLinear>,
    proj: Option<FoundLinear>,
    ln_2: Option<usize>,
    fc: Option<FoundLinear>,
    fc2: Option<FoundLinear>,
}

impl LayerParts {
    fn get(&self, r: Role) -> Option<&FoundLinear> {
        match r {
            Role::Qkv => self.qkv.as_ref(),
            Role::Proj => self.proj.as_ref(),
            Role::Fc => self.fc.as_ref(),
            Role::Fc2 => self.fc2.as_ref(),
        }
    }

    fn slot(&mut self, r: Role) -> &mut Option<FoundLinear> {
        match r {
            Role::Qkv => &mut self.qkv,
            Role::Proj => &mut self.proj,
            Role::Fc => &mut self.fc,
            Role::Fc2 => &mut self.fc2,
        }
    }
}

struct Parsed {
    vocab_size: usize,
    dim: usize,
    heads: usize,
    ffn: usize,
    context_length: usize,
    epsilon: f32,
    token_embd: Vec<f32>,
    position_embd: Vec<f32>,
    output_norm: LayerNorm,
    output: Option<Vec<f32>>,
    layers: Vec<Gpt2Layer>,
}

struct Walker<'g> {
    graph: &'g pb::GraphProto,
    opset: i64,
    consts: HashMap<String, R<Rc<Tensor>>>,
    names: HashMap<String, Val>,
    /// Names that are the graph output or reach it through Identity-like nodes.
    output_names: HashSet<String>,
    exprs: Vec<Expr>,
    /// `tok_emb` `(V, d)` and its Gather node.
    tok_emb: Option<(Rc<Tensor>, usize)>,
    /// `pos_emb` `(C, d)` and the node that added it.
    pos_emb: Option<(Rc<Tensor>, usize)>,
    /// Heads and the Reshape that set them.
    heads: Option<(usize, usize)>,
    /// The MLP width and the fc that set it.
    ffn: Option<(usize, usize)>,
    /// The LayerNorm epsilon and the node that set it.
    epsilon: Option<(f32, usize)>,
    norms: Vec<FoundNorm>,
    layers: Vec<LayerParts>,
    /// The head: its node, its LayerNorm (in `norms`), its `(out, in)` weight (`None`:
    /// tied).
    head: Option<(usize, usize, Option<Vec<f32>>)>,
    /// Masks found causal: (tensor address, polarity).
    causal_masks: HashSet<(usize, bool)>,
}

impl<'g> Walker<'g> {
    fn run(graph: &'g pb::GraphProto, opset: i64) -> R<Parsed> {
        let (input, _) = graph_input(graph)?;
        let mut wk = Walker {
            graph,
            opset,
            consts: HashMap::new(),
            names: HashMap::new(),
            output_names: HashSet::new(),
            exprs: Vec::new(),
            tok_emb: None,
            pos_emb: None,
            heads: None,
            ffn: None,
            epsilon: None,
            norms: Vec::new(),
            layers: Vec::new(),
            head: None,
            causal_masks: HashSet::new(),
        };
        if graph.output.len() != 1 {
            return Err(format!("the graph has {} outputs; a GPT-2 has one (the logits)", graph.output.len()));
        }
        wk.output_names.insert(graph.output[0].name.clone());
        for n in graph.node.iter().rev() {
            let passes = matches!(n.op_type.as_str(), "Identity" | "Dropout" | "Cast");
            if passes && n.output.first().is_some_and(|o| wk.output_names.contains(o)) {
                if let Some(i) = n.input.first() {
                    wk.output_names.insert(i.clone());
                }
            }
        }
        for t in &graph.initializer {
            wk.consts.insert(t.name.clone(), decode(t).map(Rc::new));
        }
        wk.names.insert(input, Val { kind: Kind::Tokens, node: usize::MAX });
        for (i, n) in graph.node.iter().enumerate() {
            wk.node(i, n).map_err(|e| format!("{}: {e}", Self::node_label(i, n)))?;
        }
        wk.finish()
    }

    fn node_label(i: usize, n: &pb::NodeProto) -> String {
        format!("node {i} ({} \"{}\")", n.op_type, n.name)
    }

    fn label(&self, i: usize) -> String {
        match self.graph.node.get(i) {
            Some(n) => Self::node_label(i, n),
            None => "the graph input".into(),
        }
    }

    fn dim(&self) -> Option<usize> {
        self.tok_emb.as_ref().map(|(t, _)| t.dims[1])
    }

    fn describe(&self, k: &Kind) -> String {
        match k {
            Kind::Tokens => "the token ids".into(),
            Kind::Shape { items, .. } => format!("the shape values {}", show_items(items)),
            Kind::Positions => "the positions Range(0, T)".into(),
            Kind::Emb => "the token embedding".into(),
            Kind::TSlice { t, rows, cols, .. } => {
                let which = match (rows, cols) {
                    (true, true) => "rows and columns",
                    (true, false) => "rows",
                    _ => "columns",
                };
                format!("a constant {} with its {which} sliced to T", t.show_dims())
            }
            Kind::X(0) => "the embedding sum (token + position)".into(),
            Kind::X(p) if p % 2 == 1 => format!("the residual stream after layer {}'s attention", p / 2),
            Kind::X(p) => format!("the residual stream after layer {}", p / 2 - 1),
            Kind::Norm { p, .. } => format!("a LayerNorm of {}", self.describe(&Kind::X(*p))),
            Kind::Lin { role, l, biased } => {
                format!("layer {l}'s {} output{}", role.name(), if *biased { "" } else { " (before its bias)" })
            }
            Kind::Part { l, which } => format!("layer {l}'s {}", which.name()),
            Kind::Heads { l, which, axes, .. } => format!("layer {l}'s {} heads {}", which.name(), show_axes(axes)),
            Kind::Scores { l, masked, .. } => {
                format!("layer {l}'s {}attention scores", if *masked { "masked " } else { "" })
            }
            Kind::Probs(l) => format!("layer {l}'s attention probabilities"),
            Kind::Ctx { l, axes } => format!("layer {l}'s attention output {}", show_axes(axes)),
            Kind::Merged(l) => format!("layer {l}'s attention output (B, T, d)"),
            Kind::Act { l, .. } => format!("layer {l}'s MLP activation (partial)"),
            Kind::Logits => "the logits".into(),
        }
    }

    /// The symbolic shape of a computed tensor, where the pattern fixes it.
    fn dims_of(&self, k: &Kind) -> Option<Vec<Dim>> {
        if let Kind::Tokens = k {
            return Some(vec![Dim::B, Dim::T]);
        }
        let d = Dim::n(self.dim()? as u64);
        let h = self.heads.map(|(h, _)| h as u64);
        let ax = |a: &[Ax; 4]| -> Option<Vec<Dim>> {
            let (h, hd) = (h?, d.n / h?);
            Some(
                a.iter()
                    .map(|x| match x {
                        Ax::B => Dim::B,
                        Ax::T => Dim::T,
                        Ax::H => Dim::n(h),
                        Ax::D => Dim::n(hd),
                    })
                    .collect(),
            )
        };
        match k {
            Kind::Emb | Kind::X(_) | Kind::Norm { .. } | Kind::Part { .. } | Kind::Merged(_) => {
                Some(vec![Dim::B, Dim::T, d])
            }
            Kind::Lin { role, l, .. } => {
                let out = self.layers.get(*l)?.get(*role)?.lin.rows;
                Some(vec![Dim::B, Dim::T, Dim::n(out as u64)])
            }
            Kind::Heads { axes, .. } | Kind::Ctx { axes, .. } => ax(axes),
            _ => None,
        }
    }

    fn add(&mut self, name: &str, v: Val) {
        if !name.is_empty() {
            self.names.insert(name.to_string(), v);
        }
    }

    fn constant(&self, name: &str) -> R<Rc<Tensor>> {
        match self.consts.get(name) {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err(e)) => Err(e.clone()),
            None if self.names.contains_key(name) => Err(format!("'{name}' must be a constant")),
            None => Err(format!("input '{name}' is not defined")),
        }
    }

    /// The node's first output name ("" if none).
    fn out(n: &pb::NodeProto) -> String {
        n.output.first().cloned().unwrap_or_default()
    }

    fn input_name(n: &pb::NodeProto, i: usize) -> Option<&str> {
        n.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn operand(&self, n: &pb::NodeProto, i: usize) -> R<Operand> {
        let name = Self::input_name(n, i).ok_or_else(|| format!("input {i} is missing"))?;
        if let Some(v) = self.names.get(name) {
            return Ok(Operand::V(v.clone()));
        }
        match self.consts.get(name) {
            Some(Ok(c)) => Ok(Operand::C(c.clone())),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("input '{name}' is not computed by an earlier node")),
        }
    }

    /// Input `i`, which must be computed (not a constant).
    fn val(&self, n: &pb::NodeProto, i: usize) -> R<Val> {
        match self.operand(n, i)? {
            Operand::V(v) => Ok(v),
            Operand::C(_) => Err(format!(
                "input {i} is the constant '{}' where the pattern has a computed tensor",
                Self::input_name(n, i).unwrap_or("")
            )),
        }
    }

    /// Input `i` as constant integers (absent: `None`).
    fn const_ints(&self, n: &pb::NodeProto, i: usize) -> R<Option<Vec<i64>>> {
        match Self::input_name(n, i) {
            None => Ok(None),
            Some(name) => {
                let c = self.constant(name)?;
                c.ints().map(|v| Some(v.to_vec())).ok_or_else(|| format!("'{name}' must hold integers"))
            }
        }
    }

    /// Input `i` of a Slice (its ends): constant integers or the sequence length `T`.
    fn slice_ends(&self, n: &pb::NodeProto, i: usize) -> R<Option<Vec<End>>> {
        let Some(name) = Self::input_name(n, i) else { return Ok(None) };
        match self.operand(n, i)? {
            Operand::V(Val { kind: Kind::Shape { items, .. }, .. }) => items
                .iter()
                .map(|it| match it {
                    Item::Dim(Dim::T) => Ok(End::T),
                    Item::Dim(Dim { b: 0, t: 0, n }) => Ok(End::At((*n).min(i64::MAX as u64) as i64)),
                    it => Err(format!("Slice to {}", it.show())),
                })
                .collect::<R<Vec<_>>>()
                .map(Some),
            Operand::V(v) => Err(format!("Slice ends '{name}' are {}", self.describe(&v.kind))),
            Operand::C(c) => {
                let ints = c.ints().ok_or_else(|| format!("'{name}' must hold integers"))?;
                Ok(Some(ints.iter().map(|&v| End::At(v)).collect()))
            }
        }
    }

    /// Input `i` as shape items: a computed shape tensor or constant integers.
    fn shape_items(&self, n: &pb::NodeProto, i: usize) -> R<Option<Vec<Item>>> {
        let Some(name) = Self::input_name(n, i) else { return Ok(None) };
        match self.operand(n, i)? {
            Operand::V(Val { kind: Kind::Shape { items, .. }, .. }) => Ok(Some(items)),
            Operand::V(v) => Err(format!("input '{name}' is {}, not a shape", self.describe(&v.kind))),
            Operand::C(c) => {
                let ints = c.ints().ok_or_else(|| format!("'{name}' must hold integers"))?;
                Ok(Some(ints.iter().map(|&v| Item::from_const(v)).collect::<R<Vec<_>>>()?))
            }
        }
    }

    fn node(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(format!("operator domain '{}' is not supported", n.domain));
        }
        let out0 = Self::out(n);
        match n.op_type.as_str() {
            "Constant" => {
                let c = if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
                    decode(t)
                } else if let Some(a) = attr(n, "value_ints") {
                    Ok(Tensor { dims: vec![a.ints.len()], data: Data::I64(a.ints.clone()) })
                } else if let Some(a) = attr(n, "value_int") {
                    Ok(Tensor { dims: vec![], data: Data::I64(vec![a.i]) })
                } else if let Some(a) = attr(n, "value_floats") {
                    Ok(Tensor { dims: vec![a.floats.len()], data: Data::F32(a.floats.clone()) })
                } else if let Some(a) = attr(n, "value_float") {
                    Ok(Tensor { dims: vec![], data: Data::F32(vec![a.f]) })
                } else {
                    Err("Constant without a supported value attribute".into())
                };
                self.consts.insert(out0, c.map(Rc::new));
                Ok(())
            }
            "Identity" => self.alias(n),
            "Dropout" => {
                if let Some(name) = Self::input_name(n, 2) {
                    if self.constant(name)?.scalar() != Some(0.0) {
                        return Err("Dropout in training mode".into());
                    }
                }
                if n.output.get(1).is_some_and(|m| !m.is_empty()) {
                    return Err("Dropout with a mask output".into());
                }
                self.alias(n)
            }
            "Cast" => self.cast(i, n),
            "Shape" => self.shape(i, n),
            "Gather" => self.gather(i, n),
            "Unsqueeze" | "Squeeze" => self.squeeze(i, n),
            "Concat" => self.concat(i, n),
            "Range" => self.range(i, n),
            "Slice" => self.slice(i, n),
            "Split" => self.split(i, n),
            "Reshape" => self.reshape(i, n),
            "Transpose" => self.transpose(i, n),
            "Not" => {
                let v = self.val(n, 0)?;
                match v.kind {
                    Kind::TSlice { t, rank, rows, cols, negated } => {
                        let kind = Kind::TSlice { t, rank, rows, cols, negated: !negated };
                        self.add(&out0, Val { kind, node: i });
                        Ok(())
                    }
                    k => Err(format!("Not of {}", self.describe(&k))),
                }
            }
            "LayerNormalization" => self.layer_norm(i, n),
            "MatMul" | "Gemm" => self.matmul(i, n),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" => self.binary(i, n),
            "Tanh" | "Sqrt" | "Neg" | "Reciprocal" => self.unary(i, n),
            "Gelu" => {
                let v = self.val(n, 0)?;
                let approx = attr_str(n, "approximate").unwrap_or_else(|| "none".into());
                if approx != "tanh" {
                    return Err(format!(
                        "Gelu with approximate = '{approx}' (the exact erf GELU); the runtime computes GPT-2's tanh \
                         approximation: export with approximate='tanh'"
                    ));
                }
                let (Some(l), x) = self.act_operand(&Operand::V(v))? else {
                    return Err("internal: an MLP activation of constants".into());
                };
                let e = self.expr(Expr::Un(Un::GeluTanh, x));
                self.add(&out0, Val { kind: Kind::Act { l, expr: e }, node: i });
                Ok(())
            }
            "Where" => self.where_node(i, n),
            "Softmax" => self.softmax(i, n),
            op => {
                let on = n.input.first().and_then(|s| self.names.get(s)).map(|v| v.kind.clone());
                let hint = match (op, on) {
                    ("Erf", _) => ": the exact erf GELU; the runtime computes GPT-2's tanh approximation (export with \
                         gelu(approximate='tanh'))"
                        .to_string(),
                    (_, Some(Kind::Lin { role: Role::Fc, l, .. } | Kind::Act { l, .. })) => format!(
                        " in layer {l}'s MLP activation (expected the tanh GELU: Pow/Mul/Add/Mul/Tanh/Add/Mul/Mul)"
                    ),
                    ("ReduceMean", _) => {
                        ": a decomposed LayerNorm? Export with opset >= 17 (LayerNormalization)".to_string()
                    }
                    _ => String::new(),
                };
                Err(format!("unsupported operator {op}{hint}"))
            }
        }
    }

    fn alias(&mut self, n: &pb::NodeProto) -> R<()> {
        let src = Self::input_name(n, 0).ok_or("input 0 is missing")?;
        let out0 = Self::out(n);
        if let Some(v) = self.names.get(src).cloned() {
            self.add(&out0, v);
        } else if let Some(c) = self.consts.get(src).cloned() {
            self.consts.insert(out0, c);
        } else {
            return Err(format!("input '{src}' is not computed by an earlier node"));
        }
        Ok(())
    }

    fn cast(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let to = attr_int(n, "to").ok_or("Cast without 'to'")?;
        let out0 = Self::out(n);
        match self.operand(n, 0)? {
            Operand::C(c) => {
                let data = match (to, &c.data) {
                    (1, Data::F32(v)) => Data::F32(v.clone()),
                    (1, Data::I64(v)) => Data::F32(v.iter().map(|&x| x as f32).collect()),
                    (6 | 7, Data::I64(v)) => Data::I64(v.clone()),
                    (9, _) => Data::Bool((0..c.len()).map(|j| c.truth(j)).collect()),
                    (to, _) => return Err(format!("Cast of a constant to ONNX data type {to} is not supported")),
                };
                self.consts.insert(out0, Ok(Rc::new(Tensor { dims: c.dims.clone(), data })));
                Ok(())
            }
            Operand::V(v) => {
                let ok = match &v.kind {
                    Kind::Tokens | Kind::Shape { .. } | Kind::Positions => to == 7 || to == 6,
                    Kind::TSlice { .. } => to == 9 || to == 1,
                    _ => to == 1,
                };
                if !ok {
                    return Err(format!(
                        "Cast of {} to ONNX data type {to} (the runtime computes in f32)",
                        self.describe(&v.kind)
                    ));
                }
                self.add(&out0, Val { node: i, ..v });
                Ok(())
            }
        }
    }

    fn shape(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let dims = self.dims_of(&v.kind).ok_or_else(|| format!("Shape of {}", self.describe(&v.kind)))?;
        let r = dims.len() as i64;
        let s = clamp_index(attr_int(n, "start").unwrap_or(0), r);
        let e = clamp_index(attr_int(n, "end").unwrap_or(r), r);
        let items = dims[s as usize..e.max(s) as usize].iter().map(|&d| Item::Dim(d)).collect();
        self.add(&Self::out(n), Val { kind: Kind::Shape { items, scalar: false }, node: i });
        Ok(())
    }

    fn gather(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let axis = attr_int(n, "axis").unwrap_or(0);
        let out0 = Self::out(n);
        let data = self.operand(n, 0)?;
        let idx = self.operand(n, 1)?;
        match (data, idx) {
            (Operand::V(Val { kind: Kind::Shape { items, .. }, .. }), Operand::C(c)) if axis == 0 => {
                let ix = c.ints().ok_or("Gather of shape values with non-integer indices")?;
                let picked = ix
                    .iter()
                    .map(|&j| {
                        let j = if j < 0 { j + items.len() as i64 } else { j };
                        usize::try_from(j).ok().and_then(|j| items.get(j).copied()).ok_or("Gather index out of range")
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let kind = Kind::Shape { items: picked, scalar: c.dims.is_empty() };
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
            (Operand::C(t), Operand::V(v)) if axis == 0 => match v.kind {
                Kind::Tokens => {
                    if t.dims.len() != 2 || t.floats().is_none() {
                        return Err(format!("the token embedding {} is not a float matrix (V, d)", t.show_dims()));
                    }
                    let d = t.dims[1];
                    if d == 0 || !d.is_multiple_of(QK8) {
                        return Err(format!("the model width d = {d} is not a positive multiple of 32"));
                    }
                    if let Some((_, at)) = &self.tok_emb {
                        return Err(format!("a second token embedding (the first is {})", self.label(*at)));
                    }
                    self.tok_emb = Some((t, i));
                    self.add(&out0, Val { kind: Kind::Emb, node: i });
                    Ok(())
                }
                Kind::Positions => {
                    let rank = t.dims.len();
                    let kind = Kind::TSlice { t, rank, rows: true, cols: false, negated: false };
                    self.add(&out0, Val { kind, node: i });
                    Ok(())
                }
                k => Err(format!("Gather of a constant by {}", self.describe(&k))),
            },
            (Operand::V(v), _) => Err(format!("Gather from {}", self.describe(&v.kind))),
            _ => Err(format!("Gather on axis {axis} is not part of the pattern")),
        }
    }

    fn squeeze(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let axes = match attr_ints(n, "axes") {
            Some(a) => a,
            None => self.const_ints(n, 1)?.unwrap_or_default(),
        };
        let out0 = Self::out(n);
        let unsq = n.op_type == "Unsqueeze";
        let v = self.val(n, 0)?;
        let kind = match v.kind {
            Kind::Shape { items, scalar: true } if unsq && axes == [0] => Kind::Shape { items, scalar: false },
            Kind::Shape { items, scalar: false } if !unsq && items.len() == 1 && (axes == [0] || axes.is_empty()) => {
                Kind::Shape { items, scalar: true }
            }
            Kind::Positions if unsq && axes == [0] => Kind::Positions,
            Kind::TSlice { t, rank, rows, cols, negated } if unsq && axes.iter().all(|&a| a == 0) => {
                Kind::TSlice { t, rank: rank + axes.len(), rows, cols, negated }
            }
            k => return Err(format!("{} of {} on axes {axes:?}", n.op_type, self.describe(&k))),
        };
        self.add(&out0, Val { kind, node: i });
        Ok(())
    }

    fn concat(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let axis = attr_int(n, "axis").unwrap_or(0);
        let mut items = Vec::new();
        for j in 0..n.input.len() {
            match self.operand(n, j)? {
                Operand::V(Val { kind: Kind::Shape { items: it, scalar: false }, .. }) if axis == 0 => items.extend(it),
                Operand::C(c) if axis == 0 && c.dims.len() == 1 && c.ints().is_some() => {
                    for &v in c.ints().unwrap_or_default() {
                        items.push(Item::from_const(v)?);
                    }
                }
                Operand::V(v) => {
                    return Err(format!("Concat of {} (only shape values are concatenated)", self.describe(&v.kind)))
                }
                Operand::C(c) => return Err(format!("Concat of a constant {} on axis {axis}", c.show_dims())),
            }
        }
        self.add(&Self::out(n), Val { kind: Kind::Shape { items, scalar: false }, node: i });
        Ok(())
    }

    fn range(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let start = self.operand(n, 0)?;
        let limit = self.operand(n, 1)?;
        let delta = self.operand(n, 2)?;
        let is = |o: &Operand, x: f64| matches!(o, Operand::C(c) if c.scalar() == Some(x));
        let to_t = matches!(&limit, Operand::V(Val { kind: Kind::Shape { items, .. }, .. }) if items[..] == [Item::Dim(Dim::T)]);
        if !(is(&start, 0.0) && is(&delta, 1.0) && to_t) {
            return Err("Range is not Range(0, T, 1) over the sequence length".into());
        }
        self.add(&Self::out(n), Val { kind: Kind::Positions, node: i });
        Ok(())
    }

    /// Normalizes a possibly negative axis of a rank-`r` tensor.
    fn axis(a: i64, r: usize) -> R<usize> {
        let a2 = if a < 0 { a + r as i64 } else { a };
        usize::try_from(a2).ok().filter(|&x| x < r).ok_or_else(|| format!("axis {a} of a rank-{r} tensor"))
    }

    fn slice(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let out0 = Self::out(n);
        let (starts, ends, axes, steps) = if attr(n, "starts").is_some() {
            let ends = attr_ints(n, "ends").map(|v| v.iter().map(|&x| End::At(x)).collect());
            (attr_ints(n, "starts"), ends, attr_ints(n, "axes"), None)
        } else {
            (self.const_ints(n, 1)?, self.slice_ends(n, 2)?, self.const_ints(n, 3)?, self.const_ints(n, 4)?)
        };
        let (Some(starts), Some(ends)) = (starts, ends) else {
            return Err("Slice without starts and ends".into());
        };
        if let Some(steps) = &steps {
            if steps.iter().any(|&s| s != 1) {
                return Err(format!("Slice steps {steps:?} (only 1 is supported)"));
            }
        }
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        if ends.len() != starts.len() || axes.len() != starts.len() {
            return Err("Slice starts, ends and axes differ in length".into());
        }
        match self.operand(n, 0)? {
            // pos_emb[0:T] or the mask[0:T, 0:T].
            Operand::C(t) => {
                let rank = t.dims.len();
                let kind = Kind::TSlice { t, rank, rows: false, cols: false, negated: false };
                let kind = self.t_slice(kind, &starts, &ends, &axes)?;
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
            Operand::V(Val { kind: k @ Kind::TSlice { .. }, .. }) => {
                let kind = self.t_slice(k, &starts, &ends, &axes)?;
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
            Operand::V(Val { kind: Kind::Lin { role: Role::Qkv, l, biased }, .. }) => {
                let d = self.dim().unwrap_or(0) as i64;
                if axes.len() != 1 || Self::axis(axes[0], 3)? != 2 {
                    return Err(format!("Slice of layer {l}'s qkv on axes {axes:?} (expected the last axis)"));
                }
                let End::At(end) = ends[0] else {
                    return Err(format!("Slice of layer {l}'s qkv to T"));
                };
                let (s, e) = (clamp_index(starts[0], 3 * d), clamp_index(end, 3 * d));
                let which = match (s / d.max(1), e - s) {
                    (0, len) if len == d && s == 0 => Qkv::Q,
                    (1, len) if len == d && s == d => Qkv::K,
                    (2, len) if len == d && s == 2 * d => Qkv::V,
                    _ => {
                        return Err(format!(
                        "Slice [{s}, {e}) of layer {l}'s qkv (3d = {}) is not its q [0, d), k [d, 2d) or v [2d, 3d)",
                        3 * d
                    ))
                    }
                };
                self.use_lin(Role::Qkv, l, biased)?;
                self.add(&out0, Val { kind: Kind::Part { l, which }, node: i });
                Ok(())
            }
            Operand::V(v) => Err(format!("Slice of {}", self.describe(&v.kind))),
        }
    }

    /// A Slice of a constant along its last two axes, from 0 to `T`.
    fn t_slice(&self, k: Kind, starts: &[i64], ends: &[End], axes: &[i64]) -> R<Kind> {
        let Kind::TSlice { t, rank, mut rows, mut cols, negated } = k else { unreachable!("a TSlice") };
        if rank < 2 {
            return Err(format!("Slice of a constant {} (expected pos_emb or the causal mask)", t.show_dims()));
        }
        for (j, &a) in axes.iter().enumerate() {
            let a = Self::axis(a, rank)?;
            if starts[j] != 0 || ends[j] != End::T {
                return Err(format!(
                    "Slice [{}, {}) of a constant {} on axis {a}: only [0, T) with T the sequence length is part \
                     of the pattern",
                    starts[j],
                    ends[j].show(),
                    t.show_dims()
                ));
            }
            if a == rank - 2 {
                rows = true;
            } else if a == rank - 1 {
                cols = true;
            } else {
                return Err(format!("Slice of a constant {} on axis {a}", t.show_dims()));
            }
        }
        Ok(Kind::TSlice { t, rank, rows, cols, negated })
    }

    fn split(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let Kind::Lin { role: Role::Qkv, l, biased } = v.kind else {
            return Err(format!("Split of {}", self.describe(&v.kind)));
        };
        let d = self.dim().unwrap_or(0) as i64;
        let axis = Self::axis(attr_int(n, "axis").unwrap_or(0), 3)?;
        let sizes = match attr_ints(n, "split") {
            Some(s) => Some(s),
            None => self.const_ints(n, 1)?,
        };
        let equal = sizes.as_ref().is_none_or(|s| s[..] == [d, d, d]);
        if axis != 2 || n.output.len() != 3 || !equal {
            return Err(format!("Split of layer {l}'s qkv is not three equal parts of the last axis (q, k, v)"));
        }
        self.use_lin(Role::Qkv, l, biased)?;
        for (o, which) in n.output.iter().zip([Qkv::Q, Qkv::K, Qkv::V]) {
            self.add(o, Val { kind: Kind::Part { l, which }, node: i });
        }
        Ok(())
    }

    fn reshape(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let spec = self.shape_items(n, 1)?.ok_or("Reshape without a shape")?;
        let allowzero = attr_int(n, "allowzero").unwrap_or(0) != 0;
        let input = self.dims_of(&v.kind).ok_or_else(|| format!("Reshape of {}", self.describe(&v.kind)))?;
        let out = resolve_reshape(&input, &spec, allowzero).ok_or_else(|| {
            format!("Reshape of {} {} to {}", self.describe(&v.kind), show_dims(&input), show_items(&spec))
        })?;
        let d = self.dim().unwrap_or(0) as u64;
        let out0 = Self::out(n);
        match v.kind {
            Kind::Part { l, which } => {
                let [Dim::B, Dim::T, h, hd] = out[..] else {
                    return Err(format!(
                        "Reshape of layer {l}'s {} to {}; expected (B, T, heads, head_dim)",
                        which.name(),
                        show_dims(&out)
                    ));
                };
                if h.b + h.t + hd.b + hd.t != 0 || h.n * hd.n != d {
                    return Err(format!("Reshape of layer {l}'s {} to {}", which.name(), show_dims(&out)));
                }
                let h = h.n as usize;
                match self.heads {
                    None => self.heads = Some((h, i)),
                    Some((have, _)) if have == h => {}
                    Some((have, at)) => {
                        return Err(format!("{h} heads, but {} split {have} heads", self.label(at)));
                    }
                }
                self.add(&out0, Val { kind: Kind::Heads { l, which, axes: BTHD, scale: 1.0 }, node: i });
                Ok(())
            }
            Kind::Ctx { l, axes } => {
                if axes != BTHD || out[..] != [Dim::B, Dim::T, Dim::n(d)] {
                    return Err(format!(
                        "Reshape of layer {l}'s attention output {} to {}; expected the heads concatenated: \
                         (B, T, heads, head_dim) to (B, T, d)",
                        show_axes(&axes),
                        show_dims(&out)
                    ));
                }
                self.add(&out0, Val { kind: Kind::Merged(l), node: i });
                Ok(())
            }
            k => Err(format!("Reshape of {}", self.describe(&k))),
        }
    }

    fn transpose(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let perm = attr_ints(n, "perm");
        let out0 = Self::out(n);
        match self.operand(n, 0)? {
            Operand::C(c) => {
                let (Some(w), &[r, k]) = (c.floats(), &c.dims[..]) else {
                    return Err(format!("Transpose of a constant {}", c.show_dims()));
                };
                if perm.as_ref().is_some_and(|p| p[..] != [1, 0]) {
                    return Err(format!("Transpose of a matrix with perm {perm:?}"));
                }
                let data = transpose(w, r, k);
                self.consts.insert(out0, Ok(Rc::new(Tensor { dims: vec![k, r], data: Data::F32(data) })));
                Ok(())
            }
            Operand::V(v) => {
                let (l, axes) = match &v.kind {
                    Kind::Heads { l, axes, .. } | Kind::Ctx { l, axes } => (*l, *axes),
                    k => return Err(format!("Transpose of {}", self.describe(k))),
                };
                let perm = perm.unwrap_or_else(|| vec![3, 2, 1, 0]);
                let mut seen = [false; 4];
                let mut new = axes;
                if perm.len() != 4 {
                    return Err(format!("Transpose perm {perm:?} of layer {l}'s per-head tensor"));
                }
                for (j, &p) in perm.iter().enumerate() {
                    let p = usize::try_from(p)
                        .ok()
                        .filter(|&p| p < 4 && !seen[p])
                        .ok_or("Transpose perm is not a permutation")?;
                    seen[p] = true;
                    new[j] = axes[p];
                }
                let kind = match v.kind {
                    Kind::Heads { l, which, scale, .. } => Kind::Heads { l, which, axes: new, scale },
                    _ => Kind::Ctx { l, axes: new },
                };
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
        }
    }

    fn layer_norm(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let Kind::X(p) = v.kind else {
            return Err(format!("LayerNormalization of {}; expected the residual stream", self.describe(&v.kind)));
        };
        let d = self.dim().unwrap_or(0);
        let axis = attr_int(n, "axis").unwrap_or(-1);
        if axis != -1 && axis != 2 {
            return Err(format!("LayerNormalization on axis {axis} (expected the last, -1)"));
        }
        let vec_of = |j: usize, what: &str| -> R<Option<Vec<f32>>> {
            let Some(name) = Self::input_name(n, j) else { return Ok(None) };
            let c = self.constant(name)?;
            match c.floats() {
                Some(f) if f.len() == d && c.dims.iter().filter(|&&x| x != 1).count() <= 1 => Ok(Some(f.to_vec())),
                _ => Err(format!("LayerNormalization {what} '{name}' {} is not d = {d} floats", c.show_dims())),
            }
        };
        let weight = vec_of(1, "scale")?.ok_or("LayerNormalization without a scale")?;
        let bias = vec_of(2, "bias")?.unwrap_or_else(|| vec![0.0; d]);
        let eps = attr(n, "epsilon").map_or(1e-5, |a| a.f);
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(format!("LayerNormalization epsilon {eps}"));
        }
        match self.epsilon {
            None => self.epsilon = Some((eps, i)),
            Some((e, _)) if e == eps => {}
            Some((e, at)) => return Err(format!("epsilon {eps:e}, but {} uses {e:e}", self.label(at))),
        }
        self.norms.push(FoundNorm { node: i, p, norm: LayerNorm { weight, bias } });
        let id = self.norms.len() - 1;
        self.add(&Self::out(n), Val { kind: Kind::Norm { p, id }, node: i });
        Ok(())
    }

    fn matmul(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let a = self.val(n, 0)?;
        let b = self.operand(n, 1)?;
        let out0 = Self::out(n);
        let gemm = n.op_type == "Gemm";
        if let Operand::V(b) = &b {
            if gemm {
                return Err("Gemm with a computed B".into());
            }
            let kind = match (&a.kind, &b.kind) {
                (
                    Kind::Heads { l, which: Qkv::Q, axes: qa, scale: qs },
                    Kind::Heads { l: m, which: Qkv::K, axes: ka, scale: ks },
                ) if l == m => {
                    if *qa != BHTD || *ka != BHDT {
                        return Err(format!(
                            "layer {l}: MatMul of q {} and k {}; expected q (B, heads, T, head_dim) and kᵀ (B, \
                             heads, head_dim, T)",
                            show_axes(qa),
                            show_axes(ka)
                        ));
                    }
                    Kind::Scores { l: *l, masked: false, scale: qs * ks }
                }
                (Kind::Probs(l), Kind::Heads { l: m, which: Qkv::V, axes, scale }) if l == m => {
                    if *axes != BHTD || *scale != 1.0 {
                        return Err(format!(
                            "layer {l}: MatMul of the probabilities and v {}; expected v (B, heads, T, head_dim)",
                            show_axes(axes)
                        ));
                    }
                    Kind::Ctx { l: *l, axes: BHTD }
                }
                (x, y) => {
                    return Err(format!(
                        "MatMul of {} and {}; expected q kᵀ, probabilities v, or a linear layer",
                        self.describe(x),
                        self.describe(y)
                    ))
                }
            };
            self.add(&out0, Val { kind, node: i });
            return Ok(());
        }
        let Operand::C(w) = b else { unreachable!("handled above") };
        let wname = Self::input_name(n, 1).unwrap_or("");
        let (Some(wv), &[r, c]) = (w.floats(), &w.dims[..]) else {
            return Err(format!("weight '{wname}' {} is not a float matrix", w.show_dims()));
        };
        // `(out, in)` rows: the transpose of MatMul's `B (in, out)`; Gemm's transB = 1
        // already stores `(out, in)`.
        let trans_b = gemm && attr_int(n, "transB").unwrap_or(0) != 0;
        let (cin, cout, weight) = if trans_b { (c, r, wv.to_vec()) } else { (r, c, transpose(wv, r, c)) };
        let mut bias = None;
        if gemm {
            let alpha = attr(n, "alpha").map_or(1.0, |a| a.f);
            let beta = attr(n, "beta").map_or(1.0, |a| a.f);
            if alpha != 1.0 || beta != 1.0 || attr_int(n, "transA").unwrap_or(0) != 0 {
                return Err(format!("Gemm with alpha {alpha}, beta {beta}, transA (expected 1, 1, 0)"));
            }
            if let Some(bn) = Self::input_name(n, 2) {
                let bc = self.constant(bn)?;
                bias = Some(
                    bias_values(&bc, cout)
                        .ok_or_else(|| format!("Gemm bias '{bn}' {} is not {cout} floats", bc.show_dims()))?,
                );
            }
        }
        self.linear(i, &out0, a, wname, cin, cout, weight, bias)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        i: usize,
        out0: &str,
        a: Val,
        wname: &str,
        cin: usize,
        cout: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> R<()> {
        let d = self.dim().unwrap_or(0);
        let (role, l) = match a.kind {
            Kind::Norm { p, id } if p % 2 == 0 && self.output_names.contains(out0) => {
                // The head.
                if bias.is_some() {
                    return Err("the head (logits) has a bias; GPT-2's has none".into());
                }
                if let Some((at, _, _)) = self.head {
                    return Err(format!("a second head (the first is {})", self.label(at)));
                }
                let (tok, _) = self.tok_emb.clone().ok_or("the head before the token embedding")?;
                if cin != d || cout != tok.dims[0] {
                    return Err(format!(
                        "the head weight '{wname}' maps {cin} to {cout}; expected d = {d} to the vocabulary, {}",
                        tok.dims[0]
                    ));
                }
                let tied = tok.floats().is_some_and(|t| t == &weight[..]);
                self.head = Some((i, id, if tied { None } else { Some(weight) }));
                self.add(out0, Val { kind: Kind::Logits, node: i });
                return Ok(());
            }
            Kind::Norm { p, .. } if p % 2 == 0 => (Role::Qkv, p / 2),
            Kind::Norm { p, .. } => (Role::Fc, p / 2),
            Kind::Merged(l) => (Role::Proj, l),
            Kind::Act { l, expr } => {
                self.check_gelu(l, expr)?;
                (Role::Fc2, l)
            }
            Kind::Lin { role: Role::Fc, l, .. } => {
                return Err(format!(
                    "layer {l}'s fc output goes into a MatMul without an activation (expected the tanh GELU)"
                ))
            }
            Kind::X(_) => return Err("a linear layer on the residual stream without a LayerNorm".into()),
            ref k => return Err(format!("a linear layer on {}", self.describe(k))),
        };
        let ffn = self.ffn.map(|(f, _)| f);
        let (want_in, want_out) = match role {
            Role::Qkv => (d, Some(3 * d)),
            Role::Proj => (d, Some(d)),
            Role::Fc => (d, None),
            Role::Fc2 => (ffn.unwrap_or(0), Some(d)),
        };
        if cin != want_in || want_out.is_some_and(|o| o != cout) {
            let hint = if role == Role::Qkv && cout == d {
                " (separate q, k, v projections are not supported: one fused qkv d -> 3d)"
            } else {
                ""
            };
            return Err(format!(
                "layer {l} {}: weight '{wname}' maps {cin} to {cout}; expected {want_in} to {}{hint}",
                role.name(),
                want_out.map_or("ffn".to_string(), |o| o.to_string())
            ));
        }
        if role == Role::Fc {
            if cout == 0 || !cout.is_multiple_of(QK8) {
                return Err(format!("layer {l} fc: the MLP width {cout} is not a positive multiple of 32"));
            }
            match self.ffn {
                None => self.ffn = Some((cout, i)),
                Some((f, _)) if f == cout => {}
                Some((f, at)) => return Err(format!("layer {l} fc: MLP width {cout}, but {} has {f}", self.label(at))),
            }
        }
        if self.layers.len() <= l {
            self.layers.resize(l + 1, LayerParts::default());
        }
        if let Kind::Norm { id, .. } = a.kind {
            let slot = if role == Role::Qkv { self.layers[l].ln_1 } else { self.layers[l].ln_2 };
            if let Some(first) = slot.filter(|&s| s != id) {
                let at = self.label(self.norms[first].node);
                return Err(format!("layer {l}: a second LayerNorm before its {} (the first is {at})", role.name()));
            }
            if role == Role::Qkv {
                self.layers[l].ln_1 = Some(id);
            } else {
                self.layers[l].ln_2 = Some(id);
            }
        }
        let has_bias = bias.is_some();
        let lin = Linear { rows: cout, cols: cin, weight, bias: bias.unwrap_or_else(|| vec![0.0; cout]) };
        let found = FoundLinear { node: i, lin, has_bias, used_unbiased: false };
        let slot = self.layers[l].slot(role);
        if let Some(prev) = slot {
            let at = prev.node;
            return Err(format!("a second layer {l} {} (the first is {})", role.name(), self.label(at)));
        }
        *slot = Some(found);
        self.add(out0, Val { kind: Kind::Lin { role, l, biased: has_bias }, node: i });
        Ok(())
    }

    /// Layer `l`'s `role` output is used (not by its bias Add): with `biased` false, no
    /// bias may come later, and none may have come before.
    fn use_lin(&mut self, role: Role, l: usize, biased: bool) -> R<()> {
        if biased {
            return Ok(());
        }
        let f = self.layers[l].slot(role).as_mut().ok_or("internal: a linear output without its layer")?;
        if f.has_bias {
            return Err(format!("layer {l}'s {} output is used both with and without its bias", role.name()));
        }
        f.used_unbiased = true;
        Ok(())
    }

    fn expr(&mut self, e: Expr) -> usize {
        self.exprs.push(e);
        self.exprs.len() - 1
    }

    /// An operand of the MLP activation: its layer (`None` for a constant) and its
    /// expression.
    fn act_operand(&mut self, o: &Operand) -> R<(Option<usize>, usize)> {
        match o {
            Operand::C(c) => match c.scalar() {
                Some(v) => Ok((None, self.expr(Expr::C(v)))),
                None => Err(format!("a constant {} in the MLP activation (expected scalars)", c.show_dims())),
            },
            Operand::V(Val { kind: Kind::Lin { role: Role::Fc, l, biased }, .. }) => {
                self.use_lin(Role::Fc, *l, *biased)?;
                Ok((Some(*l), self.expr(Expr::X)))
            }
            Operand::V(Val { kind: Kind::Act { l, expr }, .. }) => Ok((Some(*l), *expr)),
            Operand::V(v) => Err(format!("{} in an MLP activation", self.describe(&v.kind))),
        }
    }

    fn is_act(o: &Operand) -> bool {
        matches!(o, Operand::V(Val { kind: Kind::Lin { role: Role::Fc, .. } | Kind::Act { .. }, .. }))
    }

    fn binary(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let op = n.op_type.as_str();
        let a = self.operand(n, 0)?;
        let b = self.operand(n, 1)?;
        let out0 = Self::out(n);
        let bin = Bin::from_op(op).ok_or("internal: not a binary op")?;
        // Constants fold (scalars with scalars or tensors).
        if let (Operand::C(x), Operand::C(y)) = (&a, &b) {
            let c =
                fold(bin, x, y).ok_or_else(|| format!("{op} of constants {} and {}", x.show_dims(), y.show_dims()))?;
            self.consts.insert(out0, Ok(Rc::new(c)));
            return Ok(());
        }
        // The MLP activation.
        let bias_add = op == "Add" && self.is_bias(&a, &b);
        if !bias_add && (Self::is_act(&a) || Self::is_act(&b)) {
            let other_ok = |o: &Operand| Self::is_act(o) || matches!(o, Operand::C(c) if c.scalar().is_some());
            if other_ok(&a) && other_ok(&b) {
                let (la, ea) = self.act_operand(&a)?;
                let (lb, eb) = self.act_operand(&b)?;
                let l = la.or(lb).ok_or("internal: an MLP activation of constants")?;
                if let Some(m) = lb.filter(|&m| m != l) {
                    return Err(format!("{op} of layer {l}'s and layer {m}'s MLP activations"));
                }
                let e = self.expr(Expr::Bin(bin, ea, eb));
                self.add(&out0, Val { kind: Kind::Act { l, expr: e }, node: i });
                return Ok(());
            }
        }
        let (a, b, swapped) = match (a, b) {
            (Operand::C(c), Operand::V(v)) => (Operand::V(v), Operand::C(c), true),
            (a, b) => (a, b, false),
        };
        match (op, &a, &b) {
            ("Add", Operand::V(x), Operand::V(y)) => self.add_values(i, &out0, x.clone(), y.clone()),
            ("Add", Operand::V(Val { kind: Kind::Lin { role, l, biased: false }, .. }), Operand::C(c)) => {
                let (role, l) = (*role, *l);
                let f = self.layers[l].slot(role).as_mut().ok_or("internal: a linear output without its layer")?;
                let out = f.lin.rows;
                let bias = bias_values(c, out).ok_or_else(|| {
                    format!("layer {l} {}: the bias {} is not {out} floats", role.name(), c.show_dims())
                })?;
                if f.used_unbiased {
                    return Err(format!(
                        "a bias added to layer {l}'s {} output, which is also used without it",
                        role.name()
                    ));
                }
                f.lin.bias = bias;
                f.has_bias = true;
                self.add(&out0, Val { kind: Kind::Lin { role, l, biased: true }, node: i });
                Ok(())
            }
            ("Add", Operand::V(Val { kind: Kind::Lin { role, l, biased: true }, .. }), Operand::C(_)) => {
                Err(format!("a second bias on layer {l}'s {}", role.name()))
            }
            ("Add", Operand::V(Val { kind: Kind::Logits, .. }), Operand::C(_)) => {
                Err("a bias on the logits; GPT-2's head has none".into())
            }
            ("Add", Operand::V(Val { kind: Kind::Scores { l, .. }, .. }), _) => Err(format!(
                "an Add to layer {l}'s attention scores: additive masks are not supported (expected Where(causal \
                 mask, -inf, scores))"
            )),
            ("Mul" | "Div", Operand::V(v), Operand::C(c)) if !(op == "Div" && swapped) => {
                let s =
                    c.scalar().ok_or_else(|| format!("{op} by a constant {} (expected a scalar)", c.show_dims()))?;
                let f = if op == "Mul" { s } else { 1.0 / s };
                let kind = match &v.kind {
                    Kind::Heads { l, which: which @ (Qkv::Q | Qkv::K), axes, scale } => {
                        Kind::Heads { l: *l, which: *which, axes: *axes, scale: scale * f }
                    }
                    Kind::Scores { l, masked, scale } => Kind::Scores { l: *l, masked: *masked, scale: scale * f },
                    k => return Err(format!("{op} of {} by {s}", self.describe(k))),
                };
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
            (_, x, y) => {
                let show = |o: &Operand| match o {
                    Operand::V(v) => self.describe(&v.kind),
                    Operand::C(c) => match c.scalar() {
                        Some(s) => format!("the constant {s}"),
                        None => format!("a constant {}", c.show_dims()),
                    },
                };
                Err(format!("{op} of {} and {} is not part of the pattern", show(x), show(y)))
            }
        }
    }

    /// Whether `a + b` is a linear layer's bias Add (an unbiased output plus a vector).
    fn is_bias(&self, a: &Operand, b: &Operand) -> bool {
        let lin_vec = |x: &Operand, y: &Operand| {
            matches!(x, Operand::V(Val { kind: Kind::Lin { biased: false, .. }, .. }))
                && matches!(y, Operand::C(c) if c.len() > 1)
        };
        lin_vec(a, b) || lin_vec(b, a)
    }

    /// `x + y` of two computed tensors: the embedding sum or a residual Add.
    fn add_values(&mut self, i: usize, out0: &str, x: Val, y: Val) -> R<()> {
        let (x, y) = match (&x.kind, &y.kind) {
            (Kind::TSlice { .. } | Kind::Lin { .. }, _) => (y, x),
            _ => (x, y),
        };
        match (&x.kind, &y.kind) {
            (Kind::Emb, Kind::TSlice { t, rows: true, cols: false, negated: false, .. }) => {
                let d = self.dim().unwrap_or(0);
                let r = t.dims.len();
                if r < 2 || t.dims[..r - 2].iter().any(|&x| x != 1) || t.dims[r - 1] != d || t.floats().is_none() {
                    return Err(format!(
                        "the positions come from a constant {}; expected pos_emb (context, d = {d})",
                        t.show_dims()
                    ));
                }
                if let Some((_, at)) = &self.pos_emb {
                    return Err(format!("a second position embedding (the first is added by {})", self.label(*at)));
                }
                if t.dims[r - 2] == 0 {
                    return Err("pos_emb has no rows".into());
                }
                self.pos_emb = Some((t.clone(), i));
                self.add(out0, Val { kind: Kind::X(0), node: i });
                Ok(())
            }
            (Kind::X(p), Kind::Lin { role: role @ (Role::Proj | Role::Fc2), l, biased }) => {
                let want = if *role == Role::Proj { 2 * l } else { 2 * l + 1 };
                if *p != want {
                    return Err(format!(
                        "the residual Add of layer {l}'s {} to {}; expected {}",
                        role.name(),
                        self.describe(&x.kind),
                        self.describe(&Kind::X(want))
                    ));
                }
                let (role, l, biased, p) = (*role, *l, *biased, *p);
                self.use_lin(role, l, biased)?;
                self.add(out0, Val { kind: Kind::X(p + 1), node: i });
                Ok(())
            }
            (a, b) => Err(format!(
                "Add of {} and {}; expected the embedding sum, a bias or a residual Add",
                self.describe(a),
                self.describe(b)
            )),
        }
    }

    fn unary(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let op = n.op_type.as_str();
        let un = Un::from_op(op).ok_or("internal: not a unary op")?;
        let out0 = Self::out(n);
        let x = self.operand(n, 0)?;
        if let Operand::C(c) = &x {
            let Some(v) = c.floats() else { return Err(format!("{op} of integer constants")) };
            let data = v.iter().map(|&x| un.apply(x as f64) as f32).collect();
            self.consts.insert(out0, Ok(Rc::new(Tensor { dims: c.dims.clone(), data: Data::F32(data) })));
            return Ok(());
        }
        if !Self::is_act(&x) {
            let Operand::V(v) = &x else { unreachable!("constants handled above") };
            return Err(format!("{op} of {}", self.describe(&v.kind)));
        }
        let (Some(l), e) = self.act_operand(&x)? else {
            return Err("internal: an MLP activation of constants".into());
        };
        let e = self.expr(Expr::Un(un, e));
        self.add(&out0, Val { kind: Kind::Act { l, expr: e }, node: i });
        Ok(())
    }

    /// The MLP activation `exprs[expr]` must be the tanh GELU on a grid of inputs.
    fn check_gelu(&self, l: usize, expr: usize) -> R<()> {
        let steps = (2.0 * GELU_RANGE * 16.0) as i32;
        let mut worst: Option<(f64, f64, f64)> = None;
        for s in 0..=steps {
            let x = -GELU_RANGE + s as f64 / 16.0;
            let (got, want) = (eval(&self.exprs, expr, x), gelu_tanh(x));
            let err = (got - want).abs() / (1.0 + want.abs());
            if (err.is_nan() || err > GELU_TOLERANCE) && worst.is_none_or(|(e, _, _)| err > e || e.is_nan()) {
                worst = Some((if err.is_nan() { f64::INFINITY } else { err }, x, got));
            }
        }
        match worst {
            None => Ok(()),
            Some((_, x, got)) => Err(format!(
                "layer {l}'s MLP activation is not the tanh GELU x/2 (1 + tanh(sqrt(2/π) (x + 0.044715 x³))): at x = \
                 {x} it gives {got:.7} instead of {:.7} (check its constants)",
                gelu_tanh(x)
            )),
        }
    }

    fn where_node(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let cond = self.val(n, 0)?;
        let x = self.operand(n, 1)?;
        let y = self.operand(n, 2)?;
        let Kind::TSlice { t, rank: _, rows, cols, negated } = cond.kind else {
            return Err(format!("Where on {}; expected the causal mask", self.describe(&cond.kind)));
        };
        // Which branch is the fill: masked = cond (fill first) or !cond (fill second).
        let (scores, fill, fill_if) = match (&x, &y) {
            (Operand::C(c), Operand::V(v)) => (v.clone(), c.clone(), true),
            (Operand::V(v), Operand::C(c)) => (v.clone(), c.clone(), false),
            _ => return Err("Where without a constant fill on one side".into()),
        };
        let Kind::Scores { l, masked: false, scale } = scores.kind else {
            return Err(format!("Where on {}; expected the attention scores", self.describe(&scores.kind)));
        };
        let fv = fill.scalar().unwrap_or(0.0) as f32;
        if fill.len() != 1 || fv > MASK_FILL_MAX {
            return Err(format!(
                "layer {l}: the masked scores are filled with {}; expected -inf (or at most {MASK_FILL_MAX})",
                fill.scalar().map_or(fill.show_dims(), |v| v.to_string())
            ));
        }
        if !(rows && cols) {
            return Err(format!("layer {l}: the attention mask is not sliced to (T, T)"));
        }
        let r = t.dims.len();
        if r < 2 || t.dims[..r - 2].iter().any(|&x| x != 1) || t.dims[r - 2] != t.dims[r - 1] {
            return Err(format!("layer {l}: the attention mask {} is not (…, m, m)", t.show_dims()));
        }
        let m = t.dims[r - 1];
        let ctx = self.pos_emb.as_ref().map_or(0, |(p, _)| p.dims[p.dims.len() - 2]);
        if m < ctx {
            return Err(format!("layer {l}: the attention mask is {m} x {m}, smaller than the context length {ctx}"));
        }
        // masked(q, k) must be k > q; each mask is checked once.
        let key = (Rc::as_ptr(&t) as usize, negated ^ !fill_if);
        for q in (0..m).take_while(|_| !self.causal_masks.contains(&key)) {
            for k in 0..m {
                let masked = t.truth(q * m + k) ^ negated ^ !fill_if;
                if masked != (k > q) {
                    return Err(format!(
                        "layer {l}: the attention mask is not causal: query {q} {} key {k} (expected every key after \
                         the query masked, the query itself and every earlier key kept)",
                        if masked { "cannot see" } else { "sees" }
                    ));
                }
            }
        }
        self.causal_masks.insert(key);
        self.add(&Self::out(n), Val { kind: Kind::Scores { l, masked: true, scale }, node: i });
        Ok(())
    }

    fn softmax(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let Kind::Scores { l, masked, scale } = v.kind else {
            return Err(format!("Softmax of {}; expected the attention scores", self.describe(&v.kind)));
        };
        let axis = attr_int(n, "axis").unwrap_or(if self.opset >= 13 { -1 } else { 1 });
        if axis != -1 && axis != 3 {
            return Err(format!("layer {l}: Softmax on axis {axis} (expected the last, the keys)"));
        }
        if !masked {
            return Err(format!(
                "layer {l}: Softmax of unmasked attention scores: the attention is not causal (expected \
                 Where(causal mask, -inf, scores) first)"
            ));
        }
        let (h, _) = self.heads.ok_or("internal: attention without heads")?;
        let hd = (self.dim().unwrap_or(0) / h) as f64;
        let want = 1.0 / hd.sqrt();
        if ((scale - want) / want).abs() > SCALE_TOLERANCE {
            return Err(format!(
                "layer {l}: the attention scores are scaled by {scale}; expected 1/sqrt(head_dim) = 1/sqrt({hd}) = \
                 {want:.8}"
            ));
        }
        self.add(&Self::out(n), Val { kind: Kind::Probs(l), node: i });
        Ok(())
    }

    fn finish(self) -> R<Parsed> {
        let oname = &self.graph.output[0].name;
        let Some(o) = self.names.get(oname) else {
            return Err(format!("graph output '{oname}' is not computed by any node"));
        };
        if !matches!(o.kind, Kind::Logits) {
            return Err(format!(
                "graph output '{oname}' is {} ({}); expected the logits: LayerNormalization then MatMul with \
                 Transpose(tok_emb) or a (d, vocab) matrix",
                self.describe(&o.kind),
                self.label(o.node)
            ));
        }
        let (head_node, head_norm, output) = self.head.clone().ok_or("internal: logits without a head")?;
        let nf = &self.norms[head_norm];
        if !nf.p.is_multiple_of(2) || nf.p == 0 {
            return Err(format!(
                "{}: the head reads {}; expected the residual stream after the last layer",
                self.label(head_node),
                self.describe(&Kind::X(nf.p))
            ));
        }
        let n_layers = nf.p / 2;
        for (l, parts) in self.layers.iter().enumerate().skip(n_layers) {
            let any = [&parts.qkv, &parts.proj, &parts.fc, &parts.fc2].into_iter().flatten().next();
            if let Some(f) = any {
                return Err(format!(
                    "{}: layer {l} does not reach the output (the head reads layer {})",
                    self.label(f.node),
                    n_layers - 1
                ));
            }
        }
        let (tok, _) = self.tok_emb.clone().ok_or("internal: no token embedding")?;
        let (pos, _) = self.pos_emb.clone().ok_or("internal: no position embedding")?;
        let (heads, _) = self.heads.ok_or("internal: no heads")?;
        let (ffn, _) = self.ffn.ok_or("internal: no MLP")?;
        let (epsilon, _) = self.epsilon.ok_or("internal: no LayerNorm")?;
        let d = tok.dims[1];
        let mut layers = Vec::with_capacity(n_layers);
        for (l, parts) in self.layers.iter().take(n_layers).enumerate() {
            let missing = |role: &str| format!("layer {l} has no {role}");
            let norm = |id: Option<usize>, role: &str| -> R<LayerNorm> {
                id.map(|id| self.norms[id].norm.clone()).ok_or_else(|| missing(role))
            };
            let qkv = parts.qkv.as_ref().ok_or_else(|| missing("qkv"))?;
            let lin =
                |f: &Option<FoundLinear>, role: &str| f.as_ref().map(|f| f.lin.clone()).ok_or_else(|| missing(role));
            layers.push(Gpt2Layer {
                attn_norm: norm(parts.ln_1, "ln_1")?,
                attn_q: qkv.lin.rows(0, d),
                attn_k: qkv.lin.rows(d, 2 * d),
                attn_v: qkv.lin.rows(2 * d, 3 * d),
                attn_output: lin(&parts.proj, "proj")?,
                ffn_norm: norm(parts.ln_2, "ln_2")?,
                ffn_up: lin(&parts.fc, "fc")?,
                ffn_down: lin(&parts.fc2, "fc2")?,
            });
        }
        let pr = pos.dims.len();
        Ok(Parsed {
            vocab_size: tok.dims[0],
            dim: d,
            heads,
            ffn,
            context_length: pos.dims[pr - 2],
            epsilon,
            token_embd: tok.floats().map(<[f32]>::to_vec).unwrap_or_default(),
            position_embd: pos.floats().map(<[f32]>::to_vec).unwrap_or_default(),
            output_norm: nf.norm.clone(),
            output,
            layers,
        })
    }
}

/// `(r, c)` row-major → `(c, r)`.
fn transpose(w: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = w[i * c + j];
        }
    }
    out
}

/// A bias of `out` floats (any shape with one non-1 axis).
fn bias_values(c: &Tensor, out: usize) -> Option<Vec<f32>> {
    let f = c.floats()?;
    (f.len() == out && c.dims.iter().filter(|&&x| x != 1).count() <= 1).then(|| f.to_vec())
}

/// `x op y` on constants where one is a scalar or both have the same shape.
fn fold(op: Bin, x: &Tensor, y: &Tensor) -> Option<Tensor> {
    let as_f64 = |t: &Tensor| -> Option<Vec<f64>> {
        match &t.data {
            Data::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Data::I64(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Data::Bool(_) => None,
        }
    };
    let (a, b) = (as_f64(x)?, as_f64(y)?);
    let ints = matches!((&x.data, &y.data), (Data::I64(_), Data::I64(_)));
    let (dims, vals): (Vec<usize>, Vec<f64>) = if a.len() == 1 {
        (y.dims.clone(), b.iter().map(|&v| op.apply(a[0], v)).collect())
    } else if b.len() == 1 || x.dims == y.dims {
        (x.dims.clone(), a.iter().enumerate().map(|(j, &v)| op.apply(v, b[if b.len() == 1 { 0 } else { j }])).collect())
    } else {
        return None;
    };
    let data = if ints && !matches!(op, Bin::Div | Bin::Pow) {
        Data::I64(vals.iter().map(|&v| v as i64).collect())
    } else {
        Data::F32(vals.iter().map(|&v| v as f32).collect())
    };
    Some(Tensor { dims, data })
}

/// The output shape of a Reshape of `input` to `spec` (0: copy the input's dimension
/// unless `allowzero`, -1: inferred), or `None` if it does not resolve.
fn resolve_reshape(input: &[Dim], spec: &[Item], allowzero: bool) -> Option<Vec<Dim>> {
    let total = input.iter().fold(Dim::n(1), |a, &d| a.mul(d));
    let mut out: Vec<Option<Dim>> = Vec::with_capacity(spec.len());
    let mut known = Dim::n(1);
    let mut infer = None;
    for (j, item) in spec.iter().enumerate() {
        let d = match *item {
            Item::Dim(d) => Some(d),
            Item::Zero if !allowzero => Some(*input.get(j)?),
            Item::Zero => return None,
            Item::Infer if infer.is_none() => {
                infer = Some(j);
                None
            }
            Item::Infer => return None,
        };
        if let Some(d) = d {
            known = known.mul(d);
        }
        out.push(d);
    }
    if let Some(j) = infer {
        out[j] = Some(total.div(known)?);
    } else if known != total {
        return None;
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet() {
        assert_eq!(byte_level_char(b'a'), 'a');
        assert_eq!(byte_level_char(b' '), 'Ġ');
        assert_eq!(byte_level_char(b'\n'), 'Ċ');
        assert_eq!(byte_level_char(0), 'Ā');
        assert_eq!(byte_level_char(0xAD), 'Ń');
    }

    #[test]
    fn vocab_forms() {
        assert_eq!(parse_vocab("\"\\n ab\"").unwrap(), vec!['\n', ' ', 'a', 'b']);
        assert_eq!(parse_vocab("[\"a\", \"b\"]").unwrap(), vec!['a', 'b']);
        assert!(parse_vocab("\"aé\"").unwrap_err().contains("entry 1 is 'é'"));
        assert!(parse_vocab("\"aba\"").unwrap_err().contains("twice"));
        assert!(parse_vocab("[\"ab\"]").unwrap_err().contains("one-character"));
        assert!(parse_vocab("\"\"").is_err());
        assert!(parse_vocab("3").is_err());
    }

    #[test]
    fn reshape_resolution() {
        let (b, t) = (Dim::B, Dim::T);
        let btd = [b, t, Dim::n(96)];
        let heads = [Item::Dim(b), Item::Dim(t), Item::Dim(Dim::n(4)), Item::Dim(Dim::n(24))];
        assert_eq!(resolve_reshape(&btd, &heads, true).unwrap(), vec![b, t, Dim::n(4), Dim::n(24)]);
        let copy = [Item::Zero, Item::Zero, Item::Dim(Dim::n(4)), Item::Infer];
        assert_eq!(resolve_reshape(&btd, &copy, false).unwrap(), vec![b, t, Dim::n(4), Dim::n(24)]);
        assert!(resolve_reshape(&btd, &copy, true).is_none());
        let infer_t = [Item::Dim(b), Item::Infer, Item::Dim(Dim::n(4)), Item::Dim(Dim::n(24))];
        assert_eq!(resolve_reshape(&btd, &infer_t, false).unwrap()[1], t);
        let wrong = [Item::Dim(b), Item::Dim(t), Item::Dim(Dim::n(5)), Item::Dim(Dim::n(24))];
        assert!(resolve_reshape(&btd, &wrong, false).is_none());
    }

    #[test]
    fn gelu_expression() {
        // 0.5 x (1 + tanh(c (x + 0.044715 x^3))), in the exporter's order.
        let e = vec![
            Expr::X,
            Expr::C(3.0),
            Expr::Bin(Bin::Pow, 0, 1),
            Expr::C(0.044715),
            Expr::Bin(Bin::Mul, 3, 2),
            Expr::Bin(Bin::Add, 0, 4),
            Expr::C((2.0 / std::f64::consts::PI).sqrt()),
            Expr::Bin(Bin::Mul, 6, 5),
            Expr::Un(Un::Tanh, 7),
            Expr::C(1.0),
            Expr::Bin(Bin::Add, 8, 9),
            Expr::C(0.5),
            Expr::Bin(Bin::Mul, 11, 10),
            Expr::Bin(Bin::Mul, 0, 12),
        ];
        for x in [-3.0, -0.5, 0.0, 1.0, 4.0] {
            assert!((eval(&e, 13, x) - gelu_tanh(x)).abs() < 1e-12);
        }
    }
}
