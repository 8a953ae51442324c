//! A text transformer on its way to `.arq`, whatever it was read from (a GGUF file, a
//! Hugging Face directory): its hyperparameters ([`HParams`]), its tokenizer tables, and
//! its tensors dequantized to f32 and put in the order the runtime's family table
//! expects ([`TextSource::read`]); then requantized and written ([`convert`]).
//!
//! An importer's whole job is to fill [`HParams`] and to answer, for each canonical
//! tensor name (`token_embd`, `blk.3.attn_q`, `blk.3.attn_q.bias`, ...), with its values
//! in the runtime's layout; everything after that is shared.

use std::path::Path;

use anyhow::{bail, Context, Result};
use arq::format::keys::{self, HParamKeys};
use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use arq::models::transformer::family::{FamilySpec, NormKind, Positions};
use arq::models::transformer::Family;
use arq::quant::QK8;

use crate::aligned::ModelBytes;
use crate::output::{check_paths, write_validated};
use crate::quantize::{check_finite, encode_matrix, Quant, TensorError};
use crate::report;
use crate::{ConvertOptions, ConvertSummary, InputFormat};

/// Caps on the hyperparameters, checked before anything is sized by them: the runtime's
/// loader refuses more (its `MAX_LAYERS`, `MAX_DIM`, `MAX_VOCAB` and context cap), so a
/// larger model could be read but never run. Without them a block count of 2^22 made
/// the importer build 9 x 2^22 tensor names and abort.
pub const MAX_LAYERS: u64 = 1 << 10;
pub const MAX_DIM: u64 = 1 << 16;
pub const MAX_VOCAB: u64 = 1 << 22;
pub const MAX_CONTEXT: u64 = 1 << 24;

/// The family named `name` (`llama`, `gemma3`, ...), or an error that lists them.
pub fn family(name: &str, what: &str) -> Result<Family> {
    match FamilySpec::by_name(name) {
        Some(spec) => Ok(spec.family),
        None => {
            let supported: Vec<_> = arq::models::transformer::family::names().collect();
            bail!("unsupported {what} '{}' (supported: {})", crate::message::name(name), supported.join(", "))
        }
    }
}

/// Gemma's chat format (`<start_of_turn>user ... <end_of_turn>`, the assistant's role
/// named `model`, a system message folded into the first user turn), for files that
/// carry no template: the GGUF of Gemma 3 270M has none, and llama.cpp falls back to
/// the same built-in format.
const GEMMA_CHAT_TEMPLATE: &str = "\
{%- if messages[0]['role'] == 'system' -%}\
{%- set prefix = messages[0]['content'] ~ '\\n\\n' -%}{%- set turns = messages[1:] -%}\
{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}\
{{ bos_token }}\
{%- for m in turns -%}\
{{ '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else m['role']) ~ '\\n' \
~ (prefix if loop.first else '') ~ (m['content'] | trim) ~ '<end_of_turn>\\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}";

/// The chat template of `family` for a file that has none.
pub fn default_chat_template(family: Family) -> Option<&'static str> {
    (family == Family::Gemma3).then_some(GEMMA_CHAT_TEMPLATE)
}

/// A transformer's hyperparameters, as every importer reads them.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub family: Family,
    pub vocab: u64,
    /// The training context (GPT-2: its position table).
    pub ctx: u64,
    pub dim: u64,
    pub n_layers: u64,
    pub ffn: u64,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    /// One head's dimension when it is not `dim / n_heads`.
    pub head_dim: Option<u64>,
    /// RoPE base θ (rotary families).
    pub rope_base: f32,
    /// ε of the family's norm.
    pub norm_eps: f32,
    /// `(window, pattern, local rope base)` of the sliding-window layers (Gemma 3).
    pub sliding: Option<(u64, u64, f32)>,
    /// The factor of q·k when it is not `1/sqrt(head_dim)`.
    pub attn_scale: Option<f32>,
}

impl HParams {
    /// The family's row.
    pub fn spec(&self) -> &'static FamilySpec {
        self.family.spec()
    }

    /// The head dimension in effect.
    pub fn head_dim(&self) -> u64 {
        self.head_dim.unwrap_or(self.dim.checked_div(self.n_heads).unwrap_or(0))
    }

    /// Caps and the checks that sizes agree, before any tensor is read; `source` names
    /// the input kind in messages ("GGUF", "config.json").
    pub fn check(&self, source: &str) -> Result<()> {
        let caps = [
            ("block_count", self.n_layers, MAX_LAYERS),
            ("embedding_length", self.dim, MAX_DIM),
            ("feed_forward_length", self.ffn, 4 * MAX_DIM),
            ("head_count", self.n_heads, MAX_DIM),
            ("head_count_kv", self.n_kv_heads, MAX_DIM),
            ("key_length", self.head_dim.unwrap_or(0), MAX_DIM),
            ("vocab_size", self.vocab, MAX_VOCAB),
            ("context_length", self.ctx, MAX_CONTEXT),
            ("sliding_window", self.sliding.map_or(0, |s| s.0), MAX_CONTEXT),
        ];
        for (what, v, cap) in caps {
            if v > cap {
                bail!("{source}: {what} is {v}, more than the cap of {cap}");
            }
        }
        if self.n_heads == 0 || self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            bail!("{source}: {} heads cannot share {} key/value heads", self.n_heads, self.n_kv_heads);
        }
        if self.head_dim.is_none() && !self.dim.is_multiple_of(self.n_heads) {
            bail!("{source}: embedding_length {} is not a multiple of head_count {}", self.dim, self.n_heads);
        }
        Ok(())
    }

    /// The `.arq` metadata of the hyperparameters (`{family}.*` keys).
    pub fn meta(&self) -> Vec<(String, Meta)> {
        let spec = self.spec();
        let k: &HParamKeys = spec.keys;
        let mut m = vec![
            (keys::ARCHITECTURE.to_string(), Meta::Str(spec.name.into())),
            (k.vocab_size.into(), Meta::U64(self.vocab)),
            (k.context_length.into(), Meta::U64(self.ctx)),
            (k.embedding_length.into(), Meta::U64(self.dim)),
            (k.block_count.into(), Meta::U64(self.n_layers)),
            (k.feed_forward_length.into(), Meta::U64(self.ffn)),
            (k.head_count.into(), Meta::U64(self.n_heads)),
            (k.head_count_kv.into(), Meta::U64(self.n_kv_heads)),
        ];
        if let Some(hd) = self.head_dim {
            m.push((k.key_length.into(), Meta::U64(hd)));
        }
        if spec.positions == Positions::Rotary {
            m.push((k.rope_freq_base.into(), Meta::F32(self.rope_base)));
        }
        let eps_key = match spec.norm {
            NormKind::Rms => k.rms_epsilon,
            NormKind::Layer => k.layer_norm_epsilon,
        };
        m.push((eps_key.into(), Meta::F32(self.norm_eps)));
        if let Some((window, pattern, local_base)) = self.sliding {
            m.push((k.sliding_window.into(), Meta::U64(window)));
            m.push((k.sliding_window_pattern.into(), Meta::U64(pattern)));
            m.push((k.rope_local_freq_base.into(), Meta::F32(local_base)));
        }
        if let Some(s) = self.attn_scale {
            m.push((k.attention_scale.into(), Meta::F32(s)));
        }
        m
    }

    /// Every tensor the runtime reads, in file order: `(name, dims outermost first,
    /// is a matrix)`. The output head is listed only when `tied` is false.
    pub fn tensor_names(&self, tied: bool) -> Vec<(String, Vec<u64>, bool)> {
        let spec = self.spec();
        let (d, v, ff) = (self.dim, self.vocab, self.ffn);
        let (hd, qd, kvd) = (self.head_dim(), self.n_heads * self.head_dim(), self.n_kv_heads * self.head_dim());
        let mut out = vec![("token_embd".to_string(), vec![v, d], true)];
        if spec.positions == Positions::Learned {
            out.push(("position_embd".into(), vec![self.ctx, d], true));
        }
        out.push(("output_norm".into(), vec![d], false));
        if spec.norm == NormKind::Layer {
            out.push(("output_norm.bias".into(), vec![d], false));
        }
        if !tied {
            out.push(("output".into(), vec![v, d], true));
        }
        for l in 0..self.n_layers {
            for role in spec.layer_roles {
                let (matrix, bias) = match role.strip_suffix(".bias") {
                    Some(m) => (m, true),
                    None => (*role, false),
                };
                let dims = match matrix {
                    "attn_q" => vec![qd, d],
                    "attn_k" | "attn_v" => vec![kvd, d],
                    "attn_output" => vec![d, qd],
                    "ffn_gate" | "ffn_up" => vec![ff, d],
                    "ffn_down" => vec![d, ff],
                    "attn_q_norm" | "attn_k_norm" => vec![hd],
                    _ => vec![d], // the norms
                };
                let is_matrix = dims.len() == 2 && !bias;
                let dims = if bias { vec![dims[0]] } else { dims };
                out.push((format!("blk.{l}.{role}"), dims, is_matrix));
            }
        }
        out
    }
}

/// One tensor in `.arq` order, in f32 (row-major, outermost dim first).
pub struct SourceTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub values: Vec<f32>,
    /// Quantized with the output's weight type (matrices), or kept f32 (norms, biases).
    pub is_matrix: bool,
}

/// The model read from any input, ready to be written in any dtype.
pub struct TextSource {
    meta: Vec<(String, Meta)>,
    tokenizer_blob: Vec<u8>,
    tensors: Vec<SourceTensor>,
}

impl TextSource {
    /// Reads every tensor of `hp`'s family through `fetch(name, dims)`, which returns
    /// the values in `.arq` layout (`dims` outermost first) or an error naming the
    /// source tensor; `meta` holds the rest of the metadata (general, tokenizer).
    pub fn read(
        hp: &HParams,
        tied: bool,
        meta: Vec<(String, Meta)>,
        tokenizer_blob: Vec<u8>,
        progress: bool,
        mut fetch: impl FnMut(&str, &[u64]) -> Result<Vec<f32>>,
    ) -> Result<TextSource> {
        let names = hp.tensor_names(tied);
        let bar = crate::progress::bar(names.len() as u64, "reading", progress);
        let mut tensors = Vec::with_capacity(names.len());
        for (name, dims, is_matrix) in names {
            let values = fetch(&name, &dims)?;
            let want: u64 = dims.iter().product();
            if values.len() as u64 != want {
                bail!("tensor {name}: {} values, its shape {dims:?} needs {want}", values.len());
            }
            check_finite(&name, &values)?;
            tensors.push(SourceTensor { name, dims, values, is_matrix });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut all = hp.meta();
        all.extend(meta);
        Ok(TextSource { meta: all, tokenizer_blob, tensors })
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
                let blob = self.tokenizer_blob.clone();
                w.tensor(keys::TENSOR_TOKENIZER, Dtype::U8, &[blob.len() as u64], blob)?;
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

/// A text model → `.arq`: `read` the input, requantize to `opts.quant`, compare against
/// the unquantized model on the calibration text (unless skipped or f32), write
/// atomically.
pub fn convert(
    input: &Path,
    out: &Path,
    opts: &ConvertOptions,
    format: InputFormat,
    read: impl FnOnce(&Path, bool) -> Result<TextSource>,
) -> Result<ConvertSummary> {
    let calib = match &opts.calib {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("cannot read calibration text {}", p.display()))?)
        }
        None => None,
    };
    // A Hugging Face input is a directory, whose paths its importer checks itself.
    if format != InputFormat::HuggingFace {
        check_paths(input, out, opts.force)?;
    }
    let src = read(input, opts.progress)?;
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
    Ok(ConvertSummary { format, bytes: bytes.len() as u64, tensor_errors, accuracy, description: None })
}

#[cfg(test)]
mod tests {
    use super::GEMMA_CHAT_TEMPLATE;
    use minijinja::context;

    fn render(messages: Vec<minijinja::Value>) -> String {
        let mut env = minijinja::Environment::new();
        env.add_template("t", GEMMA_CHAT_TEMPLATE).unwrap();
        let t = env.get_template("t").unwrap();
        t.render(context! { messages => messages, add_generation_prompt => true, bos_token => "<bos>" }).unwrap()
    }

    /// The prompts transformers' `apply_chat_template` renders for Gemma 3.
    #[test]
    fn gemma_template_renders_gemmas_format() {
        let user = |c: &str| context! { role => "user", content => c };
        assert_eq!(
            render(vec![user(" What is the capital of France? ")]),
            "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
        );
        let system = context! { role => "system", content => "Be brief." };
        let model = context! { role => "assistant", content => "Paris." };
        assert_eq!(
            render(vec![system, user("Capital of France?"), model, user("And Spain?")]),
            "<bos><start_of_turn>user\nBe brief.\n\nCapital of France?<end_of_turn>\n<start_of_turn>model\n\
             Paris.<end_of_turn>\n<start_of_turn>user\nAnd Spain?<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
