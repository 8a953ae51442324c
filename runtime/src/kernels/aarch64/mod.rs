//! AArch64 tiers. Both meet [`scalar`](super::scalar) bit for bit; the dispatch in
//! [`kernels`](super) installs a tier only after detecting its features.
//!
//! | tier | q8 integer part | q4 x q8 integer part | f32 part | scales |
//! |---|---|---|---|---|
//! | `neon` ([`neon::NEON`]) | `smull`/`smull2` (i8 x i8 -> i16), `sadalp` (pairs into i32), `addp` tree | nibbles by `and`/`ushr`, then as q8; activation sums by `saddlp`/`sadalp` | `fmul`, `fadd` (2 x 4 lanes) | `fcvtl` |
//! | `dotprod` ([`neon::DOTPROD`]) | `sdot` (FEAT_DotProd, by inline `asm!`), `addp` tree | as `neon`, products by `sdot` | as `neon` | `fcvtl` |
//!
//! The module is compiled only where NEON is enabled at compile time, which is every
//! hard-float AArch64 target (Linux, Android, macOS, `aarch64-unknown-none`): there NEON
//! is part of the baseline, so the `neon` tier is always present and `dotprod` is the
//! one detected at run time. `sdot` goes through inline assembly because its intrinsic
//! (`vdotq_s32`) is still unstable (`stdarch_neon_dotprod`) as of Rust 1.96.
//!
//! Why the results are identical to the scalar contract:
//!
//! - **Integer part.** Each block pair's dot product is computed exactly in i32 for any
//!   i8 on both sides: `smull` products are at most 128 * 128 = 2^14 in magnitude and
//!   `sadalp` widens pairs of them into i32 lanes; `sdot` adds groups of 4 byte products
//!   into i32 lanes. Integer addition is associative, so the `addp` tree that gathers 4
//!   blocks into one register (block `j` in lane `j`) gives the same sum as the scalar
//!   loop (|sum| <= 32 * 128 * 128 < 2^24, so its f32 conversion is exact too). A q4
//!   block's nibbles, unpacked to bytes in [0, 15], are i8 values, so the same
//!   instructions give its exact `sum q_i * x_i` (|sum| <= 32 * 15 * 128); the
//!   activation sum `sum x_i` (|sum| <= 32 * 128) is `saddlp`/`sadalp` into i16 lanes,
//!   `saddlp` into i32 and the same `addp` tree.
//! - **Float part.** The 8 scalar lanes are two `float32x4_t`: lanes 0..4 and 4..8, so
//!   block (or element) `j` lands in lane `j % 8` as in the scalar code. Lane-wise
//!   `scvtf`, `d_w * d_x`, `isum * (d_w * d_x)` and `acc + term` are the scalar
//!   operations in the scalar order, each rounded once (for q4 x q8 likewise
//!   `isum * (d_w * d_x)`, `xsum * (m_w * d_x)`, their sum, then `acc + sum`): the
//!   kernels call `vmulq_f32` and `vaddq_f32`, never `vfmaq`/`vmlaq` (which fuse on
//!   AArch64), and LLVM does not contract separate multiplies and adds without
//!   fast-math flags, which Rust never sets. The final fold
//!   `vaddq(lo, hi)`, `vadd(low, high)`, `l0 + l1` is
//!   [`reduce8`](super::scalar::reduce8)'s order. AArch64 SIMD arithmetic follows FPCR
//!   exactly as scalar arithmetic does (no flush-to-zero in the default environment Rust
//!   assumes), so subnormals behave the same.
//! - **Scales.** `fcvtl` converts 4 f16 scales to f32 exactly (every f16, subnormals
//!   included, is an f32; FPCR.AHP is 0, IEEE half, in the default environment), which
//!   is what [`half`] computes for [`BlockQ8::scale`](crate::quant::BlockQ8::scale)
//!   and for a q4 block's `d` and `m`.
//! - **Tails.** A partial group is padded with zero blocks (or zero floats), whose
//!   contribution is +0.0; adding +0.0 leaves a lane unchanged because a lane starts at
//!   +0.0 and so is never -0.0.
//! - **Matmuls** are tiles of weight rows x tokens that reuse each loaded block's scales
//!   and cache lines across the tile; every output still runs its own dot product in
//!   the contract's order.
//! - **Quantizer.** `amax` by `fmaxnm` (a quiet NaN is skipped, as `f32::max` skips it;
//!   max is order-free otherwise), `d` and `1/d` in scalar f32, the scale by
//!   `half::f16::from_f32`, `fcvtns` rounding half to even (saturating, NaN to 0), then
//!   an integer clamp to ±127 (the same as clamping first, since the bounds are
//!   integers).
//!
//! NaN payloads are not part of the contract: a NaN result is NaN in every tier, but its
//! bits may differ.

pub mod neon;
