//! The decoder-only transformer engine shared by every transformer family: one
//! [`Model`], one [`Session`], one forward pass.
//!
//! A family is data: a thin file ([`llama`], [`gpt2`], [`qwen2`], [`qwen3`], [`gemma3`])
//! names its tensors, and its row of [`family::FAMILIES`] says how it differs (the norm,
//! biases, the MLP, positions, extra norms, a sliding window, ...). The engine reads the row where the families differ
//! and loads every family's tensors into the same `Layer`; everything else (the
//! batched matrix products, attention over the KV cache, threads, offload) is this file.
//!
//! Every buffer lives in the caller's arena, carved once in [`Session::new`]; a step never
//! allocates. A prompt runs as one batched pass (matrix-matrix products over up to
//! `batch` tokens), and because every kernel fixes its summation order, a batched pass
//! gives bit-identical logits to running the same tokens one by one.

pub mod family;
pub mod gemma3;
pub mod gpt2;
pub mod llama;
pub mod qwen2;
pub mod qwen3;
pub mod torch_encoder;

use crate::arena::{Arena, Layout};
use crate::error::{bad, Error};
use crate::format::keys::{self, LayerNaming};
use crate::format::{ArqFile, TensorView};
use crate::kernels::{self, Kernels, Strided};
use crate::linear::{add_bias, linear, matrix, vector, Linear, Offload, Weight};
use crate::math;
use crate::parallel::{self, Parallel, Serial};
use crate::quant::{BlockQ8, QK8};
use crate::tokenizer::Tokenizer;

use family::{Biases, FamilySpec, Mlp, NormKind, Positions, RopeStyle};

/// Caps on hyperparameters: far above any model this runtime targets, low enough that
/// the arena arithmetic cannot overflow.
pub(crate) const MAX_DIM: usize = 1 << 16;
pub(crate) const MAX_LAYERS: usize = 1 << 10;
pub(crate) const MAX_VOCAB: usize = 1 << 22;

/// How every transformer family names its layers' tensors (`blk.{l}.{role}`).
const NAMING: LayerNaming = LayerNaming::Blk;

/// Which transformer a file holds (`arq.architecture`); its row of
/// [`family::FAMILIES`] is [`Family::spec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SmolLM2, LLaMA 2/3, TinyLlama, ...: RMSNorm, rotary positions, grouped-query
    /// attention, SwiGLU, no biases.
    Llama,
    /// GPT-2: learned positions, LayerNorm with bias, GELU MLP, biases everywhere.
    Gpt2,
    /// Qwen 2 / 2.5: LLaMA with q, k, v biases.
    Qwen2,
    /// Qwen 3: LLaMA with q and k norms.
    Qwen3,
    /// Gemma 3: extra norms, GeGLU, scaled embeddings, local attention in 5 of 6 layers.
    Gemma3,
    /// PyTorch's `nn.TransformerEncoder` (`word_language_model`): post-LN, ReLU MLP,
    /// biases everywhere and on the head, a stored sinusoidal position table.
    TorchEncoder,
}

impl Family {
    /// The `arq.architecture` value.
    pub fn name(self) -> &'static str {
        self.spec().name
    }
}

/// Hyperparameters, read from the file's `{family}.*` metadata
/// ([`crate::format::keys::HParamKeys`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformerConfig {
    pub family: Family,
    pub vocab: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// One head's dimension: `dim / n_heads` unless the file says (Gemma 3, Qwen 3).
    pub head_dim: usize,
    pub ffn_dim: usize,
    /// RoPE base θ (0 for GPT-2, whose positions are learned).
    pub rope_base: f32,
    /// RoPE base θ of the sliding-window layers (`rope_base` without a window).
    pub rope_base_local: f32,
    /// ε of the RMSNorm or the LayerNorm.
    pub norm_eps: f32,
    /// The context length the model was trained with (GPT-2: its position table).
    pub ctx_train: usize,
    /// Tokens a sliding-window layer sees, its own included; 0: no layer slides.
    pub sliding_window: usize,
    /// Every `n`-th layer attends globally, the others slide; 0: all slide.
    pub sliding_window_pattern: usize,
    /// The factor of q·k (`1/sqrt(head_dim)` unless the file says).
    pub attn_scale: f32,
    /// The leading entries of a row the norms normalize (`dim` unless the file pads the
    /// model's width with zeros).
    pub norm_dim: usize,
}

impl TransformerConfig {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The width of all query heads together (`dim`, unless the head dimension is the
    /// file's own).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Whether layer `l` attends to a sliding window (llama.cpp's and transformers'
    /// pattern: all but every `n`-th layer).
    pub fn is_sliding(&self, l: usize) -> bool {
        let n = self.sliding_window_pattern;
        self.sliding_window > 0 && (n == 0 || l % n < n - 1)
    }

    /// The checks every family shares; `head_dim` 0 means `dim / n_heads`, `attn_scale`
    /// 0 means `1/sqrt(head_dim)`.
    pub(crate) fn validated(self) -> Result<Self, Error> {
        let check = |ok: bool, what| if ok { Ok(()) } else { Err(Error::BadHyperparameter(what)) };
        let c = self;
        check(c.vocab > 0 && c.vocab <= MAX_VOCAB, "vocab_size")?;
        check(c.dim > 0 && c.dim <= MAX_DIM && c.dim.is_multiple_of(QK8), "embedding_length (a multiple of 32)")?;
        check(c.n_layers > 0 && c.n_layers <= MAX_LAYERS, "block_count")?;
        check(c.ffn_dim > 0 && c.ffn_dim <= 4 * MAX_DIM && c.ffn_dim.is_multiple_of(QK8), "feed_forward_length")?;
        check(c.n_heads > 0 && c.n_heads <= MAX_DIM, "head_count")?;
        check(c.n_kv_heads > 0 && c.n_heads.is_multiple_of(c.n_kv_heads), "head_count_kv")?;
        check(c.ctx_train > 0 && c.ctx_train <= 1 << 24, "context_length")?;
        let head_dim = match c.head_dim {
            0 => {
                check(c.dim.is_multiple_of(c.n_heads), "head_count (dividing embedding_length)")?;
                c.dim / c.n_heads
            }
            hd => hd,
        };
        check(head_dim <= MAX_DIM && c.n_heads * head_dim <= 4 * MAX_DIM, "attention.key_length")?;
        let (q_dim, kv_dim) = (c.n_heads * head_dim, c.n_kv_heads * head_dim);
        check(q_dim.is_multiple_of(QK8) && kv_dim.is_multiple_of(QK8), "head dimension (heads x it a multiple of 32)")?;
        check(c.norm_eps.is_finite() && c.norm_eps >= 0.0, "layer norm epsilon")?;
        check(c.sliding_window <= 1 << 24 && c.sliding_window_pattern <= MAX_LAYERS, "sliding_window")?;
        let attn_scale = if c.attn_scale == 0.0 { 1.0 / libm::sqrtf(head_dim as f32) } else { c.attn_scale };
        check(attn_scale.is_finite() && attn_scale > 0.0, "attention.scale")?;
        let norm_dim = if c.norm_dim == 0 { c.dim } else { c.norm_dim };
        check(norm_dim <= c.dim, "norm_length (at most embedding_length)")?;
        Ok(TransformerConfig { head_dim, attn_scale, norm_dim, ..c })
    }

    /// The checks of the family's positions, after [`Self::validated`].
    fn positions_checked(self, positions: Positions) -> Result<Self, Error> {
        if positions == Positions::Rotary {
            // Rotary embeddings turn pairs.
            if !self.head_dim.is_multiple_of(2) {
                return Err(Error::BadHyperparameter("head dimension (even, for rotary embeddings)"));
            }
            let ok = |b: f32| b.is_finite() && b > 0.0;
            if !ok(self.rope_base) || !ok(self.rope_base_local) {
                return Err(Error::BadHyperparameter("rope.freq_base"));
            }
        }
        Ok(self)
    }
}

/// Metadata `key` as a `usize` (a family file's hyperparameters).
pub(crate) fn meta_usize(f: &ArqFile<'_>, key: &'static str) -> Result<usize, Error> {
    let v = f.meta_u64(key)?;
    usize::try_from(v).map_err(|_| Error::BadHyperparameter(key))
}

/// [`meta_usize`], or `default` when the file has no `key`.
fn meta_usize_or(f: &ArqFile<'_>, key: &'static str, default: usize) -> Result<usize, Error> {
    if f.meta(key).is_some() {
        meta_usize(f, key)
    } else {
        Ok(default)
    }
}

/// Metadata `key` as an `f32`, or `default` when the file has no `key`.
fn meta_f32_or(f: &ArqFile<'_>, key: &'static str, default: f32) -> Result<f32, Error> {
    if f.meta(key).is_some() {
        Ok(f.meta_f32(key)?)
    } else {
        Ok(default)
    }
}

/// The hyperparameters of a `spec` file, from its keys (see
/// [`crate::format::keys::HParamKeys`] for which are optional).
fn read_config(f: &ArqFile<'_>, spec: &FamilySpec) -> Result<TransformerConfig, Error> {
    let k = spec.keys;
    let u = |key: &'static str| meta_usize(f, key);
    let heads = u(k.head_count)?;
    let rotary = spec.positions == Positions::Rotary;
    let rope_base = if rotary { f.meta_f32(k.rope_freq_base)? } else { 0.0 };
    let (window, pattern, local_base) = if spec.sliding_window {
        let local = meta_f32_or(f, k.rope_local_freq_base, gemma3::DEFAULT_LOCAL_ROPE_BASE)?;
        let pattern = meta_usize_or(f, k.sliding_window_pattern, gemma3::DEFAULT_SLIDING_WINDOW_PATTERN)?;
        (meta_usize_or(f, k.sliding_window, 0)?, pattern, local)
    } else {
        (0, 0, rope_base)
    };
    TransformerConfig {
        family: spec.family,
        vocab: u(k.vocab_size)?,
        dim: u(k.embedding_length)?,
        n_layers: u(k.block_count)?,
        n_heads: heads,
        n_kv_heads: meta_usize_or(f, k.head_count_kv, heads)?,
        head_dim: meta_usize_or(f, k.key_length, 0)?,
        ffn_dim: u(k.feed_forward_length)?,
        rope_base,
        rope_base_local: local_base,
        norm_eps: f.meta_f32(match spec.norm {
            NormKind::Rms => k.rms_epsilon,
            NormKind::Layer => k.layer_norm_epsilon,
        })?,
        ctx_train: u(k.context_length)?,
        sliding_window: window,
        sliding_window_pattern: pattern,
        attn_scale: meta_f32_or(f, k.attention_scale, 0.0)?,
        norm_dim: meta_usize_or(f, k.norm_length, 0)?,
    }
    .validated()
}

/// A norm's weight, and its bias for a LayerNorm.
#[derive(Clone, Copy)]
pub(crate) struct Norm<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
}

/// One block's tensors, as [`read_layer`] loads them for every family.
pub(crate) struct Layer<'a> {
    pub attn_norm: Norm<'a>,
    pub q: Linear<'a>,
    pub k: Linear<'a>,
    pub v: Linear<'a>,
    /// RMSNorm weights of each q and each k head (`head_dim` each), where the row says.
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    pub o: Linear<'a>,
    /// RMSNorm of the attention output before the residual add, where the row says.
    pub post_attn_norm: Option<Norm<'a>>,
    pub ffn_norm: Norm<'a>,
    /// SwiGLU's or GeGLU's gate; a GELU MLP has none.
    pub gate: Option<Linear<'a>>,
    pub up: Linear<'a>,
    pub down: Linear<'a>,
    /// RMSNorm of the MLP output before the residual add, where the row says.
    pub post_ffn_norm: Option<Norm<'a>>,
}

/// The tensors outside the blocks.
pub(crate) struct Globals<'a> {
    pub embed: Weight<'a>,
    /// Learned positions, `[ctx_train, dim]`.
    pub pos_embed: Option<Weight<'a>>,
    pub output_norm: Norm<'a>,
    pub output: Weight<'a>,
    /// The head's bias (`vocab` values), where the row has one.
    pub output_bias: Option<&'a [f32]>,
    /// Directory index of layer 0's first tensor; layer `l`'s follow at `l * roles`.
    pub layer_base: usize,
}

/// Typed, shape-checked access to a file's tensors.
struct Tensors<'f, 'a> {
    file: &'f ArqFile<'a>,
}

impl<'a> Tensors<'_, 'a> {
    /// A global tensor by name.
    fn global(&self, name: &'static str) -> Result<TensorView<'a>, Error> {
        self.file.find(name).map(|(_, t)| t).ok_or(bad(NAMING, name, None, "missing"))
    }

    /// Tensor `j` of layer `l`, whose tensors are `roles`, in that order, from `base`.
    fn layer(&self, base: usize, roles: &[&'static str], l: usize, j: usize) -> Result<TensorView<'a>, Error> {
        let role = roles[j];
        match self.file.tensor(base + l * roles.len() + j) {
            Some(t) if NAMING.is_layer_tensor(t.name, l, role) => Ok(t),
            _ => Err(bad(NAMING, role, Some(l as u32), "missing or out of the canonical order")),
        }
    }
}

/// One layer's tensors, taken in the family's file order (its `layer_roles`).
struct LayerTensors<'f, 'a> {
    t: Tensors<'f, 'a>,
    roles: &'static [&'static str],
    base: usize,
    l: usize,
    next: usize,
}

impl<'a> LayerTensors<'_, 'a> {
    fn take(&mut self) -> Result<(TensorView<'a>, &'static str), Error> {
        let j = self.next;
        self.next += 1;
        Ok((self.t.layer(self.base, self.roles, self.l, j)?, self.roles[j]))
    }

    fn vector(&mut self, n: usize) -> Result<&'a [f32], Error> {
        let (t, role) = self.take()?;
        vector(&t, NAMING, role, Some(self.l as u32), n)
    }

    /// A norm's weight, then its bias for a LayerNorm.
    fn norm(&mut self, kind: NormKind, n: usize) -> Result<Norm<'a>, Error> {
        let w = self.vector(n)?;
        let b = match kind {
            NormKind::Rms => None,
            NormKind::Layer => Some(self.vector(n)?),
        };
        Ok(Norm { w, b })
    }

    /// A matrix, then its bias when the family has biases.
    fn linear(&mut self, biases: bool, rows: usize, cols: usize) -> Result<Linear<'a>, Error> {
        let (t, role) = self.take()?;
        let w = matrix(&t, NAMING, role, Some(self.l as u32), rows, cols)?;
        let b = if biases { Some(self.vector(rows)?) } else { None };
        Ok(Linear { w, b })
    }
}

/// The hyperparameters and the tensors outside the blocks, as `spec` says.
fn read_globals<'a>(file: &ArqFile<'a>, spec: &FamilySpec) -> Result<(TransformerConfig, Globals<'a>), Error> {
    let cfg = read_config(file, spec)?.positions_checked(spec.positions)?;
    let t = Tensors { file };
    let (d, v) = (cfg.dim, cfg.vocab);
    let embed = matrix(&t.global("token_embd")?, NAMING, "token_embd", None, v, d)?;
    let pos_embed = match spec.positions {
        Positions::Rotary => None,
        Positions::Learned => {
            Some(matrix(&t.global("position_embd")?, NAMING, "position_embd", None, cfg.ctx_train, d)?)
        }
    };
    let w = vector(&t.global("output_norm")?, NAMING, "output_norm", None, d)?;
    let b = match spec.norm {
        NormKind::Rms => None,
        NormKind::Layer => Some(vector(&t.global("output_norm.bias")?, NAMING, "output_norm.bias", None, d)?),
    };
    let output = match file.find("output") {
        Some((_, o)) => matrix(&o, NAMING, "output", None, v, d)?,
        None => embed,
    };
    let output_bias = match spec.head_bias {
        true => Some(vector(&t.global("output.bias")?, NAMING, "output.bias", None, v)?),
        false => None,
    };
    let first = spec.layer_roles[0];
    let layer_base = (0..file.n_tensors())
        .find(|&i| file.tensor(i).is_some_and(|t| NAMING.is_layer_tensor(t.name, 0, first)))
        .ok_or(bad(NAMING, first, Some(0), "missing"))?;
    Ok((cfg, Globals { embed, pos_embed, output_norm: Norm { w, b }, output, output_bias, layer_base }))
}

/// Layer `l`'s tensors, checked against the hyperparameters, in the order of
/// `spec.layer_roles`.
fn read_layer<'a>(
    file: &ArqFile<'a>,
    spec: &FamilySpec,
    c: &TransformerConfig,
    base: usize,
    l: usize,
) -> Result<Layer<'a>, Error> {
    let mut r = LayerTensors { t: Tensors { file }, roles: spec.layer_roles, base, l, next: 0 };
    let (d, qd, kv, ff, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
    let (qkv_bias, bias) = (spec.biases != Biases::None, spec.biases == Biases::All);
    let rms = NormKind::Rms;
    // Struct fields are evaluated in order: this is the file order of `layer_roles`.
    Ok(Layer {
        attn_norm: r.norm(spec.norm, d)?,
        q: r.linear(qkv_bias, qd, d)?,
        k: r.linear(qkv_bias, kv, d)?,
        v: r.linear(qkv_bias, kv, d)?,
        q_norm: if spec.qk_norm { Some(r.vector(hd)?) } else { None },
        k_norm: if spec.qk_norm { Some(r.vector(hd)?) } else { None },
        o: r.linear(bias, d, qd)?,
        post_attn_norm: if spec.post_norms { Some(r.norm(rms, d)?) } else { None },
        ffn_norm: r.norm(spec.norm, d)?,
        gate: if spec.mlp.gated() { Some(r.linear(bias, ff, d)?) } else { None },
        up: r.linear(bias, ff, d)?,
        down: r.linear(bias, d, ff)?,
        post_ffn_norm: if spec.post_norms { Some(r.norm(rms, d)?) } else { None },
    })
}

/// A loaded model: validated views into the file's bytes.
pub struct Model<'a> {
    file: ArqFile<'a>,
    cfg: TransformerConfig,
    g: Globals<'a>,
    kernels: &'static Kernels,
}

/// How the KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// f32, exact.
    #[default]
    F32,
    /// q8 blocks (32 values and one f16 scale, 34 bytes: 3.8x smaller), quantized as the
    /// activations are; what a microcontroller's RAM affords.
    Q8,
    /// f16, rounded to nearest (half the bytes, as llama.cpp's default cache): decoding
    /// at long contexts reads half as much. Prompts convert a layer's rows back to f32
    /// once per pass (a scratch of the context's rows, see [`Session::new`]).
    F16,
}

/// Per-session settings that size the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Context length in tokens (KV cache capacity).
    pub ctx: usize,
    /// Tokens per batched pass in prefill and scoring.
    pub batch: usize,
    /// The most threads a [`Parallel`] given to [`Session::set_parallel`] may run
    /// (each needs its own attention scratch).
    pub threads: usize,
    /// The KV cache's storage.
    pub kv: KvDtype,
    /// Independent sequences (a server's slots), each with its own KV cache of `ctx`
    /// positions, sharing the scratch: [`Session::select`] picks the one the
    /// single-sequence calls run on, and [`Session::step_seqs`] advances several in one
    /// pass over the weights.
    pub seqs: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { ctx: 2048, batch: 32, threads: 1, kv: KvDtype::F32, seqs: 1 }
    }
}

impl<'a> Model<'a> {
    /// Validates `bytes` (64-byte aligned) as a transformer `.arq` file (any family of
    /// [`family::FAMILIES`]).
    pub fn load(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::from_file(ArqFile::parse(bytes)?)
    }

    pub fn from_file(file: ArqFile<'a>) -> Result<Self, Error> {
        let arch = file.meta(keys::ARCHITECTURE).and_then(|v| v.as_str());
        let spec = arch.and_then(FamilySpec::by_name).ok_or(Error::UnsupportedArchitecture)?;
        let (cfg, g) = read_globals(&file, spec)?;
        let model = Model { file, cfg, g, kernels: kernels::best() };
        for l in 0..cfg.n_layers {
            model.layer_checked(l)?;
        }
        crate::trace::info!(
            "arq: {} model, {} layers of {}, {} heads, vocab {}, context {}, kernels {}",
            cfg.family.name(),
            cfg.n_layers,
            cfg.dim,
            cfg.n_heads,
            cfg.vocab,
            cfg.ctx_train,
            model.kernels.name
        );
        Ok(model)
    }

    fn layer_checked(&self, l: usize) -> Result<Layer<'a>, Error> {
        read_layer(&self.file, self.cfg.family.spec(), &self.cfg, self.g.layer_base, l)
    }

    fn layer(&self, l: usize) -> Layer<'a> {
        // Every layer was validated in `from_file`; the file is immutable.
        match self.layer_checked(l) {
            Ok(layer) => layer,
            Err(_) => unreachable!("layer {l} validated at load"),
        }
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    pub fn file(&self) -> &ArqFile<'a> {
        &self.file
    }

    /// The tokenizer stored in the file.
    pub fn tokenizer(&self) -> Result<Tokenizer<'a>, Error> {
        let name = keys::TENSOR_TOKENIZER;
        let (_, t) = self.file.find(name).ok_or(bad(NAMING, name, None, "missing"))?;
        Tokenizer::from_blob(t.data).map_err(Error::Tokenizer)
    }

    /// Whether the output head shares the embedding matrix.
    pub fn tied_embeddings(&self) -> bool {
        self.file.find("output").is_none()
    }

    /// Picks a kernel tier other than the detected best (tests, benchmarks).
    pub fn set_kernels(&mut self, k: &'static Kernels) {
        self.kernels = k;
    }

    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// The matrices a step multiplies by (the output head, then each layer's), as
    /// `(weight, rows, cols)`; the embeddings are only read by rows, unless tied as the
    /// head.
    pub fn matrices(&self) -> impl Iterator<Item = (Weight<'a>, usize, usize)> + '_ {
        let c = self.cfg;
        let (d, qd, kv, ff) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        core::iter::once((self.g.output, c.vocab, d)).chain((0..c.n_layers).flat_map(move |l| {
            let w = self.layer(l);
            let gate = w.gate.map(|g| (g.w, ff, d));
            [(w.q.w, qd, d), (w.k.w, kv, d), (w.v.w, kv, d), (w.o.w, d, qd)]
                .into_iter()
                .chain(gate)
                .chain([(w.up.w, ff, d), (w.down.w, d, ff)])
        }))
    }

    /// The exact arena size, in bytes, that [`Session::new`] needs for `cfg`.
    pub fn memory_plan(&self, cfg: &SessionConfig) -> Result<usize, Error> {
        self.layout(cfg).map(|l| l.bytes()).ok_or(Error::BadConfig("arena size overflows"))
    }

    /// The bytes of the KV cache (keys and values of every layer) within
    /// [`Self::memory_plan`]; with `windowed` false, what it would take if no layer had a
    /// sliding window (what the window saves is the difference).
    pub fn kv_cache_bytes(&self, cfg: &SessionConfig, windowed: bool) -> Result<usize, Error> {
        let c = &self.cfg;
        let rows = if windowed { kv_rows_total(c, cfg) } else { c.n_layers.checked_mul(cfg.ctx) };
        let bytes =
            rows.and_then(|r| r.checked_mul(cfg.seqs)).and_then(|r| r.checked_mul(c.kv_dim())).and_then(
                |e| match cfg.kv {
                    KvDtype::F32 => e.checked_mul(core::mem::size_of::<f32>()),
                    KvDtype::Q8 => (e / QK8).checked_mul(core::mem::size_of::<BlockQ8>()),
                    KvDtype::F16 => e.checked_mul(core::mem::size_of::<u16>()),
                },
            );
        bytes.and_then(|b| b.checked_mul(2)).ok_or(Error::BadConfig("arena size overflows"))
    }

    /// Scratch for multi-token products split by rows across threads (none for one thread).
    fn split_len(c: &TransformerConfig, s: &SessionConfig) -> Option<usize> {
        if s.threads > 1 {
            s.batch.checked_mul(width(c))
        } else {
            Some(0)
        }
    }

    /// The arena's buffers, in carving order (see [`Session::new`]).
    fn layout(&self, s: &SessionConfig) -> Option<Layout> {
        let c = &self.cfg;
        let spec = c.family.spec();
        let b = s.batch;
        let cache = kv_rows_total(c, s)?.checked_mul(c.kv_dim())?.checked_mul(s.seqs)?;
        let l = match s.kv {
            KvDtype::F32 => Layout::new().then::<f32>(cache)?.then::<f32>(cache)?, // keys, values
            KvDtype::Q8 => Layout::new().then::<BlockQ8>(cache / QK8)?.then::<BlockQ8>(cache / QK8)?,
            KvDtype::F16 => Layout::new().then::<u16>(cache)?.then::<u16>(cache)?,
        };
        l.then::<usize>(s.seqs)? // positions
            .then::<f32>(b.checked_mul(c.dim)?)? // x
            .then::<f32>(b.checked_mul(c.dim)?)? // xb
            .then::<f32>(b.checked_mul(c.dim.max(c.q_dim()))?)? // xb2
            .then::<f32>(b.checked_mul(c.q_dim())?)? // q
            .then::<f32>(b.checked_mul(c.kv_dim())?)? // k
            .then::<f32>(b.checked_mul(c.kv_dim())?)? // v
            .then::<f32>(b.checked_mul(c.ffn_dim)?)? // hb
            .then::<f32>(if spec.mlp.gated() { b.checked_mul(c.ffn_dim)? } else { 0 })? // hb2
            .then::<BlockQ8>(b.checked_mul(width(c) / QK8)?)? // xq
            .then::<f32>(att_len(c, s)?.checked_mul(s.threads)?)? // att
            .then::<f32>(rope_len(c, b)?)? // rope
            .then::<f32>(b.checked_mul(c.vocab)?)? // logits
            .then::<f32>(Self::split_len(c, s)?)? // split
            .then::<f32>(kv32_len(c, s)?) // kv32
    }
}

/// An f16 cache's prompt scratch: one layer's keys and values of the whole context in
/// f32, which the blocked prompt attention ([`attend_tokens`]) reads (none for other
/// caches, or when a pass is one token).
fn kv32_len(c: &TransformerConfig, s: &SessionConfig) -> Option<usize> {
    if s.kv == KvDtype::F16 && s.batch > 1 {
        s.ctx.checked_mul(c.kv_dim())?.checked_mul(2)
    } else {
        Some(0)
    }
}

/// The widest activation of one token that a product reads or writes.
fn width(c: &TransformerConfig) -> usize {
    c.dim.max(c.ffn_dim).max(c.q_dim())
}

/// The rotary tables of a batch: one per position, and a second one for the sliding
/// layers' own base.
fn rope_len(c: &TransformerConfig, batch: usize) -> Option<usize> {
    let tables = match c.family.spec().positions {
        Positions::Learned => 0,
        Positions::Rotary => 1 + (c.sliding_window > 0) as usize,
    };
    batch.checked_mul(c.head_dim)?.checked_mul(tables)
}

/// Positions layer `l` caches: the context, or for a sliding layer its window plus the
/// other tokens of one batched pass (whose keys are written before any of them attends),
/// as a ring.
fn kv_rows(c: &TransformerConfig, s: &SessionConfig, l: usize) -> usize {
    if c.is_sliding(l) {
        c.sliding_window.saturating_add(s.batch - 1).min(s.ctx)
    } else {
        s.ctx
    }
}

/// [`kv_rows`] of every layer together.
fn kv_rows_total(c: &TransformerConfig, s: &SessionConfig) -> Option<usize> {
    (0..c.n_layers).try_fold(0usize, |sum, l| sum.checked_add(kv_rows(c, s, l)))
}

/// The KV cache, `(layer, kv_rows(layer), kv_dim)` for keys and for values.
enum KvCache<'a> {
    F32 { keys: &'a mut [f32], values: &'a mut [f32] },
    Q8 { keys: &'a mut [BlockQ8], values: &'a mut [BlockQ8] },
    F16 { keys: &'a mut [u16], values: &'a mut [u16] },
}

/// One layer's cached keys or values, read by [`attend`].
#[derive(Clone, Copy)]
enum KvRows<'a> {
    F32(&'a [f32]),
    Q8(&'a [BlockQ8]),
    F16(&'a [u16]),
}

impl<'a> KvRows<'a> {
    /// Elements `off..off + tmp.len()` of cached row `j`: a view of an f32 cache, or
    /// dequantized into `tmp` from a q8 one (an f16 cache is read by [`attend_f16`]).
    #[inline]
    fn head<'t>(self, j: usize, kv_dim: usize, off: usize, tmp: &'t mut [f32]) -> &'t [f32]
    where
        'a: 't,
    {
        let hd = tmp.len();
        match self {
            KvRows::F32(rows) => &rows[j * kv_dim + off..][..hd],
            KvRows::F16(_) => unreachable!("attend reads an f16 cache through attend_f16"),
            KvRows::Q8(blocks) => {
                let row = &blocks[j * kv_dim / QK8..(j + 1) * kv_dim / QK8];
                // A head may start and end inside a block; each block's f16 scale is
                // converted once (in software on a Cortex-M4).
                let mut e = off;
                while e < off + hd {
                    let b = &row[e / QK8];
                    let d = b.scale();
                    let end = (e / QK8 + 1) * QK8;
                    for i in e..end.min(off + hd) {
                        tmp[i - off] = b.qs[i % QK8] as f32 * d;
                    }
                    e = end;
                }
                tmp
            }
        }
    }
}

/// A running sequence: the KV cache and scratch, all in the caller's arena.
pub struct Session<'a> {
    model: &'a Model<'a>,
    cfg: SessionConfig,
    pool: &'a dyn Parallel,
    offload: Option<&'a dyn Offload>,
    positions: &'a mut [usize], // (seqs) tokens in each sequence's cache
    seq: usize,                 // the sequence the single-sequence calls run on
    seq_len: usize,             // elements of one sequence's keys (or values), all layers
    cache: KvCache<'a>,         // (seqs, layers, rows, kv_dim) keys and values
    x: &'a mut [f32],           // (batch, dim) the residual stream
    xb: &'a mut [f32],          // (batch, dim) normed input of a sublayer
    xb2: &'a mut [f32],         // (batch, max(dim, q_dim)) attention output / post-norm output
    q: &'a mut [f32],           // (batch, q_dim)
    k: &'a mut [f32],           // (batch, kv_dim)
    v: &'a mut [f32],           // (batch, kv_dim)
    hb: &'a mut [f32],          // (batch, ffn_dim) MLP hidden (SwiGLU: the gate, then the gated product)
    hb2: &'a mut [f32],         // (batch, ffn_dim) a gated MLP's up projection (empty for GELU)
    xq: &'a mut [BlockQ8],      // (batch, width / 32) quantized activations
    att: &'a mut [f32],         // (threads, ctx + head_dim) attention scores and a dequantized head row, per task
    rope: &'a mut [f32],        // (tables, batch, head_dim) cos/sin per position (rotary positions)
    logits: &'a mut [f32],      // (batch, vocab)
    split: &'a mut [f32],       // (batch, width) row-split products, threads > 1
    kv32: &'a mut [f32],        // (2, ctx, kv_dim) an f16 cache's layer in f32, for prompts
}

/// Which sequence each token of a pass extends.
#[derive(Clone, Copy)]
enum Rows<'s> {
    /// All of them extend this one, in order.
    Seq(usize),
    /// Token `t` extends sequence `seqs[t]`; each sequence at most once.
    Each(&'s [usize]),
}

impl Rows<'_> {
    fn seq(self, t: usize) -> usize {
        match self {
            Rows::Seq(s) => s,
            Rows::Each(seqs) => seqs[t],
        }
    }

    /// Token `t`'s position, with `positions` as they were before the pass.
    fn pos(self, positions: &[usize], t: usize) -> usize {
        match self {
            Rows::Seq(s) => positions[s] + t,
            Rows::Each(seqs) => positions[seqs[t]],
        }
    }
}

/// Layer rows `range` of the cache (one sequence's), for [`attend`].
fn kv_view<'c>(cache: &'c KvCache<'_>, range: core::ops::Range<usize>) -> (KvRows<'c>, KvRows<'c>) {
    match cache {
        KvCache::F32 { keys, values } => (KvRows::F32(&keys[range.clone()]), KvRows::F32(&values[range])),
        KvCache::Q8 { keys, values } => {
            let blocks = range.start / QK8..range.end / QK8;
            (KvRows::Q8(&keys[blocks.clone()]), KvRows::Q8(&values[blocks]))
        }
        KvCache::F16 { keys, values } => (KvRows::F16(&keys[range.clone()]), KvRows::F16(&values[range])),
    }
}

/// Which tokens of a pass get logits.
#[derive(Clone, Copy)]
enum Logits {
    None,
    Last,
    All,
}

/// Query rows (tokens x the query heads of one KV head) that [`attend_tokens`] takes at
/// once: enough that each cached key and value row loaded serves a dozen or more
/// products, few enough that their scores stay in L2 for a few thousand positions.
const BLOCK_ROWS: usize = 16;

/// Tokens per [`attend_tokens`] block: `BLOCK_ROWS` query rows, at most a pass's tokens.
fn block_tokens(c: &TransformerConfig, batch: usize) -> usize {
    (BLOCK_ROWS / (c.n_heads / c.n_kv_heads.max(1)).max(1)).clamp(1, batch.max(1))
}

/// Rows of an f16 cache that [`attend`] converts to f32 at once: each KV head's slice
/// of them is then read from L1 by one kernel call (24 KB for SmolLM2's 192-wide rows),
/// rather than one conversion and one call per row and head.
const F16_ROWS: usize = 32;

/// The end of [`att_len`]'s scratch that [`attend`] converts cached rows into: an f16
/// cache's [`F16_ROWS`] whole rows, or one head's slice of a q8 row.
fn att_rows_len(c: &TransformerConfig, kv: KvDtype) -> usize {
    match kv {
        KvDtype::F16 => F16_ROWS * c.kv_dim(),
        KvDtype::F32 | KvDtype::Q8 => c.head_dim,
    }
}

/// One task's attention scratch: the scores of every query head of a token or of a
/// block of tokens, then, for a block, its gathered query rows and their outputs, and
/// the converted rows of [`att_rows_len`] ([`attend`], [`attend_tokens`]).
fn att_len(c: &TransformerConfig, s: &SessionConfig) -> Option<usize> {
    let rows = block_tokens(c, s.batch) * (c.n_heads / c.n_kv_heads.max(1));
    let block = if s.batch > 1 { 2 * rows * c.head_dim } else { 0 };
    c.n_heads.max(rows).checked_mul(s.ctx)?.checked_add(block)?.checked_add(att_rows_len(c, s.kv))
}

/// The cached positions one query sees: `first..end`, position `p` in row `p % ring`.
#[derive(Clone, Copy)]
struct Span {
    first: usize,
    end: usize,
    ring: usize,
}

impl Span {
    /// The query at position `end - 1`, over the last `window` positions (0: all).
    fn new(end: usize, window: usize, ring: usize) -> Span {
        let first = if window > 0 { end.saturating_sub(window) } else { 0 };
        Span { first, end, ring }
    }
}

/// Causal attention of query heads `h0..h0 + m` (`q` and `out` hold them one after the
/// other, `hd` each) over the cached positions of `span`: for each head `h`, `out_h =
/// softmax(q_h·Kᵀ * scale) · V`, where `h` reads KV head `h / group` (grouped-query
/// attention), elements `(h / group) * hd..` of each cached row. The products are the
/// kernels' `attn_scores` and `attn_values` (one row at a time, which their contract
/// makes the same floats as any blocking; a q8 cache dequantizes the row first). `att`
/// holds `m` rows of scores and, at its end, `hd` values of scratch for a dequantized
/// slice.
#[allow(clippy::too_many_arguments)]
fn attend(
    k: &Kernels,
    q: &[f32],
    keys: KvRows<'_>,
    values: KvRows<'_>,
    (kv_dim, hd, group): (usize, usize, usize),
    h0: usize,
    span: Span,
    scale: f32,
    att: &mut [f32],
    out: &mut [f32],
) {
    let (m, n) = (q.len() / hd, span.end - span.first);
    let tail = if let KvRows::F16(_) = keys { F16_ROWS * kv_dim } else { hd };
    let (scores, tmp) = att.split_at_mut(att.len() - tail);
    let scores = &mut scores[..m * n];
    // Runs of these heads that share a KV head: (first, end, the KV head's offset).
    let runs = || {
        let mut h = 0;
        core::iter::from_fn(move || {
            (h < m).then(|| {
                let kv = (h0 + h) / group;
                let end = ((kv + 1) * group - h0).min(m);
                let run = (h, end, kv * hd);
                h = end;
                run
            })
        })
    };
    if let (KvRows::F16(kr), KvRows::F16(vr)) = (keys, values) {
        return attend_f16(k, q, (kr, vr), (kv_dim, hd), span, scale, runs, (scores, tmp), out);
    }
    // Position by position, each KV head's slice of the row for all the query heads
    // that share it: at long contexts the cache comes from memory, and reading each row
    // whole, in order, keeps it one stream (a pass per KV head over many rows measured
    // about twice as slow on an AMD EPYC, the prefetchers following strided slices).
    for (i, p) in (span.first..span.end).enumerate() {
        for (a, b, off) in runs() {
            let key = Strided::one(keys.head(p % span.ring, kv_dim, off, tmp));
            (k.attn_scores)(&q[a * hd..b * hd], key, &mut scores[a * n + i..], n);
        }
    }
    for s in scores.iter_mut() {
        *s *= scale;
    }
    (k.softmax_rows)(scores, m, n, n);
    out.fill(0.0);
    for (i, p) in (span.first..span.end).enumerate() {
        for (a, b, off) in runs() {
            let value = Strided::one(values.head(p % span.ring, kv_dim, off, tmp));
            (k.attn_values)(&scores[a * n + i..], n, value, &mut out[a * hd..b * hd]);
        }
    }
}

/// [`attend`] over an f16 cache: runs of up to [`F16_ROWS`] cached rows (never across
/// the ring's end) converted to f32 into `tmp` in one call, then each KV head's slice of
/// the run through one `attn_scores` (and later `attn_values`) call. The kernels'
/// contracts make that the same floats as row by row, position order kept.
#[allow(clippy::too_many_arguments)]
fn attend_f16<R: Iterator<Item = (usize, usize, usize)>>(
    k: &Kernels,
    q: &[f32],
    (keys, values): (&[u16], &[u16]),
    (kv_dim, hd): (usize, usize),
    span: Span,
    scale: f32,
    runs: impl Fn() -> R,
    (scores, tmp): (&mut [f32], &mut [f32]),
    out: &mut [f32],
) {
    let n = span.end - span.first;
    let m = q.len() / hd;
    // Each run of rows: (index in the span, its first row in the ring, rows).
    let chunks = || {
        let mut i = 0;
        core::iter::from_fn(move || {
            (i < n).then(|| {
                let r0 = (span.first + i) % span.ring;
                let c = (n - i).min(F16_ROWS).min(span.ring - r0);
                i += c;
                (i - c, r0, c)
            })
        })
    };
    for (i, r0, c) in chunks() {
        (k.f16_to_f32)(&keys[r0 * kv_dim..(r0 + c) * kv_dim], &mut tmp[..c * kv_dim]);
        for (a, b, off) in runs() {
            (k.attn_scores)(&q[a * hd..b * hd], heads_of(tmp, off, kv_dim, c, hd), &mut scores[a * n + i..], n);
        }
    }
    for s in scores.iter_mut() {
        *s *= scale;
    }
    (k.softmax_rows)(scores, m, n, n);
    out.fill(0.0);
    for (i, r0, c) in chunks() {
        (k.f16_to_f32)(&values[r0 * kv_dim..(r0 + c) * kv_dim], &mut tmp[..c * kv_dim]);
        for (a, b, off) in runs() {
            (k.attn_values)(&scores[a * n + i..], n, heads_of(tmp, off, kv_dim, c, hd), &mut out[a * hd..b * hd]);
        }
    }
}

/// Causal attention of the consecutive tokens at positions `p0..p0 + b` (`b = q.len() /
/// q_dim`) of one sequence, in a layer whose queries see every earlier position (no
/// window) of an f32 cache: [`attend`] of each token, the same floats, computed by
/// blocks of tokens. For each KV head, the block's query rows (tokens x the heads that
/// share it) are gathered and take their scores against the keys up to the block's
/// last position in one kernel call, so each key row loaded serves all of them; each
/// token's softmax covers its own span; the values come in two steps, the positions
/// every token sees for all rows at once, then each token's own last few, which keeps
/// each output's sum in position order.
#[allow(clippy::too_many_arguments)]
fn attend_tokens(
    k: &Kernels,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    (kv_dim, hd, group, block): (usize, usize, usize, usize),
    p0: usize,
    scale: f32,
    att: &mut [f32],
    out: &mut [f32],
) {
    let q_dim = (kv_dim / hd) * group * hd;
    let b = q.len() / q_dim;
    let mut t0 = 0;
    while t0 < b {
        let bt = block.min(b - t0);
        let (rows, first) = (bt * group, p0 + t0);
        let n = first + bt; // positions the block's last token sees
        let (scores, rest) = att.split_at_mut(rows * n);
        let (qb, rest) = rest.split_at_mut(rows * hd);
        let ob = &mut rest[..rows * hd];
        for kv in 0..kv_dim / hd {
            for t in 0..bt {
                let at = (t0 + t) * q_dim + kv * group * hd;
                qb[t * group * hd..(t + 1) * group * hd].copy_from_slice(&q[at..at + group * hd]);
            }
            (k.attn_scores)(qb, heads_of(keys, kv * hd, kv_dim, n, hd), scores, n);
            for t in 0..bt {
                let rows_t = &mut scores[t * group * n..(t + 1) * group * n];
                let seen = first + t + 1;
                for r in rows_t.chunks_exact_mut(n) {
                    r[..seen].iter_mut().for_each(|s| *s *= scale);
                }
                (k.softmax_rows)(rows_t, group, seen, n);
            }
            ob.fill(0.0);
            (k.attn_values)(scores, n, heads_of(values, kv * hd, kv_dim, first + 1, hd), ob);
            for t in 1..bt {
                let (from, to) = (first + 1, first + t + 1);
                let w = &scores[t * group * n + from..];
                let o = &mut ob[t * group * hd..(t + 1) * group * hd];
                (k.attn_values)(w, n, heads_of(values, from * kv_dim + kv * hd, kv_dim, to - from, hd), o);
            }
            for t in 0..bt {
                let at = (t0 + t) * q_dim + kv * group * hd;
                out[at..at + group * hd].copy_from_slice(&ob[t * group * hd..(t + 1) * group * hd]);
            }
        }
        t0 += bt;
    }
}

/// The first token of task `i` of `tasks` when `n` tokens at positions `p0..p0 + n`
/// attend causally: the token where the work so far (a token at position `p` reads `p +
/// 1` positions) first reaches `i / tasks` of the total. Task `tasks` starts at `n`.
fn causal_split(p0: usize, n: usize, tasks: usize, i: usize) -> usize {
    if i >= tasks {
        return n;
    }
    let work = |t: usize| (t as u128) * (p0 as u128) + (t as u128) * (t as u128 + 1) / 2;
    let goal = work(n) * i as u128 / tasks.max(1) as u128;
    // The least t with work(t) >= goal: work is increasing, so bisect.
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if work(mid) >= goal {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// `len` rows of `hd` floats from `rows[at..]`, `kv_dim` apart.
fn heads_of(rows: &[f32], at: usize, kv_dim: usize, len: usize, hd: usize) -> Strided<'_> {
    Strided::new(&rows[at..], kv_dim, len, hd).expect("cached rows hold the span")
}

impl<'a> Session<'a> {
    /// Carves the KV cache and scratch from `arena`, which must hold at least
    /// [`Model::memory_plan`] bytes.
    pub fn new(model: &'a Model<'a>, arena: &'a mut [u8], cfg: SessionConfig) -> Result<Self, Error> {
        if cfg.ctx == 0 || cfg.batch == 0 || cfg.threads == 0 || cfg.seqs == 0 {
            return Err(Error::BadConfig("ctx, batch, threads and seqs must be at least 1"));
        }
        let c = model.cfg;
        let spec = c.family.spec();
        if spec.positions == Positions::Learned && cfg.ctx > c.ctx_train {
            return Err(Error::BadConfig("ctx is longer than the model's position table"));
        }
        let need = model.memory_plan(&cfg)?;
        let b = cfg.batch;
        // `memory_plan` succeeded: these sizes do not overflow.
        let seq_len = kv_rows_total(&c, &cfg).unwrap_or(0) * c.kv_dim();
        let cache = seq_len * cfg.seqs;
        crate::trace::debug!(
            "arq: session, arena {} of {} bytes (ctx {}, batch {}, threads {}, kv cache {})",
            need,
            arena.len(),
            cfg.ctx,
            cfg.batch,
            cfg.threads,
            match cfg.kv {
                KvDtype::F32 => "f32",
                KvDtype::Q8 => "q8",
                KvDtype::F16 => "f16",
            }
        );
        let mut a = Arena::new(arena, need)?;
        let cache = match cfg.kv {
            KvDtype::F32 => KvCache::F32 { keys: a.take(cache)?, values: a.take(cache)? },
            KvDtype::Q8 => KvCache::Q8 { keys: a.take(cache / QK8)?, values: a.take(cache / QK8)? },
            KvDtype::F16 => KvCache::F16 { keys: a.take(cache)?, values: a.take(cache)? },
        };
        let positions = a.take::<usize>(cfg.seqs)?;
        positions.fill(0);
        Ok(Session {
            model,
            cfg,
            pool: &Serial,
            offload: None,
            positions,
            seq: 0,
            seq_len,
            cache,
            x: a.take(b * c.dim)?,
            xb: a.take(b * c.dim)?,
            xb2: a.take(b * c.dim.max(c.q_dim()))?,
            q: a.take(b * c.q_dim())?,
            k: a.take(b * c.kv_dim())?,
            v: a.take(b * c.kv_dim())?,
            hb: a.take(b * c.ffn_dim)?,
            hb2: a.take(if spec.mlp.gated() { b * c.ffn_dim } else { 0 })?,
            xq: a.take(b * width(&c) / QK8)?,
            att: a.take(att_len(&c, &cfg).unwrap_or(0) * cfg.threads)?,
            rope: a.take(rope_len(&c, b).unwrap_or(0))?,
            logits: a.take(b * c.vocab)?,
            split: a.take(Model::split_len(&c, &cfg).unwrap_or(0))?,
            kv32: a.take(kv32_len(&c, &cfg).unwrap_or(0))?,
        })
    }

    /// Runs the session's matrix and attention work on `pool` (at most
    /// `SessionConfig::threads` threads; the default is [`Serial`]).
    pub fn set_parallel(&mut self, pool: &'a dyn Parallel) -> Result<(), Error> {
        if pool.threads() > self.cfg.threads {
            return Err(Error::BadConfig("pool has more threads than SessionConfig::threads"));
        }
        self.pool = pool;
        Ok(())
    }

    /// Sends the q8 and q4 matrix products to `offload` (a GPU); the rest of the step
    /// stays here. `None` brings them back to the CPU.
    pub fn set_offload(&mut self, offload: Option<&'a dyn Offload>) -> Result<(), Error> {
        if offload.is_some_and(|o| o.max_tokens() < self.cfg.batch) {
            return Err(Error::BadConfig("offload takes fewer tokens per call than SessionConfig::batch"));
        }
        self.offload = offload;
        Ok(())
    }

    pub fn model(&self) -> &'a Model<'a> {
        self.model
    }

    /// Tokens in the KV cache (of the selected sequence).
    pub fn pos(&self) -> usize {
        self.positions[self.seq]
    }

    /// Tokens in sequence `seq`'s cache (0 for a sequence the session does not have).
    pub fn seq_pos(&self, seq: usize) -> usize {
        self.positions.get(seq).copied().unwrap_or(0)
    }

    /// Makes `seq` (below [`SessionConfig::seqs`]) the sequence that [`Self::step`],
    /// [`Self::prefill`], [`Self::forward_all`], [`Self::reset`] and [`Self::truncate`]
    /// run on; the others keep their caches.
    pub fn select(&mut self, seq: usize) -> Result<(), Error> {
        if seq >= self.cfg.seqs {
            return Err(Error::BadConfig("no such sequence"));
        }
        self.seq = seq;
        Ok(())
    }

    /// The selected sequence.
    pub fn selected(&self) -> usize {
        self.seq
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Forgets the sequence (the cache is overwritten as new tokens arrive).
    pub fn reset(&mut self) {
        self.positions[self.seq] = 0;
    }

    /// Rewinds to `pos` tokens (keeps the cached prefix). A sliding-window layer keeps
    /// only its window and one pass more, so a model with one can rewind only as far as
    /// those still hold the window of position `pos`: further back it fails with
    /// [`Error::BadConfig`] and changes nothing (then [`Self::reset`] and feed again).
    pub fn truncate(&mut self, pos: usize) -> Result<(), Error> {
        let now = self.pos();
        let pos = now.min(pos);
        let c = &self.model.cfg;
        if let Some(l) = (0..c.n_layers).find(|&l| c.is_sliding(l)) {
            // Position p is still cached iff no later position took its row: p + rows >= now.
            let rows = kv_rows(c, &self.cfg, l);
            let needed = (pos + 1).saturating_sub(c.sliding_window);
            if needed + rows < now {
                return Err(Error::BadConfig("cannot rewind a sliding-window cache that far"));
            }
        }
        self.positions[self.seq] = pos;
        Ok(())
    }

    /// Appends one token; returns the logits of p(x_{i+1} | x_{<=i}).
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.forward(&[token], false)?;
        Ok(&self.logits[..self.model.cfg.vocab])
    }

    /// Appends `tokens` in batched passes; returns the logits after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        self.check_tokens(tokens)?;
        if tokens.is_empty() {
            return Err(Error::BadConfig("empty prompt"));
        }
        let chunks = tokens.chunks(self.cfg.batch);
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.enumerate() {
            // Only the last pass's logits are returned: the head (the biggest matrix)
            // is skipped before it.
            self.pass(Rows::Seq(self.seq), chunk, if i == last { Logits::Last } else { Logits::None })?;
        }
        Ok(&self.logits[..self.model.cfg.vocab])
    }

    /// Appends `tokens` and calls `f(i, logits)` with the logits after token `i`, for
    /// every `i` (teacher forcing: the basis of exact scoring).
    pub fn forward_all(&mut self, tokens: &[u32], mut f: impl FnMut(usize, &[f32])) -> Result<(), Error> {
        self.check_tokens(tokens)?;
        let vocab = self.model.cfg.vocab;
        for (ci, chunk) in tokens.chunks(self.cfg.batch).enumerate() {
            self.forward(chunk, true)?;
            for t in 0..chunk.len() {
                f(ci * self.cfg.batch + t, &self.logits[t * vocab..(t + 1) * vocab]);
            }
        }
        Ok(())
    }

    /// `log p(tokens[1..] | tokens[0])` in nats, teacher-forced from the current position
    /// (the first token is the condition, not scored).
    pub fn log_prob(&mut self, tokens: &[u32]) -> Result<f64, Error> {
        let mut total = 0.0;
        let n = tokens.len();
        self.forward_all(tokens, |i, logits| {
            if i + 1 < n {
                total += math::log_prob(logits, tokens[i + 1] as usize);
            }
        })?;
        Ok(total)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), Error> {
        let vocab = self.model.cfg.vocab;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        if self.pos() + tokens.len() > self.cfg.ctx {
            return Err(Error::ContextFull { ctx: self.cfg.ctx });
        }
        Ok(())
    }

    /// One token for each of the sequences `seqs` (all different), in one pass over the
    /// weights: the decode steps of a server's slots sharing each weight read. Returns
    /// the logits after each, `(seqs.len(), vocab)`. Row for row the same logits as
    /// [`Self::step`] on each sequence alone.
    pub fn step_seqs(&mut self, seqs: &[usize], tokens: &[u32]) -> Result<&[f32], Error> {
        let n = tokens.len();
        if seqs.len() != n {
            return Err(Error::BadConfig("one sequence per token"));
        }
        for (t, &s) in seqs.iter().enumerate() {
            if s >= self.cfg.seqs {
                return Err(Error::BadConfig("no such sequence"));
            }
            if seqs[..t].contains(&s) {
                return Err(Error::BadConfig("a sequence twice in one step"));
            }
            if self.positions[s] >= self.cfg.ctx {
                return Err(Error::ContextFull { ctx: self.cfg.ctx });
            }
        }
        self.pass(Rows::Each(seqs), tokens, Logits::All)?;
        Ok(&self.logits[..n * self.model.cfg.vocab])
    }

    /// The family's norm over the first `width` entries of each row of `x` into `out`;
    /// the rest of each row (the zero padding of a width that is not a multiple of 32)
    /// stays zero, so that padded entries never enter a mean.
    fn norm(kind: NormKind, eps: f32, n: &Norm<'_>, width: usize, x: &[f32], out: &mut [f32]) {
        let dim = n.w.len();
        let (w, b) = (&n.w[..width], n.b.map(|b| &b[..width]).unwrap_or(&[]));
        for (o, i) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
            let (o, pad) = o.split_at_mut(width);
            match kind {
                NormKind::Rms => math::rmsnorm(o, &i[..width], w, eps),
                NormKind::Layer => math::layernorm(o, &i[..width], w, b, eps),
            }
            pad.fill(0.0);
        }
    }

    /// The input of a sublayer: `norm(x)` before it (pre-LN), or `x` itself where the
    /// norm follows the residual add (post-LN).
    fn sublayer_input(c: &TransformerConfig, norm: &Norm<'_>, x: &[f32], out: &mut [f32]) {
        let spec = c.family.spec();
        match spec.post_ln {
            true => out.copy_from_slice(x),
            false => Self::norm(spec.norm, c.norm_eps, norm, c.norm_dim, x, out),
        }
    }

    /// Post-LN: `x = norm(x)` after a residual add (`scratch` holds the norm); pre-LN:
    /// nothing.
    fn norm_after_add(c: &TransformerConfig, norm: &Norm<'_>, x: &mut [f32], scratch: &mut [f32]) {
        let spec = c.family.spec();
        if spec.post_ln {
            Self::norm(spec.norm, c.norm_eps, norm, c.norm_dim, x, scratch);
            x.copy_from_slice(scratch);
        }
    }

    /// The embeddings of `tokens` into `x` (scaled, or plus their learned positions, as
    /// the family says), and for rotary positions their tables: `rope[t]` with the
    /// global base, `rope[batch + t]` with the sliding layers' base.
    fn embed(&mut self, rows: Rows<'_>, tokens: &[u32]) {
        let model = self.model;
        let c = &model.cfg;
        let (dim, hd, b) = (c.dim, c.head_dim, self.cfg.batch);
        let scale = libm::sqrtf(dim as f32);
        for (t, &tok) in tokens.iter().enumerate() {
            let (row, pos) = (t * dim..(t + 1) * dim, rows.pos(self.positions, t));
            model.g.embed.row_into(tok as usize, dim, &mut self.x[row.clone()]);
            if c.family.spec().embed_scale {
                self.x[row.clone()].iter_mut().for_each(|v| *v *= scale);
            }
            match model.g.pos_embed {
                Some(pos_embed) => {
                    pos_embed.row_into(pos, dim, &mut self.xb[row.clone()]);
                    for (xi, &p) in self.x[row.clone()].iter_mut().zip(&self.xb[row]) {
                        *xi += p;
                    }
                }
                None => {
                    math::rope_table(&mut self.rope[t * hd..(t + 1) * hd], pos, c.rope_base);
                    if c.sliding_window > 0 {
                        math::rope_table(&mut self.rope[(b + t) * hd..(b + t + 1) * hd], pos, c.rope_base_local);
                    }
                }
            }
        }
    }

    /// `x += out`, or `x += rmsnorm(out)` where the family normalizes a sublayer's
    /// output (`scratch` holds the norm).
    fn add_residual(eps: f32, post_norm: Option<Norm<'_>>, x: &mut [f32], out: &[f32], scratch: &mut [f32]) {
        let out = match post_norm {
            Some(pn) => {
                Self::norm(NormKind::Rms, eps, &pn, pn.w.len(), out, scratch);
                &*scratch
            }
            None => out,
        };
        for (xi, &o) in x.iter_mut().zip(out) {
            *xi += o;
        }
    }

    /// One batched pass over `tokens` (at most `batch`) at positions `pos..`. Fills
    /// `logits` for every token when `all_logits`, else for the last one (row 0).
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<(), Error> {
        self.check_tokens(tokens)?;
        self.pass(Rows::Seq(self.seq), tokens, if all_logits { Logits::All } else { Logits::Last })
    }

    /// [`Self::forward`] of the tokens of `rows`' sequences (checked by the caller), with
    /// the head's rows chosen by `logits`.
    fn pass(&mut self, rows_of: Rows<'_>, tokens: &[u32], logits: Logits) -> Result<(), Error> {
        let n = tokens.len();
        if n == 0 || n > self.cfg.batch {
            return Err(Error::BadConfig("forward takes 1..=batch tokens"));
        }
        let vocab = self.model.cfg.vocab;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        let model = self.model;
        let c = model.cfg;
        let spec = c.family.spec();
        let kern = model.kernels;
        let pool = self.pool;
        let off = self.offload;
        let (dim, qd, kv_dim, hd, ff) = (c.dim, c.q_dim(), c.kv_dim(), c.head_dim, c.ffn_dim);
        let group = c.n_heads / c.n_kv_heads;
        let seq_len = self.seq_len;
        self.embed(rows_of, tokens);
        let x = &mut self.x[..n * dim];

        let mut cache_l = 0;
        for l in 0..c.n_layers {
            let w = model.layer(l);
            let rows = kv_rows(&c, &self.cfg, l);
            let window = if c.is_sliding(l) { c.sliding_window } else { 0 };

            // Attention: xb = norm(x) (x for post-LN); q, k, v = xb·Wqᵀ + bq, ...; then
            // the q and k norms and the rotary embedding per head.
            Self::sublayer_input(&c, &w.attn_norm, x, &mut self.xb[..n * dim]);
            linear(
                pool,
                kern,
                off,
                &self.xb[..n * dim],
                self.xq,
                self.split,
                &mut [
                    (&w.q.w, qd, &mut self.q[..n * qd]),
                    (&w.k.w, kv_dim, &mut self.k[..n * kv_dim]),
                    (&w.v.w, kv_dim, &mut self.v[..n * kv_dim]),
                ],
            )?;
            add_bias(&mut self.q[..n * qd], w.q.b);
            add_bias(&mut self.k[..n * kv_dim], w.k.b);
            add_bias(&mut self.v[..n * kv_dim], w.v.b);
            for (norm, rows) in [(w.q_norm, &mut self.q[..n * qd]), (w.k_norm, &mut self.k[..n * kv_dim])] {
                if let Some(nw) = norm {
                    rows.chunks_exact_mut(hd).for_each(|h| math::rmsnorm_in_place(h, nw, c.norm_eps));
                }
            }
            if spec.positions == Positions::Rotary {
                // The sliding layers' table follows the global one (see `embed`).
                let tables = &self.rope[if window > 0 { self.cfg.batch * hd } else { 0 }..];
                let turn = match spec.rope {
                    RopeStyle::Adjacent => math::rope,
                    RopeStyle::Half => math::rope_half,
                };
                for t in 0..n {
                    let table = &tables[t * hd..(t + 1) * hd];
                    self.q[t * qd..(t + 1) * qd].chunks_exact_mut(hd).for_each(|h| turn(h, table));
                    self.k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd).for_each(|h| turn(h, table));
                }
            }
            for t in 0..n {
                let at = rows_of.seq(t) * seq_len + cache_l + (rows_of.pos(self.positions, t) % rows) * kv_dim;
                let (kt, vt) = (&self.k[t * kv_dim..(t + 1) * kv_dim], &self.v[t * kv_dim..(t + 1) * kv_dim]);
                match &mut self.cache {
                    KvCache::F32 { keys, values } => {
                        keys[at..at + kv_dim].copy_from_slice(kt);
                        values[at..at + kv_dim].copy_from_slice(vt);
                    }
                    KvCache::Q8 { keys, values } => {
                        (kern.quantize_q8)(kt, &mut keys[at / QK8..(at + kv_dim) / QK8]);
                        (kern.quantize_q8)(vt, &mut values[at / QK8..(at + kv_dim) / QK8]);
                    }
                    KvCache::F16 { keys, values } => {
                        (kern.f32_to_f16)(kt, &mut keys[at..at + kv_dim]);
                        (kern.f32_to_f16)(vt, &mut values[at..at + kv_dim]);
                    }
                }
            }

            // Causal attention of each token over the cache up to its own position (the
            // last `window` of them in a sliding layer): one token splits its heads
            // across tasks, several tokens split the tokens.
            let (layer_off, layer_len) = (cache_l, rows * kv_dim);
            cache_l += layer_len;
            let cache = &self.cache;
            let layer_of = |t: usize| {
                let at = rows_of.seq(t) * seq_len + layer_off;
                kv_view(cache, at..at + layer_len)
            };
            let positions = &*self.positions;
            let q = &self.q[..n * qd];
            let tasks = pool.threads();
            let att_len = att_len(&c, &self.cfg).unwrap_or(0);
            let scale = c.attn_scale;
            if n == 1 {
                let heads_per_task = c.n_heads.div_ceil(tasks);
                let span = Span::new(rows_of.pos(positions, 0) + 1, window, rows);
                let (keys, values) = layer_of(0);
                parallel::chunks2(pool, &mut self.xb2[..qd], heads_per_task * hd, self.att, att_len, |i, out, att| {
                    let h0 = i * heads_per_task;
                    let qs = &q[h0 * hd..h0 * hd + out.len()];
                    attend(kern, qs, keys, values, (kv_dim, hd, group), h0, span, scale, att, out);
                });
            } else if let (Rows::Seq(seq), 0, KvCache::F32 { .. } | KvCache::F16 { .. }) = (rows_of, window, cache) {
                // A prompt's tokens: blocks of them per KV head (`attend_tokens`), the
                // tokens split so that the tasks get equal work (a token's grows with
                // its position). An f16 cache's rows up to the last token are converted
                // to f32 first (exactly: the same floats `attend` would read).
                let p0 = positions[seq];
                let block = block_tokens(&c, self.cfg.batch);
                let split = |i: usize| causal_split(p0, n, tasks, i);
                let seen = (p0 + n) * kv_dim;
                let (keys, values) = match layer_of(0) {
                    (KvRows::F32(keys), KvRows::F32(values)) => (keys, values),
                    (KvRows::F16(keys), KvRows::F16(values)) => {
                        let (k32, v32) = self.kv32.split_at_mut(self.kv32.len() / 2);
                        (kern.f16_to_f32)(&keys[..seen], &mut k32[..seen]);
                        (kern.f16_to_f32)(&values[..seen], &mut v32[..seen]);
                        (&k32[..seen], &v32[..seen])
                    }
                    _ => unreachable!("an f32 or f16 cache"),
                };
                parallel::split2(pool, &mut self.xb2[..n * qd], qd, tasks, &split, self.att, att_len, |i, out, att| {
                    let t0 = split(i);
                    let qt = &q[t0 * qd..t0 * qd + out.len()];
                    attend_tokens(kern, qt, keys, values, (kv_dim, hd, group, block), p0 + t0, scale, att, out);
                });
            } else {
                let per_task = n.div_ceil(tasks);
                parallel::chunks2(pool, &mut self.xb2[..n * qd], per_task * qd, self.att, att_len, |i, out, att| {
                    for (j, o) in out.chunks_exact_mut(qd).enumerate() {
                        let t = i * per_task + j;
                        let span = Span::new(rows_of.pos(positions, t) + 1, window, rows);
                        let (keys, values) = layer_of(t);
                        let qt = &q[t * qd..(t + 1) * qd];
                        attend(kern, qt, keys, values, (kv_dim, hd, group), 0, span, scale, att, o);
                    }
                });
            }
            let wo = &mut [(&w.o.w, dim, &mut self.xb[..n * dim])];
            linear(pool, kern, off, &self.xb2[..n * qd], self.xq, self.split, wo)?;
            add_bias(&mut self.xb[..n * dim], w.o.b);
            Self::add_residual(c.norm_eps, w.post_attn_norm, x, &self.xb[..n * dim], &mut self.xb2[..n * dim]);
            Self::norm_after_add(&c, &w.attn_norm, x, &mut self.xb2[..n * dim]);

            // MLP, with xb = norm(x) (x for post-LN): SwiGLU x += (silu(xb·Wgateᵀ) *
            // xb·Wupᵀ)·Wdownᵀ, GeGLU the same with gelu_tanh, GELU x += gelu(xb·Wupᵀ +
            // bup)·Wdownᵀ + bdown, ReLU the same with relu.
            Self::sublayer_input(&c, &w.ffn_norm, x, &mut self.xb[..n * dim]);
            let xb = &self.xb[..n * dim];
            match w.gate {
                Some(gate) => {
                    let jobs = &mut [(&gate.w, ff, &mut self.hb[..n * ff]), (&w.up.w, ff, &mut self.hb2[..n * ff])];
                    linear(pool, kern, off, xb, self.xq, self.split, jobs)?;
                    add_bias(&mut self.hb[..n * ff], gate.b);
                    add_bias(&mut self.hb2[..n * ff], w.up.b);
                    match spec.mlp {
                        Mlp::GeGlu => math::geglu(&mut self.hb[..n * ff], &self.hb2[..n * ff]),
                        _ => math::swiglu(&mut self.hb[..n * ff], &self.hb2[..n * ff]),
                    }
                }
                None => {
                    linear(pool, kern, off, xb, self.xq, self.split, &mut [(&w.up.w, ff, &mut self.hb[..n * ff])])?;
                    add_bias(&mut self.hb[..n * ff], w.up.b);
                    match spec.mlp {
                        Mlp::Relu => self.hb[..n * ff].iter_mut().for_each(|v| *v = v.max(0.0)),
                        _ => math::gelu_tanh(&mut self.hb[..n * ff]),
                    }
                }
            }
            let down = &mut [(&w.down.w, dim, &mut self.xb[..n * dim])];
            linear(pool, kern, off, &self.hb[..n * ff], self.xq, self.split, down)?;
            add_bias(&mut self.xb[..n * dim], w.down.b);
            Self::add_residual(c.norm_eps, w.post_ffn_norm, x, &self.xb[..n * dim], &mut self.xb2[..n * dim]);
            Self::norm_after_add(&c, &w.ffn_norm, x, &mut self.xb2[..n * dim]);
        }

        // Head: logits = norm(x)·Wᵀ for every row, or only the last, or none.
        let rows = match logits {
            Logits::All => 0..n,
            Logits::Last => n - 1..n,
            Logits::None => {
                self.advance(rows_of, n);
                return Ok(());
            }
        };
        let m = rows.len();
        Self::norm(
            spec.norm,
            c.norm_eps,
            &model.g.output_norm,
            c.norm_dim,
            &x[rows.start * dim..rows.end * dim],
            &mut self.xb[..m * dim],
        );
        let logits = &mut self.logits[..m * c.vocab];
        linear(pool, kern, off, &self.xb[..m * dim], self.xq, self.split, &mut [(&model.g.output, c.vocab, logits)])?;
        add_bias(logits, model.g.output_bias);
        self.advance(rows_of, n);
        Ok(())
    }

    /// Counts the `n` tokens of a pass into their sequences' positions.
    fn advance(&mut self, rows_of: Rows<'_>, n: usize) {
        match rows_of {
            Rows::Seq(s) => self.positions[s] += n,
            Rows::Each(seqs) => seqs.iter().for_each(|&s| self.positions[s] += 1),
        }
    }
}
