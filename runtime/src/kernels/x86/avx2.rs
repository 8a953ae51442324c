//! The AVX2 tier (with F16C for the block scales): bit-exact with [`scalar`].
//!
//! q8 blocks: `vpsignb` + `vpmaddubsw` + `vpmaddwd` give 8 i32 partial sums per block
//! pair, `vphaddd` folds 8 blocks into one register with block `j` in lane `j`, and the
//! float part is the scalar one done 8 lanes at a time (see the [`super`] docs).
//!
//! q4 weights x q8 activations: a 16-byte broadcast load, `vpsrlvd` by 0 (low 128 bits)
//! or 4 (high 128 bits) and an `and 0x0f` unpack a block's 32 quants in element order;
//! `vpmaddubsw` takes them as the unsigned operand directly (no sign trick: pair sums
//! stay within 2 * 15 * 128), `vpmaddubsw` with ones gives the activation sums the
//! minimum needs, and both fold like the q8 sums.

use core::arch::x86_64::*;

use half::f16;

use crate::kernels::{scalar, Kernels};
use crate::quant::{BlockQ4, BlockQ8, QK8};

/// How far ahead of the weights being read the one-token matmuls prefetch, in bytes:
/// without it the hardware prefetchers leave a core well short of its streaming
/// bandwidth, as each cache line waits for the math on the previous ones.
const PREFETCH_AHEAD: usize = 8192;
/// Weight rows per matmul tile.
const TILE_ROWS: usize = 4;
/// Activation rows (tokens) per q8 matmul tile.
const TILE_TOKENS_Q8: usize = 2;
/// Activation rows (tokens) per q4 matmul tile.
const TILE_TOKENS_Q4: usize = 2;
/// Activation rows (tokens) per f32 matmul tile: 4 x 2 accumulators plus 6 loads fit
/// the 16 ymm registers.
const TILE_TOKENS_F32: usize = 2;

/// This tier's table. Only [`crate::kernels`] hands it out, and only after
/// [`detected`] returned true.
pub(in crate::kernels) static KERNELS: Kernels = Kernels {
    name: "avx2",
    dot_q8: safe::dot_q8,
    dot_f32: safe::dot_f32,
    matmul_q8: safe::matmul_q8,
    matmul_f32: safe::matmul_f32,
    quantize_q8: safe::quantize_q8,
    dot_q4_q8: safe::dot_q4_q8,
    matmul_q4_q8: safe::matmul_q4_q8,
};

/// Whether this CPU (std: detected at run time; no_std: enabled at compile time) runs
/// the kernels of this module.
pub(in crate::kernels) fn detected() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(target_feature = "avx2", target_feature = "f16c"))
    }
}

/// The safe entry points the table holds.
mod safe {
    use crate::quant::{BlockQ4, BlockQ8};

    pub fn dot_q8(a: &[BlockQ8], b: &[BlockQ8]) -> f32 {
        // SAFETY: this fn is only reachable through `KERNELS`, which the dispatch in
        // `kernels` hands out only after `detected()` found avx2 and f16c.
        unsafe { super::dot_q8(a, b) }
    }

    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as in `dot_q8`: installed only after avx2 and f16c were detected.
        unsafe { super::dot_f32(a, b) }
    }

    pub fn matmul_q8(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
        // SAFETY: as in `dot_q8`: installed only after avx2 and f16c were detected.
        unsafe { super::matmul_q8(w, rows, x, out) }
    }

    pub fn matmul_f32(w: &[f32], rows: usize, x: &[f32], out: &mut [f32]) {
        // SAFETY: as in `dot_q8`: installed only after avx2 and f16c were detected.
        unsafe { super::matmul_f32(w, rows, x, out) }
    }

    pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
        // SAFETY: as in `dot_q8`: installed only after avx2 and f16c were detected.
        unsafe { super::quantize_q8(x, out) }
    }

    pub fn dot_q4_q8(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
        // SAFETY: as in `dot_q8`: installed only after avx2 and f16c were detected.
        unsafe { super::dot_q4_q8(w, x) }
    }

    pub fn matmul_q4_q8(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
        // SAFETY: as in `dot_q8`: installed only after avx2 and f16c were detected.
        unsafe { super::matmul_q4_q8(w, rows, x, out) }
    }
}

// ---------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------

/// [`scalar::dot_q8`], bit for bit, when `b`'s quants are in [-127, 127] (as the
/// quantizer makes them; `a` may hold any i8).
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn dot_q8(a: &[BlockQ8], b: &[BlockQ8]) -> f32 {
    let n = a.len().min(b.len());
    let (ga, ta) = a[..n].as_chunks::<8>();
    let (gb, tb) = b[..n].as_chunks::<8>();
    let mut acc = _mm256_setzero_ps();
    for (wa, xb) in ga.iter().zip(gb) {
        acc = accumulate(acc, isum8(wa, xb), scales8(wa), scales8(xb));
    }
    if !ta.is_empty() {
        acc = accumulate(acc, isum_tail(ta, tb), scales_tail(ta), scales_tail(tb));
    }
    reduce8(acc)
}

/// [`scalar::matmul_q8`], bit for bit, when `x`'s quants are in [-127, 127] (as the
/// quantizer makes them; `w` may hold any i8): tiles of
/// 4 weight rows x 2 tokens, each output equal to [`dot_q8`] of its row and token.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn matmul_q8(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let Some(shape) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        // Shapes outside the tiled path (empty, ragged, short `out`): the contract's
        // own behaviour, whatever it is.
        return scalar::matmul_q8(w, rows, x, out);
    };
    let mut r0 = 0;
    while r0 + TILE_ROWS <= rows {
        q8_rows::<TILE_ROWS>(w, x, out, shape, r0);
        r0 += TILE_ROWS;
    }
    match rows - r0 {
        1 => q8_rows::<1>(w, x, out, shape, r0),
        2 => q8_rows::<2>(w, x, out, shape, r0),
        3 => q8_rows::<3>(w, x, out, shape, r0),
        _ => {}
    }
}

/// [`scalar::dot_q4_q8`], bit for bit, for any i8 activation quants.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn dot_q4_q8(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    let n = w.len().min(x.len());
    let (gw, tw) = w[..n].as_chunks::<8>();
    let (gx, tx) = x[..n].as_chunks::<8>();
    let mut acc = _mm256_setzero_ps();
    for (wg, xg) in gw.iter().zip(gx) {
        let (dw, mw) = scales_q4(wg);
        acc = accumulate_q4(acc, isum_q4(&unpack_q4(wg), xg), xsum(xg), dw, mw, scales8(xg));
    }
    if !tw.is_empty() {
        let (dw, mw) = scales_q4(tw);
        acc = accumulate_q4(acc, isum_q4(&unpack_q4(tw), tx), xsum(tx), dw, mw, scales_tail(tx));
    }
    reduce8(acc)
}

/// [`scalar::matmul_q4_q8`], bit for bit, for any i8 activation quants: tiles of
/// 4 weight rows x 2 tokens, each output equal to [`dot_q4_q8`] of its row and token.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn matmul_q4_q8(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let Some(shape) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        return scalar::matmul_q4_q8(w, rows, x, out);
    };
    let mut r0 = 0;
    while r0 + TILE_ROWS <= rows {
        q4_rows::<TILE_ROWS>(w, x, out, shape, r0);
        r0 += TILE_ROWS;
    }
    match rows - r0 {
        1 => q4_rows::<1>(w, x, out, shape, r0),
        2 => q4_rows::<2>(w, x, out, shape, r0),
        3 => q4_rows::<3>(w, x, out, shape, r0),
        _ => {}
    }
}

/// [`scalar::dot_f32`], bit for bit.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, ta) = a[..n].as_chunks::<8>();
    let (cb, tb) = b[..n].as_chunks::<8>();
    let mut acc = _mm256_setzero_ps();
    for (x, y) in ca.iter().zip(cb) {
        acc = _mm256_add_ps(acc, _mm256_mul_ps(load8(x), load8(y)));
    }
    if !ta.is_empty() {
        acc = _mm256_add_ps(acc, _mm256_mul_ps(load8(&pad8f(ta)), load8(&pad8f(tb))));
    }
    reduce8(acc)
}

/// [`scalar::matmul_f32`], bit for bit: tiles of 4 weight rows x 2 tokens.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn matmul_f32(w: &[f32], rows: usize, x: &[f32], out: &mut [f32]) {
    let Some(shape) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        return scalar::matmul_f32(w, rows, x, out);
    };
    let mut r0 = 0;
    while r0 + TILE_ROWS <= rows {
        f32_rows::<TILE_ROWS>(w, x, out, shape, r0);
        r0 += TILE_ROWS;
    }
    match rows - r0 {
        1 => f32_rows::<1>(w, x, out, shape, r0),
        2 => f32_rows::<2>(w, x, out, shape, r0),
        3 => f32_rows::<3>(w, x, out, shape, r0),
        _ => {}
    }
}

/// [`crate::quant::quantize_row_q8`], bit for bit (NaN inputs included).
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    let (chunks, _) = x.as_chunks::<QK8>();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    for (c, block) in chunks.iter().zip(out.iter_mut()) {
        let (c8, _) = c.as_chunks::<8>();
        let v = [load8(&c8[0]), load8(&c8[1]), load8(&c8[2]), load8(&c8[3])];
        // `maxps` returns its second operand when either is NaN, so NaN inputs are
        // skipped exactly as `f32::max` skips them; without NaN the order is free.
        let mut m = _mm256_setzero_ps();
        for vi in v {
            m = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f16::from_f32(d).to_le_bytes();

        let idv = _mm256_set1_ps(id);
        let q: [__m256i; 4] = [
            round_clamp(_mm256_mul_ps(v[0], idv)),
            round_clamp(_mm256_mul_ps(v[1], idv)),
            round_clamp(_mm256_mul_ps(v[2], idv)),
            round_clamp(_mm256_mul_ps(v[3], idv)),
        ];
        // Saturating packs are exact (all values in [-127, 127]); they interleave the
        // 128-bit halves, which the final dword permutation undoes.
        let q16a = _mm256_packs_epi32(q[0], q[1]);
        let q16b = _mm256_packs_epi32(q[2], q[3]);
        let q8 = _mm256_packs_epi16(q16a, q16b);
        let q8 = _mm256_permutevar8x32_epi32(q8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `block.qs` is 32 writable bytes; `storeu` needs no alignment.
        unsafe { _mm256_storeu_si256(block.qs.as_mut_ptr().cast(), q8) };
    }
}

// ---------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------

/// Validated matmul shape: `rows > 0` weight rows of `kb > 0` blocks (or elements) with
/// nothing left over, `n` whole activation rows, and room for `n * rows` outputs.
#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    kb: usize,
    n: usize,
}

impl Shape {
    fn of(w_len: usize, rows: usize, x_len: usize, out_len: usize) -> Option<Shape> {
        let kb = w_len.checked_div(rows)?;
        let n = x_len.checked_div(kb)?;
        let fits = kb * rows == w_len && n.checked_mul(rows).is_some_and(|m| m <= out_len);
        fits.then_some(Shape { rows, kb, n })
    }
}

/// Weight rows `r0..r0 + R` against every token, `TILE_TOKENS_Q8` tokens at a time.
#[target_feature(enable = "avx2,f16c")]
fn q8_rows<const R: usize>(w: &[BlockQ8], x: &[BlockQ8], out: &mut [f32], s: Shape, r0: usize) {
    let mut t0 = 0;
    while t0 + TILE_TOKENS_Q8 <= s.n {
        q8_tile::<R, TILE_TOKENS_Q8>(w, x, out, s, r0, t0);
        t0 += TILE_TOKENS_Q8;
    }
    while t0 < s.n {
        q8_tile::<R, 1>(w, x, out, s, r0, t0);
        t0 += 1;
    }
}

/// One R x T tile: weight rows `r0..r0 + R` times tokens `t0..t0 + T`. Each group of 8
/// blocks is loaded once for the tile; each output keeps its own 8 float lanes.
#[target_feature(enable = "avx2,f16c")]
fn q8_tile<const R: usize, const T: usize>(
    w: &[BlockQ8],
    x: &[BlockQ8],
    out: &mut [f32],
    s: Shape,
    r0: usize,
    t0: usize,
) {
    let kb = s.kb;
    let mut wg: [&[[BlockQ8; 8]]; R] = [&[]; R];
    let mut wt: [&[BlockQ8]; R] = [&[]; R];
    for (i, (g, t)) in wg.iter_mut().zip(wt.iter_mut()).enumerate() {
        (*g, *t) = w[(r0 + i) * kb..(r0 + i + 1) * kb].as_chunks::<8>();
    }
    let mut xg: [&[[BlockQ8; 8]]; T] = [&[]; T];
    let mut xt: [&[BlockQ8]; T] = [&[]; T];
    for (j, (g, t)) in xg.iter_mut().zip(xt.iter_mut()).enumerate() {
        (*g, *t) = x[(t0 + j) * kb..(t0 + j + 1) * kb].as_chunks::<8>();
    }

    // One token: DRAM-bound, see `PREFETCH_AHEAD`; the steps spread the tile's bytes.
    let tile = &w[r0 * kb..(r0 + R) * kb];
    let step = size_of_val(tile).div_ceil(kb.div_ceil(8));
    let ahead = tile.as_ptr().cast::<u8>().wrapping_add(PREFETCH_AHEAD);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for g in 0..kb / 8 {
        if T == 1 {
            prefetch(ahead.wrapping_add(g * step), step);
        }
        let mut dx = [_mm256_setzero_ps(); T];
        for j in 0..T {
            dx[j] = scales8(&xg[j][g]);
        }
        for i in 0..R {
            let wb = &wg[i][g];
            let dw = scales8(wb);
            for j in 0..T {
                acc[i][j] = accumulate(acc[i][j], isum8(wb, &xg[j][g]), dw, dx[j]);
            }
        }
    }
    if !kb.is_multiple_of(8) {
        if T == 1 {
            prefetch(ahead.wrapping_add(kb / 8 * step), step);
        }
        let mut dx = [_mm256_setzero_ps(); T];
        for j in 0..T {
            dx[j] = scales_tail(xt[j]);
        }
        for i in 0..R {
            let dw = scales_tail(wt[i]);
            for j in 0..T {
                acc[i][j] = accumulate(acc[i][j], isum_tail(wt[i], xt[j]), dw, dx[j]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (j, &a) in acc_i.iter().enumerate() {
            out[(t0 + j) * s.rows + r0 + i] = reduce8(a);
        }
    }
}

/// Hints the cache lines of `len` bytes from `p` into L1. Prefetches never fault, so
/// `p` may point past the weights.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn prefetch(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast());
        off += 64;
    }
}

/// Weight rows `r0..r0 + R` against every token, `TILE_TOKENS_Q4` tokens at a time.
#[target_feature(enable = "avx2,f16c")]
fn q4_rows<const R: usize>(w: &[BlockQ4], x: &[BlockQ8], out: &mut [f32], s: Shape, r0: usize) {
    let mut t0 = 0;
    while t0 + TILE_TOKENS_Q4 <= s.n {
        q4_tile::<R, TILE_TOKENS_Q4>(w, x, out, s, r0, t0);
        t0 += TILE_TOKENS_Q4;
    }
    while t0 < s.n {
        q4_tile::<R, 1>(w, x, out, s, r0, t0);
        t0 += 1;
    }
}

/// One R x T tile of the q4 matmul. Each group of 8 weight blocks is unpacked once for
/// the tile, and each token's scales and activation sums once per group.
#[target_feature(enable = "avx2,f16c")]
fn q4_tile<const R: usize, const T: usize>(
    w: &[BlockQ4],
    x: &[BlockQ8],
    out: &mut [f32],
    s: Shape,
    r0: usize,
    t0: usize,
) {
    let kb = s.kb;
    let mut wg: [&[[BlockQ4; 8]]; R] = [&[]; R];
    let mut wt: [&[BlockQ4]; R] = [&[]; R];
    for (i, (g, t)) in wg.iter_mut().zip(wt.iter_mut()).enumerate() {
        (*g, *t) = w[(r0 + i) * kb..(r0 + i + 1) * kb].as_chunks::<8>();
    }
    let mut xg: [&[[BlockQ8; 8]]; T] = [&[]; T];
    let mut xt: [&[BlockQ8]; T] = [&[]; T];
    for (j, (g, t)) in xg.iter_mut().zip(xt.iter_mut()).enumerate() {
        (*g, *t) = x[(t0 + j) * kb..(t0 + j + 1) * kb].as_chunks::<8>();
    }

    // One token: DRAM-bound, see `PREFETCH_AHEAD`; the steps spread the tile's bytes.
    let tile = &w[r0 * kb..(r0 + R) * kb];
    let step = size_of_val(tile).div_ceil(kb.div_ceil(8));
    let ahead = tile.as_ptr().cast::<u8>().wrapping_add(PREFETCH_AHEAD);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for g in 0..kb / 8 {
        if T == 1 {
            prefetch(ahead.wrapping_add(g * step), step);
        }
        let mut dx = [_mm256_setzero_ps(); T];
        let mut sx = [_mm256_setzero_ps(); T];
        for j in 0..T {
            dx[j] = scales8(&xg[j][g]);
            sx[j] = xsum(&xg[j][g]);
        }
        for i in 0..R {
            let wb = &wg[i][g];
            let wq = unpack_q4(wb);
            let (dw, mw) = scales_q4(wb);
            for j in 0..T {
                acc[i][j] = accumulate_q4(acc[i][j], isum_q4(&wq, &xg[j][g]), sx[j], dw, mw, dx[j]);
            }
        }
    }
    if !kb.is_multiple_of(8) {
        if T == 1 {
            prefetch(ahead.wrapping_add(kb / 8 * step), step);
        }
        let mut dx = [_mm256_setzero_ps(); T];
        let mut sx = [_mm256_setzero_ps(); T];
        for j in 0..T {
            dx[j] = scales_tail(xt[j]);
            sx[j] = xsum(xt[j]);
        }
        for i in 0..R {
            let wq = unpack_q4(wt[i]);
            let (dw, mw) = scales_q4(wt[i]);
            for j in 0..T {
                acc[i][j] = accumulate_q4(acc[i][j], isum_q4(&wq, xt[j]), sx[j], dw, mw, dx[j]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (j, &a) in acc_i.iter().enumerate() {
            out[(t0 + j) * s.rows + r0 + i] = reduce8(a);
        }
    }
}

/// Weight rows `r0..r0 + R` against every token, `TILE_TOKENS_F32` tokens at a time.
#[target_feature(enable = "avx2,f16c")]
fn f32_rows<const R: usize>(w: &[f32], x: &[f32], out: &mut [f32], s: Shape, r0: usize) {
    let mut t0 = 0;
    while t0 + TILE_TOKENS_F32 <= s.n {
        f32_tile::<R, TILE_TOKENS_F32>(w, x, out, s, r0, t0);
        t0 += TILE_TOKENS_F32;
    }
    while t0 < s.n {
        f32_tile::<R, 1>(w, x, out, s, r0, t0);
        t0 += 1;
    }
}

/// One R x T tile of the f32 matmul; R * T independent 8-lane accumulators hide the
/// add latency that bounds a single [`dot_f32`].
#[target_feature(enable = "avx2,f16c")]
fn f32_tile<const R: usize, const T: usize>(w: &[f32], x: &[f32], out: &mut [f32], s: Shape, r0: usize, t0: usize) {
    let k = s.kb;
    let mut wc: [&[[f32; 8]]; R] = [&[]; R];
    let mut wt: [&[f32]; R] = [&[]; R];
    for (i, (c, t)) in wc.iter_mut().zip(wt.iter_mut()).enumerate() {
        (*c, *t) = w[(r0 + i) * k..(r0 + i + 1) * k].as_chunks::<8>();
    }
    let mut xc: [&[[f32; 8]]; T] = [&[]; T];
    let mut xt: [&[f32]; T] = [&[]; T];
    for (j, (c, t)) in xc.iter_mut().zip(xt.iter_mut()).enumerate() {
        (*c, *t) = x[(t0 + j) * k..(t0 + j + 1) * k].as_chunks::<8>();
    }

    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for c in 0..k / 8 {
        let mut xv = [_mm256_setzero_ps(); T];
        for j in 0..T {
            xv[j] = load8(&xc[j][c]);
        }
        for i in 0..R {
            let wv = load8(&wc[i][c]);
            for j in 0..T {
                acc[i][j] = _mm256_add_ps(acc[i][j], _mm256_mul_ps(wv, xv[j]));
            }
        }
    }
    if !k.is_multiple_of(8) {
        for i in 0..R {
            let wv = load8(&pad8f(wt[i]));
            for j in 0..T {
                let xv = load8(&pad8f(xt[j]));
                acc[i][j] = _mm256_add_ps(acc[i][j], _mm256_mul_ps(wv, xv));
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (j, &a) in acc_i.iter().enumerate() {
            out[(t0 + j) * s.rows + r0 + i] = reduce8(a);
        }
    }
}

/// Up to 8 floats followed by +0.0. Their products add +0.0 to their lanes, which
/// leaves every lane unchanged: lanes start at +0.0, and a sum that starts at +0.0 is
/// never -0.0 in round-to-nearest.
#[inline]
fn pad8f(tail: &[f32]) -> [f32; 8] {
    let mut p = [0.0; 8];
    p[..tail.len()].copy_from_slice(tail);
    p
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn load8(v: &[f32; 8]) -> __m256 {
    // SAFETY: `v` is 8 readable floats; `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn load_qs(b: &BlockQ8) -> __m256i {
    // SAFETY: `b.qs` is 32 readable bytes; `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) }
}

/// The 8 blocks' scales as f32, equal to [`BlockQ8::scale`]: `vcvtph2ps` is exact, as
/// every f16 (subnormals included) is an f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scales8(b: &[BlockQ8; 8]) -> __m256 {
    scales_tail(b)
}

/// The scales of up to 8 blocks as f32 lanes, lanes past `b.len()` +0.0. A missing
/// block (scale 0, isum 0) adds +0.0 to its lane, which leaves the lane unchanged: lanes
/// start at +0.0, and a sum that starts at +0.0 is never -0.0 in round-to-nearest.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scales_tail(b: &[BlockQ8]) -> __m256 {
    let mut h = [0u64; 2];
    for (j, b) in b.iter().take(8).enumerate() {
        h[j / 4] |= (u16::from_le_bytes(b.d) as u64) << (16 * (j % 4));
    }
    _mm256_cvtph_ps(_mm_set_epi64x(h[1] as i64, h[0] as i64))
}

/// Lane `j` += `isum_j as f32 * (dw_j * dx_j)`: the scalar expression, lane-wise.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn accumulate(acc: __m256, isum: __m256i, dw: __m256, dx: __m256) -> __m256 {
    _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx)))
}

/// 8 i32 partial sums whose total is the exact integer dot product of one block pair:
/// `|w|` (unsigned, at most 128) times `x * sign(w)` (signed, exact for `x` in
/// [-127, 127]) in `vpmaddubsw`, whose i16 pair sums stay within 2 * 128 * 127 < 2^15
/// (no saturation), then pairs widened by `vpmaddwd`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn block_partials(w: &BlockQ8, x: &BlockQ8) -> __m256i {
    let (w, x) = (load_qs(w), load_qs(x));
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// The exact i32 dot products of 8 block pairs, pair `j` in lane `j`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn isum8(w: &[BlockQ8; 8], x: &[BlockQ8; 8]) -> __m256i {
    let mut v = [_mm256_setzero_si256(); 8];
    for (j, v) in v.iter_mut().enumerate() {
        *v = block_partials(&w[j], &x[j]);
    }
    hsum8(v)
}

/// [`isum8`] of the fewer than 8 pairs of a row's tail; the missing lanes are 0.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn isum_tail(w: &[BlockQ8], x: &[BlockQ8]) -> __m256i {
    let mut v = [_mm256_setzero_si256(); 8];
    for ((v, w), x) in v.iter_mut().zip(w).zip(x) {
        *v = block_partials(w, x);
    }
    if w.len() <= 4 {
        // The first half of `hsum8`'s tree is enough.
        let h0123 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(h0123), _mm256_extracti128_si256::<1>(h0123));
        return _mm256_zextsi128_si256(s);
    }
    hsum8(v)
}

/// The quants of up to 8 q4 blocks as bytes in [0, 15], block `j` in `v[j]` in element
/// order (the low 128 bits elements 0..16, the high 128 bits 16..32); missing blocks 0.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn unpack_q4(b: &[BlockQ4]) -> [__m256i; 8] {
    let mask = _mm256_set1_epi8(0x0f);
    let mut v = [_mm256_setzero_si256(); 8];
    let shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    for (v, b) in v.iter_mut().zip(b) {
        // SAFETY: `b.qs` is 16 readable bytes; `loadu` needs no alignment.
        let q = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(b.qs.as_ptr().cast())) };
        *v = _mm256_and_si256(_mm256_srlv_epi32(q, shift), mask);
    }
    v
}

/// The scales `d` and minima `m` of up to 8 q4 blocks as f32 lanes (exact, as in
/// [`scales_tail`]), lanes past `b.len()` +0.0. Each block's first 4 bytes, `d` then
/// `m`, make one dword; a byte shuffle and a permute split the `d` from the `m`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scales_q4(b: &[BlockQ4]) -> (__m256, __m256) {
    let dm = |j: usize| b.get(j).map_or(0, |b| u32::from_le_bytes([b.d[0], b.d[1], b.m[0], b.m[1]])) as i32;
    let v = _mm256_setr_epi32(dm(0), dm(1), dm(2), dm(3), dm(4), dm(5), dm(6), dm(7));
    // Per 128-bit lane: the four `d`, then the four `m`; then the `d` of both lanes low.
    let split = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, split));
    (_mm256_cvtph_ps(_mm256_castsi256_si128(v)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(v)))
}

/// The exact `sum q_i * x_i` of up to 8 block pairs (weights unpacked by
/// [`unpack_q4`]), pair `j` in lane `j`, missing lanes 0: `vpmaddubsw` of the unsigned
/// quants (at most 15) and the signed activations (any i8) has pair sums within
/// 2 * 15 * 128 < 2^15, so it never saturates; `vpmaddwd` widens the pairs.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn isum_q4(w: &[__m256i; 8], x: &[BlockQ8]) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let mut v = [_mm256_setzero_si256(); 8];
    for ((v, &w), x) in v.iter_mut().zip(w).zip(x) {
        *v = _mm256_madd_epi16(_mm256_maddubs_epi16(w, load_qs(x)), ones);
    }
    hsum8(v)
}

/// The activation sums `sum x_i` of up to 8 blocks as f32 lanes (exact: |sum| <= 4096),
/// lanes past `x.len()` +0.0.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn xsum(x: &[BlockQ8]) -> __m256 {
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let mut v = [_mm256_setzero_si256(); 8];
    for (v, x) in v.iter_mut().zip(x) {
        *v = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, load_qs(x)), ones16);
    }
    _mm256_cvtepi32_ps(hsum8(v))
}

/// Lane `j` += `isum_j as f32 * (dw_j * dx_j) + xsum_j * (mw_j * dx_j)`: the scalar
/// expression of [`scalar::dot_q4_q8`], lane-wise.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn accumulate_q4(acc: __m256, isum: __m256i, xsum: __m256, dw: __m256, mw: __m256, dx: __m256) -> __m256 {
    let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx));
    let offset = _mm256_mul_ps(xsum, _mm256_mul_ps(mw, dx));
    _mm256_add_ps(acc, _mm256_add_ps(scaled, offset))
}

/// Lane `j` = the sum of the 8 lanes of `v[j]`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn hsum8(v: [__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    // 128-bit half h of h0123 holds [v0, v1, v2, v3] summed over that half's lanes.
    let h0123 = _mm256_hadd_epi32(h01, h23);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    let same = _mm256_blend_epi32::<0xf0>(h0123, h4567);
    let swapped = _mm256_permute2x128_si256::<0x21>(h0123, h4567);
    _mm256_add_epi32(same, swapped)
}

/// [`scalar::reduce8`] on the lanes: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn reduce8(acc: __m256) -> f32 {
    let a = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps::<1>(b, b)))
}

/// `clamp(rint(y), -127, 127)` as i32 lanes, NaN to 0, exactly as the scalar
/// `rintf(y).clamp(-127.0, 127.0) as i8`: clamping first is the same (the bounds are
/// integers), `maxps`/`minps` pass a NaN `y` through (it is their second operand), the
/// ordered mask zeroes it, and `vcvtps2dq` rounds half to even.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn round_clamp(y: __m256) -> __m256i {
    let c = _mm256_min_ps(_mm256_set1_ps(127.0), _mm256_max_ps(_mm256_set1_ps(-127.0), y));
    let c = _mm256_and_ps(c, _mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
    _mm256_cvtps_epi32(c)
}
