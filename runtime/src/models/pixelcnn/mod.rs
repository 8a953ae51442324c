//! Gated PixelCNN (van den Oord et al. 2016): a vertical and a horizontal stack of
//! gated convolutions whose shapes make pixel `(r, c)`'s output depend only on the
//! pixels before it in raster order. The tensors and the math are specified in
//! `runtime/FORMAT.md` ("PixelCNN models").
//!
//! Two ways to run it, giving bit-identical head parameters:
//!
//! - [`PixelSession::params`] / [`PixelSession::push`]: cached generation in the manner
//!   of Ramachandran et al. 2017 ("Fast generation for convolutional autoregressive
//!   models"). The vertical stack runs one image row at a time, once the row is known,
//!   and keeps per-layer ring buffers of the rows its taps reach back to; the
//!   horizontal stack runs one pixel at a time on the current row. A whole image costs
//!   about one forward pass.
//! - [`PixelSession::forward_full`]: every layer over the whole image at once (the
//!   textbook forward pass, and the naive way to sample: one pass per pixel).
//!
//! Every convolution is a matrix product over gathered patches (a tap's `cin` input
//! channels side by side), on the same kernels as the text models, so q8 weights use
//! the int8 dot products. All state lives in the caller's arena. The per-pixel output
//! distributions are [`heads`]; [`synth`] writes random-weight files of any geometry.

pub mod heads;
#[cfg(feature = "std")]
pub mod synth;

use crate::arena::{Arena, Layout};
use crate::error::{bad, Error};
use crate::format::keys::{self, LayerNaming};
use crate::format::{ArqFile, TensorView};
use crate::kernels::{self, Kernels};
use crate::linear::{matrix, vector, Weight};
use crate::math;
use crate::quant::{BlockQ8, QK8};
use heads::{Head, MAX_MIXTURES};
use rand_core::RngCore;

/// How the PixelCNN names its layers' tensors (`l{l}.{conv}.weight`, `l{l}.{conv}.bias`).
const NAMING: LayerNaming = LayerNaming::L;

/// The most gated layers a file may declare.
pub const MAX_LAYERS: usize = 64;
/// The most levels of a discrete pixel.
pub const MAX_LEVELS: usize = 256;
const MAX_SIDE: usize = 1024;
const MAX_CHANNELS: usize = 4096;
const MAX_KERNEL: usize = 31;
const MAX_DILATION: usize = 64;

/// Hyperparameters, from the file's `pixelcnn.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelConfig {
    pub height: usize,
    pub width: usize,
    /// Channels of both stacks (`C`).
    pub channels: usize,
    /// Channels of the output gate (`OH`).
    pub out_hidden: usize,
    pub n_layers: usize,
    /// Kernel size and dilation of each gated layer (the first `n_layers` entries).
    pub kernel: [u8; MAX_LAYERS],
    pub dilation: [u8; MAX_LAYERS],
    pub head: Head,
    /// Discrete levels per pixel (0 for the continuous Gaussian-mixture head).
    pub levels: usize,
}

/// The tap geometry of one gated layer (FORMAT.md's table).
#[derive(Clone, Copy, Debug)]
struct Geom {
    k: usize,
    d: usize,
    /// `k / 2`.
    m: usize,
    /// Layer 0 (mask A): the horizontal taps stop left of the pixel itself.
    first: bool,
}

impl Geom {
    fn vtaps(&self) -> usize {
        (self.m + 1) * self.k
    }
    /// (row, column) offset of vertical tap `t`.
    fn vtap(&self, t: usize) -> (isize, isize) {
        let (i, j) = (t / self.k, t % self.k);
        (-((self.d * (self.m - i)) as isize), (self.d * j) as isize - (self.d * self.m) as isize)
    }
    fn htaps(&self) -> usize {
        if self.first {
            self.m
        } else {
            self.m + 1
        }
    }
    /// Column offset of horizontal tap `j`.
    fn htap(&self, j: usize) -> isize {
        -((self.d * (self.m - j)) as isize)
    }
    /// Rows of the vertical stack's input the taps reach: the current and `d m` above.
    fn ring_rows(&self) -> usize {
        self.d * self.m + 1
    }
}

/// `taps * cin` rounded up to whole q8 blocks.
fn padded(taps: usize, cin: usize) -> usize {
    (taps * cin).div_ceil(QK8) * QK8
}

impl PixelConfig {
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Head parameters per pixel (`P`).
    pub fn n_params(&self) -> usize {
        self.head.n_params(self.levels)
    }

    fn geom(&self, l: usize) -> Geom {
        let k = self.kernel[l] as usize;
        Geom { k, d: self.dilation[l] as usize, m: k / 2, first: l == 0 }
    }

    fn cin(&self, l: usize) -> usize {
        if l == 0 {
            1
        } else {
            self.channels
        }
    }

    /// Columns of the widest gathered patch.
    fn max_cols(&self) -> usize {
        (0..self.n_layers)
            .map(|l| {
                let g = self.geom(l);
                padded(g.vtaps(), self.cin(l)).max(padded(g.htaps(), self.cin(l)))
            })
            .max()
            .unwrap_or(0)
            .max(2 * self.channels)
            .max(self.out_hidden)
    }

    /// Rows of the widest convolution output.
    fn max_rows(&self) -> usize {
        (2 * self.channels).max(2 * self.out_hidden).max(self.n_params())
    }

    fn from_file(f: &ArqFile<'_>) -> Result<Self, Error> {
        let u = |k: &'static str| -> Result<usize, Error> {
            usize::try_from(f.meta_u64(k)?).map_err(|_| Error::BadHyperparameter(k))
        };
        let check = |ok: bool, what| if ok { Ok(()) } else { Err(Error::BadHyperparameter(what)) };
        let (height, width) = (u(keys::PIXELCNN_HEIGHT)?, u(keys::PIXELCNN_WIDTH)?);
        check((1..=MAX_SIDE).contains(&height) && (1..=MAX_SIDE).contains(&width), "pixelcnn.height/width")?;
        check(u(keys::PIXELCNN_IN_CHANNELS)? == 1, "pixelcnn.in_channels (only 1 is supported)")?;
        let channels = u(keys::PIXELCNN_CHANNELS)?;
        check(channels > 0 && channels <= MAX_CHANNELS && channels % QK8 == 0, "pixelcnn.channels (a multiple of 32)")?;
        let out_hidden = u(keys::PIXELCNN_OUT_HIDDEN)?;
        check(
            out_hidden > 0 && out_hidden <= MAX_CHANNELS && out_hidden % QK8 == 0,
            "pixelcnn.out_hidden (a multiple of 32)",
        )?;
        let (mut kernel, mut dilation) = ([0u8; MAX_LAYERS], [0u8; MAX_LAYERS]);
        let mut n_layers = 0;
        for item in f.meta_str(keys::PIXELCNN_LAYERS)?.split(',') {
            let parsed = item
                .trim()
                .split_once(':')
                .and_then(|(k, d)| Some((k.parse::<usize>().ok()?, d.parse::<usize>().ok()?)));
            let Some((k, d)) = parsed else {
                return Err(Error::BadHyperparameter("pixelcnn.layers (\"k:d,k:d,...\")"));
            };
            check(n_layers < MAX_LAYERS, "pixelcnn.layers (at most 64)")?;
            check(k % 2 == 1 && (3..=MAX_KERNEL).contains(&k), "pixelcnn.layers (odd kernels 3..=31)")?;
            check((1..=MAX_DILATION).contains(&d), "pixelcnn.layers (dilations 1..=64)")?;
            kernel[n_layers] = k as u8;
            dilation[n_layers] = d as u8;
            n_layers += 1;
        }
        let levels = u(keys::PIXELCNN_LEVELS)?;
        let mixtures = || -> Result<(usize, f32), Error> {
            let k = u(keys::PIXELCNN_MIXTURES)?;
            check((1..=MAX_MIXTURES).contains(&k), "pixelcnn.mixtures (1..=64)")?;
            let min = f.meta_f32(keys::PIXELCNN_MIN_LOG_SCALE)?;
            check(min.is_finite(), keys::PIXELCNN_MIN_LOG_SCALE)?;
            Ok((k, min))
        };
        let head = match f.meta_str(keys::PIXELCNN_HEAD)? {
            keys::HEAD_CATEGORICAL => Head::Categorical,
            keys::HEAD_BERNOULLI => Head::Bernoulli,
            keys::HEAD_LOGISTIC_MIXTURE => {
                let (k, min_log_scale) = mixtures()?;
                Head::LogisticMixture { k, min_log_scale }
            }
            keys::HEAD_GAUSSIAN_MIXTURE => {
                let (k, min_log_scale) = mixtures()?;
                Head::GaussianMixture { k, min_log_scale }
            }
            _ => {
                return Err(Error::BadHyperparameter(
                    "pixelcnn.head (categorical, bernoulli, logistic_mixture, gaussian_mixture)",
                ))
            }
        };
        match head {
            Head::Bernoulli => check(levels == 2, "pixelcnn.levels (2 for a Bernoulli head)")?,
            Head::GaussianMixture { .. } => check(levels == 0, "pixelcnn.levels (0 for a Gaussian mixture)")?,
            _ => check((2..=MAX_LEVELS).contains(&levels), "pixelcnn.levels (2..=256)")?,
        }
        Ok(PixelConfig { height, width, channels, out_hidden, n_layers, kernel, dilation, head, levels })
    }
}

/// One convolution as a matrix: `rows` outputs, `cols` gathered inputs, f32 bias.
#[derive(Clone, Copy)]
struct Conv<'a> {
    w: Weight<'a>,
    b: &'a [f32],
    rows: usize,
    cols: usize,
}

impl Conv<'_> {
    /// `out (n, rows) = x (n, cols) · wᵀ + b`, `xq` the scratch for quantized `x`.
    fn apply(&self, k: &Kernels, x: &[f32], xq: &mut [BlockQ8], out: &mut [f32]) {
        let n = x.len() / self.cols;
        let out = &mut out[..n * self.rows];
        let xq = &mut xq[..n * self.cols / QK8];
        if self.w.is_quantized() {
            (k.quantize_q8)(x, xq);
        }
        self.w.matmul_rows(k, 0..self.rows, self.cols, x, xq, out);
        for o in out.chunks_exact_mut(self.rows) {
            for (v, b) in o.iter_mut().zip(self.b) {
                *v += b;
            }
        }
    }
}

/// One gated layer's convolutions.
#[derive(Clone, Copy)]
struct Layer<'a> {
    vconv: Conv<'a>,
    hconv: Conv<'a>,
    v2h: Conv<'a>,
    /// Absent in layer 0 (no residual there).
    hout: Option<Conv<'a>>,
}

/// Each layer's convolutions as (weight, bias) tensor roles, in file order.
const CONVS: [(&str, &str); 4] = [
    ("vconv.weight", "vconv.bias"),
    ("hconv.weight", "hconv.bias"),
    ("v2h.weight", "v2h.bias"),
    ("hout.weight", "hout.bias"),
];

/// A loaded PixelCNN: validated views into the file's bytes.
pub struct PixelCnn<'a> {
    file: ArqFile<'a>,
    cfg: PixelConfig,
    out1: Conv<'a>,
    out2: Conv<'a>,
    /// Directory index of `l0.vconv.weight`; see [`PixelCnn::layer_index`].
    layer_base: usize,
    kernels: &'static Kernels,
}

impl<'a> PixelCnn<'a> {
    /// Validates `bytes` (64-byte aligned) as a PixelCNN `.arq` file.
    pub fn load(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::from_file(ArqFile::parse(bytes)?)
    }

    pub fn from_file(file: ArqFile<'a>) -> Result<Self, Error> {
        if file.meta(keys::ARCHITECTURE).and_then(|v| v.as_str()) != Some(keys::ARCH_PIXELCNN) {
            return Err(Error::UnsupportedArchitecture);
        }
        let cfg = PixelConfig::from_file(&file)?;
        let global = |names: (&'static str, &'static str), rows: usize, cols: usize| -> Result<Conv<'a>, Error> {
            let find = |name| file.find(name).map(|(_, t)| t).ok_or(bad(NAMING, name, None, "missing"));
            conv(&find(names.0)?, &find(names.1)?, names, None, rows, cols)
        };
        let out1 = global(("out1.weight", "out1.bias"), 2 * cfg.out_hidden, cfg.channels)?;
        let out2 = global(("out2.weight", "out2.bias"), cfg.n_params(), cfg.out_hidden)?;
        let first = CONVS[0].0;
        let layer_base = (0..file.n_tensors())
            .find(|&i| file.tensor(i).is_some_and(|t| NAMING.is_layer_tensor(t.name, 0, first)))
            .ok_or(bad(NAMING, first, Some(0), "missing"))?;
        let model = PixelCnn { file, cfg, out1, out2, layer_base, kernels: kernels::best() };
        for l in 0..cfg.n_layers {
            model.layer_checked(l)?;
        }
        crate::trace::info!(
            "arq: pixelcnn model {}x{}, {} levels, {} gated layers of {} channels, kernels {}",
            cfg.height,
            cfg.width,
            cfg.levels,
            cfg.n_layers,
            cfg.channels,
            model.kernels.name
        );
        Ok(model)
    }

    /// Directory index of layer `l`'s first tensor: layer 0 has 3 convolutions, the
    /// others 4, each a weight and a bias.
    fn layer_index(&self, l: usize) -> usize {
        self.layer_base + if l == 0 { 0 } else { 6 + 8 * (l - 1) }
    }

    fn layer_checked(&self, l: usize) -> Result<Layer<'a>, Error> {
        let c = &self.cfg;
        let (g, cin, ch) = (c.geom(l), c.cin(l), c.channels);
        let li = Some(l as u32);
        let base = self.layer_index(l);
        let get = |j: usize| -> Result<Conv<'a>, Error> {
            let (rows, cols) = match j {
                0 => (2 * ch, padded(g.vtaps(), cin)),
                1 => (2 * ch, padded(g.htaps(), cin)),
                2 => (2 * ch, 2 * ch),
                _ => (ch, ch),
            };
            let at = |i: usize, role: &'static str| match self.file.tensor(base + 2 * j + i) {
                Some(t) if NAMING.is_layer_tensor(t.name, l, role) => Ok(t),
                _ => Err(bad(NAMING, role, li, "missing or out of the canonical order")),
            };
            conv(&at(0, CONVS[j].0)?, &at(1, CONVS[j].1)?, CONVS[j], li, rows, cols)
        };
        Ok(Layer { vconv: get(0)?, hconv: get(1)?, v2h: get(2)?, hout: if l == 0 { None } else { Some(get(3)?) } })
    }

    fn layer(&self, l: usize) -> Layer<'a> {
        // Every layer was validated in `from_file`; the file is immutable.
        match self.layer_checked(l) {
            Ok(layer) => layer,
            Err(_) => unreachable!("layer {l} validated at load"),
        }
    }

    pub fn config(&self) -> &PixelConfig {
        &self.cfg
    }

    pub fn file(&self) -> &ArqFile<'a> {
        &self.file
    }

    /// Picks a kernel tier other than the detected best (tests, benchmarks).
    pub fn set_kernels(&mut self, k: &'static Kernels) {
        self.kernels = k;
    }

    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// The network input for a discrete level (`x / (levels - 1) * 2 - 1`).
    pub fn value_of_level(&self, level: usize) -> f32 {
        heads::value_of_level(level, self.cfg.levels)
    }

    /// The exact arena size, in bytes, that [`PixelSession::new`] needs.
    pub fn memory_plan(&self, s: &PixelSessionConfig) -> Result<usize, Error> {
        self.layout(s).map(|l| l.bytes()).ok_or(Error::BadConfig("arena size overflows"))
    }

    /// The arena's buffers, in carving order (see [`PixelSession::new`]).
    fn layout(&self, s: &PixelSessionConfig) -> Option<Layout> {
        let c = &self.cfg;
        let (w, ch, n) = (c.width, c.channels, c.pixels());
        let rings: usize = (1..c.n_layers).map(|l| c.geom(l).ring_rows() * w * ch).sum();
        let cols = c.max_cols();
        let full = usize::from(s.full_forward);
        let nf = n * full;
        Layout::new()
            .then::<f32>(n)? // x
            .then::<f32>(rings)? // ring
            .then::<f32>(c.n_layers.checked_mul(w * 2 * ch)?)? // v2h
            .then::<f32>(c.n_layers.checked_mul(w * ch)?)? // hrow
            .then::<f32>(w.checked_mul(cols)?)? // patch
            .then::<BlockQ8>(w.checked_mul(cols / QK8)?)? // patchq
            .then::<f32>(w.checked_mul(c.max_rows())?)? // a
            .then::<f32>(c.max_rows())? // t1
            .then::<f32>(c.max_rows())? // t2
            .then::<f32>(c.n_params())? // params
            .then::<f64>(c.levels)? // logp
            .then::<f32>(nf.checked_mul(ch)?.checked_mul(4)?)? // fvh: v, v', h, h'
            .then::<f32>(nf.checked_mul(c.max_rows())?.checked_mul(3)?)? // fwork
            .then::<f32>(nf.checked_mul(cols)?)? // fpatch
            .then::<BlockQ8>(nf.checked_mul(cols / QK8)?) // fpatchq
    }
}

/// A convolution from its weight and bias tensors, whose roles are `names`.
fn conv<'a>(
    w: &TensorView<'a>,
    b: &TensorView<'a>,
    names: (&'static str, &'static str),
    layer: Option<u32>,
    rows: usize,
    cols: usize,
) -> Result<Conv<'a>, Error> {
    let w = matrix(w, NAMING, names.0, layer, rows, cols)?;
    let b = vector(b, NAMING, names.1, layer, rows)?;
    Ok(Conv { w, b, rows, cols })
}

/// Settings that size a [`PixelSession`]'s arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PixelSessionConfig {
    /// Also carve the whole-image buffers of [`PixelSession::forward_full`].
    pub full_forward: bool,
}

/// `out[i] = tanh(a[i]) * sigmoid(a[n + i])` for `a` of `2n` values.
///
/// `tanh(x) = sign(x) (1 - e) / (1 + e)` with `e = exp(-2|x|)`: one exponential instead
/// of libm's `tanhf` (which calls `expm1f`), and that one [`math::exp`], which
/// vectorizes (libm's `expf` was a third of the time of a scored image in a profile).
/// Its absolute error stays within a few f32 ulps of 1 (the gates' outputs are in
/// [-1, 1]), far inside the 1e-4 the ONNX comparison allows.
fn gate(a: &[f32], out: &mut [f32]) {
    let (t, s) = a.split_at(a.len() / 2);
    for ((o, &x), &y) in out.iter_mut().zip(t).zip(s) {
        let e = math::exp(-2.0 * x.abs());
        let tanh = ((1.0 - e) / (1.0 + e)).copysign(x);
        *o = tanh * (1.0 / (1.0 + math::exp(-y)));
    }
}

/// Gathers one patch: tap `t`'s `cin` values from `src(t)` (zeros where it gives
/// `None`: outside the image), then zeros to the end of `out`.
fn gather<'s>(out: &mut [f32], cin: usize, taps: usize, src: impl Fn(usize) -> Option<&'s [f32]>) {
    for t in 0..taps {
        let dst = &mut out[t * cin..(t + 1) * cin];
        match src(t) {
            Some(s) => dst.copy_from_slice(s),
            None => dst.fill(0.0),
        }
    }
    out[taps * cin..].fill(0.0);
}

/// `Some(i)` when `base + off` lies in `0..len`.
fn at(base: usize, off: isize, len: usize) -> Option<usize> {
    base.checked_add_signed(off).filter(|&i| i < len)
}

/// One image being scored or generated: the cached state and scratch, all in the
/// caller's arena.
pub struct PixelSession<'a> {
    model: &'a PixelCnn<'a>,
    /// Network inputs of the image so far, raster order.
    x: &'a mut [f32],
    /// Per layer `l >= 1`: the last `ring_rows` rows of its vertical input, row `r` in
    /// slot `r % ring_rows`, each `(width, C)`. Layer 0 reads `x`.
    ring: &'a mut [f32],
    /// Per layer: `v2h` of the previous row's vertical pre-activation, `(width, 2C)`.
    v2h: &'a mut [f32],
    /// Per layer: its horizontal output on the current row, `(width, C)`.
    hrow: &'a mut [f32],
    patch: &'a mut [f32],
    patchq: &'a mut [BlockQ8],
    a: &'a mut [f32],
    t1: &'a mut [f32],
    t2: &'a mut [f32],
    params: &'a mut [f32],
    logp: &'a mut [f64],
    // Whole-image buffers (`full_forward` only).
    fvh: &'a mut [f32],
    fwork: &'a mut [f32],
    fpatch: &'a mut [f32],
    fpatchq: &'a mut [BlockQ8],
    /// The next pixel (raster index) and whether its parameters are computed.
    pos: usize,
    ready: bool,
}

impl<'a> PixelSession<'a> {
    pub fn new(model: &'a PixelCnn<'a>, arena: &'a mut [u8], s: PixelSessionConfig) -> Result<Self, Error> {
        let need = model.memory_plan(&s)?;
        let c = &model.cfg;
        let (w, ch, n, cols) = (c.width, c.channels, c.pixels(), c.max_cols());
        let rings: usize = (1..c.n_layers).map(|l| c.geom(l).ring_rows() * w * ch).sum();
        let nf = n * usize::from(s.full_forward);
        crate::trace::debug!("arq: pixelcnn session, arena {} of {} bytes", need, arena.len());
        let mut a = Arena::new(arena, need)?;
        Ok(PixelSession {
            model,
            x: a.take(n)?,
            ring: a.take(rings)?,
            v2h: a.take(c.n_layers * w * 2 * ch)?,
            hrow: a.take(c.n_layers * w * ch)?,
            patch: a.take(w * cols)?,
            patchq: a.take(w * cols / QK8)?,
            a: a.take(w * c.max_rows())?,
            t1: a.take(c.max_rows())?,
            t2: a.take(c.max_rows())?,
            params: a.take(c.n_params())?,
            logp: a.take(c.levels)?,
            fvh: a.take(nf * ch * 4)?,
            fwork: a.take(nf * c.max_rows() * 3)?,
            fpatch: a.take(nf * cols)?,
            fpatchq: a.take(nf * cols / QK8)?,
            pos: 0,
            ready: false,
        })
    }

    pub fn model(&self) -> &'a PixelCnn<'a> {
        self.model
    }

    /// Starts a new image.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.ready = false;
    }

    /// The raster index of the next pixel (`pixels()` once the image is complete).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The head parameters of `p(x_pos | x_<pos)` for the next pixel.
    pub fn params(&mut self) -> Result<&[f32], Error> {
        self.compute()?;
        Ok(self.params)
    }

    /// `log p(x = level)` for every level of the next pixel (discrete heads).
    pub fn log_probs(&mut self) -> Result<&[f64], Error> {
        self.compute()?;
        let c = &self.model.cfg;
        c.head.log_probs(self.model.kernels, c.levels, self.params, self.logp);
        Ok(self.logp)
    }

    /// Sets the next pixel to the network input `value` and moves on.
    pub fn push(&mut self, value: f32) -> Result<(), Error> {
        self.compute()?;
        let c = self.model.cfg;
        self.x[self.pos] = value;
        self.pos += 1;
        self.ready = false;
        if self.pos.is_multiple_of(c.width) {
            self.vertical_row(self.pos / c.width - 1);
        }
        Ok(())
    }

    /// Sets the next pixel to a discrete level and moves on.
    pub fn push_level(&mut self, level: usize) -> Result<(), Error> {
        let levels = self.model.cfg.levels;
        if level >= levels {
            return Err(Error::BadInput("pixel level out of the model's range"));
        }
        self.push(self.model.value_of_level(level))
    }

    /// The negative log-likelihood of a whole image of levels, in nats.
    pub fn nll(&mut self, image: &[u8]) -> Result<f64, Error> {
        let c = self.model.cfg;
        if image.len() != c.pixels() {
            return Err(Error::BadInput("image size differs from the model's"));
        }
        if !c.head.is_discrete() {
            return Err(Error::BadInput("the Gaussian-mixture head scores continuous values"));
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

    /// Samples a whole image of levels into `out`, at temperature `temp` (`0` = the
    /// most likely level each step). Pixels before `start` are taken from `out` as
    /// given (clamped), which continues a partial image.
    pub fn sample(&mut self, out: &mut [u8], start: usize, temp: f32, rng: &mut impl RngCore) -> Result<(), Error> {
        let c = self.model.cfg;
        if out.len() != c.pixels() || start > out.len() {
            return Err(Error::BadInput("image size differs from the model's"));
        }
        if !c.head.is_discrete() {
            return Err(Error::BadInput("sampling levels needs a discrete head"));
        }
        self.reset();
        for (i, o) in out.iter_mut().enumerate() {
            let level = if i < start {
                *o as usize
            } else {
                let lp = self.log_probs()?;
                heads::sample_log_weights(lp, temp, rng)
            };
            self.push_level(level)?;
            *o = level as u8;
        }
        Ok(())
    }

    /// Copies another session's image state (same model): particles in imputation.
    pub fn copy_state_from(&mut self, other: &PixelSession<'_>) {
        self.x.copy_from_slice(other.x);
        self.ring.copy_from_slice(other.ring);
        self.v2h.copy_from_slice(other.v2h);
        self.hrow.copy_from_slice(other.hrow);
        self.params.copy_from_slice(other.params);
        self.pos = other.pos;
        self.ready = other.ready;
    }

    /// Runs the horizontal stack and the output at the next pixel (once).
    fn compute(&mut self) -> Result<(), Error> {
        let m = self.model;
        let c = &m.cfg;
        if self.pos >= c.pixels() {
            return Err(Error::BadInput("the image is already complete"));
        }
        if self.ready {
            return Ok(());
        }
        let (w, ch, k) = (c.width, c.channels, m.kernels);
        let (r, col) = (self.pos / w, self.pos % w);
        for l in 0..c.n_layers {
            let (layer, g) = (m.layer(l), c.geom(l));
            let hc = layer.hconv.cols;
            let patch = &mut self.patch[..hc];
            if l == 0 {
                let row = &self.x[r * w..(r + 1) * w];
                gather(patch, 1, g.htaps(), |j| at(col, g.htap(j), w).map(|i| &row[i..i + 1]));
            } else {
                let prev = &self.hrow[(l - 1) * w * ch..l * w * ch];
                gather(patch, ch, g.htaps(), |j| at(col, g.htap(j), w).map(|i| &prev[i * ch..(i + 1) * ch]));
            }
            let hpre = &mut self.t1[..2 * ch];
            layer.hconv.apply(k, patch, self.patchq, hpre);
            if r > 0 {
                for (h, v) in hpre.iter_mut().zip(&self.v2h[(l * w + col) * 2 * ch..][..2 * ch]) {
                    *h += v;
                }
            }
            let (lo, hi) = self.hrow.split_at_mut(l * w * ch);
            let out = &mut hi[col * ch..(col + 1) * ch];
            match layer.hout {
                None => gate(hpre, out),
                Some(hout) => {
                    let gated = &mut self.t2[..ch];
                    gate(hpre, gated);
                    hout.apply(k, gated, self.patchq, &mut self.a[..ch]);
                    let prev = &lo[(l - 1) * w * ch + col * ch..][..ch];
                    for ((o, &p), &d) in out.iter_mut().zip(prev).zip(self.a.iter()) {
                        *o = p + d;
                    }
                }
            }
        }
        let last = &self.hrow[((c.n_layers - 1) * w + col) * ch..][..ch];
        let oh = c.out_hidden;
        m.out1.apply(k, last, self.patchq, &mut self.t1[..2 * oh]);
        gate(&self.t1[..2 * oh], &mut self.t2[..oh]);
        m.out2.apply(k, &self.t2[..oh], self.patchq, self.params);
        self.ready = true;
        Ok(())
    }

    /// Runs the vertical stack on the just-completed row `r`: fills each layer's ring
    /// and the `v2h` rows the horizontal stack reads on row `r + 1`.
    fn vertical_row(&mut self, r: usize) {
        let m = self.model;
        let c = &m.cfg;
        let (w, h, ch, k) = (c.width, c.height, c.channels, m.kernels);
        if r + 1 >= h {
            return; // nothing reads the last row's vertical stack
        }
        let mut ring_off = 0;
        for l in 0..c.n_layers {
            let (layer, g) = (m.layer(l), c.geom(l));
            let vc = layer.vconv.cols;
            let rows = g.ring_rows();
            // Gather every column's patch for this row from the layer's input.
            for col in 0..w {
                let patch = &mut self.patch[col * vc..(col + 1) * vc];
                let pixel = |t: usize| Some((at(r, g.vtap(t).0, h)?, at(col, g.vtap(t).1, w)?));
                if l == 0 {
                    let x = &self.x[..];
                    gather(patch, 1, g.vtaps(), |t| pixel(t).map(|(rr, cc)| &x[rr * w + cc..][..1]));
                } else {
                    let ring = &self.ring[ring_off..ring_off + rows * w * ch];
                    gather(patch, ch, g.vtaps(), |t| {
                        pixel(t).map(|(rr, cc)| &ring[((rr % rows) * w + cc) * ch..][..ch])
                    });
                }
            }
            let a = &mut self.a[..w * 2 * ch];
            layer.vconv.apply(k, &self.patch[..w * vc], self.patchq, a);
            layer.v2h.apply(k, a, self.patchq, &mut self.v2h[l * w * 2 * ch..(l + 1) * w * 2 * ch]);
            if l > 0 {
                ring_off += rows * w * ch;
            }
            if l + 1 < c.n_layers {
                let next_rows = c.geom(l + 1).ring_rows();
                let dst = &mut self.ring[ring_off + (r % next_rows) * w * ch..][..w * ch];
                for (o, ai) in dst.chunks_exact_mut(ch).zip(a.chunks_exact(2 * ch)) {
                    gate(ai, o);
                }
            }
        }
    }

    /// The whole network on a whole image of network inputs (`x_in`, raster order):
    /// head parameters `(pixels, P)`, each pixel's depending only on the inputs before
    /// it. Needs a session made with `full_forward`. Bit-identical to the cached path.
    pub fn forward_full(&mut self, x_in: &[f32]) -> Result<&[f32], Error> {
        let m = self.model;
        let c = &m.cfg;
        let (w, h, ch, n, k) = (c.width, c.height, c.channels, c.pixels(), m.kernels);
        if self.fvh.is_empty() {
            return Err(Error::BadConfig("session made without full_forward"));
        }
        if x_in.len() != n {
            return Err(Error::BadInput("image size differs from the model's"));
        }
        let mr = c.max_rows();
        let (v, rest) = self.fvh.split_at_mut(n * ch);
        let (v_next, rest) = rest.split_at_mut(n * ch);
        let (hs, h_next) = rest.split_at_mut(n * ch);
        let (a, rest) = self.fwork.split_at_mut(n * mr);
        let (v2h, t) = rest.split_at_mut(n * mr);
        for l in 0..c.n_layers {
            let (layer, g) = (m.layer(l), c.geom(l));
            let cin = c.cin(l);
            // Vertical stack.
            let vc = layer.vconv.cols;
            for p in 0..n {
                let (r, col) = (p / w, p % w);
                let patch = &mut self.fpatch[p * vc..(p + 1) * vc];
                let pixel = |tap: usize| Some(at(r, g.vtap(tap).0, h)? * w + at(col, g.vtap(tap).1, w)?);
                if l == 0 {
                    gather(patch, cin, g.vtaps(), |tap| pixel(tap).map(|i| &x_in[i..i + 1]));
                } else {
                    gather(patch, cin, g.vtaps(), |tap| pixel(tap).map(|i| &v[i * ch..(i + 1) * ch]));
                }
            }
            let a = &mut a[..n * 2 * ch];
            layer.vconv.apply(k, &self.fpatch[..n * vc], self.fpatchq, a);
            let v2h = &mut v2h[..n * 2 * ch];
            layer.v2h.apply(k, a, self.fpatchq, v2h);
            for (o, ai) in v_next.chunks_exact_mut(ch).zip(a.chunks_exact(2 * ch)) {
                gate(ai, o);
            }
            // Horizontal stack.
            let hc = layer.hconv.cols;
            for p in 0..n {
                let (r, col) = (p / w, p % w);
                let patch = &mut self.fpatch[p * hc..(p + 1) * hc];
                let pixel = |j: usize| Some(r * w + at(col, g.htap(j), w)?);
                if l == 0 {
                    gather(patch, cin, g.htaps(), |j| pixel(j).map(|i| &x_in[i..i + 1]));
                } else {
                    gather(patch, cin, g.htaps(), |j| pixel(j).map(|i| &hs[i * ch..(i + 1) * ch]));
                }
            }
            let hpre = &mut a[..n * 2 * ch];
            layer.hconv.apply(k, &self.fpatch[..n * hc], self.fpatchq, hpre);
            for p in w..n {
                for (x, y) in hpre[p * 2 * ch..(p + 1) * 2 * ch].iter_mut().zip(&v2h[(p - w) * 2 * ch..]) {
                    *x += y;
                }
            }
            match layer.hout {
                None => {
                    for (o, ai) in h_next.chunks_exact_mut(ch).zip(hpre.chunks_exact(2 * ch)) {
                        gate(ai, o);
                    }
                }
                Some(hout) => {
                    let gated = &mut t[..n * ch];
                    for (o, ai) in gated.chunks_exact_mut(ch).zip(hpre.chunks_exact(2 * ch)) {
                        gate(ai, o);
                    }
                    let d = &mut v2h[..n * ch];
                    hout.apply(k, gated, self.fpatchq, d);
                    for ((o, &p), &dd) in h_next.iter_mut().zip(hs.iter()).zip(d.iter()) {
                        *o = p + dd;
                    }
                }
            }
            v.copy_from_slice(v_next);
            hs.copy_from_slice(h_next);
        }
        let oh = c.out_hidden;
        let o1 = &mut a[..n * 2 * oh];
        m.out1.apply(k, hs, self.fpatchq, o1);
        let og = &mut t[..n * oh];
        for (o, ai) in og.chunks_exact_mut(oh).zip(o1.chunks_exact(2 * oh)) {
            gate(ai, o);
        }
        let out = &mut v2h[..n * c.n_params()];
        m.out2.apply(k, og, self.fpatchq, out);
        Ok(out)
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::synth::{synthetic, SynthSpec};
    use super::*;
    use crate::aligned::AlignedBytes;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg32;

    fn spec(height: usize, width: usize, layers: &[(usize, usize)], q8: bool) -> SynthSpec {
        SynthSpec { height, width, layers: layers.to_vec(), q8, levels: 5, ..SynthSpec::digits_like(height, width, q8) }
    }

    /// A random image of network inputs on the model's level grid.
    fn image(model: &PixelCnn<'_>, seed: u64) -> Vec<f32> {
        let mut rng = Pcg32::seed_from_u64(seed);
        let levels = model.config().levels;
        (0..model.config().pixels()).map(|_| model.value_of_level(rng.next_u32() as usize % levels)).collect()
    }

    fn cached_params(s: &mut PixelSession<'_>, x: &[f32]) -> Vec<f32> {
        s.reset();
        let mut all = Vec::new();
        for &v in x {
            all.extend_from_slice(s.params().unwrap());
            s.push(v).unwrap();
        }
        all
    }

    #[test]
    fn cached_generation_equals_the_full_forward_pass_bit_for_bit() {
        type Geometry<'g> = (usize, usize, &'g [(usize, usize)]);
        let geometries: &[Geometry] = &[
            (8, 8, &[(7, 1), (3, 1), (3, 2), (3, 1), (3, 2)]),
            (5, 7, &[(5, 1), (5, 2), (3, 3)]),
            (1, 6, &[(3, 1), (3, 1)]),
            (6, 1, &[(3, 1)]),
        ];
        for &(h, w, layers) in geometries {
            for q8 in [false, true] {
                let file = AlignedBytes::copy_of(&synthetic(&spec(h, w, layers, q8)));
                let model = PixelCnn::load(file.bytes()).unwrap();
                let cfg = PixelSessionConfig { full_forward: true };
                let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
                let mut s = PixelSession::new(&model, &mut arena, cfg).unwrap();
                for seed in 0..3 {
                    let x = image(&model, seed);
                    let cached = cached_params(&mut s, &x);
                    let full = s.forward_full(&x).unwrap().to_vec();
                    assert_eq!(cached.len(), full.len());
                    for (i, (a, b)) in cached.iter().zip(&full).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "{h}x{w} q8={q8} seed {seed} value {i}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// Pixel i's output must not change when any pixel at or after i changes, and must
    /// change (for some pixel) when an earlier one does: no blind spot.
    #[test]
    fn outputs_depend_on_exactly_the_earlier_pixels() {
        let file = AlignedBytes::copy_of(&synthetic(&spec(6, 6, &[(5, 1), (3, 1), (3, 2), (3, 1)], false)));
        let model = PixelCnn::load(file.bytes()).unwrap();
        let cfg = PixelSessionConfig { full_forward: true };
        let mut arena = vec![0u8; model.memory_plan(&cfg).unwrap()];
        let mut s = PixelSession::new(&model, &mut arena, cfg).unwrap();
        let p = model.config().n_params();
        let x = image(&model, 7);
        let base = s.forward_full(&x).unwrap().to_vec();
        let n = x.len();
        for j in 0..n {
            let mut y = x.clone();
            y[j] = if y[j] > 0.0 { -1.0 } else { 1.0 };
            let out = s.forward_full(&y).unwrap().to_vec();
            for i in 0..n {
                let same = out[i * p..(i + 1) * p] == base[i * p..(i + 1) * p];
                if i <= j {
                    assert!(same, "pixel {i} depends on pixel {j}");
                }
            }
            // The pixel right after j, and the pixel below j, see j.
            for i in [j + 1, j + 6] {
                if i < n {
                    assert_ne!(out[i * p..(i + 1) * p], base[i * p..(i + 1) * p], "pixel {i} blind to {j}");
                }
            }
        }
    }

    #[test]
    fn memory_plan_is_exact_and_a_short_arena_is_refused() {
        let file = AlignedBytes::copy_of(&synthetic(&spec(8, 8, &[(7, 1), (3, 2)], true)));
        let model = PixelCnn::load(file.bytes()).unwrap();
        for full_forward in [false, true] {
            let cfg = PixelSessionConfig { full_forward };
            let need = model.memory_plan(&cfg).unwrap();
            let mut arena = vec![0u8; need];
            assert!(PixelSession::new(&model, &mut arena, cfg).is_ok());
            let mut short = vec![0u8; need - 1];
            assert!(matches!(PixelSession::new(&model, &mut short, cfg), Err(Error::ArenaTooSmall { .. })));
        }
        let cached = model.memory_plan(&PixelSessionConfig::default()).unwrap();
        assert!(cached < model.memory_plan(&PixelSessionConfig { full_forward: true }).unwrap());
    }

    #[test]
    fn nll_sums_the_conditionals_and_sampling_is_reproducible() {
        let file = AlignedBytes::copy_of(&synthetic(&spec(4, 5, &[(5, 1), (3, 2)], true)));
        let model = PixelCnn::load(file.bytes()).unwrap();
        let mut arena = vec![0u8; model.memory_plan(&PixelSessionConfig::default()).unwrap()];
        let mut s = PixelSession::new(&model, &mut arena, PixelSessionConfig::default()).unwrap();
        let mut a = vec![0u8; 20];
        let mut b = vec![0u8; 20];
        s.sample(&mut a, 0, 1.0, &mut Pcg32::seed_from_u64(9)).unwrap();
        s.sample(&mut b, 0, 1.0, &mut Pcg32::seed_from_u64(9)).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().all(|&v| v < 5));
        let mut want = 0.0;
        s.reset();
        for &v in &a {
            let lp = s.log_probs().unwrap();
            assert!((lp.iter().map(|v| v.exp()).sum::<f64>() - 1.0).abs() < 1e-9);
            want -= lp[v as usize];
            s.push_level(v as usize).unwrap();
        }
        assert_eq!(s.nll(&a).unwrap(), want);
        // Clamped pixels are kept; bad input is refused.
        let mut c = a.clone();
        s.sample(&mut c, 7, 1.0, &mut Pcg32::seed_from_u64(1)).unwrap();
        assert_eq!(c[..7], a[..7]);
        assert_eq!(s.nll(&[0; 19]).err(), Some(Error::BadInput("image size differs from the model's")));
        assert!(s.nll(&[5; 20]).is_err());
        assert!(s.push_level(5).is_err());
        s.reset();
        for _ in 0..20 {
            s.push_level(0).unwrap();
        }
        assert!(s.params().is_err(), "a complete image has no next pixel");
    }

    #[test]
    fn every_kernel_tier_gives_the_same_params() {
        let file = AlignedBytes::copy_of(&synthetic(&spec(5, 6, &[(7, 1), (3, 2), (3, 1)], true)));
        let mut model = PixelCnn::load(file.bytes()).unwrap();
        let x = image(&model, 3);
        let mut results = Vec::new();
        for k in crate::kernels::available() {
            model.set_kernels(k);
            let mut arena = vec![0u8; model.memory_plan(&PixelSessionConfig::default()).unwrap()];
            let mut s = PixelSession::new(&model, &mut arena, PixelSessionConfig::default()).unwrap();
            results.push(cached_params(&mut s, &x));
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }
}
