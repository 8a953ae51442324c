//! Kernels: the scalar contract plus one module per ISA behind one dispatch table.
//!
//! The SIMD tiers' matmuls share one tiling driver (`tiling`): a tier writes the
//! microkernels (a group's loads, block dot products, lane folds) and its table.
//!
//! Every entry of [`Kernels`] computes exactly what the function of the same name in
//! [`scalar`] computes (bit for bit, including float summation order). The table is
//! chosen once: by runtime detection on std hosts (capped by the `ARQ_MAX_ISA`
//! environment variable: `scalar`, `avx2`, `avx512vnni` on x86_64; `scalar`, `neon`,
//! `dotprod` on AArch64; `scalar`, `dsp` on 32-bit Arm with the DSP extension), by
//! `cfg(target_feature)` on no_std targets.

/// A SIMD tier's [`Kernels`] table: the tier's name and, per entry, a safe wrapper over
/// the tier's `#[target_feature]` kernel named there (`unsafe fn`, same signature). With
/// the name alone, the kernels are the `unsafe fn`s in scope named as the entries.
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
macro_rules! simd_table {
    ($name:literal) => {
        simd_table! {
            name: $name,
            dot_q8: dot_q8,
            dot_f32: dot_f32,
            matmul_q8: matmul_q8,
            matmul_f32: matmul_f32,
            quantize_q8: quantize_q8,
            dot_q4_q8: dot_q4_q8,
            matmul_q4_q8: matmul_q4_q8,
            attn_scores: attn_scores,
            attn_values: attn_values,
            softmax_rows: softmax_rows,
            log_sum_exp: log_sum_exp,
            map_f32: map_f32,
            f16_to_f32: f16_to_f32,
            f32_to_f16: f32_to_f16,
        }
    };
    (
        name: $name:literal,
        dot_q8: $dot_q8:path,
        dot_f32: $dot_f32:path,
        matmul_q8: $matmul_q8:path,
        matmul_f32: $matmul_f32:path,
        quantize_q8: $quantize_q8:path,
        dot_q4_q8: $dot_q4_q8:path,
        matmul_q4_q8: $matmul_q4_q8:path,
        attn_scores: $attn_scores:path,
        attn_values: $attn_values:path,
        softmax_rows: $softmax_rows:path,
        log_sum_exp: $log_sum_exp:path,
        map_f32: $map_f32:path,
        f16_to_f32: $f16_to_f32:path,
        f32_to_f16: $f32_to_f16:path $(,)?
    ) => {
        // SAFETY (every entry): a SIMD table leaves `kernels` only through the check of
        // its tier's `supported` (see `TIERS`), so whoever calls an entry runs on a CPU
        // with every feature the tier's kernels enable.
        $crate::kernels::Kernels {
            name: $name,
            // SAFETY: as above.
            dot_q8: |a, b| unsafe { $dot_q8(a, b) },
            // SAFETY: as above.
            dot_f32: |a, b| unsafe { $dot_f32(a, b) },
            // SAFETY: as above.
            matmul_q8: |w, rows, x, out| unsafe { $matmul_q8(w, rows, x, out) },
            // SAFETY: as above.
            matmul_f32: |w, rows, x, out| unsafe { $matmul_f32(w, rows, x, out) },
            // SAFETY: as above.
            quantize_q8: |x, out| unsafe { $quantize_q8(x, out) },
            // SAFETY: as above.
            dot_q4_q8: |w, x| unsafe { $dot_q4_q8(w, x) },
            // SAFETY: as above.
            matmul_q4_q8: |w, rows, x, out| unsafe { $matmul_q4_q8(w, rows, x, out) },
            // SAFETY: as above.
            attn_scores: |q, keys, out, stride| unsafe { $attn_scores(q, keys, out, stride) },
            // SAFETY: as above.
            attn_values: |w, stride, values, out| unsafe { $attn_values(w, stride, values, out) },
            // SAFETY: as above.
            softmax_rows: |x, rows, n, stride| unsafe { $softmax_rows(x, rows, n, stride) },
            // SAFETY: as above.
            log_sum_exp: |x| unsafe { $log_sum_exp(x) },
            // SAFETY: as above.
            map_f32: |f, x| unsafe { $map_f32(f, x) },
            // SAFETY: as above.
            f16_to_f32: |s, d| unsafe { $f16_to_f32(s, d) },
            // SAFETY: as above.
            f32_to_f16: |s, d| unsafe { $f32_to_f16(s, d) },
        }
    };
}

pub mod scalar;
pub mod tune;
// The driver of the SIMD tiers' matmuls; the Cortex-M tier takes only its `Shape` (its
// own loop runs 2 rows against one token, sharing each extended activation word).
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"), arq_arm_dsp))]
#[cfg_attr(arq_arm_dsp, allow(dead_code))]
mod tiling;
#[cfg(target_arch = "x86_64")]
pub mod x86;
// NEON is baseline on every hard-float AArch64 target; see `aarch64` for why the module
// needs it at compile time.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
pub mod aarch64;
// The DSP extension (Cortex-M4/M7, ARMv7-A/R) is a compile-time property of the target,
// which build.rs states as `arq_arm_dsp` (stable rustc hides Arm target features); see
// `arm` for why the tier exists and why its kernels need no run-time detection.
#[cfg(arq_arm_dsp)]
pub mod arm;

#[cfg(test)]
mod tests;

use crate::quant::{BlockQ4, BlockQ8};

/// One ISA tier's kernels. Shapes are as documented in [`scalar`].
pub struct Kernels {
    /// Tier name, as `ARQ_MAX_ISA` spells it.
    pub name: &'static str,
    pub dot_q8: fn(&[BlockQ8], &[BlockQ8]) -> f32,
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    pub matmul_q8: fn(&[BlockQ8], usize, &[BlockQ8], &mut [f32]),
    pub matmul_f32: fn(&[f32], usize, &[f32], &mut [f32]),
    pub quantize_q8: fn(&[f32], &mut [BlockQ8]),
    pub dot_q4_q8: fn(&[BlockQ4], &[BlockQ8]) -> f32,
    pub matmul_q4_q8: fn(&[BlockQ4], usize, &[BlockQ8], &mut [f32]),
    pub attn_scores: fn(&[f32], Strided<'_>, &mut [f32], usize),
    pub attn_values: fn(&[f32], usize, Strided<'_>, &mut [f32]),
    /// [`crate::math::softmax_rows`] (not a product, but attention's third loop: each
    /// tier compiles the same code at its vector width).
    pub softmax_rows: fn(&mut [f32], usize, usize, usize),
    /// [`crate::math::log_sum_exp`] (exact likelihoods: a pixel's 256 levels, a
    /// vocabulary), compiled at each tier's width like `softmax_rows`.
    pub log_sum_exp: fn(&[f32]) -> f64,
    /// [`crate::math::map_f32`] (the pixel graphs' activations), likewise.
    pub map_f32: fn(crate::math::Unary, &mut [f32]),
    /// [`scalar::f16_to_f32`]: an f16 KV cache's rows, read.
    pub f16_to_f32: fn(&[u16], &mut [f32]),
    /// [`scalar::f32_to_f16`]: an f16 KV cache's rows, written.
    pub f32_to_f16: fn(&[f32], &mut [u16]),
}

/// `n` rows of `width` floats, row `i` at `data[i * stride..]`: one head's slice of the
/// cached keys or values of consecutive positions (the attention kernels' operand).
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    data: &'a [f32],
    stride: usize,
    n: usize,
    width: usize,
}

impl<'a> Strided<'a> {
    /// `None` unless `data` holds all `n` rows (`width <= stride` when `n > 1`).
    pub fn new(data: &'a [f32], stride: usize, n: usize, width: usize) -> Option<Self> {
        let fits =
            n == 0 || (width <= stride || n == 1) && (n - 1).checked_mul(stride)?.checked_add(width)? <= data.len();
        fits.then_some(Strided { data, stride, n, width })
    }

    /// One row: all of `row`.
    pub fn one(row: &'a [f32]) -> Self {
        Strided { data: row, stride: row.len(), n: 1, width: row.len() }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Row `i < n`.
    #[inline(always)]
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride..i * self.stride + self.width]
    }
}

/// The portable tier.
pub static SCALAR: Kernels = Kernels {
    name: "scalar",
    dot_q8: scalar::dot_q8,
    dot_f32: scalar::dot_f32,
    matmul_q8: scalar::matmul_q8,
    matmul_f32: scalar::matmul_f32,
    quantize_q8: scalar::quantize_q8,
    dot_q4_q8: scalar::dot_q4_q8,
    matmul_q4_q8: scalar::matmul_q4_q8,
    attn_scores: scalar::attn_scores,
    attn_values: scalar::attn_values,
    softmax_rows: crate::math::softmax_rows,
    log_sum_exp: crate::math::log_sum_exp,
    map_f32: crate::math::map_f32,
    f16_to_f32: scalar::f16_to_f32,
    f32_to_f16: scalar::f32_to_f16,
};

/// The environment variable that caps the tier [`best`] picks on std hosts.
pub const MAX_ISA_VAR: &str = "ARQ_MAX_ISA";

/// A tier compiled into this build and whether this CPU runs it.
struct Tier {
    kernels: &'static Kernels,
    supported: fn() -> bool,
}

/// Every tier compiled into this build, weakest first. SIMD tables hold safe wrappers
/// around `target_feature` code, so a table must only leave this module through a check
/// of its `supported` (which [`available`] does).
static TIERS: &[Tier] = &[
    Tier { kernels: &SCALAR, supported: || true },
    #[cfg(target_arch = "x86_64")]
    Tier { kernels: &x86::avx2::KERNELS, supported: x86::avx2::detected },
    #[cfg(target_arch = "x86_64")]
    Tier { kernels: &x86::avx512::KERNELS, supported: x86::avx512::detected },
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    Tier { kernels: &aarch64::neon::NEON, supported: aarch64::neon::neon_detected },
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    Tier { kernels: &aarch64::neon::DOTPROD, supported: aarch64::neon::dotprod_detected },
    #[cfg(arq_arm_dsp)]
    Tier { kernels: &arm::dsp::DSP, supported: arm::dsp::detected },
];

/// Every tier this CPU runs, weakest first ([`SCALAR`] always, the best last).
pub fn available() -> impl Iterator<Item = &'static Kernels> + Clone {
    TIERS.iter().filter(|t| (t.supported)()).map(|t| t.kernels)
}

/// The tier called `name` (`scalar`, `avx2`, `avx512vnni`, `neon`, `dotprod`, `dsp`, ...), if
/// this CPU runs it.
pub fn by_name(name: &str) -> Option<&'static Kernels> {
    available().find(|k| k.name == name)
}

/// The best tier this CPU runs that is no stronger than the tier named `max_isa`. A name
/// this build does not know caps nothing (it gives the best tier).
pub fn best_up_to(max_isa: &str) -> &'static Kernels {
    let max_isa = max_isa.trim();
    let cap = TIERS.iter().position(|t| t.kernels.name.eq_ignore_ascii_case(max_isa));
    let allowed = cap.map_or(TIERS, |i| &TIERS[..=i]);
    allowed.iter().rev().find(|t| (t.supported)()).map_or(&SCALAR, |t| t.kernels)
}

/// The best tier this machine supports, within the `ARQ_MAX_ISA` cap (std only),
/// chosen once.
#[cfg(feature = "std")]
pub fn best() -> &'static Kernels {
    static BEST: std::sync::OnceLock<&'static Kernels> = std::sync::OnceLock::new();
    BEST.get_or_init(|| match std::env::var(MAX_ISA_VAR) {
        Ok(cap) => best_up_to(&cap),
        Err(_) => best_up_to(""),
    })
}

/// The best tier enabled at compile time (`-C target-feature` or `target-cpu`).
#[cfg(not(feature = "std"))]
pub fn best() -> &'static Kernels {
    best_up_to("")
}
