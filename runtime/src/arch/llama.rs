//! The LLaMA family (SmolLM2, LLaMA 2/3, TinyLlama, ...): RMSNorm, rotary embeddings,
//! grouped-query attention, a SwiGLU MLP and an optionally tied output head.
//!
//! [`Session::forward`] is the whole model, read top to bottom. Every buffer lives in
//! the caller's arena, carved once in [`Session::new`]; a step never allocates. A prompt
//! runs as one batched pass (matrix-matrix products over up to `batch` tokens), and
//! because every kernel fixes its summation order, a batched pass gives bit-identical
//! logits to running the same tokens one by one.

use crate::arena::{Arena, Layout};
use crate::error::Error;
use crate::format::{ArqFile, Dtype, TensorView};
use crate::kernels::{self, Kernels};
use crate::math;
use crate::parallel::{self, Parallel, Serial};
use crate::quant::{BlockQ4, BlockQ8, QK4, QK8};
use crate::tokenizer::Tokenizer;

/// Caps on hyperparameters: far above any model this runtime targets, low enough that
/// the arena arithmetic cannot overflow.
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 1 << 10;
const MAX_VOCAB: usize = 1 << 22;

/// Hyperparameters, read from the file's `llama.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// The context length the model was trained with.
    pub ctx_train: usize,
}

impl LlamaConfig {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    fn from_file(f: &ArqFile<'_>) -> Result<Self, Error> {
        let u = |k: &'static str| -> Result<usize, Error> {
            let v = f.meta_u64(k)?;
            usize::try_from(v).map_err(|_| Error::BadHyperparameter(k))
        };
        let cfg = LlamaConfig {
            vocab: u("llama.vocab_size")?,
            dim: u("llama.embedding_length")?,
            n_layers: u("llama.block_count")?,
            n_heads: u("llama.attention.head_count")?,
            n_kv_heads: u("llama.attention.head_count_kv")?,
            head_dim: 0,
            ffn_dim: u("llama.feed_forward_length")?,
            rope_base: f.meta_f32("llama.rope.freq_base")?,
            rms_eps: f.meta_f32("llama.attention.layer_norm_rms_epsilon")?,
            ctx_train: u("llama.context_length")?,
        };
        let check = |ok: bool, what| {
            if ok {
                Ok(())
            } else {
                Err(Error::BadHyperparameter(what))
            }
        };
        check(cfg.vocab > 0 && cfg.vocab <= MAX_VOCAB, "vocab_size")?;
        check(cfg.dim > 0 && cfg.dim <= MAX_DIM && cfg.dim.is_multiple_of(QK8), "embedding_length (a multiple of 32)")?;
        check(cfg.n_layers > 0 && cfg.n_layers <= MAX_LAYERS, "block_count")?;
        check(cfg.ffn_dim > 0 && cfg.ffn_dim <= 4 * MAX_DIM && cfg.ffn_dim.is_multiple_of(QK8), "feed_forward_length")?;
        check(cfg.n_heads > 0 && cfg.dim.is_multiple_of(cfg.n_heads), "head_count")?;
        check(cfg.n_kv_heads > 0 && cfg.n_heads.is_multiple_of(cfg.n_kv_heads), "head_count_kv")?;
        let head_dim = cfg.dim / cfg.n_heads;
        check(head_dim.is_multiple_of(2) && (cfg.n_kv_heads * head_dim).is_multiple_of(QK8), "head dimension")?;
        check(cfg.rope_base.is_finite() && cfg.rope_base > 0.0, "rope.freq_base")?;
        check(cfg.rms_eps.is_finite() && cfg.rms_eps >= 0.0, "layer_norm_rms_epsilon")?;
        Ok(LlamaConfig { head_dim, ..cfg })
    }
}

/// A weight matrix of `rows` x `cols`, stored row-major in one of the supported dtypes.
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    Q8(&'a [BlockQ8]),
    Q4(&'a [BlockQ4]),
    F32(&'a [f32]),
}

impl<'a> Weight<'a> {
    pub(crate) fn from_view(t: &TensorView<'a>) -> Option<Self> {
        match t.dtype {
            Dtype::Q8 => t.as_q8().map(Weight::Q8),
            Dtype::Q4 => t.as_q4().map(Weight::Q4),
            Dtype::F32 => t.as_f32().map(Weight::F32),
            _ => None,
        }
    }

    /// Row `r` (of length `cols`) as f32, into `out`.
    fn row_into(&self, r: usize, cols: usize, out: &mut [f32]) {
        match *self {
            Weight::Q8(w) => crate::quant::dequantize_row_q8(&w[r * cols / QK8..(r + 1) * cols / QK8], out),
            Weight::Q4(w) => crate::quant::dequantize_row_q4(&w[r * cols / QK4..(r + 1) * cols / QK4], out),
            Weight::F32(w) => out.copy_from_slice(&w[r * cols..(r + 1) * cols]),
        }
    }
}

/// The per-layer tensors, in the order the file stores them.
const LAYER_ROLES: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];

struct Layer<'a> {
    attn_norm: &'a [f32],
    wq: Weight<'a>,
    wk: Weight<'a>,
    wv: Weight<'a>,
    wo: Weight<'a>,
    ffn_norm: &'a [f32],
    w_gate: Weight<'a>,
    w_up: Weight<'a>,
    w_down: Weight<'a>,
}

/// Whether `name` is `blk.{layer}.{role}`, without formatting (no allocation).
fn is_layer_tensor(name: &str, layer: usize, role: &str) -> bool {
    let Some(rest) = name.strip_prefix("blk.") else {
        return false;
    };
    let Some((num, r)) = rest.split_once('.') else {
        return false;
    };
    r == role && num.parse::<usize>().ok() == Some(layer) && (num == "0" || !num.starts_with('0'))
}

/// A loaded model: validated views into the file's bytes.
pub struct Model<'a> {
    file: ArqFile<'a>,
    cfg: LlamaConfig,
    embed: Weight<'a>,
    output_norm: &'a [f32],
    output: Weight<'a>,
    /// Directory index of `blk.0.attn_norm`; layer `l`'s tensors follow at `9 * l`.
    layer_base: usize,
    kernels: &'static Kernels,
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
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { ctx: 2048, batch: 32, threads: 1 }
    }
}

/// Matrix products computed off the CPU: the `gpu` feature's `GpuMatmul` implements it
/// (a trait here so the forward pass needs no feature gate).
pub trait Offload {
    /// The most tokens one call may carry (the session's `batch` must not exceed it).
    fn max_tokens(&self) -> usize;
    /// `out (n, rows) = x (n, cols) · wᵀ` for every `(w, rows, out)` of `jobs`, from
    /// `xq`: the `n` activation rows quantized exactly as the CPU path quantizes them.
    /// Only q8 and q4 weights are offered.
    fn matmul(&self, xq: &[BlockQ8], n: usize, jobs: &mut [(&Weight<'_>, usize, &mut [f32])]) -> Result<(), Error>;
}

fn bad(role: &'static str, layer: Option<u32>, problem: &'static str) -> Error {
    Error::BadTensor { role, layer, problem }
}

impl<'a> Model<'a> {
    /// Validates `bytes` (64-byte aligned) as a LLaMA-family `.arq` file.
    pub fn load(bytes: &'a [u8]) -> Result<Self, Error> {
        let file = ArqFile::parse(bytes)?;
        Self::from_file(file)
    }

    pub fn from_file(file: ArqFile<'a>) -> Result<Self, Error> {
        if file.meta("arq.architecture").and_then(|v| v.as_str()) != Some("llama") {
            return Err(Error::UnsupportedArchitecture);
        }
        let cfg = LlamaConfig::from_file(&file)?;
        let (d, v) = (cfg.dim, cfg.vocab);
        let matrix = |t: &TensorView<'a>, role, layer, rows: usize, cols: usize| -> Result<Weight<'a>, Error> {
            if t.shape.dims() != [rows as u64, cols as u64] {
                return Err(bad(role, layer, "shape does not match the hyperparameters"));
            }
            Weight::from_view(t).ok_or(bad(role, layer, "dtype must be q8, q4 or f32"))
        };
        let vector = |t: &TensorView<'a>, role, layer, n: usize| -> Result<&'a [f32], Error> {
            if t.shape.dims() != [n as u64] {
                return Err(bad(role, layer, "shape does not match the hyperparameters"));
            }
            t.as_f32().ok_or(bad(role, layer, "dtype must be f32"))
        };
        let global = |name: &'static str| file.find(name).map(|(_, t)| t).ok_or(bad(name, None, "missing"));

        let embed = matrix(&global("token_embd")?, "token_embd", None, v, d)?;
        let output_norm = vector(&global("output_norm")?, "output_norm", None, d)?;
        let output = match file.find("output") {
            Some((_, t)) => matrix(&t, "output", None, v, d)?,
            None => embed,
        };
        let layer_base = file.find("blk.0.attn_norm").map(|(i, _)| i).ok_or(bad("attn_norm", Some(0), "missing"))?;
        let model = Model { file, cfg, embed, output_norm, output, layer_base, kernels: kernels::best() };
        for l in 0..cfg.n_layers {
            model.layer_checked(l)?;
        }
        Ok(model)
    }

    fn layer_checked(&self, l: usize) -> Result<Layer<'a>, Error> {
        let c = &self.cfg;
        let li = Some(l as u32);
        let t = |j: usize| -> Result<TensorView<'a>, Error> {
            let role = LAYER_ROLES[j];
            let idx = self.layer_base + l * LAYER_ROLES.len() + j;
            match self.file.tensor(idx) {
                Some(t) if is_layer_tensor(t.name, l, role) => Ok(t),
                _ => Err(bad(role, li, "missing or out of the canonical order")),
            }
        };
        let m = |j: usize, rows: usize, cols: usize| -> Result<Weight<'a>, Error> {
            let tv = t(j)?;
            if tv.shape.dims() != [rows as u64, cols as u64] {
                return Err(bad(LAYER_ROLES[j], li, "shape does not match the hyperparameters"));
            }
            Weight::from_view(&tv).ok_or(bad(LAYER_ROLES[j], li, "dtype must be q8, q4 or f32"))
        };
        let v = |j: usize| -> Result<&'a [f32], Error> {
            let tv = t(j)?;
            if tv.shape.dims() != [c.dim as u64] {
                return Err(bad(LAYER_ROLES[j], li, "shape does not match the hyperparameters"));
            }
            tv.as_f32().ok_or(bad(LAYER_ROLES[j], li, "dtype must be f32"))
        };
        let (d, kv, ff) = (c.dim, c.kv_dim(), c.ffn_dim);
        Ok(Layer {
            attn_norm: v(0)?,
            wq: m(1, d, d)?,
            wk: m(2, kv, d)?,
            wv: m(3, kv, d)?,
            wo: m(4, d, d)?,
            ffn_norm: v(5)?,
            w_gate: m(6, ff, d)?,
            w_up: m(7, ff, d)?,
            w_down: m(8, d, ff)?,
        })
    }

    fn layer(&self, l: usize) -> Layer<'a> {
        // Every layer was validated in `from_file`; the file is immutable.
        match self.layer_checked(l) {
            Ok(layer) => layer,
            Err(_) => unreachable!("layer {l} validated at load"),
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn file(&self) -> &ArqFile<'a> {
        &self.file
    }

    /// The tokenizer stored in the file.
    pub fn tokenizer(&self) -> Result<Tokenizer<'a>, Error> {
        let (_, t) = self.file.find("tokenizer").ok_or(bad("tokenizer", None, "missing"))?;
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

    /// The matrices a step multiplies by (the output head, then each layer's seven), as
    /// `(weight, rows, cols)`; the embedding is only read by rows, unless tied as the head.
    pub fn matrices(&self) -> impl Iterator<Item = (Weight<'a>, usize, usize)> + '_ {
        let c = self.cfg;
        let (d, kv, ff) = (c.dim, c.kv_dim(), c.ffn_dim);
        core::iter::once((self.output, c.vocab, d)).chain((0..c.n_layers).flat_map(move |l| {
            let w = self.layer(l);
            [
                (w.wq, d, d),
                (w.wk, kv, d),
                (w.wv, kv, d),
                (w.wo, d, d),
                (w.w_gate, ff, d),
                (w.w_up, ff, d),
                (w.w_down, d, ff),
            ]
        }))
    }

    /// The exact arena size, in bytes, that [`Session::new`] needs for `cfg`.
    pub fn memory_plan(&self, cfg: &SessionConfig) -> Result<usize, Error> {
        self.layout(cfg).map(|l| l.bytes()).ok_or(Error::BadConfig("arena size overflows"))
    }

    /// Scratch for multi-token products split by rows across threads (none for one thread).
    fn split_len(c: &LlamaConfig, s: &SessionConfig) -> Option<usize> {
        if s.threads > 1 {
            s.batch.checked_mul(c.dim.max(c.ffn_dim))
        } else {
            Some(0)
        }
    }

    /// The arena's buffers, in carving order (see [`Session::new`]).
    fn layout(&self, s: &SessionConfig) -> Option<Layout> {
        let c = &self.cfg;
        let b = s.batch;
        let cache = c.n_layers.checked_mul(s.ctx)?.checked_mul(c.kv_dim())?;
        Layout::new()
            .then::<f32>(cache)? // key_cache
            .then::<f32>(cache)? // value_cache
            .then::<f32>(b.checked_mul(c.dim)?)? // x
            .then::<f32>(b.checked_mul(c.dim)?)? // xb
            .then::<f32>(b.checked_mul(c.dim)?)? // xb2
            .then::<f32>(b.checked_mul(c.dim)?)? // q
            .then::<f32>(b.checked_mul(c.kv_dim())?)? // k
            .then::<f32>(b.checked_mul(c.kv_dim())?)? // v
            .then::<f32>(b.checked_mul(c.ffn_dim)?)? // hb
            .then::<f32>(b.checked_mul(c.ffn_dim)?)? // hb2
            .then::<BlockQ8>(b.checked_mul(c.dim.max(c.ffn_dim) / QK8)?)? // xq
            .then::<f32>(s.ctx.checked_mul(s.threads)?)? // att
            .then::<f32>(b.checked_mul(c.head_dim)?)? // rope
            .then::<f32>(b.checked_mul(c.vocab)?)? // logits
            .then::<f32>(Self::split_len(c, s)?) // split
    }
}

/// A running sequence: the KV cache and scratch, all in the caller's arena.
pub struct Session<'a> {
    model: &'a Model<'a>,
    cfg: SessionConfig,
    pool: &'a dyn Parallel,
    offload: Option<&'a dyn Offload>,
    pos: usize,
    key_cache: &'a mut [f32],   // (layer, ctx, kv_dim)
    value_cache: &'a mut [f32], // (layer, ctx, kv_dim)
    x: &'a mut [f32],           // (batch, dim) the residual stream
    xb: &'a mut [f32],          // (batch, dim) normed input of a sublayer
    xb2: &'a mut [f32],         // (batch, dim) attention output / sublayer output
    q: &'a mut [f32],           // (batch, dim)
    k: &'a mut [f32],           // (batch, kv_dim)
    v: &'a mut [f32],           // (batch, kv_dim)
    hb: &'a mut [f32],          // (batch, ffn_dim) gate, then the gated product
    hb2: &'a mut [f32],         // (batch, ffn_dim) up
    xq: &'a mut [BlockQ8],      // (batch, max(dim, ffn_dim) / 32) quantized activations
    att: &'a mut [f32],         // (threads, ctx) attention scores, one row per task
    rope: &'a mut [f32],        // (batch, head_dim) cos/sin per position
    logits: &'a mut [f32],      // (batch, vocab)
    split: &'a mut [f32],       // (batch, max(dim, ffn_dim)) row-split products, threads > 1
}

/// `out = x_rows · w_rowsᵀ` for weight rows `r` and all tokens of `x`/`xq`, into `out`
/// laid out (tokens, r.len()).
fn matmul_rows(
    k: &Kernels,
    w: &Weight<'_>,
    r: core::ops::Range<usize>,
    cols: usize,
    x: &[f32],
    xq: &[BlockQ8],
    out: &mut [f32],
) {
    let rows = r.len();
    match *w {
        Weight::Q8(wb) => (k.matmul_q8)(&wb[r.start * cols / QK8..r.end * cols / QK8], rows, xq, out),
        Weight::Q4(wb) => (k.matmul_q4_q8)(&wb[r.start * cols / QK4..r.end * cols / QK4], rows, xq, out),
        Weight::F32(wf) => (k.matmul_f32)(&wf[r.start * cols..r.end * cols], rows, x, out),
    }
}

/// `out (n, rows) = x (n, cols) · wᵀ`, with `x` already quantized into `xq` for q8 and
/// q4 weights. The weight rows are split across tasks, so each thread streams only its
/// share of the weights. One token writes its chunks of `out` in place; several tokens
/// compute each chunk as (n, chunk) into `scratch` and then scatter it into `out`
/// (when `scratch` is too small, as for all-token logits, the tokens are split instead).
#[allow(clippy::too_many_arguments)]
fn matmul(
    pool: &dyn Parallel,
    k: &Kernels,
    w: &Weight<'_>,
    rows: usize,
    x: &[f32],
    xq: &[BlockQ8],
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let n = out.len() / rows;
    let cols = x.len() / n;
    let tasks = pool.threads();
    if n == 1 {
        // Several chunks per thread, taken dynamically, so a late thread costs little.
        let chunk = rows.div_ceil(4 * tasks).next_multiple_of(16);
        parallel::chunks(pool, out, chunk, |i, o| {
            let r = i * chunk..i * chunk + o.len();
            matmul_rows(k, w, r, cols, x, xq, o)
        });
    } else if tasks == 1 {
        matmul_rows(k, w, 0..rows, cols, x, xq, out);
    } else if scratch.len() >= n * rows {
        let chunk = rows.div_ceil(tasks).next_multiple_of(16);
        let scratch = &mut scratch[..n * rows];
        parallel::chunks(pool, scratch, n * chunk, |i, o| {
            let r = i * chunk..i * chunk + o.len() / n;
            matmul_rows(k, w, r, cols, x, xq, o)
        });
        for (i, part) in scratch.chunks(n * chunk).enumerate() {
            let width = part.len() / n;
            for (t, src) in part.chunks_exact(width).enumerate() {
                out[t * rows + i * chunk..][..width].copy_from_slice(src);
            }
        }
    } else {
        let per_task = n.div_ceil(tasks);
        parallel::chunks(pool, out, per_task * rows, |i, o| {
            let t = i * per_task..i * per_task + o.len() / rows;
            let xt = &x[t.start * cols..t.end * cols];
            matmul_rows(k, w, 0..rows, cols, xt, &xq[t.start * cols / QK8..t.end * cols / QK8], o)
        });
    }
}

/// `out_j = x · w_jᵀ` for several weights over the same input, quantizing it once. With
/// an offload and only q8/q4 weights, the products run there on the same quantized input.
fn linear(
    pool: &dyn Parallel,
    k: &Kernels,
    offload: Option<&dyn Offload>,
    x: &[f32],
    xq: &mut [BlockQ8],
    scratch: &mut [f32],
    ws: &mut [(&Weight<'_>, usize, &mut [f32])],
) -> Result<(), Error> {
    let xq = &mut xq[..x.len() / QK8];
    let quantized = |w: &Weight<'_>| matches!(w, Weight::Q8(_) | Weight::Q4(_));
    if ws.iter().any(|(w, _, _)| quantized(w)) {
        (k.quantize_q8)(x, xq);
    }
    if let Some(off) = offload.filter(|_| ws.iter().all(|(w, _, _)| quantized(w))) {
        let n = ws[0].2.len() / ws[0].1;
        return off.matmul(xq, n, ws);
    }
    for (w, rows, out) in ws.iter_mut() {
        matmul(pool, k, w, *rows, x, xq, out, scratch);
    }
    Ok(())
}

/// Causal attention of one query head over `len` cached positions: `out = softmax(q·Kᵀ
/// * scale) · V`, reading head `kv_off..kv_off + hd` of each cached row.
#[allow(clippy::too_many_arguments)]
fn attend(
    k: &Kernels,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    kv_dim: usize,
    kv_off: usize,
    len: usize,
    scale: f32,
    att: &mut [f32],
    out: &mut [f32],
) {
    let hd = q.len();
    let att = &mut att[..len];
    for (j, a) in att.iter_mut().enumerate() {
        *a = (k.dot_f32)(q, &keys[j * kv_dim + kv_off..][..hd]) * scale;
    }
    math::softmax(att);
    out.fill(0.0);
    for (j, &a) in att.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&values[j * kv_dim + kv_off..][..hd]) {
            *o += a * v;
        }
    }
}

impl<'a> Session<'a> {
    /// Carves the KV cache and scratch from `arena`, which must hold at least
    /// [`Model::memory_plan`] bytes.
    pub fn new(model: &'a Model<'a>, arena: &'a mut [u8], cfg: SessionConfig) -> Result<Self, Error> {
        if cfg.ctx == 0 || cfg.batch == 0 || cfg.threads == 0 {
            return Err(Error::BadConfig("ctx, batch and threads must be at least 1"));
        }
        let need = model.memory_plan(&cfg)?;
        let c = model.cfg;
        let b = cfg.batch;
        let cache = c.n_layers * cfg.ctx * c.kv_dim();
        let mut a = Arena::new(arena, need)?;
        Ok(Session {
            model,
            cfg,
            pool: &Serial,
            offload: None,
            pos: 0,
            key_cache: a.take(cache)?,
            value_cache: a.take(cache)?,
            x: a.take(b * c.dim)?,
            xb: a.take(b * c.dim)?,
            xb2: a.take(b * c.dim)?,
            q: a.take(b * c.dim)?,
            k: a.take(b * c.kv_dim())?,
            v: a.take(b * c.kv_dim())?,
            hb: a.take(b * c.ffn_dim)?,
            hb2: a.take(b * c.ffn_dim)?,
            xq: a.take(b * c.dim.max(c.ffn_dim) / QK8)?,
            att: a.take(cfg.ctx * cfg.threads)?,
            rope: a.take(b * c.head_dim)?,
            logits: a.take(b * c.vocab)?,
            split: a.take(Model::split_len(&c, &cfg).unwrap_or(0))?,
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

    /// Tokens in the KV cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Forgets the sequence (the cache is overwritten as new tokens arrive).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Rewinds to `pos` tokens (keeps the cached prefix).
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
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
        for chunk in tokens.chunks(self.cfg.batch) {
            self.forward(chunk, false)?;
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
        if self.pos + tokens.len() > self.cfg.ctx {
            return Err(Error::ContextFull { ctx: self.cfg.ctx });
        }
        Ok(())
    }

    /// One batched pass over `tokens` (at most `batch`) at positions `pos..`. Fills
    /// `logits` for every token when `all_logits`, else for the last one (row 0).
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<(), Error> {
        let n = tokens.len();
        if n == 0 || n > self.cfg.batch {
            return Err(Error::BadConfig("forward takes 1..=batch tokens"));
        }
        self.check_tokens(tokens)?;
        let model = self.model;
        let c = model.cfg;
        let kern = model.kernels;
        let pool = self.pool;
        let off = self.offload;
        let (dim, kv_dim, hd, ff) = (c.dim, c.kv_dim(), c.head_dim, c.ffn_dim);
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let pos0 = self.pos;

        for (t, &tok) in tokens.iter().enumerate() {
            model.embed.row_into(tok as usize, dim, &mut self.x[t * dim..(t + 1) * dim]);
            math::rope_table(&mut self.rope[t * hd..(t + 1) * hd], pos0 + t, c.rope_base);
        }
        let x = &mut self.x[..n * dim];

        for l in 0..c.n_layers {
            let w = model.layer(l);

            // Attention: xb = norm(x); q, k, v = xb·Wqᵀ, xb·Wkᵀ, xb·Wvᵀ; rotate q and k.
            for (o, i) in self.xb.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                math::rmsnorm(o, i, w.attn_norm, c.rms_eps);
            }
            linear(
                pool,
                kern,
                off,
                &self.xb[..n * dim],
                self.xq,
                self.split,
                &mut [
                    (&w.wq, dim, &mut self.q[..n * dim]),
                    (&w.wk, kv_dim, &mut self.k[..n * kv_dim]),
                    (&w.wv, kv_dim, &mut self.v[..n * kv_dim]),
                ],
            )?;
            let cache_l = l * self.cfg.ctx * kv_dim;
            for t in 0..n {
                let table = &self.rope[t * hd..(t + 1) * hd];
                for h in self.q[t * dim..(t + 1) * dim].chunks_exact_mut(hd) {
                    math::rope(h, table);
                }
                for h in self.k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd) {
                    math::rope(h, table);
                }
                let at = cache_l + (pos0 + t) * kv_dim;
                self.key_cache[at..at + kv_dim].copy_from_slice(&self.k[t * kv_dim..(t + 1) * kv_dim]);
                self.value_cache[at..at + kv_dim].copy_from_slice(&self.v[t * kv_dim..(t + 1) * kv_dim]);
            }

            // Causal attention of each token over the cache up to its own position: one
            // token splits its heads across tasks, several tokens split the tokens.
            let keys = &self.key_cache[cache_l..cache_l + self.cfg.ctx * kv_dim];
            let values = &self.value_cache[cache_l..cache_l + self.cfg.ctx * kv_dim];
            let q = &self.q[..n * dim];
            let ctx = self.cfg.ctx;
            let tasks = pool.threads();
            if n == 1 {
                let heads_per_task = c.n_heads.div_ceil(tasks);
                parallel::chunks2(pool, &mut self.xb2[..dim], heads_per_task * hd, self.att, ctx, |i, out, att| {
                    for (j, o) in out.chunks_exact_mut(hd).enumerate() {
                        let h = i * heads_per_task + j;
                        let qh = &q[h * hd..(h + 1) * hd];
                        attend(kern, qh, keys, values, kv_dim, (h / group) * hd, pos0 + 1, scale, att, o);
                    }
                });
            } else {
                let per_task = n.div_ceil(tasks);
                parallel::chunks2(pool, &mut self.xb2[..n * dim], per_task * dim, self.att, ctx, |i, out, att| {
                    for (j, o) in out.chunks_exact_mut(dim).enumerate() {
                        let t = i * per_task + j;
                        for (h, oh) in o.chunks_exact_mut(hd).enumerate() {
                            let qh = &q[t * dim + h * hd..t * dim + (h + 1) * hd];
                            attend(kern, qh, keys, values, kv_dim, (h / group) * hd, pos0 + t + 1, scale, att, oh);
                        }
                    }
                });
            }
            let wo = &mut [(&w.wo, dim, &mut self.xb[..n * dim])];
            linear(pool, kern, off, &self.xb2[..n * dim], self.xq, self.split, wo)?;
            for (xi, &o) in x.iter_mut().zip(self.xb.iter()) {
                *xi += o;
            }

            // MLP: x += (silu(xb·Wgateᵀ) * xb·Wupᵀ)·Wdownᵀ with xb = norm(x).
            for (o, i) in self.xb.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
                math::rmsnorm(o, i, w.ffn_norm, c.rms_eps);
            }
            linear(
                pool,
                kern,
                off,
                &self.xb[..n * dim],
                self.xq,
                self.split,
                &mut [(&w.w_gate, ff, &mut self.hb[..n * ff]), (&w.w_up, ff, &mut self.hb2[..n * ff])],
            )?;
            math::swiglu(&mut self.hb[..n * ff], &self.hb2[..n * ff]);
            linear(
                pool,
                kern,
                off,
                &self.hb[..n * ff],
                self.xq,
                self.split,
                &mut [(&w.w_down, dim, &mut self.xb[..n * dim])],
            )?;
            for (xi, &o) in x.iter_mut().zip(self.xb.iter()) {
                *xi += o;
            }
        }

        // Head: logits = norm(x)·Wᵀ for every row, or only the last.
        let rows = if all_logits { 0..n } else { n - 1..n };
        let m = rows.len();
        for (o, i) in self.xb.chunks_exact_mut(dim).zip(x[rows.start * dim..rows.end * dim].chunks_exact(dim)) {
            math::rmsnorm(o, i, model.output_norm, c.rms_eps);
        }
        let logits = &mut self.logits[..m * c.vocab];
        linear(pool, kern, off, &self.xb[..m * dim], self.xq, self.split, &mut [(&model.output, c.vocab, logits)])?;
        self.pos += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_tensor_names() {
        assert!(is_layer_tensor("blk.0.attn_q", 0, "attn_q"));
        assert!(is_layer_tensor("blk.12.ffn_up", 12, "ffn_up"));
        assert!(!is_layer_tensor("blk.012.ffn_up", 12, "ffn_up"));
        assert!(!is_layer_tensor("blk.1.attn_q", 0, "attn_q"));
        assert!(!is_layer_tensor("blk.0.attn_qq", 0, "attn_q"));
        assert!(!is_layer_tensor("output", 0, "attn_q"));
    }
}
