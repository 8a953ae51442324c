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

pub mod avx2;
pub mod avx512;
