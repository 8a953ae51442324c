//! Causal convolution graphs over pixels (`runtime/FORMAT.md`, "Pixel graphs"): any
//! PixelCNN whose convolutions are stored as their non-zero taps with explicit
//! `(dy, dx)` offsets, plus pointwise ops, channel slices and concatenations, an input
//! map from pixel levels to network inputs, and one of the [`heads`](super::pixelcnn::heads).
//!
//! The loader checks the graph's geometry with the rules FORMAT.md states (every tap
//! reads an earlier pixel of the image, or the current pixel of a tensor that is itself
//! strictly causal), which is what makes both ways of running it well defined and
//! equal (module [`session`]):
//!
//! - the full forward: every node over the whole image, node by node, or over a batch
//!   of whole images at once, so that each convolution is one matrix product over all
//!   their pixels (scoring; and the naive sampler: one pass per pixel);
//! - cached generation: each tensor keeps a ring of the last rows its readers' taps
//!   reach back to. Tensors that depend only on rows above ("row tensors", like a
//!   vertical stack) are computed a whole row at a time when the row starts; tensors
//!   that may depend on the current pixel or later ones of its row ("completed-row
//!   tensors", like pytorch-generative's GatedPixelCNN vertical stack, which reads its
//!   whole row and only reaches the output through taps on rows above) a whole row at a
//!   time once that row is complete; the others ("pixel tensors") one pixel at a time.
//!   An image costs about one forward pass.
//!
//! A node's description is fixed size, so the model keeps it in arrays: no allocation.

pub mod session;
#[cfg(all(test, feature = "std"))]
mod tests;
#[cfg(feature = "std")]
pub mod writer;

use crate::error::{bad, Error};
use crate::format::keys::{self, LayerNaming};
use crate::format::{ArqFile, Dtype, TensorView};
use crate::kernels::{self, Kernels};
use crate::linear::{matrix, vector, Weight};
use crate::models::pixelcnn::heads::{Head, MAX_MIXTURES};
use crate::quant::QK8;

pub use session::{GraphSession, GraphSessionConfig};

const NAMING: LayerNaming = LayerNaming::N;

/// The graph encoding this runtime reads (`pixelgraph.version`).
pub const GRAPH_VERSION: u64 = 1;
/// The most nodes a graph may have.
pub const MAX_NODES: usize = 256;
/// Tensors: the image and one per node.
pub const MAX_TENSORS: usize = MAX_NODES + 1;
/// The most channels of one tensor.
pub const MAX_CHANNELS: usize = 4096;
/// The most taps of one convolution.
pub const MAX_TAPS: usize = 1024;
/// The most levels of a pixel.
pub const MAX_LEVELS: usize = 256;
const MAX_SIDE: usize = 1024;
/// Bytes of one node record in `graph.nodes`: eight little-endian i32.
pub const NODE_BYTES: usize = 32;
/// Bytes of one tap in `n{i}.taps`: `dy`, `dx` as little-endian i16.
pub const TAP_BYTES: usize = 4;

/// What a node computes (the `op` field of its record; FORMAT.md's table).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// Taps with offsets over `a`, a `[cout, cols]` weight and a bias.
    Conv,
    Add,
    Sub,
    Mul,
    Tanh,
    Sigmoid,
    Relu,
    /// `x > 0 ? x : alpha (e^x - 1)`.
    Elu {
        alpha: f32,
    },
    /// `x * scale + shift`.
    Affine {
        scale: f32,
        shift: f32,
    },
    /// Channels `start .. start + channels` of `a`.
    Slice {
        start: usize,
    },
    /// `a`'s channels, then `b`'s.
    Concat,
    /// `elu(concat(a, -a))` (PixelCNN++).
    ConcatElu,
}

impl Op {
    /// The op code of a node record.
    pub fn code(&self) -> i32 {
        match self {
            Op::Conv => 1,
            Op::Add => 2,
            Op::Sub => 3,
            Op::Mul => 4,
            Op::Tanh => 5,
            Op::Sigmoid => 6,
            Op::Relu => 7,
            Op::Elu { .. } => 8,
            Op::Affine { .. } => 9,
            Op::Slice { .. } => 10,
            Op::Concat => 11,
            Op::ConcatElu => 12,
        }
    }

    /// Whether the op reads a second tensor `b`.
    pub fn binary(&self) -> bool {
        matches!(self, Op::Add | Op::Sub | Op::Mul | Op::Concat)
    }

    /// The op of a record (`p0`, `p1` its parameters), `None` for an unknown code.
    fn decode(code: i32, p0: i32, p1: i32) -> Option<Op> {
        let f = |v: i32| f32::from_bits(v as u32);
        Some(match code {
            1 => Op::Conv,
            2 => Op::Add,
            3 => Op::Sub,
            4 => Op::Mul,
            5 => Op::Tanh,
            6 => Op::Sigmoid,
            7 => Op::Relu,
            8 => Op::Elu { alpha: f(p0) },
            9 => Op::Affine { scale: f(p0), shift: f(p1) },
            10 => Op::Slice { start: usize::try_from(p0).ok()? },
            11 => Op::Concat,
            12 => Op::ConcatElu,
            _ => return None,
        })
    }
}

/// A convolution: its tap table and matrix.
#[derive(Clone, Copy)]
pub(crate) struct Conv<'a> {
    /// `TAP_BYTES` per tap.
    taps: &'a [u8],
    pub(crate) w: Weight<'a>,
    pub(crate) b: &'a [f32],
    /// `taps * cin` rounded up to a multiple of 32.
    pub(crate) cols: usize,
}

impl Conv<'_> {
    pub(crate) fn n_taps(&self) -> usize {
        self.taps.len() / TAP_BYTES
    }

    /// `(dy, dx)` of tap `t`.
    pub(crate) fn tap(&self, t: usize) -> (isize, isize) {
        let b = &self.taps[t * TAP_BYTES..(t + 1) * TAP_BYTES];
        (i16::from_le_bytes([b[0], b[1]]) as isize, i16::from_le_bytes([b[2], b[3]]) as isize)
    }
}

/// One node, validated.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    pub(crate) op: Op,
    /// Input tensors (`b` only for binary ops).
    pub(crate) a: usize,
    pub(crate) b: usize,
    pub(crate) conv: Option<Conv<'a>>,
}

/// When cached generation computes a tensor (FORMAT.md, "Pixel graphs").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// Depends only on rows above: a whole row when the row starts.
    #[default]
    Row,
    /// Depends on earlier pixels of the current row: one pixel at a time (and the image).
    Pixel,
    /// May depend on the current pixel or later ones of its row: a whole row once that
    /// row is complete (when the next one starts). Only rows below may read it.
    CompletedRow,
}

/// Per tensor facts the loader derives (tensor 0 is the image, tensor `i + 1` node `i`'s
/// output).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TensorInfo {
    pub(crate) channels: usize,
    /// The last image pixel, in raster order, its value at `(r, c)` may depend on, as an
    /// offset `(dy, dx)` from `(r, c)` (compared row first, then column). `dx` is not
    /// clipped to the image, so it only ever over-states the reach.
    pub(crate) reach: (isize, isize),
    pub(crate) schedule: Schedule,
    /// Rows of it cached generation keeps: 1 + the farthest row up any tap reads it.
    pub(crate) ring_rows: usize,
}

/// Hyperparameters from the `pixelgraph.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphConfig {
    pub height: usize,
    pub width: usize,
    pub head: Head,
    pub levels: usize,
    pub n_nodes: usize,
}

impl GraphConfig {
    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Head parameters per pixel (`P`).
    pub fn n_params(&self) -> usize {
        self.head.n_params(self.levels)
    }

    fn from_file(f: &ArqFile<'_>) -> Result<Self, Error> {
        let u = |k: &'static str| -> Result<usize, Error> {
            usize::try_from(f.meta_u64(k)?).map_err(|_| Error::BadHyperparameter(k))
        };
        let check = |ok: bool, what| if ok { Ok(()) } else { Err(Error::BadHyperparameter(what)) };
        check(f.meta_u64(keys::PIXELGRAPH_VERSION)? == GRAPH_VERSION, "pixelgraph.version (this runtime reads 1)")?;
        let (height, width) = (u(keys::PIXELGRAPH_HEIGHT)?, u(keys::PIXELGRAPH_WIDTH)?);
        check((1..=MAX_SIDE).contains(&height) && (1..=MAX_SIDE).contains(&width), "pixelgraph.height/width")?;
        check(u(keys::PIXELGRAPH_CHANNELS)? == 1, "pixelgraph.channels (only 1 in graph version 1)")?;
        let levels = u(keys::PIXELGRAPH_LEVELS)?;
        check((2..=MAX_LEVELS).contains(&levels), "pixelgraph.levels (2..=256)")?;
        let mixtures = || -> Result<(usize, f32), Error> {
            let k = u(keys::PIXELGRAPH_MIXTURES)?;
            check((1..=MAX_MIXTURES).contains(&k), "pixelgraph.mixtures (1..=64)")?;
            let min = f.meta_f32(keys::PIXELGRAPH_MIN_LOG_SCALE)?;
            check(min.is_finite(), keys::PIXELGRAPH_MIN_LOG_SCALE)?;
            Ok((k, min))
        };
        let head = match f.meta_str(keys::PIXELGRAPH_HEAD)? {
            keys::HEAD_CATEGORICAL => Head::Categorical,
            keys::HEAD_BERNOULLI => Head::Bernoulli,
            keys::HEAD_LOGISTIC_MIXTURE => {
                let (k, min_log_scale) = mixtures()?;
                Head::LogisticMixture { k, min_log_scale }
            }
            _ => return Err(Error::BadHyperparameter("pixelgraph.head (categorical, bernoulli, logistic_mixture)")),
        };
        if head == Head::Bernoulli {
            check(levels == 2, "pixelgraph.levels (2 for a Bernoulli head)")?;
        }
        let nodes = f.find("graph.nodes").map(|(_, t)| t).ok_or(bad(NAMING, "graph.nodes", None, "missing"))?;
        if nodes.dtype != Dtype::U8 || nodes.data.len() % NODE_BYTES != 0 {
            return Err(bad(NAMING, "graph.nodes", None, "must be u8 records of 32 bytes"));
        }
        let n_nodes = nodes.data.len() / NODE_BYTES;
        check((1..=MAX_NODES).contains(&n_nodes), "graph.nodes (1..=256 nodes)")?;
        Ok(GraphConfig { height, width, head, levels, n_nodes })
    }
}

/// `taps * cin` rounded up to whole q8 blocks.
pub fn padded_cols(taps: usize, cin: usize) -> usize {
    (taps * cin).div_ceil(QK8) * QK8
}

/// A loaded pixel graph: validated views into the file's bytes.
pub struct PixelGraph<'a> {
    file: ArqFile<'a>,
    cfg: GraphConfig,
    /// Network input of each level.
    input_map: &'a [f32],
    nodes: [Option<Node<'a>>; MAX_NODES],
    tensors: [TensorInfo; MAX_TENSORS],
    kernels: &'static Kernels,
}

/// Field `i` of node record `rec`.
fn field(rec: &[u8], i: usize) -> i32 {
    i32::from_le_bytes([rec[4 * i], rec[4 * i + 1], rec[4 * i + 2], rec[4 * i + 3]])
}

impl<'a> PixelGraph<'a> {
    /// Validates `bytes` (64-byte aligned) as a pixel-graph `.arq` file.
    pub fn load(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::from_file(ArqFile::parse(bytes)?)
    }

    pub fn from_file(file: ArqFile<'a>) -> Result<Self, Error> {
        if file.meta(keys::ARCHITECTURE).and_then(|v| v.as_str()) != Some(keys::ARCH_PIXELGRAPH) {
            return Err(Error::UnsupportedArchitecture);
        }
        let cfg = GraphConfig::from_file(&file)?;
        let input_map = global(&file, "graph.input_map")?
            .as_f32()
            .filter(|m| m.len() == cfg.levels && m.iter().all(|v| v.is_finite()))
            .ok_or(bad(NAMING, "graph.input_map", None, "must be f32, one finite value per level"))?;
        let mut g = PixelGraph {
            file,
            cfg,
            input_map,
            nodes: [None; MAX_NODES],
            tensors: [TensorInfo::default(); MAX_TENSORS],
            kernels: kernels::best(),
        };
        g.tensors[0] = TensorInfo { channels: 1, reach: (0, 0), schedule: Schedule::Pixel, ring_rows: 1 };
        let records = global(&file, "graph.nodes")?.data;
        for i in 0..cfg.n_nodes {
            g.load_node(i, &records[i * NODE_BYTES..(i + 1) * NODE_BYTES])?;
        }
        if g.tensors[cfg.n_nodes].channels != cfg.n_params() {
            return Err(Error::BadHyperparameter("the last node's channels differ from the head's parameters"));
        }
        // The head's input is read pixel by pixel, before the pixel is known.
        if g.tensors[cfg.n_nodes].schedule == Schedule::CompletedRow {
            return Err(Error::BadHyperparameter("graph: the output depends on the current pixel or a later one"));
        }
        crate::trace::info!(
            "arq: pixelgraph model {}x{}, {} levels, {} nodes, kernels {}",
            cfg.height,
            cfg.width,
            cfg.levels,
            cfg.n_nodes,
            g.kernels.name
        );
        Ok(g)
    }

    /// Checks node `i` against FORMAT.md's rules and records it and its output tensor.
    fn load_node(&mut self, i: usize, rec: &[u8]) -> Result<(), Error> {
        let check = |ok: bool, what| if ok { Ok(()) } else { Err(Error::BadHyperparameter(what)) };
        let op = Op::decode(field(rec, 0), field(rec, 4), field(rec, 5))
            .ok_or(Error::BadHyperparameter("graph.nodes: unknown op"))?;
        let t = i + 1;
        let input = |v: i32| usize::try_from(v).ok().filter(|&x| x < t);
        let a = input(field(rec, 1)).ok_or(Error::BadHyperparameter("graph.nodes: input is not an earlier tensor"))?;
        let b = if op.binary() {
            input(field(rec, 2)).ok_or(Error::BadHyperparameter("graph.nodes: input is not an earlier tensor"))?
        } else {
            a
        };
        let channels = usize::try_from(field(rec, 3)).unwrap_or(0);
        check((1..=MAX_CHANNELS).contains(&channels), "graph.nodes: channels (1..=4096)")?;
        let (ia, ib) = (self.tensors[a], self.tensors[b]);
        // Only a convolution may read the image: its other readers would need the
        // current pixel's value before it is known.
        check(op == Op::Conv || (a != 0 && b != 0), "graph.nodes: only a convolution may read the image")?;
        let want = match op {
            Op::Conv => channels,
            Op::Add | Op::Sub | Op::Mul => {
                check(ia.channels == ib.channels, "graph.nodes: elementwise inputs differ in channels")?;
                ia.channels
            }
            Op::Slice { start } => {
                check(
                    start.checked_add(channels).is_some_and(|e| e <= ia.channels),
                    "graph.nodes: slice out of range",
                )?;
                channels
            }
            Op::Concat => ia.channels + ib.channels,
            Op::ConcatElu => 2 * ia.channels,
            _ => ia.channels,
        };
        check(channels == want, "graph.nodes: channels differ from what the op gives")?;
        // Pointwise: the later reach of the two; a completed-row input makes the output
        // one too.
        let mut reach = ia.reach.max(ib.reach);
        let mut reads_completed = ia.schedule == Schedule::CompletedRow || ib.schedule == Schedule::CompletedRow;
        let conv = if op == Op::Conv {
            let conv = self.load_conv(i, ia.channels, channels)?;
            reach = (isize::MIN, 0);
            reads_completed = false;
            for k in 0..conv.n_taps() {
                let (dy, dx) = conv.tap(k);
                self.check_tap(dy, dx)?;
                // Lexicographic order is kept by adding an offset, so the latest pixel
                // a tap reaches is the tap plus the input's latest.
                reach = reach.max((ia.reach.0 + dy, ia.reach.1.saturating_add(dx)));
                reads_completed |= dy == 0 && ia.schedule == Schedule::CompletedRow;
                let up = dy.unsigned_abs();
                self.tensors[a].ring_rows = self.tensors[a].ring_rows.max(up + 1);
            }
            Some(conv)
        } else {
            None
        };
        let schedule = if reach.0 < 0 {
            Schedule::Row
        } else if reach.1 >= 0 || reads_completed {
            Schedule::CompletedRow
        } else {
            Schedule::Pixel
        };
        self.tensors[t] = TensorInfo { channels, reach, schedule, ring_rows: 1 };
        self.nodes[i] = Some(Node { op, a, b, conv });
        Ok(())
    }

    /// FORMAT.md's geometry rule for one tap on tensor `a`: within the image, never
    /// below. Whether it sees the current pixel is the reach's business: only the
    /// output must not.
    fn check_tap(&self, dy: isize, dx: isize) -> Result<(), Error> {
        let (h, w) = (self.cfg.height as isize, self.cfg.width as isize);
        if dy > 0 || dy <= -h || dx.abs() >= w {
            return Err(Error::BadHyperparameter("graph: a tap lies below the pixel or outside the image"));
        }
        Ok(())
    }

    /// Node `i`'s convolution tensors: `n{i}.taps`, `n{i}.weight`, `n{i}.bias`.
    fn load_conv(&self, i: usize, cin: usize, cout: usize) -> Result<Conv<'a>, Error> {
        let li = Some(i as u32);
        let find = |role: &'static str| {
            let mut name = heapless_name();
            let _ = core::fmt::Write::write_fmt(&mut name, format_args!("n{i}.{role}"));
            self.file.find(name.as_str()).map(|(_, t)| t).ok_or(bad(NAMING, role, li, "missing"))
        };
        let taps = find("taps")?;
        if taps.dtype != Dtype::U8 || taps.data.len() % TAP_BYTES != 0 {
            return Err(bad(NAMING, "taps", li, "must be u8, 4 bytes per tap"));
        }
        let n = taps.data.len() / TAP_BYTES;
        if !(1..=MAX_TAPS).contains(&n) {
            return Err(bad(NAMING, "taps", li, "must hold 1..=1024 taps"));
        }
        let cols = padded_cols(n, cin);
        let w = matrix(&find("weight")?, NAMING, "weight", li, cout, cols)?;
        let b = vector(&find("bias")?, NAMING, "bias", li, cout)?;
        Ok(Conv { taps: taps.data, w, b, cols })
    }

    pub fn config(&self) -> &GraphConfig {
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

    /// The network input of a level.
    pub fn value_of_level(&self, level: usize) -> f32 {
        self.input_map[level]
    }

    pub(crate) fn node(&self, i: usize) -> Node<'a> {
        match self.nodes[i] {
            Some(n) => n,
            None => unreachable!("node {i} validated at load"),
        }
    }

    pub(crate) fn tensor(&self, t: usize) -> TensorInfo {
        self.tensors[t]
    }

    /// Columns of the widest convolution's patch.
    pub(crate) fn max_cols(&self) -> usize {
        (0..self.cfg.n_nodes).filter_map(|i| self.node(i).conv.map(|c| c.cols)).max().unwrap_or(QK8)
    }
}

/// A name buffer for `n{i}.{role}` without allocation.
fn heapless_name() -> NameBuf {
    NameBuf { buf: [0; 32], len: 0 }
}

struct NameBuf {
    buf: [u8; 32],
    len: usize,
}

impl NameBuf {
    fn as_str(&self) -> &str {
        // Only `write_str` fills the buffer, with whole UTF-8 strings.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl core::fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(core::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn global<'a>(file: &ArqFile<'a>, name: &'static str) -> Result<TensorView<'a>, Error> {
    file.find(name).map(|(_, t)| t).ok_or(bad(NAMING, name, None, "missing"))
}
