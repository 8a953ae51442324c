//! The AVX-512 VNNI tier (avx512f, avx512bw, avx512vl, avx512vnni): bit-exact with
//! [`scalar`].
//!
//! q8 blocks: two blocks per zmm register, `vpdpbusd` of `w + 128` (unsigned) and `x`
//! (signed) into i32 lanes that start at `-128 * sum(x)` gives 8 exact partial sums per
//! block pair for any i8 values, and an unpack/add tree folds 8 blocks into one ymm
//! register with block `j` in lane `j`. The float part is the scalar one done 8 lanes at
//! a time (see the [`super`] docs); f32 kernels use the 32 ymm registers for wider
//! tiles. With one token (decode) the q8 matmul is bound by DRAM: it prefetches the
//! weights ahead of the math (how far: [`crate::kernels::tune`]) and folds two rows into one zmm register, so
//! the last fold step and the float part run 16 lanes wide. With 4 tokens or more (prefill)
//! it packs 16-row panels into a transposed layout on the stack instead (`PanelBlock`),
//! which needs no folds at all.
//!
//! q4 weights x q8 activations: the quants are unsigned already, so `vpdpbusd` takes
//! them without the bias: two 16-byte loads broadcast into a zmm register, `vpsrlvq`
//! by 0 or 4 per 128-bit lane and `and 0x0f` lay out blocks `(j, j + 4)` in the q8
//! operand's order, and `vpdpbusd` with ones gives the activation sums the minimum
//! needs, folded by the same tree.

use core::arch::x86_64::*;

use half::f16;

use super::{accumulate, accumulate_q4, load_qs, prefetch, reduce8, scales8, scales_tail, F32};
use crate::kernels::tiling::{self, MicroKernel, Shape};
use crate::kernels::{scalar, tune, Kernels, Strided};
use crate::quant::{BlockQ4, BlockQ8, QK8};

/// Weight rows per q8 matmul tile.
const TILE_ROWS_Q8: usize = 8;
/// Weight row pairs per tile of the one-token (matrix-vector) q8 path.
const GEMV_PAIRS_Q8: usize = 2;
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
pub(in crate::kernels) static KERNELS: Kernels = simd_table!("avx512vnni");

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

// ---------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------

/// [`scalar::dot_q8`], bit for bit, for any i8 quants.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8(a: &[BlockQ8], b: &[BlockQ8]) -> f32 {
    // SAFETY: `Q8`'s methods need the features the caller guarantees.
    unsafe { tiling::dot::<Q8>(a, b) }
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
        // The AVX2 path is exact for activation quants in [-127, 127] (what the
        // quantizer makes); a -128 keeps this tier's own path, exact for any i8.
        if tune::decode_tier() == tune::DecodeTier::Avx2 && !x.iter().any(|b| b.qs.contains(&i8::MIN)) {
            // SAFETY: this tier's features include avx2 and f16c, all the AVX2 tier needs.
            return unsafe { super::avx2::matmul_q8(w, rows, x, out) };
        }
        if tune::decode_rows() == tune::DecodeRows::One {
            // One sequential stream of weights (see `tune`).
            // SAFETY: `Q8`'s methods need the features the caller guarantees.
            return unsafe { tiling::walk::<Avx512, Q8, 1, 1, true>(w, x, out, shape) };
        }
        return q8_gemv(w, x, out, shape);
    }
    if shape.n >= PACKED_MIN_TOKENS && shape.kb <= PANEL_MAX_KB {
        return q8_packed(w, x, out, shape);
    }
    // SAFETY: `Q8`'s methods need the features the caller guarantees.
    unsafe { tiling::walk::<Avx512, Q8, TILE_ROWS_Q8, TILE_TOKENS_Q8, false>(w, x, out, shape) }
}

/// [`scalar::dot_q4_q8`], bit for bit, for any i8 activation quants.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q4_q8(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    // SAFETY: `Q4`'s methods need the features the caller guarantees.
    unsafe { tiling::dot::<Q4>(w, x) }
}

/// [`scalar::matmul_q4_q8`], bit for bit, for any i8 activation quants: tiles of
/// 8 weight rows x 4 tokens, each output equal to [`dot_q4_q8`] of its row and token.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn matmul_q4_q8(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let one_token = Shape::of(w.len(), rows, x.len(), out.len()).is_some_and(|s| s.n == 1);
    if one_token && tune::decode_tier() == tune::DecodeTier::Avx2 {
        // The AVX2 path is exact for any i8 activations.
        // SAFETY: this tier's features include avx2 and f16c, all the AVX2 tier needs.
        return unsafe { super::avx2::matmul_q4_q8(w, rows, x, out) };
    }
    if let Some(s) = tiling::one_token_by_rows(w.len(), rows, x.len(), out.len()) {
        // SAFETY: `Q4`'s methods need the features the caller guarantees.
        return unsafe { tiling::walk::<Avx512, Q4, 1, 1, true>(w, x, out, s) };
    }
    // SAFETY: `Q4`'s methods need the features the caller guarantees.
    unsafe { tiling::matmul::<Avx512, Q4, TILE_ROWS_Q4, TILE_TOKENS_Q4, true>(w, rows, x, out, scalar::matmul_q4_q8) }
}

/// [`scalar::dot_f32`], bit for bit. One chain of 8-lane adds, as the contract's
/// summation order requires.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: `F32`'s methods need avx2 and f16c, which the caller guarantees.
    unsafe { tiling::dot::<F32>(a, b) }
}

/// [`scalar::attn_scores`], bit for bit (`super::attn`).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn attn_scores(q: &[f32], keys: Strided<'_>, out: &mut [f32], out_stride: usize) {
    super::attn::scores(q, keys, out, out_stride)
}

/// [`scalar::attn_values`], bit for bit (`super::attn`).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn attn_values(w: &[f32], w_stride: usize, values: Strided<'_>, out: &mut [f32]) {
    super::attn::values(w, w_stride, values, out)
}

/// [`scalar::f16_to_f32`] by F16C (`super::f16`).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    super::f16::f16_to_f32(src, dst)
}

/// [`scalar::f32_to_f16`] by F16C (`super::f16`).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    super::f16::f32_to_f16(src, dst)
}

/// [`crate::math::log_sum_exp`] at this tier's width: the same operations per
/// element, so the same bits.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn log_sum_exp(x: &[f32]) -> f64 {
    crate::math::log_sum_exp(x)
}

/// [`crate::math::map_f32`] at this tier's width, likewise.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn map_f32(f: crate::math::Unary, x: &mut [f32]) {
    crate::math::map_f32(f, x)
}

/// [`crate::math::softmax_rows`] at this tier's width (`super::attn`).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn softmax_rows(x: &mut [f32], rows: usize, n: usize, stride: usize) {
    super::attn::softmax_rows(x, rows, n, stride)
}

/// [`scalar::matmul_f32`], bit for bit: tiles of 4 weight rows x 4 tokens.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni, avx2, fma and f16c.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn matmul_f32(w: &[f32], rows: usize, x: &[f32], out: &mut [f32]) {
    // SAFETY: `F32`'s methods need the features the caller guarantees.
    unsafe { tiling::matmul::<Avx512, F32, TILE_ROWS_F32, TILE_TOKENS_F32, false>(w, rows, x, out, scalar::matmul_f32) }
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
// Microkernels of the tiling driver
// ---------------------------------------------------------------------------------------
//
// `inline(always)` (for the driver, see `tiling`) rules out `#[target_feature]` on these
// methods, so their bodies sit in `unsafe` blocks: the helpers they call need the
// features their callers guarantee (this tier's, see `detected`).

/// This tier's features, for the tiling driver's panels.
struct Avx512;

impl tiling::Tier for Avx512 {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn panel<K: MicroKernel, const R: usize, const T: usize, const PREFETCH: bool>(
        w: &[K::W],
        x: &[K::X],
        out: &mut [f32],
        s: Shape,
        r0: usize,
    ) {
        // SAFETY: `K` is one of this tier's microkernels, whose features this fn has.
        unsafe { tiling::panel::<K, R, T, PREFETCH>(w, x, out, s, r0) }
    }
}

/// The tiled q8 matmul's groups (2 or 3 tokens, or rows too long for a packed panel):
/// each group of 8 blocks loaded into `vpdpbusd` operands once per tile
/// ([`load_w`], [`load_x`]), the scales converted once.
struct Q8;

impl MicroKernel for Q8 {
    type W = BlockQ8;
    type X = BlockQ8;
    type Acc = __m256;
    type XGroup = (ActGroup, __m256);
    type WGroup = (WeightGroup, __m256);
    type XTail = __m256;
    type WTail = __m256;

    #[inline(always)]
    unsafe fn x_group(x: &[BlockQ8; 8]) -> (ActGroup, __m256) {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { (load_x(x), scales8(x)) }
    }

    #[inline(always)]
    unsafe fn w_group(w: &[BlockQ8; 8]) -> (WeightGroup, __m256) {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { (load_w(w), scales8(w)) }
    }

    #[inline(always)]
    unsafe fn group(
        acc: __m256,
        _: &[BlockQ8; 8],
        (wq, dw): &(WeightGroup, __m256),
        _: &[BlockQ8; 8],
        (xq, dx): &(ActGroup, __m256),
    ) -> __m256 {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { accumulate(acc, isum8_loaded(wq, xq), *dw, *dx) }
    }

    #[inline(always)]
    unsafe fn x_tail(x: &[BlockQ8]) -> __m256 {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { scales_tail(x) }
    }

    #[inline(always)]
    unsafe fn w_tail(w: &[BlockQ8]) -> __m256 {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { scales_tail(w) }
    }

    #[inline(always)]
    unsafe fn tail(acc: __m256, w: &[BlockQ8], dw: &__m256, x: &[BlockQ8], dx: &__m256) -> __m256 {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { accumulate(acc, isum_tail(w, x), *dw, *dx) }
    }
}

/// The q4 x q8 matmul's groups: each group of 8 weight blocks unpacked once per tile
/// ([`load_w_q4`]), each token's activations, scales and sums loaded once per group.
struct Q4;

/// A q4 weight group for [`Q4`]: the unpacked quants and the scales and minima.
struct Q4Weights {
    q: [__m512i; 4],
    d: __m256,
    m: __m256,
}

/// A token's tail group for [`Q4`]: scales and activation sums.
#[derive(Clone, Copy)]
struct XTailQ4 {
    d: __m256,
    sum: __m256,
}

impl MicroKernel for Q4 {
    type W = BlockQ4;
    type X = BlockQ8;
    type Acc = __m256;
    type XGroup = (ActGroupQ4, __m256);
    type WGroup = Q4Weights;
    type XTail = XTailQ4;
    type WTail = (__m256, __m256);

    #[inline(always)]
    unsafe fn x_group(x: &[BlockQ8; 8]) -> (ActGroupQ4, __m256) {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { (load_x_q4(x), scales8(x)) }
    }

    #[inline(always)]
    unsafe fn w_group(w: &[BlockQ4; 8]) -> Q4Weights {
        // SAFETY: the caller guarantees this tier's features.
        unsafe {
            let q = load_w_q4(w);
            let (d, m) = scales_q4(w);
            Q4Weights { q, d, m }
        }
    }

    #[inline(always)]
    unsafe fn group(
        acc: __m256,
        _: &[BlockQ4; 8],
        w: &Q4Weights,
        _: &[BlockQ8; 8],
        (xq, dx): &(ActGroupQ4, __m256),
    ) -> __m256 {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { accumulate_q4(acc, isum8_q4(&w.q, xq), xq.sum, w.d, w.m, *dx) }
    }

    #[inline(always)]
    unsafe fn x_tail(x: &[BlockQ8]) -> XTailQ4 {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { XTailQ4 { d: scales_tail(x), sum: xsum_tail(x) } }
    }

    #[inline(always)]
    unsafe fn w_tail(w: &[BlockQ4]) -> (__m256, __m256) {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { scales_q4_tail(w) }
    }

    #[inline(always)]
    unsafe fn tail(acc: __m256, w: &[BlockQ4], (dw, mw): &(__m256, __m256), x: &[BlockQ8], xp: &XTailQ4) -> __m256 {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { accumulate_q4(acc, isum_tail_q4(w, x), xp.sum, *dw, *mw, xp.d) }
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8, len: usize) {
        // SAFETY: the caller guarantees this tier's features.
        unsafe { prefetch(p, len) }
    }
}

// ---------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------

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
        // SAFETY: `Q8`'s methods need this fn's features.
        unsafe { tiling::tile::<Q8, 1, 1, false>(w, x, out, s, r0, 0) };
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
    let distance = tune::prefetch_distance();
    let ahead = tile.as_ptr().cast::<u8>().wrapping_add(distance);
    // A distance of 0 turns prefetching off: every `prefetch` of 0 bytes does nothing.
    let step = if distance > 0 { size_of_val(tile).div_ceil(steps) } else { 0 };
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

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load16(v: &[f32; 16]) -> __m512 {
    // SAFETY: `v` is 16 readable floats; `loadu` needs no alignment.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
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

/// The exact i32 dot products of 8 block pairs, pair `j` in lane `j`, from operands loaded
/// by [`load_w`] and [`load_x`]. `vpdpbusd` takes unsigned by signed bytes, so the
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

/// [`isum8_loaded`] of the fewer than 8 pairs of a row's tail, one ymm `vpdpbusd` per block
/// in the same biased form; the missing lanes are 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn isum_tail(w: &[BlockQ8], x: &[BlockQ8]) -> __m256i {
    let zero = _mm256_setzero_si256();
    let bias = _mm256_set1_epi8(i8::MIN);
    let len = w.len().min(x.len());
    let mut v = [zero; 8];
    // A constant trip count: the loop unrolls and `v` stays in registers.
    for (j, v) in v.iter_mut().enumerate() {
        if j < len {
            let (w, x) = (load_qs(&w[j]), load_qs(&x[j]));
            let correction = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, x));
            *v = _mm256_dpbusd_epi32(correction, _mm256_xor_si256(w, bias), x);
        }
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
