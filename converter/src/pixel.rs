//! The image-model jobs behind `arq score`, `sample`, `impute` and `bench` for PixelCNN
//! files: exact likelihoods over image sets, seeded sampling, imputation (exact, or
//! sequential Monte Carlo when observed pixels follow missing ones), and the naive
//! one-forward-pass-per-pixel sampler the cached one is measured against. Both runtimes
//! of pixel models, the gated `pixelcnn` and the `pixelgraph`, serve them through
//! [`ImageModel`].

use anyhow::{bail, Result};
use arq::kernels::Kernels;
use arq::models::pixelcnn::heads::Head;
use arq::{GraphSession, GraphSessionConfig, PixelCnn, PixelGraph, PixelSession, PixelSessionConfig};
use rand_core::SeedableRng;
use rand_pcg::Pcg32;

use crate::images::Images;

/// What the jobs need to know of a pixel model.
#[derive(Clone, Copy, Debug)]
pub struct ImageShape {
    pub height: usize,
    pub width: usize,
    pub levels: usize,
    pub head: Head,
    /// Head parameters per pixel.
    pub n_params: usize,
}

impl ImageShape {
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }
}

/// A pixel model, whichever runtime holds it.
pub trait ImageModel: Sync {
    type Session<'s>: ImageSession
    where
        Self: 's;
    fn shape(&self) -> ImageShape;
    /// The arena bytes of one session (with the whole-image buffers: `full_forward`).
    fn arena_bytes(&self, full_forward: bool) -> Result<usize>;
    fn session<'s>(&'s self, arena: &'s mut [u8], full_forward: bool) -> Result<Self::Session<'s>>;
    /// Images [`ImageSession::nll_batch`] takes at once in a session of
    /// [`scoring_session`](Self::scoring_session) (1: it scores one at a time).
    fn scoring_batch(&self) -> usize {
        1
    }
    /// The arena bytes of a scoring session.
    fn scoring_arena_bytes(&self) -> Result<usize> {
        self.arena_bytes(false)
    }
    /// A session for [`ImageSession::nll_batch`].
    fn scoring_session<'s>(&'s self, arena: &'s mut [u8]) -> Result<Self::Session<'s>> {
        self.session(arena, false)
    }
    /// The kernel tier it runs on.
    fn kernels(&self) -> &'static Kernels;
    /// Its name, as `ARQ_MAX_ISA` spells it.
    fn kernels_name(&self) -> &'static str {
        self.kernels().name
    }
}

/// One image being scored or generated.
pub trait ImageSession {
    fn nll(&mut self, image: &[u8]) -> Result<f64>;
    /// The NLL of each of `images` (whole images one after another, at most the model's
    /// `scoring_batch`) into `out`: the values of [`nll`](Self::nll).
    fn nll_batch(&mut self, images: &[u8], out: &mut [f64]) -> Result<()> {
        let per = images.len() / out.len().max(1);
        for (o, im) in out.iter_mut().zip(images.chunks_exact(per.max(1))) {
            *o = self.nll(im)?;
        }
        Ok(())
    }
    fn sample(&mut self, out: &mut [u8], start: usize, temp: f32, rng: &mut Pcg32) -> Result<()>;
    fn log_probs(&mut self) -> Result<&[f64]>;
    fn push_level(&mut self, level: usize) -> Result<()>;
    fn copy_state_from(&mut self, other: &Self);
    /// The full forward pass over an image of levels: head parameters `(pixels, P)`.
    fn full_params(&mut self, image: &[u8]) -> Result<&[f32]>;
}

impl<'a> ImageModel for PixelCnn<'a> {
    type Session<'s>
        = PixelSession<'s>
    where
        Self: 's;
    fn shape(&self) -> ImageShape {
        let c = self.config();
        ImageShape { height: c.height, width: c.width, levels: c.levels, head: c.head, n_params: c.n_params() }
    }
    fn arena_bytes(&self, full_forward: bool) -> Result<usize> {
        Ok(self.memory_plan(&PixelSessionConfig { full_forward })?)
    }
    fn session<'s>(&'s self, arena: &'s mut [u8], full_forward: bool) -> Result<PixelSession<'s>> {
        Ok(PixelSession::new(self, arena, PixelSessionConfig { full_forward })?)
    }
    fn scoring_arena_bytes(&self) -> Result<usize> {
        self.arena_bytes(true)
    }
    fn scoring_session<'s>(&'s self, arena: &'s mut [u8]) -> Result<PixelSession<'s>> {
        self.session(arena, true)
    }
    fn kernels(&self) -> &'static Kernels {
        PixelCnn::kernels(self)
    }
}

impl ImageSession for PixelSession<'_> {
    fn nll(&mut self, image: &[u8]) -> Result<f64> {
        Ok(PixelSession::nll(self, image)?)
    }
    /// One full forward pass per image (a matrix product over all its pixels per layer,
    /// not one pixel at a time); the same sum, in the same order, as `nll`.
    fn nll_batch(&mut self, images: &[u8], out: &mut [f64]) -> Result<()> {
        let c = *self.model().config();
        let (levels, p) = (c.levels, c.n_params());
        let mut scratch = vec![0.0; levels];
        let k = self.model().kernels();
        for (o, im) in out.iter_mut().zip(images.chunks_exact(c.pixels())) {
            let params = self.full_params(im)?;
            *o = im
                .iter()
                .zip(params.chunks_exact(p))
                .fold(0.0, |acc, (&v, x)| acc - c.head.log_prob(k, levels, x, v as usize, &mut scratch));
        }
        Ok(())
    }
    fn sample(&mut self, out: &mut [u8], start: usize, temp: f32, rng: &mut Pcg32) -> Result<()> {
        Ok(PixelSession::sample(self, out, start, temp, rng)?)
    }
    fn log_probs(&mut self) -> Result<&[f64]> {
        Ok(PixelSession::log_probs(self)?)
    }
    fn push_level(&mut self, level: usize) -> Result<()> {
        Ok(PixelSession::push_level(self, level)?)
    }
    fn copy_state_from(&mut self, other: &Self) {
        PixelSession::copy_state_from(self, other)
    }
    fn full_params(&mut self, image: &[u8]) -> Result<&[f32]> {
        let m = self.model();
        let x: Vec<f32> = image.iter().map(|&v| m.value_of_level(v as usize)).collect();
        Ok(self.forward_full(&x)?)
    }
}

impl<'a> ImageModel for PixelGraph<'a> {
    type Session<'s>
        = GraphSession<'s>
    where
        Self: 's;
    fn shape(&self) -> ImageShape {
        let c = self.config();
        ImageShape { height: c.height, width: c.width, levels: c.levels, head: c.head, n_params: c.n_params() }
    }
    fn arena_bytes(&self, full_forward: bool) -> Result<usize> {
        Ok(self.memory_plan(&GraphSessionConfig { full_forward, batch: 1 })?)
    }
    fn session<'s>(&'s self, arena: &'s mut [u8], full_forward: bool) -> Result<GraphSession<'s>> {
        Ok(GraphSession::new(self, arena, GraphSessionConfig { full_forward, batch: 1 })?)
    }
    fn scoring_batch(&self) -> usize {
        self.scoring_images()
    }
    fn scoring_arena_bytes(&self) -> Result<usize> {
        Ok(self.memory_plan(&GraphSessionConfig::full(self.scoring_batch()))?)
    }
    fn scoring_session<'s>(&'s self, arena: &'s mut [u8]) -> Result<GraphSession<'s>> {
        Ok(GraphSession::new(self, arena, GraphSessionConfig::full(self.scoring_batch()))?)
    }
    fn kernels(&self) -> &'static Kernels {
        PixelGraph::kernels(self)
    }
}

impl ImageSession for GraphSession<'_> {
    fn nll(&mut self, image: &[u8]) -> Result<f64> {
        Ok(GraphSession::nll(self, image)?)
    }
    fn nll_batch(&mut self, images: &[u8], out: &mut [f64]) -> Result<()> {
        Ok(GraphSession::nll_batch(self, images, out)?)
    }
    fn sample(&mut self, out: &mut [u8], start: usize, temp: f32, rng: &mut Pcg32) -> Result<()> {
        Ok(GraphSession::sample(self, out, start, temp, rng)?)
    }
    fn log_probs(&mut self) -> Result<&[f64]> {
        Ok(GraphSession::log_probs(self)?)
    }
    fn push_level(&mut self, level: usize) -> Result<()> {
        Ok(GraphSession::push_level(self, level)?)
    }
    fn copy_state_from(&mut self, other: &Self) {
        GraphSession::copy_state_from(self, other)
    }
    fn full_params(&mut self, image: &[u8]) -> Result<&[f32]> {
        Ok(self.forward_full(image)?)
    }
}

/// An arena sized for one session of `model`.
pub fn arena<M: ImageModel>(model: &M, full_forward: bool) -> Result<Vec<u8>> {
    Ok(vec![0u8; model.arena_bytes(full_forward)?])
}

/// Checks that `images` fit the model: size and level range.
pub fn check_images<M: ImageModel>(model: &M, images: &Images, what: &str) -> Result<()> {
    let c = model.shape();
    if !c.head.is_discrete() {
        bail!("this model's {} head takes continuous values; image files hold levels", c.head.name());
    }
    if (images.height, images.width) != (c.height, c.width) {
        bail!("{what}: images are {}x{}, the model takes {}x{}", images.height, images.width, c.height, c.width);
    }
    for i in 0..images.n {
        if let Some(p) = images.image(i).iter().position(|&v| v as usize >= c.levels) {
            bail!(
                "{what}: image {i}, pixel ({}, {}) has value {}, outside the model's levels 0..{}",
                p / c.width,
                p % c.width,
                images.image(i)[p],
                c.levels - 1
            );
        }
    }
    Ok(())
}

/// Negative log-likelihood of each image, in nats, split over `threads` threads.
pub fn score_images<M: ImageModel>(model: &M, images: &Images, threads: usize) -> Result<Vec<f64>> {
    check_images(model, images, "input")?;
    let c = model.shape();
    let mut nll = vec![0.0; images.n];
    let per = images.n.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| -> Result<()> {
        let jobs: Vec<_> = nll
            .chunks_mut(per)
            .enumerate()
            .map(|(t, out)| {
                s.spawn(move || -> Result<()> {
                    let mut mem = vec![0u8; model.scoring_arena_bytes()?];
                    let mut s = model.scoring_session(&mut mem)?;
                    let batch = model.scoring_batch().max(1);
                    let first = t * per * c.pixels();
                    let mine = &images.data[first..first + out.len() * c.pixels()];
                    for (o, im) in out.chunks_mut(batch).zip(mine.chunks(batch * c.pixels())) {
                        s.nll_batch(im, o)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for j in jobs {
            j.join().map_err(|_| anyhow::anyhow!("a scoring thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(nll)
}

/// `n` images sampled with the cached generator; image `i` uses the seed `seed + i`,
/// so any one image can be reproduced alone.
pub fn sample_images<M: ImageModel>(model: &M, n: usize, seed: u64, temp: f32) -> Result<Images> {
    check_discrete(model)?;
    let c = model.shape();
    let mut mem = arena(model, false)?;
    let mut s = model.session(&mut mem, false)?;
    let mut data = vec![0u8; n * c.pixels()];
    for (i, img) in data.chunks_exact_mut(c.pixels()).enumerate() {
        let mut rng = Pcg32::seed_from_u64(seed.wrapping_add(i as u64));
        s.sample(img, 0, temp, &mut rng)?;
    }
    Ok(Images { n, height: c.height, width: c.width, data })
}

fn check_discrete<M: ImageModel>(model: &M) -> Result<()> {
    let c = model.shape();
    if !c.head.is_discrete() {
        bail!("this model's {} head takes continuous values; sampling levels needs a discrete head", c.head.name());
    }
    Ok(())
}

/// One image sampled the naive way: the whole network over the whole image for every
/// pixel. Same random stream as [`sample_images`] for the same seed, and the same
/// image, since both paths give bit-identical parameters.
pub fn sample_naive<M: ImageModel>(model: &M, seed: u64, temp: f32) -> Result<Vec<u8>> {
    check_discrete(model)?;
    let c = model.shape();
    let mut mem = arena(model, true)?;
    let mut s = model.session(&mut mem, true)?;
    let mut rng = Pcg32::seed_from_u64(seed);
    let (np, levels) = (c.n_params, c.levels);
    let mut out = vec![0u8; c.pixels()];
    let mut lp = vec![0.0f64; levels];
    for i in 0..c.pixels() {
        let params = s.full_params(&out)?;
        c.head.log_probs(model.kernels(), levels, &params[i * np..(i + 1) * np], &mut lp);
        let level = arq::models::pixelcnn::heads::sample_log_weights(&lp, temp, &mut rng);
        out[i] = level as u8;
    }
    Ok(out)
}

/// How an imputation was done.
#[derive(Clone, Debug, PartialEq)]
pub enum ImputeMethod {
    /// Every observed pixel precedes every missing one: the missing pixels were sampled
    /// exactly from `p(missing | observed)`.
    Exact,
    /// Observed pixels follow missing ones: sequential Monte Carlo with `particles`
    /// particles, weighted by the likelihood of each later observed pixel.
    Smc { particles: usize, resamples: usize, final_ess: f64 },
}

/// Fills the pixels of `image` where `missing` is true by sampling from the model
/// conditioned on the others, with the random stream of `seed`.
///
/// Sequential Monte Carlo (when needed): particles advance pixel by pixel in raster
/// order; a missing pixel is sampled from each particle's conditional, an observed one
/// is clamped and multiplies the particle's weight by its probability. When the
/// effective sample size `(sum w)^2 / sum w^2` drops below half the particles, they are
/// resampled (systematic resampling). The result is one particle drawn by weight.
/// With one particle this is clamped sampling (observed pixels clamped, never weighed).
pub fn impute<M: ImageModel>(
    model: &M,
    image: &[u8],
    missing: &[bool],
    particles: usize,
    seed: u64,
    temp: f32,
) -> Result<(Vec<u8>, ImputeMethod)> {
    check_discrete(model)?;
    let c = model.shape();
    if image.len() != c.pixels() || missing.len() != c.pixels() {
        bail!("image and mask must have the model's {}x{} pixels", c.height, c.width);
    }
    if let Some(p) = image.iter().zip(missing).position(|(&v, &m)| !m && v as usize >= c.levels) {
        bail!(
            "pixel ({}, {}) has value {}, outside the model's levels 0..{}",
            p / c.width,
            p % c.width,
            image[p],
            c.levels - 1
        );
    }
    if particles == 0 {
        bail!("--particles must be at least 1");
    }
    let mut rng = Pcg32::seed_from_u64(seed);
    let first_missing = missing.iter().position(|&m| m);
    let last_observed = missing.iter().rposition(|&m| !m);
    let exact = match (first_missing, last_observed) {
        (None, _) => return Ok((image.to_vec(), ImputeMethod::Exact)),
        (Some(_), None) => true,
        (Some(f), Some(l)) => l < f,
    };
    if exact {
        let mut mem = arena(model, false)?;
        let mut s = model.session(&mut mem, false)?;
        let mut out = image.to_vec();
        s.sample(&mut out, first_missing.unwrap_or(0), temp, &mut rng)?;
        return Ok((out, ImputeMethod::Exact));
    }

    let n = particles;
    // Two sets of particles: resampling copies the survivors from one into the other.
    let mut mems = (0..2 * n).map(|_| arena(model, false)).collect::<Result<Vec<_>>>()?;
    let mut all = mems.iter_mut().map(|m| model.session(m, false)).collect::<Result<Vec<_>>>()?;
    let mut spare = all.split_off(n);
    let mut cur = all;
    let mut imgs = vec![image.to_vec(); n];
    let mut logw = vec![0.0f64; n];
    let mut resamples = 0;
    for i in 0..c.pixels() {
        for (p, s) in cur.iter_mut().enumerate() {
            let lp = s.log_probs()?;
            let level = if missing[i] {
                arq::models::pixelcnn::heads::sample_log_weights(lp, temp, &mut rng)
            } else {
                logw[p] += lp[image[i] as usize];
                image[i] as usize
            };
            imgs[p][i] = level as u8;
            s.push_level(level)?;
        }
        if !missing[i] && n > 1 && ess(&logw) < n as f64 / 2.0 {
            let ancestors = systematic_resample(&logw, &mut rng);
            for (dst, &a) in spare.iter_mut().zip(&ancestors) {
                dst.copy_state_from(&cur[a]);
            }
            std::mem::swap(&mut cur, &mut spare);
            imgs = ancestors.iter().map(|&a| imgs[a].clone()).collect();
            logw.fill(0.0);
            resamples += 1;
        }
    }
    let final_ess = ess(&logw);
    let pick = arq::models::pixelcnn::heads::sample_log_weights(&logw, 1.0, &mut rng);
    Ok((imgs.swap_remove(pick), ImputeMethod::Smc { particles: n, resamples, final_ess }))
}

/// Effective sample size of log-weights.
pub fn ess(logw: &[f64]) -> f64 {
    let max = logw.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let (s, s2) = logw.iter().fold((0.0, 0.0), |(s, s2), &v| {
        let w = (v - max).exp();
        (s + w, s2 + w * w)
    });
    s * s / s2
}

/// Ancestor indices by systematic resampling: one uniform offset, `n` evenly spaced
/// points through the cumulative normalized weights.
fn systematic_resample(logw: &[f64], rng: &mut Pcg32) -> Vec<usize> {
    use rand_core::RngCore;
    let n = logw.len();
    let max = logw.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let w: Vec<f64> = logw.iter().map(|&v| (v - max).exp()).collect();
    let total: f64 = w.iter().sum();
    let u0 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(n);
    let (mut j, mut cum) = (0, w[0] / total);
    for k in 0..n {
        let u = (u0 + k as f64) / n as f64;
        while u > cum && j + 1 < n {
            j += 1;
            cum += w[j] / total;
        }
        out.push(j);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ess_of_equal_and_degenerate_weights() {
        assert!((ess(&[0.0; 8]) - 8.0).abs() < 1e-12);
        assert!((ess(&[0.0, -1000.0, -1000.0]) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn systematic_resampling_follows_the_weights() {
        let mut rng = Pcg32::seed_from_u64(0);
        let logw = [0.5f64.ln(), 0.25f64.ln(), 0.25f64.ln(), f64::NEG_INFINITY];
        let a = systematic_resample(&logw, &mut rng);
        assert_eq!(a.len(), 4);
        assert_eq!(a.iter().filter(|&&i| i == 0).count(), 2);
        assert!(!a.contains(&3));
    }
}
