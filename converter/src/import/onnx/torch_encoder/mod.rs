//! ONNX → `.arq` for PyTorch's `nn.TransformerEncoder` language model, the
//! `word_language_model` example's `TransformerModel` (`runtime` family
//! `torch_encoder`), as `torch.onnx.export` writes it.
//!
//! Like the other importers, the graph is walked in file order and every computed tensor
//! gets a role from its operator and its inputs' roles ([`walker`]); node names are never
//! used, and the first node that fits no role stops the import with one line naming it.
//! The pattern (`d` the width, `ffn` the MLP width, `V` the vocabulary):
//!
//! - input: one integer tensor `(seq, batch)` of token ids; output: the log-softmax (or
//!   the logits) of the decoder.
//! - `Gather(emb (V, d), tokens)`, optionally times a scalar (the example's `sqrt(d)`),
//!   plus a constant position table `(T, 1, d)` or `(T, d)`.
//! - per block (post-LN, `norm_first=False`): linear `d → 3d` (the fused in-projection)
//!   → the attention, any nodes computed from it and from constants or shapes → linear
//!   `d → d` (out-projection) → residual Add → LayerNormalization → linear `d → ffn` →
//!   `Relu` → linear `ffn → d` → residual Add → LayerNormalization.
//! - head: LayerNormalization (the encoder's final norm) → linear `d → V` with a bias →
//!   `LogSoftmax` on the last axis.
//!
//! The attention's inner nodes are not matched one by one: PyTorch's exporter spells the
//! head split, the scaling and the causal mask in ways that change between versions.
//! Instead, once the weights are read, the converted model is run in f32 by arq's own
//! engine and compared with tract's run of the ONNX graph on the same tokens: the graph
//! is accepted only when causal multi-head attention with `H` heads (the metadata
//! `arq.head_count`, else the first divisor of `d` that fits) reproduces its log-probs.
//!
//! A position table that is the example's sinusoid (`PositionalEncoding`) in every
//! exported row is extended to the example's `max_len` (5000) rows, since the exporter
//! keeps only the rows of the traced sequence length; any other table is kept as is.
//! Widths that are not multiples of 32 are padded with zeros (each head separately);
//! the file records the real width for the LayerNorms (`torch_encoder.norm_length`) and
//! the attention scale of the real head width.

mod walker;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use arq::format::keys;
use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use tract_onnx::pb;

use super::proto::read_proto;
use crate::quantize::{write_matrix, write_vector, Quant, TensorError};

/// The rows of the example's `PositionalEncoding` table (its `max_len`).
pub const SINUSOID_ROWS: usize = 5000;

/// The longest exported sequence the attention check runs (the example exports 35).
const MAX_PROBE: usize = 4096;

/// A linear layer: `(out, in)` row-major weight and `out` biases, unpadded.
#[derive(Clone, Debug, Default)]
pub struct Linear {
    pub rows: usize,
    pub cols: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A LayerNorm's weight and bias.
#[derive(Clone, Debug, Default)]
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One post-LN block as PyTorch names its parts.
#[derive(Clone, Debug, Default)]
pub struct Block {
    /// `(3d, d)`: q, k, v stacked.
    pub in_proj: Linear,
    pub out_proj: Linear,
    pub norm1: LayerNorm,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm2: LayerNorm,
}

/// A `TransformerModel` read from ONNX, unpadded f32.
#[derive(Clone, Debug)]
pub struct TorchEncoderSource {
    pub name: String,
    pub source: PathBuf,
    /// Whether the vocabulary is characters (else words).
    pub chars: bool,
    pub tokens: Vec<String>,
    pub dim: usize,
    pub ffn: usize,
    pub heads: usize,
    pub epsilon: f32,
    /// `(V, d)`, times the graph's embedding scale.
    pub token_embd: Vec<f32>,
    /// `(rows, d)`.
    pub position_embd: Vec<f32>,
    /// Whether `position_embd` is the extended sinusoid.
    pub sinusoid: bool,
    pub blocks: Vec<Block>,
    pub final_norm: LayerNorm,
    /// `(V, d)` and `V` biases.
    pub decoder: Linear,
}

/// Whether `proto`'s one graph input is an integer tensor (token ids): the pattern this
/// module reads, where the graph has no recurrent node and no GPT-2 metadata.
pub fn has_token_input(proto: &pb::ModelProto) -> bool {
    proto.graph.as_ref().is_some_and(|g| walker::token_input(g).is_ok())
}

/// `x` rounded up to a multiple of 32.
fn pad32(x: usize) -> usize {
    x.div_ceil(32) * 32
}

/// The example's `PositionalEncoding` table in f32, computed as PyTorch does (f32
/// `exp` of the frequencies, f32 products, then sin/cos), `(rows, d)`.
pub fn sinusoid(rows: usize, d: usize) -> Vec<f32> {
    let step = -(10000f32.ln()) / d as f32;
    let mut pe = vec![0f32; rows * d];
    for p in 0..rows {
        for i in (0..d).step_by(2) {
            let arg = p as f32 * ((i as f32) * step).exp();
            pe[p * d + i] = arg.sin();
            if i + 1 < d {
                pe[p * d + i + 1] = arg.cos();
            }
        }
    }
    pe
}

impl TorchEncoderSource {
    /// Reads the model of `proto` (read from `path`) with the vocabulary file `vocab`,
    /// and checks it against tract's run of the graph.
    pub fn from_proto(path: &Path, proto: &pb::ModelProto, vocab: Option<&Path>) -> Result<Self> {
        let at = |e: String| anyhow!("{}: {e}", path.display());
        let graph = proto.graph.as_ref().ok_or_else(|| at("no graph".into()))?;
        let p = walker::parse(graph).map_err(at)?;
        let Some(vocab) = vocab else {
            bail!(
                "{}: an ONNX transformer language model needs its vocabulary: --vocab FILE ({{\"level\": \"word\", \
                 \"tokens\": [...]}}, as models/rnn/train.py writes)",
                path.display()
            );
        };
        let (chars, tokens) = super::rnn::read_vocab(vocab)?;
        let v = p.token_embd.len() / p.dim;
        if tokens.len() != v {
            bail!(
                "{}: {} has {} tokens, but the embedding has {v} rows",
                path.display(),
                vocab.display(),
                tokens.len()
            );
        }
        let pe_rows = p.position_embd.len() / p.dim;
        let table = sinusoid(pe_rows, p.dim);
        let is_sinusoid = p.position_embd.iter().zip(&table).all(|(a, b)| (a - b).abs() <= 1e-5);
        let (position_embd, sinusoid_rows) = match is_sinusoid {
            true => (sinusoid(SINUSOID_ROWS.max(pe_rows), p.dim), true),
            false => (p.position_embd.clone(), false),
        };
        let meta_heads = proto
            .metadata_props
            .iter()
            .find(|e| e.key == "arq.head_count")
            .map(|e| {
                e.value.trim().parse::<usize>().map_err(|_| at(format!("arq.head_count '{}' is not a count", e.value)))
            })
            .transpose()?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut src = TorchEncoderSource {
            name,
            source: path.to_path_buf(),
            chars,
            tokens,
            dim: p.dim,
            ffn: p.ffn,
            heads: 0,
            epsilon: p.epsilon,
            token_embd: p.token_embd,
            position_embd,
            sinusoid: sinusoid_rows,
            blocks: p.blocks,
            final_norm: p.final_norm,
            decoder: p.decoder,
        };
        src.heads = src.verified_heads(proto, p.seq_len, meta_heads)?;
        Ok(src)
    }

    /// The head count whose causal attention reproduces tract's log-probs of the graph
    /// on a probe sequence (the graph's own length), trying `heads` only where given.
    fn verified_heads(&self, proto: &pb::ModelProto, seq: usize, heads: Option<usize>) -> Result<usize> {
        let v = self.tokens.len();
        if v == 0 {
            bail!("{}: the embedding has no rows", self.source.display());
        }
        if seq > MAX_PROBE {
            bail!(
                "{}: the graph was exported for sequences of {seq} tokens; the check runs it once at that length \
                 and takes at most {MAX_PROBE}",
                self.source.display()
            );
        }
        let probe: Vec<u32> = (0..seq).map(|i| ((i * 7919 + 13) % v) as u32).collect();
        // tract on a hostile graph: an error, or a panic caught here, is one line (the
        // default hook, which would print the panic's own lines, is silenced meanwhile).
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let run =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tract_logprobs(&self.source, proto, &probe)));
        std::panic::set_hook(hook);
        let want = match run {
            Ok(r) => r.map_err(|e| anyhow!("{}", e.to_string().replace('\n', " ")))?,
            Err(_) => bail!("{}: tract failed on the graph (it panicked)", self.source.display()),
        };
        let candidates: Vec<usize> = match heads {
            Some(h) => vec![h],
            None => (1..=self.dim).filter(|&h| self.dim.is_multiple_of(h)).collect(),
        };
        let mut best = f64::INFINITY;
        for h in candidates {
            if h == 0 || !self.dim.is_multiple_of(h) {
                bail!("{}: arq.head_count = {h} does not divide d = {}", self.source.display(), self.dim);
            }
            let got = self.arq_logprobs(h, &probe)?;
            let diff = got.iter().zip(&want).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max);
            if diff < 1e-3 {
                return Ok(h);
            }
            best = best.min(diff);
        }
        bail!(
            "{}: the graph's attention is not causal multi-head attention softmax(q kᵀ/sqrt(d/H)) v with {} \
             (arq's f32 run differs from tract's by {best:.3e} in log-prob at best)",
            self.source.display(),
            heads.map_or("any head count H dividing d".to_string(), |h| format!("H = {h} (arq.head_count)"))
        )
    }

    /// arq's f32 log-probs of `probe` (all positions) with `heads` heads.
    fn arq_logprobs(&self, heads: usize, probe: &[u32]) -> Result<Vec<f32>> {
        let (bytes, _) = self.with_heads(heads).to_arq(Quant::F32)?;
        let bytes = arq::aligned::AlignedBytes::copy_of(&bytes);
        let model = arq::Model::load(bytes.bytes()).map_err(|e| anyhow!("{}: {e}", self.source.display()))?;
        let cfg = arq::SessionConfig { ctx: probe.len(), batch: probe.len(), threads: 1, ..Default::default() };
        let mut arena = vec![0u8; model.memory_plan(&cfg).map_err(|e| anyhow!("{e}"))?];
        let mut s = arq::Session::new(&model, &mut arena, cfg).map_err(|e| anyhow!("{e}"))?;
        let mut out = Vec::with_capacity(probe.len() * self.tokens.len());
        s.forward_all(probe, |_, l| {
            let lse = arq::math::log_sum_exp(l) as f32;
            out.extend(l.iter().map(|x| x - lse));
        })
        .map_err(|e| anyhow!("{e}"))?;
        Ok(out)
    }

    fn with_heads(&self, heads: usize) -> Self {
        TorchEncoderSource { heads, ..self.clone() }
    }

    /// One line: sizes, vocabulary, positions.
    pub fn describe(&self) -> String {
        let rows = self.position_embd.len() / self.dim;
        format!(
            "PyTorch TransformerEncoder (post-LN, ReLU), d = {}{}, {} layers, {} heads, ffn {}, vocab {} ({}), {} \
             positions ({}), LayerNorm eps {:e}",
            self.dim,
            if !self.dim.is_multiple_of(32) { format!(" (padded to {})", pad32(self.dim)) } else { String::new() },
            self.blocks.len(),
            self.heads,
            self.ffn,
            self.tokens.len(),
            if self.chars { "characters" } else { "words" },
            rows,
            if self.sinusoid { "sinusoidal, extended to the example's max_len" } else { "the exported table" },
            self.epsilon
        )
    }

    /// Serializes the model, padded to multiples of 32 (each head separately), with
    /// matrices in `quant`; returns the bytes and each quantized matrix's error.
    pub fn to_arq(&self, quant: Quant) -> Result<(Vec<u8>, Vec<TensorError>)> {
        let (d, ff, h, v) = (self.dim, self.ffn, self.heads.max(1), self.tokens.len());
        let hd = d / h;
        // Padded head width: the heads together a multiple of 32.
        let hdp = (hd..).find(|x| (x * h) % 32 == 0).unwrap_or(hd);
        let (dp, ffp, qd) = (pad32(d), pad32(ff), h * hdp);
        let ctx = self.position_embd.len() / d;
        let mut w = ArqWriter::new();
        let file_name = self.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let k = &keys::TORCH_ENCODER;
        for (key, val) in [
            (keys::ARCHITECTURE, Meta::Str(keys::ARCH_TORCH_ENCODER.into())),
            (keys::QUANT, Meta::Str(quant.name().into())),
            (keys::GENERAL_NAME, Meta::Str(self.name.clone())),
            (keys::GENERAL_SOURCE, Meta::Str(file_name)),
            (k.vocab_size, Meta::U64(v as u64)),
            (k.context_length, Meta::U64(ctx as u64)),
            (k.embedding_length, Meta::U64(dp as u64)),
            (k.norm_length, Meta::U64(d as u64)),
            (k.block_count, Meta::U64(self.blocks.len() as u64)),
            (k.feed_forward_length, Meta::U64(ffp as u64)),
            (k.head_count, Meta::U64(h as u64)),
            (k.key_length, Meta::U64(hdp as u64)),
            (k.attention_scale, Meta::F32(1.0 / (hd as f32).sqrt())),
            (k.layer_norm_epsilon, Meta::F32(self.epsilon)),
        ] {
            w.meta(key, val);
        }
        let mut errors = Vec::new();
        let mut matrix = |w: &mut ArqWriter, name: &str, rows: usize, cols: usize, values: &[f32]| {
            write_matrix(w, (quant, &mut errors), name, (rows, cols), values)
        };
        let same = |i: usize| i;
        // Entry i of the heads' concatenation, each head padded from hd to hdp.
        let head = |i: usize| (i / hd) * hdp + i % hd;
        let vector = |w: &mut ArqWriter, name: &str, x: &[f32], n: usize, at: &dyn Fn(usize) -> usize| {
            write_vector(w, name, &place(x, (1, x.len()), (1, n), &same, at))
        };
        matrix(&mut w, "token_embd", v, dp, &place(&self.token_embd, (v, d), (v, dp), &same, &same))?;
        let pos = place(&self.position_embd, (ctx, d), (ctx, dp), &same, &same);
        matrix(&mut w, "position_embd", ctx, dp, &pos)?;
        vector(&mut w, "output_norm", &self.final_norm.weight, dp, &same)?;
        vector(&mut w, "output_norm.bias", &self.final_norm.bias, dp, &same)?;
        matrix(&mut w, "output", v, dp, &place(&self.decoder.weight, (v, d), (v, dp), &same, &same))?;
        write_vector(&mut w, "output.bias", &self.decoder.bias)?;
        let blob = arq::tokenizer::build_vocab_blob(self.chars, &self.tokens)
            .map_err(|e| anyhow!("{}: vocabulary: {e}", self.source.display()))?;
        w.tensor(keys::TENSOR_TOKENIZER, Dtype::U8, &[blob.len() as u64], blob)?;
        for (l, b) in self.blocks.iter().enumerate() {
            let name = |role: &str| format!("blk.{l}.{role}");
            // PyTorch's norm1 follows the attention, norm2 the MLP: the post-LN meaning
            // of the roles attn_norm and ffn_norm.
            for (role, n) in [("attn_norm", &b.norm1), ("ffn_norm", &b.norm2)] {
                if role == "ffn_norm" {
                    let o = &b.out_proj;
                    matrix(&mut w, &name("attn_output"), dp, qd, &place(&o.weight, (d, d), (dp, qd), &same, &head))?;
                    vector(&mut w, &name("attn_output.bias"), &o.bias, dp, &same)?;
                }
                vector(&mut w, &name(role), &n.weight, dp, &same)?;
                vector(&mut w, &name(&format!("{role}.bias")), &n.bias, dp, &same)?;
                if role == "attn_norm" {
                    for (j, part) in ["attn_q", "attn_k", "attn_v"].iter().enumerate() {
                        let rows = &b.in_proj.weight[j * d * d..(j + 1) * d * d];
                        matrix(&mut w, &name(part), qd, dp, &place(rows, (d, d), (qd, dp), &head, &same))?;
                        let bias = &b.in_proj.bias[j * d..(j + 1) * d];
                        vector(&mut w, &name(&format!("{part}.bias")), bias, qd, &head)?;
                    }
                }
            }
            let (up, down) = (&b.linear1, &b.linear2);
            matrix(&mut w, &name("ffn_up"), ffp, dp, &place(&up.weight, (ff, d), (ffp, dp), &same, &same))?;
            vector(&mut w, &name("ffn_up.bias"), &up.bias, ffp, &same)?;
            matrix(&mut w, &name("ffn_down"), dp, ffp, &place(&down.weight, (d, ff), (dp, ffp), &same, &same))?;
            vector(&mut w, &name("ffn_down.bias"), &down.bias, dp, &same)?;
        }
        let mut out = Vec::new();
        w.write(&mut out)?;
        Ok((out, errors))
    }
}

/// The `(rows, cols)` matrix `m` placed in a zero `(rows_p, cols_p)` one, entry `(r, c)`
/// at `(row_at(r), col_at(c))`: the zero padding of widths that are not multiples of 32.
fn place(
    m: &[f32],
    (rows, cols): (usize, usize),
    (rows_p, cols_p): (usize, usize),
    row_at: &dyn Fn(usize) -> usize,
    col_at: &dyn Fn(usize) -> usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; rows_p * cols_p];
    for r in 0..rows {
        for c in 0..cols {
            out[row_at(r) * cols_p + col_at(c)] = m[r * cols + c];
        }
    }
    out
}

/// tract's f32 log-probs of the graph on `tokens` as a `(seq, 1)` input, `(seq, V)`
/// flattened (the logits normalized, for a graph without the LogSoftmax).
pub fn tract_logprobs(path: &Path, proto: &pb::ModelProto, tokens: &[u32]) -> Result<Vec<f32>> {
    use tract_onnx::prelude::{tvec, DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor};
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("{}: no graph", path.display()))?;
    let int32 = walker::token_input(graph).map_err(|e| anyhow!("{}: {e}", path.display()))? == 6;
    let t = tokens.len();
    let err = |e: anyhow::Error| anyhow!("{}: tract: {e:#}", path.display());
    let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    let fact = if int32 { i32::fact([t, 1]) } else { i64::fact([t, 1]) };
    let model = onnx
        .model_for_proto_model(proto)
        .and_then(|m| m.with_input_fact(0, fact.into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(err)?;
    let input = if int32 {
        Tensor::from_shape(&[t, 1], &tokens.iter().map(|&x| x as i32).collect::<Vec<_>>())
    } else {
        Tensor::from_shape(&[t, 1], &tokens.iter().map(|&x| x as i64).collect::<Vec<_>>())
    }
    .map_err(err)?;
    let out = model.run(tvec!(input.into_tvalue())).map_err(err)?;
    let view = out[0].to_plain_array_view::<f32>().map_err(err)?;
    let flat: Vec<f32> = view.iter().copied().collect();
    let v = flat.len() / t.max(1);
    Ok(flat
        .chunks(v.max(1))
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            row.iter().map(move |x| x - lse)
        })
        .collect())
}

/// Reads the file at `path`: for tests and tools.
pub fn from_onnx(path: &Path, vocab: Option<&Path>) -> Result<TorchEncoderSource> {
    TorchEncoderSource::from_proto(path, &read_proto(path)?, vocab)
}
