//! Recurrent language models: a token embedding, stacked LSTM, GRU or plain RNN layers
//! and a linear decoder, as PyTorch's `word_language_model` example builds them
//! (`RNNModel`). The history reaches the next step through a fixed-size state
//! z_i = f(z_{i-1}, x_{i-1}) kept in the caller's arena: no cache grows with the text,
//! so [`Rnn::memory_plan`] has no context length and a session runs for ever.
//!
//! One step, for token `t` (`E` embedding width, `H` state width, `G` gates: 4 LSTM,
//! 3 GRU, 1 RNN), each layer `l` reading `x` (`E` wide for layer 0, else `H`):
//!
//! ```text
//! x  = token_embd[t]                          (E)
//! per layer: gw = W x + bw, gr = R h + br     (G·H each; W: (G·H, in), R: (G·H, H))
//!   LSTM (ONNX gate order i, o, f, c): i, o, f = σ(gw + gr), c̃ = tanh(gw + gr)
//!        c = f ⊙ c + i ⊙ c̃,  h = o ⊙ tanh(c)
//!   GRU (order z, r, h; linear_before_reset): z, r = σ(gw + gr),
//!        n = tanh(gw_h + r ⊙ gr_h),  h = (1 − z) ⊙ n + z ⊙ h
//!   RNN: h = tanh(gw + gr) or relu(gw + gr)
//!   x = h
//! logits = output · x + output.bias           (V)
//! ```
//!
//! A value model (`rnn.input = value`) reads one real number per step instead of a
//! token: `x = ((v - mean) / std, 0, ..., 0)` (the input width 1 padded to 32), and its
//! `3K` outputs are a mixture of Gaussians over the next normalised value
//! ([`Head::GaussianMixture`]); the density of the value itself divides by `std`.
//!
//! The matrices are q8, q4 or f32 [`Weight`]s and go through the shared kernels (the
//! activations quantized per block of 32 for q8/q4, as everywhere in arq); the
//! embedding row is dequantized. Widths are multiples of 32: the converter pads a
//! narrower model with zero rows and columns, which leaves its outputs unchanged (a
//! zero-weight state unit stays 0 in every cell).

use crate::arena::{Arena, Layout};
use crate::error::{bad, Error};
use crate::format::keys::{self, LayerNaming};
use crate::format::{ArqFile, TensorView};
use crate::kernels::{self, Kernels};
use crate::linear::{matrix, vector, Weight};
use crate::models::pixelcnn::heads::{Head, MAX_MIXTURES};
use crate::quant::{BlockQ8, QK8};
use crate::tokenizer::Tokenizer;

/// Per-layer tensors are `blk.{l}.{role}`.
const NAMING: LayerNaming = LayerNaming::Blk;
/// The most stacked layers.
pub const MAX_LAYERS: usize = 16;
/// The widest embedding or state.
pub const MAX_WIDTH: usize = 1 << 14;
/// The largest vocabulary.
pub const MAX_VOCAB: usize = 1 << 24;

/// The recurrent cell of every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    Lstm,
    Gru,
    RnnTanh,
    RnnRelu,
}

impl Cell {
    /// Gate blocks of `H` rows in `W` and `R`.
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::RnnTanh | Cell::RnnRelu => 1,
        }
    }

    /// State vectors of `H` values per layer: `h`, and `c` for an LSTM.
    pub fn states(self) -> usize {
        if self == Cell::Lstm {
            2
        } else {
            1
        }
    }

    /// The name the file stores (`rnn.cell`).
    pub fn name(self) -> &'static str {
        match self {
            Cell::Lstm => keys::CELL_LSTM,
            Cell::Gru => keys::CELL_GRU,
            Cell::RnnTanh => keys::CELL_RNN_TANH,
            Cell::RnnRelu => keys::CELL_RNN_RELU,
        }
    }

    pub fn from_name(name: &str) -> Option<Cell> {
        [Cell::Lstm, Cell::Gru, Cell::RnnTanh, Cell::RnnRelu].into_iter().find(|c| c.name() == name)
    }
}

/// What one step reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RnnInput {
    /// A token id, through `token_embd`.
    Tokens,
    /// A real value, normalised; the output is a `k`-component Gaussian mixture.
    Value { mean: f32, std: f32, k: usize },
}

/// A recurrent model's hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RnnConfig {
    pub cell: Cell,
    pub input: RnnInput,
    /// The output rows: the vocabulary, or `3K` for a value model.
    pub vocab: usize,
    /// `E`.
    pub embed: usize,
    /// `H`.
    pub hidden: usize,
    pub layers: usize,
}

impl RnnConfig {
    fn from_file(f: &ArqFile<'_>) -> Result<Self, Error> {
        let u = |k: &'static str| -> Result<usize, Error> {
            usize::try_from(f.meta_u64(k)?).map_err(|_| Error::BadHyperparameter(k))
        };
        let check = |ok: bool, what| if ok { Ok(()) } else { Err(Error::BadHyperparameter(what)) };
        let cell = Cell::from_name(f.meta_str(keys::RNN_CELL)?)
            .ok_or(Error::BadHyperparameter("rnn.cell (lstm, gru, rnn_tanh, rnn_relu)"))?;
        let (vocab, embed, hidden, layers) = (
            u(keys::RNN_VOCAB_SIZE)?,
            u(keys::RNN_EMBEDDING_LENGTH)?,
            u(keys::RNN_HIDDEN_SIZE)?,
            u(keys::RNN_BLOCK_COUNT)?,
        );
        check((1..=MAX_VOCAB).contains(&vocab), "rnn.vocab_size (1..=2^24)")?;
        let width_ok = |w: usize| (QK8..=MAX_WIDTH).contains(&w) && w.is_multiple_of(QK8);
        check(width_ok(embed), "rnn.embedding_length (a multiple of 32, at most 16384)")?;
        check(width_ok(hidden), "rnn.hidden_size (a multiple of 32, at most 16384)")?;
        check((1..=MAX_LAYERS).contains(&layers), "rnn.block_count (1..=16)")?;
        let input = match f.meta(keys::RNN_INPUT).and_then(|v| v.as_str()) {
            None | Some("tokens") => RnnInput::Tokens,
            Some("value") => {
                let (mean, std, k) =
                    (f.meta_f32(keys::RNN_NORM_MEAN)?, f.meta_f32(keys::RNN_NORM_STD)?, u(keys::RNN_MIXTURES)?);
                check(mean.is_finite(), "rnn.norm_mean (finite)")?;
                check(std.is_finite() && std > 0.0, "rnn.norm_std (positive)")?;
                check((1..=MAX_MIXTURES).contains(&k) && vocab == 3 * k, "rnn.mixtures (1..=64, rnn.vocab_size = 3K)")?;
                check(embed == QK8, "rnn.embedding_length (32 for a value model)")?;
                RnnInput::Value { mean, std, k }
            }
            Some(_) => return Err(Error::BadHyperparameter("rnn.input (tokens or value)")),
        };
        Ok(RnnConfig { cell, input, vocab, embed, hidden, layers })
    }

    /// The input width of layer `l`.
    pub fn input(&self, l: usize) -> usize {
        if l == 0 {
            self.embed
        } else {
            self.hidden
        }
    }

    /// The floats of the whole recurrent state (every layer's `h`, and `c`).
    pub fn state_len(&self) -> usize {
        self.layers * self.cell.states() * self.hidden
    }

    /// Weights of the matrices and vectors.
    pub fn n_params(&self) -> usize {
        let gh = self.cell.gates() * self.hidden;
        let layers: usize = (0..self.layers).map(|l| gh * (self.input(l) + self.hidden + 2)).sum();
        let embedding = if self.input == RnnInput::Tokens { self.vocab * self.embed } else { 0 };
        embedding + self.vocab * (self.hidden + 1) + layers
    }
}

/// One layer's matrices and biases.
#[derive(Clone, Copy)]
struct Layer<'a> {
    w: Weight<'a>,
    r: Weight<'a>,
    bw: &'a [f32],
    br: &'a [f32],
}

/// A loaded recurrent model: validated views into the file's bytes.
pub struct Rnn<'a> {
    file: ArqFile<'a>,
    cfg: RnnConfig,
    /// Token models only.
    embed: Option<Weight<'a>>,
    layers: [Option<Layer<'a>>; MAX_LAYERS],
    output: Weight<'a>,
    output_bias: &'a [f32],
    kernels: &'static Kernels,
}

/// Layer `l`'s tensor `role`.
fn layer_tensor<'a>(file: &ArqFile<'a>, l: usize, role: &'static str) -> Result<TensorView<'a>, Error> {
    file.tensors().find(|t| NAMING.is_layer_tensor(t.name, l, role)).ok_or(bad(NAMING, role, Some(l as u32), "missing"))
}

impl<'a> Rnn<'a> {
    /// Validates `bytes` (64-byte aligned) as a recurrent model's `.arq` file.
    pub fn load(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::from_file(ArqFile::parse(bytes)?)
    }

    pub fn from_file(file: ArqFile<'a>) -> Result<Self, Error> {
        if file.meta(keys::ARCHITECTURE).and_then(|v| v.as_str()) != Some(keys::ARCH_RNN) {
            return Err(Error::UnsupportedArchitecture);
        }
        let cfg = RnnConfig::from_file(&file)?;
        let global = |name: &'static str| file.find(name).map(|(_, t)| t).ok_or(bad(NAMING, name, None, "missing"));
        let embed = match cfg.input {
            RnnInput::Tokens => Some(matrix(&global("token_embd")?, NAMING, "token_embd", None, cfg.vocab, cfg.embed)?),
            RnnInput::Value { .. } => None,
        };
        let output = matrix(&global("output")?, NAMING, "output", None, cfg.vocab, cfg.hidden)?;
        let output_bias = vector(&global("output.bias")?, NAMING, "output.bias", None, cfg.vocab)?;
        let gh = cfg.cell.gates() * cfg.hidden;
        let mut layers = [None; MAX_LAYERS];
        for (l, slot) in layers.iter_mut().enumerate().take(cfg.layers) {
            let li = Some(l as u32);
            let m = |role, cols| matrix(&layer_tensor(&file, l, role)?, NAMING, role, li, gh, cols);
            let v = |role| vector(&layer_tensor(&file, l, role)?, NAMING, role, li, gh);
            *slot = Some(Layer {
                w: m("rnn_w", cfg.input(l))?,
                r: m("rnn_r", cfg.hidden)?,
                bw: v("rnn_w.bias")?,
                br: v("rnn_r.bias")?,
            });
        }
        let model = Rnn { file, cfg, embed, layers, output, output_bias, kernels: kernels::best() };
        crate::trace::info!(
            "arq: rnn model, {} x {} {}, embedding {}, vocabulary {}, kernels {}",
            cfg.layers,
            cfg.hidden,
            cfg.cell.name(),
            cfg.embed,
            cfg.vocab,
            model.kernels.name
        );
        Ok(model)
    }

    pub fn config(&self) -> &RnnConfig {
        &self.cfg
    }

    pub fn file(&self) -> &ArqFile<'a> {
        &self.file
    }

    /// A value model's head: the mixture over the next normalised value.
    pub fn head(&self) -> Option<Head> {
        match self.cfg.input {
            RnnInput::Tokens => None,
            RnnInput::Value { k, .. } => Some(Head::GaussianMixture { k, min_log_scale: f32::MIN }),
        }
    }

    /// The model's word or character vocabulary.
    pub fn tokenizer(&self) -> Result<Tokenizer<'a>, Error> {
        let name = keys::TENSOR_TOKENIZER;
        let (_, t) = self.file.find(name).ok_or(bad(NAMING, name, None, "missing"))?;
        Tokenizer::from_blob(t.data).map_err(Error::Tokenizer)
    }

    /// Picks a kernel tier other than the detected best (tests, benchmarks).
    pub fn set_kernels(&mut self, k: &'static Kernels) {
        self.kernels = k;
    }

    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// The exact arena size, in bytes, that [`RnnSession::new`] needs: the state and
    /// one step's scratch, whatever the length of the text.
    pub fn memory_plan(&self) -> Result<usize, Error> {
        self.layout().map(|l| l.bytes()).ok_or(Error::BadConfig("arena size overflows"))
    }

    /// The arena's buffers, in carving order (see [`RnnSession::new`]).
    fn layout(&self) -> Option<Layout> {
        let c = &self.cfg;
        let wide = c.embed.max(c.hidden);
        let gh = c.cell.gates().checked_mul(c.hidden)?;
        Layout::new()
            .then::<f32>(c.state_len())? // state
            .then::<f32>(wide)? // x
            .then::<BlockQ8>(wide / QK8)? // xq
            .then::<f32>(gh)? // gw
            .then::<f32>(gh)? // gr
            .then::<f32>(c.vocab) // logits
    }

    fn layer(&self, l: usize) -> Layer<'a> {
        // Every layer below `cfg.layers` was validated in `from_file`.
        match self.layers[l] {
            Some(layer) => layer,
            None => unreachable!("layer {l} validated at load"),
        }
    }
}

/// `out = w · x + b` for `rows` outputs, `x` quantized into `xq` for q8/q4 weights.
fn affine(k: &Kernels, w: &Weight<'_>, b: &[f32], x: &[f32], xq: &mut [BlockQ8], out: &mut [f32]) {
    let xq = &mut xq[..x.len() / QK8];
    if w.is_quantized() {
        (k.quantize_q8)(x, xq);
    }
    w.matmul_rows(k, 0..out.len(), x.len(), x, xq, out);
    for (o, &bi) in out.iter_mut().zip(b) {
        *o += bi;
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

/// One text being scored or generated: the recurrent state and a step's scratch, all
/// in the caller's arena.
pub struct RnnSession<'a> {
    model: &'a Rnn<'a>,
    /// Per layer: `h` (H), then `c` (H) for an LSTM.
    state: &'a mut [f32],
    /// The current layer's input (`E` or `H` used).
    x: &'a mut [f32],
    xq: &'a mut [BlockQ8],
    /// `W x + bw` and `R h + br` (G·H).
    gw: &'a mut [f32],
    gr: &'a mut [f32],
    logits: &'a mut [f32],
    /// Tokens fed since the last reset.
    pos: usize,
}

impl<'a> RnnSession<'a> {
    /// Carves the state and scratch from `arena` (at least [`Rnn::memory_plan`] bytes)
    /// and starts from the zero state.
    pub fn new(model: &'a Rnn<'a>, arena: &'a mut [u8]) -> Result<Self, Error> {
        let need = model.memory_plan()?;
        let c = &model.cfg;
        let (wide, gh) = (c.embed.max(c.hidden), c.cell.gates() * c.hidden);
        crate::trace::debug!("arq: rnn session, arena {} of {} bytes", need, arena.len());
        let mut a = Arena::new(arena, need)?;
        let mut s = RnnSession {
            model,
            state: a.take(c.state_len())?,
            x: a.take(wide)?,
            xq: a.take(wide / QK8)?,
            gw: a.take(gh)?,
            gr: a.take(gh)?,
            logits: a.take(c.vocab)?,
            pos: 0,
        };
        s.reset();
        Ok(s)
    }

    pub fn model(&self) -> &'a Rnn<'a> {
        self.model
    }

    /// Tokens fed since the start (or the last [`reset`](Self::reset)).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Back to the zero state, as PyTorch's `init_hidden`.
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.pos = 0;
    }

    /// The recurrent state: per layer `h`, then `c` for an LSTM (`H` values each).
    pub fn state(&self) -> &[f32] {
        self.state
    }

    /// Feeds token `id` and returns the logits of the next token (`vocab` values; their
    /// log-softmax is the ONNX model's output).
    pub fn step(&mut self, id: u32) -> Result<&[f32], Error> {
        let c = self.model.cfg;
        let Some(embed) = self.model.embed else {
            return Err(Error::BadInput("this recurrent model reads values, not tokens"));
        };
        if id as usize >= c.vocab {
            return Err(Error::TokenOutOfRange { id, vocab: c.vocab });
        }
        embed.row_into(id as usize, c.embed, &mut self.x[..c.embed]);
        Ok(self.advance())
    }

    /// Feeds the value `v` (in the data's units) and returns the parameters of the
    /// mixture over the next normalised value ([`Rnn::head`]).
    pub fn step_value(&mut self, v: f32) -> Result<&[f32], Error> {
        let RnnInput::Value { mean, std, .. } = self.model.cfg.input else {
            return Err(Error::BadInput("this recurrent model reads tokens, not values"));
        };
        if !v.is_finite() {
            return Err(Error::BadInput("a value is not finite"));
        }
        let x = &mut self.x[..self.model.cfg.embed];
        x.fill(0.0);
        x[0] = (v - mean) / std;
        Ok(self.advance())
    }

    /// The parameters after the zero state, before any value (a value model's first
    /// step reads 0, the normalised mean): [`step_value`](Self::step_value) of `mean`.
    pub fn start_value(&mut self) -> Result<&[f32], Error> {
        let RnnInput::Value { mean, .. } = self.model.cfg.input else {
            return Err(Error::BadInput("this recurrent model reads tokens, not values"));
        };
        self.step_value(mean)
    }

    /// Overwrites the recurrent state with `state` (from [`state`](Self::state) of a
    /// session of the same model), to branch several continuations from one history.
    pub fn set_state(&mut self, state: &[f32]) -> Result<(), Error> {
        if state.len() != self.state.len() {
            return Err(Error::BadInput("a state of another size"));
        }
        self.state.copy_from_slice(state);
        Ok(())
    }

    /// Runs every layer on `x` (filled by the caller) and the output layer.
    fn advance(&mut self) -> &[f32] {
        let (m, c) = (self.model, self.model.cfg);
        let k = m.kernels;
        let (hd, per_layer) = (c.hidden, c.cell.states() * c.hidden);
        for l in 0..c.layers {
            let layer = m.layer(l);
            let st = &mut self.state[l * per_layer..(l + 1) * per_layer];
            affine(k, &layer.w, layer.bw, &self.x[..c.input(l)], self.xq, self.gw);
            affine(k, &layer.r, layer.br, &st[..hd], self.xq, self.gr);
            let (gw, gr) = (&*self.gw, &*self.gr);
            let (h, rest) = st.split_at_mut(hd);
            match c.cell {
                Cell::Lstm => {
                    for j in 0..hd {
                        let g = |q: usize| gw[q * hd + j] + gr[q * hd + j];
                        let (i, o, f, cand) = (sigmoid(g(0)), sigmoid(g(1)), sigmoid(g(2)), libm::tanhf(g(3)));
                        rest[j] = f * rest[j] + i * cand;
                        h[j] = o * libm::tanhf(rest[j]);
                    }
                }
                Cell::Gru => {
                    for j in 0..hd {
                        let z = sigmoid(gw[j] + gr[j]);
                        let r = sigmoid(gw[hd + j] + gr[hd + j]);
                        let n = libm::tanhf(gw[2 * hd + j] + r * gr[2 * hd + j]);
                        h[j] = (1.0 - z) * n + z * h[j];
                    }
                }
                Cell::RnnTanh => h.iter_mut().enumerate().for_each(|(j, v)| *v = libm::tanhf(gw[j] + gr[j])),
                Cell::RnnRelu => h.iter_mut().enumerate().for_each(|(j, v)| *v = (gw[j] + gr[j]).max(0.0)),
            }
            self.x[..hd].copy_from_slice(h);
        }
        affine(k, &m.output, m.output_bias, &self.x[..hd], self.xq, self.logits);
        self.pos += 1;
        self.logits
    }
}
