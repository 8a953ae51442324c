//! GGUF (LLaMA family) → `.arq`: read, dequantize, requantize, write atomically, report.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use arq::format::writer::{ArqWriter, Meta};
use arq::format::{ArqFile, Dtype};
use arq::quant::{BlockQ4, BlockQ8, QK4, QK8};
use arq::tokenizer::PreTokenizer;
use half::f16;

use crate::aligned::ModelBytes;
use crate::gguf::{GgufFile, Value};
use crate::report::{self, AccuracyReport};

/// Output weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    Q8,
    /// q4 layer matrices; the token embedding and the output head stay q8 (see
    /// [`Quant::dtype_of`]).
    Q4,
    F32,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8 => "q8",
            Quant::Q4 => "q4",
            Quant::F32 => "f32",
        }
    }

    /// The dtype of matrix `name` in a file of this weight type.
    ///
    /// With q4, `token_embd` (which is also the output head when that is tied),
    /// `output` and GPT-2's `position_embd` are q8, as llama.cpp keeps the embeddings and
    /// the head above 4 bits in its Q4 files. On
    /// SmolLM2-135M (calibration KL against the unquantized model, built-in text) a q4
    /// embedding alone costs 0.064 nats/token and +6.3% perplexity; in q8 it costs 0.000,
    /// for 12 MB more (84 vs 96 MB).
    pub fn dtype_of(self, name: &str) -> Dtype {
        match self {
            Quant::Q8 => Dtype::Q8,
            Quant::Q4 if matches!(name, "token_embd" | "output" | "position_embd") => Dtype::Q8,
            Quant::Q4 => Dtype::Q4,
            Quant::F32 => Dtype::F32,
        }
    }
}

pub struct ConvertOptions {
    pub quant: Quant,
    pub force: bool,
    /// Calibration text for the accuracy report (`None`: the built-in text).
    pub calib: Option<String>,
    /// Skip the calibration run (per-tensor errors are still reported).
    pub skip_calibration: bool,
    pub progress: bool,
}

/// One tensor in `.arq` order, dequantized to f32 (row-major, outermost dim first).
struct SourceTensor {
    name: String,
    dims: Vec<u64>,
    values: Vec<f32>,
    /// Quantized with the file's weight type (matrices), or kept f32 (norms).
    is_matrix: bool,
}

/// A tensor's name and relative quantization error.
pub type TensorError = (String, f64);

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

/// q8 weights: scale `f16(amax / 127)`, values quantized against the stored (f16) scale
/// so dequantization reproduces them as closely as the block allows.
pub fn quantize_weights_q8(x: &[f32]) -> Vec<BlockQ8> {
    x.chunks_exact(QK8)
        .map(|c| {
            let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = f16::from_f32(amax / 127.0);
            let id = if d.to_f32() != 0.0 { 1.0 / d.to_f32() } else { 0.0 };
            let mut b = BlockQ8 { d: d.to_le_bytes(), qs: [0; QK8] };
            for (q, &v) in b.qs.iter_mut().zip(c) {
                *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
            }
            b
        })
        .collect()
}

/// A matrix's bytes in `dtype` (`Q8`, `Q4` or `F32`; the quantized types need rows of a
/// multiple of 32 values, which the caller checks) and, when quantized, its relative
/// quantization error.
pub fn encode_matrix(values: &[f32], dtype: Dtype) -> (Vec<u8>, Option<f64>) {
    let (data, deq) = match dtype {
        Dtype::Q8 => {
            let blocks = quantize_weights_q8(values);
            let mut deq = vec![0.0f32; values.len()];
            arq::quant::dequantize_row_q8(&blocks, &mut deq);
            (bytemuck::cast_slice(&blocks).to_vec(), Some(deq))
        }
        Dtype::Q4 => {
            let mut blocks = vec![BlockQ4 { d: [0; 2], m: [0; 2], qs: [0; QK4 / 2] }; values.len() / QK4];
            arq::quant::quantize_row_q4(values, &mut blocks);
            let mut deq = vec![0.0f32; values.len()];
            arq::quant::dequantize_row_q4(&blocks, &mut deq);
            (bytemuck::cast_slice(&blocks).to_vec(), Some(deq))
        }
        _ => (bytemuck::cast_slice(values).to_vec(), None),
    };
    let err = deq.map(|d| report::relative_error(values, &d));
    (data, err)
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
            bail!("{}: unsupported architecture '{arch}' (supported: llama)", path.display());
        }
        let n_layers = get_u64(&g, "llama.block_count")? as usize;
        let dim = get_u64(&g, "llama.embedding_length")?;
        let n_heads = get_u64(&g, "llama.attention.head_count")?;
        let n_kv = g.get("llama.attention.head_count_kv").and_then(Value::as_u64).unwrap_or(n_heads);
        let tokens = strings(&g, "tokenizer.ggml.tokens")?;
        let vocab = g.get("llama.vocab_size").and_then(Value::as_u64).unwrap_or(tokens.len() as u64);
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
        let tok_model = g.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or("(none)");
        if tok_model != "gpt2" {
            bail!("GGUF: tokenizer model '{tok_model}' is not supported (supported: gpt2 byte-level BPE)");
        }
        let merges = strings(&g, "tokenizer.ggml.merges")?;
        let types: Vec<i32> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
            None => vec![1; tokens.len()],
        };
        let pre_name = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("gpt2");
        let pre = PreTokenizer::from_gguf_name(pre_name)
            .ok_or_else(|| anyhow!("GGUF: pre-tokenizer '{pre_name}' is not supported (supported: gpt2, smollm)"))?;
        let tokenizer_blob = arq::tokenizer::build_blob_with(pre, &tokens, &types, &merges)
            .map_err(|e| anyhow!("GGUF tokenizer: {e}"))?;

        let mut meta = vec![
            ("arq.architecture".to_string(), Meta::Str("llama".into())),
            ("general.name".into(), Meta::Str(g.get("general.name").and_then(Value::as_str).unwrap_or("").into())),
            (
                "general.source".into(),
                Meta::Str(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
            ),
            ("llama.vocab_size".into(), Meta::U64(vocab)),
            ("llama.context_length".into(), Meta::U64(get_u64(&g, "llama.context_length")?)),
            ("llama.embedding_length".into(), Meta::U64(dim)),
            ("llama.block_count".into(), Meta::U64(n_layers as u64)),
            ("llama.feed_forward_length".into(), Meta::U64(get_u64(&g, "llama.feed_forward_length")?)),
            ("llama.attention.head_count".into(), Meta::U64(n_heads)),
            ("llama.attention.head_count_kv".into(), Meta::U64(n_kv)),
            ("llama.rope.freq_base".into(), Meta::F32(get_f32(&g, "llama.rope.freq_base", 10000.0)?)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Meta::F32(get_f32(&g, "llama.attention.layer_norm_rms_epsilon", 1e-5)?),
            ),
            ("tokenizer.model".into(), Meta::Str("gpt2".into())),
            ("tokenizer.pre".into(), Meta::Str(pre_name.into())),
            (
                "tokenizer.add_bos".into(),
                Meta::Bool(g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false)),
            ),
        ];
        for (gkey, akey) in [
            ("tokenizer.ggml.bos_token_id", "tokenizer.bos_id"),
            ("tokenizer.ggml.eos_token_id", "tokenizer.eos_id"),
            ("tokenizer.ggml.padding_token_id", "tokenizer.pad_id"),
        ] {
            if let Some(id) = g.get(gkey).and_then(Value::as_u64) {
                meta.push((akey.into(), Meta::U32(id as u32)));
            }
        }
        if let Some(t) = g.get("tokenizer.chat_template").and_then(Value::as_str) {
            meta.push(("tokenizer.chat_template".into(), Meta::Str(t.into())));
        }

        let has_output = g.tensor("output.weight").is_some();
        let names = canonical_names(n_layers, has_output);
        let bar = crate::progress::bar(names.len() as u64, "reading", progress);
        let mut tensors = Vec::with_capacity(names.len());
        for (gname, aname) in names {
            let t = g.tensor(&gname).ok_or_else(|| anyhow!("GGUF: tensor '{gname}' is missing"))?;
            let values = g.dequantize(t).map_err(|e| anyhow!("GGUF: {e}"))?;
            // GGUF lists dims innermost first; .arq outermost first.
            let dims: Vec<u64> = t.dims.iter().rev().copied().collect();
            let is_matrix = dims.len() == 2;
            tensors.push(SourceTensor { name: aname, dims, values, is_matrix });
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(LlamaSource { meta, tokenizer_blob, tensors })
    }

    /// Serializes the model with matrices in `quant`; returns the file bytes and the
    /// per-tensor relative quantization errors.
    pub fn to_arq(&self, quant: Quant, progress: bool) -> Result<(Vec<u8>, Vec<TensorError>)> {
        let mut w = ArqWriter::new();
        for (k, v) in &self.meta {
            w.meta(k, v.clone());
        }
        w.meta("arq.quant", Meta::Str(quant.name().into()));
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

/// Temporary path next to `out`, so the final rename stays on one filesystem.
fn temp_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out.arq".into());
    out.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Whether the runtime's loader for the file's architecture accepts it.
pub fn check_loads(file: ArqFile<'_>) -> Result<(), arq::Error> {
    match file.meta("arq.architecture").and_then(|v| v.as_str()) {
        Some("pixelcnn") => arq::PixelCnn::from_file(file).map(|_| ()),
        // LLaMA and GPT-2; the tokenizer tables too.
        _ => arq::Model::from_file(file).and_then(|m| m.tokenizer()).map(|_| ()),
    }
}

/// Writes `bytes` to `out` atomically: a temp file, fsync, re-open and validate with
/// the runtime's reader (structure, checksum, model), then rename.
pub fn write_validated(bytes: &[u8], out: &Path) -> Result<()> {
    let tmp = temp_path(out);
    let result = (|| -> Result<()> {
        let f = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut bw = BufWriter::new(f);
        bw.write_all(bytes)?;
        bw.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let mapped = ModelBytes::map(&tmp)?;
        let file = ArqFile::parse(mapped.bytes()).map_err(|e| anyhow!("written file failed validation: {e}"))?;
        file.verify_checksum().map_err(|e| anyhow!("written file failed validation: {e}"))?;
        check_loads(file).map_err(|e| anyhow!("written file failed validation: {e}"))?;
        fs::rename(&tmp, out).with_context(|| format!("cannot rename into {}", out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub struct ConvertSummary {
    pub bytes: u64,
    pub tensor_errors: Vec<TensorError>,
    pub accuracy: Option<AccuracyReport>,
}

/// The checks every conversion makes before reading anything: the input exists, the
/// output does not (unless `force`), and they are not the same file.
pub fn check_paths(input: &Path, out: &Path, force: bool) -> Result<()> {
    if !input.exists() {
        bail!("{}: no such file", input.display());
    }
    if out.exists() && !force {
        bail!("{} already exists (use --force to overwrite)", out.display());
    }
    if let (Ok(a), Ok(b)) = (input.canonicalize(), out.canonicalize()) {
        if a == b {
            bail!("output {} is the input file", out.display());
        }
    }
    Ok(())
}

/// `arq convert`: the whole pipeline.
pub fn convert(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertSummary> {
    check_paths(input, out, opts.force)?;
    let src = LlamaSource::from_gguf(input, opts.progress)?;
    let (bytes, tensor_errors) = src.to_arq(opts.quant, opts.progress)?;
    let accuracy = if opts.quant != Quant::F32 && !opts.skip_calibration {
        let (reference, _) = src.to_arq(Quant::F32, false)?;
        drop(src);
        let text = opts.calib.as_deref().unwrap_or(report::CALIBRATION_TEXT);
        Some(report::compare(&ModelBytes::copy_of(&reference), &ModelBytes::copy_of(&bytes), text)?)
    } else {
        None
    };
    write_validated(&bytes, out)?;
    Ok(ConvertSummary { bytes: bytes.len() as u64, tensor_errors, accuracy })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_keeps_the_embedding_and_head_in_q8() {
        assert_eq!(Quant::Q4.dtype_of("token_embd"), Dtype::Q8);
        assert_eq!(Quant::Q4.dtype_of("output"), Dtype::Q8);
        assert_eq!(Quant::Q4.dtype_of("position_embd"), Dtype::Q8);
        assert_eq!(Quant::Q4.dtype_of("blk.0.attn_q"), Dtype::Q4);
        assert_eq!(Quant::Q4.dtype_of("blk.29.ffn_down"), Dtype::Q4);
        assert_eq!(Quant::Q8.dtype_of("token_embd"), Dtype::Q8);
        assert_eq!(Quant::F32.dtype_of("blk.0.attn_q"), Dtype::F32);
        assert_eq!(Quant::Q4.name(), "q4");
    }
}
