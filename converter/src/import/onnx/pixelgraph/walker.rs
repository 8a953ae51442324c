//! The pixel-graph walker (module [`super`] lists what it accepts): a value for every
//! ONNX tensor name, graph nodes for the feature-map operators, and the causality proof
//! as each convolution comes.

use std::collections::HashMap;
use std::rc::Rc;

use arq::models::pixelgraph::writer::{ConvSpec, NodeSpec};
use arq::models::pixelgraph::{Op, MAX_CHANNELS, MAX_NODES, MAX_TAPS};
use tract_onnx::pb;

use super::reach::{leak, Info, TapNote};
use super::window::{tap_reads, Base, PendingConv, Window};
use crate::import::onnx::proto::{
    attr, attr_int, attr_ints, attr_str, clamp_index, constant_node, graph_input, input_name, node_label, walk_nodes,
    Bools, Constants, Data, Tensor, R,
};
use crate::message::name as shown;

const MAX_SIDE: i64 = 1024;
/// Larger pads are refused before any arithmetic on them.
const MAX_PAD: i64 = 1 << 20;

/// The operators a pixel graph may contain (for the refusal of any other).
const ACCEPTED: &str = "Conv, Add, Sub, Mul, Div (by a constant, on the input), Neg, Tanh, Sigmoid, Relu, Elu, \
                        Slice, Split, Concat, Pad (zeros, of H and W), Reshape (channel regrouping), Cast, Identity, Constant, Shape, \
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
pub(super) enum Val {
    /// The image input with the scalar steps applied so far; `int` while its values are
    /// still integers (before a Cast to float).
    Image { steps: Vec<Step>, int: bool },
    /// A feature map: graph tensor `id` (0 = the mapped image).
    Map(usize),
    /// Integers of rank 0 (`scalar`) or 1; `None` where unknown (the batch size).
    Ints { scalar: bool, v: Vec<Option<i64>> },
    /// A floating-point constant (weights, scalars).
    Floats(Rc<Tensor>),
    /// A map, the image or a convolution's output seen through zero Pads and Slices of H
    /// and W ([`Window`]): folded into the taps that read it.
    Window(Rc<Window>),
    /// A map or the image in channels-last layout `(N, H, W, C)` (module [`super::nhwc`]).
    Nhwc(Box<Val>),
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

pub(super) struct Walker {
    h: i64,
    w: i64,
    consts: Constants,
    pub(super) vals: HashMap<String, Val>,
    nodes: Vec<NodeSpec>,
    info: Vec<Info>,
    /// The steps of the image every convolution on it reads.
    steps: Option<Vec<Step>>,
    /// The ONNX node being read (for naming it in tap notes).
    at: usize,
}

/// Walks `graph` into a pixel graph.
pub(super) fn parse(graph: &pb::GraphProto) -> R<Parsed> {
    let (name, h, w, int_input, nhwc) = image_input(graph)?;
    let mut wk = Walker {
        h,
        w,
        consts: Constants::new(graph, Bools::Refuse),
        vals: HashMap::new(),
        nodes: Vec::new(),
        info: vec![Info::image()],
        steps: None,
        at: 0,
    };
    let image = Val::Image { steps: Vec::new(), int: int_input };
    wk.vals.insert(name, if nhwc { Val::Nhwc(Box::new(image)) } else { image });
    walk_nodes(graph, |i, n| {
        wk.at = i;
        wk.node(n)
    })?;
    let [out] = graph.output.as_slice() else {
        return Err(format!(
            "the graph has {} outputs; a pixel graph has one, the head's parameters",
            graph.output.len()
        ));
    };
    let t = match wk.val(&out.name)? {
        Val::Map(0) | Val::Image { .. } => return Err("the graph output is the image itself".into()),
        Val::Map(t) => t,
        v @ Val::Window(_) => wk.map(&v, "the graph output")?,
        // The head reads each pixel's channels together, so a channels-last output is
        // the same parameters.
        Val::Nhwc(v) => wk.map(&v, "the graph output")?,
        _ => return Err(format!("the graph output '{}' is not a feature map", shown(&out.name))),
    };
    if let Some(why) = leak(&wk.info, t) {
        return Err(why);
    }
    let nodes = prune(wk.nodes, t);
    if nodes.len() > MAX_NODES {
        return Err(format!("the graph has {} nodes after folding; at most {MAX_NODES} are supported", nodes.len()));
    }
    Ok(Parsed { height: h as usize, width: w as usize, int_input, steps: wk.steps.unwrap_or_default(), nodes })
}

/// The graph's one input: name, height, width, whether it holds integers, and whether
/// it is channels-last `(N, H, W, 1)` (Keras's layout).
fn image_input(g: &pb::GraphProto) -> R<(String, i64, i64, bool, bool)> {
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
            Ok((name.to_string(), h, w, int, false))
        }
        [_, Some(h), Some(w), Some(1)] if (2..=MAX_SIDE).contains(&h) && (1..=MAX_SIDE).contains(&w) => {
            Ok((name.to_string(), h, w, int, true))
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
pub(super) fn prune(nodes: Vec<NodeSpec>, out: usize) -> Vec<NodeSpec> {
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

    pub(super) fn input(&self, n: &pb::NodeProto, i: usize) -> R<Val> {
        let name = input_name(n, i).ok_or_else(|| format!("input {i} is missing"))?;
        self.val(name)
    }

    pub(super) fn set(&mut self, n: &pb::NodeProto, v: Val) {
        if let Some(o) = n.output.first() {
            self.vals.insert(o.clone(), v);
        }
    }

    /// A new graph node; its output tensor's id.
    fn push(&mut self, op: Op, a: usize, b: usize, channels: usize, conv: Option<ConvSpec>) -> R<usize> {
        self.push_noted(op, a, b, channels, conv, Vec::new())
    }

    /// [`Self::push`] with a convolution's tap notes (one per tap).
    fn push_noted(
        &mut self,
        op: Op,
        a: usize,
        b: usize,
        channels: usize,
        conv: Option<ConvSpec>,
        notes: Vec<TapNote>,
    ) -> R<usize> {
        if channels == 0 || channels > MAX_CHANNELS {
            return Err(format!("{channels} channels; 1..={MAX_CHANNELS} are supported"));
        }
        if self.nodes.len() >= 4 * MAX_NODES {
            return Err("too many nodes".into());
        }
        let info = match &conv {
            Some(c) => Info::conv(&self.info, a, channels, &c.taps, notes),
            None => Info::pointwise(&self.info, a, b, channels),
        };
        self.nodes.push(NodeSpec { op, a, b, channels, conv });
        self.info.push(info);
        Ok(self.nodes.len())
    }

    /// A feature map input of a pointwise op (the image is refused: the op would need
    /// the current pixel's value). A window of the image's size becomes its tensor, or
    /// a one-tap convolution that shifts it.
    fn map(&mut self, v: &Val, what: &str) -> R<usize> {
        match v {
            Val::Map(t) => Ok(*t),
            Val::Image { .. } => Err(format!(
                "{what} reads the image directly; only a convolution whose taps stop before the pixel may read it"
            )),
            Val::Window(w) => self.window_map(w, what),
            Val::Nhwc(_) => Err(format!(
                "{what} of a channels-last (NHWC) tensor; only pointwise ops read one, until a Transpose makes it NCHW"
            )),
            _ => Err(format!("{what} of a constant is not supported")),
        }
    }

    pub(super) fn node(&mut self, n: &pb::NodeProto) -> R<()> {
        if self.through_nhwc(n)? {
            return Ok(());
        }
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
                let v = self.input(n, 0)?;
                let a = self.map(&v, &n.op_type)?;
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
                let v = self.input(n, 0)?;
                let a = self.map(&v, "Neg")?;
                let t = self.push(Op::Affine { scale: -1.0, shift: 0.0 }, a, a, self.info[a].channels, None)?;
                self.set(n, Val::Map(t));
            }
            "Pad" => self.pad(n)?,
            "Slice" => self.slice(n)?,
            "Split" => self.split(n)?,
            "Reshape" => self.reshape(n)?,
            "Conv" => {
                let v = self.conv(n)?;
                self.set(n, v);
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
        let (ch, [h, w]) = match self.input(n, 0)? {
            Val::Map(t) => (self.info[t].channels as i64, [self.h, self.w]),
            Val::Image { .. } => (1, [self.h, self.w]),
            Val::Window(win) => (self.window_channels(&win) as i64, win.size),
            _ => return Err("Shape of a constant is not supported".into()),
        };
        let full = [None, Some(ch), Some(h), Some(w)];
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
        let op = n.op_type.as_str();
        let (a, b) = (self.input(n, 0)?, self.input(n, 1)?);
        let a = if let Val::Window(_) = a { Val::Map(self.map(&a, op)?) } else { a };
        let b = if let Val::Window(_) = b { Val::Map(self.map(&b, op)?) } else { b };
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
            (Val::Map(x), c) if channel_vector(&c, self.info[x].channels).is_some() && op != "Div" => {
                Val::Map(self.channel_op(op, x, channel_vector(&c, self.info[x].channels).unwrap_or_default(), true)?)
            }
            (c, Val::Map(x)) if channel_vector(&c, self.info[x].channels).is_some() && op != "Div" => Val::Map(
                self.channel_op(op, x, channel_vector(&c, self.info[x].channels).unwrap_or_default(), false)?,
            ),
            (Val::Map(x), c) => Val::Map(self.affine(op, x, scalar_of(&c), true)?),
            (c, Val::Map(x)) => Val::Map(self.affine(op, x, scalar_of(&c), false)?),
            _ => return Err(format!("{op} of two float constants is not supported")),
        };
        self.set(n, v);
        Ok(())
    }

    /// `map op c` for a constant `c` of one value per channel (Keras adds a conv's bias
    /// this way, after the conv): Add and Sub move into the bias of the conv that made
    /// the map (a copy of it; the original is pruned when nothing else reads it), or
    /// become a 1x1 identity conv with that bias.
    fn channel_op(&mut self, op: &str, x: usize, c: Vec<f32>, map_first: bool) -> R<usize> {
        let (scale, sign) = match (op, map_first) {
            ("Add", _) => (1.0, 1.0),
            ("Sub", true) => (1.0, -1.0),
            ("Sub", false) => (-1.0, 1.0),
            _ => return Err(format!("{op} of a feature map and a per-channel constant is not supported")),
        };
        let ch = self.info[x].channels;
        let made_by = (x > 0).then(|| self.nodes[x - 1].clone());
        if let Some(mut node @ NodeSpec { op: Op::Conv, conv: Some(_), .. }) = made_by {
            if let Some(conv) = node.conv.as_mut() {
                for (i, (b, v)) in conv.bias.iter_mut().zip(&c).enumerate() {
                    *b = *b * scale + sign * v;
                    if scale != 1.0 {
                        for w in &mut conv.weight[i * conv.taps.len() * conv.cin..(i + 1) * conv.taps.len() * conv.cin]
                        {
                            *w = -*w;
                        }
                    }
                }
            }
            let info = self.info[x].clone();
            self.nodes.push(node);
            self.info.push(info);
            return Ok(self.nodes.len());
        }
        let mut weight = vec![0.0; ch * ch];
        for i in 0..ch {
            weight[i * ch + i] = scale;
        }
        let bias = c.iter().map(|v| sign * v).collect();
        let note = TapNote {
            text: format!("node {} (a per-channel {op}): tap (0, 0) of its 1x1 kernel, at offset (0, 0)", self.at),
            tall: false,
            offset: (0, 0),
        };
        self.push_noted(Op::Conv, x, x, ch, Some(ConvSpec { taps: vec![(0, 0)], cin: ch, weight, bias }), vec![note])
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
                let (ch, size) = match &v {
                    Val::Map(t) => (self.info[*t].channels as i64, [self.h, self.w]),
                    Val::Window(w) => (self.window_channels(w) as i64, w.size),
                    _ => (self.map(&v, "Slice").map(|_| 0)?, [0, 0]),
                };
                let (mut lo, mut hi) = (0, ch);
                // Crops of H and W make a window (folded into the taps that read it).
                let mut win: Option<Window> = None;
                for k in 0..axes.len() {
                    let axis = if axes[k] < 0 { axes[k] + 4 } else { axes[k] };
                    let dim = [i64::MAX, ch, size[0], size[1]].get(axis as usize).copied().unwrap_or(0);
                    let (s, e) = (clamp_index(starts[k], dim), clamp_index(ends[k], dim));
                    match axis {
                        1 if steps[k] == 1 => (lo, hi) = (s, e.max(s)),
                        0 | 2 | 3 if steps[k] == 1 && s == 0 && e == dim => {}
                        2 | 3 if steps[k] == 1 && e > s => {
                            let w = win.take().unwrap_or_else(|| self.window_of(&v));
                            win = Some(w.crop(axis as usize - 2, s, e));
                        }
                        _ => {
                            return Err(format!(
                                "Slice [{}..{}] on axis {axis} (step {}): only channel slices and non-empty crops of H and W are supported",
                                starts[k], ends[k], steps[k]
                            ));
                        }
                    }
                }
                let v = win.map_or(v, |w| Val::Window(Rc::new(w)));
                if lo == 0 && hi == ch {
                    self.set(n, v);
                } else {
                    let t = self.map(&v, "Slice")?;
                    let out = self.channel_slice(t, lo as usize, hi as usize)?;
                    self.set(n, Val::Map(out));
                }
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
        let v = self.input(n, 0)?;
        let t = self.map(&v, "Split")?;
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

    /// A constant zero Pad of H and W only: a window, folded into the taps that read it.
    fn pad(&mut self, n: &pb::NodeProto) -> R<()> {
        let v = self.input(n, 0)?;
        if !matches!(v, Val::Map(_) | Val::Image { .. } | Val::Window(_)) {
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
        let w = self.window_of(&v).pad([pads[2], pads[3], pads[6], pads[7]]);
        self.set(n, Val::Window(Rc::new(w)));
        Ok(())
    }

    /// A Conv node: its taps over the tensor it reads, after the pads and crops of the
    /// window it reads are folded in. An output of the image's size becomes a node now;
    /// another size waits, as a window, for the Slice that crops it.
    fn conv(&mut self, n: &pb::NodeProto) -> R<Val> {
        let v = self.input(n, 0)?;
        let win = self.settle(self.window_of(&v), "Conv")?;
        let Base::Val(input) = &win.base else { unreachable!("settled") };
        let a = match input {
            Val::Map(t) => *t,
            Val::Image { steps, int } => {
                if *int {
                    return Err("a Conv on the integer image (Cast it to float first)".into());
                }
                match &self.steps {
                    Some(s) if s != steps => {
                        return Err("the image reaches two convolutions with different scalings".into());
                    }
                    _ => self.steps = Some(steps.clone()),
                }
                0
            }
            _ => return Err("a Conv on a constant".into()),
        };
        let wname = input_name(n, 1).ok_or("Conv without weights")?;
        let w = self.consts.lookup(wname, self.vals.contains_key(wname))?;
        let [co, _, kh, kw] = w.dims[..] else {
            return Err(format!(
                "weight '{}' has shape {:?}; only 2-D convolutions are supported",
                shown(wname),
                w.dims
            ));
        };
        let g = Geometry::of(n, kh, kw)?;
        let mut size = [0i64; 2];
        for ax in 0..2 {
            let reach = g.dil[ax] * ([kh, kw][ax] as i64 - 1);
            size[ax] = win.size[ax] + g.pads[ax] + g.pads[ax + 2] - reach;
            if size[ax] < 1 || size[ax] > 4 * MAX_SIDE {
                return Err(format!(
                    "pads {:?} with a {kh}x{kw} kernel, dilations {:?} on a {}x{} input give an output of {} {}",
                    g.pads,
                    g.dil,
                    win.size[0],
                    win.size[1],
                    size[ax],
                    ["rows", "columns"][ax]
                ));
            }
        }
        let pending = PendingConv {
            node: n.clone(),
            label: node_label(self.at, n),
            at: self.at,
            a,
            cout: co,
            origin: [-g.pads[0] - win.off[0], -g.pads[1] - win.off[1]],
            valid: win.valid,
            size,
            pads: g.pads,
        };
        if size == [self.h, self.w] {
            return Ok(Val::Map(self.conv_node(&pending, [0, 0])?));
        }
        Ok(Val::Window(Rc::new(Window::over(Base::Conv(Rc::new(pending)), size))))
    }

    /// A pending convolution as a node whose row (column) `0` is its output's row
    /// (column) `shift`.
    fn conv_node(&mut self, p: &PendingConv, shift: [i64; 2]) -> R<usize> {
        let (spec, notes) = self.conv_taps(p, shift)?;
        let cout = spec.bias.len();
        self.push_noted(Op::Conv, p.a, p.a, cout, Some(spec), notes)
    }

    /// The non-zero taps of a pending convolution that reach the image, at offsets
    /// `k * dilation + origin + shift`; each reads only rows and columns the window it
    /// reads holds (or only zeros, and is dropped).
    fn conv_taps(&self, p: &PendingConv, shift: [i64; 2]) -> R<(ConvSpec, Vec<TapNote>)> {
        let n = &p.node;
        let a = p.a;
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
        let g = Geometry::of(n, kh, kw)?;
        let taps_n = kh * kw;
        let (mut taps, mut cols, mut notes) = (Vec::new(), Vec::new(), Vec::new());
        for ki in 0..kh {
            for kj in 0..kw {
                let k = ki * kw + kj;
                let nonzero = (0..co * ci).any(|oc| weight[oc * taps_n + k] != 0.0);
                let dy = ki as i64 * g.dil[0] + p.origin[0] + shift[0];
                let dx = kj as i64 * g.dil[1] + p.origin[1] + shift[1];
                let here = format!("tap ({ki}, {kj}) of its {kh}x{kw} kernel, at offset ({dy}, {dx})");
                let named = format!("{}: {here}", p.label);
                // The walk names the node being read; a conv read later names itself.
                let tap = if p.at == self.at { here } else { named.clone() };
                let reads = (tap_reads(dy, self.h, p.valid[0]), tap_reads(dx, self.w, p.valid[1]));
                let reads = match reads {
                    (Some(false), _) | (_, Some(false)) => false,
                    (Some(true), Some(true)) => true,
                    _ => {
                        return Err(format!(
                            "{tap}, reads rows or columns that a Pad or Slice before it cut off, and others it kept: \
                             only whole shifts of a map are supported"
                        ))
                    }
                };
                if !nonzero || !reads {
                    continue; // a masked tap, or one that only ever reads zeros
                }
                if dy > 0 {
                    return Err(format!(
                        "{tap}, reads {dy} row(s) below the pixel: the pads or the mask let it see the future"
                    ));
                }
                taps.push((dy as i16, dx as i16));
                cols.push(k);
                notes.push(TapNote { text: named, tall: kh > 1, offset: (dy, dx) });
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
        Ok((ConvSpec { taps, cin: ci, weight: m, bias }, notes))
    }

    /// `v` (a map, the image or a window) as a window.
    fn window_of(&self, v: &Val) -> Window {
        match v {
            Val::Window(w) => (**w).clone(),
            v => Window::over(Base::Val(v.clone()), [self.h, self.w]),
        }
    }

    fn window_channels(&self, w: &Window) -> usize {
        match &w.base {
            Base::Val(Val::Map(t)) => self.info[*t].channels,
            Base::Conv(p) => p.cout,
            _ => 1,
        }
    }

    /// `w` over a tensor: a pending convolution it looks at becomes a node covering
    /// the rows and columns `w` holds (at most the image's size).
    fn settle(&mut self, w: Window, what: &str) -> R<Window> {
        let Base::Conv(p) = &w.base else { return Ok(w) };
        let p = p.clone();
        let mut shift = [0; 2];
        for ax in 0..2 {
            let (lo, hi) = w.valid[ax];
            let n = [self.h, self.w][ax];
            if hi - lo > n {
                return Err(format!(
                    "{}: pads {:?} change the image size ({} {} where the image has {n}), and {what} reads more than {n} of them; a pixel graph keeps H x W (crop it back with a Slice)",
                    p.label,
                    p.pads,
                    p.size[ax],
                    ["rows", "columns"][ax]
                ));
            }
            shift[ax] = lo.max(0);
        }
        let t = self.conv_node(&p, shift)?;
        Ok(Window {
            base: Base::Val(Val::Map(t)),
            off: [w.off[0] + shift[0], w.off[1] + shift[1]],
            size: w.size,
            valid: [
                (w.valid[0].0 - shift[0], w.valid[0].1 - shift[0]),
                (w.valid[1].0 - shift[1], w.valid[1].1 - shift[1]),
            ],
        })
    }

    /// A window read by a pointwise op: its tensor when it is all of it, else a one-tap
    /// identity convolution that shifts it (a `Pad` + `Slice` shift of a map).
    fn window_map(&mut self, w: &Window, what: &str) -> R<usize> {
        if let (Base::Conv(p), true) = (&w.base, w.size != [self.h, self.w]) {
            return Err(format!(
                "{}: pads {:?} change the image size to {}x{}, and {what} reads that uncropped; a pixel graph keeps H x W = {}x{} (crop it back with a Slice)",
                p.label, p.pads, w.size[0], w.size[1], self.h, self.w
            ));
        }
        let w = self.settle(w.clone(), what)?;
        if w.size != [self.h, self.w] {
            return Err(format!(
                "{what} reads a {}x{} crop or pad of a feature map; a pixel graph keeps H x W = {}x{}",
                w.size[0], w.size[1], self.h, self.w
            ));
        }
        let t = match &w.base {
            Base::Val(Val::Map(t)) => *t,
            _ => return Err(format!("{what} reads the image directly (padded or cropped)")),
        };
        if w.is_whole(self.h, self.w) {
            return Ok(t);
        }
        let c = self.info[t].channels;
        let (dy, dx) = (-w.off[0], -w.off[1]);
        let label = format!("node {} (a shift by Pad and Slice)", self.at);
        let tap = format!("{label}: tap (0, 0) of its 1x1 kernel, at offset ({dy}, {dx})");
        let whole = (tap_reads(dy, self.h, w.valid[0]), tap_reads(dx, self.w, w.valid[1]));
        if whole != (Some(true), Some(true)) {
            return Err(format!("{tap}: the shift drops rows or columns that are still read"));
        }
        if dy > 0 {
            return Err(format!("{tap} reads {dy} row(s) below the pixel: the shift lets it see the future"));
        }
        let mut weight = vec![0.0; c * c];
        for i in 0..c {
            weight[i * c + i] = 1.0;
        }
        let spec = ConvSpec { taps: vec![(dy as i16, dx as i16)], cin: c, weight, bias: vec![0.0; c] };
        let note = TapNote { text: tap, tall: false, offset: (dy, dx) };
        self.push_noted(Op::Conv, t, t, c, Some(spec), vec![note])
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

/// The values of a float constant that holds one value per channel of a `ch`-channel
/// NCHW map (shape `[ch, 1, 1]` or `[1, ch, 1, 1]`), for `ch > 1`.
pub(super) fn channel_vector(v: &Val, ch: usize) -> Option<Vec<f32>> {
    let Val::Floats(t) = v else { return None };
    let ok = ch > 1 && matches!(t.dims[..], [c, 1, 1] | [1, c, 1, 1] if c == ch);
    ok.then(|| t.floats().map(<[f32]>::to_vec)).flatten()
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
