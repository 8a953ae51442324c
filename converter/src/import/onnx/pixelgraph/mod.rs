//! ONNX → `.arq` for any causal convolution network over grey images: the pixel graph
//! (`runtime/FORMAT.md`, "Pixel graphs"). This is how users' PixelCNNs come in
//! (pytorch-generative's, Tutorial 12's, ...), whatever their layer pattern.
//!
//! The walker ([`walker`]) interprets the ONNX graph node by node in file order:
//!
//! - shape arithmetic (`Shape`, `Gather`, `Unsqueeze`, `Squeeze`, `Concat`, `Cast`,
//!   `Add`/`Sub`/`Mul`/`Div` on integers, `Constant`) is folded, with the batch size as
//!   the one unknown, which is what `dynamo=False` exports put around `chunk` and
//!   `reshape`;
//! - the image input (float, or uint8/int32/int64 pixel values) and the scalar
//!   arithmetic on it (`Cast`, `Add`, `Sub`, `Mul`, `Div` by constants) become the
//!   input map: one network input per level;
//! - `Conv` (2-D, group 1, stride 1, the output the input's size) becomes its non-zero
//!   taps with explicit `(dy, dx)` offsets: masks multiplied into the weights and the
//!   pads (its own and those of a zero `Pad` node right before it) are folded there;
//!   taps that can never reach the image are dropped;
//! - `Add`/`Sub`/`Mul` of two maps, a map and a scalar, `Neg` (both `Affine`), `Tanh`, `Sigmoid`,
//!   `Relu`, `Elu`, channel `Slice`/`Split`/`Concat` become nodes; `Identity` and a
//!   final `Reshape` that only regroups channels are dropped.
//!
//! Causality is proven from the tap geometry as the nodes come (FORMAT.md's rule): each
//! tensor carries whether it may depend on the current row; a tap may not read a row
//! below, may not read right of the pixel on the current row of such a tensor, and may
//! read the pixel itself only in a tensor that does not contain it (not the image: the
//! first layer must be mask A). The first node or tap that breaks it stops the import
//! with one line naming it. Nodes the output does not need are dropped at the end.

mod nhwc;
mod reach;
mod walker;
mod window;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use arq::models::pixelcnn::heads::{value_of_level, Head};
use arq::models::pixelgraph::writer::GraphSpec;
use arq::models::pixelgraph::Op;
use tract_onnx::pb;

use super::pixelcnn::{resolve_head, HeadSpec};
use crate::quantize::{check_finite, Quant, TensorError};

/// How a float image input maps levels to values (model metadata `arq.input`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatInput {
    /// `x / (levels - 1) * 2 - 1` (the default; `models/pixelcnn/train.py`'s).
    Signed,
    /// The level itself as a float (`arq.input = level`: a binarized image as {0, 1}).
    Level,
}

/// A pixel graph read from ONNX.
#[derive(Clone, Debug)]
pub struct GraphSource {
    pub name: String,
    pub source: PathBuf,
    pub spec: GraphSpec,
}

impl GraphSource {
    /// Reads a causal convolution graph from `path`; `head` overrides the model's
    /// `arq.head`/`arq.levels` metadata.
    pub fn from_onnx(path: &Path, head: Option<HeadSpec>) -> Result<Self> {
        Self::from_proto(path, &super::proto::read_proto(path)?, head)
    }

    pub(super) fn from_proto(path: &Path, proto: &pb::ModelProto, head: Option<HeadSpec>) -> Result<Self> {
        let at = |e: String| anyhow!("{}: {e}", path.display());
        let graph = proto.graph.as_ref().expect("checked by read_proto");
        let parsed = walker::parse(graph).map_err(at)?;
        let meta: HashMap<String, String> =
            proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        let p = parsed.nodes.last().map(|n| n.channels).unwrap_or(0);
        let (head, levels) =
            resolve_head(&meta, head.as_ref(), p, "the graph output").map_err(|e| at(format!("{e:#}")))?;
        if let Head::GaussianMixture { .. } = head {
            return Err(at("the gaussian_mixture head is not supported in pixel graphs yet".into()));
        }
        // A Bernoulli head that ends in a Sigmoid (Keras's example outputs the
        // probability): the head takes the logit before it, which is the same
        // distribution.
        let mut nodes = parsed.nodes;
        if let (Head::Bernoulli, Some(last)) = (head, nodes.last()) {
            if last.op == Op::Sigmoid {
                let logit = last.a;
                nodes = walker::prune(nodes, logit);
            }
        }
        let float_input = match meta.get("arq.input").map(|s| s.trim()) {
            None | Some("signed") => FloatInput::Signed,
            Some("level") => FloatInput::Level,
            Some(other) => return Err(at(format!("model metadata arq.input = '{other}' (expected signed or level)"))),
        };
        let input_map = (0..levels)
            .map(|l| {
                let v0 = match (parsed.int_input, float_input) {
                    (true, _) | (false, FloatInput::Level) => l as f32,
                    (false, FloatInput::Signed) => value_of_level(l, levels),
                };
                walker::apply_steps(&parsed.steps, v0)
            })
            .collect::<Vec<f32>>();
        if let Some(l) = input_map.iter().position(|v| !v.is_finite()) {
            return Err(at(format!("the input scaling maps level {l} to {}", input_map[l])));
        }
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let spec = GraphSpec {
            name: name.clone(),
            source: file_name,
            height: parsed.height,
            width: parsed.width,
            head,
            levels,
            input_map,
            nodes,
        };
        Ok(GraphSource { name, source: path.to_path_buf(), spec })
    }

    /// One line: size, nodes, convolutions, head.
    pub fn describe(&self) -> String {
        let s = &self.spec;
        let convs: Vec<_> = s.nodes.iter().filter_map(|n| n.conv.as_ref()).collect();
        let taps: usize = convs.iter().map(|c| c.taps.len()).sum();
        let head = match s.head {
            Head::LogisticMixture { k, .. } => format!("logistic_mixture, K = {k}"),
            h => h.name().to_string(),
        };
        format!(
            "pixel graph {}x{}, {} nodes ({} convolutions, {taps} taps), head {head}, {} levels",
            s.height,
            s.width,
            s.nodes.len(),
            convs.len(),
            s.levels
        )
    }

    /// The file bytes with q8 or f32 convolution weights, and each q8 weight's relative
    /// error.
    pub fn to_arq(&self, quant: Quant) -> Result<(Vec<u8>, Vec<TensorError>)> {
        super::pixelcnn::refuse_q4(quant)?;
        for (i, n) in self.spec.nodes.iter().enumerate() {
            if let Some(c) = &n.conv {
                check_finite(&format!("n{i}.weight"), &c.weight)?;
                check_finite(&format!("n{i}.bias"), &c.bias)?;
            }
            if let Op::Elu { alpha: v } | Op::Affine { scale: v, .. } = n.op {
                if !v.is_finite() {
                    bail!("node n{i} has a non-finite parameter {v}");
                }
            }
        }
        Ok(self.spec.to_arq(quant == Quant::Q8)?)
    }
}
