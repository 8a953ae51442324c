//! The attention kernels of both x86 tiers (8-lane ymm code; avx512vnni compiles it with
//! its own features): [`scalar::attn_scores`] and [`scalar::attn_values`] bit for bit.
//!
//! - Scores: 4 keys at a time against one query head, each key's 8 lanes in its own
//!   register (element `d` in lane `d % 8`, `acc + q * k` rounded twice, as
//!   `dot_f32`), then the 4 registers folded together by [`reduce8x4`], which adds in
//!   `reduce8`'s order. Where one call per score spent most of its time in the fold and
//!   the call, the 4 folds share their shuffles.
//! - Values: up to 4 heads x 16 elements of the output stay in registers across all the
//!   rows (one load of each value row serves every head that shares it), where the
//!   scalar loop re-reads and re-writes the output per row. Each element still gets
//!   `o + w * v` row after row, in order.
//!
//! Head widths that are not a multiple of 8 go to the scalar code.

use core::arch::x86_64::*;

use super::{load8, reduce8};
use crate::kernels::{scalar, Strided};

/// `v[at..at + 8]` as a ymm register.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn at8(v: &[f32], at: usize) -> __m256 {
    load8(v[at..at + 8].try_into().expect("8 floats"))
}

/// [`scalar::attn_scores`], bit for bit.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn scores(q: &[f32], keys: Strided<'_>, out: &mut [f32], out_stride: usize) {
    let hd = keys.width();
    if !hd.is_multiple_of(8) || hd == 0 {
        return scalar::attn_scores(q, keys, out, out_stride);
    }
    let (n, g) = (keys.rows(), hd / 8);
    let (qs, _) = q.as_chunks::<8>();
    let m = qs.len() / g;
    let mut i = 0;
    while i + 4 <= n {
        let k: [&[[f32; 8]]; 4] = core::array::from_fn(|j| &keys.row(i + j).as_chunks::<8>().0[..g]);
        let mut h = 0;
        // Two heads at a time: each loaded key group serves 8 products.
        while h + 2 <= m {
            let (qa, qb) = (&qs[h * g..][..g], &qs[(h + 1) * g..][..g]);
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            for d in 0..g {
                let (a, b) = (load8(&qa[d]), load8(&qb[d]));
                for (j, kj) in k.iter().enumerate() {
                    let kv = load8(&kj[d]);
                    acc[0][j] = _mm256_add_ps(acc[0][j], _mm256_mul_ps(a, kv));
                    acc[1][j] = _mm256_add_ps(acc[1][j], _mm256_mul_ps(b, kv));
                }
            }
            store4(&mut out[h * out_stride + i..][..4], reduce8x4(acc[0]));
            store4(&mut out[(h + 1) * out_stride + i..][..4], reduce8x4(acc[1]));
            h += 2;
        }
        if h < m {
            let qa = &qs[h * g..][..g];
            let mut acc = [_mm256_setzero_ps(); 4];
            for d in 0..g {
                let a = load8(&qa[d]);
                for (j, kj) in k.iter().enumerate() {
                    acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(a, load8(&kj[d])));
                }
            }
            store4(&mut out[h * out_stride + i..][..4], reduce8x4(acc));
        }
        i += 4;
    }
    for i in i..n {
        let key = &keys.row(i).as_chunks::<8>().0[..g];
        for h in 0..m {
            let qa = &qs[h * g..][..g];
            let mut acc = _mm256_setzero_ps();
            for d in 0..g {
                acc = _mm256_add_ps(acc, _mm256_mul_ps(load8(&qa[d]), load8(&key[d])));
            }
            out[h * out_stride + i] = reduce8(acc);
        }
    }
}

/// Stores 4 lanes into `o`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn store4(o: &mut [f32], r: __m128) {
    let o: &mut [f32; 4] = o.try_into().expect("4 floats");
    // SAFETY: `o` is 4 writable floats; `storeu` needs no alignment.
    unsafe { _mm_storeu_ps(o.as_mut_ptr(), r) };
}

/// Four `reduce8`s at once: lane `j` of the result is `((l0+l4)+(l2+l6)) +
/// ((l1+l5)+(l3+l7))` of `acc[j]`. The halves are added per register, the 4 registers'
/// 4-lane sums transposed, and then the same two adds run for all four.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn reduce8x4(acc: [__m256; 4]) -> __m128 {
    let half = |v: __m256| _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let [a0, a1, a2, a3] = acc.map(half);
    // Transpose: t_m holds lane m (l_m + l_{m+4}) of each of the 4 keys.
    let (u0, u1) = (_mm_unpacklo_ps(a0, a1), _mm_unpackhi_ps(a0, a1));
    let (u2, u3) = (_mm_unpacklo_ps(a2, a3), _mm_unpackhi_ps(a2, a3));
    let (t0, t1) = (_mm_movelh_ps(u0, u2), _mm_movehl_ps(u2, u0));
    let (t2, t3) = (_mm_movelh_ps(u1, u3), _mm_movehl_ps(u3, u1));
    _mm_add_ps(_mm_add_ps(t0, t2), _mm_add_ps(t1, t3))
}

/// [`scalar::attn_values`], bit for bit.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn values(w: &[f32], w_stride: usize, values: Strided<'_>, out: &mut [f32]) {
    let hd = values.width();
    if !hd.is_multiple_of(8) || hd == 0 {
        return scalar::attn_values(w, w_stride, values, out);
    }
    let m = out.len() / hd;
    if m < 8 {
        return values_by_rows(w, w_stride, values, out);
    }
    let mut h = 0;
    while h < m {
        let heads = (m - h).min(4);
        let mut d = 0;
        while d < hd {
            let o = &mut out[h * hd..(h + heads) * hd];
            let w = &w[h * w_stride..];
            match (heads, hd - d >= 16) {
                (4, true) => values_tile::<4, 2>(w, w_stride, values, o, d),
                (3, true) => values_tile::<3, 2>(w, w_stride, values, o, d),
                (2, true) => values_tile::<2, 2>(w, w_stride, values, o, d),
                (1, true) => values_tile::<1, 2>(w, w_stride, values, o, d),
                (4, false) => values_tile::<4, 1>(w, w_stride, values, o, d),
                (3, false) => values_tile::<3, 1>(w, w_stride, values, o, d),
                (2, false) => values_tile::<2, 1>(w, w_stride, values, o, d),
                _ => values_tile::<1, 1>(w, w_stride, values, o, d),
            }
            d += 8 * if hd - d >= 16 { 2 } else { 1 };
        }
        h += heads;
    }
}

/// The values for a few heads (one token's, decoding): row by row, each row read once
/// and added into every head's output in L1. A long cache is read from memory once, in
/// order, where a register tile would read it once per slice of the output.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn values_by_rows(w: &[f32], w_stride: usize, values: Strided<'_>, out: &mut [f32]) {
    let (hd, n) = (values.width(), values.rows());
    let g = hd / 8;
    let (outs, _) = out.as_chunks_mut::<8>();
    for i in 0..n {
        let (row, _) = values.row(i).as_chunks::<8>();
        let row = &row[..g];
        for (h, oh) in outs.chunks_exact_mut(g).enumerate() {
            let wi = _mm256_set1_ps(w[h * w_stride + i]);
            for (o, v) in oh.iter_mut().zip(row) {
                let sum = _mm256_add_ps(load8(o), _mm256_mul_ps(wi, load8(v)));
                // SAFETY: `o` is 8 writable floats; `storeu` needs no alignment.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr(), sum) };
            }
        }
    }
}

/// Elements `d..d + 8 * V` of `H` heads' outputs (`out` holds the `H` heads), kept in
/// registers while every row of `values` is added.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn values_tile<const H: usize, const V: usize>(
    w: &[f32],
    w_stride: usize,
    values: Strided<'_>,
    out: &mut [f32],
    d: usize,
) {
    let (hd, n) = (values.width(), values.rows());
    let mut acc = [[_mm256_setzero_ps(); V]; H];
    for (hh, a) in acc.iter_mut().enumerate() {
        for (j, r) in a.iter_mut().enumerate() {
            *r = at8(out, hh * hd + d + 8 * j);
        }
    }
    let w: [&[f32]; H] = core::array::from_fn(|hh| &w[hh * w_stride..][..n]);
    for i in 0..n {
        let row = &values.row(i)[d..d + 8 * V];
        let v: [__m256; V] = core::array::from_fn(|j| at8(row, 8 * j));
        for (a, wh) in acc.iter_mut().zip(&w) {
            let wi = _mm256_set1_ps(wh[i]);
            for (r, vj) in a.iter_mut().zip(&v) {
                *r = _mm256_add_ps(*r, _mm256_mul_ps(wi, *vj));
            }
        }
    }
    for (hh, a) in acc.iter().enumerate() {
        for (j, r) in a.iter().enumerate() {
            let o = &mut out[hh * hd + d + 8 * j..hh * hd + d + 8 * j + 8];
            // SAFETY: `o` is 8 writable floats; `storeu` needs no alignment.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *r) };
        }
    }
}

/// [`math::softmax_rows`](crate::math::softmax_rows), compiled with the tier's vector
/// width: the same scalar operations per element, so the same floats.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn softmax_rows(x: &mut [f32], rows: usize, n: usize, stride: usize) {
    crate::math::softmax_rows(x, rows, n, stride)
}
