//! ONNX → `.arq`: gated PixelCNNs ([`pixelcnn`]), GPT-2 text models ([`gpt2`]) and
//! recurrent language models ([`rnn`]), with
//! tract-onnx as an independent f32 reference for each ([`tract_forward`],
//! [`tract_logits`]).
//!
//! Both importers read the protobuf with tract-onnx's prost types (`proto.rs`) and
//! interpret the graph symbolically: walking the nodes in file order, every computed
//! tensor gets a role in the model's pattern from its operator and the roles of its
//! inputs. Node names are never used. The first node that fits no role stops the import
//! with one line naming it (`node 13 (Relu "name"): ...`, nodes counted from 0 in file
//! order). A graph with an `LSTM`, `GRU` or `RNN` node selects the recurrent pattern;
//! otherwise the model metadata `arq.architecture = gpt2` selects the GPT-2 pattern, any
//! other value, or none, a PixelCNN: the gated pattern `models/pixelcnn/train.py` exports
//! when the graph has a `Pad` node (its down-shifts; files as before) and fits it, else
//! any causal convolution graph ([`pixelgraph`]).

pub mod gpt2;
pub mod pixelcnn;
pub mod pixelgraph;
mod proto;
pub mod rnn;
pub mod torch_encoder;

use arq::format::keys;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use gpt2::{tract_logits, Gpt2Source};
pub use pixelcnn::{tract_forward, HeadSpec, PixelCnnSource};
pub use pixelgraph::GraphSource;

use crate::output::write_validated;
use crate::quantize::{Quant, TensorError};

/// Options of `arq convert` for an ONNX model.
#[derive(Clone, Debug)]
pub struct OnnxConvertOptions {
    /// PixelCNN: `Q8` or `F32` (`Q4` is refused); GPT-2: any.
    pub quant: Quant,
    /// Overwrite an existing output.
    pub force: bool,
    /// Overrides a PixelCNN's head metadata (refused for a GPT-2).
    pub head: Option<HeadSpec>,
    /// A recurrent model's vocabulary file (refused for the others).
    pub vocab: Option<PathBuf>,
}

/// What [`convert_onnx`] wrote.
#[derive(Clone, Debug)]
pub struct OnnxConvertSummary {
    pub bytes: u64,
    /// Relative error of each q8 weight matrix (empty for f32).
    pub tensor_errors: Vec<TensorError>,
    /// [`PixelCnnSource::describe`] or [`Gpt2Source::describe`].
    pub description: String,
}

/// The model metadata `arq.architecture` of an ONNX file, if it has one.
pub fn onnx_architecture(path: &Path) -> Result<Option<String>> {
    Ok(proto::architecture(&proto::read_proto(path)?))
}

/// Whether a PixelCNN graph is the gated pattern of `models/pixelcnn/train.py` (its
/// vertical-to-horizontal links are shifted down a row by `Pad` nodes, which the pixel
/// graph does not take): those keep converting to the same `pixelcnn` files as before.
/// One that does not fit it is tried as a pixel graph (where a Pad may pad a Conv).
fn is_gated_pattern(proto: &tract_onnx::pb::ModelProto) -> bool {
    proto.graph.as_ref().is_some_and(|g| g.node.iter().any(|n| n.op_type == "Pad"))
}

/// `arq convert` for an ONNX model: a recurrent model when the graph has an LSTM, GRU
/// or RNN node, a GPT-2 when its metadata says `arq.architecture = gpt2`, else a gated
/// PixelCNN. Reads, checks, writes atomically
/// and re-validates with the runtime's loader. Never leaves a partial output, never
/// touches the input; an existing output needs `force`.
pub fn convert_onnx(input: &Path, out: &Path, opts: &OnnxConvertOptions) -> Result<OnnxConvertSummary> {
    crate::output::check_paths(input, out, opts.force)?;
    let proto = proto::read_proto(input)?;
    let recurrent = rnn::is_recurrent(&proto);
    let gpt2 = proto::architecture(&proto).as_deref() == Some(keys::ARCH_GPT2);
    // Token ids in, no recurrent node, no GPT-2 metadata: PyTorch's TransformerEncoder.
    let encoder = !recurrent && !gpt2 && torch_encoder::has_token_input(&proto);
    if opts.vocab.is_some() && !recurrent && !encoder {
        bail!(
            "{}: --vocab applies to recurrent models (LSTM, GRU, RNN) and transformer language models with token              ids as input; this graph is neither",
            input.display()
        );
    }
    let ((bytes, tensor_errors), description) = if recurrent {
        if opts.head.is_some() {
            bail!("{}: --head and --levels apply to PixelCNN models; this is a recurrent text model", input.display());
        }
        let src = rnn::RnnSource::from_proto(input, &proto, opts.vocab.as_deref())?;
        (src.to_arq(opts.quant)?, src.describe())
    } else if encoder {
        if opts.head.is_some() {
            bail!("{}: --head and --levels apply to PixelCNN models; this is a text model", input.display());
        }
        let src = torch_encoder::TorchEncoderSource::from_proto(input, &proto, opts.vocab.as_deref())?;
        (src.to_arq(opts.quant)?, src.describe())
    } else if gpt2 {
        if opts.head.is_some() {
            bail!("{}: --head and --levels apply to PixelCNN models; this is a gpt2 text model", input.display());
        }
        let src = Gpt2Source::from_proto(input, &proto)?;
        (src.to_arq(opts.quant)?, src.describe())
    } else if is_gated_pattern(&proto) {
        pixelcnn::refuse_q4(opts.quant)?;
        match PixelCnnSource::from_proto(input, &proto, opts.head) {
            Ok(src) => (src.to_arq(opts.quant)?, src.describe()),
            // A zero Pad right before a Conv is also a pixel graph's (its pads).
            Err(gated) => match GraphSource::from_proto(input, &proto, opts.head) {
                Ok(src) => (src.to_arq(opts.quant)?, src.describe()),
                Err(graph) => {
                    let prefix = format!("{}: ", input.display());
                    let graph = format!("{graph:#}");
                    bail!(
                        "{gated:#} (a graph with Pad nodes is read as the gated PixelCNN pattern; as a pixel graph, \
                         where a Pad may only pad a Conv's input: {})",
                        graph.strip_prefix(&prefix).unwrap_or(&graph)
                    )
                }
            },
        }
    } else {
        pixelcnn::refuse_q4(opts.quant)?;
        let src = GraphSource::from_proto(input, &proto, opts.head)?;
        (src.to_arq(opts.quant)?, src.describe())
    };
    write_validated(&bytes, out, opts.force)?;
    Ok(OnnxConvertSummary { bytes: bytes.len() as u64, tensor_errors, description })
}
