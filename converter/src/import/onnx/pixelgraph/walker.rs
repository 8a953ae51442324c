//! The pixel-graph walker (module [`super`] lists what it accepts): a value for every
//! ONNX tensor name, graph nodes for the feature-map operators, and the causality proof
//! as each convolution comes.

use std::collections::HashMap;
use std::rc::Rc;

use arq::models::pixelgraph::writer::{ConvSpec, NodeSpec};
use arq::models::pixelgraph::{Op, MAX_CHANNELS, MAX_NODES, MAX_TAPS};
use tract_onnx::pb;

use crate::import::onnx::proto::{
    attr, attr_int, attr_ints, attr_str, clamp_index, constant_node, graph_input, input_name, walk_nodes, Bools,
    Constants, Data, Tensor, R,
};
use crate::message::name as shown;

const MAX_SIDE: i64 = 1024;
/// Larger pads are refused before any arithmetic on them.
const MAX_PAD: i64 = 1 << 20;

/// The operators a pixel graph may contain (for the refusal of any other).
const ACCEPTED: &str = "Conv, Add, Sub, Mul, Div (by a constant, on the input), Neg, Tanh, Sigmoid, Relu, Elu, \
                        Slice, Split, Concat, Pad (zeros, before a Conv), Reshape (channel regrouping), Cast, Identity, Constant, Shape, \
                        Gather, Unsqueeze, Squeeze";

/// One scalar step of the input scaling, applied in f32 in graph order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Step {
    Cast,
    Add(f32),
    /// `x - c`.
    Sub(f32),
    /// `c - x`.
    SubFrom(f32),
    Mul(f32),
    /// `x / c`.
    Div(f32),
}

/// The network input of a pixel whose raw input value is `v`.
pub(super) fn apply_steps(steps: &[Step], v: f32) -> f32 {
    steps.iter().fold(v, |x, s| match *s {
        Step::Cast => x,
        Step::Add(c) => x + c,
        Step::Sub(c) => x - c,
        Step::SubFrom(c) => c - x,
        Step::Mul(c) => x * c,
        Step::Div(c) => x / c,
    })
}

/// What an ONNX tensor is.
#[derive(Clone, Debug)]
enum Val {
    /// The image input with the scalar steps applied so far; `int` while its values are
    /// still integers (before a Cast to float).
    Image { steps: Vec<Step>, int: bool },
    /// A feature map: graph tensor `id` (0 = the mapped image).
    Map(usize),
    /// Integers of rank 0 (`scalar`) or 1; `None` where unknown (the batch size).
    Ints { scalar: bool, v: Vec<Option<i64>> },
    /// A floating-point constant (weights, scalars).
    Floats(Rc<Tensor>),
    /// A map or the image zero-padded by `[top, left, bottom, right]`, which only a Conv
    /// may read (the pads add to its own).
    Padded(Box<Val>, [i64; 4]),
}

/// What the walk produced.
pub(super) struct Parsed {
    pub(super) height: usize,
    pub(super) width: usize,
    /// Whether the image input holds integers (else floats).
    pub(super) int_input: bool,
    /// The scalar steps between the input and the convolutions that read it.
    pub(super) steps: Vec<Step>,
    /// The live nodes; the last one's output is the head's input.
    pub(super) nodes: Vec<NodeSpec>,
}

/// Per graph tensor facts.
#[derive(Clone, Copy, Debug)]
struct Info {
    channels: usize,
    /// May its value at `(r, c)` depend on image row `r`?
    current_row: bool,
}

struct Walker {
    h: i64,
    w: i64,
    consts: Constants,
    vals: HashMap<String, Val>,
    nodes: Vec<NodeSpec>,
    info: Vec<Info>,
    /// The steps of the image every convolution on it reads.
    steps: Option<Vec<Step>>,
}

/// Walks `graph` into a pixel graph.
pub(super) fn parse(graph: &pb::GraphProto) -> R<Parsed> {
    let (name, h, w, int_input) = image_input(graph)?;
    let mut wk = Walker {
        h,
        w,
        consts: Constants::new(graph, Bools::Refuse),
        vals: HashMap::new(),
        nodes: Vec::new(),
        info: vec![Info { channels: 1, current_row: true }],
        steps: None,
    };
    wk.vals.insert(name, Val::Image { steps: Vec::new(), int: int_input });
    walk_nodes(graph, |_, n| wk.node(n))?;
    let [out] = graph.output.as_slice() else {
        return Err(format!(
            "the graph has {} outputs; a pixel graph has one, the head's parameters",
            graph.output.len()
        ));
    };
    let t = match wk.val(&out.name)? {
        Val::Map(0) | Val::Image { .. } => return Err("the graph output is the image itself".into()),
        Val::Map(t) => t,
        _ => return Err(format!("the graph output '{}' is not a feature map", shown(&out.name))),
    };
    let nodes = prune(wk.nodes, t);
    if nodes.len() > MAX_NODES {
        return Err(format!("the graph has {} nodes after folding; at most {MAX_NODES} are supported", nodes.len()));
    }
    Ok(Parsed { height: h as usize, width: w as usize, int_input, steps: wk.steps.unwrap_or_default(), nodes })
}

/// The graph's one input: name, height, width, and whether it holds integers.
fn image_input(g: &pb::GraphProto) -> R<(String, i64, i64, bool)> {
    use pb::tensor_shape_proto::dimension::Value as D;
    let (name, tt) = graph_input(g, "a PixelCNN has one, the image (N, 1, H, W)")?;
    let int = match tt.elem_type {
        1 | 10 | 11 | 16 => false,
        2 | 6 | 7 => true,
        t => return Err(format!("input '{}' has ONNX data type {t}; expected float, uint8 or int", shown(name))),
    };
    let dims: Vec<Option<i64>> = tt
        .shape
        .as_ref()
        .map(|s| s.dim.iter().map(|d| if let Some(D::DimValue(v)) = d.value { Some(v) } else { None }).collect())
        .unwrap_or_default();
    let show: Vec<String> = dims.iter().map(|x| x.map_or("?".into(), |x| x.to_string())).collect();
    match dims[..] {
        [_, Some(1), Some(h), Some(w)] if (1..=MAX_SIDE).contains(&h) && (1..=MAX_SIDE).contains(&w) => {
            Ok((name.to_string(), h, w, int))
        }
        [_, Some(c), _, _] if c != 1 => Err(format!(
            "input '{}' has shape ({}): only one input channel (grey images) is supported",
            shown(name),
            show.join(", ")
        )),
        _ => Err(format!(
            "input '{}' has shape ({}); expected (N, 1, H, W) with H and W fixed, 1..={MAX_SIDE}",
            shown(name),
            show.join(", ")
        )),
    }
}

/// The nodes `out` needs, renumbered (tensor ids shift down over dropped nodes).
fn prune(nodes: Vec<NodeSpec>, out: usize) -> Vec<NodeSpec> {
    let mut live = vec![false; nodes.len() + 1];
    live[out] = true;
    for t in (1..=out).rev() {
        if live[t] {
            let n = &nodes[t - 1];
            live[n.a] = true;
            if n.op.binary() {
                live[n.b] = true;
            }
        }
    }
    let mut new_id = vec![0usize; nodes.len() + 1];
    let mut kept = Vec::new();
    for (i, mut n) in nodes.into_iter().enumerate().take(out) {
        if live[i + 1] {
            n.a = new_id[n.a];
            n.b = if n.op.binary() { new_id[n.b] } else { n.a };
            kept.push(n);
            new_id[i + 1] = kept.len();
        }
    }
    kept
}

impl Walker {
    fn val(&self, name: &str) -> R<Val> {
        if let Some(v) = self.vals.get(name) {
            return Ok(v.clone());
        }
        let c = self.consts.lookup(name, false)?;
        Ok(const_val(c))
    }

    fn input(&self, n: &pb::NodeProto, i: usize) -> R<Val> {
        let name = input_name(n, i).ok_or_else(|| format!("input {i} is missing"))?;
        self.val(name)
    }

    fn set(&mut self, n: &pb::NodeProto, v: Val) {
        if let Some(o) = n.output.first() {
            self.vals.insert(o.clone(), v);
        }
    }

    /// A new graph node; its output tensor's id.
    fn push(&mut self, op: Op, a: usize, b: usize, channels: usize, conv: Option<ConvSpec>) -> R<usize> {
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(format!("{channels} channels; 1..={MAX_CHANNELS} are supported"));
        }
        if self.nodes.len() >= 4 * MAX_NODES {
            return Err("too many nodes".into());
        }
        let current_row = match &conv {
            Some(c) => self.info[a].current_row && c.taps.iter().any(|&(dy, _)| dy == 0),
            None => self.info[a].current_row || (op.binary() && self.info[b].current_row),
        };
        self.nodes.push(NodeSpec { op, a, b, channels, conv });
        self.info.push(Info { channels, current_row });
        Ok(self.nodes.len())
    }

    /// A feature map input of a pointwise op (the image is refused: the op would need
    /// the current pixel's value).
    fn map(&self, v: &Val, what: &str) -> R<usize> {
        match v {
            Val::Map(t) => Ok(*t),
            Val::Image { .. } => Err(format!(
                "{what} reads the image directly; only a convolution whose taps stop before the pixel may read it"
            )),
            Val::Padded(..) => Err(format!("{what} of a Pad output (a Pad may only pad a Conv's input)")),
            _ => Err(format!("{what} of a constant is not supported")),
        }
    }

    fn node(&mut self, n: &pb::NodeProto) -> R<()> {
        match n.op_type.as_str() {
            "Identity" => {
                let v = self.input(n, 0)?;
                self.set(n, v);
            }
            "Constant" => {
                let c = constant_node(n, Bools::Refuse)?;
                self.set(n, const_val(Rc::new(c)));
            }
            "Cast" => self.cast(n)?,
            "Shape" => self.shape(n)?,
            "Gather" => self.gather(n)?,
            "Unsqueeze" | "Squeeze" => self.squeeze(n)?,
            "Concat" => self.concat(n)?,
            "Add" | "Sub" | "Mul" | "Div" => self.arith(n)?,
            "Tanh" | "Sigmoid" | "Relu" | "Elu" => {
                let a = self.map(&self.input(n, 0)?, &n.op_type)?;
                let op = match n.op_type.as_str() {
                    "Tanh" => Op::Tanh,
                    "Sigmoid" => Op::Sigmoid,
                    "Relu" => Op::Relu,
                    _ => Op::Elu { alpha: attr(n, "alpha").map_or(1.0, |a| a.f) },
                };
                let t = self.push(op, a, a, self.info[a].channels, None)?;
                self.set(n, Val::Map(t));
            }
            "Neg" => {
                let a = self.map(&self.input(n, 0)?, "Neg")?;
                let t = self.push(Op::Affine { scale: -1.0, shift: 0.0 }, a, a, self.info[a].channels, None)?;
                self.set(n, Val::Map(t));
            }
            "Pad" => self.pad(n)?,
            "Slice" => self.slice(n)?,
            "Split" => self.split(n)?,
            "Reshape" => self.reshape(n)?,
            "Conv" => {
                let t = self.conv(n)?;
                self.set(n, Val::Map(t));
            }
            op => return Err(format!("unsupported operator {op} (a pixel graph may contain {ACCEPTED})")),
        }
        Ok(())
    }

    fn cast(&mut self, n: &pb::NodeProto) -> R<()> {
        let to = attr_int(n, "to").unwrap_or(0);
        let float = matches!(to, 1 | 10 | 11 | 16);
        let int = matches!(to, 2 | 3 | 4 | 5 | 6 | 7 | 12 | 13);
        let v = match self.input(n, 0)? {
            Val::Image { mut steps, int: was_int } if float => {
                if was_int {
                    steps.push(Step::Cast);
                }
                Val::Image { steps, int: false }
            }
            Val::Image { int: true, steps } if int => Val::Image { steps, int: true },
            v @ Val::Map(_) if float => v,
            v @ Val::Ints { .. } if int => v,
            _ => return Err(format!("Cast to ONNX type {to} of this value is not supported")),
        };
        self.set(n, v);
        Ok(())
    }

    fn shape(&mut self, n: &pb::NodeProto) -> R<()> {
        let ch = match self.input(n, 0)? {
            Val::Map(t) => self.info[t].channels as i64,
            Val::Image { .. } => 1,
            _ => return Err("Shape of a constant is not supported".into()),
        };
        let full = [None, Some(ch), Some(self.h), Some(self.w)];
        let start = clamp_index(attr_int(n, "start").unwrap_or(0), 4) as usize;
        let end = clamp_index(attr_int(n, "end").unwrap_or(4), 4) as usize;
        let v = full[start..end.max(start)].to_vec();
        self.set(n, Val::Ints { scalar: false, v });
        Ok(())
    }

    fn gather(&mut self, n: &pb::NodeProto) -> R<()> {
        let (Val::Ints { scalar: false, v: data }, Val::Ints { scalar, v: idx }) =
            (self.input(n, 0)?, self.input(n, 1)?)
        else {
            return Err("Gather is supported on shape integers only".into());
        };
        if attr_int(n, "axis").unwrap_or(0) != 0 {
            return Err("Gather on an axis other than 0".into());
        }
        let len = data.len() as i64;
        let out = idx
            .iter()
            .map(|i| match i {
                Some(i) if (-len..len).contains(i) => Ok(data[clamp_index(*i, len) as usize]),
                _ => Err(format!("Gather index {i:?} out of range for {len} values")),
            })
            .collect::<R<Vec<_>>>()?;
        self.set(n, Val::Ints { scalar, v: out });
        Ok(())
    }

    fn squeeze(&mut self, n: &pb::NodeProto) -> R<()> {
        let Val::Ints { scalar, v } = self.input(n, 0)? else {
            return Err(format!("{} is supported on shape integers only", n.op_type));
        };
        let unsqueeze = n.op_type == "Unsqueeze";
        if unsqueeze != scalar || (!scalar && v.len() != 1) {
            return Err(format!("{} of a rank-{} value is not supported", n.op_type, usize::from(!scalar)));
        }
        self.set(n, Val::Ints { scalar: !unsqueeze, v });
        Ok(())
    }

    fn concat(&mut self, n: &pb::NodeProto) -> R<()> {
        let vals = (0..n.input.len()).map(|i| self.input(n, i)).collect::<R<Vec<_>>>()?;
        if vals.iter().all(|v| matches!(v, Val::Ints { scalar: false, .. })) {
            let v = vals.into_iter().flat_map(|v| if let Val::Ints { v, .. } = v { v } else { Vec::new() }).collect();
            self.set(n, Val::Ints { scalar: false, v });
            return Ok(());
        }
        let axis = attr_int(n, "axis").unwrap_or(0);
        if axis != 1 && axis != -3 {
            return Err(format!("Concat on axis {axis}; feature maps concatenate on channels (axis 1) only"));
        }
        let maps = vals.iter().map(|v| self.map(v, "Concat")).collect::<R<Vec<_>>>()?;
        let Some((&first, rest)) = maps.split_first() else { return Err("Concat without inputs".into()) };
        let mut t = first;
        for &b in rest {
            let ch = self.info[t].channels + self.info[b].channels;
            t = self.push(Op::Concat, t, b, ch, None)?;
        }
        self.set(n, Val::Map(t));
        Ok(())
    }

    fn arith(&mut self, n: &pb::NodeProto) -> R<()> {
        let (a, b) = (self.input(n, 0)?, self.input(n, 1)?);
        let op = n.op_type.as_str();
        let v = match (a, b) {
            (Val::Ints { scalar: sa, v: va }, Val::Ints { scalar: sb, v: vb }) => int_arith(op, sa && sb, &va, &vb)?,
            (Val::Image { steps, int }, c) => {
                Val::Image { steps: image_step(op, steps, int, scalar_of(&c), true)?, int }
            }
            (c, Val::Image { steps, int }) => {
                Val::Image { steps: image_step(op, steps, int, scalar_of(&c), false)?, int }
            }
            (Val::Map(x), Val::Map(y)) => {
                let (cx, cy) = (self.info[x].channels, self.info[y].channels);
                if cx != cy {
                    return Err(format!("{op} of maps with {cx} and {cy} channels (no broadcasting)"));
                }
                let op = match op {
                    "Add" => Op::Add,
                    "Sub" => Op::Sub,
                    "Mul" => Op::Mul,
                    _ => return Err("Div of two feature maps is not supported".into()),
                };
                Val::Map(self.push(op, x, y, cx, None)?)
            }
            (Val::Map(x), c) => Val::Map(self.affine(op, x, scalar_of(&c), true)?),
            (c, Val::Map(x)) => Val::Map(self.affine(op, x, scalar_of(&c), false)?),
            _ => return Err(format!("{op} of two float constants is not supported")),
        };
        self.set(n, v);
        Ok(())
    }

    /// `map op c` (`map_first`) or `c op map` as an affine node.
    fn affine(&mut self, op: &str, x: usize, c: Option<f32>, map_first: bool) -> R<usize> {
        let c = c.ok_or_else(|| format!("{op} of a feature map and a non-scalar constant is not supported"))?;
        let (scale, shift) = match (op, map_first) {
            ("Add", _) => (1.0, c),
            ("Sub", true) => (1.0, -c),
            ("Sub", false) => (-1.0, c),
            ("Mul", _) => (c, 0.0),
            _ => return Err(format!("{op} of a feature map by a constant is not supported")),
        };
        self.push(Op::Affine { scale, shift }, x, x, self.info[x].channels, None)
    }

    fn slice(&mut self, n: &pb::NodeProto) -> R<()> {
        let ints = |i: usize| -> R<Option<Vec<i64>>> {
            match input_name(n, i) {
                None => Ok(None),
                Some(_) => match self.input(n, i)? {
                    Val::Ints { v, .. } => v
                        .into_iter()
                        .collect::<Option<Vec<i64>>>()
                        .map(Some)
                        .ok_or_else(|| "Slice bounds depend on the batch size".to_string()),
                    _ => Err("Slice bounds must be integer constants".into()),
                },
            }
        };
        let (starts, ends) = (ints(1)?.unwrap_or_default(), ints(2)?.unwrap_or_default());
        let axes = ints(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = ints(4)?.unwrap_or_else(|| vec![1; starts.len()]);
        if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err("Slice starts, ends, axes and steps differ in length".into());
        }
        match self.input(n, 0)? {
            Val::Ints { scalar: false, v } => {
                let len = v.len() as i64;
                if axes.iter().any(|&a| a != 0 && a != -1) || steps.iter().any(|&s| s != 1) {
                    return Err("Slice of shape integers: only axis 0, step 1".into());
                }
                let (s, e) = (clamp_index(starts[0], len) as usize, clamp_index(ends[0], len) as usize);
                self.set(n, Val::Ints { scalar: false, v: v[s..e.max(s)].to_vec() });
                Ok(())
            }
            v => {
                let t = self.map(&v, "Slice")?;
                let ch = self.info[t].channels as i64;
                let (mut lo, mut hi) = (0, ch);
                for k in 0..axes.len() {
                    let axis = if axes[k] < 0 { axes[k] + 4 } else { axes[k] };
                    let dim = [i64::MAX, ch, self.h, self.w].get(axis as usize).copied().unwrap_or(0);
                    let (s, e) = (clamp_index(starts[k], dim), clamp_index(ends[k], dim));
                    match axis {
                        1 if steps[k] == 1 => (lo, hi) = (s, e.max(s)),
                        0 | 2 | 3 if steps[k] == 1 && s == 0 && e == dim => {}
                        _ => {
                            return Err(format!(
                                "Slice [{}..{}] on axis {axis} (step {}): only whole-image channel slices are supported",
                                starts[k], ends[k], steps[k]
                            ));
                        }
                    }
                }
                let out = self.channel_slice(t, lo as usize, hi as usize)?;
                self.set(n, Val::Map(out));
                Ok(())
            }
        }
    }

    /// Channels `lo..hi` of tensor `t` (itself when that is all of them).
    fn channel_slice(&mut self, t: usize, lo: usize, hi: usize) -> R<usize> {
        if lo == 0 && hi == self.info[t].channels {
            return Ok(t);
        }
        if lo >= hi {
            return Err(format!("an empty channel slice {lo}..{hi}"));
        }
        self.push(Op::Slice { start: lo }, t, t, hi - lo, None)
    }

    fn split(&mut self, n: &pb::NodeProto) -> R<()> {
        let t = self.map(&self.input(n, 0)?, "Split")?;
        let axis = attr_int(n, "axis").unwrap_or(0);
        if axis != 1 && axis != -3 {
            return Err(format!("Split on axis {axis}; feature maps split on channels (axis 1) only"));
        }
        let ch = self.info[t].channels;
        let sizes: Vec<i64> = match (input_name(n, 1), attr_ints(n, "split")) {
            (Some(_), _) => match self.input(n, 1)? {
                Val::Ints { v, .. } => v.into_iter().collect::<Option<_>>().ok_or("Split sizes are unknown")?,
                _ => return Err("Split sizes must be integer constants".into()),
            },
            (None, Some(s)) => s,
            (None, None) => {
                let k = n.output.len();
                if k == 0 || !ch.is_multiple_of(k) {
                    return Err(format!("Split of {ch} channels into {k} equal parts"));
                }
                vec![(ch / k) as i64; k]
            }
        };
        if sizes.len() != n.output.len() || sizes.iter().any(|&s| s <= 0) || sizes.iter().sum::<i64>() != ch as i64 {
            return Err(format!("Split sizes {sizes:?} do not divide {ch} channels into {} outputs", n.output.len()));
        }
        let mut lo = 0;
        for (out, &s) in n.output.iter().zip(&sizes) {
            let part = self.channel_slice(t, lo, lo + s as usize)?;
            self.vals.insert(out.clone(), Val::Map(part));
            lo += s as usize;
        }
        Ok(())
    }

    /// A Reshape that keeps the batch first and H, W last and only regroups the channels
    /// (Tutorial 12's `(N, 256, C, H, W)` view of the logits) leaves the data as it is.
    fn reshape(&mut self, n: &pb::NodeProto) -> R<()> {
        let data = self.input(n, 0)?;
        let Val::Ints { v: shape, .. } = self.input(n, 1)? else {
            return Err("Reshape to a shape that is not integer constants".into());
        };
        let t = self.map(&data, "Reshape")?;
        let ch = self.info[t].channels as i64;
        let batch_first = matches!(shape.first(), Some(None | Some(0) | Some(-1)));
        let tail_hw = shape.len() >= 3 && shape[shape.len() - 2..] == [Some(self.h), Some(self.w)];
        let middle: Option<i64> =
            if shape.len() >= 3 { shape[1..shape.len() - 2].iter().copied().product() } else { None };
        if !(batch_first && tail_hw && middle == Some(ch)) {
            let show: Vec<String> = shape.iter().map(|d| d.map_or("N".into(), |d| d.to_string())).collect();
            return Err(format!(
                "Reshape of a {ch}-channel map to [{}]: only regrouping the channels (batch first, H and W last) is supported",
                show.join(", ")
            ));
        }
        self.set(n, Val::Map(t));
        Ok(())
    }

    /// A constant zero Pad of H and W only, kept for the Conv that reads it.
    fn pad(&mut self, n: &pb::NodeProto) -> R<()> {
        let v = self.input(n, 0)?;
        if !matches!(v, Val::Map(_) | Val::Image { .. }) {
            return Err("Pad of something other than a feature map or the image".into());
        }
        let mode = attr_str(n, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(format!("Pad mode {mode} (only zero padding is supported)"));
        }
        if let Some(c) = input_name(n, 2) {
            if scalar_of(&self.val(c)?) != Some(0.0) {
                return Err("Pad with a non-zero value".into());
            }
        }
        if input_name(n, 3).is_some() {
            return Err("Pad with axes (opset 18) is not supported; export without them".into());
        }
        let pads: Vec<i64> = match (input_name(n, 1), attr_ints(n, "pads")) {
            (Some(_), _) => match self.input(n, 1)? {
                Val::Ints { v, .. } => v.into_iter().collect::<Option<_>>().ok_or("Pad amounts are unknown")?,
                _ => return Err("Pad amounts must be integer constants".into()),
            },
            (None, Some(p)) => p,
            (None, None) => return Err("Pad without amounts".into()),
        };
        let ok = pads.len() == 8 && pads.iter().all(|p| (0..=MAX_PAD).contains(p));
        if !ok || pads[0] != 0 || pads[1] != 0 || pads[4] != 0 || pads[5] != 0 {
            return Err(format!("Pad amounts {pads:?}: only non-negative pads of H and W are supported"));
        }
        self.set(n, Val::Padded(Box::new(v), [pads[2], pads[3], pads[6], pads[7]]));
        Ok(())
    }

    /// A Conv node as its non-zero taps, after the causality checks.
    fn conv(&mut self, n: &pb::NodeProto) -> R<usize> {
        let (input, extra) = match self.input(n, 0)? {
            Val::Padded(v, p) => (*v, p),
            v => (v, [0; 4]),
        };
        let a = match input {
            Val::Map(t) => t,
            Val::Image { steps, int } => {
                if int {
                    return Err("a Conv on the integer image (Cast it to float first)".into());
                }
                match &self.steps {
                    Some(s) if *s != steps => {
                        return Err("the image reaches two convolutions with different scalings".into());
                    }
                    _ => self.steps = Some(steps),
                }
                0
            }
            _ => return Err("a Conv on a constant".into()),
        };
        let spec = self.conv_taps(n, a, extra)?;
        let cout = spec.bias.len();
        self.push(Op::Conv, a, a, cout, Some(spec))
    }

    /// `extra`: the pads of a Pad node before the Conv.
    fn conv_taps(&self, n: &pb::NodeProto, a: usize, extra: [i64; 4]) -> R<ConvSpec> {
        let wname = input_name(n, 1).ok_or("Conv without weights")?;
        let w = self.consts.lookup(wname, self.vals.contains_key(wname))?;
        let Data::F32(weight) = &w.data else { return Err(format!("weight '{}' is not floating point", shown(wname))) };
        let [co, ci, kh, kw] = w.dims[..] else {
            return Err(format!(
                "weight '{}' has shape {:?}; only 2-D convolutions are supported",
                shown(wname),
                w.dims
            ));
        };
        let cin = self.info[a].channels;
        if co == 0 || kh == 0 || kw == 0 || ci != cin {
            return Err(format!("weight '{}' has shape {:?} for an input of {cin} channels", shown(wname), w.dims));
        }
        let bias = match input_name(n, 2) {
            None => vec![0.0; co],
            Some(b) => match self.consts.lookup(b, self.vals.contains_key(b))?.floats() {
                Some(d) if d.len() == co => d.to_vec(),
                _ => return Err(format!("bias '{}' is not {co} floats", shown(b))),
            },
        };
        let mut g = Geometry::of(n, kh, kw)?;
        for (p, e) in g.pads.iter_mut().zip(extra) {
            *p += e;
        }
        if g.pads[0] + g.pads[2] != g.dil[0] * (kh as i64 - 1) || g.pads[1] + g.pads[3] != g.dil[1] * (kw as i64 - 1) {
            return Err(format!(
                "pads {:?} with a {kh}x{kw} kernel, dilations {:?} change the image size (a pixel graph keeps H x W)",
                g.pads, g.dil
            ));
        }
        let taps_n = kh * kw;
        let mut taps = Vec::new();
        let mut cols: Vec<usize> = Vec::new();
        for ki in 0..kh {
            for kj in 0..kw {
                let k = ki * kw + kj;
                let nonzero = (0..co * ci).any(|oc| weight[oc * taps_n + k] != 0.0);
                let dy = ki as i64 * g.dil[0] - g.pads[0];
                let dx = kj as i64 * g.dil[1] - g.pads[1];
                if !nonzero || dy.abs() >= self.h || dx.abs() >= self.w {
                    continue; // a masked tap, or one that never reaches the image
                }
                self.check_tap(a, (ki, kj), (kh, kw), (dy, dx))?;
                taps.push((dy as i16, dx as i16));
                cols.push(k);
            }
        }
        if taps.is_empty() {
            return Err(format!("a {kh}x{kw} Conv with no non-zero tap inside the image"));
        }
        if taps.len() > MAX_TAPS {
            return Err(format!("{} taps; at most {MAX_TAPS} are supported", taps.len()));
        }
        let mut m = Vec::with_capacity(co * taps.len() * ci);
        for o in 0..co {
            for &k in &cols {
                m.extend((0..ci).map(|c| weight[(o * ci + c) * taps_n + k]));
            }
        }
        Ok(ConvSpec { taps, cin: ci, weight: m, bias })
    }

    /// FORMAT.md's causality rule for one tap (the runtime re-checks it at load).
    fn check_tap(&self, a: usize, (ki, kj): (usize, usize), (kh, kw): (usize, usize), (dy, dx): (i64, i64)) -> R<()> {
        let tap = format!("tap ({ki}, {kj}) of its {kh}x{kw} kernel, at offset ({dy}, {dx}),");
        if dy > 0 {
            return Err(format!("{tap} reads {dy} row(s) below the pixel: the pads or the mask let it see the future"));
        }
        if dy == 0 && self.info[a].current_row {
            if dx > 0 {
                return Err(format!(
                    "{tap} reads {dx} pixel(s) to the right on the current row of a tensor that depends on that row"
                ));
            }
            if dx == 0 && a == 0 {
                return Err(format!(
                    "{tap} reads the current pixel of the image: the first layer needs mask A (a mask B, or pads that move the kernel, let it see the pixel it predicts)"
                ));
            }
        }
        Ok(())
    }
}

/// A Conv's pads `[top, left, bottom, right]` and dilations, checked.
struct Geometry {
    pads: [i64; 4],
    dil: [i64; 2],
}

impl Geometry {
    fn of(n: &pb::NodeProto, kh: usize, kw: usize) -> R<Geometry> {
        if attr_int(n, "group").unwrap_or(1) != 1 {
            return Err(format!("group {} (only group 1 is supported)", attr_int(n, "group").unwrap_or(1)));
        }
        let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1, 1]);
        if strides.iter().any(|&s| s != 1) {
            return Err(format!("strides {strides:?} (only 1 is supported)"));
        }
        let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1, 1]);
        if dil.len() != 2 || dil.iter().any(|&d| !(1..=MAX_SIDE).contains(&d)) {
            return Err(format!("dilations {dil:?}"));
        }
        if let Some(ks) = attr_ints(n, "kernel_shape") {
            if ks != [kh as i64, kw as i64] {
                return Err(format!("kernel_shape {ks:?} differs from the weight's {kh}x{kw}"));
            }
        }
        let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
        if pads.len() != 4 || pads.iter().any(|p| !(0..=MAX_PAD).contains(p)) {
            return Err(format!("pads {pads:?}"));
        }
        match attr_str(n, "auto_pad").as_deref() {
            None | Some("NOTSET") => {}
            Some(a) => return Err(format!("auto_pad {a} is not supported (export with explicit pads)")),
        }
        Ok(Geometry { pads: [pads[0], pads[1], pads[2], pads[3]], dil: [dil[0], dil[1]] })
    }
}

/// A decoded constant as a value: integers of rank 0 or 1 as [`Val::Ints`].
fn const_val(c: Rc<Tensor>) -> Val {
    match (&c.data, c.dims.len()) {
        (Data::I64(v), 0 | 1) => Val::Ints { scalar: c.dims.is_empty(), v: v.iter().map(|&x| Some(x)).collect() },
        _ => Val::Floats(c),
    }
}

/// The one number of a scalar constant (float, or a known integer).
fn scalar_of(v: &Val) -> Option<f32> {
    match v {
        Val::Floats(t) => t.scalar().map(|x| x as f32),
        Val::Ints { v, .. } if v.len() == 1 => v[0].map(|x| x as f32),
        _ => None,
    }
}

/// The image's steps after `op` with the scalar `c` (`image_first`: `image op c`).
fn image_step(op: &str, mut steps: Vec<Step>, int: bool, c: Option<f32>, image_first: bool) -> R<Vec<Step>> {
    if int {
        return Err(format!("{op} on the integer image before a Cast to float is not supported"));
    }
    let c = c.ok_or_else(|| format!("{op} of the image and a non-scalar is not supported"))?;
    steps.push(match (op, image_first) {
        ("Add", _) => Step::Add(c),
        ("Sub", true) => Step::Sub(c),
        ("Sub", false) => Step::SubFrom(c),
        ("Mul", _) => Step::Mul(c),
        ("Div", true) => Step::Div(c),
        _ => return Err(format!("{op} of a constant by the image is not supported")),
    });
    Ok(steps)
}

/// Integer arithmetic on shape values (ONNX integer Div truncates).
fn int_arith(op: &str, scalar: bool, a: &[Option<i64>], b: &[Option<i64>]) -> R<Val> {
    let n = a.len().max(b.len());
    if !(a.len() == n || a.len() == 1) || !(b.len() == n || b.len() == 1) {
        return Err(format!("{op} of integer vectors of lengths {} and {}", a.len(), b.len()));
    }
    let at = |v: &[Option<i64>], i: usize| if v.len() == 1 { v[0] } else { v[i] };
    let v = (0..n)
        .map(|i| {
            let (x, y) = (at(a, i)?, at(b, i)?);
            match op {
                "Add" => x.checked_add(y),
                "Sub" => x.checked_sub(y),
                "Mul" => x.checked_mul(y),
                _ => x.checked_div(y),
            }
        })
        .collect();
    Ok(Val::Ints { scalar, v })
}
