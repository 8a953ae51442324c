//! Writing pixel-graph files (std only): the one serializer of FORMAT.md's "Pixel
//! graphs" section, used by the converter's ONNX importer and by the tests' random
//! graphs ([`GraphSpec::to_arq`]).

use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use super::{padded_cols, Op, GRAPH_VERSION};
use crate::format::keys;
use crate::format::writer::{ArqWriter, Meta};
use crate::format::Dtype;
use crate::models::pixelcnn::heads::Head;
use crate::quant::{dequantize_row_q8, quantize_weights_q8};

/// A convolution: its taps and f32 parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvSpec {
    /// `(dy, dx)` of each tap.
    pub taps: Vec<(i16, i16)>,
    pub cin: usize,
    /// `[cout, taps * cin]`, row-major: row `o`, column `t * cin + ci`.
    pub weight: Vec<f32>,
    /// `cout` values.
    pub bias: Vec<f32>,
}

impl ConvSpec {
    /// The file's matrix: each row zero-padded to [`padded_cols`] columns.
    pub fn matrix(&self) -> (usize, usize, Vec<f32>) {
        let rows = self.bias.len();
        let n = self.taps.len() * self.cin;
        let cols = padded_cols(self.taps.len(), self.cin);
        let mut m = vec![0.0f32; rows * cols];
        for (o, src) in self.weight.chunks_exact(n.max(1)).enumerate().take(rows) {
            m[o * cols..o * cols + n].copy_from_slice(src);
        }
        (rows, cols, m)
    }
}

/// One node: tensor ids as FORMAT.md numbers them (0 the image, node `i` gives `i + 1`).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub op: Op,
    pub a: usize,
    /// The second input of binary ops (else ignored).
    pub b: usize,
    pub channels: usize,
    pub conv: Option<ConvSpec>,
}

/// A weight's name and its relative q8 error.
pub type WeightError = (String, f64);

/// A whole graph with its head.
#[derive(Clone, Debug)]
pub struct GraphSpec {
    pub name: String,
    pub source: String,
    pub height: usize,
    pub width: usize,
    pub head: Head,
    pub levels: usize,
    /// The network input of each level.
    pub input_map: Vec<f32>,
    pub nodes: Vec<NodeSpec>,
}

impl GraphSpec {
    /// The `.arq` bytes with q8 (`q8`) or f32 convolution weights, and each q8 weight's
    /// relative quantization error `|w - q(w)| / |w|`.
    pub fn to_arq(&self, q8: bool) -> std::io::Result<(Vec<u8>, Vec<WeightError>)> {
        let mut w = ArqWriter::new();
        let quant = if q8 { "q8" } else { "f32" };
        let meta = [
            (keys::ARCHITECTURE, Meta::Str(keys::ARCH_PIXELGRAPH.into())),
            (keys::QUANT, Meta::Str(quant.into())),
            (keys::GENERAL_NAME, Meta::Str(self.name.clone())),
            ("general.source", Meta::Str(self.source.clone())),
            (keys::PIXELGRAPH_VERSION, Meta::U64(GRAPH_VERSION)),
            (keys::PIXELGRAPH_HEIGHT, Meta::U64(self.height as u64)),
            (keys::PIXELGRAPH_WIDTH, Meta::U64(self.width as u64)),
            (keys::PIXELGRAPH_CHANNELS, Meta::U64(1)),
            (keys::PIXELGRAPH_HEAD, Meta::Str(self.head.name().into())),
            (keys::PIXELGRAPH_LEVELS, Meta::U64(self.levels as u64)),
        ];
        for (k, v) in meta {
            w.meta(k, v);
        }
        if let Head::LogisticMixture { k, min_log_scale } = self.head {
            w.meta(keys::PIXELGRAPH_MIXTURES, Meta::U64(k as u64));
            w.meta(keys::PIXELGRAPH_MIN_LOG_SCALE, Meta::F32(min_log_scale));
        }
        let map: Vec<u8> = self.input_map.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.tensor("graph.input_map", Dtype::F32, &[self.input_map.len() as u64], map)?;
        let records: Vec<u8> = self.nodes.iter().flat_map(record).collect();
        w.tensor("graph.nodes", Dtype::U8, &[records.len() as u64], records)?;
        let mut errors = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(conv) = &node.conv else { continue };
            let taps: Vec<u8> =
                conv.taps.iter().flat_map(|&(dy, dx)| [dy.to_le_bytes(), dx.to_le_bytes()]).flatten().collect();
            w.tensor(&format!("n{i}.taps"), Dtype::U8, &[taps.len() as u64], taps)?;
            let (rows, cols, m) = conv.matrix();
            let dims = [rows as u64, cols as u64];
            if q8 {
                let blocks = quantize_weights_q8(&m);
                let mut deq = vec![0.0f32; m.len()];
                dequantize_row_q8(&blocks, &mut deq);
                errors.push((format!("n{i}.weight"), relative_error(&m, &deq)));
                w.tensor(&format!("n{i}.weight"), Dtype::Q8, &dims, bytemuck::cast_slice(&blocks).to_vec())?;
            } else {
                w.tensor(&format!("n{i}.weight"), Dtype::F32, &dims, bytemuck::cast_slice(&m).to_vec())?;
            }
            w.tensor(&format!("n{i}.bias"), Dtype::F32, &[rows as u64], bytemuck::cast_slice(&conv.bias).to_vec())?;
        }
        let mut out = Vec::new();
        w.write(&mut out)?;
        Ok((out, errors))
    }
}

/// A node's 32-byte record: `op, a, b, channels, p0, p1, 0, 0` as little-endian i32.
fn record(n: &NodeSpec) -> Vec<u8> {
    let (p0, p1) = match n.op {
        Op::Elu { alpha } => (alpha.to_bits() as i32, 0),
        Op::Affine { scale, shift } => (scale.to_bits() as i32, shift.to_bits() as i32),
        Op::Slice { start } => (start as i32, 0),
        _ => (0, 0),
    };
    let b = if n.op.binary() { n.b } else { 0 };
    [n.op.code(), n.a as i32, b as i32, n.channels as i32, p0, p1, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (x as f64).powi(2);
    }
    if den == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}
