//! What every model shares: a weight matrix in one of the file's dtypes ([`Weight`]), a
//! linear layer (`Linear`), the one place a weight's dtype picks its kernel
//! (`Weight::matmul_rows`), the products split across threads or sent to an
//! [`Offload`] device, and the shape and dtype checks of the tensors behind them.

use crate::error::{bad, Error};
use crate::format::keys::LayerNaming;
use crate::format::{Dtype, TensorView};
use crate::kernels::Kernels;
use crate::parallel::{self, Parallel};
use crate::quant::{BlockQ4, BlockQ8, QK4, QK8};

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

    /// Whether the products take the activations quantized to q8 (q8 and q4 weights).
    pub(crate) fn is_quantized(&self) -> bool {
        matches!(self, Weight::Q8(_) | Weight::Q4(_))
    }

    /// Row `r` (of length `cols`) as f32, into `out`.
    pub(crate) fn row_into(&self, r: usize, cols: usize, out: &mut [f32]) {
        match *self {
            Weight::Q8(w) => crate::quant::dequantize_row_q8(&w[r * cols / QK8..(r + 1) * cols / QK8], out),
            Weight::Q4(w) => crate::quant::dequantize_row_q4(&w[r * cols / QK4..(r + 1) * cols / QK4], out),
            Weight::F32(w) => out.copy_from_slice(&w[r * cols..(r + 1) * cols]),
        }
    }

    /// `out = x · w_rowsᵀ` for weight rows `r` (of `cols` columns) and all tokens of
    /// `x`, into `out` laid out (tokens, r.len()): the one dtype-to-kernel dispatch. q8
    /// and q4 weights read `xq`, `x` quantized by [`Kernels::quantize_q8`]; f32 weights
    /// read `x`.
    pub(crate) fn matmul_rows(
        &self,
        k: &Kernels,
        r: core::ops::Range<usize>,
        cols: usize,
        x: &[f32],
        xq: &[BlockQ8],
        out: &mut [f32],
    ) {
        let rows = r.len();
        match *self {
            Weight::Q8(wb) => (k.matmul_q8)(&wb[r.start * cols / QK8..r.end * cols / QK8], rows, xq, out),
            Weight::Q4(wb) => (k.matmul_q4_q8)(&wb[r.start * cols / QK4..r.end * cols / QK4], rows, xq, out),
            Weight::F32(wf) => (k.matmul_f32)(&wf[r.start * cols..r.end * cols], rows, x, out),
        }
    }
}

/// A linear layer: `y = x Wᵀ (+ b)`.
#[derive(Clone, Copy)]
pub(crate) struct Linear<'a> {
    pub w: Weight<'a>,
    pub b: Option<&'a [f32]>,
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
            w.matmul_rows(k, r, cols, x, xq, o)
        });
    } else if tasks == 1 {
        w.matmul_rows(k, 0..rows, cols, x, xq, out);
    } else if scratch.len() >= n * rows {
        let chunk = rows.div_ceil(tasks).next_multiple_of(16);
        let scratch = &mut scratch[..n * rows];
        parallel::chunks(pool, scratch, n * chunk, |i, o| {
            let r = i * chunk..i * chunk + o.len() / n;
            w.matmul_rows(k, r, cols, x, xq, o)
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
            w.matmul_rows(k, 0..rows, cols, xt, &xq[t.start * cols / QK8..t.end * cols / QK8], o)
        });
    }
}

/// `out_j = x · w_jᵀ` for several weights over the same input, quantizing it once. With
/// an offload and only q8/q4 weights, the products run there on the same quantized input.
pub(crate) fn linear(
    pool: &dyn Parallel,
    k: &Kernels,
    offload: Option<&dyn Offload>,
    x: &[f32],
    xq: &mut [BlockQ8],
    scratch: &mut [f32],
    ws: &mut [(&Weight<'_>, usize, &mut [f32])],
) -> Result<(), Error> {
    let xq = &mut xq[..x.len() / QK8];
    if ws.iter().any(|(w, _, _)| w.is_quantized()) {
        (k.quantize_q8)(x, xq);
    }
    if let Some(off) = offload.filter(|_| ws.iter().all(|(w, _, _)| w.is_quantized())) {
        let n = ws[0].2.len() / ws[0].1;
        return off.matmul(xq, n, ws);
    }
    for (w, rows, out) in ws.iter_mut() {
        matmul(pool, k, w, *rows, x, xq, out, scratch);
    }
    Ok(())
}

/// Adds `bias` to every row of `out` (rows of `bias.len()`).
pub(crate) fn add_bias(out: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(b.len()) {
            for (o, &bi) in row.iter_mut().zip(b) {
                *o += bi;
            }
        }
    }
}

/// Tensor `t` as a `rows` x `cols` weight matrix (q8, q4 or f32); errors name it as
/// `naming`, `role` and `layer` say.
pub(crate) fn matrix<'a>(
    t: &TensorView<'a>,
    naming: LayerNaming,
    role: &'static str,
    layer: Option<u32>,
    rows: usize,
    cols: usize,
) -> Result<Weight<'a>, Error> {
    if t.shape.dims() != [rows as u64, cols as u64] {
        return Err(bad(naming, role, layer, "shape does not match the hyperparameters"));
    }
    Weight::from_view(t).ok_or(bad(naming, role, layer, "dtype must be q8, q4 or f32"))
}

/// Tensor `t` as an f32 vector of `n` values (a norm's weight, a bias).
pub(crate) fn vector<'a>(
    t: &TensorView<'a>,
    naming: LayerNaming,
    role: &'static str,
    layer: Option<u32>,
    n: usize,
) -> Result<&'a [f32], Error> {
    if t.shape.dims() != [n as u64] {
        return Err(bad(naming, role, layer, "shape does not match the hyperparameters"));
    }
    t.as_f32().ok_or(bad(naming, role, layer, "dtype must be f32"))
}
