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

use super::{accumulate, accumulate_q4, load8, load_qs, prefetch, scales8, scales_tail, F32};
use crate::kernels::tiling::{self, MicroKernel, Shape};
use crate::kernels::{scalar, Kernels, Strided};
use crate::quant::{BlockQ4, BlockQ8, QK8};

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
pub(in crate::kernels) static KERNELS: Kernels = simd_table!("avx2");

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
    // SAFETY: `Q8`'s methods need avx2 and f16c, which the caller guarantees.
    unsafe { tiling::dot::<Q8>(a, b) }
}

/// [`scalar::matmul_q8`], bit for bit, when `x`'s quants are in [-127, 127] (as the
/// quantizer makes them; `w` may hold any i8): tiles of
/// 4 weight rows x 2 tokens, each output equal to [`dot_q8`] of its row and token.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn matmul_q8(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    if let Some(s) = tiling::one_token_by_rows(w.len(), rows, x.len(), out.len()) {
        // SAFETY: `Q8`'s methods need avx2 and f16c, which the caller guarantees.
        return unsafe { tiling::walk::<Avx2, Q8, 1, 1, true>(w, x, out, s) };
    }
    // SAFETY: `Q8`'s methods need avx2 and f16c, which the caller guarantees.
    unsafe { tiling::matmul::<Avx2, Q8, TILE_ROWS, TILE_TOKENS_Q8, true>(w, rows, x, out, scalar::matmul_q8) }
}

/// [`scalar::dot_q4_q8`], bit for bit, for any i8 activation quants.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn dot_q4_q8(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    // SAFETY: `Q4`'s methods need avx2 and f16c, which the caller guarantees.
    unsafe { tiling::dot::<Q4>(w, x) }
}

/// [`scalar::matmul_q4_q8`], bit for bit, for any i8 activation quants: tiles of
/// 4 weight rows x 2 tokens, each output equal to [`dot_q4_q8`] of its row and token.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn matmul_q4_q8(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    if let Some(s) = tiling::one_token_by_rows(w.len(), rows, x.len(), out.len()) {
        // SAFETY: `Q4`'s methods need avx2 and f16c, which the caller guarantees.
        return unsafe { tiling::walk::<Avx2, Q4, 1, 1, true>(w, x, out, s) };
    }
    // SAFETY: `Q4`'s methods need avx2 and f16c, which the caller guarantees.
    unsafe { tiling::matmul::<Avx2, Q4, TILE_ROWS, TILE_TOKENS_Q4, true>(w, rows, x, out, scalar::matmul_q4_q8) }
}

/// [`scalar::dot_f32`], bit for bit.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: `F32`'s methods need avx2 and f16c, which the caller guarantees.
    unsafe { tiling::dot::<F32>(a, b) }
}

/// [`scalar::attn_scores`], bit for bit (`super::attn`).
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn attn_scores(q: &[f32], keys: Strided<'_>, out: &mut [f32], out_stride: usize) {
    super::attn::scores(q, keys, out, out_stride)
}

/// [`scalar::attn_values`], bit for bit (`super::attn`).
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn attn_values(w: &[f32], w_stride: usize, values: Strided<'_>, out: &mut [f32]) {
    super::attn::values(w, w_stride, values, out)
}

/// [`scalar::f16_to_f32`] by F16C (`super::f16`).
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    super::f16::f16_to_f32(src, dst)
}

/// [`scalar::f32_to_f16`] by F16C (`super::f16`).
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    super::f16::f32_to_f16(src, dst)
}

/// [`crate::math::log_sum_exp`] at this tier's width: the same operations per
/// element, so the same bits.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn log_sum_exp(x: &[f32]) -> f64 {
    crate::math::log_sum_exp(x)
}

/// [`crate::math::map_f32`] at this tier's width, likewise.
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn map_f32(f: crate::math::Unary, x: &mut [f32]) {
    crate::math::map_f32(f, x)
}

/// [`crate::math::softmax_rows`] at this tier's width (`super::attn`).
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn softmax_rows(x: &mut [f32], rows: usize, n: usize, stride: usize) {
    super::attn::softmax_rows(x, rows, n, stride)
}

/// [`scalar::matmul_f32`], bit for bit: tiles of 4 weight rows x 2 tokens; the 8 (R x T)
/// independent accumulators hide the add latency that bounds a single [`dot_f32`].
///
/// # Safety
/// The CPU must support avx2 and f16c.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn matmul_f32(w: &[f32], rows: usize, x: &[f32], out: &mut [f32]) {
    // SAFETY: `F32`'s methods need avx2 and f16c, which the caller guarantees.
    unsafe { tiling::matmul::<Avx2, F32, TILE_ROWS, TILE_TOKENS_F32, false>(w, rows, x, out, scalar::matmul_f32) }
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
// Microkernels of the tiling driver
// ---------------------------------------------------------------------------------------
//
// `inline(always)` (for the driver, see `tiling`) rules out `#[target_feature]` on these
// methods, so their bodies sit in `unsafe` blocks: the helpers they call need the avx2
// and f16c their callers guarantee.

/// This tier's features, for the tiling driver's panels.
struct Avx2;

impl tiling::Tier for Avx2 {
    #[target_feature(enable = "avx2,f16c")]
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

/// The q8 matmul's groups: each block pair by [`isum8`] / [`isum_tail`], the scales
/// converted once per tile and group.
struct Q8;

impl MicroKernel for Q8 {
    type W = BlockQ8;
    type X = BlockQ8;
    type Acc = __m256;
    type XGroup = __m256;
    type WGroup = __m256;
    type XTail = __m256;
    type WTail = __m256;

    #[inline(always)]
    unsafe fn x_group(x: &[BlockQ8; 8]) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { scales8(x) }
    }

    #[inline(always)]
    unsafe fn w_group(w: &[BlockQ8; 8]) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { scales8(w) }
    }

    #[inline(always)]
    unsafe fn group(acc: __m256, w: &[BlockQ8; 8], dw: &__m256, x: &[BlockQ8; 8], dx: &__m256) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { accumulate(acc, isum8(w, x), *dw, *dx) }
    }

    #[inline(always)]
    unsafe fn x_tail(x: &[BlockQ8]) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { scales_tail(x) }
    }

    #[inline(always)]
    unsafe fn w_tail(w: &[BlockQ8]) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { scales_tail(w) }
    }

    #[inline(always)]
    unsafe fn tail(acc: __m256, w: &[BlockQ8], dw: &__m256, x: &[BlockQ8], dx: &__m256) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { accumulate(acc, isum_tail(w, x), *dw, *dx) }
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8, len: usize) {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { prefetch(p, len) }
    }
}

/// The q4 x q8 matmul's groups: each group of 8 weight blocks is unpacked once per tile,
/// each token's scales and activation sums computed once per group.
struct Q4;

/// A q4 group ready for the tile: unpacked quants ([`unpack_q4`]), scales and minima
/// ([`scales_q4`]).
struct Q4Group {
    quants: [__m256i; 8],
    d: __m256,
    m: __m256,
}

/// A token's group for [`Q4`]: its scales and activation sums ([`xsum`]).
#[derive(Clone, Copy)]
struct XScales {
    d: __m256,
    sum: __m256,
}

impl Q4 {
    /// # Safety
    /// The CPU must support avx2 and f16c.
    #[inline(always)]
    unsafe fn prepare_w(w: &[BlockQ4]) -> Q4Group {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe {
            let (d, m) = scales_q4(w);
            Q4Group { quants: unpack_q4(w), d, m }
        }
    }

    /// # Safety
    /// The CPU must support avx2 and f16c.
    #[inline(always)]
    unsafe fn prepare_x(x: &[BlockQ8]) -> XScales {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { XScales { d: scales_tail(x), sum: xsum(x) } }
    }

    /// # Safety
    /// The CPU must support avx2 and f16c.
    #[inline(always)]
    unsafe fn add(acc: __m256, w: &Q4Group, x: &[BlockQ8], xs: &XScales) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { accumulate_q4(acc, isum_q4(&w.quants, x), xs.sum, w.d, w.m, xs.d) }
    }
}

impl MicroKernel for Q4 {
    type W = BlockQ4;
    type X = BlockQ8;
    type Acc = __m256;
    type XGroup = XScales;
    type WGroup = Q4Group;
    type XTail = XScales;
    type WTail = Q4Group;

    #[inline(always)]
    unsafe fn x_group(x: &[BlockQ8; 8]) -> XScales {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { XScales { d: scales8(x), sum: xsum(x) } }
    }

    #[inline(always)]
    unsafe fn w_group(w: &[BlockQ4; 8]) -> Q4Group {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { Q4::prepare_w(w) }
    }

    #[inline(always)]
    unsafe fn group(acc: __m256, _: &[BlockQ4; 8], wp: &Q4Group, x: &[BlockQ8; 8], xp: &XScales) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { Q4::add(acc, wp, x, xp) }
    }

    #[inline(always)]
    unsafe fn x_tail(x: &[BlockQ8]) -> XScales {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { Q4::prepare_x(x) }
    }

    #[inline(always)]
    unsafe fn w_tail(w: &[BlockQ4]) -> Q4Group {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { Q4::prepare_w(w) }
    }

    #[inline(always)]
    unsafe fn tail(acc: __m256, _: &[BlockQ4], wp: &Q4Group, x: &[BlockQ8], xp: &XScales) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { Q4::add(acc, wp, x, xp) }
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8, len: usize) {
        // SAFETY: the caller guarantees avx2 and f16c.
        unsafe { prefetch(p, len) }
    }
}

// ---------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------

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
    let len = w.len().min(x.len());
    let mut v = [_mm256_setzero_si256(); 8];
    // A constant trip count: the loop unrolls and `v` stays in registers.
    for (j, v) in v.iter_mut().enumerate() {
        if j < len {
            *v = block_partials(&w[j], &x[j]);
        }
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
