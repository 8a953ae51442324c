//! x86_64 tiers. Both meet [`scalar`](super::scalar) bit for bit; the dispatch in
//! [`kernels`](super) installs a tier only after detecting its features.
//!
//! | tier | q8 integer part | f32 part | scales |
//! |---|---|---|---|
//! | `avx2` ([`avx2`]) | `vpsignb`, `vpmaddubsw`, `vpmaddwd`, `vphaddd` | `vmulps`, `vaddps` (ymm) | F16C `vcvtph2ps` |
//! | `avx512vnni` ([`avx512`]) | `vpxorq` (bias), `vpdpbusd` (zmm, two blocks per register), `vpunpck*`/`vpaddd` tree | `vmulps`, `vaddps` (ymm, 32 registers) | F16C `vcvtph2ps` |
//!
//! Why the results are identical to the scalar contract:
//!
//! - **Integer part.** Each block pair's dot product is computed exactly in i32, and
//!   integer addition is associative, so any reduction tree gives the same block sum
//!   (|sum| <= 32 * 128 * 128 < 2^24, so its f32 conversion is exact too). Both byte
//!   multipliers take unsigned by signed bytes:
//!   - avx2 rewrites `w * x` as `|w| * (x * sign(w))`. `|w|` <= 128 fits a u8 and the
//!     `vpmaddubsw` pair sums stay within 2 * 128 * 127 < 2^15 (no saturation), given
//!     `x` in [-127, 127], which the quantizer guarantees for activations (for
//!     `x = -128`, `x * sign(w)` would wrap). Weights may hold any i8.
//!   - avx512vnni feeds `w + 128` (`w ^ 0x80`, unsigned) and `x`, with each i32 lane
//!     starting at `-128 * sum(x)` over its 4 bytes: exact for every i8 on both sides,
//!     since `vpdpbusd` adds in i32 without saturating.
//! - **Float part.** The isums of 8 consecutive blocks sit in one register, block `j`
//!   in lane `j % 8`, the lane the scalar code uses. Lane-wise `cvtdq2ps`, `d_w * d_x`,
//!   `isum * (d_w * d_x)` and `acc + term` are the scalar operations in the scalar
//!   order, each rounded once (no FMA: the kernels never call an FMA intrinsic and LLVM
//!   does not contract separate multiplies and adds). The final fold is
//!   [`reduce8`](super::scalar::reduce8)'s order. f32 dot products are the same with
//!   element `i` in lane `i % 8`.
//! - **Tails.** A partial group is padded with zero blocks (or zero floats), whose
//!   contribution is +0.0; adding +0.0 leaves a lane unchanged because a lane starts at
//!   +0.0 and so is never -0.0.
//! - **Matmuls** are tiles of weight rows x tokens that reuse each loaded block across
//!   the tile; every output still runs its own dot product in the contract's order.
//!   avx512vnni's many-token q8 path transposes 16-row panels so a register holds one
//!   lane per row: its block sums are exact integers as above, and each output's 8
//!   float lanes become 8 registers (lane `j % 8` of 16 rows), added in the same order
//!   and folded by `reduce8`'s tree across the registers.
//! - **Quantizer.** `amax` by `maxps` (NaN skipped, as `f32::max` does; max is
//!   order-free otherwise), `d` and `1/d` in scalar f32, the scale by
//!   `half::f16::from_f32`, `vcvtps2dq` rounding half to even after clamping to ±127
//!   (the same as rounding first, since the bounds are integers), NaN to 0.
//!
//! NaN payloads are not part of the contract: a NaN result is NaN in every tier, but its
//! bits may differ.

mod attn;
pub mod avx2;
pub mod avx512;
mod f16;

// ---------------------------------------------------------------------------------------
// Building blocks of both tiers
// ---------------------------------------------------------------------------------------
//
// These need avx2 and f16c, which both tiers have (avx512vnni's `detected` checks them
// too), so they inline into either tier's `#[target_feature]` code, where they compile
// with that tier's features.

use core::arch::x86_64::*;

use crate::kernels::tiling::{pad8f, Lanes, MicroKernel};
use crate::quant::BlockQ8;

/// 8 lanes in a ymm register.
impl Lanes for __m256 {
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: the caller guarantees the tier's features, avx (in avx2) among them.
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn reduce(self) -> f32 {
        // SAFETY: as in `zero`: avx2 and f16c, which both tiers have.
        unsafe { reduce8(self) }
    }
}

/// The f32 matmul's groups, for both tiers (whose tile sizes differ): 8 floats loaded
/// once per tile, lane `i % 8` += `w_i * x_i`, rounded twice (no FMA).
struct F32;

impl MicroKernel for F32 {
    type W = f32;
    type X = f32;
    type Acc = __m256;
    type XGroup = __m256;
    type WGroup = __m256;
    type XTail = __m256;
    type WTail = __m256;

    #[inline(always)]
    unsafe fn x_group(x: &[f32; 8]) -> __m256 {
        // SAFETY: the caller guarantees avx2 and f16c (for this and every method below).
        unsafe { load8(x) }
    }

    #[inline(always)]
    unsafe fn w_group(w: &[f32; 8]) -> __m256 {
        // SAFETY: as in `x_group`.
        unsafe { load8(w) }
    }

    #[inline(always)]
    unsafe fn group(acc: __m256, _: &[f32; 8], wv: &__m256, _: &[f32; 8], xv: &__m256) -> __m256 {
        // SAFETY: as in `x_group`.
        unsafe { _mm256_add_ps(acc, _mm256_mul_ps(*wv, *xv)) }
    }

    #[inline(always)]
    unsafe fn x_tail(x: &[f32]) -> __m256 {
        // SAFETY: as in `x_group`.
        unsafe { load8(&pad8f(x)) }
    }

    #[inline(always)]
    unsafe fn w_tail(w: &[f32]) -> __m256 {
        // SAFETY: as in `x_group`.
        unsafe { load8(&pad8f(w)) }
    }

    #[inline(always)]
    unsafe fn tail(acc: __m256, _: &[f32], wv: &__m256, _: &[f32], xv: &__m256) -> __m256 {
        // SAFETY: as in `x_group`.
        unsafe { _mm256_add_ps(acc, _mm256_mul_ps(*wv, *xv)) }
    }
}

/// [`scalar::reduce8`](super::scalar::reduce8) on the lanes:
/// `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn reduce8(acc: __m256) -> f32 {
    let a = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let b = _mm_add_ps(a, _mm_movehl_ps(a, a));
    _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps::<1>(b, b)))
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
/// every f16 (subnormals included) is an f32. The halves are assembled in general
/// registers: that measured faster than `vpgatherdd` on Sapphire Rapids, and gathers
/// are slower still on CPUs with the Downfall microcode fix.
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

/// Lane `j` += `isum_j as f32 * (dw_j * dx_j)`: the scalar expression, lane-wise. No
/// fused multiply-add: LLVM does not contract separate `vmulps`/`vaddps` intrinsics.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn accumulate(acc: __m256, isum: __m256i, dw: __m256, dx: __m256) -> __m256 {
    _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx)))
}

/// Lane `j` += `isum_j as f32 * (dw_j * dx_j) + xsum_j * (mw_j * dx_j)`: the scalar
/// expression of [`scalar::dot_q4_q8`](super::scalar::dot_q4_q8), lane-wise, no fused
/// multiply-add.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn accumulate_q4(acc: __m256, isum: __m256i, xsum: __m256, dw: __m256, mw: __m256, dx: __m256) -> __m256 {
    let scaled = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx));
    let offset = _mm256_mul_ps(xsum, _mm256_mul_ps(mw, dx));
    _mm256_add_ps(acc, _mm256_add_ps(scaled, offset))
}
