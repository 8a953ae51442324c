//! Per-pixel output distributions ("heads"): how a PixelCNN's output channels at one
//! pixel become `p(x_i | x_<i)`, its log-likelihood and a sample.
//!
//! Everything here is in f64 (`libm`, no_std): the heads cost a few dozen operations
//! per pixel, and exact likelihoods are the point. Formulas are the ones in FORMAT.md.

use crate::kernels::Kernels;
use rand_core::RngCore;

use super::MAX_LEVELS;

/// The output distribution of a pixel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Head {
    /// `levels` logits; `log p(x) = log_softmax(logits)[x]`.
    Categorical,
    /// One logit of level 1 (two levels).
    Bernoulli,
    /// Discretized logistic mixture (PixelCNN++): `k` logits, `k` means, `k` log-scales
    /// on the `[-1, 1]` value axis; the edge levels absorb the tails.
    LogisticMixture { k: usize, min_log_scale: f32 },
    /// Mixture of Gaussians for continuous values: `k` logits, `k` means, `k` log
    /// standard deviations.
    GaussianMixture { k: usize, min_log_scale: f32 },
}

/// `log(1 + e^x)`, stable for all x.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + libm::log1p(libm::exp(-x.abs()))
}

/// `log(sum(exp(x)))` over an iterator, stably.
fn log_sum_exp(x: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = x.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + libm::log(x.map(|v| libm::exp(v - max)).sum::<f64>())
}

/// The value a discrete level stands for on the network's `[-1, 1]` axis, as the
/// network input and the logistic mixture see it (f32, computed as in PyTorch).
pub fn value_of_level(level: usize, levels: usize) -> f32 {
    level as f32 / (levels - 1) as f32 * 2.0 - 1.0
}

/// A uniform draw in `[0, 1)` with 53 random bits.
fn uniform(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Index drawn from unnormalized log-weights at temperature `temp` (`0` = argmax; ties
/// go to the lowest index).
pub fn sample_log_weights(logw: &[f64], temp: f32, rng: &mut impl RngCore) -> usize {
    let (best, max) =
        logw.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    if temp <= 0.0 {
        return best;
    }
    let t = temp as f64;
    // `exp_f64` (within 1 ulp of libm's) vectorizes the kept weights' loop.
    let weight = |v: f64| crate::math::exp_f64((v - max) / t);
    // Up to a pixel's 256 levels the weights are kept on the stack, so each `exp` runs
    // once (it was half of a cached sampling step); longer lists (particles) compute
    // them twice. Both walks give the same index for the same draw.
    let mut kept = [0.0f64; 256];
    if let Some(w) = kept.get_mut(..logw.len()) {
        for (w, &v) in w.iter_mut().zip(logw) {
            *w = weight(v);
        }
        return pick(w, uniform(rng), best);
    }
    let total: f64 = logw.iter().map(|&v| weight(v)).sum();
    let mut u = uniform(rng) * total;
    for (i, &v) in logw.iter().enumerate() {
        u -= weight(v);
        if u < 0.0 {
            return i;
        }
    }
    best
}

/// The index where `u` times the sum of `w` falls in the running sum (`fallback` if
/// rounding leaves it past the end).
fn pick(w: &[f64], u: f64, fallback: usize) -> usize {
    let mut u = u * w.iter().sum::<f64>();
    for (i, &x) in w.iter().enumerate() {
        u -= x;
        if u < 0.0 {
            return i;
        }
    }
    fallback
}

impl Head {
    /// Output channels the head reads.
    pub fn n_params(&self, levels: usize) -> usize {
        match *self {
            Head::Categorical => levels,
            Head::Bernoulli => 1,
            Head::LogisticMixture { k, .. } | Head::GaussianMixture { k, .. } => 3 * k,
        }
    }

    /// The name FORMAT.md and the CLI use.
    pub fn name(&self) -> &'static str {
        match self {
            Head::Categorical => "categorical",
            Head::Bernoulli => "bernoulli",
            Head::LogisticMixture { .. } => "logistic_mixture",
            Head::GaussianMixture { .. } => "gaussian_mixture",
        }
    }

    /// Whether pixels take discrete levels (all heads but the Gaussian mixture).
    pub fn is_discrete(&self) -> bool {
        !matches!(self, Head::GaussianMixture { .. })
    }

    /// `log p(level)`: the same value as [`log_probs`](Self::log_probs)`[level]`, without
    /// the other levels where the head allows, on `k`'s tier (`scratch`, `levels` long,
    /// is used where it does not).
    pub fn log_prob(&self, k: &Kernels, levels: usize, params: &[f32], level: usize, scratch: &mut [f64]) -> f64 {
        match *self {
            Head::Categorical => params[level] as f64 - (k.log_sum_exp)(&params[..levels]),
            _ => {
                self.log_probs(k, levels, params, &mut scratch[..levels]);
                scratch[level]
            }
        }
    }

    /// `out[x] = log p(x)` for every level `x < levels` (discrete heads; `out.len() ==
    /// levels`), with `k`'s log-sum-exp (every tier gives the same bits). The Gaussian
    /// mixture has no levels and leaves `out` untouched.
    pub fn log_probs(&self, kernels: &Kernels, levels: usize, params: &[f32], out: &mut [f64]) {
        debug_assert_eq!(out.len(), levels);
        match *self {
            Head::Categorical => {
                let lse = (kernels.log_sum_exp)(params);
                for (o, &v) in out.iter_mut().zip(params) {
                    *o = v as f64 - lse;
                }
            }
            Head::Bernoulli => {
                let l = params[0] as f64;
                out[0] = -softplus(l);
                out[1] = -softplus(-l);
            }
            Head::LogisticMixture { k, min_log_scale } => {
                let (logits, rest) = params.split_at(k);
                let (mu, ls) = rest.split_at(k);
                let lse = (kernels.log_sum_exp)(logits);
                let half = 1.0 / (levels - 1) as f64;
                // Level x's bin is [edge(x - 1), edge(x)] with edge(x) = (y_x - mu + h) / s,
                // so each component needs one softplus per edge, not two per level, and
                // `b - a = -2h / s` is the same for every level. The mixture's
                // log-sum-exp runs online per level (running max `out[x]`, sum `sum[x]`).
                let mut sum = [0.0f64; MAX_LEVELS];
                out.fill(f64::NEG_INFINITY);
                for j in 0..k {
                    let inv_s = libm::exp(-(ls[j].max(min_log_scale) as f64));
                    let log_width = libm::log(-libm::expm1(-2.0 * half * inv_s));
                    let lw = logits[j] as f64 - lse;
                    let edge = |x: usize| (value_of_level(x, levels) as f64 - mu[j] as f64 + half) * inv_s;
                    // softplus of the bin's lower edge (the previous level's upper one).
                    let mut sp_b = 0.0;
                    for x in 0..levels {
                        let lp = if x + 1 == levels {
                            -sp_b // the upper tail: log(1 - sigmoid(b)) = -softplus(b)
                        } else {
                            let a = edge(x);
                            let sp_a = softplus(a);
                            // log(sigmoid(a) - sigmoid(b)), exact for any a > b; level 0
                            // takes the lower tail, log(sigmoid(a)) = a - softplus(a).
                            let lp = if x == 0 { a - sp_a } else { a + log_width - sp_a - sp_b };
                            sp_b = sp_a;
                            lp
                        };
                        let v = lw + lp;
                        let (m, acc) = (&mut out[x], &mut sum[x]);
                        if v > *m {
                            *acc = *acc * libm::exp(*m - v) + 1.0;
                            *m = v;
                        } else if v > f64::NEG_INFINITY {
                            *acc += libm::exp(v - *m);
                        }
                    }
                }
                for (o, s) in out.iter_mut().zip(&sum) {
                    *o += libm::log(*s);
                }
            }
            Head::GaussianMixture { .. } => {}
        }
    }

    /// Log-density at the continuous value `x` (Gaussian mixture only; `NaN` for the
    /// discrete heads, whose likelihoods come from [`Head::log_probs`]).
    pub fn log_density(&self, params: &[f32], x: f32) -> f64 {
        let Head::GaussianMixture { k, min_log_scale } = *self else {
            return f64::NAN;
        };
        let (logits, rest) = params.split_at(k);
        let (mu, ls) = rest.split_at(k);
        let lse = crate::math::log_sum_exp(logits);
        let half_log_2pi = 0.5 * libm::log(2.0 * core::f64::consts::PI);
        log_sum_exp((0..k).map(|j| {
            let ls = ls[j].max(min_log_scale) as f64;
            let z = (x as f64 - mu[j] as f64) * libm::exp(-ls);
            logits[j] as f64 - lse - 0.5 * z * z - ls - half_log_2pi
        }))
    }

    /// A continuous value from the Gaussian mixture: a component from the logits at
    /// temperature `temp`, then its Gaussian with the variance scaled by `temp` (`temp
    /// == 0` gives the mean of the most likely component). `NaN` for discrete heads.
    pub fn sample_value(&self, params: &[f32], temp: f32, rng: &mut impl RngCore) -> f32 {
        let Head::GaussianMixture { k, min_log_scale } = *self else {
            return f32::NAN;
        };
        let mut logw = [0.0f64; MAX_MIXTURES];
        for (w, &v) in logw.iter_mut().zip(&params[..k]) {
            *w = v as f64;
        }
        let j = sample_log_weights(&logw[..k], temp, rng);
        let (mu, s) = (params[k + j] as f64, libm::exp(params[2 * k + j].max(min_log_scale) as f64));
        if temp <= 0.0 {
            return mu as f32;
        }
        // Box-Muller; 1 - u keeps the logarithm finite.
        let (u1, u2) = (1.0 - uniform(rng), uniform(rng));
        let z = libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * core::f64::consts::PI * u2);
        (mu + s * libm::sqrt(temp as f64) * z) as f32
    }
}

/// The most mixture components a file may declare.
pub const MAX_MIXTURES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg32;

    fn sum_exp(lp: &[f64]) -> f64 {
        lp.iter().map(|&v| v.exp()).sum()
    }

    #[test]
    fn categorical_is_log_softmax() {
        let p = [1.0f32, -2.0, 0.5, 3.0];
        let mut lp = [0.0; 4];
        Head::Categorical.log_probs(&crate::kernels::SCALAR, 4, &p, &mut lp);
        let z: f64 = p.iter().map(|&v| (v as f64).exp()).sum();
        for (l, &v) in lp.iter().zip(&p) {
            assert!((l - ((v as f64).exp() / z).ln()).abs() < 1e-12);
        }
    }

    #[test]
    fn bernoulli_is_sigmoid() {
        for l in [-30.0f32, -2.0, 0.0, 0.7, 40.0] {
            let mut lp = [0.0; 2];
            Head::Bernoulli.log_probs(&crate::kernels::SCALAR, 2, &[l], &mut lp);
            let p1 = 1.0 / (1.0 + (-(l as f64)).exp());
            assert!((lp[1].exp() - p1).abs() < 1e-12, "{l}");
            assert!((sum_exp(&lp) - 1.0).abs() < 1e-12);
        }
    }

    /// The mixture against a direct evaluation of CDF differences (in a range where the
    /// naive formula is accurate).
    #[test]
    fn logistic_mixture_matches_cdf_differences() {
        let levels = 17;
        let head = Head::LogisticMixture { k: 2, min_log_scale: -7.0 };
        let params = [0.3f32, -0.4, -0.2, 0.5, -1.5, -2.0];
        let mut lp = [0.0; 17];
        head.log_probs(&crate::kernels::SCALAR, levels, &params, &mut lp);
        assert!((sum_exp(&lp) - 1.0).abs() < 1e-12);
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let w0 = 1.0 / (1.0 + ((params[1] - params[0]) as f64).exp());
        for (x, &l) in lp.iter().enumerate() {
            let y = x as f64 / 16.0 * 2.0 - 1.0;
            let mut p = 0.0;
            for (j, w) in [(0usize, w0), (1, 1.0 - w0)] {
                let (mu, s) = (params[2 + j] as f64, (params[4 + j] as f64).exp());
                let upper = if x == 16 { 1.0 } else { sig((y + 1.0 / 16.0 - mu) / s) };
                let lower = if x == 0 { 0.0 } else { sig((y - 1.0 / 16.0 - mu) / s) };
                p += w * (upper - lower);
            }
            assert!((l.exp() - p).abs() < 1e-8, "level {x}: {} vs {p}", l.exp());
        }
    }

    #[test]
    fn logistic_mixture_is_finite_far_in_the_tails() {
        let head = Head::LogisticMixture { k: 1, min_log_scale: -7.0 };
        let mut lp = [0.0; 17];
        head.log_probs(&crate::kernels::SCALAR, 17, &[0.0, 0.9, -7.0], &mut lp);
        assert!(lp.iter().all(|v| v.is_finite()), "{lp:?}");
        assert!((sum_exp(&lp) - 1.0).abs() < 1e-9);
    }

    /// The stack-kept weights pick exactly what computing each `exp` twice picks (the
    /// sampler before the weights were kept), for the same draws.
    #[test]
    fn kept_weights_sample_as_recomputed_ones() {
        fn twice(logw: &[f64], temp: f32, rng: &mut impl RngCore) -> usize {
            let (best, max) =
                logw.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            let t = temp as f64;
            let total: f64 = logw.iter().map(|&v| crate::math::exp_f64((v - max) / t)).sum();
            let mut u = uniform(rng) * total;
            for (i, &v) in logw.iter().enumerate() {
                u -= crate::math::exp_f64((v - max) / t);
                if u < 0.0 {
                    return i;
                }
            }
            best
        }
        let mut gen = Pcg32::seed_from_u64(11);
        for len in [1usize, 2, 17, 255, 256, 257, 400] {
            let mut all = [0.0f64; 400];
            let logw = &mut all[..len];
            for v in logw.iter_mut() {
                *v = (gen.next_u32() as f64 / u32::MAX as f64) * 12.0 - 9.0;
            }
            for temp in [0.7f32, 1.0, 1.3] {
                let (mut a, mut b) = (Pcg32::seed_from_u64(len as u64), Pcg32::seed_from_u64(len as u64));
                for _ in 0..200 {
                    assert_eq!(sample_log_weights(logw, temp, &mut a), twice(logw, temp, &mut b), "{len} {temp}");
                }
            }
        }
    }

    #[test]
    fn gaussian_mixture_matches_the_density_formula() {
        let head = Head::GaussianMixture { k: 2, min_log_scale: -7.0 };
        let params = [0.5f32, -0.5, -0.3, 0.6, -1.0, 0.2];
        let w0 = 1.0 / (1.0 + ((params[1] - params[0]) as f64).exp());
        for x in [-2.0f32, -0.3, 0.0, 0.55, 3.0] {
            let mut p = 0.0;
            for (j, w) in [(0usize, w0), (1, 1.0 - w0)] {
                let (mu, s) = (params[2 + j] as f64, (params[4 + j] as f64).exp());
                let z = (x as f64 - mu) / s;
                p += w * (-0.5 * z * z).exp() / (s * (2.0 * core::f64::consts::PI).sqrt());
            }
            assert!((head.log_density(&params, x) - p.ln()).abs() < 1e-12, "{x}");
        }
        // Samples follow the mixture: the mean of many draws is the mixture mean.
        let mut rng = Pcg32::seed_from_u64(3);
        let n = 20000;
        let mean: f64 = (0..n).map(|_| head.sample_value(&params, 1.0, &mut rng) as f64).sum::<f64>() / n as f64;
        let want = w0 * params[2] as f64 + (1.0 - w0) * params[3] as f64;
        assert!((mean - want).abs() < 0.03, "{mean} vs {want}");
        assert_eq!(head.sample_value(&params, 0.0, &mut rng), params[2]);
    }

    #[test]
    fn sampling_follows_the_probabilities_and_temperature_zero_is_argmax() {
        let lp = [0.1f64.ln(), 0.6f64.ln(), 0.3f64.ln()];
        let mut rng = Pcg32::seed_from_u64(1);
        let mut counts = [0usize; 3];
        for _ in 0..30000 {
            counts[sample_log_weights(&lp, 1.0, &mut rng)] += 1;
        }
        for (c, p) in counts.iter().zip([0.1, 0.6, 0.3]) {
            assert!((*c as f64 / 30000.0 - p).abs() < 0.015, "{counts:?}");
        }
        assert_eq!(sample_log_weights(&lp, 0.0, &mut rng), 1);
    }
}
