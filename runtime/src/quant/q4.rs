//! `q4`: 4-bit weights, asymmetric, one f16 scale `d` and one f16 minimum `m` per block
//! of 32 values along the reduction (last) dimension (the layout of ggml's `Q4_1`).
//!
//! A value is `q * d + m` with `q` in [0, 15]. Byte `i` of `qs` holds element `i` in its
//! low nibble and element `i + 16` in its high nibble, so one 16-byte load, a copy
//! shifted right by 4 and an `and 0x0f` give the 32 quants in element order (the low
//! half elements 0..16, the high half 16..32), ready for an unsigned-by-signed byte
//! multiply against a [`BlockQ8`](super::BlockQ8) of activations.
//!
//! Why asymmetric (measured on SmolLM2-135M-Instruct, the Q4_1 GGUF of `models/`, with
//! the built-in calibration text, 210 scored tokens, weights quantized then used in f32
//! so that only the weight format differs):
//!
//! | format | bytes / 32 | token_embd rel. error | KL, only token_embd in 4 bits | KL, all matrices in 4 bits |
//! |---|---|---|---|---|
//! | symmetric, q in [-8, 7], `d = max / -8` (ggml `Q4_0`) | 18 | 0.1110 | 0.0879 (ppl +8.2%) | 0.3936 (ppl +36.9%) |
//! | symmetric, q in [-7, 7], `d = amax / 7` | 18 | 0.1263 | 0.1295 (ppl +10.5%) | 0.4755 (ppl +38.3%) |
//! | asymmetric, q in [0, 15], `d = (max - min) / 15`, `m = min` (this) | 20 | 0.0902 | 0.0640 (ppl +6.3%) | 0.0640 (ppl +6.3%) |
//!
//! The token embedding (stored as Q8_0 in that file, so not on any 4-bit grid) is the fair
//! comparison: the asymmetric block has 19% less error and 27% less KL than `Q4_0`. The
//! layer matrices of that file are already `Q4_1` blocks, which this quantizer
//! reproduces exactly (relative error 0, against 0.087 for `Q4_0`), so requantizing a
//! `Q4_1` GGUF costs nothing; the 2 bytes of `m` (+11% size) are worth it. With the
//! embedding kept q8 (the converter's choice), `arq convert --quant q4` of that file gives
//! KL 0.0027 nats/token, top-1 95.7%, perplexity +1.1% against the f32 conversion (q8:
//! 0.0040, 98.6%, +1.3%): what remains is the q8 quantization of the activations.
//!
//! The quantizer computes `d` and `m` in f32, rounds them to f16 and quantizes against
//! the rounded values, so dequantization reproduces the input as closely as the stored
//! block allows (and a block that already is a `Q4_1` block comes back bit for bit).

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values per q4 block.
pub const QK4: usize = 32;

/// One q4 block: f16 scale `d`, f16 minimum `m` (little-endian bytes, so the block has
/// alignment 1 and casts from any file offset), then 32 quants in [0, 15] packed in 16
/// bytes: byte `i` = `q_i | q_(i+16) << 4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ4 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK4 / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ4>() == 20);
const _: () = assert!(core::mem::align_of::<BlockQ4>() == 1);

impl BlockQ4 {
    /// The block's scale `d` as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16::from_le_bytes(self.d).to_f32()
    }

    /// The block's minimum `m` as f32.
    #[inline]
    pub fn min(&self) -> f32 {
        f16::from_le_bytes(self.m).to_f32()
    }

    /// The 32 quants in element order, each in [0, 15].
    #[inline]
    pub fn quants(&self) -> [u8; QK4] {
        core::array::from_fn(|i| if i < QK4 / 2 { self.qs[i] & 0x0f } else { self.qs[i - QK4 / 2] >> 4 })
    }
}

/// Quantize weights `x` (length a multiple of 32) into `out` (`x.len() / 32` blocks).
///
/// Spec, per block: `min` and `max` over its values (NaN skipped as `f32::min`/`max` do;
/// both 0 when every value is NaN); `d = (max - min) / 15` and `m = min` in f32, stored
/// as `f16`; with `d'`, `m'` the stored values as f32 and `id = 1 / d'` (0 when
/// `d' == 0`), `q_i = clamp(rint((x_i - m') * id), 0, 15)`, rounding half to even, NaN
/// to 0. Inputs are expected finite and within f16 range; beyond it the scale or minimum
/// saturates to infinity.
pub fn quantize_row_q4(x: &[f32], out: &mut [BlockQ4]) {
    debug_assert_eq!(x.len(), out.len() * QK4);
    for (chunk, block) in x.chunks_exact(QK4).zip(out.iter_mut()) {
        let mut min = chunk.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let mut max = chunk.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        if min > max {
            (min, max) = (0.0, 0.0);
        }
        let d = f16::from_f32((max - min) / 15.0);
        let m = f16::from_f32(min);
        let (df, mf) = (d.to_f32(), m.to_f32());
        let id = if df != 0.0 { 1.0 / df } else { 0.0 };
        let q: [u8; QK4] = core::array::from_fn(|i| libm::rintf((chunk[i] - mf) * id).clamp(0.0, 15.0) as u8);
        block.d = d.to_le_bytes();
        block.m = m.to_le_bytes();
        for (i, b) in block.qs.iter_mut().enumerate() {
            *b = q[i] | (q[i + QK4 / 2] << 4);
        }
    }
}

/// Dequantize q4 blocks into `out` (`blocks.len() * 32` values): `q_i * d + m`, the
/// product rounded before the sum (no fused multiply-add).
pub fn dequantize_row_q4(blocks: &[BlockQ4], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK4);
    for (block, chunk) in blocks.iter().zip(out.chunks_exact_mut(QK4)) {
        let (d, m) = (block.scale(), block.min());
        for (o, q) in chunk.iter_mut().zip(block.quants()) {
            *o = q as f32 * d + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(x: &[f32]) -> ([BlockQ4; 2], [f32; 64]) {
        let mut b = [BlockQ4::zeroed(); 2];
        quantize_row_q4(x, &mut b);
        let mut y = [0.0f32; 64];
        dequantize_row_q4(&b, &mut y);
        (b, y)
    }

    #[test]
    fn roundtrip_error_is_within_half_a_step() {
        let x: [f32; 64] = core::array::from_fn(|i| ((i as f32) * 0.37).sin() * 3.0 + 0.5);
        let (b, y) = roundtrip(&x);
        for (blk, (xs, ys)) in b.iter().zip(x.chunks(32).zip(y.chunks(32))) {
            let step = blk.scale();
            for (a, c) in xs.iter().zip(ys) {
                assert!((a - c).abs() <= 0.5 * step + 2e-3 * (1.0 + a.abs()), "{a} vs {c}");
            }
        }
    }

    #[test]
    fn nibble_layout_is_low_then_high_half() {
        let x: [f32; 64] = core::array::from_fn(|i| (i % 32) as f32 * 0.5);
        let (b, y) = roundtrip(&x);
        // min 0, max 15.5: d = f16(15.5 / 15), every value lands on its own level.
        assert_eq!(b[0].min(), 0.0);
        let q = b[0].quants();
        for i in 0..16 {
            assert_eq!(b[0].qs[i] & 0x0f, q[i]);
            assert_eq!(b[0].qs[i] >> 4, q[i + 16]);
        }
        assert_eq!(q[0], 0);
        assert_eq!(q[31], 15);
        assert!(q.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(y[0], 0.0);
    }

    #[test]
    fn q4_1_blocks_come_back_exactly() {
        // Values already of the form q * d + m with both 0 and 15 used.
        let d = f16::from_f32(0.0123).to_f32();
        let m = f16::from_f32(-0.0871).to_f32();
        let x: [f32; 64] = core::array::from_fn(|i| ((i * 7) % 16) as f32 * d + m);
        let (b, y) = roundtrip(&x);
        assert_eq!(b[0].scale(), d);
        assert_eq!(b[0].min(), m);
        assert_eq!(x, y);
    }

    #[test]
    fn constant_and_zero_blocks() {
        let mut x = [0.0f32; 64];
        x[32..].fill(-1.25);
        let (b, y) = roundtrip(&x);
        assert_eq!(b[0], BlockQ4::zeroed());
        assert_eq!(b[1].scale(), 0.0);
        assert_eq!(&y[32..], &[-1.25; 32]);
    }

    #[test]
    fn nan_quantizes_to_the_minimum() {
        let mut x: [f32; 64] = core::array::from_fn(|i| i as f32);
        x[3] = f32::NAN;
        x[32..].fill(f32::NAN);
        let (b, y) = roundtrip(&x);
        assert_eq!(b[0].quants()[3], 0);
        assert_eq!(b[0].min(), 0.0);
        assert_eq!(b[1], BlockQ4::zeroed());
        assert_eq!(y[3], 0.0);
    }
}
