//! `arq score`, `next` and `forecast` on value models (real-valued series with a
//! mixture-of-Gaussians head): arguments in, the library's results
//! ([`arq_convert::series`]) printed.

use std::path::Path;

use anyhow::{bail, Result};
use arq::{Rnn, RnnSession};
use arq_convert::series::{self, read_csv, QUANTILES};
use serde_json::json;

fn session<'a>(model: &'a Rnn<'a>, arena: &'a mut Vec<u8>) -> Result<RnnSession<'a>> {
    *arena = vec![0u8; model.memory_plan()?];
    Ok(RnnSession::new(model, arena)?)
}

/// A step is an anomaly when its log density is more than 3 standard deviations below
/// the series' mean log density.
const ANOMALY_SIGMAS: f64 = 3.0;

pub fn score(model: &Rnn<'_>, input: &Path, json_out: bool, per_step: bool) -> Result<()> {
    series::head(model)?;
    let s = read_csv(input)?;
    let mut arena = Vec::new();
    let lp = series::score(&mut session(model, &mut arena)?, &s.values)?;
    let n = lp.len() as f64;
    let total: f64 = lp.iter().sum();
    let mean = total / n;
    let sd = (lp.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let threshold = mean - ANOMALY_SIGMAS * sd;
    let anomalies: Vec<usize> = (0..lp.len()).filter(|&i| lp[i] < threshold).collect();
    let ln2 = std::f64::consts::LN_2;
    if json_out {
        let mut v = json!({
            "values": lp.len(),
            "column": s.column,
            "log_density_nats": total,
            "nats_per_value": mean,
            // -log2 of the probability of a bin of width 1 (the data's unit) around each value.
            "bits_per_value_at_quantum_1": -mean / ln2,
            "anomaly_threshold_nats": threshold,
            "anomalies": anomalies,
        });
        if per_step {
            v["per_step"] = lp
                .iter()
                .enumerate()
                .map(|(i, &l)| json!({"index": i, "value": s.values[i], "log_density": l, "anomaly": l < threshold}))
                .collect();
        }
        println!("{v}");
    } else {
        if per_step {
            for (i, &l) in lp.iter().enumerate() {
                println!("{i:>6} {:>12.4} {l:>10.4}{}", s.values[i], if l < threshold { "  anomaly" } else { "" });
            }
        }
        println!(
            "{} values of '{}': log density {total:.4} nats ({mean:.4} per value, {:.4} bits per value at a quantum \
             of 1); {} anomalies (below {threshold:.3} nats)",
            lp.len(),
            s.column,
            -mean / ln2,
            anomalies.len()
        );
    }
    Ok(())
}

/// `next`: the mixture over the value after the series in `prompt_file` (a CSV).
pub fn next(model: &Rnn<'_>, input: &Path, json_out: bool) -> Result<()> {
    let s = read_csv(input)?;
    let mut arena = Vec::new();
    let mix = series::next_mixture(&mut session(model, &mut arena)?, &s.values)?;
    if json_out {
        let c: Vec<_> = mix.iter().map(|(w, m, sd)| json!({"weight": w, "mean": m, "std": sd})).collect();
        println!("{}", json!({"values": s.values.len(), "column": s.column, "components": c}));
    } else {
        println!(
            "p(x_{} | {} values of '{}'): a mixture of {} Gaussians",
            s.values.len() + 1,
            s.values.len(),
            s.column,
            mix.len()
        );
        for (w, m, sd) in mix {
            println!("  weight {w:.4}  mean {m:>12.4}  std {sd:>10.4}");
        }
    }
    Ok(())
}

/// The most values `forecast` samples (steps x paths).
const MAX_PATH_VALUES: usize = 1 << 24;

pub struct ForecastArgs<'a> {
    pub n: usize,
    pub samples: usize,
    pub seed: u64,
    pub output: &'a Path,
    pub json: bool,
}

pub fn forecast(model: &Rnn<'_>, input: &Path, a: &ForecastArgs<'_>) -> Result<()> {
    series::head(model)?;
    if a.n == 0 || a.samples == 0 {
        bail!("-n and --samples must be at least 1");
    }
    // The paths are kept for the quantiles: 8 bytes a value, at most 128 MiB.
    if a.n * a.samples > MAX_PATH_VALUES {
        bail!("-n {} x --samples {} is more than {MAX_PATH_VALUES} sampled values; ask for fewer", a.n, a.samples);
    }
    let s = read_csv(input)?;
    let mut arena = Vec::new();
    let paths = series::forecast(&mut session(model, &mut arena)?, &s.values, a.n, a.samples, a.seed)?;
    let (qs, means) = series::bands(&paths);
    let (w, h) = (960, 480);
    arq_convert::images::write_png_rgb(a.output, h, w, &series::fan_chart(&s.values, &qs, w, h))?;
    if a.json {
        let q = |j: usize| qs.iter().map(|q| q[j]).collect::<Vec<_>>();
        println!(
            "{}",
            json!({
                "history": s.values.len(),
                "column": s.column,
                "horizon": a.n,
                "samples": a.samples,
                "seed": a.seed,
                "mean": means,
                "quantiles": {"p05": q(0), "p25": q(1), "p50": q(2), "p75": q(3), "p95": q(4)},
                "png": a.output.display().to_string(),
            })
        );
    } else {
        println!("step       mean        5 %       25 %       50 %       75 %       95 %");
        for (t, (m, q)) in means.iter().zip(&qs).enumerate() {
            println!("{:>4} {m:>10.3} {}", t + 1, q.map(|v| format!("{v:>10.3}")).join(" "));
        }
        eprintln!(
            "{} sample paths of {} steps after {} values of '{}' (quantiles {QUANTILES:?}); fan chart in {}",
            a.samples,
            a.n,
            s.values.len(),
            s.column,
            a.output.display()
        );
    }
    Ok(())
}
