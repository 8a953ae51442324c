//! ONNX → `.arq` for recurrent language models (`runtime/FORMAT.md`, "Recurrent
//! models"): PyTorch's `word_language_model` `RNNModel` as its `main.py --onnx-export`
//! writes it (the legacy exporter, opset 17).
//!
//! Accepted (`walker.rs` walks it): inputs the token ids `(seq, batch)` and, optionally,
//! the initial states `(layers, batch, hidden)` (`h`, and `c` for an LSTM), each layer
//! reading its `Slice [l, l+1)` on axis 0; `Gather(embedding (V, E), tokens)`; one
//! `LSTM`, `GRU` or `RNN` node per layer (forward only; default activations, or `Relu`
//! for an RNN; no peepholes, clip, `input_forget`, `sequence_lens`; a GRU with
//! `linear_before_reset = 1`), its `Y` squeezed on axis 1 into the next layer;
//! `MatMul` by a `(H, V)` constant and `Add` of a bias; optionally `Reshape` (the
//! vocabulary kept last) and `LogSoftmax` over the vocabulary; `Dropout`/`Identity`
//! anywhere. The final states (`Y_h`, `Y_c`, their `Concat`) may be outputs; arq keeps
//! them in the session. The dynamo exporter's variant works too: its `Slice`/`Concat`/
//! `Unsqueeze` of constants (PyTorch's gate blocks reordered into ONNX's) are folded, and
//! `Transpose(perm 0,2,1,3)` + `Reshape` to `(seq, batch, H)` stands for the Squeeze
//! (export with `external_data=False`: weights in an external file are refused).
//!
//! The graph holds no vocabulary: it comes from a side file (`arq convert --vocab
//! FILE.json`), `{"level": "word" | "char", "tokens": [...]}` with the tokens in id
//! order (the example's `corpus.dictionary.idx2word`); `<eos>` is a word vocabulary's
//! end-of-line token, `<unk>` the unknown token of either.
//!
//! Widths that are not multiples of 32 (the example's default 200) are padded with
//! zero rows and columns: a padded state unit has zero weights and biases, so it stays
//! 0 in every cell and the outputs are unchanged.

mod walker;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use arq::format::keys;
use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use arq::models::rnn::{Cell, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use tract_onnx::pb;

use crate::quantize::{write_matrix, write_vector, Quant, TensorError};

/// Whether the graph has a recurrent node: the pattern [`RnnSource`] reads.
pub fn is_recurrent(proto: &pb::ModelProto) -> bool {
    proto.graph.as_ref().is_some_and(|g| g.node.iter().any(|n| matches!(n.op_type.as_str(), "LSTM" | "GRU" | "RNN")))
}

/// The largest vocabulary file read.
const MAX_VOCAB_BYTES: u64 = 256 << 20;

/// A vocabulary side file (see the module doc): whether it is characters, and the tokens.
pub fn read_vocab(path: &Path) -> Result<(bool, Vec<String>)> {
    let bytes = crate::input::read_capped(path, MAX_VOCAB_BYTES, "the vocabulary")?;
    let shape = "{\"level\": \"word\" | \"char\", \"tokens\": [strings]}";
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("{}: not a vocabulary ({shape}): {e}", path.display()))?;
    let chars = match v.get("level").and_then(|l| l.as_str()) {
        Some("word") => false,
        Some("char") => true,
        _ => bail!("{}: not a vocabulary ({shape}): level is not \"word\" or \"char\"", path.display()),
    };
    let tokens = v
        .get("tokens")
        .and_then(|t| t.as_array())
        .and_then(|a| a.iter().map(|t| t.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| anyhow!("{}: not a vocabulary ({shape}): tokens is not a list of strings", path.display()))?;
    Ok((chars, tokens))
}

/// One layer in `.arq` layout (padded widths).
#[derive(Clone, Debug)]
struct Layer {
    w: Vec<f32>,
    r: Vec<f32>,
    bw: Vec<f32>,
    br: Vec<f32>,
}

/// A recurrent model read from ONNX, its widths padded to multiples of 32.
#[derive(Clone, Debug)]
pub struct RnnSource {
    pub name: String,
    pub source: PathBuf,
    pub cell: Cell,
    /// A series model: the normalisation and the mixture components, from the ONNX
    /// metadata `arq.norm_mean`, `arq.norm_std` and `arq.head = gaussian_mixture:K`.
    pub series: Option<Series>,
    /// Character (`true`) or word vocabulary.
    pub chars: bool,
    pub tokens: Vec<String>,
    /// The ONNX widths `E` and `H`, and the padded ones the file stores.
    pub embed: usize,
    pub hidden: usize,
    pub embed_padded: usize,
    pub hidden_padded: usize,
    token_embd: Option<Vec<f32>>,
    layers: Vec<Layer>,
    output: Vec<f32>,
    output_bias: Vec<f32>,
}

/// What a value model's file adds.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    pub mean: f32,
    pub std: f32,
    pub k: usize,
}

impl Series {
    /// From the ONNX metadata (see [`RnnSource::series`]).
    fn from_proto(proto: &pb::ModelProto, outputs: usize) -> std::result::Result<Series, String> {
        let meta = |key: &str| proto.metadata_props.iter().find(|e| e.key == key).map(|e| e.value.trim().to_string());
        let num = |key: &str| -> std::result::Result<f32, String> {
            let v = meta(key).ok_or_else(|| format!("a series model needs the model metadata {key}"))?;
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("model metadata {key} = '{v}' is not a number"))
        };
        let (mean, std) = (num("arq.norm_mean")?, num("arq.norm_std")?);
        if std <= 0.0 {
            return Err(format!("model metadata arq.norm_std = {std} is not positive"));
        }
        let head = meta("arq.head").ok_or("a series model needs the model metadata arq.head = gaussian_mixture:K")?;
        let k = head
            .strip_prefix("gaussian_mixture:")
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|&k| (1..=64).contains(&k) && 3 * k == outputs)
            .ok_or_else(|| {
                format!("model metadata arq.head = '{head}' is not gaussian_mixture:K with 3K = {outputs} outputs")
            })?;
        Ok(Series { mean, std, k })
    }
}

/// `m` as `blocks` blocks of `rows` rows of `cols`, each block padded with zero rows
/// to `rows_p` and every row with zeros to `cols_p`.
fn pad(m: &[f32], blocks: usize, rows: usize, cols: usize, rows_p: usize, cols_p: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; blocks * rows_p * cols_p];
    for b in 0..blocks {
        for r in 0..rows {
            let src = &m[(b * rows + r) * cols..][..cols];
            out[(b * rows_p + r) * cols_p..][..cols].copy_from_slice(src);
        }
    }
    out
}

impl RnnSource {
    /// Reads the model of `proto` (read from `path`) with the vocabulary file `vocab`.
    pub fn from_proto(path: &Path, proto: &pb::ModelProto, vocab: Option<&Path>) -> Result<Self> {
        let at = |e: String| anyhow!("{}: {e}", path.display());
        let graph = proto.graph.as_ref().ok_or_else(|| at("no graph".into()))?;
        let p = walker::parse(graph).map_err(at)?;
        if p.token_embd.is_none() {
            if vocab.is_some() {
                bail!("{}: --vocab applies to text models; this recurrent model reads values", path.display());
            }
            let series = Series::from_proto(proto, p.vocab).map_err(at)?;
            return Self::new(path, p, Some(series), false, Vec::new());
        }
        let Some(vocab) = vocab else {
            bail!(
                "{}: a recurrent model's ONNX file holds no vocabulary; give it with --vocab FILE.json \
                 ({{\"level\": \"word\" | \"char\", \"tokens\": [...]}}, tokens in id order)",
                path.display()
            );
        };
        let (chars, tokens) = read_vocab(vocab)?;
        if tokens.len() != p.vocab {
            bail!("{}: {} tokens, but the model's embedding has {} rows", vocab.display(), tokens.len(), p.vocab);
        }
        Self::new(path, p, None, chars, tokens)
    }

    fn new(path: &Path, p: walker::Parsed, series: Option<Series>, chars: bool, tokens: Vec<String>) -> Result<Self> {
        let at = |e: String| anyhow!("{}: {e}", path.display());
        if p.vocab > MAX_VOCAB || p.layers.len() > MAX_LAYERS || p.embed > MAX_WIDTH || p.hidden > MAX_WIDTH {
            return Err(at(format!(
                "{} layers of {} (embedding {}, vocabulary {}) exceed arq's caps ({MAX_LAYERS} layers, widths {MAX_WIDTH}, \
                 vocabulary {MAX_VOCAB})",
                p.layers.len(),
                p.hidden,
                p.embed,
                p.vocab
            )));
        }
        let (e, h, g) = (p.embed, p.hidden, p.cell.gates());
        let (ep, hp) = (e.next_multiple_of(32), h.next_multiple_of(32));
        let layers = p
            .layers
            .iter()
            .map(|l| {
                let inp_p = if l.input == e { ep } else { hp };
                Layer {
                    w: pad(&l.w, g, h, l.input, hp, inp_p),
                    r: pad(&l.r, g, h, h, hp, hp),
                    bw: pad(&l.bw, g, h, 1, hp, 1),
                    br: pad(&l.br, g, h, 1, hp, 1),
                }
            })
            .collect();
        Ok(RnnSource {
            name: path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            source: path.to_path_buf(),
            cell: p.cell,
            series,
            chars,
            tokens,
            embed: e,
            hidden: h,
            embed_padded: ep,
            hidden_padded: hp,
            token_embd: p.token_embd.as_ref().map(|t| pad(t, 1, p.vocab, e, p.vocab, ep)),
            layers,
            output: pad(&p.output, 1, p.vocab, h, p.vocab, hp),
            output_bias: p.output_bias,
        })
    }

    /// One line: cell, sizes, vocabulary.
    pub fn describe(&self) -> String {
        if let Some(s) = self.series {
            return format!(
                "{} series model, {} layer{} of {}, a mixture of {} Gaussians per step, normalised by mean {} and std {}",
                self.cell.name().to_uppercase(),
                self.layers.len(),
                if self.layers.len() == 1 { "" } else { "s" },
                self.hidden,
                s.k,
                s.mean,
                s.std
            );
        }
        let padded = if (self.embed, self.hidden) != (self.embed_padded, self.hidden_padded) {
            format!(" (stored padded to {} and {})", self.embed_padded, self.hidden_padded)
        } else {
            String::new()
        };
        format!(
            "{} recurrent model, {} layer{} of {}, embedding {}{padded}, {} vocabulary of {}",
            self.cell.name().to_uppercase(),
            self.layers.len(),
            if self.layers.len() == 1 { "" } else { "s" },
            self.hidden,
            self.embed,
            if self.chars { "character" } else { "word" },
            self.tokens.len()
        )
    }

    /// Serializes the model with matrices in `quant` (biases f32); returns the file
    /// bytes and each quantized matrix's relative error.
    pub fn to_arq(&self, quant: Quant) -> Result<(Vec<u8>, Vec<TensorError>)> {
        let mut w = ArqWriter::new();
        let file_name = self.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let v = self.output_bias.len();
        for (k, val) in [
            (keys::ARCHITECTURE, Meta::Str(keys::ARCH_RNN.into())),
            (keys::QUANT, Meta::Str(quant.name().into())),
            (keys::GENERAL_NAME, Meta::Str(self.name.clone())),
            (keys::GENERAL_SOURCE, Meta::Str(file_name)),
            (keys::RNN_CELL, Meta::Str(self.cell.name().into())),
            (keys::RNN_VOCAB_SIZE, Meta::U64(v as u64)),
            (keys::RNN_EMBEDDING_LENGTH, Meta::U64(self.embed_padded as u64)),
            (keys::RNN_HIDDEN_SIZE, Meta::U64(self.hidden_padded as u64)),
            (keys::RNN_BLOCK_COUNT, Meta::U64(self.layers.len() as u64)),
        ] {
            w.meta(k, val);
        }
        let extra = match self.series {
            Some(s) => vec![
                (keys::RNN_INPUT, Meta::Str("value".into())),
                (keys::RNN_MIXTURES, Meta::U64(s.k as u64)),
                (keys::RNN_NORM_MEAN, Meta::F32(s.mean)),
                (keys::RNN_NORM_STD, Meta::F32(s.std)),
            ],
            None => vec![
                (keys::TOKENIZER_MODEL, Meta::Str(if self.chars { "chars" } else { "words" }.into())),
                (keys::TOKENIZER_ADD_BOS, Meta::Bool(false)),
            ],
        };
        for (k, val) in extra {
            w.meta(k, val);
        }
        let mut errors = Vec::new();
        let mut matrix = |w: &mut ArqWriter, name: &str, rows: usize, cols: usize, values: &[f32]| {
            write_matrix(w, (quant, &mut errors), name, (rows, cols), values)
        };
        let vector = write_vector;
        let (ep, hp, gh) = (self.embed_padded, self.hidden_padded, self.cell.gates() * self.hidden_padded);
        if let Some(t) = &self.token_embd {
            matrix(&mut w, "token_embd", v, ep, t)?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let cols = if l == 0 { ep } else { hp };
            matrix(&mut w, &format!("blk.{l}.rnn_w"), gh, cols, &layer.w)?;
            matrix(&mut w, &format!("blk.{l}.rnn_r"), gh, hp, &layer.r)?;
            vector(&mut w, &format!("blk.{l}.rnn_w.bias"), &layer.bw)?;
            vector(&mut w, &format!("blk.{l}.rnn_r.bias"), &layer.br)?;
        }
        matrix(&mut w, "output", v, hp, &self.output)?;
        vector(&mut w, "output.bias", &self.output_bias)?;
        if self.series.is_some() {
            let mut out = Vec::new();
            w.write(&mut out)?;
            return Ok((out, errors));
        }
        let blob = arq::tokenizer::build_vocab_blob(self.chars, &self.tokens)
            .map_err(|e| anyhow!("{}: vocabulary: {e}", self.source.display()))?;
        w.tensor(keys::TENSOR_TOKENIZER, Dtype::U8, &[blob.len() as u64], blob)?;
        let mut out = Vec::new();
        w.write(&mut out)?;
        Ok((out, errors))
    }
}
