//! f16 rows of an f16 KV cache, both x86 tiers: F16C's `vcvtph2ps` (exact: every f16 is
//! an f32) and `vcvtps2ph` rounding to nearest, ties to even, as
//! [`scalar::f16_to_f32`] and [`scalar::f32_to_f16`] convert (NaNs aside: the hardware
//! keeps fewer payload bits).

use core::arch::x86_64::*;

use crate::kernels::scalar;

/// [`scalar::f16_to_f32`], 8 at a time.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let (s8, _) = src[..n].as_chunks::<8>();
    let (d8, _) = dst[..n].as_chunks_mut::<8>();
    for (s, d) in s8.iter().zip(d8.iter_mut()) {
        // SAFETY: `s` is 8 readable u16 (16 bytes) and `d` 8 writable floats; neither
        // load nor store needs alignment.
        unsafe {
            let h = _mm_loadu_si128(s.as_ptr().cast());
            _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    let done = s8.len() * 8;
    scalar::f16_to_f32(&src[done..n], &mut dst[done..n]);
}

/// [`scalar::f32_to_f16`], 8 at a time.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let (s8, _) = src[..n].as_chunks::<8>();
    let (d8, _) = dst[..n].as_chunks_mut::<8>();
    for (s, d) in s8.iter().zip(d8.iter_mut()) {
        // SAFETY: `s` is 8 readable floats and `d` 8 writable u16 (16 bytes); neither
        // load nor store needs alignment.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
            _mm_storeu_si128(d.as_mut_ptr().cast(), h);
        }
    }
    let done = s8.len() * 8;
    scalar::f32_to_f16(&src[done..n], &mut dst[done..n]);
}
