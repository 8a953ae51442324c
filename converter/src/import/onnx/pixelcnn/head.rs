//! The head of a gated PixelCNN: from `--head` ([`HeadSpec`]) or the model's `arq.*`
//! metadata, checked against out2's channels.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use arq::models::pixelcnn::heads::{Head, MAX_MIXTURES};

use super::MAX_LEVELS;

/// `min_log_scale` of mixture heads when neither the model nor `--head` gives one
/// (PixelCNN++'s clamp).
pub const DEFAULT_MIN_LOG_SCALE: f32 = -7.0;

/// A head given on the command line (`--head`), overriding the model's metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadSpec {
    /// Mixture heads carry `K` and `min_log_scale` (default [`DEFAULT_MIN_LOG_SCALE`]).
    pub head: Head,
    /// Discrete levels per pixel (`--levels`). `None`: categorical = out2's channels,
    /// bernoulli = 2, gaussian mixture = 0 (continuous), logistic mixture = the model's
    /// `arq.levels` metadata.
    pub levels: Option<usize>,
}

impl FromStr for HeadSpec {
    type Err = anyhow::Error;

    /// `categorical`, `bernoulli`, `logistic_mixture:K`, `gaussian_mixture:K`, the
    /// mixtures optionally with `:MIN_LOG_SCALE` (`logistic_mixture:5:-7`).
    fn from_str(s: &str) -> Result<Self> {
        let usage = "expected categorical, bernoulli, logistic_mixture:K or gaussian_mixture:K";
        let parts: Vec<&str> = s.trim().split(':').collect();
        let head = match parts.as_slice() {
            ["categorical"] => Head::Categorical,
            ["bernoulli"] => Head::Bernoulli,
            [name @ ("logistic_mixture" | "gaussian_mixture"), k, rest @ ..] if rest.len() <= 1 => {
                let k = k
                    .parse::<usize>()
                    .ok()
                    .filter(|k| (1..=MAX_MIXTURES).contains(k))
                    .ok_or_else(|| anyhow!("head '{s}': the mixture count K must be 1..={MAX_MIXTURES}"))?;
                let min_log_scale = match rest.first() {
                    None => DEFAULT_MIN_LOG_SCALE,
                    Some(v) => v
                        .parse::<f32>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| anyhow!("head '{s}': min_log_scale '{v}' is not a number"))?,
                };
                if *name == "logistic_mixture" {
                    Head::LogisticMixture { k, min_log_scale }
                } else {
                    Head::GaussianMixture { k, min_log_scale }
                }
            }
            [name @ ("logistic_mixture" | "gaussian_mixture")] => {
                bail!("head '{name}' needs its mixture count: {name}:K")
            }
            _ => bail!("unknown head '{s}' ({usage})"),
        };
        Ok(HeadSpec { head, levels: None })
    }
}

/// The head and levels from `--head` or the model's `arq.*` metadata, checked against
/// out2's `p` channels (`output` names that tensor in refusals: `out2`, or a pixel
/// graph's output).
pub(crate) fn resolve_head(
    meta: &HashMap<String, String>,
    spec: Option<&HeadSpec>,
    p: usize,
    output: &str,
) -> Result<(Head, usize)> {
    let meta_levels = meta_count(meta, "arq.levels")?;
    let (head, levels) = match spec {
        Some(s) => {
            let inferred = match s.head {
                Head::Categorical => Some(p),
                Head::Bernoulli => Some(2),
                Head::GaussianMixture { .. } => Some(0),
                Head::LogisticMixture { .. } => meta_levels,
            };
            let levels = s.levels.or(inferred).ok_or_else(|| {
                anyhow!("the logistic_mixture head needs the number of pixel levels (--levels); the model has no arq.levels")
            })?;
            (s.head, levels)
        }
        None => head_from_meta(meta, meta_levels, p)?,
    };
    check_head(head, levels, p, output)?;
    Ok((head, levels))
}

fn meta_count(meta: &HashMap<String, String>, key: &str) -> Result<Option<usize>> {
    meta.get(key)
        .map(|v| v.trim().parse::<usize>().map_err(|_| anyhow!("model metadata {key} = '{v}' is not a count")))
        .transpose()
}

/// The head `arq.head` names, its levels `arq.levels` or those it implies for `p`
/// channels of out2.
fn head_from_meta(meta: &HashMap<String, String>, meta_levels: Option<usize>, p: usize) -> Result<(Head, usize)> {
    let name = meta.get("arq.head").map(|s| s.trim()).ok_or_else(|| {
        anyhow!(
            "the model has no arq.head metadata: pass --head (categorical, bernoulli, logistic_mixture:K, \
             gaussian_mixture:K)"
        )
    })?;
    let head = match name {
        "categorical" => Head::Categorical,
        "bernoulli" => Head::Bernoulli,
        "logistic_mixture" => {
            let (k, min_log_scale) = meta_mixture(meta, name)?;
            Head::LogisticMixture { k, min_log_scale }
        }
        "gaussian_mixture" => {
            let (k, min_log_scale) = meta_mixture(meta, name)?;
            Head::GaussianMixture { k, min_log_scale }
        }
        other => bail!(
            "model metadata arq.head = '{other}' is not a known head (categorical, bernoulli, \
             logistic_mixture, gaussian_mixture); pass --head"
        ),
    };
    let levels = match (head, meta_levels) {
        (_, Some(l)) => l,
        (Head::Categorical, None) => p,
        (Head::Bernoulli, None) => 2,
        (Head::GaussianMixture { .. }, None) => 0,
        (Head::LogisticMixture { .. }, None) => {
            bail!("arq.head logistic_mixture needs arq.levels metadata (or pass --levels)")
        }
    };
    Ok((head, levels))
}

/// `K` and `min_log_scale` of the mixture head `name` from `arq.mixtures` and
/// `arq.min_log_scale`.
fn meta_mixture(meta: &HashMap<String, String>, name: &str) -> Result<(usize, f32)> {
    let k = meta_count(meta, "arq.mixtures")?
        .ok_or_else(|| anyhow!("arq.head {name} needs arq.mixtures metadata (or pass --head {name}:K)"))?;
    if !(1..=MAX_MIXTURES).contains(&k) {
        bail!("model metadata arq.mixtures = {k} is not 1..={MAX_MIXTURES}");
    }
    let min = match meta.get("arq.min_log_scale") {
        None => DEFAULT_MIN_LOG_SCALE,
        Some(v) => v
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| anyhow!("model metadata arq.min_log_scale = '{v}' is not a number"))?,
    };
    Ok((k, min))
}

/// Whether `head` with `levels` fits out2's `p` channels.
fn check_head(head: Head, levels: usize, p: usize, output: &str) -> Result<()> {
    let hname = head.name();
    match head {
        Head::Categorical if levels != p => {
            bail!("categorical head with {levels} levels, but {output} has {p} output channels (one logit per level)")
        }
        Head::Bernoulli if p != 1 => bail!("bernoulli head, but {output} has {p} output channels (expected 1 logit)"),
        Head::Bernoulli if levels != 2 => bail!("bernoulli head with {levels} levels (expected 2)"),
        Head::LogisticMixture { k, .. } | Head::GaussianMixture { k, .. } if p != 3 * k => {
            bail!("{hname} head with K = {k}, but {output} has {p} output channels (expected 3K = {})", 3 * k)
        }
        Head::GaussianMixture { .. } if levels != 0 => {
            bail!("gaussian_mixture head with {levels} levels (it models continuous values: 0)")
        }
        Head::Categorical | Head::LogisticMixture { .. } if !(2..=MAX_LEVELS).contains(&levels) => {
            bail!("{hname} head with {levels} levels (expected 2..={MAX_LEVELS})")
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_spec_parses() {
        assert_eq!("categorical".parse::<HeadSpec>().unwrap().head, Head::Categorical);
        assert_eq!("bernoulli".parse::<HeadSpec>().unwrap().head, Head::Bernoulli);
        assert_eq!(
            "logistic_mixture:5".parse::<HeadSpec>().unwrap().head,
            Head::LogisticMixture { k: 5, min_log_scale: -7.0 }
        );
        assert_eq!(
            "gaussian_mixture:3:-5".parse::<HeadSpec>().unwrap().head,
            Head::GaussianMixture { k: 3, min_log_scale: -5.0 }
        );
        for bad in ["", "softmax", "logistic_mixture", "logistic_mixture:0", "logistic_mixture:x", "categorical:3"] {
            assert!(bad.parse::<HeadSpec>().is_err(), "{bad}");
        }
    }
}
