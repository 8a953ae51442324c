//! The scalar kernels: the contract every SIMD tier must meet bit for bit.
//!
//! Summation order is part of the contract, so that every ISA gives identical floats
//! (and so identical tokens for a seed): a dot product keeps 8 partial sums, element
//! (or block) `i` goes to lane `i % 8`, and the lanes are reduced by [`reduce8`]. No
//! fused multiply-add anywhere: each product is rounded, then added.

use super::Strided;
use crate::quant::{BlockQ4, BlockQ8, QK8};

/// The fixed reduction of the 8 lanes: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`,
/// the order a 256-bit register folds in halves.
#[inline]
pub fn reduce8(l: &[f32; 8]) -> f32 {
    let a = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let b = [a[0] + a[2], a[1] + a[3]];
    b[0] + b[1]
}

/// Exact integer dot product of two blocks' quants (|result| <= 32 * 127 * 127).
#[inline]
pub fn block_isum(a: &BlockQ8, b: &BlockQ8) -> i32 {
    a.qs.iter().zip(&b.qs).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// q8 · q8 over whole rows: block `j` contributes `(isum_j as f32) * (d_a_j * d_b_j)`
/// to lane `j % 8`.
pub fn dot_q8(a: &[BlockQ8], b: &[BlockQ8]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 8];
    for (j, (x, y)) in a.iter().zip(b).enumerate() {
        lanes[j % 8] += block_isum(x, y) as f32 * (x.scale() * y.scale());
    }
    reduce8(&lanes)
}

/// The exact integer parts of a q4 · q8 block pair: `(sum q_i * x_i, sum x_i)` with the
/// weight quants `q_i` in [0, 15] (|first| <= 32 * 15 * 128, |second| <= 32 * 128).
#[inline]
pub fn block_isum_q4(w: &BlockQ4, x: &BlockQ8) -> (i32, i32) {
    let (lo, hi) = x.qs.split_at(QK8 / 2);
    let (mut isum, mut xsum) = (0i32, 0i32);
    for ((&b, &xl), &xh) in w.qs.iter().zip(lo).zip(hi) {
        isum += (b & 0x0f) as i32 * xl as i32 + (b >> 4) as i32 * xh as i32;
        xsum += xl as i32 + xh as i32;
    }
    (isum, xsum)
}

/// q4 weights · q8 activations over whole rows. Block `j`, with weight scale `d_w`,
/// minimum `m_w` and activation scale `d_x`, contributes
/// `(isum_j as f32) * (d_w * d_x) + (xsum_j as f32) * (m_w * d_x)` to lane `j % 8`:
/// each product rounded, then the two terms added, then the sum added to the lane. This
/// is `sum_i (q_i * d_w + m_w) * (x_i * d_x)` regrouped around the exact integer sums.
pub fn dot_q4_q8(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut lanes = [0.0f32; 8];
    for (j, (a, b)) in w.iter().zip(x).enumerate() {
        let (isum, xsum) = block_isum_q4(a, b);
        let dx = b.scale();
        lanes[j % 8] += isum as f32 * (a.scale() * dx) + xsum as f32 * (a.min() * dx);
    }
    reduce8(&lanes)
}

/// f32 · f32: element `i` contributes `a_i * b_i` to lane `i % 8`.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 8];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        lanes[i % 8] += x * y;
    }
    reduce8(&lanes)
}

/// `out[t * rows + r] = dot_q8(w_row_r, x_row_t)` for a weight matrix of `rows` rows of
/// `k / 32` blocks and `n = x.len() / (k / 32)` activation rows.
pub fn matmul_q8(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let kb = w.len() / rows.max(1);
    for (t, xt) in x.chunks_exact(kb).enumerate() {
        for (r, wr) in w.chunks_exact(kb).enumerate() {
            out[t * rows + r] = dot_q8(wr, xt);
        }
    }
}

/// `out[t * rows + r] = dot_q4_q8(w_row_r, x_row_t)` for q4 weights of `rows` rows of
/// `k / 32` blocks and `n = x.len() / (k / 32)` q8 activation rows.
pub fn matmul_q4_q8(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let kb = w.len() / rows.max(1);
    for (t, xt) in x.chunks_exact(kb).enumerate() {
        for (r, wr) in w.chunks_exact(kb).enumerate() {
            out[t * rows + r] = dot_q4_q8(wr, xt);
        }
    }
}

/// `out[t * rows + r] = dot_f32(w_row_r, x_row_t)`, f32 weights of `rows` rows of `k`.
pub fn matmul_f32(w: &[f32], rows: usize, x: &[f32], out: &mut [f32]) {
    let k = w.len() / rows.max(1);
    for (t, xt) in x.chunks_exact(k).enumerate() {
        for (r, wr) in w.chunks_exact(k).enumerate() {
            out[t * rows + r] = dot_f32(wr, xt);
        }
    }
}

/// Attention scores: `out[h * out_stride + i] = dot_f32(q_h, key_i)` for the query
/// heads `q_h = q[h * hd..(h + 1) * hd]` (`hd = keys.width()`) and the rows `key_i` of
/// `keys`. Each score is [`dot_f32`]'s, so a tier may block heads and keys as it likes.
pub fn attn_scores(q: &[f32], keys: Strided<'_>, out: &mut [f32], out_stride: usize) {
    let hd = keys.width();
    for (h, qh) in q.chunks_exact(hd).enumerate() {
        for i in 0..keys.rows() {
            out[h * out_stride + i] = dot_f32(qh, keys.row(i));
        }
    }
}

/// Attention-weighted values: `out_h += sum_i w[h * w_stride + i] * value_i` for each
/// head `h` (`out_h = out[h * hd..(h + 1) * hd]`, `hd = values.width()`), the rows in
/// order and each step rounded as `o + (w * v)`: element by element, the sum a loop over
/// positions builds, so accumulating a span in pieces gives the same floats.
pub fn attn_values(w: &[f32], w_stride: usize, values: Strided<'_>, out: &mut [f32]) {
    let hd = values.width();
    for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
        for i in 0..values.rows() {
            let wi = w[h * w_stride + i];
            for (o, &v) in oh.iter_mut().zip(values.row(i)) {
                *o += wi * v;
            }
        }
    }
}

/// Activation quantization: exactly [`crate::quant::quantize_row_q8`].
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK8);
    crate::quant::quantize_row_q8(x, out)
}

/// f16 values (as bits) to f32, exactly: an f16 KV cache's rows, read back.
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(h).to_f32();
    }
}

/// f32 values to the nearest f16 (ties to even; past 65504, infinity), as bits: an f16
/// KV cache's rows, written.
pub fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(x).to_bits();
    }
}
