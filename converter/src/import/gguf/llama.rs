//! A LLaMA-family model from a GGUF file → `.arq`: read and dequantize the tensors in the
//! order the runtime expects, requantize, and measure the quantized model against the
//! unquantized one on a calibration text.

use arq::format::keys;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use arq::quant::QK8;

use super::{GgufFile, Value};
use crate::aligned::ModelBytes;
use crate::import::vocab::Vocab;
use crate::message::name as shown;
use crate::output::{check_paths, write_validated};
use crate::quantize::{check_finite, encode_matrix, Quant, TensorError};
use crate::report;
use crate::{ConvertOptions, ConvertSummary, InputFormat};

/// One tensor in `.arq` order, dequantized to f32 (row-major, outermost dim first).
struct SourceTensor {
    name: String,
    dims: Vec<u64>,
    values: Vec<f32>,
    /// Quantized with the file's weight type (matrices), or kept f32 (norms).
    is_matrix: bool,
}

/// The LLaMA tensors in the canonical order the runtime expects.
fn canonical_names(n_layers: usize, has_output: bool) -> Vec<(String, String)> {
    let mut v =
        vec![("token_embd.weight".into(), "token_embd".into()), ("output_norm.weight".into(), "output_norm".into())];
    if has_output {
        v.push(("output.weight".into(), "output".into()));
    }
    for l in 0..n_layers {
        for role in
            ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
        {
            v.push((format!("blk.{l}.{role}.weight"), format!("blk.{l}.{role}")));
        }
    }
    v
}

fn get_u64(g: &GgufFile, key: &str) -> Result<u64> {
    g.get(key).and_then(Value::as_u64).ok_or_else(|| anyhow!("GGUF metadata '{key}' is missing or not an integer"))
}
fn get_f32(g: &GgufFile, key: &str, default: f32) -> Result<f32> {
    match g.get(key) {
        None => Ok(default),
        Some(v) => v.as_f32().ok_or_else(|| anyhow!("GGUF metadata '{key}' is not a number")),
    }
}
fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    let arr = g.get(key).and_then(Value::as_array).ok_or_else(|| anyhow!("GGUF metadata '{key}' is missing"))?;
    arr.iter().map(|v| v.as_str().map(String::from).ok_or_else(|| anyhow!("GGUF '{key}' holds a non-string"))).collect()
}

/// Caps on the hyperparameters, checked before anything is sized by them: the runtime's
/// loader refuses more (its `MAX_LAYERS`, `MAX_DIM`, `MAX_VOCAB` and context cap, which
/// are private to it), so a larger model could be read but never run. Without them a
/// block count of 2^22 made the importer build 9 x 2^22 tensor names and abort.
const MAX_LAYERS: u64 = 1 << 10;
const MAX_DIM: u64 = 1 << 16;
const MAX_VOCAB: u64 = 1 << 22;
const MAX_CONTEXT: u64 = 1 << 24;

/// `key`'s integer, refused above `cap`.
fn get_capped(g: &GgufFile, key: &str, cap: u64) -> Result<u64> {
    let v = get_u64(g, key)?;
    if v > cap {
        bail!("GGUF: {key} is {v}, more than the cap of {cap}");
    }
    Ok(v)
}

/// The hyperparameters the importer checks before reading anything else.
struct Dims {
    n_layers: usize,
    dim: u64,
    n_heads: u64,
    n_kv: u64,
}

impl Dims {
    fn read(g: &GgufFile) -> Result<Self> {
        let n_layers = get_capped(g, "llama.block_count", MAX_LAYERS)? as usize;
        let dim = get_capped(g, "llama.embedding_length", MAX_DIM)?;
        let n_heads = get_capped(g, "llama.attention.head_count", MAX_DIM)?;
        let n_kv = match g.get("llama.attention.head_count_kv") {
            Some(_) => get_capped(g, "llama.attention.head_count_kv", MAX_DIM)?,
            None => n_heads,
        };
        Ok(Dims { n_layers, dim, n_heads, n_kv })
    }

    fn check(&self, g: &GgufFile) -> Result<()> {
        let (dim, n_heads) = (self.dim, self.n_heads);
        if n_heads == 0 || dim % n_heads != 0 {
            bail!("GGUF: embedding_length {dim} is not a multiple of head_count {n_heads}");
        }
        if let Some(rd) = g.get("llama.rope.dimension_count").and_then(Value::as_u64) {
            if rd != dim / n_heads {
                bail!(
                    "GGUF: partial rotary embeddings (rope.dimension_count {rd} != head dim {}) are not supported",
                    dim / n_heads
                );
            }
        }
        Ok(())
    }
}

/// The `.arq` metadata of the model (all but `arq.quant`, which depends on the output).
fn metadata(g: &GgufFile, path: &Path, d: &Dims, vocab: u64, tokenizer: &Vocab) -> Result<Vec<(String, Meta)>> {
    let mut meta = vec![
        (keys::ARCHITECTURE.to_string(), Meta::Str(keys::ARCH_LLAMA.into())),
        (keys::GENERAL_NAME.into(), Meta::Str(g.get("general.name").and_then(Value::as_str).unwrap_or("").into())),
        (
            "general.source".into(),
            Meta::Str(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        ),
        ("llama.vocab_size".into(), Meta::U64(vocab)),
        ("llama.context_length".into(), Meta::U64(get_capped(g, "llama.context_length", MAX_CONTEXT)?)),
        ("llama.embedding_length".into(), Meta::U64(d.dim)),
        ("llama.block_count".into(), Meta::U64(d.n_layers as u64)),
        ("llama.feed_forward_length".into(), Meta::U64(get_capped(g, "llama.feed_forward_length", 4 * MAX_DIM)?)),
        ("llama.attention.head_count".into(), Meta::U64(d.n_heads)),
        ("llama.attention.head_count_kv".into(), Meta::U64(d.n_kv)),
        ("llama.rope.freq_base".into(), Meta::F32(get_f32(g, "llama.rope.freq_base", 10000.0)?)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Meta::F32(get_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5)?),
        ),
    ];
    meta.extend(tokenizer.meta());
    Ok(meta)
}

/// The tensors in canonical order, dequantized.
fn read_tensors(g: &GgufFile, n_layers: usize, progress: bool) -> Result<Vec<SourceTensor>> {
    let has_output = g.tensor("output.weight").is_some();
    let names = canonical_names(n_layers, has_output);
    let bar = crate::progress::bar(names.len() as u64, "reading", progress);
    let mut tensors = Vec::with_capacity(names.len());
    for (gname, aname) in names {
        let t = g.tensor(&gname).ok_or_else(|| anyhow!("GGUF: tensor '{gname}' is missing"))?;
        let values = g.dequantize(t).map_err(|e| anyhow!("GGUF: {e}"))?;
        check_finite(&gname, &values).context("GGUF")?;
        // GGUF lists dims innermost first; .arq outermost first.
        let dims: Vec<u64> = t.dims.iter().rev().copied().collect();
        let is_matrix = dims.len() == 2;
        tensors.push(SourceTensor { name: aname, dims, values, is_matrix });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(tensors)
}

/// The model read from a GGUF file, ready to be written in any dtype.
pub struct LlamaSource {
    meta: Vec<(String, Meta)>,
    tokenizer_blob: Vec<u8>,
    tensors: Vec<SourceTensor>,
}

impl LlamaSource {
    pub fn from_gguf(path: &Path, progress: bool) -> Result<Self> {
        let g = GgufFile::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let arch = g.get("general.architecture").and_then(Value::as_str).unwrap_or("(none)");
        if arch != "llama" {
            bail!("{}: unsupported architecture '{}' (supported: llama)", path.display(), shown(arch));
        }
        let dims = Dims::read(&g)?;
        let tokens = strings(&g, "tokenizer.ggml.tokens")?;
        let vocab = g.get("llama.vocab_size").and_then(Value::as_u64).unwrap_or(tokens.len() as u64);
        if vocab > MAX_VOCAB {
            bail!("GGUF: the vocabulary has {vocab} tokens, more than the cap of {MAX_VOCAB}");
        }
        dims.check(&g)?;
        let tokenizer = Vocab::from_gguf(&g)?;
        let tokenizer_blob = tokenizer.blob()?;
        let meta = metadata(&g, path, &dims, vocab, &tokenizer)?;
        let tensors = read_tensors(&g, dims.n_layers, progress)?;
        Ok(LlamaSource { meta, tokenizer_blob, tensors })
    }

    /// Serializes the model with matrices in `quant`; returns the file bytes and the
    /// per-tensor relative quantization errors.
    pub fn to_arq(&self, quant: Quant, progress: bool) -> Result<(Vec<u8>, Vec<TensorError>)> {
        let mut w = ArqWriter::new();
        for (k, v) in &self.meta {
            w.meta(k, v.clone());
        }
        w.meta(keys::QUANT, Meta::Str(quant.name().into()));
        let bar = crate::progress::bar(self.tensors.len() as u64, "quantizing", progress);
        let mut errors = Vec::new();
        let mut tokenizer_written = false;
        for t in &self.tensors {
            // The tokenizer blob sits after the global tensors, before the layers.
            if !tokenizer_written && t.name.starts_with("blk.") {
                w.tensor("tokenizer", Dtype::U8, &[self.tokenizer_blob.len() as u64], self.tokenizer_blob.clone())?;
                tokenizer_written = true;
            }
            let dtype = if t.is_matrix { quant.dtype_of(&t.name) } else { Dtype::F32 };
            if dtype != Dtype::F32 && !(t.dims[1] as usize).is_multiple_of(QK8) {
                bail!(
                    "tensor {}: row length {} is not a multiple of 32, cannot quantize to {}",
                    t.name,
                    t.dims[1],
                    dtype.name()
                );
            }
            let (data, err) = encode_matrix(&t.values, dtype);
            if let Some(err) = err {
                errors.push((t.name.clone(), err));
            }
            w.tensor(&t.name, dtype, &t.dims, data)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut out = Vec::new();
        w.write(&mut out)?;
        Ok((out, errors))
    }
}

/// GGUF → `.arq`: read, requantize to `opts.quant`, compare against the unquantized
/// model on the calibration text (unless skipped or f32), write atomically.
pub fn convert(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertSummary> {
    let calib = match &opts.calib {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("cannot read calibration text {}", p.display()))?)
        }
        None => None,
    };
    check_paths(input, out, opts.force)?;
    let src = LlamaSource::from_gguf(input, opts.progress)?;
    let (bytes, tensor_errors) = src.to_arq(opts.quant, opts.progress)?;
    let accuracy = if opts.quant != Quant::F32 && !opts.skip_calibration {
        let (reference, _) = src.to_arq(Quant::F32, false)?;
        drop(src);
        let text = calib.as_deref().unwrap_or(report::CALIBRATION_TEXT);
        Some(report::compare(&ModelBytes::copy_of(&reference), &ModelBytes::copy_of(&bytes), text)?)
    } else {
        None
    };
    write_validated(&bytes, out, opts.force)?;
    Ok(ConvertSummary {
        format: InputFormat::Gguf,
        bytes: bytes.len() as u64,
        tensor_errors,
        accuracy,
        description: None,
    })
}
