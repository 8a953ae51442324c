//! What both ONNX patterns read the protobuf with: the model file, constants (one decoder
//! for initializers and Constant nodes), the graph's one input, node attributes and the
//! walk over the nodes in file order that names the node of each refusal.

use arq::format::keys;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use crate::message::name as shown;

/// A refusal: one line, without the file name (the importer's entry adds it).
pub(crate) type R<T> = std::result::Result<T, String>;

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

/// The model metadata `arq.architecture`, if it has one.
pub(crate) fn architecture(proto: &pb::ModelProto) -> Option<String> {
    proto.metadata_props.iter().find(|e| e.key == keys::ARCHITECTURE).map(|e| e.value.trim().to_string())
}

// ---------------------------------------------------------------------------------------
// Constants

/// A decoded constant.
#[derive(Clone, Debug)]
pub(crate) struct Tensor {
    pub dims: Vec<usize>,
    pub data: Data,
}

#[derive(Clone, Debug)]
pub(crate) enum Data {
    /// Any floating-point type, as f32.
    F32(Vec<f32>),
    /// Any integer type, as i64.
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl Tensor {
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    /// The one value of a one-element tensor.
    pub fn scalar(&self) -> Option<f64> {
        if self.len() != 1 {
            return None;
        }
        Some(match &self.data {
            Data::F32(v) => v[0] as f64,
            Data::I64(v) => v[0] as f64,
            Data::Bool(v) => v[0] as u8 as f64,
        })
    }

    pub fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }

    pub fn floats(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` as a truth value (non-zero).
    pub fn truth(&self, i: usize) -> bool {
        match &self.data {
            Data::F32(v) => v[i] != 0.0,
            Data::I64(v) => v[i] != 0,
            Data::Bool(v) => v[i],
        }
    }

    pub fn show_dims(&self) -> String {
        format!("{:?}", self.dims)
    }
}

/// Whether a pattern has boolean constants (GPT-2's causal mask may be one). Where it has
/// none, a boolean tensor is refused by its data type like any other unsupported type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bools {
    Refuse,
    Accept,
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| c.try_into().expect("chunk of N"))
}

/// Decodes a TensorProto: f32/f64/f16/bf16 (as f32), i64/i32 (as i64) and, where
/// `bools` accepts them, booleans; raw or typed fields.
pub(crate) fn decode_tensor(t: &pb::TensorProto, bools: Bools) -> R<Tensor> {
    let name = shown(&t.name);
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(format!("tensor '{name}' keeps its data in an external file, which is not supported"));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor '{name}' has a negative dimension")))
        .collect::<R<_>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("tensor '{name}' has an impossible shape {:?}", t.dims))?;
    let raw = &t.raw_data;
    let data = match t.data_type {
        1 if !raw.is_empty() => Data::F32(le_chunks::<4>(raw).map(f32::from_le_bytes).collect()),
        1 => Data::F32(t.float_data.clone()),
        11 if !raw.is_empty() => Data::F32(le_chunks::<8>(raw).map(|b| f64::from_le_bytes(b) as f32).collect()),
        11 => Data::F32(t.double_data.iter().map(|&v| v as f32).collect()),
        10 | 16 => {
            let bits: Vec<u16> = if !raw.is_empty() {
                le_chunks::<2>(raw).map(u16::from_le_bytes).collect()
            } else {
                t.int32_data.iter().map(|&v| v as u16).collect()
            };
            Data::F32(if t.data_type == 10 {
                bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect()
            } else {
                bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect()
            })
        }
        7 if !raw.is_empty() => Data::I64(le_chunks::<8>(raw).map(i64::from_le_bytes).collect()),
        7 => Data::I64(t.int64_data.clone()),
        6 if !raw.is_empty() => Data::I64(le_chunks::<4>(raw).map(|b| i32::from_le_bytes(b) as i64).collect()),
        6 => Data::I64(t.int32_data.iter().map(|&v| v as i64).collect()),
        9 if bools == Bools::Accept && !raw.is_empty() => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
        9 if bools == Bools::Accept => Data::Bool(t.int32_data.iter().map(|&b| b != 0).collect()),
        other => return Err(format!("tensor '{name}' has ONNX data type {other}, which is not supported here")),
    };
    let c = Tensor { dims, data };
    if c.len() != count {
        return Err(format!("tensor '{name}' holds {} values for its shape {:?}", c.len(), t.dims));
    }
    Ok(c)
}

/// The value of a Constant node.
pub(crate) fn constant_node(n: &pb::NodeProto, bools: Bools) -> R<Tensor> {
    if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
        decode_tensor(t, bools)
    } else if let Some(a) = attr(n, "value_ints") {
        Ok(Tensor { dims: vec![a.ints.len()], data: Data::I64(a.ints.clone()) })
    } else if let Some(a) = attr(n, "value_int") {
        Ok(Tensor { dims: vec![], data: Data::I64(vec![a.i]) })
    } else if let Some(a) = attr(n, "value_floats") {
        Ok(Tensor { dims: vec![a.floats.len()], data: Data::F32(a.floats.clone()) })
    } else if let Some(a) = attr(n, "value_float") {
        Ok(Tensor { dims: vec![], data: Data::F32(vec![a.f]) })
    } else {
        Err("Constant without a supported value attribute".into())
    }
}

/// The constants by name: initializers, Constant nodes and what a walker derives from
/// them. One that failed to decode keeps its refusal until a node uses it.
pub(crate) struct Constants(HashMap<String, R<Rc<Tensor>>>);

impl Constants {
    /// The graph's initializers.
    pub fn new(graph: &pb::GraphProto, bools: Bools) -> Self {
        Constants(graph.initializer.iter().map(|t| (t.name.clone(), decode_tensor(t, bools).map(Rc::new))).collect())
    }

    pub fn insert(&mut self, name: String, c: R<Rc<Tensor>>) {
        self.0.insert(name, c);
    }

    pub fn get(&self, name: &str) -> Option<&R<Rc<Tensor>>> {
        self.0.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The constant `name`, where the pattern needs one; `computed`: whether a node
    /// computes a tensor of that name instead.
    pub fn lookup(&self, name: &str, computed: bool) -> R<Rc<Tensor>> {
        let found = self.0.get(name);
        let name = shown(name);
        match found {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err(e)) => Err(e.clone()),
            None if computed => Err(format!("'{name}' must be a constant")),
            None => Err(format!("input '{name}' is not defined")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The graph

/// The graph's one real input (not an initializer): its name and tensor type. `one`
/// ends the refusal of any other count ("a PixelCNN has one, the image (N, 1, H, W)").
pub(crate) fn graph_input<'g>(g: &'g pb::GraphProto, one: &str) -> R<(&'g str, &'g pb::type_proto::Tensor)> {
    use pb::type_proto::Value as T;
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = g.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect();
    let [x] = inputs.as_slice() else {
        return Err(format!("the graph has {} inputs; {one}", inputs.len()));
    };
    let Some(T::TensorType(tt)) = x.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(format!("input '{}' is not a tensor", shown(&x.name)));
    };
    Ok((&x.name, tt))
}

/// `node 13 (Relu "name")`: how a refusal names node `i` (counted from 0 in file order).
pub(crate) fn node_label(i: usize, n: &pb::NodeProto) -> String {
    format!("node {i} ({} \"{}\")", shown(&n.op_type), shown(&n.name))
}

/// [`node_label`] of node `i`, or the graph input (`usize::MAX`).
pub(crate) fn label(graph: &pb::GraphProto, i: usize) -> String {
    match graph.node.get(i) {
        Some(n) => node_label(i, n),
        None => "the graph input".into(),
    }
}

/// Visits the nodes in file order (ONNX requires topological order, so every input is
/// known when its node comes); the first refusal, with its node's label, ends the walk.
/// Operators of other domains than the standard one are refused here.
pub(crate) fn walk_nodes<'g>(
    graph: &'g pb::GraphProto,
    mut visit: impl FnMut(usize, &'g pb::NodeProto) -> R<()>,
) -> R<()> {
    for (i, n) in graph.node.iter().enumerate() {
        let r = if !n.domain.is_empty() && n.domain != "ai.onnx" {
            Err(format!("operator domain '{}' is not supported", shown(&n.domain)))
        } else {
            visit(i, n)
        };
        r.map_err(|e| format!("{}: {e}", node_label(i, n)))?;
    }
    Ok(())
}

/// Input `i`'s name, where the node has that input (an empty name is an absent optional
/// input).
pub(crate) fn input_name(n: &pb::NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
}

/// The node's first output name ("" if none).
pub(crate) fn output0(n: &pb::NodeProto) -> String {
    n.output.first().cloned().unwrap_or_default()
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
