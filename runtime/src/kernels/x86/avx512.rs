//! The AVX-512 VNNI tier (avx512f, avx512bw, avx512vl, avx512vnni): bit-exact with
//! [`scalar`].
//!
//! q8 blocks: two blocks per zmm register, `vpdpbusd` of `w + 128` (unsigned) and `x`
//! (signed) into i32 lanes that start at `-128 * sum(x)` gives 8 exact partial sums per
//! block pair for any i8 values, and an unpack/add tree folds 8 blocks into one ymm
//! register with block `j` in lane `j`. The float part is the scalar one done 8 lanes at
//! a time (see the [`super`] docs); f32 kernels use the 32 ymm registers for wider
//! tiles. With one token (decode) the q8 matmul is bound by DRAM: it prefetches the
//! weights `PREFETCH_AHEAD` bytes ahead and folds two rows into one zmm register, so
//! the last fold step and the float part run 16 lanes wide. With 4 tokens or more (prefill)
//! it packs 16-row panels into a transposed layout on the stack instead ([`PanelBlock`]),
//! which needs no folds at all.
//!
//! q4 weights x q8 activations: the quants are unsigned already, so `vpdpbusd` takes
//! them without the bias: two 16-byte loads broadcast into a zmm register, `vpsrlvq`
//! by 0 or 4 per 128-bit lane and `and 0x0f` lay out blocks `(j, j + 4)` in the q8
//! operand's order, and `vpdpbusd` with ones gives the activation sums the minimum
//! needs, folded by the same tree.

use core::arch::x86_64::*;

use half::f16;

use crate::kernels::{scalar, Kernels};
use crate::quant::{BlockQ4, BlockQ8, QK8};

/// Weight rows per q8 matmul tile.
const TILE_ROWS_Q8: usize = 8;
/// Weight row pairs per tile of the one-token (matrix-vector) q8 path.
const GEMV_PAIRS_Q8: usize = 2;
/// How far ahead of the weights being read the one-token paths prefetch, in bytes. The
/// hardware prefetchers alone leave the core at about 60% of its streaming bandwidth
/// here, as each cache line waits for the math of the previous ones.
const PREFETCH_AHEAD: usize = 8192;
/// Weight rows of a packed panel of the many-token q8 path: one i32 (or f32) lane each
/// of a zmm register.
const PANEL_ROWS: usize = 16;
/// The most blocks per row the packed path takes: its panel lives on the stack
/// (`PANEL_MAX_KB` * 576 bytes = 36 KiB); longer rows take the tiled path.
const PANEL_MAX_KB: usize = 64;
/// Entries (token x block) of the packed path's activation table on the stack (16 KiB).
const ACT_ENTRIES: usize = 2048;
/// Tokens from which packing the panels pays for itself; fewer take the tiled path.
const PACKED_MIN_TOKENS: usize = 4;
/// Weight rows per f32 matmul tile.
const TILE_ROWS_F32: usize = 4;
/// Activation rows (tokens) per q8 matmul tile.
const TILE_TOKENS_Q8: usize = 4;
/// Weight rows per q4 matmul tile.
const TILE_ROWS_Q4: usize = 8;
/// Activation rows (tokens) per q4 matmul tile.
const TILE_TOKENS_Q4: usize = 4;
/// Activation rows (tokens) per f32 matmul tile: 4 x 4 accumulators plus 8 loads in
/// the 32 ymm registers.
const TILE_TOKENS_F32: usize = 4;

/// This tier's table. Only [`crate::kernels`] hands it out, and only after
/// [`detected`] returned true.
pub(in crate::kernels) static KERNELS: Kernels = Kernels {
    name: "avx512vnni",
    dot_q8: safe::dot_q8,
    dot_f32: safe::dot_f32,
    matmul_q8: safe::matmul_q8,
    matmul_f32: safe::matmul_f32,
    quantize_q8: safe::quantize_q8,
    dot_q4_q8: safe::dot_q4_q8,
    matmul_q4_q8: safe::matmul_q4_q8,
};

/// Whether this CPU (std: detected at run time; no_std: enabled at compile time) runs
/// the kernels of this module. Also checks the features that `avx512f` implies to the
/// compiler (avx2, fma, f16c), so every `target_feature` set below is covered.
pub(in crate::kernels) fn detected() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vnni",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c",
        ))
    }
}

/// The safe entry points the table holds.
mod safe {
    use crate::quant::{BlockQ4, BlockQ8};

    pub fn dot_q8(a: &[BlockQ8], b: &[BlockQ8]) -> f32 {
        // SAFETY: this fn is only reachable through `KERNELS`, which the dispatch in
        // `kernels` hands out only after `detected()` found every feature the kernel
        // enables (avx512f/bw/vl/vnni, avx2, fma, f16c).
        unsafe { super::dot_q8(a, b) }
    }

    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: as in `dot_q8`: installed only after the features were detected.
        unsafe { super::dot_f32(a, b) }
    }

    pub fn matmul_q8(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
        // SAFETY: as in `dot_q8`: installed only after the features were detected.
        unsafe { super::matmul_q8(w, rows, x, out) }
    }

    pub fn matmul_f32(w: &[f32], rows: usize, x: &[f32], out: &mut [f32]) {
        // SAFETY: as in `dot_q8`: installed only after the features were detected.
        unsafe { super::matmul_f32(w, rows, x, out) }
    }

    pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
        // SAFETY: as in `dot_q8`: installed only after the features were detected.
        unsafe { super::quantize_q8(x, out) }
    }

    pub fn dot_q4_q8(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
        // SAFETY: as in `dot_q8`: installed only after the features were detected.
        unsafe { super::dot_q4_q8(w, x) }
    }

    pub fn matmul_q4_q8(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
        // SAFETY: as in `dot_q8`: installed only after the features were detected.
        unsafe { super::matmul_q4_q8(w, rows, x, out) }
    }
}

// ---------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------

/// [`scalar::dot_q8`], bit for bit, for any i8 quants.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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

/// [`scalar::matmul_q8`], bit for bit, for any i8 quants: tiles of
/// 8 weight rows x 4 tokens, each output equal to [`dot_q8`] of its row and token.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn matmul_q8(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let Some(shape) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        // Shapes outside the tiled path (empty, ragged, short `out`): the contract's
        // own behaviour, whatever it is.
        return scalar::matmul_q8(w, rows, x, out);
    };
    if shape.n == 1 {
        return q8_gemv(w, x, out, shape);
    }
    if shape.n >= PACKED_MIN_TOKENS && shape.kb <= PANEL_MAX_KB {
        return q8_packed(w, x, out, shape);
    }
    let mut r0 = 0;
    while r0 + TILE_ROWS_Q8 <= rows {
        q8_rows::<TILE_ROWS_Q8>(w, x, out, shape, r0);
        r0 += TILE_ROWS_Q8;
    }
    if r0 + 4 <= rows {
        q8_rows::<4>(w, x, out, shape, r0);
        r0 += 4;
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
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q4_q8(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    let n = w.len().min(x.len());
    let (gw, tw) = w[..n].as_chunks::<8>();
    let (gx, tx) = x[..n].as_chunks::<8>();
    let mut acc = _mm256_setzero_ps();
    for (wg, xg) in gw.iter().zip(gx) {
        let xq = load_x_q4(xg);
        let (dw, mw) = scales_q4(wg);
        acc = accumulate_q4(acc, isum8_q4(&load_w_q4(wg), &xq), xq.sum, dw, mw, scales8(xg));
    }
    if !tw.is_empty() {
        let (dw, mw) = scales_q4_tail(tw);
        acc = accumulate_q4(acc, isum_tail_q4(tw, tx), xsum_tail(tx), dw, mw, scales_tail(tx));
    }
    reduce8(acc)
}

/// [`scalar::matmul_q4_q8`], bit for bit, for any i8 activation quants: tiles of
/// 8 weight rows x 4 tokens, each output equal to [`dot_q4_q8`] of its row and token.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn matmul_q4_q8(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let Some(shape) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        return scalar::matmul_q4_q8(w, rows, x, out);
    };
    let mut r0 = 0;
    while r0 + TILE_ROWS_Q4 <= rows {
        q4_rows::<TILE_ROWS_Q4>(w, x, out, shape, r0);
        r0 += TILE_ROWS_Q4;
    }
    if r0 + 4 <= rows {
        q4_rows::<4>(w, x, out, shape, r0);
        r0 += 4;
    }
    match rows - r0 {
        1 => q4_rows::<1>(w, x, out, shape, r0),
        2 => q4_rows::<2>(w, x, out, shape, r0),
        3 => q4_rows::<3>(w, x, out, shape, r0),
        _ => {}
    }
}

/// [`scalar::dot_f32`], bit for bit. One chain of 8-lane adds, as the contract's
/// summation order requires.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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

/// [`scalar::matmul_f32`], bit for bit: tiles of 4 weight rows x 4 tokens.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn matmul_f32(w: &[f32], rows: usize, x: &[f32], out: &mut [f32]) {
    let Some(shape) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        return scalar::matmul_f32(w, rows, x, out);
    };
    let mut r0 = 0;
    while r0 + TILE_ROWS_F32 <= rows {
        f32_rows::<TILE_ROWS_F32>(w, x, out, shape, r0);
        r0 += TILE_ROWS_F32;
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
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    let (chunks, _) = x.as_chunks::<QK8>();
    for (c, block) in chunks.iter().zip(out.iter_mut()) {
        let (c16, _) = c.as_chunks::<16>();
        let v = [load16(&c16[0]), load16(&c16[1])];
        // `vmaxps` returns its second operand when either is NaN, so NaN inputs are
        // skipped exactly as `f32::max` skips them; without NaN the order is free.
        let m = _mm512_max_ps(_mm512_abs_ps(v[1]), _mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_setzero_ps()));
        let m_hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(m)));
        let m8 = _mm256_max_ps(_mm512_castps512_ps256(m), m_hi);
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps::<1>(m8));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f16::from_f32(d).to_le_bytes();

        let idv = _mm512_set1_ps(id);
        // Values are already in [-127, 127]: the saturating narrowing is exact.
        let lo = _mm512_cvtsepi32_epi8(round_clamp(_mm512_mul_ps(v[0], idv)));
        let hi = _mm512_cvtsepi32_epi8(round_clamp(_mm512_mul_ps(v[1], idv)));
        // SAFETY: `block.qs` is 32 writable bytes: 16 at offset 0 and 16 at offset 16;
        // `storeu` needs no alignment.
        unsafe {
            _mm_storeu_si128(block.qs.as_mut_ptr().cast(), lo);
            _mm_storeu_si128(block.qs.as_mut_ptr().add(16).cast(), hi);
        }
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

/// The one-token q8 matmul: tiles of `2 * GEMV_PAIRS_Q8` rows, then pairs, then a
/// single row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_gemv(w: &[BlockQ8], x: &[BlockQ8], out: &mut [f32], s: Shape) {
    let (xg, xt) = x[..s.kb].as_chunks::<8>();
    // The row tail as a whole group padded with zero blocks (isum 0, scale 0).
    let mut x_tail = [BlockQ8 { d: [0; 2], qs: [0; QK8] }; 8];
    x_tail[..xt.len()].copy_from_slice(xt);
    let xs = GemvAct { groups: xg, tail: &x_tail, tail_len: xt.len() };
    let mut r0 = 0;
    while r0 + 2 * GEMV_PAIRS_Q8 <= s.rows {
        q8_gemv_tile::<GEMV_PAIRS_Q8>(w, &xs, out, s.kb, r0);
        r0 += 2 * GEMV_PAIRS_Q8;
    }
    while r0 + 2 <= s.rows {
        q8_gemv_tile::<1>(w, &xs, out, s.kb, r0);
        r0 += 2;
    }
    if r0 < s.rows {
        q8_tile::<1, 1>(w, x, out, s, r0, 0);
    }
}

/// The activation row of [`q8_gemv`]: whole groups, then the tail padded to a group.
struct GemvAct<'a> {
    groups: &'a [[BlockQ8; 8]],
    tail: &'a [BlockQ8; 8],
    tail_len: usize,
}

/// `2 * P` weight rows from `r0` against one token. Rows go in pairs so one fold
/// ([`fold_pairs2`]) and one 16-lane float step serve two rows; each row keeps its own
/// 8 lanes (256-bit half) in the contract's order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_gemv_tile<const P: usize>(w: &[BlockQ8], xs: &GemvAct, out: &mut [f32], kb: usize, r0: usize) {
    let tile = &w[r0 * kb..(r0 + 2 * P) * kb];
    let steps = xs.groups.len() + usize::from(xs.tail_len > 0);
    let ahead = tile.as_ptr().cast::<u8>().wrapping_add(PREFETCH_AHEAD);
    let step = size_of_val(tile).div_ceil(steps);
    let mut acc = [_mm512_setzero_ps(); P];
    for (g, xg) in xs.groups.iter().enumerate() {
        prefetch(ahead.wrapping_add(g * step), step);
        let xq = load_x(xg);
        let dx = scales8(xg);
        let dx = concat8(dx, dx);
        for (i, acc) in acc.iter_mut().enumerate() {
            let (a, b) = (row_group(tile, kb, 2 * i, g), row_group(tile, kb, 2 * i + 1, g));
            let isum = fold_pairs2(isum8_partials(&load_w(a), &xq), isum8_partials(&load_w(b), &xq));
            let dw = concat8(scales8(a), scales8(b));
            *acc = accumulate16(*acc, isum, dw, dx);
        }
    }
    if xs.tail_len > 0 {
        let g = xs.groups.len();
        prefetch(ahead.wrapping_add(g * step), step);
        let xq = load_x(xs.tail);
        let dx = scales8(xs.tail);
        let dx = concat8(dx, dx);
        for (i, acc) in acc.iter_mut().enumerate() {
            let a = &tile[2 * i * kb + 8 * g..(2 * i + 1) * kb];
            let b = &tile[(2 * i + 1) * kb + 8 * g..(2 * i + 2) * kb];
            let isum = fold_pairs2(isum8_partials(&load_w_tail(a), &xq), isum8_partials(&load_w_tail(b), &xq));
            let dw = concat8(scales_tail(a), scales_tail(b));
            *acc = accumulate16(*acc, isum, dw, dx);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        out[r0 + 2 * i] = reduce8(_mm512_castps512_ps256(*a));
        out[r0 + 2 * i + 1] = reduce8(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a))));
    }
}

/// Group `g` of row `i` of a tile of rows of `kb` blocks.
#[inline]
fn row_group(tile: &[BlockQ8], kb: usize, i: usize, g: usize) -> &[BlockQ8; 8] {
    let (groups, _) = tile[i * kb..(i + 1) * kb].as_chunks::<8>();
    &groups[g]
}

/// Hints the cache lines of `len` bytes from `p` into L1. Prefetches never fault, so
/// `p` may point past the weights.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn prefetch(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast());
        off += 64;
    }
}

/// Block `j` of a panel of [`PANEL_ROWS`] weight rows, transposed so that no horizontal
/// sum is needed: lane `r` of `q[c]` holds bytes `4c..4c + 4` of row `r`'s quants plus
/// 128 (`w ^ 0x80`, unsigned for `vpdpbusd`), lane `r` of `d` the row's block scale.
#[derive(Clone, Copy)]
#[repr(C)]
struct PanelBlock {
    q: [__m512i; 8],
    d: __m512,
}

/// Activation block `(t, j)` of the packed path: the bias correction `-128 * sum(x)` of
/// [`isum8_loaded`] and the scale.
#[derive(Clone, Copy, Default)]
struct ActEntry {
    correction: i32,
    scale: f32,
}

/// The many-token q8 matmul. The tiled path spends most of its time folding each block
/// pair's 8 partial sums into one (shuffles) rather than in `vpdpbusd`; here each panel
/// of 16 weight rows is transposed once per call (a few shuffles per block, shared by
/// all tokens), so `vpdpbusd` of a panel register and a broadcast 4-byte slice of one
/// token's block sums block `j` for 16 rows in 16 i32 lanes, with nothing left to fold.
/// The float part keeps, per token, 8 registers of 16 row lanes: register `j % 8` is
/// lane `j % 8` of each row's accumulator, so each output still follows the contract's
/// order, and the final fold is [`scalar::reduce8`] across the 8 registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_packed(w: &[BlockQ8], x: &[BlockQ8], out: &mut [f32], s: Shape) {
    let empty = PanelBlock { q: [_mm512_setzero_si512(); 8], d: _mm512_setzero_ps() };
    let mut panel = [empty; PANEL_MAX_KB];
    let panel = &mut panel[..s.kb];
    let mut table = [ActEntry::default(); ACT_ENTRIES];
    // At least 32 tokens per chunk, as kb <= PANEL_MAX_KB.
    let chunk = ACT_ENTRIES / s.kb;
    let mut t0 = 0;
    while t0 < s.n {
        let tn = chunk.min(s.n - t0);
        let xs = &x[t0 * s.kb..(t0 + tn) * s.kb];
        for (e, b) in table.iter_mut().zip(xs) {
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            *e = ActEntry { correction: -128 * sum, scale: b.scale() };
        }
        let act = &table[..tn * s.kb];
        let mut r0 = 0;
        while r0 < s.rows {
            let rv = PANEL_ROWS.min(s.rows - r0);
            let rows = &w[r0 * s.kb..(r0 + rv) * s.kb];
            if rv == PANEL_ROWS {
                pack_panel::<true>(rows, rv, panel);
            } else {
                pack_panel::<false>(rows, rv, panel);
            }
            let dst = PanelOut { rows: s.rows, r0, rv };
            let mut t = 0;
            while t + 2 <= tn {
                panel_tokens::<2>(panel, &xs[t * s.kb..], &act[t * s.kb..], out, dst, t0 + t);
                t += 2;
            }
            if t < tn {
                panel_tokens::<1>(panel, &xs[t * s.kb..], &act[t * s.kb..], out, dst, t0 + t);
            }
            r0 += PANEL_ROWS;
        }
        t0 += tn;
    }
}

/// Where a panel's outputs go: rows `r0..r0 + rv` of each token's `rows` outputs.
#[derive(Clone, Copy)]
struct PanelOut {
    rows: usize,
    r0: usize,
    rv: usize,
}

/// Transposes the `rv <= 16` rows of `w` (each `panel.len()` blocks) into `panel`;
/// missing rows are zero (their lanes are computed but never stored). `FULL`: `rv` is
/// 16, which spares the full panels (all but the last) the row checks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_panel<const FULL: bool>(w: &[BlockQ8], rv: usize, panel: &mut [PanelBlock]) {
    // Register `i` takes row `LO[i]` in its low half and row `LO[i] + 4` in its high
    // half: after the 4x4 dword transposes inside each 128-bit lane, the final
    // `vshufi32x4` then leaves the rows in order 0..16.
    const LO: [usize; 8] = [0, 1, 2, 3, 8, 9, 10, 11];
    let kb = panel.len();
    let rv = if FULL { PANEL_ROWS } else { rv };
    let rows: [&[BlockQ8]; PANEL_ROWS] = core::array::from_fn(|r| if r < rv { &w[r * kb..(r + 1) * kb] } else { &[] });
    let bias = _mm512_set1_epi8(i8::MIN);
    for (j, pb) in panel.iter_mut().enumerate() {
        let row = |r: usize| -> __m256i {
            if FULL || r < rv {
                load_qs(&rows[r][j])
            } else {
                _mm256_setzero_si256()
            }
        };
        let mut z = [_mm512_setzero_si512(); 8];
        for (z, &lo) in z.iter_mut().zip(&LO) {
            *z = _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(lo)), row(lo + 4)), bias);
        }
        // Per 128-bit lane of each pair: dwords [a0, b0, a1, b1] and [a2, b2, a3, b3].
        let mut t = [_mm512_setzero_si512(); 8];
        for p in 0..4 {
            t[2 * p] = _mm512_unpacklo_epi32(z[2 * p], z[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_epi32(z[2 * p], z[2 * p + 1]);
        }
        // u[c] (u[4 + c]): per 128-bit lane, dword c of that lane for registers 0..4
        // (4..8). Lanes 0, 1, 2, 3 hold dwords 0..4 and 4..8 of the low rows, then of
        // the high rows.
        let u = [
            _mm512_unpacklo_epi64(t[0], t[2]),
            _mm512_unpackhi_epi64(t[0], t[2]),
            _mm512_unpacklo_epi64(t[1], t[3]),
            _mm512_unpackhi_epi64(t[1], t[3]),
            _mm512_unpacklo_epi64(t[4], t[6]),
            _mm512_unpackhi_epi64(t[4], t[6]),
            _mm512_unpacklo_epi64(t[5], t[7]),
            _mm512_unpackhi_epi64(t[5], t[7]),
        ];
        for c in 0..4 {
            // Lanes [0, 2] of u[c] (rows 0..4, 4..8), then of u[4 + c] (rows 8..12,
            // 12..16): dword c; lanes [1, 3]: dword 4 + c.
            pb.q[c] = _mm512_shuffle_i32x4::<0b10_00_10_00>(u[c], u[4 + c]);
            pb.q[4 + c] = _mm512_shuffle_i32x4::<0b11_01_11_01>(u[c], u[4 + c]);
        }
        let mut h = [0u16; PANEL_ROWS];
        for (r, h) in h.iter_mut().enumerate().take(rv) {
            *h = u16::from_le_bytes(rows[r][j].d);
        }
        // SAFETY: `h` is 32 readable bytes; `loadu` needs no alignment.
        pb.d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(h.as_ptr().cast()) });
    }
}

/// Tokens `0..T` of `xs` (rows of `panel.len()` blocks, table entries in `act`) against
/// a packed panel, into tokens `t..t + T` of `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn panel_tokens<const T: usize>(
    panel: &[PanelBlock],
    xs: &[BlockQ8],
    act: &[ActEntry],
    out: &mut [f32],
    dst: PanelOut,
    t: usize,
) {
    let kb = panel.len();
    let xs: [&[BlockQ8]; T] = core::array::from_fn(|i| &xs[i * kb..(i + 1) * kb]);
    let act: [&[ActEntry]; T] = core::array::from_fn(|i| &act[i * kb..(i + 1) * kb]);
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    // The lane index must be a constant for the accumulators to stay in registers.
    macro_rules! lanes {
        ($base:expr, $len:expr, $($l:literal)*) => {
            $( if $l < $len { panel_block::<T, $l>(&panel[$base + $l], &xs, &act, $base + $l, &mut acc); } )*
        };
    }
    let groups = kb / 8;
    for g in 0..groups {
        lanes!(8 * g, 8, 0 1 2 3 4 5 6 7);
    }
    lanes!(8 * groups, kb % 8, 0 1 2 3 4 5 6 7);
    for (i, a) in acc.iter().enumerate() {
        // `scalar::reduce8` lane-wise: ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
        let even = _mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6]));
        let odd = _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]));
        let mut o = [0.0f32; PANEL_ROWS];
        // SAFETY: `o` is 16 writable floats; `storeu` needs no alignment.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(even, odd)) };
        out[(t + i) * dst.rows + dst.r0..][..dst.rv].copy_from_slice(&o[..dst.rv]);
    }
}

/// Block `j` of `T` tokens against a packed panel block, added to lane register `L`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn panel_block<const T: usize, const L: usize>(
    pb: &PanelBlock,
    xs: &[&[BlockQ8]; T],
    act: &[&[ActEntry]; T],
    j: usize,
    acc: &mut [[__m512; 8]; T],
) {
    let mut isum: [__m512i; T] = core::array::from_fn(|i| _mm512_set1_epi32(act[i][j].correction));
    for c in 0..8 {
        for i in 0..T {
            let q = &xs[i][j].qs;
            let x4 = i32::from_le_bytes([q[4 * c] as u8, q[4 * c + 1] as u8, q[4 * c + 2] as u8, q[4 * c + 3] as u8]);
            isum[i] = _mm512_dpbusd_epi32(isum[i], pb.q[c], _mm512_set1_epi32(x4));
        }
    }
    for i in 0..T {
        // The contract's `isum as f32 * (d_w * d_x)`, then the add to the lane.
        let scale = _mm512_mul_ps(pb.d, _mm512_set1_ps(act[i][j].scale));
        acc[i][L] = _mm512_add_ps(acc[i][L], _mm512_mul_ps(_mm512_cvtepi32_ps(isum[i]), scale));
    }
}

/// Weight rows `r0..r0 + R` against every token, `TILE_TOKENS_Q8` tokens at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8_rows<const R: usize>(w: &[BlockQ8], x: &[BlockQ8], out: &mut [f32], s: Shape, r0: usize) {
    let mut t0 = 0;
    while t0 + TILE_TOKENS_Q8 <= s.n {
        q8_tile::<R, TILE_TOKENS_Q8>(w, x, out, s, r0, t0);
        t0 += TILE_TOKENS_Q8;
    }
    match s.n - t0 {
        1 => q8_tile::<R, 1>(w, x, out, s, r0, t0),
        2 => q8_tile::<R, 2>(w, x, out, s, r0, t0),
        3 => q8_tile::<R, 3>(w, x, out, s, r0, t0),
        _ => {}
    }
}

/// One R x T tile: weight rows `r0..r0 + R` times tokens `t0..t0 + T`. Each group of 8
/// blocks is loaded once for the tile; each output keeps its own 8 float lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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

    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for g in 0..kb / 8 {
        let zero = _mm512_setzero_si512();
        let mut xq = [ActGroup { q: [zero; 4], correction: [zero; 4] }; T];
        let mut dx = [_mm256_setzero_ps(); T];
        for j in 0..T {
            xq[j] = load_x(&xg[j][g]);
            dx[j] = scales8(&xg[j][g]);
        }
        for i in 0..R {
            let wq = load_w(&wg[i][g]);
            let dw = scales8(&wg[i][g]);
            for j in 0..T {
                acc[i][j] = accumulate(acc[i][j], isum8_loaded(&wq, &xq[j]), dw, dx[j]);
            }
        }
    }
    if !kb.is_multiple_of(8) {
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

/// Weight rows `r0..r0 + R` against every token, `TILE_TOKENS_Q4` tokens at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4_rows<const R: usize>(w: &[BlockQ4], x: &[BlockQ8], out: &mut [f32], s: Shape, r0: usize) {
    let mut t0 = 0;
    while t0 + TILE_TOKENS_Q4 <= s.n {
        q4_tile::<R, TILE_TOKENS_Q4>(w, x, out, s, r0, t0);
        t0 += TILE_TOKENS_Q4;
    }
    match s.n - t0 {
        1 => q4_tile::<R, 1>(w, x, out, s, r0, t0),
        2 => q4_tile::<R, 2>(w, x, out, s, r0, t0),
        3 => q4_tile::<R, 3>(w, x, out, s, r0, t0),
        _ => {}
    }
}

/// One R x T tile of the q4 matmul: each group of 8 weight blocks is unpacked once for
/// the tile, each token's activations, scales and sums loaded once per group.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
        let mut xq = [ActGroupQ4 { q: [_mm512_setzero_si512(); 4], sum: _mm256_setzero_ps() }; T];
        let mut dx = [_mm256_setzero_ps(); T];
        for j in 0..T {
            xq[j] = load_x_q4(&xg[j][g]);
            dx[j] = scales8(&xg[j][g]);
        }
        for i in 0..R {
            let wq = load_w_q4(&wg[i][g]);
            let (dw, mw) = scales_q4(&wg[i][g]);
            for j in 0..T {
                acc[i][j] = accumulate_q4(acc[i][j], isum8_q4(&wq, &xq[j]), xq[j].sum, dw, mw, dx[j]);
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
            sx[j] = xsum_tail(xt[j]);
        }
        for i in 0..R {
            let (dw, mw) = scales_q4_tail(wt[i]);
            for j in 0..T {
                acc[i][j] = accumulate_q4(acc[i][j], isum_tail_q4(wt[i], xt[j]), sx[j], dw, mw, dx[j]);
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load8(v: &[f32; 8]) -> __m256 {
    // SAFETY: `v` is 8 readable floats; `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load16(v: &[f32; 16]) -> __m512 {
    // SAFETY: `v` is 16 readable floats; `loadu` needs no alignment.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_qs(b: &BlockQ8) -> __m256i {
    // SAFETY: `b.qs` is 32 readable bytes; `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(b.qs.as_ptr().cast()) }
}

/// Quants of blocks `a` (low 256 bits) and `b` (high 256 bits).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_pair(a: &BlockQ8, b: &BlockQ8) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load_qs(a)), load_qs(b))
}

/// Weight operand of 8 blocks, blocks `(j, j + 4)` in register `j`, as the unsigned
/// bytes `w + 128` (`w ^ 0x80`).
#[derive(Clone, Copy)]
struct WeightGroup([__m512i; 4]);

/// Activation operand of 8 blocks, blocks `(j, j + 4)` in register `j`, with the bias
/// correction `-128 * (x_4l + .. + x_4l+3)` per i32 lane `l`.
#[derive(Clone, Copy)]
struct ActGroup {
    q: [__m512i; 4],
    correction: [__m512i; 4],
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_w(w: &[BlockQ8; 8]) -> WeightGroup {
    let bias = _mm512_set1_epi8(i8::MIN);
    let mut g = WeightGroup([_mm512_setzero_si512(); 4]);
    for (j, g) in g.0.iter_mut().enumerate() {
        *g = _mm512_xor_si512(load_pair(&w[j], &w[j + 4]), bias);
    }
    g
}

/// [`load_w`] of the fewer than 8 blocks of a row's tail, the missing blocks zero.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_w_tail(w: &[BlockQ8]) -> WeightGroup {
    let bias = _mm256_set1_epi8(i8::MIN);
    let half = |j: usize| w.get(j).map_or(_mm256_setzero_si256(), |b| _mm256_xor_si256(load_qs(b), bias));
    let mut g = WeightGroup([_mm512_setzero_si512(); 4]);
    for (j, g) in g.0.iter_mut().enumerate() {
        *g = _mm512_inserti64x4::<1>(_mm512_zextsi256_si512(half(j)), half(j + 4));
    }
    g
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_x(x: &[BlockQ8; 8]) -> ActGroup {
    let zero = _mm512_setzero_si512();
    let bias = _mm512_set1_epi8(i8::MIN);
    let mut g = ActGroup { q: [zero; 4], correction: [zero; 4] };
    for j in 0..4 {
        g.q[j] = load_pair(&x[j], &x[j + 4]);
        g.correction[j] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, g.q[j]));
    }
    g
}

/// The exact i32 dot products of 8 block pairs, pair `j` in lane `j`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn isum8(w: &[BlockQ8; 8], x: &[BlockQ8; 8]) -> __m256i {
    isum8_loaded(&load_w(w), &load_x(x))
}

/// [`isum8`] of loaded operands. `vpdpbusd` takes unsigned by signed bytes, so the
/// weights go in as `w + 128` and each i32 lane starts from `-128 * sum(x)` over its 4
/// bytes: `sum((w + 128) * x) - 128 * sum(x) = sum(w * x)`, exact for every i8 (the
/// instruction adds in i32 without saturating, and no value comes near 2^31). Register
/// `j` then holds 8 partial sums of block `j` and 8 of block `j + 4`; the unpack/add
/// tree leaves, in each 128-bit lane, one partial sum of 4 blocks, and the last step
/// adds the two 128-bit lanes of each block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn isum8_loaded(w: &WeightGroup, x: &ActGroup) -> __m256i {
    fold_pairs(isum8_partials(w, x))
}

/// The i32 partial sums of [`isum8_loaded`] before the fold.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn isum8_partials(w: &WeightGroup, x: &ActGroup) -> [__m512i; 4] {
    let mut p = [_mm512_setzero_si512(); 4];
    for (j, p) in p.iter_mut().enumerate() {
        *p = _mm512_dpbusd_epi32(x.correction[j], w.0[j], x.q[j]);
    }
    p
}

/// Lane `j` of the result = the sum of the 8 i32 lanes of block `j` (register `j % 4`,
/// low half for `j < 4`, high half otherwise): the unpack/add tree of [`isum8_loaded`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn fold_pairs(p: [__m512i; 4]) -> __m256i {
    // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d.
    let ab = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    let cd = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
    // Per 128-bit lane L: [a_L, b_L, c_L, d_L]; lanes 0, 1 are blocks 0..4, lanes 2, 3
    // blocks 4..8.
    let abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    // Reorder to lanes [0, 2 | 1, 3] and add the halves: [0+1, 2+3].
    let s = _mm512_shuffle_i32x4::<0b11_01_10_00>(abcd, abcd);
    _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s))
}

/// [`fold_pairs`] of two rows at once: lanes 0..8 of the result are `a`'s block sums,
/// lanes 8..16 `b`'s. The last step, one shuffle per row in [`fold_pairs`], takes two
/// shuffles for both rows here.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn fold_pairs2(a: [__m512i; 4], b: [__m512i; 4]) -> __m512i {
    let half_fold = |p: [__m512i; 4]| {
        let ab = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
        let cd = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
        _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd))
    };
    let (a, b) = (half_fold(a), half_fold(b));
    // 128-bit lanes [a0, a2, b0, b2] + [a1, a3, b1, b3].
    let even = _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b);
    let odd = _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b);
    _mm512_add_epi32(even, odd)
}

/// `lo` in lanes 0..8, `hi` in lanes 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn concat8(lo: __m256, hi: __m256) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi)))
}

/// [`accumulate`] on 16 lanes (two rows' 8 lanes each).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn accumulate16(acc: __m512, isum: __m512i, dw: __m512, dx: __m512) -> __m512 {
    _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, dx)))
}

/// Activation operand of 8 blocks for q4 weights: blocks `(j, j + 4)` in register `j`,
/// and the blocks' sums `sum x_i` as f32 lanes (exact: |sum| <= 4096).
#[derive(Clone, Copy)]
struct ActGroupQ4 {
    q: [__m512i; 4],
    sum: __m256,
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_x_q4(x: &[BlockQ8; 8]) -> ActGroupQ4 {
    let zero = _mm512_setzero_si512();
    let ones = _mm512_set1_epi8(1);
    let mut q = [zero; 4];
    let mut sums = [zero; 4];
    for j in 0..4 {
        q[j] = load_pair(&x[j], &x[j + 4]);
        sums[j] = _mm512_dpbusd_epi32(zero, ones, q[j]);
    }
    ActGroupQ4 { q, sum: _mm256_cvtepi32_ps(fold_pairs(sums)) }
}

/// Weight operand of 8 q4 blocks in [`load_x_q4`]'s layout: register `j` holds block
/// `j`'s quants in its low 256 bits and block `j + 4`'s in its high 256 bits, each as
/// 32 bytes in [0, 15] in element order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_w_q4(w: &[BlockQ4; 8]) -> [__m512i; 4] {
    let mask = _mm512_set1_epi8(0x0f);
    // 64-bit elements 2, 3, 6, 7 (128-bit lanes 1 and 3) take the high nibbles.
    let shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
    let mut v = [_mm512_setzero_si512(); 4];
    for (j, v) in v.iter_mut().enumerate() {
        // SAFETY: each `qs` is 16 readable bytes; `loadu` needs no alignment.
        let (a, b) =
            unsafe { (_mm_loadu_si128(w[j].qs.as_ptr().cast()), _mm_loadu_si128(w[j + 4].qs.as_ptr().cast())) };
        let both = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(a), 0xff00, b);
        *v = _mm512_and_si512(_mm512_srlv_epi64(both, shift), mask);
    }
    v
}

/// The exact `sum q_i * x_i` of 8 block pairs, pair `j` in lane `j`: `vpdpbusd` of the
/// unsigned quants and the signed activations, exact for every i8 activation.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn isum8_q4(w: &[__m512i; 4], x: &ActGroupQ4) -> __m256i {
    let zero = _mm512_setzero_si512();
    let mut p = [zero; 4];
    for (j, p) in p.iter_mut().enumerate() {
        *p = _mm512_dpbusd_epi32(zero, w[j], x.q[j]);
    }
    fold_pairs(p)
}

/// [`isum8_q4`] of the fewer than 8 pairs of a row's tail, one ymm `vpdpbusd` per block;
/// the missing lanes are 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn isum_tail_q4(w: &[BlockQ4], x: &[BlockQ8]) -> __m256i {
    let zero = _mm256_setzero_si256();
    let mask = _mm256_set1_epi8(0x0f);
    let mut v = [zero; 8];
    for ((v, w), x) in v.iter_mut().zip(w).zip(x) {
        // SAFETY: `w.qs` is 16 readable bytes; `loadu` needs no alignment.
        let q = unsafe { _mm_loadu_si128(w.qs.as_ptr().cast()) };
        let wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), mask);
        *v = _mm256_dpbusd_epi32(zero, wq, load_qs(x));
    }
    hsum_tail(v, w.len())
}

/// The sums `sum x_i` of up to 8 blocks as f32 lanes, lanes past `x.len()` +0.0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn xsum_tail(x: &[BlockQ8]) -> __m256 {
    let zero = _mm256_setzero_si256();
    let ones = _mm256_set1_epi8(1);
    let mut v = [zero; 8];
    for (v, x) in v.iter_mut().zip(x) {
        *v = _mm256_dpbusd_epi32(zero, ones, load_qs(x));
    }
    _mm256_cvtepi32_ps(hsum_tail(v, x.len()))
}

/// The scales `d` and minima `m` of 8 q4 blocks as f32 lanes (exact, as in
/// [`scales_tail`]). Block `j`'s `d` and `m` are dword `5 j` of the 160-byte group (a
/// block is 5 dwords), so two 64-byte loads and one `vpermt2d` collect them, and
/// `vpmovdw` splits `d` (low halves) from `m` (high halves).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales_q4(b: &[BlockQ4; 8]) -> (__m256, __m256) {
    let bytes: &[u8; 160] = bytemuck::cast_ref(b);
    // SAFETY: bytes 0..64 and 80..144 lie within the 160-byte group; `loadu` needs no
    // alignment.
    let (lo, hi) =
        unsafe { (_mm512_loadu_si512(bytes.as_ptr().cast()), _mm512_loadu_si512(bytes.as_ptr().add(80).cast())) };
    // Blocks 0..4 at dwords 0, 5, 10, 15 of `lo`; blocks 4..8 at 0, 5, 10, 15 of `hi`.
    let idx = _mm512_setr_epi32(0, 5, 10, 15, 16, 21, 26, 31, 0, 0, 0, 0, 0, 0, 0, 0);
    let dm = _mm512_castsi512_si256(_mm512_permutex2var_epi32(lo, idx, hi));
    (_mm256_cvtph_ps(_mm256_cvtepi32_epi16(dm)), _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32::<16>(dm))))
}

/// [`scales_q4`] of up to 8 blocks (a row's tail), lanes past `b.len()` +0.0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales_q4_tail(b: &[BlockQ4]) -> (__m256, __m256) {
    let dm = |j: usize| b.get(j).map_or(0, |b| u32::from_le_bytes([b.d[0], b.d[1], b.m[0], b.m[1]])) as i32;
    let dm = _mm256_setr_epi32(dm(0), dm(1), dm(2), dm(3), dm(4), dm(5), dm(6), dm(7));
    (_mm256_cvtph_ps(_mm256_cvtepi32_epi16(dm)), _mm256_cvtph_ps(_mm256_cvtepi32_epi16(_mm256_srli_epi32::<16>(dm))))
}

/// Lane `j` += `isum_j as f32 * (dw_j * dx_j) + xsum_j * (mw_j * dx_j)`: the scalar
/// expression of [`scalar::dot_q4_q8`], lane-wise, no fused multiply-add.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn accumulate_q4(acc: __m256, isum: __m256i, xsum: __m256, dw: __m256, mw: __m256, dx: __m256) -> __m256 {
    let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx));
    let offset = _mm256_mul_ps(xsum, _mm256_mul_ps(mw, dx));
    _mm256_add_ps(acc, _mm256_add_ps(scaled, offset))
}

/// The 8 blocks' scales as f32, equal to [`BlockQ8::scale`]: `vcvtph2ps` is exact, as
/// every f16 (subnormals included) is an f32. The halves are assembled in general
/// registers: that measured faster than `vpgatherdd` on Sapphire Rapids, and gathers
/// are slower still on CPUs with the Downfall microcode fix.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales8(b: &[BlockQ8; 8]) -> __m256 {
    scales_tail(b)
}

/// The scales of up to 8 blocks as f32 lanes, lanes past `b.len()` +0.0. A missing
/// block (scale 0, isum 0) adds +0.0 to its lane, which leaves the lane unchanged: lanes
/// start at +0.0, and a sum that starts at +0.0 is never -0.0 in round-to-nearest.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales_tail(b: &[BlockQ8]) -> __m256 {
    let mut h = [0u64; 2];
    for (j, b) in b.iter().take(8).enumerate() {
        h[j / 4] |= (u16::from_le_bytes(b.d) as u64) << (16 * (j % 4));
    }
    _mm256_cvtph_ps(_mm_set_epi64x(h[1] as i64, h[0] as i64))
}

/// [`isum8`] of the fewer than 8 pairs of a row's tail, one ymm `vpdpbusd` per block
/// in the same biased form; the missing lanes are 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn isum_tail(w: &[BlockQ8], x: &[BlockQ8]) -> __m256i {
    let zero = _mm256_setzero_si256();
    let bias = _mm256_set1_epi8(i8::MIN);
    let mut v = [zero; 8];
    for ((v, w), x) in v.iter_mut().zip(w).zip(x) {
        let (w, x) = (load_qs(w), load_qs(x));
        let correction = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, x));
        *v = _mm256_dpbusd_epi32(correction, _mm256_xor_si256(w, bias), x);
    }
    hsum_tail(v, w.len())
}

/// Lane `j` = the sum of the 8 lanes of `v[j]`, for `v[len..]` zero; a shorter tree
/// when `len <= 4`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum_tail(v: [__m256i; 8], len: usize) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    // 128-bit half h of h0123 holds [v0, v1, v2, v3] summed over that half's lanes.
    let h0123 = _mm256_hadd_epi32(h01, h23);
    if len <= 4 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(h0123), _mm256_extracti128_si256::<1>(h0123));
        return _mm256_zextsi128_si256(s);
    }
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    let h4567 = _mm256_hadd_epi32(h45, h67);
    let same = _mm256_blend_epi32::<0xf0>(h0123, h4567);
    let swapped = _mm256_permute2x128_si256::<0x21>(h0123, h4567);
    _mm256_add_epi32(same, swapped)
}

/// Lane `j` += `isum_j as f32 * (dw_j * dx_j)`: the scalar expression, lane-wise. No
/// fused multiply-add: LLVM does not contract separate `vmulps`/`vaddps` intrinsics.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn accumulate(acc: __m256, isum: __m256i, dw: __m256, dx: __m256) -> __m256 {
    _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx)))
}

/// [`scalar::reduce8`] on the lanes: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn reduce8(acc: __m256) -> f32 {
    let a = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps::<1>(b, b)))
}

/// `clamp(rint(y), -127, 127)` as i32 lanes, NaN to 0, exactly as the scalar
/// `rintf(y).clamp(-127.0, 127.0) as i8`: clamping first is the same (the bounds are
/// integers), `vmaxps`/`vminps` pass a NaN `y` through (it is their second operand),
/// the ordered mask zeroes it, and `vcvtps2dq` rounds half to even.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn round_clamp(y: __m512) -> __m512i {
    let c = _mm512_min_ps(_mm512_set1_ps(127.0), _mm512_max_ps(_mm512_set1_ps(-127.0), y));
    let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y);
    _mm512_cvtps_epi32(_mm512_maskz_mov_ps(ordered, c))
}
