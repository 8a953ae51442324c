//! Dequantization of ggml tensor data to f32, block by block.
//!
//! Each function mirrors `dequantize_row_*` in ggml's `ggml-quants.c` and
//! `dequantize_blocks` in gguf-py's `quants.py`, including the order of the float
//! operations (`d * q + m`, `(d * sc) * q - dmin * m`, ...), so results are bit-exact
//! with gguf-py. Rust never contracts `a * b + c` into a fused multiply-add, which is what
//! keeps that true. Block layouts are written above each function as byte offsets.

use half::f16;

use super::{GgmlType, GgufError};

/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

/// Dequantizes `n_elements` values of type `ty` stored in `bytes`.
///
/// `bytes` must hold exactly the blocks those elements occupy and `n_elements` must be a
/// whole number of blocks. Unsupported types give [`GgufError::UnsupportedType`] with an
/// empty tensor name; [`super::GgufFile::dequantize`] fills it in.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    check_sizes(ty, bytes, n_elements)?;
    let mut out = vec![0.0f32; n_elements];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Like [`dequantize`], writing into `out` (whose length is the element count) without
/// allocating.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    check_sizes(ty, bytes, out.len())?;
    match ty {
        GgmlType::F32 => each_block::<4, 1>(bytes, out, |b, y| y[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => each_block::<2, 1>(bytes, out, |b, y| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => {
            each_block::<2, 1>(bytes, out, |b, y| y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16))
        }
        GgmlType::Q4_0 => each_block::<18, 32>(bytes, out, block_q4_0),
        GgmlType::Q4_1 => each_block::<20, 32>(bytes, out, block_q4_1),
        GgmlType::Q5_0 => each_block::<22, 32>(bytes, out, block_q5_0),
        GgmlType::Q5_1 => each_block::<24, 32>(bytes, out, block_q5_1),
        GgmlType::Q8_0 => each_block::<34, 32>(bytes, out, block_q8_0),
        GgmlType::Q2_K => each_block::<84, QK_K>(bytes, out, block_q2_k),
        GgmlType::Q3_K => each_block::<110, QK_K>(bytes, out, block_q3_k),
        GgmlType::Q4_K => each_block::<144, QK_K>(bytes, out, block_q4_k),
        GgmlType::Q5_K => each_block::<176, QK_K>(bytes, out, block_q5_k),
        GgmlType::Q6_K => each_block::<210, QK_K>(bytes, out, block_q6_k),
        other => return Err(unsupported(other)),
    }
    Ok(())
}

/// Whether [`dequantize`] handles `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

fn unsupported(ty: GgmlType) -> GgufError {
    GgufError::UnsupportedType { tensor: String::new(), ty: ty.describe() }
}

/// Checks that `bytes` holds exactly the whole blocks of `n_elements` values of `ty`.
fn check_sizes(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<(), GgufError> {
    if !can_dequantize(ty) {
        return Err(unsupported(ty));
    }
    let (Some(block), Some(size)) = (ty.block_size(), ty.type_size()) else {
        return Err(unsupported(ty));
    };
    let n = n_elements as u64;
    // Not `is_multiple_of`: the workspace's rust-version is 1.85.
    let partial = n % block;
    if partial != 0 {
        return Err(GgufError::Malformed(format!(
            "{n} elements of {} are not a whole number of {block}-element blocks",
            ty.name()
        )));
    }
    let need = (n / block).checked_mul(size);
    if need != Some(bytes.len() as u64) {
        return Err(GgufError::Malformed(format!(
            "{n} elements of {} need {} bytes, got {}",
            ty.name(),
            need.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string()),
            bytes.len()
        )));
    }
    Ok(())
}

/// Runs `f` over each `SIZE`-byte block of `bytes` and its `N` outputs. The caller has
/// checked that the counts match.
fn each_block<const SIZE: usize, const N: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; SIZE], &mut [f32; N]),
) {
    for (b, y) in bytes.chunks_exact(SIZE).zip(out.chunks_exact_mut(N)) {
        if let (Ok(b), Ok(y)) = (<&[u8; SIZE]>::try_from(b), <&mut [f32; N]>::try_from(y)) {
            f(b, y);
        }
    }
}

fn f16_at<const SIZE: usize>(b: &[u8; SIZE], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_0, 18 bytes: d f16 @0, qs[16] @2. Element j is the low nibble of qs[j], element
/// j+16 the high nibble; y = (q - 8) * d.
fn block_q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1, 20 bytes: d f16 @0, m f16 @2, qs[16] @4; y = d * q + m.
fn block_q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Q5_0, 22 bytes: d f16 @0, qh u32 @2 (bit i is bit 4 of element i), qs[16] @6;
/// y = (q - 16) * d.
fn block_q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = (lo as i32 - 16) as f32 * d;
        y[j + 16] = (hi as i32 - 16) as f32 * d;
    }
}

/// Q5_1, 24 bytes: d f16 @0, m f16 @2, qh u32 @4, qs[16] @8; y = d * q + m.
fn block_q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let lo = (q & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * lo as f32 + m;
        y[j + 16] = d * hi as f32 + m;
    }
}

/// Q8_0, 34 bytes: d f16 @0, qs[32] i8 @2; y = q * d.
fn block_q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// Q2_K, 84 bytes: scales[16] @0 (low nibble scale, high nibble min, one per 16
/// elements), qs[64] @16, d f16 @80, dmin f16 @82. The 8 groups of 32 elements: group g
/// takes 2 bits at shift 2*(g%4) of qs[32*(g/4) + l]. y = (d*sc) * q - dmin*m.
fn block_q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for (i, y) in y.iter_mut().enumerate() {
        let (g, l) = (i / 32, i % 32);
        let q = (b[16 + 32 * (g / 4) + l] >> (2 * (g % 4))) & 3;
        let sc = b[i / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        *y = dl * q as f32 - ml;
    }
}

/// Q3_K, 110 bytes: hmask[32] @0, qs[64] @32, scales[12] @96 (16 six-bit scales biased by
/// 32), d f16 @108. Group g of 32 elements: low 2 bits at shift 2*(g%4) of
/// qs[32*(g/4) + l]; bit g of hmask[l] clear means subtract 4. y = (d*sc) * q.
fn block_q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 108);
    let s = &b[96..108];
    let mut dl = [0.0f32; 16];
    for (i, dl) in dl.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        let sc = (low | high << 4) as i32 - 32;
        *dl = d * sc as f32;
    }
    for (i, y) in y.iter_mut().enumerate() {
        let (g, l) = (i / 32, i % 32);
        let low = ((b[32 + 32 * (g / 4) + l] >> (2 * (g % 4))) & 3) as i32;
        let high_clear = (b[l] >> g) & 1 == 0;
        let q = low - if high_clear { 4 } else { 0 };
        *y = dl[i / 16] * q as f32;
    }
}

/// Unpacks the 8 six-bit scales and mins of Q4_K/Q5_K (`get_scale_min_k4` in ggml).
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        m[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// Q4_K, 144 bytes: d f16 @0, dmin f16 @2, scales[12] @4, qs[128] @16. Group g of 32
/// elements: nibble g%2 of qs[32*(g/2) + l]. y = (d*sc[g]) * q - dmin*m[g].
fn block_q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, m) = scale_min_k4(&b[4..16]);
    for (g, y) in y.chunks_exact_mut(32).enumerate() {
        let dl = d * sc[g] as f32;
        let ml = dmin * m[g] as f32;
        let qs = &b[16 + 32 * (g / 2)..][..32];
        let shift = 4 * (g % 2);
        for (y, &q) in y.iter_mut().zip(qs) {
            *y = dl * ((q >> shift) & 0x0F) as f32 - ml;
        }
    }
}

/// Q5_K, 176 bytes: d f16 @0, dmin f16 @2, scales[12] @4, qh[32] @16, qs[128] @48. As
/// Q4_K, with bit g of qh[l] as bit 4 of element l of group g.
fn block_q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (sc, m) = scale_min_k4(&b[4..16]);
    let qh = &b[16..48];
    for (g, y) in y.chunks_exact_mut(32).enumerate() {
        let dl = d * sc[g] as f32;
        let ml = dmin * m[g] as f32;
        let qs = &b[48 + 32 * (g / 2)..][..32];
        let shift = 4 * (g % 2);
        for (l, y) in y.iter_mut().enumerate() {
            let q = ((qs[l] >> shift) & 0x0F) | ((qh[l] >> g) & 1) << 4;
            *y = dl * q as f32 - ml;
        }
    }
}

/// Q6_K, 210 bytes: ql[128] @0, qh[64] @128, scales[16] i8 @192 (one per 16 elements),
/// d f16 @208. Each half h of 128 elements has 4 groups s of 32: low 4 bits are nibble
/// s/2 of ql[64h + 32(s%2) + l], high 2 bits at shift 2s of qh[32h + l].
/// y = (d*sc) * (q - 32).
fn block_q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for (i, y) in y.iter_mut().enumerate() {
        let (g, l) = (i / 32, i % 32);
        let (h, s) = (g / 4, g % 4);
        let low = (b[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0F;
        let high = (b[128 + 32 * h + l] >> (2 * s)) & 3;
        let q = (low | high << 4) as i32 - 32;
        let sc = b[192 + i / 16] as i8;
        *y = (d * sc as f32) * q as f32;
    }
}
