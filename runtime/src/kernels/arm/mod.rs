//! 32-bit Arm tiers. The one tier, `dsp` ([`dsp::DSP`]), meets
//! [`scalar`](super::scalar) bit for bit.
//!
//! Why it exists: a Cortex-M4/M7 (and every ARMv7-A/R core) has no vector unit, but its
//! DSP extension multiplies two signed 16-bit halves of one register by the two halves
//! of another and adds both products to an accumulator in one instruction (`SMLAD`).
//! The scalar q8 dot product spends two byte loads, a multiply-accumulate and loop
//! bookkeeping per element; the `dsp` tier loads 4 quants per 32-bit word, splits each
//! word into two sign-extended halfword pairs (`SXTB16`, and `SXTB16` of the word
//! rotated by 8), and retires 2 products per `SMLAD`: the approach of CMSIS-NN's
//! `arm_nn_mat_mult_kernel_s8_s16` / `read_and_pad`.
//!
//! | tier | q8 integer part | q4 integer part | f32 part, quantizer | scales |
//! |---|---|---|---|---|
//! | `dsp` | `LDR` of 4 quants, `SXTB16` (+ `ROR #8`), `SMLAD`: one `asm!` block per block (pair); the matmul runs 2 weight rows per activation word | nibble masks, `SXTB16`, `SMLAD` (the activation sum by `SMLAD` with `0x0001_0001`) | the scalar code | normal f16 by an integer exponent rebias, the rest by `half` |
//!
//! The module is compiled for targets with the DSP extension (`cfg(arq_arm_dsp)`, set by
//! the crate's `build.rs`): `thumbv7em-*` (Cortex-M4/M7), `armv7*` (ARMv7-A/R, Linux and
//! bare metal), or any Arm target that enables `target_feature = "dsp"`. The build
//! script is needed because stable rustc leaves Arm target features out of
//! `cfg(target_feature)` (they are unstable), so `cfg(target_feature = "dsp")` alone would
//! drop the tier from every stable build. There the extension is a baseline of every CPU
//! the build runs on, so the tier is always supported, and its kernels are safe `fn`s:
//! no caller has to promise a feature. The instructions go through stable `asm!`: their
//! intrinsics (`core::arch::arm::__smlad`, `__sxtb16`) are unstable (`stdarch_arm_dsp`)
//! as of Rust 1.96, and a `#![feature]` would make the runtime nightly-only on exactly
//! the targets this tier serves.
//!
//! Why the results are identical to the scalar contract:
//!
//! - **Integer part.** `SXTB16` sign-extends bytes 0 and 2 (or, rotated, 1 and 3) of a
//!   word into two halfwords exactly; `SMLAD` forms the two 16 x 16 products exactly
//!   and adds them and the accumulator with 32-bit wrap-around. Every i8 (-128
//!   included) gives products of at most 2^14 in magnitude, so a block's running sum
//!   stays within 32 * 2^14 = 2^19 and never wraps (nor sets the Q flag). Integer
//!   addition is associative, so the pairing order does not matter: the block sum is
//!   the scalar `block_isum` for any i8 quants on both sides. For q4, the nibbles are
//!   in [0, 15], the activation sum within 32 * 128: both sums are exact likewise.
//! - **Float part.** The same Rust expressions as the scalar code, in the same order:
//!   block `j`'s `isum as f32 * (d_a * d_b)` into lane `j % 8`, then
//!   [`reduce8`](super::scalar::reduce8). Rust never contracts a multiply and an add
//!   into a fused one, so each operation rounds once on the FPU (or in the soft-float
//!   library on an `eabi` target), exactly as the scalar tier does on the same core.
//! - **Scales.** [`dsp::f16_to_f32`] gives the f32 that `half` gives (what
//!   [`BlockQ8::scale`](crate::quant::BlockQ8::scale) returns) for every f16: a normal
//!   f16 is an f32 with the exponent rebiased, computed exactly with a few integer
//!   instructions where `half`'s software conversion first branches through every case
//!   (6% fewer matmul instructions on the Cortex-M4); everything else goes to `half`
//!   itself. `firmware/kernels` checks all 65536 patterns.
//! - **Matmuls** run 2 weight rows against one token at a time, sharing each loaded and
//!   extended activation word; every output still runs its own dot product in the
//!   contract's order. Shapes off that path (empty, ragged, short `out`) call the
//!   scalar matmul, so they behave as the contract does, whatever it does.

pub mod dsp;
