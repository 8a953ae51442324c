//! `q8`: symmetric int8 in [-127, 127] with one f16 scale per block of 32 values along
//! the reduction (last) dimension, and its two quantizers: [`quantize_row_q8`] for the
//! activations (the kernels' contract) and [`quantize_weights_row_q8`] for the weights
//! (what the converter writes).

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values per q8 block.
pub const QK8: usize = 32;

/// One q8 block: an f16 scale (little-endian bytes, so the block has alignment 1 and
/// casts from any file offset) followed by 32 int8 values in [-127, 127].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BlockQ8 {
    pub d: [u8; 2],
    pub qs: [i8; QK8],
}

const _: () = assert!(core::mem::size_of::<BlockQ8>() == 34);
const _: () = assert!(core::mem::align_of::<BlockQ8>() == 1);

impl BlockQ8 {
    /// The block's scale as f32.
    #[inline]
    pub fn scale(&self) -> f32 {
        f16::from_le_bytes(self.d).to_f32()
    }
}

/// Quantize `x` (length a multiple of 32) into `out` (`x.len() / 32` blocks).
///
/// Spec: `amax = max |x_i|`, `d = amax / 127` (f32), stored scale `f16(d)`,
/// `q_i = clamp(rint(x_i * (1/d)), -127, 127)` with round-half-to-even (`rint` in the
/// default rounding mode), `q_i = 0` when `d == 0`. The inverse uses the f32 `d`, not
/// the f16-rounded one, as ggml's Q8_0 does. SIMD versions must match this bit for bit.
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK8);
    for (chunk, block) in x.chunks_exact(QK8).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        block.d = f16::from_f32(d).to_le_bytes();
        for (q, &v) in block.qs.iter_mut().zip(chunk) {
            *q = libm::rintf(v * id).clamp(-127.0, 127.0) as i8;
        }
    }
}

/// Quantize weights `x` (length a multiple of 32) into `out` (`x.len() / 32` blocks):
/// the reference of q8 weights, what the converter writes.
///
/// Spec: `amax = max |x_i|`, stored scale `d = f16(amax / 127)`, and with `d'` the stored
/// scale as f32, `q_i = clamp(rint(x_i / d'), -127, 127)` (as `x_i * (1/d')`, rounding
/// half to even), `q_i = 0` when `d' == 0`.
///
/// It differs from the activation quantizer [`quantize_row_q8`] in one place: the values
/// are quantized against the stored f16 scale `d'`, not the f32 `d`, so dequantization
/// reproduces them as closely as the block allows. The two may give a different `q` for
/// a value near a rounding boundary; the kernels must match [`quantize_row_q8`] (it runs
/// on every step), while a weight is quantized once.
pub fn quantize_weights_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK8);
    for (chunk, block) in x.chunks_exact(QK8).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(amax / 127.0);
        let id = if d.to_f32() != 0.0 { 1.0 / d.to_f32() } else { 0.0 };
        block.d = d.to_le_bytes();
        for (q, &v) in block.qs.iter_mut().zip(chunk) {
            *q = libm::rintf(v * id).clamp(-127.0, 127.0) as i8;
        }
    }
}

/// [`quantize_weights_row_q8`] into a new vector of `x.len() / 32` blocks.
#[cfg(feature = "alloc")]
pub fn quantize_weights_q8(x: &[f32]) -> alloc::vec::Vec<BlockQ8> {
    let mut out = alloc::vec![BlockQ8::zeroed(); x.len() / QK8];
    quantize_weights_row_q8(&x[..out.len() * QK8], &mut out);
    out
}

/// Dequantize q8 blocks into `out` (`blocks.len() * 32` values).
pub fn dequantize_row_q8(blocks: &[BlockQ8], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK8);
    for (block, chunk) in blocks.iter().zip(out.chunks_exact_mut(QK8)) {
        let d = block.scale();
        for (o, &q) in chunk.iter_mut().zip(&block.qs) {
            *o = q as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_error_is_within_half_a_step() {
        let x: [f32; 64] = core::array::from_fn(|i| ((i as f32) * 0.37).sin() * 3.0);
        let mut b = [BlockQ8::zeroed(); 2];
        quantize_row_q8(&x, &mut b);
        let mut y = [0.0f32; 64];
        dequantize_row_q8(&b, &mut y);
        for (blk, (xs, ys)) in b.iter().zip(x.chunks(32).zip(y.chunks(32))) {
            let step = blk.scale();
            for (a, c) in xs.iter().zip(ys) {
                assert!((a - c).abs() <= 0.5 * step + 1e-3 * a.abs(), "{a} vs {c}");
            }
            assert!(blk.qs.iter().all(|&q| q >= -127));
        }
    }

    /// A block worked by hand: `amax = 1`, `d = f32(1/127) = 0.007874016`, stored as f16
    /// `0x2008` = 0.0078735352 (`1/d' = 127.00775`). 0.4921 is where the two quantizers
    /// part: `0.4921 * 127.00775 = 62.5005` rounds to 63, `0.4921 * 127 = 62.4967` to 62.
    #[test]
    fn weight_quantizer_matches_a_hand_computed_block() {
        let mut x = [0.0f32; QK8];
        x[..5].copy_from_slice(&[1.0, -1.0, 0.5, 0.4921, 0.25]);
        let mut want = BlockQ8 { d: [0x08, 0x20], qs: [0; QK8] };
        want.qs[..5].copy_from_slice(&[127, -127, 64, 63, 32]);
        let mut w = [BlockQ8::zeroed(); 1];
        quantize_weights_row_q8(&x, &mut w);
        assert_eq!(w[0], want);
        #[cfg(feature = "alloc")]
        assert_eq!(quantize_weights_q8(&x), [want]);
        // The activation quantizer keeps the f32 scale's rounding (and the same stored d).
        let mut a = [BlockQ8::zeroed(); 1];
        quantize_row_q8(&x, &mut a);
        want.qs[3] = 62;
        assert_eq!(a[0], want);
        // A zero block has zero scale and zero quants.
        quantize_weights_row_q8(&[0.0; QK8], &mut w);
        assert_eq!(w[0], BlockQ8::zeroed());
    }

    #[test]
    fn zero_block_has_zero_scale() {
        let mut b = [BlockQ8::zeroed(); 1];
        quantize_row_q8(&[0.0; 32], &mut b);
        assert_eq!(b[0].scale(), 0.0);
        assert!(b[0].qs.iter().all(|&q| q == 0));
    }
}
