//! ONNX → `.arq` for gated PixelCNNs (`runtime/FORMAT.md`, "PixelCNN models"), and
//! tract-onnx as an independent f32 reference ([`tract_forward`]).
//!
//! The importer reads the protobuf with tract-onnx's prost types and interprets the
//! graph symbolically. Walking the nodes in file order (ONNX requires topological
//! order), every computed tensor gets a role in the gated PixelCNN (the input, layer
//! `l`'s vconv output, the first half of a gate, the down-shifted v2h, ...) from its
//! operator and the roles of its inputs, together with its channel count and a spatial
//! *frame*: where Slice and Pad moved and cropped it relative to the image. Every
//! convolution's taps, through its pads and its input's frame, must be exactly the
//! taps FORMAT.md gives that convolution, which is what makes the model causal; the
//! runtime then computes the same function. Node names are never used. The first node
//! that fits no role stops the import with one line naming it (`node 13 (Relu
//! "name"): ...`, nodes counted from 0 in file order).
//!
//! Accepted, per gated layer `l` with odd kernel `k`, dilation `d`, `m = k / 2`
//! (pads `[top, left, bottom, right]`; explicit zero Pad nodes before a Conv count as
//! its pads):
//!
//! - vconv: Conv `(m+1) x k`, dilations `[d, d]`, pads `[d m, d m, 0, d m]`, on the
//!   input (layer 0) or the previous layer's vertical gate; `2C` outputs.
//! - hconv: layer 0: Conv `1 x m`, pads `[0, d m, 0, 0]` on the input with its last
//!   `d` columns sliced off; later layers: Conv `1 x (m+1)`, pads `[0, d m, 0, 0]` on
//!   the previous horizontal stack; `2C` outputs.
//! - v2h: 1x1 Conv on the vconv output, then shifted down one row (Slice off the last
//!   row and Pad one zero row on top, either order), added to the hconv output.
//! - gates: `Mul(Tanh(a[:, :n]), Sigmoid(a[:, n:]))` for `2n` channels, the halves
//!   taken by channel Slices or a Split; the vertical gate of the last layer may be
//!   absent (it is unused).
//! - hout (layers >= 1): 1x1 Conv on the horizontal gate, added to the previous
//!   horizontal stack (residual).
//! - output: 1x1 Conv out1 (`2 OH`) → gate → 1x1 Conv out2 (`P`), the one graph output.
//!
//! Conv: group 1, strides 1, bias optional. Identity and Constant nodes are allowed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use arq::heads::{Head, MAX_MIXTURES};
use arq::quant::QK8;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use crate::output::write_validated;
use crate::quantize::{quantize_weights_q8, Quant, TensorError};
use crate::report;

/// Runtime limits (`runtime/src/arch/pixelcnn.rs`), checked here to fail early.
const MAX_LAYERS: usize = arq::arch::pixelcnn::MAX_LAYERS;
const MAX_LEVELS: usize = arq::arch::pixelcnn::MAX_LEVELS;
const MAX_SIDE: usize = 1024;
const MAX_CHANNELS: usize = 4096;
const MAX_KERNEL: usize = 31;
const MAX_DILATION: usize = 64;
/// Larger pads (Conv or Pad) are refused before any arithmetic on them.
const MAX_PAD: i64 = 1 << 20;
/// `min_log_scale` of mixture heads when neither the model nor `--head` gives one
/// (PixelCNN++'s clamp).
pub const DEFAULT_MIN_LOG_SCALE: f32 = -7.0;

// ---------------------------------------------------------------------------------------
// Heads

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
/// out2's `p` channels.
fn resolve_head(meta: &HashMap<String, String>, spec: Option<&HeadSpec>, p: usize) -> Result<(Head, usize)> {
    let meta_usize = |key: &str| -> Result<Option<usize>> {
        meta.get(key)
            .map(|v| v.trim().parse::<usize>().map_err(|_| anyhow!("model metadata {key} = '{v}' is not a count")))
            .transpose()
    };
    let meta_levels = meta_usize("arq.levels")?;
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
        None => {
            let name = meta.get("arq.head").map(|s| s.trim()).ok_or_else(|| {
                anyhow!(
                    "the model has no arq.head metadata: pass --head (categorical, bernoulli, logistic_mixture:K, \
                     gaussian_mixture:K)"
                )
            })?;
            let mixture = || -> Result<(usize, f32)> {
                let k = meta_usize("arq.mixtures")?
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
            };
            let head = match name {
                "categorical" => Head::Categorical,
                "bernoulli" => Head::Bernoulli,
                "logistic_mixture" => {
                    let (k, min_log_scale) = mixture()?;
                    Head::LogisticMixture { k, min_log_scale }
                }
                "gaussian_mixture" => {
                    let (k, min_log_scale) = mixture()?;
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
            (head, levels)
        }
    };
    let hname = head.name();
    match head {
        Head::Categorical if levels != p => {
            bail!("categorical head with {levels} levels, but out2 has {p} output channels (one logit per level)")
        }
        Head::Bernoulli if p != 1 => bail!("bernoulli head, but out2 has {p} output channels (expected 1 logit)"),
        Head::Bernoulli if levels != 2 => bail!("bernoulli head with {levels} levels (expected 2)"),
        Head::LogisticMixture { k, .. } | Head::GaussianMixture { k, .. } if p != 3 * k => {
            bail!("{hname} head with K = {k}, but out2 has {p} output channels (expected 3K = {})", 3 * k)
        }
        Head::GaussianMixture { .. } if levels != 0 => {
            bail!("gaussian_mixture head with {levels} levels (it models continuous values: 0)")
        }
        Head::Categorical | Head::LogisticMixture { .. } if !(2..=MAX_LEVELS).contains(&levels) => {
            bail!("{hname} head with {levels} levels (expected 2..={MAX_LEVELS})")
        }
        _ => {}
    }
    Ok((head, levels))
}

// ---------------------------------------------------------------------------------------
// The model

/// One convolution's f32 parameters in ONNX layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvWeights {
    /// `[out_channels, in_channels, kernel_height, kernel_width]`.
    pub shape: [usize; 4],
    /// Row-major in `shape`.
    pub weight: Vec<f32>,
    /// `out_channels` values (zeros where the Conv had none).
    pub bias: Vec<f32>,
}

impl ConvWeights {
    /// The `.arq` matrix: row `o`, column `t * cin + ci` (taps `t` in kernel raster
    /// order), zero-padded to a multiple of 32 columns. Returns `(rows, cols, values)`.
    pub fn to_matrix(&self) -> (usize, usize, Vec<f32>) {
        let [co, ci, kh, kw] = self.shape;
        let taps = kh * kw;
        let cols = (taps * ci).div_ceil(QK8) * QK8;
        let mut m = vec![0.0f32; co * cols];
        for o in 0..co {
            for c in 0..ci {
                for t in 0..taps {
                    m[o * cols + t * ci + c] = self.weight[(o * ci + c) * taps + t];
                }
            }
        }
        (co, cols, m)
    }
}

/// One gated layer: kernel, dilation and convolutions.
#[derive(Clone, Debug, PartialEq)]
pub struct GatedLayer {
    /// Odd kernel size `k`.
    pub kernel: usize,
    pub dilation: usize,
    pub vconv: ConvWeights,
    pub hconv: ConvWeights,
    pub v2h: ConvWeights,
    /// Layers >= 1 only.
    pub hout: Option<ConvWeights>,
}

/// A gated PixelCNN read from ONNX: hyperparameters and f32 weights.
#[derive(Clone, Debug)]
pub struct PixelCnnSource {
    /// The model name (`general.name`): the file stem.
    pub name: String,
    /// The file it was read from.
    pub source: PathBuf,
    pub height: usize,
    pub width: usize,
    /// `C`: channels of both stacks.
    pub channels: usize,
    /// `OH`: channels of the output gate.
    pub out_hidden: usize,
    pub layers: Vec<GatedLayer>,
    pub out1: ConvWeights,
    pub out2: ConvWeights,
    pub head: Head,
    /// Discrete levels per pixel (0 for the Gaussian mixture).
    pub levels: usize,
}

/// Parses `path` as an ONNX model (one clear line when it is not one).
pub(crate) fn read_proto(path: &Path) -> Result<pb::ModelProto> {
    let meta = std::fs::metadata(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    if meta.len() == 0 {
        bail!("{}: not an ONNX model (empty file)", path.display());
    }
    let proto = tract_onnx::onnx().proto_model_for_path(path).map_err(|e| {
        let cause = e.root_cause().to_string();
        anyhow!("{}: not an ONNX model (protobuf: {})", path.display(), cause.lines().next().unwrap_or(""))
    })?;
    match &proto.graph {
        Some(g) if proto.ir_version > 0 && !g.node.is_empty() => Ok(proto),
        Some(_) if proto.ir_version > 0 => bail!("{}: the ONNX graph has no nodes", path.display()),
        _ => bail!("{}: not an ONNX model (no IR version or no graph)", path.display()),
    }
}

impl PixelCnnSource {
    /// Reads a gated PixelCNN from an ONNX file; `head` overrides the model's
    /// `arq.head`/`arq.levels`/`arq.mixtures`/`arq.min_log_scale` metadata.
    pub fn from_onnx(path: &Path, head: Option<HeadSpec>) -> Result<Self> {
        Self::from_proto(path, &read_proto(path)?, head)
    }

    /// [`PixelCnnSource::from_onnx`] for a model already read from `path`.
    fn from_proto(path: &Path, proto: &pb::ModelProto, head: Option<HeadSpec>) -> Result<Self> {
        let at = |e: String| anyhow!("{}: {e}", path.display());
        let graph = proto.graph.as_ref().expect("checked by read_proto");
        let parsed = Walker::run(graph).map_err(at)?;
        let meta: HashMap<String, String> =
            proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        let p = parsed.out2.shape[0];
        let (head, levels) = resolve_head(&meta, head.as_ref(), p).map_err(|e| at(e.to_string()))?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(PixelCnnSource {
            name,
            source: path.to_path_buf(),
            height: parsed.height,
            width: parsed.width,
            channels: parsed.channels,
            out_hidden: parsed.out_hidden,
            layers: parsed.layers,
            out1: parsed.out1,
            out2: parsed.out2,
            head,
            levels,
        })
    }

    /// `"7:1,3:1,3:2,..."`: the `pixelcnn.layers` metadata.
    pub fn layers_string(&self) -> String {
        self.layers.iter().map(|l| format!("{}:{}", l.kernel, l.dilation)).collect::<Vec<_>>().join(",")
    }

    /// One line: size, channels, layers, head.
    pub fn describe(&self) -> String {
        let head = match self.head {
            Head::LogisticMixture { k, min_log_scale } | Head::GaussianMixture { k, min_log_scale } => {
                format!("{}, K = {k}, min_log_scale {min_log_scale}", self.head.name())
            }
            _ => self.head.name().to_string(),
        };
        format!(
            "gated PixelCNN {}x{}, C = {}, OH = {}, {} layers ({}), head {head}, {} levels",
            self.height,
            self.width,
            self.channels,
            self.out_hidden,
            self.layers.len(),
            self.layers_string(),
            self.levels
        )
    }

    /// The convolutions in `.arq` order, with their tensor name prefixes.
    pub fn convs(&self) -> Vec<(String, &ConvWeights)> {
        let mut v = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            v.push((format!("l{l}.vconv"), &layer.vconv));
            v.push((format!("l{l}.hconv"), &layer.hconv));
            v.push((format!("l{l}.v2h"), &layer.v2h));
            if let Some(h) = &layer.hout {
                v.push((format!("l{l}.hout"), h));
            }
        }
        v.push(("out1".into(), &self.out1));
        v.push(("out2".into(), &self.out2));
        v
    }

    /// Serializes the model with q8 or f32 convolution weights (biases stay f32);
    /// returns the file bytes and each weight matrix's relative quantization error
    /// (q8 only).
    pub fn to_arq(&self, quant: Quant) -> Result<(Vec<u8>, Vec<TensorError>)> {
        if quant == Quant::Q4 {
            bail!("q4 is for text models: PixelCNN files hold q8 or f32 convolutions (use --quant q8 or f32)");
        }
        let mut w = ArqWriter::new();
        let file_name = self.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut meta = vec![
            ("arq.architecture", Meta::Str("pixelcnn".into())),
            ("arq.quant", Meta::Str(quant.name().into())),
            ("general.name", Meta::Str(self.name.clone())),
            ("general.source", Meta::Str(file_name)),
            ("pixelcnn.height", Meta::U64(self.height as u64)),
            ("pixelcnn.width", Meta::U64(self.width as u64)),
            ("pixelcnn.in_channels", Meta::U64(1)),
            ("pixelcnn.channels", Meta::U64(self.channels as u64)),
            ("pixelcnn.out_hidden", Meta::U64(self.out_hidden as u64)),
            ("pixelcnn.layers", Meta::Str(self.layers_string())),
            ("pixelcnn.head", Meta::Str(self.head.name().into())),
            ("pixelcnn.levels", Meta::U64(self.levels as u64)),
        ];
        if let Head::LogisticMixture { k, min_log_scale } | Head::GaussianMixture { k, min_log_scale } = self.head {
            meta.push(("pixelcnn.mixtures", Meta::U64(k as u64)));
            meta.push(("pixelcnn.min_log_scale", Meta::F32(min_log_scale)));
        }
        for (k, v) in meta {
            w.meta(k, v);
        }
        let mut errors = Vec::new();
        for (name, conv) in self.convs() {
            let (rows, cols, m) = conv.to_matrix();
            let (dtype, data) = if quant == Quant::Q8 {
                let blocks = quantize_weights_q8(&m);
                let mut deq = vec![0.0f32; m.len()];
                arq::quant::dequantize_row_q8(&blocks, &mut deq);
                errors.push((name.clone(), report::relative_error(&m, &deq)));
                (Dtype::Q8, bytemuck::cast_slice(&blocks).to_vec())
            } else {
                (Dtype::F32, bytemuck::cast_slice(&m).to_vec())
            };
            w.tensor(&format!("{name}.weight"), dtype, &[rows as u64, cols as u64], data)?;
            w.tensor(&format!("{name}.bias"), Dtype::F32, &[rows as u64], bytemuck::cast_slice(&conv.bias).to_vec())?;
        }
        let mut out = Vec::new();
        w.write(&mut out)?;
        Ok((out, errors))
    }
}

// ---------------------------------------------------------------------------------------
// Conversion

/// Options of `arq convert` for an ONNX model.
#[derive(Clone, Debug)]
pub struct OnnxConvertOptions {
    /// PixelCNN: `Q8` or `F32` (`Q4` is refused); GPT-2: any.
    pub quant: Quant,
    /// Overwrite an existing output.
    pub force: bool,
    /// Overrides a PixelCNN's head metadata (refused for a GPT-2).
    pub head: Option<HeadSpec>,
}

/// What [`convert_onnx`] wrote.
#[derive(Clone, Debug)]
pub struct OnnxConvertSummary {
    pub bytes: u64,
    /// Relative error of each q8 weight matrix (empty for f32).
    pub tensor_errors: Vec<TensorError>,
    /// [`PixelCnnSource::describe`] or [`crate::onnx_gpt2::Gpt2Source::describe`].
    pub description: String,
}

/// The model metadata `arq.architecture` of an ONNX file, if it has one.
pub fn onnx_architecture(path: &Path) -> Result<Option<String>> {
    Ok(architecture(&read_proto(path)?))
}

fn architecture(proto: &pb::ModelProto) -> Option<String> {
    proto.metadata_props.iter().find(|e| e.key == "arq.architecture").map(|e| e.value.trim().to_string())
}

/// `arq convert` for an ONNX model: a GPT-2 when its metadata says
/// `arq.architecture = gpt2` ([`crate::onnx_gpt2`]), else a gated PixelCNN. Reads,
/// checks, writes atomically and re-validates with the runtime's loader. Never leaves a
/// partial output, never touches the input; an existing output needs `force`.
pub fn convert_onnx(input: &Path, out: &Path, opts: &OnnxConvertOptions) -> Result<OnnxConvertSummary> {
    crate::output::check_paths(input, out, opts.force)?;
    let proto = read_proto(input)?;
    if architecture(&proto).as_deref() == Some("gpt2") {
        if opts.head.is_some() {
            bail!("{}: --head and --levels apply to PixelCNN models; this is a gpt2 text model", input.display());
        }
        return crate::onnx_gpt2::convert_proto(input, &proto, out, opts.quant);
    }
    if opts.quant == Quant::Q4 {
        bail!("q4 is for text models: PixelCNN files hold q8 or f32 convolutions (use --quant q8 or f32)");
    }
    let src = PixelCnnSource::from_proto(input, &proto, opts.head)?;
    let (bytes, tensor_errors) = src.to_arq(opts.quant)?;
    write_validated(&bytes, out)?;
    Ok(OnnxConvertSummary { bytes: bytes.len() as u64, tensor_errors, description: src.describe() })
}

// ---------------------------------------------------------------------------------------
// tract reference

/// Runs the ONNX model in f32 with tract on `n` images of network inputs (`x_in`,
/// `n * H * W` values, NCHW with one channel) and returns its output, NCHW flattened.
pub fn tract_forward(path: &Path, x_in: &[f32], n: usize) -> Result<Vec<f32>> {
    use tract_onnx::prelude::{tvec, DatumExt, InferenceModelExt, IntoRunnable, IntoTValue, Tensor};
    // The exports' value_info name the batch dimension symbolically; the input fact
    // here is concrete, so tract infers every shape itself.
    let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    let proto = read_proto(path)?;
    let graph = proto.graph.as_ref().expect("checked by read_proto");
    let (_, h, w) = graph_input(graph).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let (h, w) = (h as usize, w as usize);
    if n == 0 || x_in.len() != n * h * w {
        bail!("tract_forward: {} inputs for {n} images of {h}x{w}", x_in.len());
    }
    let err = |e: anyhow::Error| anyhow!("{}: tract: {e:#}", path.display());
    let model = onnx
        .model_for_proto_model(&proto)
        .and_then(|m| m.with_input_fact(0, f32::fact([n, 1, h, w]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(err)?;
    let input = Tensor::from_shape(&[n, 1, h, w], x_in).map_err(err)?;
    let out = model.run(tvec!(input.into_tvalue())).map_err(err)?;
    let view = out[0].to_plain_array_view::<f32>().map_err(err)?;
    Ok(view.iter().copied().collect())
}

// ---------------------------------------------------------------------------------------
// The graph walker

/// A decoded constant (initializer or Constant node).
#[derive(Clone, Debug)]
pub(crate) enum Const {
    F32 { dims: Vec<usize>, data: Vec<f32> },
    I64 { data: Vec<i64> },
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| c.try_into().expect("chunk of N"))
}

/// Decodes a TensorProto (f32/f64/f16/bf16 or i64/i32; raw or typed fields).
pub(crate) fn decode_tensor(t: &pb::TensorProto) -> std::result::Result<Const, String> {
    let name = &t.name;
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(format!("tensor '{name}' keeps its data in an external file, which is not supported"));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor '{name}' has a negative dimension")))
        .collect::<std::result::Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("tensor '{name}' has an impossible shape {:?}", t.dims))?;
    let raw = &t.raw_data;
    let c = match t.data_type {
        1 => {
            let data: Vec<f32> = if !raw.is_empty() {
                le_chunks::<4>(raw).map(f32::from_le_bytes).collect()
            } else {
                t.float_data.clone()
            };
            Const::F32 { dims, data }
        }
        11 => {
            let data: Vec<f32> = if !raw.is_empty() {
                le_chunks::<8>(raw).map(|b| f64::from_le_bytes(b) as f32).collect()
            } else {
                t.double_data.iter().map(|&v| v as f32).collect()
            };
            Const::F32 { dims, data }
        }
        10 | 16 => {
            let bits: Vec<u16> = if !raw.is_empty() {
                le_chunks::<2>(raw).map(u16::from_le_bytes).collect()
            } else {
                t.int32_data.iter().map(|&v| v as u16).collect()
            };
            let data = if t.data_type == 10 {
                bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect()
            } else {
                bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect()
            };
            Const::F32 { dims, data }
        }
        7 => {
            let data: Vec<i64> = if !raw.is_empty() {
                le_chunks::<8>(raw).map(i64::from_le_bytes).collect()
            } else {
                t.int64_data.clone()
            };
            Const::I64 { data }
        }
        6 => {
            let data: Vec<i64> = if !raw.is_empty() {
                le_chunks::<4>(raw).map(|b| i32::from_le_bytes(b) as i64).collect()
            } else {
                t.int32_data.iter().map(|&v| v as i64).collect()
            };
            Const::I64 { data }
        }
        other => return Err(format!("tensor '{name}' has ONNX data type {other}, which is not supported here")),
    };
    let len = match &c {
        Const::F32 { data, .. } => data.len(),
        Const::I64 { data, .. } => data.len(),
    };
    if len != count {
        return Err(format!("tensor '{name}' holds {len} values for its shape {:?}", t.dims));
    }
    Ok(c)
}

/// The graph's one real input (not an initializer): name, height, width.
fn graph_input(g: &pb::GraphProto) -> std::result::Result<(String, i64, i64), String> {
    use pb::tensor_shape_proto::dimension::Value as D;
    use pb::type_proto::Value as T;
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = g.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect();
    let [x] = inputs.as_slice() else {
        return Err(format!("the graph has {} inputs; a PixelCNN has one, the image (N, 1, H, W)", inputs.len()));
    };
    let name = &x.name;
    let Some(T::TensorType(tt)) = x.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(format!("input '{name}' is not a tensor"));
    };
    if tt.elem_type != 1 {
        return Err(format!("input '{name}' has ONNX data type {}; expected float32", tt.elem_type));
    }
    let dims: Vec<Option<i64>> = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(D::DimValue(v)) => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let show = |d: &[Option<i64>]| {
        let v: Vec<String> = d.iter().map(|x| x.map_or("?".into(), |x| x.to_string())).collect();
        format!("({})", v.join(", "))
    };
    if dims.len() != 4 {
        return Err(format!("input '{name}' has shape {}; expected (N, 1, H, W)", show(&dims)));
    }
    if dims[1] != Some(1) {
        return Err(format!("input '{name}' has shape {}: only one input channel is supported", show(&dims)));
    }
    match (dims[2], dims[3]) {
        (Some(h), Some(w)) if (1..=MAX_SIDE as i64).contains(&h) && (1..=MAX_SIDE as i64).contains(&w) => {
            Ok((name.clone(), h, w))
        }
        _ => Err(format!("input '{name}' has shape {}: height and width must be fixed, 1..={MAX_SIDE}", show(&dims))),
    }
}

/// One spatial axis of a tensor relative to the image axis it comes from: tensor
/// position `i` holds image position `i + off` where that lies in `v0..v1`, else 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Axis {
    len: i64,
    off: i64,
    v0: i64,
    v1: i64,
}

impl Axis {
    fn full(n: i64) -> Self {
        Axis { len: n, off: 0, v0: 0, v1: n }
    }

    /// The tensor's positions `start..end` (outside `0..len`: zeros).
    fn window(self, start: i64, end: i64) -> Self {
        Axis {
            len: end - start,
            off: self.off + start,
            v0: self.v0.max(self.off + start.max(0)),
            v1: self.v1.min(self.off + end.min(self.len)),
        }
    }

    /// Whether a convolution along this axis with kernel `k`, dilation `d`, pads
    /// `pb`/`pe` gives `n` outputs whose tap `i` reads image position `out + first + d i`
    /// (zero outside the image), exactly.
    fn conv_reads(self, n: i64, k: i64, d: i64, pb: i64, pe: i64, first: i64) -> bool {
        if self.len + pb + pe - d * (k - 1) != n || self.off - pb != first {
            return false;
        }
        let lo = first.max(0);
        let hi = (first + d * (k - 1) + n).min(n);
        lo >= hi || (self.v0 <= lo && self.v1 >= hi)
    }
}

/// Rows and columns.
type Frame = [Axis; 2];

/// The role of a computed tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Input,
    VPre(usize),
    V(usize),
    HConv(usize),
    V2h(usize),
    HPre(usize),
    /// Layer `l >= 1`'s horizontal gate (layer 0's is its output `H(0)`).
    G(usize),
    HOut(usize),
    H(usize),
    Out1,
    OutGate,
    Out2,
    /// Halves of value `id` on the way to a gate.
    Lo(usize),
    Hi(usize),
    Tanh(usize),
    Sig(usize),
}

#[derive(Clone, Copy, Debug)]
struct Val {
    kind: Kind,
    ch: usize,
    frame: Frame,
    /// The node that computed it (`usize::MAX` for the graph input).
    node: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    VConv,
    HConv,
    V2h,
    HOut,
    Out1,
    Out2,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::VConv => "vconv",
            Role::HConv => "hconv",
            Role::V2h => "v2h",
            Role::HOut => "hout",
            Role::Out1 => "out1",
            Role::Out2 => "out2",
        }
    }
}

/// A convolution found in the graph: its node, kernel size `k` and dilation `d` as its
/// geometry implies (1x1: 0, 0), weights.
#[derive(Clone, Debug)]
struct Found {
    node: usize,
    k: usize,
    d: usize,
    w: ConvWeights,
}

#[derive(Clone, Debug, Default)]
struct LayerParts {
    vconv: Option<Found>,
    hconv: Option<Found>,
    v2h: Option<Found>,
    hout: Option<Found>,
}

impl LayerParts {
    fn slot(&mut self, r: Role) -> &mut Option<Found> {
        match r {
            Role::VConv => &mut self.vconv,
            Role::HConv => &mut self.hconv,
            Role::V2h => &mut self.v2h,
            _ => &mut self.hout,
        }
    }
}

struct Parsed {
    height: usize,
    width: usize,
    channels: usize,
    out_hidden: usize,
    layers: Vec<GatedLayer>,
    out1: ConvWeights,
    out2: ConvWeights,
}

type R<T> = std::result::Result<T, String>;

struct Walker<'g> {
    graph: &'g pb::GraphProto,
    h: i64,
    w: i64,
    consts: HashMap<String, R<Const>>,
    names: HashMap<String, usize>,
    vals: Vec<Val>,
    /// `C` and the node that set it.
    channels: Option<(usize, usize)>,
    out_hidden: Option<usize>,
    layers: Vec<LayerParts>,
    /// out1 with the layer whose horizontal stack it reads.
    out1: Option<(Found, usize)>,
    out2: Option<Found>,
}

pub(crate) fn attr<'n>(n: &'n pb::NodeProto, name: &str) -> Option<&'n pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

pub(crate) fn attr_ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

pub(crate) fn attr_int(n: &pb::NodeProto, name: &str) -> Option<i64> {
    attr(n, name).map(|a| a.i)
}

pub(crate) fn attr_str(n: &pb::NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// ONNX Slice's index normalization for step 1.
pub(crate) fn clamp_index(i: i64, dim: i64) -> i64 {
    let i = if i < 0 { i.saturating_add(dim) } else { i };
    i.clamp(0, dim)
}

impl<'g> Walker<'g> {
    fn run(graph: &'g pb::GraphProto) -> R<Parsed> {
        let (input, h, w) = graph_input(graph)?;
        let mut wk = Walker {
            graph,
            h,
            w,
            consts: HashMap::new(),
            names: HashMap::new(),
            vals: Vec::new(),
            channels: None,
            out_hidden: None,
            layers: Vec::new(),
            out1: None,
            out2: None,
        };
        for t in &graph.initializer {
            wk.consts.insert(t.name.clone(), decode_tensor(t));
        }
        wk.add(&input, Val { kind: Kind::Input, ch: 1, frame: wk.identity(), node: usize::MAX });
        for (i, n) in graph.node.iter().enumerate() {
            wk.node(i, n).map_err(|e| format!("{}: {e}", Self::node_label(i, n)))?;
        }
        wk.finish()
    }

    fn node_label(i: usize, n: &pb::NodeProto) -> String {
        format!("node {i} ({} \"{}\")", n.op_type, n.name)
    }

    fn label(&self, i: usize) -> String {
        match self.graph.node.get(i) {
            Some(n) => Self::node_label(i, n),
            None => "the graph input".into(),
        }
    }

    fn identity(&self) -> Frame {
        [Axis::full(self.h), Axis::full(self.w)]
    }

    fn add(&mut self, name: &str, v: Val) {
        if !name.is_empty() {
            self.vals.push(v);
            self.names.insert(name.to_string(), self.vals.len() - 1);
        }
    }

    fn describe(&self, k: Kind) -> String {
        match k {
            Kind::Input => "the input".into(),
            Kind::VPre(l) => format!("layer {l}'s vconv output"),
            Kind::V(l) => format!("layer {l}'s vertical gate"),
            Kind::HConv(l) => format!("layer {l}'s hconv output"),
            Kind::V2h(l) => format!("layer {l}'s v2h output"),
            Kind::HPre(l) => format!("layer {l}'s hconv + shifted v2h"),
            Kind::G(l) => format!("layer {l}'s horizontal gate"),
            Kind::HOut(l) => format!("layer {l}'s hout output"),
            Kind::H(l) => format!("layer {l}'s horizontal stack"),
            Kind::Out1 => "out1's output".into(),
            Kind::OutGate => "the output gate".into(),
            Kind::Out2 => "out2's output".into(),
            Kind::Lo(s) => format!("the first channel half of {}", self.describe(self.vals[s].kind)),
            Kind::Hi(s) => format!("the second channel half of {}", self.describe(self.vals[s].kind)),
            Kind::Tanh(s) => format!("Tanh of the first half of {}", self.describe(self.vals[s].kind)),
            Kind::Sig(s) => format!("Sigmoid of the second half of {}", self.describe(self.vals[s].kind)),
        }
    }

    /// The computed tensor `name` (input `i` of the node).
    fn val(&self, n: &pb::NodeProto, i: usize) -> R<(usize, Val)> {
        let name = n.input.get(i).filter(|s| !s.is_empty()).ok_or_else(|| format!("input {i} is missing"))?;
        match self.names.get(name) {
            Some(&id) => Ok((id, self.vals[id])),
            None if self.consts.contains_key(name) => {
                Err(format!("input {i} is the constant '{name}' where the pattern has a computed tensor"))
            }
            None => Err(format!("input '{name}' is not computed by an earlier node")),
        }
    }

    /// A value that must not be sliced or padded spatially.
    fn plain(&self, v: Val) -> R<Val> {
        if v.frame == self.identity() {
            Ok(v)
        } else {
            Err(format!(
                "{} is spatially sliced or padded here (only a Conv's input or the v2h down-shift may be)",
                self.describe(v.kind)
            ))
        }
    }

    fn constant(&self, name: &str) -> R<Const> {
        match self.consts.get(name) {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err(e)) => Err(e.clone()),
            None if self.names.contains_key(name) => Err(format!("'{name}' must be a constant")),
            None => Err(format!("input '{name}' is not defined")),
        }
    }

    fn const_ints(&self, n: &pb::NodeProto, i: usize) -> R<Option<Vec<i64>>> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => match self.constant(name)? {
                Const::I64 { data, .. } => Ok(Some(data)),
                Const::F32 { .. } => Err(format!("'{name}' must hold integers")),
            },
        }
    }

    fn node(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(format!("operator domain '{}' is not supported", n.domain));
        }
        let out0 = n.output.first().cloned().unwrap_or_default();
        match n.op_type.as_str() {
            "Constant" => {
                let c = if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
                    decode_tensor(t)
                } else if let Some(a) = attr(n, "value_ints") {
                    Ok(Const::I64 { data: a.ints.clone() })
                } else if let Some(a) = attr(n, "value_int") {
                    Ok(Const::I64 { data: vec![a.i] })
                } else if let Some(a) = attr(n, "value_floats") {
                    Ok(Const::F32 { dims: vec![a.floats.len()], data: a.floats.clone() })
                } else if let Some(a) = attr(n, "value_float") {
                    Ok(Const::F32 { dims: vec![], data: vec![a.f] })
                } else {
                    Err("Constant without a supported value attribute".into())
                };
                self.consts.insert(out0, c);
                Ok(())
            }
            "Identity" => {
                let src = n.input.first().cloned().unwrap_or_default();
                if let Some(&id) = self.names.get(&src) {
                    let v = self.vals[id];
                    self.add(&out0, v);
                } else if let Some(c) = self.consts.get(&src).cloned() {
                    self.consts.insert(out0, c);
                } else {
                    return Err(format!("input '{src}' is not computed by an earlier node"));
                }
                Ok(())
            }
            "Conv" => self.conv(i, n),
            "Slice" => self.slice(i, n),
            "Split" => self.split(i, n),
            "Pad" => self.pad(i, n),
            "Tanh" | "Sigmoid" => {
                let (_, x) = self.val(n, 0)?;
                let x = self.plain(x)?;
                let kind = match (n.op_type.as_str(), x.kind) {
                    ("Tanh", Kind::Lo(s)) => Kind::Tanh(s),
                    ("Sigmoid", Kind::Hi(s)) => Kind::Sig(s),
                    ("Tanh", k) => {
                        return Err(format!(
                            "expected Tanh of a gate's first channel half, not of {}",
                            self.describe(k)
                        ))
                    }
                    (_, k) => {
                        return Err(format!(
                            "expected Sigmoid of a gate's second channel half, not of {}",
                            self.describe(k)
                        ))
                    }
                };
                self.add(&out0, Val { kind, node: i, ..x });
                Ok(())
            }
            "Mul" => {
                let (_, a) = self.val(n, 0)?;
                let (_, b) = self.val(n, 1)?;
                let (a, b) = (self.plain(a)?, self.plain(b)?);
                let s = match (a.kind, b.kind) {
                    (Kind::Tanh(s), Kind::Sig(t)) | (Kind::Sig(t), Kind::Tanh(s)) if s == t => s,
                    (Kind::Tanh(_), Kind::Sig(_)) | (Kind::Sig(_), Kind::Tanh(_)) => {
                        return Err("the gate multiplies halves of two different tensors".into())
                    }
                    (x, y) => {
                        return Err(format!(
                            "expected a gate's Mul of Tanh and Sigmoid, found {} times {}",
                            self.describe(x),
                            self.describe(y)
                        ))
                    }
                };
                let kind = match self.vals[s].kind {
                    Kind::VPre(l) => Kind::V(l),
                    Kind::HPre(0) => Kind::H(0),
                    Kind::HPre(l) => Kind::G(l),
                    Kind::Out1 => Kind::OutGate,
                    k => return Err(format!("a gate of {} is not part of the pattern", self.describe(k))),
                };
                self.add(&out0, Val { kind, node: i, ..a });
                Ok(())
            }
            "Add" => self.add_node(i, n),
            op => {
                let hint = match n.input.first().and_then(|s| self.names.get(s)).map(|&id| self.vals[id].kind) {
                    Some(Kind::Lo(_)) => ": expected Tanh of a gate's first channel half",
                    Some(Kind::Hi(_)) => ": expected Sigmoid of a gate's second channel half",
                    Some(Kind::Tanh(_) | Kind::Sig(_)) => ": expected the Mul of a gate",
                    _ => "",
                };
                Err(format!("unsupported operator {op}{hint}"))
            }
        }
    }

    fn set_channels(&mut self, c: usize, node: usize, what: &str) -> R<()> {
        match self.channels {
            None => {
                if c == 0 || !c.is_multiple_of(QK8) || c > MAX_CHANNELS {
                    return Err(format!(
                        "{what} gives C = {c} channels per stack; C must be a multiple of 32, at most {MAX_CHANNELS}"
                    ));
                }
                self.channels = Some((c, node));
                Ok(())
            }
            Some((have, _)) if have == c => Ok(()),
            Some((have, at)) => Err(format!("{what} gives C = {c}, but {} gave C = {have}", self.label(at))),
        }
    }

    fn conv(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let (_, x) = self.val(n, 0)?;
        let wname = n.input.get(1).filter(|s| !s.is_empty()).ok_or("Conv without weights")?;
        let (wdims, weight) = match self.constant(wname)? {
            Const::F32 { dims, data } => (dims, data),
            Const::I64 { .. } => return Err(format!("weight '{wname}' is not floating point")),
        };
        let [co, ci, kh, kw] = wdims[..] else {
            return Err(format!("weight '{wname}' has shape {wdims:?}; only 2-D convolutions are supported"));
        };
        if co == 0 || kh == 0 || kw == 0 {
            return Err(format!("weight '{wname}' has shape {wdims:?}"));
        }
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            None => vec![0.0; co],
            Some(b) => match self.constant(b)? {
                Const::F32 { dims, data } if dims == [co] => data,
                _ => return Err(format!("bias '{b}' is not {co} floats")),
            },
        };
        let group = attr_int(n, "group").unwrap_or(1);
        if group != 1 {
            return Err(format!("group {group} (only group 1 is supported)"));
        }
        if ci != x.ch {
            return Err(format!("weight has {ci} input channels, but {} has {}", self.describe(x.kind), x.ch));
        }
        let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1, 1]);
        if strides.iter().any(|&s| s != 1) {
            return Err(format!("strides {strides:?} (only 1 is supported)"));
        }
        let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1, 1]);
        if dil.len() != 2 || dil.iter().any(|&d| d < 1) {
            return Err(format!("dilations {dil:?}"));
        }
        if let Some(ks) = attr_ints(n, "kernel_shape") {
            if ks != [kh as i64, kw as i64] {
                return Err(format!("kernel_shape {ks:?} differs from the weight's {kh}x{kw}"));
            }
        }
        let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
        if pads.len() != 4 || pads.iter().any(|p| p.abs() > MAX_PAD) {
            return Err(format!("pads {pads:?}"));
        }
        match attr_str(n, "auto_pad").as_deref() {
            None | Some("NOTSET") => {}
            Some("VALID") if pads.iter().all(|&p| p == 0) => {}
            Some(a) => return Err(format!("auto_pad {a} is not supported (export with explicit pads)")),
        }
        let (role, l) = match x.kind {
            Kind::Input if kh > 1 => (Role::VConv, 0),
            Kind::Input => (Role::HConv, 0),
            Kind::V(l) => (Role::VConv, l + 1),
            Kind::VPre(l) => (Role::V2h, l),
            Kind::H(l) if kh > 1 || kw > 1 => (Role::HConv, l + 1),
            Kind::H(l) => (Role::Out1, l),
            Kind::G(l) => (Role::HOut, l),
            Kind::OutGate => (Role::Out2, 0),
            k => return Err(format!("a Conv on {} is not part of the gated PixelCNN pattern", self.describe(k))),
        };
        let what = match role {
            Role::Out1 | Role::Out2 => role.name().to_string(),
            _ => format!("layer {l} {}", role.name()),
        };
        if l >= MAX_LAYERS {
            return Err(format!("{what}: more than {MAX_LAYERS} gated layers"));
        }
        let (dh, dw) = (dil[0] as usize, dil[1] as usize);
        let [rows, cols] = x.frame;
        let (hh, ww) = (self.h, self.w);
        let ident = x.frame == self.identity();
        let note = if ident {
            String::new()
        } else {
            format!(
                " on an input sliced/padded to rows {}..{}, columns {}..{} of the image",
                rows.off,
                rows.off + rows.len,
                cols.off,
                cols.off + cols.len
            )
        };
        let bad_pads = |expected: String, causal: bool| {
            format!(
                "{what}: pads {pads:?}{note} {} (expected {expected})",
                if causal { "are not causal" } else { "do not fit" }
            )
        };
        let (k, d) = match role {
            Role::VConv => {
                let m = kh - 1;
                if kw != 2 * m + 1 || !(3..=MAX_KERNEL).contains(&kw) {
                    return Err(format!("{what}: kernel {kh}x{kw} is not (k/2+1) x k with odd k in 3..={MAX_KERNEL}"));
                }
                if dh != dw {
                    return Err(format!("{what}: dilations {dil:?} differ (expected [d, d])"));
                }
                let d = dw;
                if d > MAX_DILATION {
                    return Err(format!("{what}: dilation {d} is above {MAX_DILATION}"));
                }
                let dm = (d * m) as i64;
                let (di, ki) = (d as i64, kh as i64);
                let ok = rows.conv_reads(hh, ki, di, pads[0], pads[2], -dm)
                    && cols.conv_reads(ww, kw as i64, di, pads[1], pads[3], -dm);
                if !ok {
                    return Err(bad_pads(format!("[{dm}, {dm}, 0, {dm}] for kernel {kh}x{kw}, dilation {d}"), true));
                }
                (kw, d)
            }
            Role::HConv => {
                if kh != 1 {
                    return Err(format!(
                        "{what}: kernel {kh}x{kw} is not one row (1 x (k/2+1), or 1 x k/2 in layer 0)"
                    ));
                }
                let m = if l == 0 { kw } else { kw - 1 };
                if m == 0 || 2 * m + 1 > MAX_KERNEL {
                    return Err(format!(
                        "{what}: kernel 1x{kw} is not 1 x {}k/2{} with odd k in 3..={MAX_KERNEL}",
                        if l == 0 { "" } else { "(" },
                        if l == 0 { "" } else { "+1)" }
                    ));
                }
                // A one-tap kernel's dilation is free: its offset comes from the pads.
                let d = if kw > 1 {
                    dw
                } else {
                    let shift = pads[1] - cols.off;
                    if shift <= 0 || shift % m as i64 != 0 {
                        return Err(bad_pads(
                            format!("[0, d*{m}, 0, 0] with d >= 1 on the input with its last d columns sliced off"),
                            true,
                        ));
                    }
                    (shift / m as i64) as usize
                };
                if d > MAX_DILATION {
                    return Err(format!("{what}: dilation {d} is above {MAX_DILATION}"));
                }
                let dm = (d * m) as i64;
                let ok = rows.conv_reads(hh, 1, 1, pads[0], pads[2], 0)
                    && cols.conv_reads(ww, kw as i64, d as i64, pads[1], pads[3], -dm);
                if !ok {
                    let tail = if l == 0 {
                        format!(", on the input with its last {d} column{} sliced off", if d == 1 { "" } else { "s" })
                    } else {
                        String::new()
                    };
                    return Err(bad_pads(format!("[0, {dm}, 0, 0] for kernel 1x{kw}, dilation {d}{tail}"), true));
                }
                (2 * m + 1, d)
            }
            _ => {
                if kh != 1 || kw != 1 {
                    return Err(format!("{what}: kernel {kh}x{kw} (expected 1x1)"));
                }
                let ok =
                    rows.conv_reads(hh, 1, 1, pads[0], pads[2], 0) && cols.conv_reads(ww, 1, 1, pads[1], pads[3], 0);
                if !ok {
                    return Err(bad_pads("[0, 0, 0, 0]".into(), false));
                }
                (0, 0)
            }
        };
        // Channel counts.
        match role {
            Role::VConv | Role::HConv | Role::V2h => {
                if !co.is_multiple_of(2) {
                    return Err(format!("{what}: {co} output channels (a gate needs 2C)"));
                }
                self.set_channels(co / 2, i, &what)?;
            }
            Role::HOut => self.set_channels(co, i, &what)?,
            Role::Out1 => {
                let oh = co / 2;
                if !co.is_multiple_of(2) || oh == 0 || !oh.is_multiple_of(QK8) || oh > MAX_CHANNELS {
                    return Err(format!(
                        "out1: {co} output channels (2 OH): OH must be a multiple of 32, at most {MAX_CHANNELS}"
                    ));
                }
                self.out_hidden = Some(oh);
            }
            Role::Out2 => {}
        }
        let found = Found { node: i, k, d, w: ConvWeights { shape: [co, ci, kh, kw], weight, bias } };
        let kind = match role {
            Role::VConv => Kind::VPre(l),
            Role::HConv => Kind::HConv(l),
            Role::V2h => Kind::V2h(l),
            Role::HOut => Kind::HOut(l),
            Role::Out1 => Kind::Out1,
            Role::Out2 => Kind::Out2,
        };
        match role {
            Role::Out1 | Role::Out2 => {
                let have = if role == Role::Out1 {
                    self.out1.as_ref().map(|o| o.0.node)
                } else {
                    self.out2.as_ref().map(|o| o.node)
                };
                if let Some(at) = have {
                    return Err(format!("a second {what} (the first is {})", self.label(at)));
                }
                if role == Role::Out1 {
                    self.out1 = Some((found, l));
                } else {
                    self.out2 = Some(found);
                }
            }
            _ => {
                if self.layers.len() <= l {
                    self.layers.resize(l + 1, LayerParts::default());
                }
                if let Some(prev) = self.layers[l].slot(role) {
                    let at = prev.node;
                    return Err(format!("a second {what} (the first is {})", self.label(at)));
                }
                *self.layers[l].slot(role) = Some(found);
            }
        }
        self.add(&n.output.first().cloned().unwrap_or_default(), Val { kind, ch: co, frame: self.identity(), node: i });
        Ok(())
    }

    /// The halves of a gate's input: value `id` of `2n` channels.
    fn gate_source(&self, x: Val) -> R<()> {
        self.plain(x)?;
        match x.kind {
            Kind::VPre(_) | Kind::HPre(_) | Kind::Out1 if x.ch.is_multiple_of(2) => Ok(()),
            k => Err(format!("a channel split of {} is not a gate", self.describe(k))),
        }
    }

    fn slice(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let (id, x) = self.val(n, 0)?;
        let (starts, ends, axes, steps) = if attr(n, "starts").is_some() {
            (attr_ints(n, "starts"), attr_ints(n, "ends"), attr_ints(n, "axes"), None)
        } else {
            (self.const_ints(n, 1)?, self.const_ints(n, 2)?, self.const_ints(n, 3)?, self.const_ints(n, 4)?)
        };
        let (Some(starts), Some(ends)) = (starts, ends) else {
            return Err("Slice without starts and ends".into());
        };
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        if ends.len() != starts.len() || axes.len() != starts.len() {
            return Err("Slice starts, ends and axes differ in length".into());
        }
        if let Some(steps) = &steps {
            if steps.len() != starts.len() || steps.iter().any(|&s| s != 1) {
                return Err(format!("Slice steps {steps:?} (only 1 is supported)"));
            }
        }
        let axes: Vec<i64> = axes.iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
        let out0 = n.output.first().cloned().unwrap_or_default();
        if axes == [1] {
            self.gate_source(x)?;
            let half = x.ch as i64 / 2;
            let (s, e) = (clamp_index(starts[0], x.ch as i64), clamp_index(ends[0], x.ch as i64));
            let kind = if (s, e) == (0, half) {
                Kind::Lo(id)
            } else if (s, e) == (half, 2 * half) {
                Kind::Hi(id)
            } else {
                return Err(format!(
                    "channels {s}..{e} of {} ({} channels) are not a half of a gate",
                    self.describe(x.kind),
                    x.ch
                ));
            };
            self.add(&out0, Val { kind, ch: half as usize, frame: x.frame, node: i });
            return Ok(());
        }
        let mut frame = x.frame;
        for (j, &a) in axes.iter().enumerate() {
            if a != 2 && a != 3 {
                return Err(format!("Slice on axis {a} together with others, or on the batch axis"));
            }
            let ax = &mut frame[a as usize - 2];
            let (s, e) = (clamp_index(starts[j], ax.len), clamp_index(ends[j], ax.len));
            if s >= e {
                return Err("Slice gives an empty tensor".into());
            }
            *ax = ax.window(s, e);
        }
        self.add(&out0, Val { frame, node: i, ..x });
        Ok(())
    }

    fn split(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let (id, x) = self.val(n, 0)?;
        let axis = attr_int(n, "axis").unwrap_or(0);
        if axis != 1 && axis != -3 {
            return Err(format!("Split on axis {axis} (only a gate's channel split is supported)"));
        }
        self.gate_source(x)?;
        let sizes = match attr_ints(n, "split") {
            Some(s) => Some(s),
            None => self.const_ints(n, 1)?,
        };
        let half = x.ch / 2;
        let ok = n.output.len() == 2 && sizes.as_ref().is_none_or(|s| s[..] == [half as i64, half as i64]);
        if !ok {
            return Err(format!("Split of {} is not two equal channel halves", self.describe(x.kind)));
        }
        self.add(&n.output[0], Val { kind: Kind::Lo(id), ch: half, frame: x.frame, node: i });
        self.add(&n.output[1], Val { kind: Kind::Hi(id), ch: half, frame: x.frame, node: i });
        Ok(())
    }

    fn pad(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let (_, x) = self.val(n, 0)?;
        let mode = attr_str(n, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(format!("Pad mode {mode} (only constant zeros are supported)"));
        }
        let (pads, value, axes) = if let Some(p) = attr_ints(n, "pads") {
            (p, attr(n, "value").map_or(0.0, |a| a.f), None)
        } else {
            let pads = self.const_ints(n, 1)?.ok_or("Pad without pads")?;
            let value = match n.input.get(2).filter(|s| !s.is_empty()) {
                None => 0.0,
                Some(name) => match self.constant(name)? {
                    Const::F32 { data, .. } if data.len() == 1 => data[0],
                    _ => return Err(format!("Pad value '{name}' is not one float")),
                },
            };
            (pads, value, self.const_ints(n, 3)?)
        };
        if value != 0.0 {
            return Err(format!("Pad with value {value} (only zeros are supported)"));
        }
        let axes: Vec<i64> =
            axes.unwrap_or_else(|| (0..4).collect()).iter().map(|&a| if a < 0 { a + 4 } else { a }).collect();
        let r = axes.len();
        if pads.len() != 2 * r {
            return Err(format!("Pad pads {pads:?} do not fit {r} axes"));
        }
        if pads.iter().any(|p| p.abs() > MAX_PAD) {
            return Err(format!("Pad pads {pads:?} are out of range"));
        }
        let mut frame = x.frame;
        for (j, &a) in axes.iter().enumerate() {
            let (b, e) = (pads[j], pads[j + r]);
            if b == 0 && e == 0 {
                continue;
            }
            if a != 2 && a != 3 {
                return Err(format!("Pad on axis {a} (only height and width may be padded)"));
            }
            let ax = &mut frame[a as usize - 2];
            if ax.len + b + e <= 0 {
                return Err("Pad gives an empty tensor".into());
            }
            *ax = ax.window(-b, ax.len + e);
        }
        self.add(&n.output.first().cloned().unwrap_or_default(), Val { frame, node: i, ..x });
        Ok(())
    }

    fn add_node(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let (_, a) = self.val(n, 0)?;
        let (_, b) = self.val(n, 1)?;
        let out0 = n.output.first().cloned().unwrap_or_default();
        let (a, b) = match (a.kind, b.kind) {
            (Kind::V2h(_) | Kind::HOut(_), _) => (b, a),
            _ => (a, b),
        };
        match (a.kind, b.kind) {
            (Kind::HConv(l), Kind::V2h(m)) => {
                if l != m {
                    return Err(format!("adds layer {m}'s v2h to layer {l}'s hconv"));
                }
                self.plain(a)?;
                let [rows, cols] = b.frame;
                let shifted = rows.len == self.h
                    && rows.off == -1
                    && rows.v0 <= 0
                    && rows.v1 >= self.h - 1
                    && cols == Axis::full(self.w);
                if !shifted {
                    let what = if b.frame == self.identity() {
                        "is not shifted down".to_string()
                    } else {
                        format!(
                            "is moved to rows {}..{}, columns {}..{} of the image",
                            rows.off,
                            rows.off + rows.len,
                            cols.off,
                            cols.off + cols.len
                        )
                    };
                    return Err(format!(
                        "layer {l}: the v2h output {what}; expected it shifted down one row (Slice off the last \
                         row, Pad one zero row on top), so that row r sees only rows above it"
                    ));
                }
                self.add(&out0, Val { kind: Kind::HPre(l), ch: a.ch, frame: self.identity(), node: i });
                Ok(())
            }
            (Kind::H(p), Kind::HOut(l)) => {
                self.plain(a)?;
                self.plain(b)?;
                if p + 1 != l {
                    return Err(format!(
                        "the residual adds layer {p}'s horizontal stack to layer {l}'s hout (expected layer {})",
                        l - 1
                    ));
                }
                self.add(&out0, Val { kind: Kind::H(l), ch: b.ch, frame: self.identity(), node: i });
                Ok(())
            }
            (x, y) => Err(format!(
                "expected hconv + shifted v2h or the residual h + hout, found {} + {}",
                self.describe(x),
                self.describe(y)
            )),
        }
    }

    fn finish(self) -> R<Parsed> {
        let outs = &self.graph.output;
        if outs.len() != 1 {
            return Err(format!("the graph has {} outputs; a PixelCNN has one (the head parameters)", outs.len()));
        }
        let oname = &outs[0].name;
        let Some(&oid) = self.names.get(oname) else {
            return Err(format!("graph output '{oname}' is not computed by any node"));
        };
        let o = self.vals[oid];
        if o.kind != Kind::Out2 || o.frame != self.identity() {
            return Err(format!(
                "graph output '{oname}' is {} ({}); expected out2 of the output block (Conv out1 -> gate -> Conv \
                 out2)",
                self.describe(o.kind),
                self.label(o.node)
            ));
        }
        let (out1, last) = self.out1.clone().expect("out2 implies out1");
        let out2 = self.out2.clone().expect("an Out2 value implies out2");
        let n_layers = last + 1;
        for (l, parts) in self.layers.iter().enumerate().skip(n_layers) {
            for (role, f) in
                [("vconv", &parts.vconv), ("hconv", &parts.hconv), ("v2h", &parts.v2h), ("hout", &parts.hout)]
            {
                if let Some(f) = f {
                    return Err(format!(
                        "{}: layer {l}'s {role} does not reach the output (out1 reads layer {last})",
                        self.label(f.node)
                    ));
                }
            }
        }
        let (c, _) = self.channels.expect("layers imply C");
        let mut layers = Vec::with_capacity(n_layers);
        for (l, parts) in self.layers.into_iter().take(n_layers).enumerate() {
            let missing = |role: &str| format!("layer {l} has no {role}");
            let vconv = parts.vconv.ok_or_else(|| missing("vconv"))?;
            let hconv = parts.hconv.ok_or_else(|| missing("hconv"))?;
            let v2h = parts.v2h.ok_or_else(|| missing("v2h"))?;
            if (hconv.k, hconv.d) != (vconv.k, vconv.d) {
                let [_, _, kh, kw] = hconv.w.shape;
                return Err(format!(
                    "node {} (Conv \"{}\"): layer {l} hconv: kernel {kh}x{kw}, dilation {} does not match the layer's \
                     vconv (k = {}, dilation {})",
                    hconv.node, self.graph.node[hconv.node].name, hconv.d, vconv.k, vconv.d
                ));
            }
            let hout = match (l, parts.hout) {
                (0, None) => None,
                (0, Some(_)) => unreachable!("layer 0's gate is its output"),
                (_, Some(h)) => Some(h.w),
                (_, None) => return Err(missing("hout")),
            };
            layers.push(GatedLayer {
                kernel: vconv.k,
                dilation: vconv.d,
                vconv: vconv.w,
                hconv: hconv.w,
                v2h: v2h.w,
                hout,
            });
        }
        let out_hidden = self.out_hidden.expect("out1 sets OH");
        debug_assert_eq!(out1.w.shape[1], c);
        Ok(Parsed {
            height: self.h as usize,
            width: self.w as usize,
            channels: c,
            out_hidden,
            layers,
            out1: out1.w,
            out2: out2.w,
        })
    }
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

    #[test]
    fn axis_windows() {
        // Drop the last row, pad one on top: image row r - 1 at row r, row 0 zero.
        let a = Axis::full(8).window(0, 7).window(-1, 7);
        assert_eq!(a, Axis { len: 8, off: -1, v0: 0, v1: 7 });
        // Pad first, then slice: the same.
        let b = Axis::full(8).window(-1, 8).window(0, 8);
        assert_eq!(b, a);
        // A 1x3 conv on columns 0..7 padded 3 left reads c-3..c-1.
        let c = Axis::full(8).window(0, 7);
        assert!(c.conv_reads(8, 3, 1, 3, 0, -3));
        assert!(!c.conv_reads(8, 3, 1, 2, 1, -2));
        // A vconv with pads [2, .., 0, ..], kernel 2, dilation 2.
        assert!(Axis::full(8).conv_reads(8, 2, 2, 2, 0, -2));
        assert!(!Axis::full(8).conv_reads(8, 2, 2, 1, 1, -2));
    }

    #[test]
    fn matrix_layout() {
        // co 1, ci 2, kernel 2x3: column t * 2 + ci.
        let weight: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let w = ConvWeights { shape: [1, 2, 2, 3], weight, bias: vec![0.0] };
        let (rows, cols, m) = w.to_matrix();
        assert_eq!((rows, cols), (1, 32));
        // ci 0 taps 0..6 are values 0..6, ci 1 taps are 6..12.
        let expect: Vec<f32> = (0..6).flat_map(|t| [t as f32, (6 + t) as f32]).collect();
        assert_eq!(&m[..12], &expect[..]);
        assert!(m[12..].iter().all(|&v| v == 0.0));
    }
}
