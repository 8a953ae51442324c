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

mod head;
mod walker;

use arq::format::keys;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use arq::format::writer::{ArqWriter, Meta};
use arq::format::Dtype;
use arq::models::pixelcnn::heads::Head;
use arq::quant::QK8;
use tract_onnx::pb;

pub(crate) use head::resolve_head;
pub use head::{HeadSpec, DEFAULT_MIN_LOG_SCALE};

use super::proto::read_proto;
use crate::quantize::{check_finite, Quant, TensorError};
use crate::report;
use arq::quant::quantize_weights_q8;

/// Runtime limits (`runtime/src/models/pixelcnn/mod.rs`), checked here to fail early.
const MAX_LAYERS: usize = arq::models::pixelcnn::MAX_LAYERS;
const MAX_LEVELS: usize = arq::models::pixelcnn::MAX_LEVELS;
const MAX_SIDE: usize = 1024;
const MAX_CHANNELS: usize = 4096;
const MAX_KERNEL: usize = 31;
const MAX_DILATION: usize = 64;
/// Larger pads (Conv or Pad) are refused before any arithmetic on them.
const MAX_PAD: i64 = 1 << 20;

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

impl PixelCnnSource {
    /// Reads a gated PixelCNN from an ONNX file; `head` overrides the model's
    /// `arq.head`/`arq.levels`/`arq.mixtures`/`arq.min_log_scale` metadata.
    pub fn from_onnx(path: &Path, head: Option<HeadSpec>) -> Result<Self> {
        Self::from_proto(path, &read_proto(path)?, head)
    }

    /// [`PixelCnnSource::from_onnx`] for a model already read from `path`.
    pub(super) fn from_proto(path: &Path, proto: &pb::ModelProto, head: Option<HeadSpec>) -> Result<Self> {
        let at = |e: String| anyhow!("{}: {e}", path.display());
        let graph = proto.graph.as_ref().expect("checked by read_proto");
        let parsed = walker::parse(graph).map_err(at)?;
        let meta: HashMap<String, String> =
            proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        let p = parsed.out2.shape[0];
        let (head, levels) = resolve_head(&meta, head.as_ref(), p, "out2").map_err(|e| at(e.to_string()))?;
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
        refuse_q4(quant)?;
        let mut w = ArqWriter::new();
        let file_name = self.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut meta = vec![
            (keys::ARCHITECTURE, Meta::Str(keys::ARCH_PIXELCNN.into())),
            (keys::QUANT, Meta::Str(quant.name().into())),
            (keys::GENERAL_NAME, Meta::Str(self.name.clone())),
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
            check_finite(&format!("{name}.weight"), &m)?;
            check_finite(&format!("{name}.bias"), &conv.bias)?;
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

/// PixelCNN files hold q8 or f32 convolutions.
pub(super) fn refuse_q4(quant: Quant) -> Result<()> {
    if quant == Quant::Q4 {
        bail!("q4 is for text models: PixelCNN files hold q8 or f32 convolutions (use --quant q8 or f32)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// tract reference

/// Runs the ONNX model in f32 with tract on `n` images of network inputs (`x_in`,
/// `n * H * W` values, NCHW with one channel) and returns its output, NCHW flattened.
pub fn tract_forward(path: &Path, x_in: &[f32], n: usize) -> Result<Vec<f32>> {
    use tract_onnx::prelude::{tvec, DatumExt, Framework, InferenceModelExt, IntoRunnable, IntoTValue, Tensor};
    // The exports' value_info name the batch dimension symbolically; the input fact
    // here is concrete, so tract infers every shape itself.
    let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    let proto = read_proto(path)?;
    let graph = proto.graph.as_ref().expect("checked by read_proto");
    let (_, h, w) = walker::image_input(graph).map_err(|e| anyhow!("{}: {e}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
