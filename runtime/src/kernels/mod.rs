//! Kernels: the scalar contract plus one module per ISA behind one dispatch table.
//!
//! Every entry of [`Kernels`] computes exactly what the function of the same name in
//! [`scalar`] computes (bit for bit, including float summation order). The table is
//! chosen once: by runtime detection on std hosts (capped by the `ARQ_MAX_ISA`
//! environment variable: `scalar`, `avx2`, `avx512vnni`), by `cfg(target_feature)` on
//! no_std targets.

pub mod scalar;

use crate::quant::BlockQ8;

/// One ISA tier's kernels. Shapes are as documented in [`scalar`].
pub struct Kernels {
    /// Tier name, as `ARQ_MAX_ISA` spells it.
    pub name: &'static str,
    pub dot_q8: fn(&[BlockQ8], &[BlockQ8]) -> f32,
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    pub matmul_q8: fn(&[BlockQ8], usize, &[BlockQ8], &mut [f32]),
    pub matmul_f32: fn(&[f32], usize, &[f32], &mut [f32]),
    pub quantize_q8: fn(&[f32], &mut [BlockQ8]),
}

/// The portable tier.
pub static SCALAR: Kernels = Kernels {
    name: "scalar",
    dot_q8: scalar::dot_q8,
    dot_f32: scalar::dot_f32,
    matmul_q8: scalar::matmul_q8,
    matmul_f32: scalar::matmul_f32,
    quantize_q8: scalar::quantize_q8,
};

/// The best tier this machine supports (within the `ARQ_MAX_ISA` cap).
pub fn best() -> &'static Kernels {
    &SCALAR
}
