//! The accuracy report of a conversion: per-tensor relative error, and on a calibration
//! text the KL divergence, teacher-forced top-1 agreement and perplexity of the
//! quantized model against the unquantized one.

use anyhow::{anyhow, bail, Result};
use arq::math;
use arq::{Model, Session, SessionConfig};

use crate::aligned::ModelBytes;

/// The built-in calibration text: varied English prose (public-domain style, written for
/// this project).
pub const CALIBRATION_TEXT: &str = "The old lighthouse keeper climbed the spiral stairs every evening at dusk, \
counting the steps as his father had taught him. Below, the harbour filled with fishing boats returning \
from the grey northern waters, their decks heavy with the day's catch. Most nights were quiet, but in \
winter the storms came quickly, and the lamp had to burn until morning.\n\nScientists measure the \
distance to faraway stars by watching how their positions appear to shift as the Earth moves around the \
Sun. This method, called parallax, works only for the nearest stars; for galaxies millions of light-years \
away, astronomers rely on supernovae and other standard candles whose true brightness is known.\n\n\
To make bread, mix four cups of flour with a teaspoon of salt, a packet of yeast and about one and a half \
cups of warm water. Knead the dough for ten minutes, let it rise for an hour, shape it into a loaf and \
bake it at 220 degrees Celsius for thirty-five minutes, until the crust sounds hollow when tapped.\n";

/// `sqrt(sum (a-b)^2 / sum a^2)`.
pub fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (x as f64).powi(2);
    }
    if den == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

#[derive(Clone, Debug)]
pub struct AccuracyReport {
    /// Scored positions.
    pub tokens: usize,
    /// Mean KL(p_reference || p_quantized) per position, nats.
    pub kl_mean: f64,
    /// Fraction of positions where both models' argmax agree.
    pub top1_agreement: f64,
    pub ppl_reference: f64,
    pub ppl_quantized: f64,
}

/// Softmax in f64 of one logits row.
fn probs(logits: &[f32]) -> Vec<f64> {
    let lse = math::log_sum_exp(logits);
    logits.iter().map(|&l| (l as f64 - lse).exp()).collect()
}

/// Teacher-forced logits of every position of `tokens`.
fn all_logits(model: &Model<'_>, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    let cfg = SessionConfig { ctx: tokens.len(), batch: 32, threads: 1, ..Default::default() };
    let mut arena = vec![0u8; model.memory_plan(&cfg)?];
    let mut s = Session::new(model, &mut arena, cfg)?;
    let mut out = Vec::with_capacity(tokens.len());
    s.forward_all(tokens, |_, l| out.push(l.to_vec()))?;
    Ok(out)
}

/// Runs both models over `text` (tokenized by the quantized model's tokenizer).
pub fn compare(reference: &ModelBytes, quantized: &ModelBytes, text: &str) -> Result<AccuracyReport> {
    let r = Model::load(reference.bytes()).map_err(|e| anyhow!("reference model: {e}"))?;
    let q = Model::load(quantized.bytes()).map_err(|e| anyhow!("quantized model: {e}"))?;
    let tok = q.tokenizer().map_err(|e| anyhow!("tokenizer: {e}"))?;
    let mut tokens = tok.encode(text, false);
    tokens.truncate(r.config().ctx_train.min(512));
    if tokens.len() < 2 {
        bail!("calibration text has fewer than 2 tokens");
    }
    let lr = all_logits(&r, &tokens)?;
    let lq = all_logits(&q, &tokens)?;
    let (mut kl, mut agree, mut nll_r, mut nll_q) = (0.0, 0usize, 0.0, 0.0);
    let n = tokens.len() - 1;
    for i in 0..n {
        let (pr, pq) = (probs(&lr[i]), probs(&lq[i]));
        kl += pr.iter().zip(&pq).filter(|(a, _)| **a > 0.0).map(|(a, b)| a * (a / b.max(1e-300)).ln()).sum::<f64>();
        agree += (math::argmax(&lr[i]) == math::argmax(&lq[i])) as usize;
        let next = tokens[i + 1] as usize;
        nll_r -= pr[next].max(1e-300).ln();
        nll_q -= pq[next].max(1e-300).ln();
    }
    Ok(AccuracyReport {
        tokens: n,
        kl_mean: kl / n as f64,
        top1_agreement: agree as f64 / n as f64,
        ppl_reference: (nll_r / n as f64).exp(),
        ppl_quantized: (nll_q / n as f64).exp(),
    })
}
