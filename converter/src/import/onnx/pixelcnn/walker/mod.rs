//! The gated PixelCNN walker: gives every computed tensor its role, channel count and
//! spatial frame (module [`super`] lists the accepted pattern), and collects the
//! convolutions of each role.

mod conv;

use std::collections::HashMap;
use std::rc::Rc;

use arq::quant::QK8;
use tract_onnx::pb;

use super::{ConvWeights, GatedLayer, MAX_CHANNELS, MAX_PAD, MAX_SIDE};
use crate::import::onnx::proto::{
    attr, attr_int, attr_ints, attr_str, clamp_index, constant_node, graph_input, input_name, label, output0,
    walk_nodes, Bools, Constants, Tensor, R,
};

/// The graph's one real input (not an initializer): name, height, width.
pub(super) fn image_input(g: &pb::GraphProto) -> R<(String, i64, i64)> {
    use pb::tensor_shape_proto::dimension::Value as D;
    let (name, tt) = graph_input(g, "a PixelCNN has one, the image (N, 1, H, W)")?;
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
            Ok((name.to_string(), h, w))
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

/// `rows 0..7, columns -1..7 of the image`: where a frame's tensor lies.
fn show_frame([rows, cols]: Frame) -> String {
    format!("rows {}..{}, columns {}..{} of the image", rows.off, rows.off + rows.len, cols.off, cols.off + cols.len)
}

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

pub(super) struct Parsed {
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) channels: usize,
    pub(super) out_hidden: usize,
    pub(super) layers: Vec<GatedLayer>,
    pub(super) out1: ConvWeights,
    pub(super) out2: ConvWeights,
}

struct Walker<'g> {
    graph: &'g pb::GraphProto,
    h: i64,
    w: i64,
    consts: Constants,
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

/// Reads the gated PixelCNN of `graph`.
pub(super) fn parse(graph: &pb::GraphProto) -> R<Parsed> {
    let (input, h, w) = image_input(graph)?;
    let mut wk = Walker {
        graph,
        h,
        w,
        consts: Constants::new(graph, Bools::Refuse),
        names: HashMap::new(),
        vals: Vec::new(),
        channels: None,
        out_hidden: None,
        layers: Vec::new(),
        out1: None,
        out2: None,
    };
    wk.add(&input, Val { kind: Kind::Input, ch: 1, frame: wk.identity(), node: usize::MAX });
    walk_nodes(graph, |i, n| wk.node(i, n))?;
    wk.finish()
}

impl Walker<'_> {
    fn label(&self, i: usize) -> String {
        label(self.graph, i)
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
        let name = input_name(n, i).ok_or_else(|| format!("input {i} is missing"))?;
        match self.names.get(name) {
            Some(&id) => Ok((id, self.vals[id])),
            None if self.consts.contains(name) => {
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

    fn constant(&self, name: &str) -> R<Rc<Tensor>> {
        self.consts.lookup(name, self.names.contains_key(name))
    }

    fn const_ints(&self, n: &pb::NodeProto, i: usize) -> R<Option<Vec<i64>>> {
        match input_name(n, i) {
            None => Ok(None),
            Some(name) => match self.constant(name)?.ints() {
                Some(data) => Ok(Some(data.to_vec())),
                None => Err(format!("'{name}' must hold integers")),
            },
        }
    }

    fn node(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        match n.op_type.as_str() {
            "Constant" => {
                self.consts.insert(output0(n), constant_node(n, Bools::Refuse).map(Rc::new));
                Ok(())
            }
            "Identity" => self.identity_node(n),
            "Conv" => self.conv(i, n),
            "Slice" => self.slice(i, n),
            "Split" => self.split(i, n),
            "Pad" => self.pad(i, n),
            "Tanh" | "Sigmoid" => self.gate_half(i, n),
            "Mul" => self.gate(i, n),
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

    fn identity_node(&mut self, n: &pb::NodeProto) -> R<()> {
        let out0 = output0(n);
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

    /// Tanh of a gate's first channel half, or Sigmoid of its second.
    fn gate_half(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let (_, x) = self.val(n, 0)?;
        let x = self.plain(x)?;
        let kind = match (n.op_type.as_str(), x.kind) {
            ("Tanh", Kind::Lo(s)) => Kind::Tanh(s),
            ("Sigmoid", Kind::Hi(s)) => Kind::Sig(s),
            ("Tanh", k) => {
                return Err(format!("expected Tanh of a gate's first channel half, not of {}", self.describe(k)))
            }
            (_, k) => {
                return Err(format!("expected Sigmoid of a gate's second channel half, not of {}", self.describe(k)))
            }
        };
        self.add(&output0(n), Val { kind, node: i, ..x });
        Ok(())
    }

    /// A gate's Mul of the Tanh and Sigmoid halves of one tensor.
    fn gate(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
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
        self.add(&output0(n), Val { kind, node: i, ..a });
        Ok(())
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
        let out0 = output0(n);
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
            let value = match input_name(n, 2) {
                None => 0.0,
                Some(name) => match self.constant(name)?.floats() {
                    Some(&[v]) => v,
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
        self.add(&output0(n), Val { frame, node: i, ..x });
        Ok(())
    }

    fn add_node(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let (_, a) = self.val(n, 0)?;
        let (_, b) = self.val(n, 1)?;
        let out0 = output0(n);
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
                        format!("is moved to {}", show_frame(b.frame))
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
}
