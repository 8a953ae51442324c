//! Running a [`PixelGraph`]: one image scored or generated, all state in the caller's
//! arena. Both paths evaluate a node at a run of positions with the same code
//! ([`GraphSession::eval_node`]), the cached one a row or a pixel at a time from ring
//! buffers, the full one over the whole image, so their outputs are bit-identical.

use rand_core::RngCore;

use super::{Op, PixelGraph, Schedule, MAX_TENSORS};
use crate::arena::{Arena, Layout};
use crate::error::Error;
use crate::math::Unary;
use crate::models::pixelcnn::heads;
use crate::quant::{BlockQ8, QK8};

/// The activation bytes a scoring batch aims at (see [`PixelGraph::scoring_images`]).
pub const SCORING_BYTES: usize = 1 << 20;
/// The most images one full forward pass takes.
pub const MAX_BATCH: usize = 256;

/// Settings that size a [`GraphSession`]'s arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphSessionConfig {
    /// Also carve the whole-image buffers of [`GraphSession::forward_full`].
    pub full_forward: bool,
    /// Images one full forward pass takes at once ([`GraphSession::forward_batch`]; 0
    /// counts as 1). Scoring many images goes faster in batches: every convolution is
    /// then one matrix product over all their positions.
    pub batch: usize,
}

impl GraphSessionConfig {
    /// The full forward over up to `batch` images at once.
    pub fn full(batch: usize) -> Self {
        GraphSessionConfig { full_forward: true, batch }
    }

    fn images(&self) -> usize {
        self.batch.max(1)
    }
}

/// Where each tensor lives in a store: its first value, and the rows it keeps (`height`
/// times the batch's images for the whole-image store, image after image; fewer for a
/// ring, row `r` in slot `r % rows`). A row holds `width` pixels of `channels` values.
#[derive(Clone, Copy)]
struct Store {
    off: [usize; MAX_TENSORS],
    rows: [usize; MAX_TENSORS],
    len: usize,
}

impl Store {
    /// `images > 0`: every tensor keeps that many whole images; `0`: each its ring.
    fn plan(m: &PixelGraph<'_>, images: usize) -> Option<Store> {
        let c = m.config();
        let mut s = Store { off: [0; MAX_TENSORS], rows: [0; MAX_TENSORS], len: 0 };
        let whole = c.height.checked_mul(images)?;
        for t in 0..=c.n_nodes {
            let info = m.tensor(t);
            let rows = if images > 0 { whole } else { info.ring_rows.min(c.height) };
            s.off[t] = s.len;
            s.rows[t] = rows;
            s.len = s.len.checked_add(rows.checked_mul(c.width)?.checked_mul(info.channels)?)?;
        }
        Some(s)
    }

    /// Index of pixel `p`'s first value of tensor `t` (`ch` channels); in the whole-image
    /// store `p` counts on through the batch's images.
    fn at(&self, t: usize, p: usize, width: usize, ch: usize) -> usize {
        self.row_at(t, p / width, width, ch) + (p % width) * ch
    }

    /// Index of row `r`'s first value of tensor `t`.
    #[inline]
    fn row_at(&self, t: usize, r: usize, width: usize, ch: usize) -> usize {
        // The whole-image store holds every row it is asked for: no division there.
        let slot = if r < self.rows[t] { r } else { r % self.rows[t] };
        self.off[t] + slot * width * ch
    }
}

/// One image being scored or generated.
pub struct GraphSession<'a> {
    model: &'a PixelGraph<'a>,
    /// Every tensor's ring of rows (cached generation).
    cache: &'a mut [f32],
    cache_plan: Store,
    /// Every tensor over the whole image (`full_forward` only).
    full: &'a mut [f32],
    full_plan: Store,
    /// Gathered taps of a run of positions, `(positions, cols)`, and its q8 copy.
    patch: &'a mut [f32],
    patchq: &'a mut [BlockQ8],
    logp: &'a mut [f64],
    /// Images the full forward takes at once (0: made without it).
    batch: usize,
    /// The next pixel (raster index), whether its outputs are computed, and how many
    /// rows have had their row tensors computed.
    pos: usize,
    ready: bool,
    rows_done: usize,
}

impl<'a> PixelGraph<'a> {
    /// The exact arena size, in bytes, that [`GraphSession::new`] needs.
    pub fn memory_plan(&self, s: &GraphSessionConfig) -> Result<usize, Error> {
        self.layout(s).map(|l| l.bytes()).ok_or(Error::BadConfig("arena size overflows"))
    }

    /// The arena's buffers, in carving order, and the two stores' plans.
    fn layout(&self, s: &GraphSessionConfig) -> Option<Layout> {
        let (cache, full) = self.stores(s)?;
        let positions = self.patch_positions(s)?;
        let cols = self.max_cols();
        Layout::new()
            .then::<f32>(cache.len)?
            .then::<f32>(full.len)?
            .then::<f32>(positions.checked_mul(cols)?)?
            .then::<BlockQ8>(positions.checked_mul(cols / QK8)?)?
            .then::<f64>(self.config().levels)
    }

    /// Images a scoring session takes at once: as many as keep one batch's activations
    /// and gathered taps within [`SCORING_BYTES`], at least 1, at most [`MAX_BATCH`].
    pub fn scoring_images(&self) -> usize {
        let per_image = Store::plan(self, 1)
            .and_then(|s| s.len.checked_add(self.config().pixels().checked_mul(self.max_cols())?))
            .and_then(|n| n.checked_mul(4));
        match per_image {
            Some(b) if b > 0 => (SCORING_BYTES / b).clamp(1, MAX_BATCH),
            _ => 1,
        }
    }

    fn stores(&self, s: &GraphSessionConfig) -> Option<(Store, Store)> {
        let cache = Store::plan(self, 0)?;
        let mut full = Store::plan(self, s.images())?;
        if !s.full_forward {
            full.len = 0;
        }
        Some((cache, full))
    }

    /// The most positions one convolution gathers at once: a row, or the batch's images.
    fn patch_positions(&self, s: &GraphSessionConfig) -> Option<usize> {
        let c = self.config();
        if s.full_forward {
            c.pixels().checked_mul(s.images())
        } else {
            Some(c.width)
        }
    }
}

impl<'a> GraphSession<'a> {
    pub fn new(model: &'a PixelGraph<'a>, arena: &'a mut [u8], s: GraphSessionConfig) -> Result<Self, Error> {
        let need = model.memory_plan(&s)?;
        let overflow = Error::BadConfig("arena size overflows");
        let (cache_plan, full_plan) = model.stores(&s).ok_or(overflow)?;
        let cols = model.max_cols();
        let positions = model.patch_positions(&s).ok_or(overflow)?;
        crate::trace::debug!("arq: pixelgraph session, arena {} of {} bytes", need, arena.len());
        let mut a = Arena::new(arena, need)?;
        Ok(GraphSession {
            model,
            cache: a.take(cache_plan.len)?,
            cache_plan,
            full: a.take(full_plan.len)?,
            full_plan,
            patch: a.take(positions * cols)?,
            patchq: a.take(positions * cols / QK8)?,
            logp: a.take(model.config().levels)?,
            batch: if s.full_forward { s.images() } else { 0 },
            pos: 0,
            ready: false,
            rows_done: 0,
        })
    }

    pub fn model(&self) -> &'a PixelGraph<'a> {
        self.model
    }

    /// Starts a new image.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.ready = false;
        self.rows_done = 0;
    }

    /// The raster index of the next pixel (`pixels()` once the image is complete).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The head parameters of `p(x_pos | x_<pos)` for the next pixel.
    pub fn params(&mut self) -> Result<&[f32], Error> {
        self.compute()?;
        let c = self.model.config();
        let (out, p) = (c.n_nodes, c.n_params());
        let i = self.cache_plan.at(out, self.pos, c.width, p);
        Ok(&self.cache[i..i + p])
    }

    /// `log p(x = level)` for every level of the next pixel.
    pub fn log_probs(&mut self) -> Result<&[f64], Error> {
        self.compute()?;
        let c = *self.model.config();
        let (out, p) = (c.n_nodes, c.n_params());
        let i = self.cache_plan.at(out, self.pos, c.width, p);
        c.head.log_probs(self.model.kernels(), c.levels, &self.cache[i..i + p], self.logp);
        Ok(self.logp)
    }

    /// Sets the next pixel to `level` and moves on.
    pub fn push_level(&mut self, level: usize) -> Result<(), Error> {
        let c = *self.model.config();
        if level >= c.levels {
            return Err(Error::BadInput("pixel level out of the model's range"));
        }
        self.compute()?;
        let i = self.cache_plan.at(0, self.pos, c.width, 1);
        self.cache[i] = self.model.value_of_level(level);
        self.pos += 1;
        self.ready = false;
        Ok(())
    }

    /// The negative log-likelihood of a whole image of levels, in nats.
    pub fn nll(&mut self, image: &[u8]) -> Result<f64, Error> {
        let c = *self.model.config();
        if image.len() != c.pixels() {
            return Err(Error::BadInput("image size differs from the model's"));
        }
        self.reset();
        let mut nll = 0.0;
        for &v in image {
            let v = v as usize;
            if v >= c.levels {
                return Err(Error::BadInput("pixel level out of the model's range"));
            }
            nll -= self.log_probs()?[v];
            self.push_level(v)?;
        }
        Ok(nll)
    }

    /// Samples a whole image of levels into `out` at temperature `temp` (`0` = the most
    /// likely level); pixels before `start` are taken from `out` as given (clamped).
    pub fn sample(&mut self, out: &mut [u8], start: usize, temp: f32, rng: &mut impl RngCore) -> Result<(), Error> {
        let c = *self.model.config();
        if out.len() != c.pixels() || start > out.len() {
            return Err(Error::BadInput("image size differs from the model's"));
        }
        self.reset();
        for (i, o) in out.iter_mut().enumerate() {
            let level = if i < start { *o as usize } else { heads::sample_log_weights(self.log_probs()?, temp, rng) };
            self.push_level(level)?;
            *o = level as u8;
        }
        Ok(())
    }

    /// Copies another session's image state (same model): particles in imputation.
    pub fn copy_state_from(&mut self, other: &GraphSession<'_>) {
        self.cache.copy_from_slice(other.cache);
        self.pos = other.pos;
        self.ready = other.ready;
        self.rows_done = other.rows_done;
    }

    /// The next pixel's outputs: first, at a row's start, the completed-row tensors of
    /// the row above (all its pixels are known now) and the row tensors of the new row;
    /// then the pixel tensors at the pixel, in node order.
    fn compute(&mut self) -> Result<(), Error> {
        let c = *self.model.config();
        if self.pos >= c.pixels() {
            return Err(Error::BadInput("the image is already complete"));
        }
        if self.ready {
            return Ok(());
        }
        let r = self.pos / c.width;
        while self.rows_done <= r {
            let row = self.rows_done;
            // Before anything of `row` is written: a ring of one row holds row - 1 in
            // the slot row `row` will take.
            if row > 0 {
                self.eval_schedule(Schedule::CompletedRow, (row - 1) * c.width, c.width);
            }
            self.eval_schedule(Schedule::Row, row * c.width, c.width);
            self.rows_done += 1;
        }
        self.eval_schedule(Schedule::Pixel, self.pos, 1);
        self.ready = true;
        Ok(())
    }

    /// Every node of one schedule, in node order, at positions `p0 .. p0 + n`.
    fn eval_schedule(&mut self, which: Schedule, p0: usize, n: usize) {
        for i in 0..self.model.config().n_nodes {
            if self.model.tensor(i + 1).schedule == which {
                self.eval_node(false, i, p0, n);
            }
        }
    }

    /// The whole graph over a whole image of levels: head parameters `(pixels, P)`, each
    /// pixel's depending only on the pixels before it. Needs a session made with
    /// `full_forward`. Bit-identical to the cached path.
    pub fn forward_full(&mut self, image: &[u8]) -> Result<&[f32], Error> {
        self.forward_batch(image)
    }

    /// [`forward_full`](Self::forward_full) over `images`, one whole image after another
    /// (at most the session's `batch`): head parameters `(images × pixels, P)`. Each
    /// image's are bit-identical to its own full forward pass.
    pub fn forward_batch(&mut self, images: &[u8]) -> Result<&[f32], Error> {
        let c = *self.model.config();
        if self.batch == 0 {
            return Err(Error::BadConfig("session made without full_forward"));
        }
        if images.is_empty() || !images.len().is_multiple_of(c.pixels()) {
            return Err(Error::BadInput("image size differs from the model's"));
        }
        if images.len() / c.pixels() > self.batch {
            return Err(Error::BadInput("more images than the session's batch"));
        }
        if images.iter().any(|&v| v as usize >= c.levels) {
            return Err(Error::BadInput("pixel level out of the model's range"));
        }
        for (x, &v) in self.full[..images.len()].iter_mut().zip(images) {
            *x = self.model.value_of_level(v as usize);
        }
        for i in 0..c.n_nodes {
            self.eval_node(true, i, 0, images.len());
        }
        let at = self.full_plan.off[c.n_nodes];
        Ok(&self.full[at..at + images.len() * c.n_params()])
    }

    /// The negative log-likelihood of each of `images` (whole images one after another,
    /// at most the session's `batch`) into `nll`, in nats, from one batched full forward
    /// pass: the same values as [`nll`](Self::nll), image by image.
    pub fn nll_batch(&mut self, images: &[u8], nll: &mut [f64]) -> Result<(), Error> {
        let c = *self.model.config();
        if nll.len() * c.pixels() != images.len() {
            return Err(Error::BadInput("one NLL per image"));
        }
        let p = c.n_params();
        self.forward_batch(images)?;
        let at = self.full_plan.off[c.n_nodes];
        let params = &self.full[at..at + images.len() * p];
        let k = self.model.kernels();
        for ((o, img), prm) in
            nll.iter_mut().zip(images.chunks_exact(c.pixels())).zip(params.chunks_exact(c.pixels() * p))
        {
            // The same sum, in the same order, as `nll`.
            *o = img
                .iter()
                .zip(prm.chunks_exact(p))
                .fold(0.0, |acc, (&v, x)| acc - c.head.log_prob(k, c.levels, x, v as usize, self.logp));
        }
        Ok(())
    }

    /// Node `i` at raster positions `p0 .. p0 + n`, which lie on one row of the store's
    /// rings (or anywhere in the whole-image store), so each tensor's values there are
    /// contiguous.
    fn eval_node(&mut self, whole: bool, i: usize, p0: usize, n: usize) {
        let m = self.model;
        let w = m.config().width;
        let node = m.node(i);
        let (buf, plan) = if whole { (&mut *self.full, &self.full_plan) } else { (&mut *self.cache, &self.cache_plan) };
        let t = i + 1;
        let (ca, cb, ct) = (m.tensor(node.a).channels, m.tensor(node.b).channels, m.tensor(t).channels);
        // Inputs come earlier in the store than the output (tensors in node order).
        let (lo, hi) = buf.split_at_mut(plan.off[t]);
        let out_at = plan.at(t, p0, w, ct) - plan.off[t];
        let out = &mut hi[out_at..out_at + n * ct];
        let a_at = plan.at(node.a, p0, w, ca);
        let a = &lo[a_at..a_at + n * ca];
        let b_at = plan.at(node.b, p0, w, cb);
        let b = &lo[b_at..b_at + n * cb];
        match node.op {
            Op::Conv => {
                let Some(conv) = node.conv else { unreachable!("a conv node has its convolution") };
                let patch = &mut self.patch[..n * conv.cols];
                for (j, row) in patch.chunks_exact_mut(conv.cols).enumerate() {
                    gather(m, lo, plan, node.a, p0 + j, &conv, row);
                }
                let k = m.kernels();
                let xq = &mut self.patchq[..n * conv.cols / QK8];
                if conv.w.is_quantized() {
                    (k.quantize_q8)(patch, xq);
                }
                conv.w.matmul_rows(k, 0..ct, conv.cols, patch, xq, out);
                for o in out.chunks_exact_mut(ct) {
                    for (v, bias) in o.iter_mut().zip(conv.b) {
                        *v += bias;
                    }
                }
            }
            Op::Add => zip_map(out, a, b, |x, y| x + y),
            Op::Sub => zip_map(out, a, b, |x, y| x - y),
            Op::Mul => zip_map(out, a, b, |x, y| x * y),
            Op::Tanh => map_with(m, Unary::Tanh, out, a),
            Op::Sigmoid => map_with(m, Unary::Sigmoid, out, a),
            Op::Relu => map(out, a, |x| x.max(0.0)),
            Op::Elu { alpha } => map_with(m, Unary::Elu(alpha), out, a),
            Op::Affine { scale, shift } => map(out, a, |x| x * scale + shift),
            Op::Slice { start } => {
                for (o, x) in out.chunks_exact_mut(ct).zip(a.chunks_exact(ca)) {
                    o.copy_from_slice(&x[start..start + ct]);
                }
            }
            Op::Concat => {
                for ((o, x), y) in out.chunks_exact_mut(ct).zip(a.chunks_exact(ca)).zip(b.chunks_exact(cb)) {
                    o[..ca].copy_from_slice(x);
                    o[ca..].copy_from_slice(y);
                }
            }
            Op::ConcatElu => {
                for (o, x) in out.chunks_exact_mut(ct).zip(a.chunks_exact(ca)) {
                    let (pos, neg) = o.split_at_mut(ca);
                    pos.copy_from_slice(x);
                    map(neg, x, |v| -v);
                }
                (m.kernels().map_f32)(Unary::Elu(1.0), out);
            }
        }
    }
}

/// One position's patch: tap `k`'s `cin` values of tensor `a` (zeros outside the
/// position's image), then zeros to the end of `row`.
fn gather(
    m: &PixelGraph<'_>,
    store: &[f32],
    plan: &Store,
    a: usize,
    p: usize,
    conv: &super::Conv<'_>,
    row: &mut [f32],
) {
    let c = m.config();
    let cin = m.tensor(a).channels;
    // In a batch, position `p` is pixel `q` of the image whose first row is the store's
    // row `row0`; no tap reaches into another image.
    let q = p % c.pixels();
    let (row0, r, col) = ((p - q) / c.width, q / c.width, q % c.width);
    let taps = conv.n_taps();
    for k in 0..taps {
        let (dy, dx) = conv.tap(k);
        let dst = &mut row[k * cin..(k + 1) * cin];
        let rr = r.checked_add_signed(dy).filter(|&v| v < c.height);
        let cc = col.checked_add_signed(dx).filter(|&v| v < c.width);
        match (rr, cc) {
            (Some(rr), Some(cc)) => {
                let i = plan.row_at(a, row0 + rr, c.width, cin) + cc * cin;
                dst.copy_from_slice(&store[i..i + cin]);
            }
            _ => dst.fill(0.0),
        }
    }
    row[taps * cin..].fill(0.0);
}

fn map(out: &mut [f32], a: &[f32], f: impl Fn(f32) -> f32) {
    for (o, &x) in out.iter_mut().zip(a) {
        *o = f(x);
    }
}

fn zip_map(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

/// `out = f(a)` with the model's kernel tier.
fn map_with(m: &PixelGraph<'_>, f: Unary, out: &mut [f32], a: &[f32]) {
    out.copy_from_slice(a);
    (m.kernels().map_f32)(f, out);
}
