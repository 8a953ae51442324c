//! Turning a conditional p(x_i | x_<i) (logits) into a token: greedy, temperature,
//! top-k, top-p, min-p and a repetition penalty, driven by a small seeded RNG (PCG32) so
//! the same seed gives the same tokens on every platform.
//!
//! No allocation: the caller lends a scratch buffer of `vocab` candidates.

use rand_core::{RngCore, SeedableRng};
use rand_pcg::Pcg32;

/// Sampling settings. `temperature == 0` means greedy (argmax).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1.0 = off).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top one's (0 = off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens (1.0 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// A problem with sampler settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerError {
    NegativeTemperature,
    TopPOutOfRange,
    MinPOutOfRange,
    RepeatPenaltyNotPositive,
    /// The scratch buffer is smaller than the vocabulary.
    ScratchTooSmall,
    /// No logits to sample from.
    Empty,
}

impl core::fmt::Display for SamplerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SamplerError::NegativeTemperature => "temperature must be >= 0",
            SamplerError::TopPOutOfRange => "top-p must be in (0, 1]",
            SamplerError::MinPOutOfRange => "min-p must be in [0, 1]",
            SamplerError::RepeatPenaltyNotPositive => "repeat penalty must be > 0",
            SamplerError::ScratchTooSmall => "sampler scratch smaller than the vocabulary",
            SamplerError::Empty => "no logits to sample from",
        })
    }
}

/// One (token, probability-or-logit) candidate.
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Candidate {
    pub id: u32,
    pub p: f32,
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: Pcg32,
}

impl Sampler {
    // Negated comparisons so that NaN settings are refused too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn new(cfg: SamplerConfig) -> Result<Self, SamplerError> {
        if !(cfg.temperature >= 0.0) {
            return Err(SamplerError::NegativeTemperature);
        }
        if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            return Err(SamplerError::TopPOutOfRange);
        }
        if !(cfg.min_p >= 0.0 && cfg.min_p <= 1.0) {
            return Err(SamplerError::MinPOutOfRange);
        }
        if !(cfg.repeat_penalty > 0.0) {
            return Err(SamplerError::RepeatPenaltyNotPositive);
        }
        Ok(Sampler { cfg, rng: Pcg32::seed_from_u64(cfg.seed) })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// A uniform f32 in [0, 1) from 24 random bits (identical on every platform).
    fn uniform(&mut self) -> f32 {
        (self.rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Picks the next token. `logits` is scratch too (the repetition penalty and, with
    /// temperature, the weights are written over it); `recent` are the tokens seen so far
    /// (only the last `repeat_last_n` count); `scratch` must hold at least `logits.len()`
    /// candidates.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        recent: &[u32],
        scratch: &mut [Candidate],
    ) -> Result<u32, SamplerError> {
        let n = logits.len();
        if scratch.len() < n {
            return Err(SamplerError::ScratchTooSmall);
        }
        if n == 0 {
            return Err(SamplerError::Empty);
        }
        if self.cfg.repeat_penalty != 1.0 {
            let start = recent.len().saturating_sub(self.cfg.repeat_last_n);
            for &t in &recent[start..] {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / self.cfg.repeat_penalty } else { *l * self.cfg.repeat_penalty };
                }
            }
        }
        if self.cfg.temperature == 0.0 {
            return Ok(crate::math::argmax(logits) as u32);
        }

        // Weights at the temperature relative to the most likely token, w = exp((l - max)
        // / T) in (0, 1], and their sum (p = w / sum), over the top-k candidates or, in
        // place, over the whole vocabulary (a loop that vectorizes). Nothing is sorted
        // here: sorting the vocabulary would cost more than the rest of a small model's step.
        let by_value = |a: &Candidate, b: &Candidate| b.p.total_cmp(&a.p).then(a.id.cmp(&b.id));
        let inv_t = 1.0 / self.cfg.temperature;
        let exp = crate::math::exp;
        let min_w = self.cfg.min_p;
        let (c, mut len, sum) = if self.cfg.top_k > 0 && self.cfg.top_k < n {
            for (i, (cand, &l)) in scratch.iter_mut().zip(logits.iter()).enumerate() {
                *cand = Candidate { id: i as u32, p: l };
            }
            scratch[..n].select_nth_unstable_by(self.cfg.top_k - 1, by_value);
            let c = &mut scratch[..self.cfg.top_k];
            let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.p));
            let mut sum = 0.0f32;
            for cand in c.iter_mut() {
                cand.p = exp((cand.p - max) * inv_t);
                sum += cand.p;
            }
            let len = c.len();
            (c, len, sum)
        } else {
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            for l in logits.iter_mut() {
                *l = exp((*l - max) * inv_t);
            }
            let mut sum = 0.0f32;
            let mut len = 0;
            for (i, &w) in logits.iter().enumerate() {
                sum += w;
                // min-p (below) is w >= min_p: only those become candidates.
                if w >= min_w {
                    scratch[len] = Candidate { id: i as u32, p: w };
                    len += 1;
                }
            }
            (&mut scratch[..n], len, sum)
        };

        // min-p: p >= min_p * p_max is w >= min_p (the survivors keep their order).
        if min_w > 0.0 {
            let mut kept = 0;
            for i in 0..len {
                if c[i].p >= min_w {
                    c[kept] = c[i];
                    kept += 1;
                }
            }
            len = kept;
        }
        if len == 0 {
            // Only with NaN logits: no weight compares; take the first candidate.
            len = 1;
        }

        // top-p: the most likely tokens until their probability reaches top_p. Only the
        // smallest set of the largest weights that holds that mass is found and sorted,
        // growing 4x until it does.
        if self.cfg.top_p < 1.0 {
            let target = self.cfg.top_p * sum;
            let mut k = len.min(64);
            loop {
                if k < len {
                    c[..len].select_nth_unstable_by(k - 1, by_value);
                }
                if k == len || c[..k].iter().map(|x| x.p).sum::<f32>() >= target {
                    break;
                }
                k = (k * 4).min(len);
            }
            c[..k].sort_unstable_by(by_value);
            let mut cum = 0.0;
            len = k;
            for (i, cand) in c[..k].iter().enumerate() {
                cum += cand.p;
                if cum >= target {
                    len = i + 1;
                    break;
                }
            }
        }

        // One draw from the kept weights, in their order.
        let c = &c[..len];
        let total: f32 = c.iter().map(|x| x.p).sum();
        let r = self.uniform() * total;
        let mut cum = 0.0;
        for cand in c {
            cum += cand.p;
            if r < cum {
                return Ok(cand.id);
            }
        }
        Ok(c[c.len() - 1].id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: SamplerConfig, logits: &[f32], n: usize) -> [u32; 64] {
        let mut s = Sampler::new(cfg).unwrap();
        let mut scratch = [Candidate::default(); 8];
        let mut out = [0u32; 64];
        for o in out.iter_mut().take(n) {
            let mut l = [0.0f32; 8];
            l[..logits.len()].copy_from_slice(logits);
            *o = s.sample(&mut l[..logits.len()], &[], &mut scratch).unwrap();
        }
        out
    }

    const LOGITS: [f32; 6] = [1.0, 3.0, 2.5, 0.0, -1.0, 2.9];

    #[test]
    fn greedy_is_argmax() {
        let cfg = SamplerConfig { temperature: 0.0, ..Default::default() };
        assert!(run(cfg, &LOGITS, 10)[..10].iter().all(|&t| t == 1));
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let cfg = SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 7, ..Default::default() };
        assert_eq!(run(cfg, &LOGITS, 64), run(cfg, &LOGITS, 64));
        assert_ne!(run(cfg, &LOGITS, 64), run(SamplerConfig { seed: 8, ..cfg }, &LOGITS, 64));
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_support() {
        let base = SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, seed: 1, ..Default::default() };
        let k2 = run(SamplerConfig { top_k: 2, ..base }, &LOGITS, 64);
        assert!(k2.iter().all(|&t| t == 1 || t == 5));
        // p(1) ~ 0.35, p(5) ~ 0.32: top-p 0.3 keeps only token 1.
        assert!(run(SamplerConfig { top_p: 0.3, ..base }, &LOGITS, 64).iter().all(|&t| t == 1));
        // min-p 0.5 keeps tokens within half of the best: 1, 5, 2.
        let mp = run(SamplerConfig { min_p: 0.5, ..base }, &LOGITS, 64);
        assert!(mp.iter().all(|&t| [1, 5, 2].contains(&t)));
        // Without restriction, low-probability tokens do appear.
        assert!(run(base, &LOGITS, 64).iter().any(|&t| t == 0 || t == 3));
    }

    #[test]
    fn repeat_penalty_demotes_recent_tokens() {
        let cfg = SamplerConfig { temperature: 0.0, repeat_penalty: 2.0, ..Default::default() };
        let mut s = Sampler::new(cfg).unwrap();
        let mut l = LOGITS;
        let mut scratch = [Candidate::default(); 6];
        assert_eq!(s.sample(&mut l, &[1], &mut scratch).unwrap(), 5);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            Sampler::new(SamplerConfig { temperature: -1.0, ..Default::default() }).err(),
            Some(SamplerError::NegativeTemperature)
        );
        assert_eq!(
            Sampler::new(SamplerConfig { top_p: 0.0, ..Default::default() }).err(),
            Some(SamplerError::TopPOutOfRange)
        );
        assert_eq!(
            Sampler::new(SamplerConfig { top_p: f32::NAN, ..Default::default() }).err(),
            Some(SamplerError::TopPOutOfRange)
        );
    }
}
