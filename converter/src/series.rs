//! The jobs behind `arq score`, `arq next` and `arq forecast` on a value model (an LSTM
//! with a mixture-of-Gaussians head over real-valued series): reading a series from
//! CSV, exact log densities per step, sample paths continued from a series, their
//! quantile bands and a PNG fan chart.
//!
//! A step reads the previous value (the first step reads the normalisation's mean, as
//! training did) and gives the mixture over the next normalised value `z`; the density
//! of the value `x = mean + std·z` is the mixture's at `z` divided by `std`.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use arq::models::pixelcnn::heads::Head;
use arq::{Rnn, RnnInput, RnnSession};
use rand_core::SeedableRng;
use rand_pcg::Pcg32;

/// The most values a series may hold.
pub const MAX_VALUES: usize = 1 << 22;

/// A series read from CSV: the values of one column, and which one.
pub struct Series {
    /// The column's header, or `column N` (from 1) without a header.
    pub column: String,
    pub values: Vec<f64>,
}

/// Reads the last column of a CSV file (`-`: standard input): an optional header row
/// (a first row whose last cell is not a number), then one number per row. A missing
/// value, a cell that is not a number, rows of different lengths or no values are
/// refused, naming the line.
pub fn read_csv(path: &Path) -> Result<Series> {
    let bytes = crate::input::read_capped(path, crate::input::MAX_TEXT_BYTES, "the series")?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", path.display()))?;
    let at = |line: usize, what: String| anyhow!("{}: line {line}: {what}", path.display());
    let mut rows = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).peekable();
    let Some(&(_, first)) = rows.peek() else { bail!("{}: no values", path.display()) };
    let width = first.split(',').count();
    let last = |l: &str| l.rsplit(',').next().unwrap_or("").trim().to_string();
    let header = last(first).parse::<f64>().is_err();
    let column = if header { last(first) } else { format!("column {width}") };
    if header {
        rows.next();
    }
    let mut values = Vec::new();
    for (i, line) in rows {
        let cells = line.split(',').count();
        if cells != width {
            return Err(at(i + 1, format!("{cells} cells, the first row has {width}")));
        }
        let cell = last(line);
        if cell.is_empty() || ["nan", "na", "null"].contains(&cell.to_ascii_lowercase().as_str()) {
            return Err(at(i + 1, format!("missing value in column '{column}'")));
        }
        let v = cell.parse::<f64>().ok().filter(|v| v.is_finite());
        let v = v.ok_or_else(|| {
            at(i + 1, format!("'{}' in column '{column}' is not a number", crate::message::name(&cell)))
        })?;
        if values.len() == MAX_VALUES {
            return Err(at(i + 1, format!("more than {MAX_VALUES} values")));
        }
        values.push(v);
    }
    if values.is_empty() {
        bail!("{}: no values", path.display());
    }
    Ok(Series { column, values })
}

/// A value model's normalisation and head.
pub fn head(model: &Rnn<'_>) -> Result<(f64, f64, Head)> {
    match (model.config().input, model.head()) {
        (RnnInput::Value { mean, std, .. }, Some(h)) => Ok((mean as f64, std as f64, h)),
        _ => bail!("this recurrent model reads tokens; score, next and generate take text"),
    }
}

/// The log density (nats) of every value given the ones before it, from the zero state.
pub fn score(session: &mut RnnSession<'_>, values: &[f64]) -> Result<Vec<f64>> {
    let (mean, std, head) = head(session.model())?;
    session.reset();
    let mut params = session.start_value()?.to_vec();
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        out.push(head.log_density(&params, ((v - mean) / std) as f32) - std.ln());
        if i + 1 < values.len() {
            params.copy_from_slice(session.step_value(v as f32)?);
        }
    }
    Ok(out)
}

/// The mixture over the value after `values` (all of them fed), in the data's units:
/// (weight, mean, standard deviation) per component.
pub fn next_mixture(session: &mut RnnSession<'_>, values: &[f64]) -> Result<Vec<(f64, f64, f64)>> {
    let (mean, std, head) = head(session.model())?;
    let Head::GaussianMixture { k, .. } = head else { unreachable!("a value model's head") };
    session.reset();
    let mut params = session.start_value()?;
    for &v in values {
        params = session.step_value(v as f32)?;
    }
    let (logits, rest) = params.split_at(k);
    let lse = logits.iter().map(|&l| l as f64).fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|&l| (l as f64 - lse).exp()).sum();
    Ok((0..k)
        .map(|j| {
            let w = (logits[j] as f64 - lse).exp() / sum;
            (w, mean + std * rest[j] as f64, std * (rest[k + j] as f64).exp())
        })
        .collect())
}

/// `samples` paths of `n` values continued from `history` (all of it conditions the
/// first), drawn with one generator seeded by `seed`: `paths[s][t]`.
pub fn forecast(
    session: &mut RnnSession<'_>,
    history: &[f64],
    n: usize,
    samples: usize,
    seed: u64,
) -> Result<Vec<Vec<f64>>> {
    let (mean, std, head) = head(session.model())?;
    session.reset();
    let mut p0 = session.start_value()?.to_vec();
    for &v in history {
        p0.copy_from_slice(session.step_value(v as f32)?);
    }
    let s0 = session.state().to_vec();
    let mut rng = Pcg32::seed_from_u64(seed);
    let mut paths = Vec::with_capacity(samples);
    for _ in 0..samples {
        session.set_state(&s0)?;
        let mut params = p0.clone();
        let mut path = Vec::with_capacity(n);
        for t in 0..n {
            let x = mean + std * head.sample_value(&params, 1.0, &mut rng) as f64;
            path.push(x);
            if t + 1 < n {
                params.copy_from_slice(session.step_value(x as f32)?);
            }
        }
        paths.push(path);
    }
    Ok(paths)
}

/// The `q` quantile (0..=1) of `sorted` (not empty), linearly interpolated.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The quantiles the forecast reports, and the fan chart draws (outer band 5–95 %, inner
/// 25–75 %, the median).
pub const QUANTILES: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];

/// Per step `t`: the [`QUANTILES`] of the paths' values, and their mean.
pub fn bands(paths: &[Vec<f64>]) -> (Vec<[f64; 5]>, Vec<f64>) {
    let n = paths.first().map_or(0, Vec::len);
    let mut qs = Vec::with_capacity(n);
    let mut means = Vec::with_capacity(n);
    for t in 0..n {
        let mut col: Vec<f64> = paths.iter().map(|p| p[t]).collect();
        col.sort_by(f64::total_cmp);
        qs.push(QUANTILES.map(|q| quantile(&col, q)));
        means.push(col.iter().sum::<f64>() / col.len() as f64);
    }
    (qs, means)
}

/// A fan chart (`width` x `height` RGB): the last history values as a black line, the
/// forecast's 5–95 % and 25–75 % bands filled in two blues, its median as a dark line.
pub fn fan_chart(history: &[f64], qs: &[[f64; 5]], width: usize, height: usize) -> Vec<u8> {
    let mut img = vec![255u8; width * height * 3];
    let shown = &history[history.len().saturating_sub((4 * qs.len()).max(48))..];
    let total = shown.len() + qs.len();
    let all = shown.iter().copied().chain(qs.iter().flat_map(|q| [q[0], q[4]]));
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if hi > lo { (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)) } else { (lo - 1.0, hi + 1.0) };
    let (margin, w, h) = (8.0, width as f64 - 16.0, height as f64 - 16.0);
    let px = |i: f64| margin + w * i / (total.max(2) - 1) as f64;
    let py = |v: f64| margin + h * (hi - v) / (hi - lo);
    let mut put = |x: i64, y: i64, c: [u8; 3]| {
        if (0..width as i64).contains(&x) && (0..height as i64).contains(&y) {
            let o = (y as usize * width + x as usize) * 3;
            img[o..o + 3].copy_from_slice(&c);
        }
    };
    // Bands: per pixel column of the forecast, the interpolated quantiles (the first
    // forecast step joins the last history value).
    let start = shown.len().saturating_sub(1) as f64;
    let at = |t: f64, j: usize| -> f64 {
        let value = |i: usize| if i == 0 { *shown.last().unwrap_or(&qs[0][2]) } else { qs[i - 1][j] };
        let (i, f) = (t.floor() as usize, t.fract());
        if i + 1 > qs.len() {
            value(qs.len())
        } else {
            value(i) + (value(i + 1) - value(i)) * f
        }
    };
    let (x0, x1) = (px(start).round() as i64, px((total - 1) as f64).round() as i64);
    for x in x0..=x1 {
        let t = (x as f64 - margin) / w * (total.max(2) - 1) as f64 - start;
        let t = t.clamp(0.0, qs.len() as f64);
        for (a, b, c) in [(0, 4, [200, 220, 250]), (1, 3, [130, 170, 235])] {
            let (ya, yb) = (py(at(t, b)).round() as i64, py(at(t, a)).round() as i64);
            for y in ya..=yb {
                put(x, y, c);
            }
        }
    }
    let mut line = |pts: &[(f64, f64)], c: [u8; 3]| {
        for pair in pts.windows(2) {
            let ((xa, ya), (xb, yb)) = (pair[0], pair[1]);
            let steps = ((xb - xa).abs().max((yb - ya).abs()).ceil() as usize).max(1);
            for s in 0..=steps {
                let f = s as f64 / steps as f64;
                let (x, y) = ((xa + (xb - xa) * f).round() as i64, (ya + (yb - ya) * f).round() as i64);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    put(x + dx, y + dy, c);
                }
            }
        }
    };
    let hist: Vec<(f64, f64)> = shown.iter().enumerate().map(|(i, &v)| (px(i as f64), py(v))).collect();
    line(&hist, [0, 0, 0]);
    let median: Vec<(f64, f64)> = hist
        .last()
        .copied()
        .into_iter()
        .chain(qs.iter().enumerate().map(|(t, q)| (px(start + 1.0 + t as f64), py(q[2]))))
        .collect();
    line(&median, [20, 50, 140]);
    img
}
