//! The float parts of a transformer step: norms, activations, rotary embeddings,
//! softmax. Scalar and portable; `libm` keeps them no_std.

/// `out = x / rms(x) * weight`, with `rms = sqrt(mean(x^2) + eps)`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// `e^x` in plain f32 arithmetic (no FMA, no table, no libm call), so it vectorizes and
/// gives the same bits on every ISA. Range reduction `x = n ln2 + r`, `|r| <= ln2/2`,
/// then a degree-6 Taylor polynomial: relative error about 2e-7 (within 2 ulp). Inputs
/// below -87 give `e^-87` (~1.6e-38) instead of a subnormal: harmless for softmax and
/// SiLU, where such terms vanish next to the others.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln 2 split in two so n * LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer (ties to even)
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut lanes = [0.0f32; 8];
    for (i, v) in x.iter_mut().enumerate() {
        *v = exp(*v - max);
        lanes[i % 8] += *v;
    }
    let inv = 1.0 / crate::kernels::scalar::reduce8(&lanes);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `log(sum(exp(x)))`, computed stably in f64 (for exact likelihoods).
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = x.iter().map(|&v| libm::exp(v as f64 - max)).sum();
    max + libm::log(sum)
}

/// `log p(id)` under `softmax(logits)`.
pub fn log_prob(logits: &[f32], id: usize) -> f64 {
    logits[id] as f64 - log_sum_exp(logits)
}

/// SiLU-gated product, in place: `gate = silu(gate) * up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// The rotary-embedding table for one position: `(cos, sin)` of `pos * base^(-2i/d)`
/// for each pair `i < d/2`, interleaved in `out` (length `d`).
pub fn rope_table(out: &mut [f32], pos: usize, base: f32) {
    let d = out.len();
    for i in (0..d).step_by(2) {
        let freq = 1.0 / libm::powf(base, i as f32 / d as f32);
        let (s, c) = libm::sincosf(pos as f32 * freq);
        out[i] = c;
        out[i + 1] = s;
    }
}

/// Rotary position embedding on one head vector, rotating adjacent pairs
/// `(x[2i], x[2i+1])`: the layout GGUF stores LLaMA's Q and K in. `table` comes from
/// [`rope_table`] for the head dimension.
pub fn rope(x: &mut [f32], table: &[f32]) {
    for (p, cs) in x.chunks_exact_mut(2).zip(table.chunks_exact(2)) {
        let (a, b) = (p[0], p[1]);
        p[0] = a * cs[0] - b * cs[1];
        p[1] = a * cs[1] + b * cs[0];
    }
}

/// Index of the largest value (the first, on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_3_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, exact) = (exp(x), libm::exp(x as f64));
            let rel = ((ours as f64 - exact) / exact).abs();
            assert!(rel < 3.0 * f32::EPSILON as f64, "exp({x}) = {ours}, exact {exact}, rel {rel}");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_sums_to_one_and_log_prob_matches() {
        let mut x = [1.0f32, 2.0, 3.0, -1.0];
        let lp = log_prob(&x, 2);
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((libm::log(x[2] as f64) - lp).abs() < 1e-6);
    }

    #[test]
    fn rope_preserves_norm_and_is_identity_at_zero() {
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        let mut t = [0.0f32; 4];
        rope_table(&mut t, 0, 10000.0);
        rope(&mut x, &t);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        rope_table(&mut t, 17, 10000.0);
        rope(&mut x, &t);
        let n: f32 = x.iter().map(|v| v * v).sum();
        assert!((n - 30.0).abs() < 1e-4);
    }
}
