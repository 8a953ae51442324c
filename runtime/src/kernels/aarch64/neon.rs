//! The `neon` and `dotprod` tiers: bit-exact with [`scalar`].
//!
//! The two tiers differ only in how the integer dot product of 32 byte pairs is formed
//! ([`BlockDot`]: [`Mull`] for `neon`, [`Sdot`] for `dotprod`). The q8 and q4 bodies
//! and microkernels ([`Q8`], [`Q4`], run by the crate's tiling driver) are generic over
//! it and `#[inline(always)]`, so each tier's `#[target_feature]` entry point compiles
//! its own copy with its own features; the f32 kernels and the quantizer hold no int8
//! products and serve both tiers. See [`super`] for why the results equal the scalar
//! contract.

use core::arch::aarch64::*;
use core::arch::asm;
use core::marker::PhantomData;

use half::f16;

use crate::kernels::tiling::{self, pad8f, Inline, Lanes, MicroKernel};
use crate::kernels::{scalar, Kernels, Strided};
use crate::quant::{BlockQ4, BlockQ8, QK8};

/// Weight rows per matmul tile.
const TILE_ROWS: usize = 4;
/// Activation rows (tokens) per q8 matmul tile.
const TILE_TOKENS_Q8: usize = 2;
/// Activation rows (tokens) per q4 matmul tile of the `neon` tier. A second token
/// reuses each unpacked weight group, which pays off where the products need few
/// registers (`sdot`, [`TILE_TOKENS_Q4_DOTPROD`]); `smull` needs more, and its 4 x 2
/// tile spills: under qemu-aarch64 it retired 16% more instructions than 4 x 1 for 8
/// tokens of a 64 x 576 matrix, while `sdot`'s retired 21% fewer.
const TILE_TOKENS_Q4_NEON: usize = 1;
/// Activation rows (tokens) per q4 matmul tile of the `dotprod` tier.
const TILE_TOKENS_Q4_DOTPROD: usize = 2;
/// Activation rows (tokens) per f32 matmul tile: 4 x 2 outputs of two registers each
/// plus the loads fit the 32 vector registers.
const TILE_TOKENS_F32: usize = 2;

/// The `neon` table. Only [`crate::kernels`] hands it out, and only after
/// [`neon_detected`] returned true.
pub(in crate::kernels) static NEON: Kernels = simd_table! {
    name: "neon",
    dot_q8: dot_q8_neon,
    dot_f32: dot_f32,
    matmul_q8: matmul_q8_neon,
    matmul_f32: matmul_f32,
    quantize_q8: quantize_q8,
    dot_q4_q8: dot_q4_q8_neon,
    matmul_q4_q8: matmul_q4_q8_neon,
    attn_scores: attn_scores,
    attn_values: attn_values,
    softmax_rows: softmax_rows,
    log_sum_exp: log_sum_exp,
    map_f32: map_f32,
    f16_to_f32: f16_to_f32,
    f32_to_f16: f32_to_f16,
};

/// The `dotprod` table. Only [`crate::kernels`] hands it out, and only after
/// [`dotprod_detected`] returned true.
pub(in crate::kernels) static DOTPROD: Kernels = simd_table! {
    name: "dotprod",
    dot_q8: dot_q8_dotprod,
    dot_f32: dot_f32,
    matmul_q8: matmul_q8_dotprod,
    matmul_f32: matmul_f32,
    quantize_q8: quantize_q8,
    dot_q4_q8: dot_q4_q8_dotprod,
    matmul_q4_q8: matmul_q4_q8_dotprod,
    attn_scores: attn_scores,
    attn_values: attn_values,
    softmax_rows: softmax_rows,
    log_sum_exp: log_sum_exp,
    map_f32: map_f32,
    f16_to_f32: f16_to_f32,
    f32_to_f16: f32_to_f16,
};

/// The attention kernels have no NEON version yet: both tiers run the scalar contract
/// (an `unsafe fn` only because the table's wrapper expects one).
///
/// # Safety
/// None beyond the safe function's.
unsafe fn attn_scores(q: &[f32], keys: Strided<'_>, out: &mut [f32], out_stride: usize) {
    scalar::attn_scores(q, keys, out, out_stride)
}

/// See [`attn_scores`].
///
/// # Safety
/// None beyond the safe function's.
unsafe fn attn_values(w: &[f32], w_stride: usize, values: Strided<'_>, out: &mut [f32]) {
    scalar::attn_values(w, w_stride, values, out)
}

/// [`crate::math::softmax_rows`]: NEON is the baseline here, so the shared code already
/// compiles with it.
///
/// # Safety
/// None beyond the safe function's.
unsafe fn softmax_rows(x: &mut [f32], rows: usize, n: usize, stride: usize) {
    crate::math::softmax_rows(x, rows, n, stride)
}

/// [`crate::math::log_sum_exp`], compiled with NEON like [`softmax_rows`].
///
/// # Safety
/// None beyond the safe function's.
unsafe fn log_sum_exp(x: &[f32]) -> f64 {
    crate::math::log_sum_exp(x)
}

/// [`crate::math::map_f32`], compiled with NEON like [`softmax_rows`].
///
/// # Safety
/// None beyond the safe function's.
unsafe fn map_f32(f: crate::math::Unary, x: &mut [f32]) {
    crate::math::map_f32(f, x)
}

/// [`scalar::f16_to_f32`]: no NEON version yet (the f16 vector types are not stable
/// Rust), so both tiers run the scalar contract.
///
/// # Safety
/// None beyond the safe function's.
unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    scalar::f16_to_f32(src, dst)
}

/// [`scalar::f32_to_f16`], likewise.
///
/// # Safety
/// None beyond the safe function's.
unsafe fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    scalar::f32_to_f16(src, dst)
}

/// Whether this CPU runs the `neon` kernels. This module is only compiled where neon is
/// enabled at compile time (see [`super`]), so this is true wherever it exists.
pub(in crate::kernels) fn neon_detected() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

/// Whether this CPU (std: detected at run time; no_std: enabled at compile time) runs
/// the `dotprod` kernels.
pub(in crate::kernels) fn dotprod_detected() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon") && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(target_feature = "neon", target_feature = "dotprod"))
    }
}

// ---------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------

/// [`scalar::dot_q8`], bit for bit, for any i8 quants on both sides.
///
/// # Safety
/// The CPU must support neon.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_neon(a: &[BlockQ8], b: &[BlockQ8]) -> f32 {
    // SAFETY: `Q8<Mull>` needs neon, which the caller guarantees.
    unsafe { tiling::dot::<Q8<Mull>>(a, b) }
}

/// [`scalar::dot_q8`], bit for bit, for any i8 quants on both sides.
///
/// # Safety
/// The CPU must support neon and dotprod.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q8_dotprod(a: &[BlockQ8], b: &[BlockQ8]) -> f32 {
    // SAFETY: `Q8<Sdot>` needs neon and dotprod, which the caller guarantees.
    unsafe { tiling::dot::<Q8<Sdot>>(a, b) }
}

/// [`scalar::matmul_q8`], bit for bit, for any i8 quants on both sides: tiles of
/// 4 weight rows x 2 tokens, each output equal to [`dot_q8_neon`] of its row and token.
///
/// # Safety
/// The CPU must support neon.
#[target_feature(enable = "neon")]
pub unsafe fn matmul_q8_neon(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    // SAFETY: `Q8<Mull>` needs neon, which the caller guarantees.
    unsafe { tiling::matmul::<Inline, Q8<Mull>, TILE_ROWS, TILE_TOKENS_Q8, false>(w, rows, x, out, scalar::matmul_q8) }
}

/// [`scalar::matmul_q8`], bit for bit, for any i8 quants on both sides: tiles of
/// 4 weight rows x 2 tokens, each output equal to [`dot_q8_dotprod`] of its row and
/// token.
///
/// # Safety
/// The CPU must support neon and dotprod.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn matmul_q8_dotprod(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    // SAFETY: `Q8<Sdot>` needs neon and dotprod, which the caller guarantees.
    unsafe { tiling::matmul::<Inline, Q8<Sdot>, TILE_ROWS, TILE_TOKENS_Q8, false>(w, rows, x, out, scalar::matmul_q8) }
}

/// [`scalar::dot_q4_q8`], bit for bit, for any i8 activation quants.
///
/// # Safety
/// The CPU must support neon.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q4_q8_neon(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    // SAFETY: `Q4<Mull>` needs neon, which the caller guarantees.
    unsafe { tiling::dot::<Q4<Mull>>(w, x) }
}

/// [`scalar::dot_q4_q8`], bit for bit, for any i8 activation quants.
///
/// # Safety
/// The CPU must support neon and dotprod.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_q4_q8_dotprod(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    // SAFETY: `Q4<Sdot>` needs neon and dotprod, which the caller guarantees.
    unsafe { tiling::dot::<Q4<Sdot>>(w, x) }
}

/// [`scalar::matmul_q4_q8`], bit for bit, for any i8 activation quants: tiles of
/// 4 weight rows x 1 token (see [`TILE_TOKENS_Q4_NEON`]), each output equal to
/// [`dot_q4_q8_neon`] of its row and token.
///
/// # Safety
/// The CPU must support neon.
#[target_feature(enable = "neon")]
pub unsafe fn matmul_q4_q8_neon(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    // SAFETY: `Q4<Mull>` needs neon, which the caller guarantees.
    unsafe {
        tiling::matmul::<Inline, Q4<Mull>, TILE_ROWS, TILE_TOKENS_Q4_NEON, false>(w, rows, x, out, scalar::matmul_q4_q8)
    }
}

/// [`scalar::matmul_q4_q8`], bit for bit, for any i8 activation quants: tiles of
/// 4 weight rows x 2 tokens, each output equal to [`dot_q4_q8_dotprod`] of its row and
/// token.
///
/// # Safety
/// The CPU must support neon and dotprod.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn matmul_q4_q8_dotprod(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    // SAFETY: `Q4<Sdot>` needs neon and dotprod, which the caller guarantees.
    unsafe {
        tiling::matmul::<Inline, Q4<Sdot>, TILE_ROWS, TILE_TOKENS_Q4_DOTPROD, false>(
            w,
            rows,
            x,
            out,
            scalar::matmul_q4_q8,
        )
    }
}

/// [`scalar::dot_f32`], bit for bit.
///
/// # Safety
/// The CPU must support neon.
#[target_feature(enable = "neon")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: `F32` needs neon, which the caller guarantees.
    unsafe { tiling::dot::<F32>(a, b) }
}

/// [`scalar::matmul_f32`], bit for bit: tiles of 4 weight rows x 2 tokens.
///
/// # Safety
/// The CPU must support neon.
#[target_feature(enable = "neon")]
pub unsafe fn matmul_f32(w: &[f32], rows: usize, x: &[f32], out: &mut [f32]) {
    // SAFETY: `F32` needs neon, which the caller guarantees.
    unsafe { tiling::matmul::<Inline, F32, TILE_ROWS, TILE_TOKENS_F32, false>(w, rows, x, out, scalar::matmul_f32) }
}

/// [`crate::quant::quantize_row_q8`], bit for bit (quiet NaN inputs included).
///
/// # Safety
/// The CPU must support neon.
#[target_feature(enable = "neon")]
pub unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    let (chunks, _) = x.as_chunks::<QK8>();
    for (c, block) in chunks.iter().zip(out.iter_mut()) {
        let (c4, _) = c.as_chunks::<4>();
        let mut v = [vdupq_n_f32(0.0); QK8 / 4];
        for (v, c) in v.iter_mut().zip(c4) {
            *v = load4(c);
        }
        // `fmaxnm` returns the number when the other operand is a quiet NaN, so NaN
        // inputs are skipped exactly as `f32::max` skips them (which is `fmaxnm` on
        // AArch64 too); `m` never holds a NaN, and without NaN the order is free.
        let mut m = vdupq_n_f32(0.0);
        for &vi in &v {
            m = vmaxnmq_f32(m, vabsq_f32(vi));
        }
        let amax = vmaxnmvq_f32(m);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f16::from_f32(d).to_le_bytes();

        let idv = vdupq_n_f32(id);
        let mut q = [vdupq_n_s32(0); QK8 / 4];
        for (q, &vi) in q.iter_mut().zip(&v) {
            *q = round_clamp(vmulq_f32(vi, idv));
        }
        // Plain narrowing is exact: every value is in [-127, 127].
        let h = [
            vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1])),
            vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3])),
            vcombine_s16(vmovn_s32(q[4]), vmovn_s32(q[5])),
            vcombine_s16(vmovn_s32(q[6]), vmovn_s32(q[7])),
        ];
        let lo = vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1]));
        let hi = vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3]));
        let p = block.qs.as_mut_ptr();
        // SAFETY: `block.qs` is 32 writable bytes, `p..p + 16` and `p + 16..p + 32`;
        // `st1` needs no alignment.
        unsafe {
            vst1q_s8(p, lo);
            vst1q_s8(p.add(16), hi);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tier-specific part: one block pair's integer dot product
// ---------------------------------------------------------------------------------------
//
// The q8 and q4 bodies below are generic over the tier and `#[inline(always)]`, so that
// each tier's `#[target_feature]` entry point compiles its own copy with its own
// features (`sdot` is assembled inside the `neon,dotprod` entry points).
// `inline(always)` rules out `#[target_feature]` on them, so they are `unsafe fn`s whose
// bodies sit in one `unsafe` block: the NEON intrinsics and `D::partials` they call need
// the features their caller guarantees.

/// How a tier forms the exact integer dot product of one block pair, given as 32 quants
/// a side in two registers each: a q8 block's bytes as loaded ([`load_qs`]), or a q4
/// block's nibbles unpacked to bytes in [0, 15] ([`unpack_q4`]), which are i8 too.
trait BlockDot {
    /// 4 i32 lanes whose sum is exactly `sum(w[i] * x[i])` over the 32 byte lanes, for
    /// any i8 on both sides.
    ///
    /// # Safety
    /// The CPU must support neon and the tier's features.
    unsafe fn partials(w: [int8x16_t; 2], x: [int8x16_t; 2]) -> int32x4_t;
}

/// The `neon` tier: `smull`/`smull2` form i16 products (exact: at most 128 * 128 = 2^14
/// in magnitude), `sadalp` adds adjacent pairs of them into the i32 lanes.
struct Mull;

impl BlockDot for Mull {
    #[inline(always)]
    unsafe fn partials([w0, w1]: [int8x16_t; 2], [x0, x1]: [int8x16_t; 2]) -> int32x4_t {
        // SAFETY: the caller guarantees neon, all these intrinsics need.
        unsafe {
            let s = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
            let s = vpadalq_s16(s, vmull_high_s8(w0, x0));
            let s = vpadalq_s16(s, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
            vpadalq_s16(s, vmull_high_s8(w1, x1))
        }
    }
}

/// The `dotprod` tier: `sdot` adds each group of 4 byte products into its i32 lane
/// (exact: at most 4 * 2^14 per instruction). Its intrinsic (`vdotq_s32`) is unstable
/// (`stdarch_neon_dotprod`) as of Rust 1.96, so the instruction goes through `asm!`.
struct Sdot;

impl BlockDot for Sdot {
    #[inline(always)]
    unsafe fn partials([w0, w1]: [int8x16_t; 2], [x0, x1]: [int8x16_t; 2]) -> int32x4_t {
        // SAFETY: the caller guarantees neon and dotprod. `sdot` (FEAT_DotProd) only
        // reads and writes the named vector registers; this body is inlined
        // (`inline(always)` all the way up) into the `neon,dotprod` entry points.
        unsafe {
            let mut acc = vdupq_n_s32(0);
            asm!(
                "sdot {acc:v}.4s, {w0:v}.16b, {x0:v}.16b",
                "sdot {acc:v}.4s, {w1:v}.16b, {x1:v}.16b",
                acc = inout(vreg) acc,
                w0 = in(vreg) w0,
                x0 = in(vreg) x0,
                w1 = in(vreg) w1,
                x1 = in(vreg) x1,
                options(pure, nomem, nostack, preserves_flags),
            );
            acc
        }
    }
}

// ---------------------------------------------------------------------------------------
// The q8 bodies, generic over the tier
// ---------------------------------------------------------------------------------------

/// Adds up to 8 block pairs (a whole group or a row's tail) to the 8 float lanes: pair
/// `j` contributes `isum_j as f32 * (dw_j * dx_j)` to lane `j`, lanes 0..4 in `acc[0]`
/// and 4..8 in `acc[1]`. Missing pairs add +0.0 (see [`isum4`] and [`scales8`]) or
/// nothing.
///
/// # Safety
/// The CPU must support neon and `D`'s features.
#[inline(always)]
unsafe fn accumulate8<D: BlockDot>(
    acc: [float32x4_t; 2],
    w: &[BlockQ8],
    x: &[BlockQ8],
    dw: [float32x4_t; 2],
    dx: [float32x4_t; 2],
) -> [float32x4_t; 2] {
    let (w_lo, w_hi) = w.split_at(w.len().min(4));
    let (x_lo, x_hi) = x.split_at(x.len().min(4));
    // SAFETY: the caller guarantees neon and `D`'s features.
    unsafe {
        let lo = accumulate(acc[0], isum4::<D>(w_lo, x_lo), dw[0], dx[0]);
        if w_hi.is_empty() {
            return [lo, acc[1]];
        }
        [lo, accumulate(acc[1], isum4::<D>(w_hi, x_hi), dw[1], dx[1])]
    }
}

/// The exact i32 dot products of up to 4 block pairs, pair `j` in lane `j`; lanes past
/// the shorter slice are 0. `addp` folds each pair's 4 partials into its lane.
///
/// # Safety
/// The CPU must support neon and `D`'s features.
#[inline(always)]
unsafe fn isum4<D: BlockDot>(w: &[BlockQ8], x: &[BlockQ8]) -> int32x4_t {
    // SAFETY: the caller guarantees neon and `D`'s features.
    unsafe {
        let mut p = [vdupq_n_s32(0); 4];
        for ((p, w), x) in p.iter_mut().zip(w).zip(x) {
            *p = D::partials(load_qs(w), load_qs(x));
        }
        fold4(p)
    }
}

// ---------------------------------------------------------------------------------------
// The q4 x q8 bodies, generic over the tier
// ---------------------------------------------------------------------------------------
//
// A q4 block's 16 bytes unpack into 32 quants in element order with one `and` and one
// `ushr` (low nibbles are elements 0..16, high nibbles 16..32), after which the block
// pair is a 32-byte dot product like a q8 pair: the quants are in [0, 15], so the signed
// `smull`/`sdot` of `D` take them unchanged. The minimum needs the activation sums, which
// the matmul computes once per token and group and shares across the tile's rows.

/// Up to 8 q4 blocks ready for the tile: quants unpacked, scales and minima as f32
/// lanes (block `j` in lane `j % 4` of register `j / 4`). Missing blocks are all zero.
struct Q4Group {
    quants: [[int8x16_t; 2]; 8],
    d: [float32x4_t; 2],
    m: [float32x4_t; 2],
}

impl Q4Group {
    #[inline]
    #[target_feature(enable = "neon")]
    fn of(b: &[BlockQ4]) -> Q4Group {
        let mut quants = [[vdupq_n_s8(0); 2]; 8];
        for (q, b) in quants.iter_mut().zip(b) {
            *q = unpack_q4(b);
        }
        // Block `j`'s f16 bits at bits 16 * (j % 4) of word `j / 4`, as in `scales8`.
        let (mut d, mut m) = ([0u64; 2], [0u64; 2]);
        for (j, b) in b.iter().take(8).enumerate() {
            d[j / 4] |= (u16::from_le_bytes(b.d) as u64) << (16 * (j % 4));
            m[j / 4] |= (u16::from_le_bytes(b.m) as u64) << (16 * (j % 4));
        }
        Q4Group {
            quants,
            d: [f16x4_to_f32(vcreate_u16(d[0])), f16x4_to_f32(vcreate_u16(d[1]))],
            m: [f16x4_to_f32(vcreate_u16(m[0])), f16x4_to_f32(vcreate_u16(m[1]))],
        }
    }
}

/// Adds up to 8 q4 x q8 block pairs (a whole group or a row's tail, as many as `x`
/// holds) to the 8 float lanes: pair `j` contributes the scalar contract's
/// `isum_j as f32 * (dw_j * dx_j) + xsum_j as f32 * (mw_j * dx_j)` to lane `j`, lanes
/// 0..4 in `acc[0]` and 4..8 in `acc[1]`. `dx` and `sx` are `x`'s scales and activation
/// sums ([`scales8`], [`xsums8`]). Missing pairs add +0.0 or nothing.
///
/// # Safety
/// The CPU must support neon and `D`'s features.
#[inline(always)]
unsafe fn accumulate8_q4<D: BlockDot>(
    acc: [float32x4_t; 2],
    w: &Q4Group,
    x: &[BlockQ8],
    dx: [float32x4_t; 2],
    sx: [float32x4_t; 2],
) -> [float32x4_t; 2] {
    let (x_lo, x_hi) = x.split_at(x.len().min(4));
    // SAFETY: the caller guarantees neon and `D`'s features.
    unsafe {
        let lo = accumulate_q4(acc[0], isum4_q4::<D>(&w.quants[..4], x_lo), sx[0], w.d[0], w.m[0], dx[0]);
        if x_hi.is_empty() {
            return [lo, acc[1]];
        }
        let hi = accumulate_q4(acc[1], isum4_q4::<D>(&w.quants[4..], x_hi), sx[1], w.d[1], w.m[1], dx[1]);
        [lo, hi]
    }
}

/// The exact `sum q_i * x_i` of up to 4 pairs of unpacked q4 quants and q8 blocks, pair
/// `j` in lane `j`; lanes past `x.len()` are 0 (|sum| <= 32 * 15 * 128 < 2^16).
///
/// # Safety
/// The CPU must support neon and `D`'s features.
#[inline(always)]
unsafe fn isum4_q4<D: BlockDot>(w: &[[int8x16_t; 2]], x: &[BlockQ8]) -> int32x4_t {
    // SAFETY: the caller guarantees neon and `D`'s features.
    unsafe {
        let mut p = [vdupq_n_s32(0); 4];
        for ((p, &w), x) in p.iter_mut().zip(w).zip(x) {
            *p = D::partials(w, load_qs(x));
        }
        fold4(p)
    }
}

// ---------------------------------------------------------------------------------------
// Microkernels of the tiling driver, generic over the tier
// ---------------------------------------------------------------------------------------

/// 8 lanes in two registers, lanes 0..4 then 4..8.
impl Lanes for [float32x4_t; 2] {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller guarantees neon.
        unsafe { [vdupq_n_f32(0.0); 2] }
    }

    #[inline(always)]
    unsafe fn reduce(self) -> f32 {
        // SAFETY: the caller guarantees neon.
        unsafe { reduce8(self) }
    }
}

/// The q8 matmul's groups with `D`'s products: the scales of each group converted once
/// per tile, each block pair by [`accumulate8`].
struct Q8<D>(PhantomData<D>);

impl<D: BlockDot> MicroKernel for Q8<D> {
    type W = BlockQ8;
    type X = BlockQ8;
    type Acc = [float32x4_t; 2];
    type XGroup = [float32x4_t; 2];
    type WGroup = [float32x4_t; 2];
    type XTail = [float32x4_t; 2];
    type WTail = [float32x4_t; 2];

    #[inline(always)]
    unsafe fn x_group(x: &[BlockQ8; 8]) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { scales8(x) }
    }

    #[inline(always)]
    unsafe fn w_group(w: &[BlockQ8; 8]) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { scales8(w) }
    }

    #[inline(always)]
    unsafe fn group(
        acc: [float32x4_t; 2],
        w: &[BlockQ8; 8],
        dw: &[float32x4_t; 2],
        x: &[BlockQ8; 8],
        dx: &[float32x4_t; 2],
    ) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { accumulate8::<D>(acc, w, x, *dw, *dx) }
    }

    #[inline(always)]
    unsafe fn x_tail(x: &[BlockQ8]) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { scales8(x) }
    }

    #[inline(always)]
    unsafe fn w_tail(w: &[BlockQ8]) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { scales8(w) }
    }

    #[inline(always)]
    unsafe fn tail(
        acc: [float32x4_t; 2],
        w: &[BlockQ8],
        dw: &[float32x4_t; 2],
        x: &[BlockQ8],
        dx: &[float32x4_t; 2],
    ) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { accumulate8::<D>(acc, w, x, *dw, *dx) }
    }
}

/// The q4 x q8 matmul's groups with `D`'s products: each group of 8 weight blocks
/// unpacked and its scales converted once per tile ([`Q4Group`]), each token's scales
/// and activation sums once per group.
struct Q4<D>(PhantomData<D>);

/// A token's group for [`Q4`]: its scales ([`scales8`]) and activation sums ([`xsums8`]).
#[derive(Clone, Copy)]
struct XScales {
    d: [float32x4_t; 2],
    sum: [float32x4_t; 2],
}

impl XScales {
    #[inline]
    #[target_feature(enable = "neon")]
    fn of(x: &[BlockQ8]) -> XScales {
        XScales { d: scales8(x), sum: xsums8(x) }
    }
}

impl<D: BlockDot> MicroKernel for Q4<D> {
    type W = BlockQ4;
    type X = BlockQ8;
    type Acc = [float32x4_t; 2];
    type XGroup = XScales;
    type WGroup = Q4Group;
    type XTail = XScales;
    type WTail = Q4Group;

    #[inline(always)]
    unsafe fn x_group(x: &[BlockQ8; 8]) -> XScales {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { XScales::of(x) }
    }

    #[inline(always)]
    unsafe fn w_group(w: &[BlockQ4; 8]) -> Q4Group {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { Q4Group::of(w) }
    }

    #[inline(always)]
    unsafe fn group(
        acc: [float32x4_t; 2],
        _: &[BlockQ4; 8],
        w: &Q4Group,
        x: &[BlockQ8; 8],
        xs: &XScales,
    ) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { accumulate8_q4::<D>(acc, w, x, xs.d, xs.sum) }
    }

    #[inline(always)]
    unsafe fn x_tail(x: &[BlockQ8]) -> XScales {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { XScales::of(x) }
    }

    #[inline(always)]
    unsafe fn w_tail(w: &[BlockQ4]) -> Q4Group {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { Q4Group::of(w) }
    }

    #[inline(always)]
    unsafe fn tail(acc: [float32x4_t; 2], _: &[BlockQ4], w: &Q4Group, x: &[BlockQ8], xs: &XScales) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon and `D`'s features.
        unsafe { accumulate8_q4::<D>(acc, w, x, xs.d, xs.sum) }
    }
}

/// The f32 matmul's groups, for both tiers: 8 floats loaded once per tile, lane
/// `i % 8` += `w_i * x_i`.
struct F32;

impl MicroKernel for F32 {
    type W = f32;
    type X = f32;
    type Acc = [float32x4_t; 2];
    type XGroup = [float32x4_t; 2];
    type WGroup = [float32x4_t; 2];
    type XTail = [float32x4_t; 2];
    type WTail = [float32x4_t; 2];

    #[inline(always)]
    unsafe fn x_group(x: &[f32; 8]) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon.
        unsafe { load8(x) }
    }

    #[inline(always)]
    unsafe fn w_group(w: &[f32; 8]) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon.
        unsafe { load8(w) }
    }

    #[inline(always)]
    unsafe fn group(
        acc: [float32x4_t; 2],
        _: &[f32; 8],
        wv: &[float32x4_t; 2],
        _: &[f32; 8],
        xv: &[float32x4_t; 2],
    ) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon.
        unsafe { mul_add8(acc, *wv, *xv) }
    }

    #[inline(always)]
    unsafe fn x_tail(x: &[f32]) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon.
        unsafe { load8(&pad8f(x)) }
    }

    #[inline(always)]
    unsafe fn w_tail(w: &[f32]) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon.
        unsafe { load8(&pad8f(w)) }
    }

    #[inline(always)]
    unsafe fn tail(
        acc: [float32x4_t; 2],
        _: &[f32],
        wv: &[float32x4_t; 2],
        _: &[f32],
        xv: &[float32x4_t; 2],
    ) -> [float32x4_t; 2] {
        // SAFETY: the caller guarantees neon.
        unsafe { mul_add8(acc, *wv, *xv) }
    }
}

// ---------------------------------------------------------------------------------------
// Building blocks shared by both tiers
// ---------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "neon")]
fn load4(v: &[f32; 4]) -> float32x4_t {
    // SAFETY: `v` is 4 readable floats; `ld1` needs no alignment.
    unsafe { vld1q_f32(v.as_ptr()) }
}

/// The 8 scalar lanes as two registers: elements 0..4 and 4..8.
#[inline]
#[target_feature(enable = "neon")]
fn load8(v: &[f32; 8]) -> [float32x4_t; 2] {
    // SAFETY: `v` is 8 readable floats, `p..p + 4` and `p + 4..p + 8`; `ld1` needs no
    // alignment.
    unsafe {
        let p = v.as_ptr();
        [vld1q_f32(p), vld1q_f32(p.add(4))]
    }
}

/// A block's 32 quants as two registers.
#[inline]
#[target_feature(enable = "neon")]
fn load_qs(b: &BlockQ8) -> [int8x16_t; 2] {
    // SAFETY: `b.qs` is 32 readable bytes, `p..p + 16` and `p + 16..p + 32`; `ld1` needs
    // no alignment.
    unsafe {
        let p = b.qs.as_ptr();
        [vld1q_s8(p), vld1q_s8(p.add(16))]
    }
}

/// Lane `j` = the sum of the 4 lanes of `p[j]`, by an `addp` tree (exact in i32 for
/// the sums here, see [`super`]).
#[inline]
#[target_feature(enable = "neon")]
fn fold4(p: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]))
}

/// Lane `j` += `a_j * b_j` over the 8 lanes: the scalar `lane += x * y`, lane-wise,
/// rounded twice (no FMA).
#[inline]
#[target_feature(enable = "neon")]
fn mul_add8(acc: [float32x4_t; 2], a: [float32x4_t; 2], b: [float32x4_t; 2]) -> [float32x4_t; 2] {
    [vaddq_f32(acc[0], vmulq_f32(a[0], b[0])), vaddq_f32(acc[1], vmulq_f32(a[1], b[1]))]
}

/// Lane `j` += `isum_j as f32 * (dw_j * dx_j)`: the scalar expression, lane-wise.
#[inline]
#[target_feature(enable = "neon")]
fn accumulate(acc: float32x4_t, isum: int32x4_t, dw: float32x4_t, dx: float32x4_t) -> float32x4_t {
    vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(isum), vmulq_f32(dw, dx)))
}

/// A q4 block's 32 quants as bytes in [0, 15], in element order: the low nibbles
/// (elements 0..16) in the first register, the high nibbles (16..32) in the second.
#[inline]
#[target_feature(enable = "neon")]
fn unpack_q4(b: &BlockQ4) -> [int8x16_t; 2] {
    // SAFETY: `b.qs` is 16 readable bytes; `ld1` needs no alignment.
    let q = unsafe { vld1q_u8(b.qs.as_ptr()) };
    [vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(q))]
}

/// The activation sums `sum x_i` of up to 8 q8 blocks as f32 lanes (blocks 0..4, then
/// 4..8), lanes past `x.len()` +0.0. `saddlp`/`sadalp` add byte pairs into i16 (at most
/// 4 * 128 in magnitude), `saddlp` widens to i32 and [`fold4`] gathers the blocks; the
/// sums (|sum| <= 32 * 128) convert to f32 exactly, as the scalar `xsum as f32` does.
#[inline]
#[target_feature(enable = "neon")]
fn xsums8(x: &[BlockQ8]) -> [float32x4_t; 2] {
    let mut p = [vdupq_n_s32(0); 8];
    for (p, x) in p.iter_mut().zip(x) {
        let [x0, x1] = load_qs(x);
        *p = vpaddlq_s16(vpadalq_s8(vpaddlq_s8(x0), x1));
    }
    [vcvtq_f32_s32(fold4([p[0], p[1], p[2], p[3]])), vcvtq_f32_s32(fold4([p[4], p[5], p[6], p[7]]))]
}

/// Lane `j` += `isum_j as f32 * (dw_j * dx_j) + xsum_j * (mw_j * dx_j)`: the scalar
/// expression of [`scalar::dot_q4_q8`], lane-wise, each product and sum rounded once.
#[inline]
#[target_feature(enable = "neon")]
fn accumulate_q4(
    acc: float32x4_t,
    isum: int32x4_t,
    xsum: float32x4_t,
    dw: float32x4_t,
    mw: float32x4_t,
    dx: float32x4_t,
) -> float32x4_t {
    let scaled = vmulq_f32(vcvtq_f32_s32(isum), vmulq_f32(dw, dx));
    let offset = vmulq_f32(xsum, vmulq_f32(mw, dx));
    vaddq_f32(acc, vaddq_f32(scaled, offset))
}

/// The scales of up to 8 blocks as f32 lanes (blocks 0..4, then 4..8), lanes past
/// `b.len()` +0.0, equal to [`BlockQ8::scale`]. A missing block (scale 0, isum 0) adds
/// +0.0 to its lane, which leaves the lane unchanged.
#[inline]
#[target_feature(enable = "neon")]
fn scales8(b: &[BlockQ8]) -> [float32x4_t; 2] {
    let mut h = [0u64; 2];
    for (j, b) in b.iter().take(8).enumerate() {
        h[j / 4] |= (u16::from_le_bytes(b.d) as u64) << (16 * (j % 4));
    }
    [f16x4_to_f32(vcreate_u16(h[0])), f16x4_to_f32(vcreate_u16(h[1]))]
}

/// 4 f16 (as bits) to f32 by `fcvtl`, exactly. Its intrinsic (`vcvt_f32_f16`) takes
/// the unstable `float16x4_t`, so the instruction goes through `asm!`.
#[inline]
#[target_feature(enable = "neon")]
fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `fcvtl` (half to single precision, 4 lanes) is base Advanced SIMD, which
    // this fn's `target_feature` guarantees; it only reads and writes the named vector
    // registers.
    unsafe {
        asm!(
            "fcvtl {out:v}.4s, {h:v}.4h",
            h = in(vreg) h,
            out = lateout(vreg) out,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// [`scalar::reduce8`] on the lanes: `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
#[inline]
#[target_feature(enable = "neon")]
fn reduce8(acc: [float32x4_t; 2]) -> f32 {
    // a = [l0+l4, l1+l5, l2+l6, l3+l7], b = [a0+a2, a1+a3].
    let a = vaddq_f32(acc[0], acc[1]);
    let b = vadd_f32(vget_low_f32(a), vget_high_f32(a));
    vget_lane_f32::<0>(b) + vget_lane_f32::<1>(b)
}

/// `clamp(rint(y), -127, 127)` as i32 lanes, NaN to 0, exactly as the scalar
/// `rintf(y).clamp(-127.0, 127.0) as i8`: `fcvtns` rounds half to even, saturates out
/// of range values (±inf included) and turns NaN into 0, and clamping the rounded
/// integer equals rounding the clamped float because the bounds are integers.
#[inline]
#[target_feature(enable = "neon")]
fn round_clamp(y: float32x4_t) -> int32x4_t {
    let q = vcvtnq_s32_f32(y);
    vminq_s32(vmaxq_s32(q, vdupq_n_s32(-127)), vdupq_n_s32(127))
}
