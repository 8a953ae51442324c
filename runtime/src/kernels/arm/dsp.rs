//! The `dsp` tier: q8 · q8 and q4 · q8 integer dot products on the Arm DSP extension's
//! dual 16-bit multiply-accumulate (`SMLAD`), bit-exact with [`scalar`]. See [`super`]
//! for why it exists and why its results equal the scalar contract.

use core::arch::asm;

use crate::kernels::tiling::Shape;
use crate::kernels::{scalar, Kernels};
use crate::quant::{BlockQ4, BlockQ8};

/// Weight rows per q8 matmul tile: each activation word is loaded and sign-extended
/// once for this many rows. Two rows keep the tile in 9 registers (3 pointers, 2
/// accumulators, 2 extended activation halves, 2 temporaries).
const TILE_ROWS: usize = 2;

/// The `dsp` table: the integer dot products here, the rest from [`scalar`] (an f32 dot
/// product or the quantizer gain nothing from 16-bit SIMD).
pub(in crate::kernels) static DSP: Kernels = Kernels {
    name: "dsp",
    dot_q8,
    dot_f32: scalar::dot_f32,
    matmul_q8,
    matmul_f32: scalar::matmul_f32,
    quantize_q8: scalar::quantize_q8,
    dot_q4_q8,
    matmul_q4_q8,
    attn_scores: scalar::attn_scores,
    attn_values: scalar::attn_values,
    softmax_rows: crate::math::softmax_rows,
    log_sum_exp: crate::math::log_sum_exp,
    map_f32: crate::math::map_f32,
    f16_to_f32: crate::kernels::scalar::f16_to_f32,
    f32_to_f16: crate::kernels::scalar::f32_to_f16,
};

/// Whether this CPU runs the `dsp` kernels: always, since this module is only compiled
/// for targets whose every CPU has the DSP extension (see [`super`]).
pub(in crate::kernels) fn detected() -> bool {
    true
}

// ---------------------------------------------------------------------------------------
// The instructions
// ---------------------------------------------------------------------------------------

/// `SXTB16 d, x`: bytes 0 and 2 of `x`, sign-extended into the low and high halfwords.
#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    let d: u32;
    // SAFETY: `SXTB16` is part of the DSP extension, which this module requires at
    // compile time; it reads and writes two registers only (no memory, no stack, no
    // flags).
    unsafe {
        asm!("sxtb16 {d}, {x}", d = lateout(reg) d, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    d
}

/// `SXTB16 d, x, ROR #8`: bytes 1 and 3 of `x`, sign-extended into the low and high
/// halfwords.
#[inline(always)]
fn sxtb16_ror8(x: u32) -> u32 {
    let d: u32;
    // SAFETY: as in `sxtb16`.
    unsafe {
        asm!("sxtb16 {d}, {x}, ror #8", d = lateout(reg) d, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    d
}

/// `SMLAD d, x, y, acc`: `acc + x.lo * y.lo + x.hi * y.hi` over signed halfwords, in
/// 32-bit wrap-around arithmetic (the callers stay far from wrapping; see [`super`]).
#[inline(always)]
fn smlad(x: u32, y: u32, acc: i32) -> i32 {
    let d: i32;
    // SAFETY: `SMLAD` is part of the DSP extension, which this module requires at
    // compile time; it reads three registers and writes one, touches no memory or
    // stack, and may set the sticky Q flag on overflow (so flags are not declared
    // preserved).
    unsafe {
        asm!(
            "smlad {d}, {x}, {y}, {acc}",
            d = lateout(reg) d,
            x = in(reg) x,
            y = in(reg) y,
            acc = in(reg) acc,
            options(pure, nomem, nostack),
        )
    };
    d
}

/// An f16 (as bits) to f32, bit for bit as [`half::f16::to_f32`] converts it. A normal
/// f16 (exponent field 1..=30) only needs its exponent rebiased (+112) and its fields
/// moved, a few integer instructions; zeros, subnormals, infinities and NaNs take
/// `half`'s general (software) path. Checked against `half` for all 65536 inputs by
/// `firmware/kernels`.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let h = u32::from(bits);
    if (h & 0x7c00).wrapping_sub(0x0400) < 0x7800 {
        f32::from_bits(((h & 0x8000) << 16) | (((h & 0x7fff) << 13) + (112 << 23)))
    } else {
        half::f16::from_bits(bits).to_f32()
    }
}

/// [`BlockQ8::scale`], by [`f16_to_f32`].
#[inline(always)]
fn scale(b: &BlockQ8) -> f32 {
    f16_to_f32(u16::from_le_bytes(b.d))
}

/// The 32 quants of a q8 block as 8 little-endian words (quant `4 i + k` in byte `k` of
/// word `i`); the block has alignment 1, and the cores with the DSP extension load
/// unaligned words.
#[inline(always)]
fn q8_words(b: &BlockQ8) -> &[[u8; 4]; 8] {
    bytemuck::cast_ref(&b.qs)
}

#[inline(always)]
fn word(w: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*w)
}

// ---------------------------------------------------------------------------------------
// q8 · q8
// ---------------------------------------------------------------------------------------

// The q8 block products are one `asm!` block each, fully unrolled over the block's 8
// words: written in Rust (with the helpers above), LLVM hoisted the loads of both rows
// and spilled the extended activation halves to the stack, costing about a third more
// instructions.

/// Byte offset of the quants in a [`BlockQ8`]; the `asm!` below loads from it.
const QS: usize = core::mem::offset_of!(BlockQ8, qs);
const _: () = assert!(QS == 2);

/// The `asm!` template of one weight row times one activation block: for each word at
/// byte offset `o` (`QS + 4 i`), both halfword pairs of the weight word times those of
/// the activation word, into `{acc}`.
macro_rules! q8_row_words {
    ($($o:literal)*) => { concat!($(
        "ldr {t0}, [{x}, #", $o, "]\n",
        "ldr {t1}, [{w}, #", $o, "]\n",
        "sxtb16 {t2}, {t0}\n",
        "sxtb16 {t0}, {t0}, ror #8\n",
        "sxtb16 {t3}, {t1}\n",
        "sxtb16 {t1}, {t1}, ror #8\n",
        "smlad {acc}, {t3}, {t2}, {acc}\n",
        "smlad {acc}, {t1}, {t0}, {acc}\n",
    )*) };
}

/// The `asm!` template of two weight rows times one activation block: each activation
/// word is loaded and extended once (`{xe}`, `{xo}`) for both rows.
macro_rules! q8_pair_words {
    ($($o:literal)*) => { concat!($(
        "ldr {t0}, [{x}, #", $o, "]\n",
        "ldr {t1}, [{w0}, #", $o, "]\n",
        "sxtb16 {xe}, {t0}\n",
        "sxtb16 {xo}, {t0}, ror #8\n",
        "sxtb16 {t0}, {t1}\n",
        "sxtb16 {t1}, {t1}, ror #8\n",
        "smlad {a0}, {t0}, {xe}, {a0}\n",
        "smlad {a0}, {t1}, {xo}, {a0}\n",
        "ldr {t0}, [{w1}, #", $o, "]\n",
        "sxtb16 {t1}, {t0}\n",
        "sxtb16 {t0}, {t0}, ror #8\n",
        "smlad {a1}, {t1}, {xe}, {a1}\n",
        "smlad {a1}, {t0}, {xo}, {a1}\n",
    )*) };
}

/// [`scalar::block_isum`], exact for any i8 quants on both sides (8 loads, 16
/// `SXTB16`, 16 `SMLAD`).
#[inline(always)]
fn block_isum(w: &BlockQ8, x: &BlockQ8) -> i32 {
    let mut acc = 0i32;
    // SAFETY: `SXTB16`/`SMLAD` are part of the DSP extension, which this module
    // requires at compile time. The loads read bytes `QS..QS + 32` of the two blocks
    // `w` and `x` point to (their quants; `LDR` takes unaligned addresses on every core
    // with the extension); nothing is written but the named registers, no stack is
    // used, and `SMLAD` may set the Q flag (flags are not declared preserved).
    unsafe {
        asm!(
            q8_row_words!(2 6 10 14 18 22 26 30),
            w = in(reg) w as *const BlockQ8,
            x = in(reg) x as *const BlockQ8,
            acc = inout(reg) acc,
            t0 = out(reg) _,
            t1 = out(reg) _,
            t2 = out(reg) _,
            t3 = out(reg) _,
            options(pure, readonly, nostack),
        )
    };
    acc
}

/// [`scalar::block_isum`] of two weight blocks against one activation block, exact for
/// any i8 quants (12 loads, 24 `SXTB16`, 32 `SMLAD` for 64 products).
#[inline(always)]
fn block_isums2(w0: &BlockQ8, w1: &BlockQ8, x: &BlockQ8) -> (i32, i32) {
    let (mut a0, mut a1) = (0i32, 0i32);
    // SAFETY: as in `block_isum`, over the quants of `w0`, `w1` and `x`.
    unsafe {
        asm!(
            q8_pair_words!(2 6 10 14 18 22 26 30),
            w0 = in(reg) w0 as *const BlockQ8,
            w1 = in(reg) w1 as *const BlockQ8,
            x = in(reg) x as *const BlockQ8,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            xe = out(reg) _,
            xo = out(reg) _,
            t0 = out(reg) _,
            t1 = out(reg) _,
            options(pure, readonly, nostack),
        )
    };
    (a0, a1)
}

/// [`scalar::dot_q8`], bit for bit, for any i8 quants on both sides.
pub fn dot_q8(a: &[BlockQ8], b: &[BlockQ8]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 8];
    for (j, (x, y)) in a.iter().zip(b).enumerate() {
        lanes[j % 8] += block_isum(x, y) as f32 * (scale(x) * scale(y));
    }
    scalar::reduce8(&lanes)
}

/// [`dot_q8`] of weight rows `w0` and `w1` with the activation row `x` (all the same
/// length). The activation's scale is converted once per block for both rows (the
/// same value each row would convert).
#[inline(always)]
fn dot_q8_pair(w0: &[BlockQ8], w1: &[BlockQ8], x: &[BlockQ8]) -> (f32, f32) {
    let (mut l0, mut l1) = ([0.0f32; 8], [0.0f32; 8]);
    for (j, ((b0, b1), xb)) in w0.iter().zip(w1).zip(x).enumerate() {
        let (s0, s1) = block_isums2(b0, b1, xb);
        let dx = scale(xb);
        l0[j % 8] += s0 as f32 * (scale(b0) * dx);
        l1[j % 8] += s1 as f32 * (scale(b1) * dx);
    }
    (scalar::reduce8(&l0), scalar::reduce8(&l1))
}

/// [`scalar::matmul_q8`], bit for bit, for any i8 quants on both sides: pairs of weight
/// rows against one token at a time.
pub fn matmul_q8(w: &[BlockQ8], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let Some(s) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        // Shapes off the tiled path (empty, ragged, short `out`): the contract's own
        // behaviour, whatever it is.
        return scalar::matmul_q8(w, rows, x, out);
    };
    for (xt, ot) in x.chunks_exact(s.kb).zip(out.chunks_exact_mut(rows)) {
        let mut pairs = w.chunks_exact(TILE_ROWS * s.kb);
        let mut outs = ot.chunks_exact_mut(TILE_ROWS);
        for (wp, op) in (&mut pairs).zip(&mut outs) {
            let (w0, w1) = wp.split_at(s.kb);
            (op[0], op[1]) = dot_q8_pair(w0, w1, xt);
        }
        for (wr, o) in pairs.remainder().chunks_exact(s.kb).zip(outs.into_remainder()) {
            *o = dot_q8(wr, xt);
        }
    }
}

// ---------------------------------------------------------------------------------------
// q4 · q8
// ---------------------------------------------------------------------------------------

/// Both halfwords set to 1: `SMLAD x, ONES, acc` adds `x`'s two halfwords to `acc`.
const ONES: u32 = 0x0001_0001;
/// The low nibbles of bytes 0 and 2, as halfwords.
const NIBBLES_02: u32 = 0x000f_000f;

/// [`scalar::block_isum_q4`]: `(sum q_i * x_i, sum x_i)`, exact for any nibbles and any
/// i8 activations. Weight byte `i` holds `q_i` (low nibble) and `q_(i+16)` (high), so
/// weight word `k` pairs with activation words `k` (low nibbles) and `k + 4` (high).
#[inline(always)]
fn block_isum_q4(w: &BlockQ4, x: &BlockQ8) -> (i32, i32) {
    let wq: &[[u8; 4]; 4] = bytemuck::cast_ref(&w.qs);
    let xq = q8_words(x);
    let (mut isum, mut xsum) = (0i32, 0i32);
    for k in 0..4 {
        let wv = word(&wq[k]);
        // Nibbles of bytes (0, 2) and (1, 3), low then high: in [0, 15], so masking
        // leaves them zero-extended in each halfword.
        let lo02 = wv & NIBBLES_02;
        let lo13 = (wv >> 8) & NIBBLES_02;
        let hi02 = (wv >> 4) & NIBBLES_02;
        let hi13 = (wv >> 12) & NIBBLES_02;
        let (xl, xh) = (word(&xq[k]), word(&xq[k + 4]));
        let (xl02, xl13, xh02, xh13) = (sxtb16(xl), sxtb16_ror8(xl), sxtb16(xh), sxtb16_ror8(xh));
        isum = smlad(lo02, xl02, isum);
        isum = smlad(lo13, xl13, isum);
        isum = smlad(hi02, xh02, isum);
        isum = smlad(hi13, xh13, isum);
        xsum = smlad(xl02, ONES, xsum);
        xsum = smlad(xl13, ONES, xsum);
        xsum = smlad(xh02, ONES, xsum);
        xsum = smlad(xh13, ONES, xsum);
    }
    (isum, xsum)
}

/// [`scalar::dot_q4_q8`], bit for bit, for any nibbles and any i8 activations.
pub fn dot_q4_q8(w: &[BlockQ4], x: &[BlockQ8]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut lanes = [0.0f32; 8];
    for (j, (a, b)) in w.iter().zip(x).enumerate() {
        let (isum, xsum) = block_isum_q4(a, b);
        let dx = scale(b);
        let (dw, mw) = (f16_to_f32(u16::from_le_bytes(a.d)), f16_to_f32(u16::from_le_bytes(a.m)));
        lanes[j % 8] += isum as f32 * (dw * dx) + xsum as f32 * (mw * dx);
    }
    scalar::reduce8(&lanes)
}

/// [`scalar::matmul_q4_q8`], bit for bit: one [`dot_q4_q8`] per output.
pub fn matmul_q4_q8(w: &[BlockQ4], rows: usize, x: &[BlockQ8], out: &mut [f32]) {
    let Some(s) = Shape::of(w.len(), rows, x.len(), out.len()) else {
        // As in `matmul_q8`: the contract's own behaviour off the regular path.
        return scalar::matmul_q4_q8(w, rows, x, out);
    };
    for (xt, ot) in x.chunks_exact(s.kb).zip(out.chunks_exact_mut(rows)) {
        for (wr, o) in w.chunks_exact(s.kb).zip(ot) {
            *o = dot_q4_q8(wr, xt);
        }
    }
}
