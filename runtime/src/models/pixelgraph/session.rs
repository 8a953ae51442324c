//! Running a [`PixelGraph`]: one image scored or generated, all state in the caller's
//! arena. Both paths evaluate a node at a run of positions with the same code
//! ([`GraphSession::eval_node`]), the cached one a row or a pixel at a time from ring
//! buffers, the full one over the whole image, so their outputs are bit-identical.

use rand_core::RngCore;

use super::{Op, PixelGraph, Schedule, MAX_TENSORS};
use crate::arena::{Arena, Layout};
use crate::error::Error;
use crate::models::pixelcnn::heads;
use crate::quant::{BlockQ8, QK8};

/// Settings that size a [`GraphSession`]'s arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphSessionConfig {
    /// Also carve the whole-image buffers of [`GraphSession::forward_full`].
    pub full_forward: bool,
}

/// Where each tensor lives in a store: its first value, and the rows it keeps (`height`
/// for the whole image; fewer for a ring, row `r` in slot `r % rows`). A row holds
/// `width` pixels of `channels` values.
#[derive(Clone, Copy)]
struct Store {
    off: [usize; MAX_TENSORS],
    rows: [usize; MAX_TENSORS],
    len: usize,
}

impl Store {
    /// `whole`: every tensor keeps the whole image; else each its ring.
    fn plan(m: &PixelGraph<'_>, whole: bool) -> Option<Store> {
        let c = m.config();
        let mut s = Store { off: [0; MAX_TENSORS], rows: [0; MAX_TENSORS], len: 0 };
        for t in 0..=c.n_nodes {
            let info = m.tensor(t);
            let rows = if whole { c.height } else { info.ring_rows.min(c.height) };
            s.off[t] = s.len;
            s.rows[t] = rows;
            s.len = s.len.checked_add(rows.checked_mul(c.width)?.checked_mul(info.channels)?)?;
        }
        Some(s)
    }

    /// Index of pixel `p`'s first value of tensor `t` (`ch` channels).
    fn at(&self, t: usize, p: usize, width: usize, ch: usize) -> usize {
        let (r, c) = (p / width, p % width);
        self.off[t] + ((r % self.rows[t]) * width + c) * ch
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
        let positions = self.patch_positions(s);
        let cols = self.max_cols();
        Layout::new()
            .then::<f32>(cache.len)?
            .then::<f32>(full.len)?
            .then::<f32>(positions.checked_mul(cols)?)?
            .then::<BlockQ8>(positions.checked_mul(cols / QK8)?)?
            .then::<f64>(self.config().levels)
    }

    fn stores(&self, s: &GraphSessionConfig) -> Option<(Store, Store)> {
        let cache = Store::plan(self, false)?;
        let mut full = Store::plan(self, true)?;
        if !s.full_forward {
            full.len = 0;
        }
        Some((cache, full))
    }

    /// The most positions one convolution gathers at once: a row, or the whole image.
    fn patch_positions(&self, s: &GraphSessionConfig) -> usize {
        let c = self.config();
        if s.full_forward {
            c.pixels()
        } else {
            c.width
        }
    }
}

impl<'a> GraphSession<'a> {
    pub fn new(model: &'a PixelGraph<'a>, arena: &'a mut [u8], s: GraphSessionConfig) -> Result<Self, Error> {
        let need = model.memory_plan(&s)?;
        let overflow = Error::BadConfig("arena size overflows");
        let (cache_plan, full_plan) = model.stores(&s).ok_or(overflow)?;
        let cols = model.max_cols();
        let positions = model.patch_positions(&s);
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
        c.head.log_probs(c.levels, &self.cache[i..i + p], self.logp);
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
        let c = *self.model.config();
        if self.full.is_empty() {
            return Err(Error::BadConfig("session made without full_forward"));
        }
        if image.len() != c.pixels() {
            return Err(Error::BadInput("image size differs from the model's"));
        }
        if image.iter().any(|&v| v as usize >= c.levels) {
            return Err(Error::BadInput("pixel level out of the model's range"));
        }
        for (x, &v) in self.full[..c.pixels()].iter_mut().zip(image) {
            *x = self.model.value_of_level(v as usize);
        }
        for i in 0..c.n_nodes {
            self.eval_node(true, i, 0, c.pixels());
        }
        let at = self.full_plan.off[c.n_nodes];
        Ok(&self.full[at..at + c.pixels() * c.n_params()])
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
            Op::Tanh => map(out, a, libm::tanhf),
            Op::Sigmoid => map(out, a, sigmoid),
            Op::Relu => map(out, a, |x| x.max(0.0)),
            Op::Elu { alpha } => map(out, a, |x| elu(x, alpha)),
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
                    map(pos, x, |v| elu(v, 1.0));
                    map(neg, x, |v| elu(-v, 1.0));
                }
            }
        }
    }
}

/// One position's patch: tap `k`'s `cin` values of tensor `a` (zeros outside the
/// image), then zeros to the end of `row`.
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
    let (r, col) = (p / c.width, p % c.width);
    let taps = conv.n_taps();
    for k in 0..taps {
        let (dy, dx) = conv.tap(k);
        let dst = &mut row[k * cin..(k + 1) * cin];
        let rr = r.checked_add_signed(dy).filter(|&v| v < c.height);
        let cc = col.checked_add_signed(dx).filter(|&v| v < c.width);
        match (rr, cc) {
            (Some(rr), Some(cc)) => {
                let i = plan.at(a, rr * c.width + cc, c.width, cin);
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

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + libm::expf(-x))
}

fn elu(x: f32, alpha: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        alpha * libm::expm1f(x)
    }
}
