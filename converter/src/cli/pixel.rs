//! `arq score`, `sample`, `impute` and `bench` on PixelCNN models: arguments in, the
//! library's results printed and written.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use arq::models::pixelcnn::synth::{synthetic, SynthSpec};
use arq::PixelCnn;
use arq_convert::aligned::ModelBytes;
use arq_convert::images::{self, Images};
use arq_convert::pixel::{self, ImageModel, ImputeMethod};
use serde_json::json;

use super::median;

pub fn score<M: ImageModel>(model: &M, input: &Path, json_out: bool, per_image: bool, threads: usize) -> Result<()> {
    let c = model.shape();
    if !c.head.is_discrete() {
        bail!("this model's {} head takes continuous values; image files hold levels", c.head.name());
    }
    let imgs = images::read_levels(input, c.levels)?;
    let nll = pixel::score_images(model, &imgs, threads)?;
    let total: f64 = nll.iter().sum();
    let dims = c.pixels();
    let per = total / imgs.n as f64;
    let bpd = per / dims as f64 / std::f64::consts::LN_2;
    if json_out {
        let mut v = json!({
            "images": imgs.n, "nll_nats": total, "nats_per_image": per, "bits_per_dim": bpd,
            "dims_per_image": dims, "height": c.height, "width": c.width, "levels": c.levels,
        });
        if per_image {
            v["per_image"] = json!(nll);
        }
        println!("{v}");
    } else {
        if per_image {
            for (i, v) in nll.iter().enumerate() {
                println!("{i:>6} {v:>12.4}");
            }
        }
        println!(
            "{} images of {}x{}: NLL {total:.3} nats, {per:.4} nats/image, {bpd:.5} bits/dim",
            imgs.n, c.height, c.width
        );
    }
    Ok(())
}

pub struct SampleArgs<'p> {
    pub n: usize,
    pub seed: u64,
    pub temp: f32,
    pub output: &'p Path,
    pub cols: Option<usize>,
    pub scale: Option<usize>,
    pub npy: Option<&'p Path>,
    pub ascii: bool,
}

/// The scale that makes a tile at least 32 pixels on its short side.
fn default_scale(height: usize, width: usize) -> usize {
    (32 / height.min(width).max(1)).max(1)
}

pub fn sample<M: ImageModel>(model: &M, a: &SampleArgs<'_>) -> Result<()> {
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    if !(a.temp >= 0.0 && a.temp.is_finite()) {
        bail!("--temp must be a finite number >= 0");
    }
    for out in [Some(a.output), a.npy].into_iter().flatten() {
        arq_convert::input::not_special(out)?;
    }
    let c = model.shape();
    let cols = a.cols.unwrap_or_else(|| (a.n as f64).sqrt().ceil() as usize);
    let scale = a.scale.unwrap_or(default_scale(c.height, c.width));
    check_grid(a.n, cols, scale, (c.height, c.width))?;
    let t0 = Instant::now();
    let imgs = pixel::sample_images(model, a.n, a.seed, a.temp)?;
    let secs = t0.elapsed().as_secs_f64();
    let grey = Images { data: imgs.data.iter().map(|&v| images::level_to_gray(v, c.levels)).collect(), ..imgs.clone() };
    let (gh, gw, px) = images::grid(&grey, cols, scale, 1);
    images::write_png_gray(a.output, gh, gw, &px)?;
    if let Some(npy) = a.npy {
        images::write_npy_u8(npy, &imgs)?;
    }
    if a.ascii {
        print!("{}", ascii_art(&imgs, c.levels));
    }
    eprintln!(
        "wrote {} ({} images of {}x{}, {gw}x{gh} grid) | {:.2} ms/image (cached), seed {}, temp {}",
        a.output.display(),
        a.n,
        c.height,
        c.width,
        secs * 1e3 / a.n as f64,
        a.seed,
        a.temp
    );
    Ok(())
}

/// The longest side of a `sample` grid: 16384 pixels, a 256 MiB grey image, which PNG
/// viewers still open (and what `--scale` and `--cols` could otherwise push to 640 GB).
const MAX_GRID_SIDE: usize = 16384;

/// Refuses a grid (as [`images::grid`] lays it out, 1-pixel gaps) with a side above
/// [`MAX_GRID_SIDE`], before anything is sampled.
fn check_grid(n: usize, cols: usize, scale: usize, (height, width): (usize, usize)) -> Result<()> {
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let side =
        |count: usize, px: usize| px.checked_mul(scale.max(1))?.checked_add(1)?.checked_mul(count)?.checked_add(1);
    let (gh, gw) = (side(rows, height), side(cols, width));
    match (gh, gw) {
        (Some(gh), Some(gw)) if gh <= MAX_GRID_SIDE && gw <= MAX_GRID_SIDE => Ok(()),
        _ => bail!(
            "the grid of {n} images of {height}x{width} at scale {scale} in {cols} columns would be {}x{} pixels, \
             more than the cap of {MAX_GRID_SIDE} a side (lower --scale or -n, or set --cols)",
            gw.map_or("(overflow)".to_string(), |v| v.to_string()),
            gh.map_or("(overflow)".to_string(), |v| v.to_string()),
        ),
    }
}

/// Images as text, darkest to brightest ` .:-=+*#%@`, one blank line between images.
fn ascii_art(imgs: &Images, levels: usize) -> String {
    const RAMP: &[u8] = b" .:-=+*#%@";
    let mut s = String::new();
    for i in 0..imgs.n {
        for row in imgs.image(i).chunks(imgs.width) {
            for &v in row {
                let ch = RAMP[v as usize * (RAMP.len() - 1) / (levels - 1)] as char;
                s.push(ch);
                s.push(ch);
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

pub struct ImputeArgs<'p> {
    pub image: &'p Path,
    pub mask: &'p Path,
    pub output: &'p Path,
    pub particles: usize,
    pub seed: u64,
    pub temp: f32,
    pub json: bool,
}

pub fn impute<M: ImageModel>(model: &M, a: &ImputeArgs<'_>) -> Result<()> {
    let c = model.shape();
    if !c.head.is_discrete() {
        bail!("this model's {} head takes continuous values; imputation needs a discrete head", c.head.name());
    }
    if !(a.temp >= 0.0 && a.temp.is_finite()) {
        bail!("--temp must be a finite number >= 0");
    }
    arq_convert::input::not_special(a.output)?;
    let (h, w, grey) = images::read_png_gray(a.image)?;
    if (h, w) != (c.height, c.width) {
        bail!("{}: image is {h}x{w}, the model takes {}x{}", a.image.display(), c.height, c.width);
    }
    let (mh, mw, mask) = images::read_png_gray(a.mask)?;
    if (mh, mw) != (h, w) {
        bail!("{}: mask is {mh}x{mw}, the image is {h}x{w}", a.mask.display());
    }
    let levels: Vec<u8> = grey.iter().map(|&g| images::gray_to_level(g, c.levels)).collect();
    let missing: Vec<bool> = mask.iter().map(|&m| m >= 128).collect();
    let n_missing = missing.iter().filter(|&&m| m).count();
    let t0 = Instant::now();
    let (out, method) = pixel::impute(model, &levels, &missing, a.particles, a.seed, a.temp)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let px: Vec<u8> = out.iter().map(|&v| images::level_to_gray(v, c.levels)).collect();
    images::write_png_gray(a.output, h, w, &px)?;
    let (name, detail) = match method {
        ImputeMethod::Exact => ("exact", json!({})),
        ImputeMethod::Smc { particles, resamples, final_ess } => {
            ("smc", json!({"particles": particles, "resamples": resamples, "ess": final_ess}))
        }
    };
    if a.json {
        let mut v =
            json!({"method": name, "missing_pixels": n_missing, "output": a.output.display().to_string(), "ms": ms});
        if let Some(o) = detail.as_object() {
            for (k, x) in o {
                v[k] = x.clone();
            }
        }
        println!("{v}");
    } else {
        let how = match method {
            ImputeMethod::Exact => "exact sampling (every observed pixel precedes the missing ones)".to_string(),
            ImputeMethod::Smc { particles, resamples, final_ess } => format!(
                "sequential Monte Carlo: {particles} particles, {resamples} resamplings, final effective sample size {final_ess:.1}"
            ),
        };
        eprintln!("imputed {n_missing} pixels by {how}; wrote {} in {ms:.1} ms", a.output.display());
    }
    Ok(())
}

/// Parses `HxW` (e.g. `28x28`).
fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (h, w) = s.split_once(['x', 'X']).ok_or_else(|| anyhow!("--synthetic: expected HxW, e.g. 28x28"))?;
    let (h, w) = (h.trim().parse::<usize>(), w.trim().parse::<usize>());
    match (h, w) {
        (Ok(h), Ok(w)) if (1..=256).contains(&h) && (1..=256).contains(&w) => Ok((h, w)),
        _ => bail!("--synthetic: expected HxW with sides 1..=256, e.g. 28x28"),
    }
}

pub struct BenchArgs {
    pub reps: usize,
    pub naive_reps: usize,
    pub json: bool,
}

/// `arq bench --synthetic HxW`: the digits models' geometry with random q8 weights.
pub fn bench_synthetic(size: &str, a: &BenchArgs) -> Result<()> {
    let (h, w) = parse_size(size)?;
    let bytes = ModelBytes::copy_of(&synthetic(&SynthSpec::digits_like(h, w, true)));
    let model = PixelCnn::load(bytes.bytes())?;
    bench(&model, &format!("synthetic {h}x{w} (random q8 weights)"), a)
}

/// `arq bench` on a PixelCNN: time per sampled image, cached generator vs the naive
/// full forward pass per pixel; medians over `reps` after a warm-up.
pub fn bench<M: ImageModel>(model: &M, label: &str, a: &BenchArgs) -> Result<()> {
    let (reps, naive_reps, json_out) = (a.reps, a.naive_reps, a.json);
    if reps == 0 || naive_reps == 0 {
        bail!("--reps must be at least 1");
    }
    let c = model.shape();
    let mut cached = Vec::new();
    for rep in 0..=reps {
        let t = Instant::now();
        let img = pixel::sample_images(model, 1, rep as u64, 1.0)?;
        std::hint::black_box(&img);
        if rep > 0 {
            cached.push(t.elapsed().as_secs_f64());
        }
    }
    let mut naive = Vec::new();
    for rep in 0..naive_reps {
        let t = Instant::now();
        let img = pixel::sample_naive(model, rep as u64, 1.0)?;
        naive.push(t.elapsed().as_secs_f64());
        // Same seed, same image: the two samplers agree exactly.
        let want = pixel::sample_images(model, 1, rep as u64, 1.0)?;
        if img != want.data {
            bail!("internal error: naive and cached sampling disagree for seed {rep}");
        }
    }
    let (cm, nm) = (median(cached), median(naive));
    let arena = model.arena_bytes(false)?;
    let arena_full = model.arena_bytes(true)?;
    if json_out {
        println!(
            "{}",
            json!({
                "model": label, "height": c.height, "width": c.width, "kernels": model.kernels_name(),
                "cached_ms_per_image": cm * 1e3, "naive_ms_per_image": nm * 1e3, "speedup": nm / cm,
                "reps": reps, "naive_reps": naive_reps, "arena_bytes": arena, "arena_bytes_full_forward": arena_full,
            })
        );
    } else {
        println!(
            "{label}: {}x{} | cached {:.3} ms/image | naive {:.1} ms/image | speedup {:.1}x | arena {arena} bytes (naive {arena_full}) | kernels {}",
            c.height,
            c.width,
            cm * 1e3,
            nm * 1e3,
            nm / cm,
            model.kernels_name()
        );
    }
    Ok(())
}
