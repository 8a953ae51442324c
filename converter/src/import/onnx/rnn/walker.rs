//! The walk over a recurrent model's ONNX graph: every computed tensor gets a role in
//! the pattern embedding → stacked `LSTM`/`GRU`/`RNN` → linear decoder (→ log-softmax)
//! from its operator and the roles of its inputs; the first node that fits none stops
//! the import with one line naming it.

use std::collections::HashMap;
use std::rc::Rc;

use arq::models::rnn::Cell;
use tract_onnx::pb;

use super::super::proto::{
    attr, attr_int, attr_ints, attr_str, constant_node, input_name, walk_nodes, Bools, Constants, Data, Tensor, R,
};
use crate::message::name as shown;

/// One recurrent layer as the ONNX node holds it (gate order and biases of the ONNX op).
#[derive(Clone, Debug)]
pub struct OnnxLayer {
    /// `(G·H, in)`.
    pub w: Vec<f32>,
    /// `(G·H, H)`.
    pub r: Vec<f32>,
    /// `G·H` each; zeros where the node has no `B`.
    pub bw: Vec<f32>,
    pub br: Vec<f32>,
    pub input: usize,
}

/// What the walk found.
pub struct Parsed {
    pub cell: Cell,
    /// The decoder's outputs: the vocabulary, or a value model's `3K` mixture parameters.
    pub vocab: usize,
    /// `E`: the embedding width, 1 for a value model.
    pub embed: usize,
    pub hidden: usize,
    /// `(V, E)`; `None`: the first layer reads the graph's value input (a series model).
    pub token_embd: Option<Vec<f32>>,
    pub layers: Vec<OnnxLayer>,
    /// `(V, H)`: the transpose of the decoder MatMul's `B`.
    pub output: Vec<f32>,
    pub output_bias: Vec<f32>,
}

/// A computed tensor's place in the pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A graph input not yet used (token ids or a state).
    Input,
    /// Layer `l`'s slice `[l, l+1)` (axis 0) of a state input.
    StateSlice(usize),
    /// The sequence `(T, B, width)` after `l` recurrent layers (0: the embedding).
    Seq(usize),
    /// Layer `l - 1`'s `Y`, `(T, 1, B, H)`, before its direction axis is squeezed.
    Y(usize),
    /// `Y` transposed to `(T, B, 1, H)` (the dynamo exporter), before a Reshape to
    /// `(T, B, H)`.
    YT(usize),
    /// Final states (`Y_h`, `Y_c`) and their Concat: outputs arq keeps internally.
    Final,
    /// The decoder output, with its bias added or not, and its rank.
    Decoded { bias: bool, rank: usize },
    /// The log-softmax of the decoder output.
    Logits,
}

struct Walk {
    consts: Constants,
    roles: HashMap<String, Role>,
    cell: Option<Cell>,
    embedding: Option<Rc<Tensor>>,
    /// The first layer reads a graph input directly: one real value per step.
    value_input: bool,
    layers: Vec<OnnxLayer>,
    hidden: usize,
    /// A layer read its initial state from a graph input directly (no per-layer Slice):
    /// only a one-layer model may.
    direct_state: bool,
    output: Option<(Vec<f32>, usize)>,
    output_bias: Option<Vec<f32>>,
}

fn cell_of(op: &str, n: &pb::NodeProto) -> R<Cell> {
    let acts: Vec<String> = attr(n, "activations")
        .map(|a| a.strings.iter().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()).collect())
        .unwrap_or_default();
    let want = |default: &[&str]| -> R<()> {
        if acts.is_empty() || acts == default {
            Ok(())
        } else {
            Err(format!("activations {acts:?} are not supported (only the default {default:?})"))
        }
    };
    match op {
        "LSTM" => want(&["sigmoid", "tanh", "tanh"]).map(|_| Cell::Lstm),
        "GRU" => want(&["sigmoid", "tanh"]).map(|_| Cell::Gru),
        _ => match acts.as_slice() {
            [] => Ok(Cell::RnnTanh),
            [a] if a == "tanh" => Ok(Cell::RnnTanh),
            [a] if a == "relu" => Ok(Cell::RnnRelu),
            _ => Err(format!("activations {acts:?} are not supported (tanh or relu)")),
        },
    }
}

impl Walk {
    fn role(&self, n: &pb::NodeProto, i: usize) -> R<Role> {
        let name = input_name(n, i).ok_or_else(|| format!("input {i} is missing"))?;
        self.roles.get(name).copied().ok_or_else(|| format!("input '{}' is not part of the pattern", shown(name)))
    }

    fn constant(&self, n: &pb::NodeProto, i: usize) -> R<Rc<Tensor>> {
        let name = input_name(n, i).ok_or_else(|| format!("input {i} is missing"))?;
        self.consts.lookup(name, self.roles.contains_key(name))
    }

    fn floats(&self, n: &pb::NodeProto, i: usize, dims: &[usize], what: &str) -> R<Vec<f32>> {
        let t = self.constant(n, i)?;
        if t.dims != dims {
            return Err(format!("{what} has shape {}, expected {dims:?}", t.show_dims()));
        }
        t.floats().map(<[f32]>::to_vec).ok_or_else(|| format!("{what} is not a float tensor"))
    }

    fn ints(&self, n: &pb::NodeProto, i: usize) -> R<Vec<i64>> {
        let t = self.constant(n, i)?;
        t.ints().map(<[i64]>::to_vec).ok_or_else(|| format!("input {i} must be an integer constant"))
    }

    fn set(&mut self, n: &pb::NodeProto, role: Role) {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            self.roles.insert(o.clone(), role);
        }
    }

    fn visit(&mut self, n: &pb::NodeProto) -> R<()> {
        let op = n.op_type.as_str();
        match op {
            "Constant" => {
                let c = constant_node(n, Bools::Refuse).map(Rc::new);
                for o in &n.output {
                    self.consts.insert(o.clone(), c.clone());
                }
                Ok(())
            }
            "Identity" | "Dropout" => {
                let r = self.role(n, 0)?;
                if let Some(o) = n.output.first() {
                    self.roles.insert(o.clone(), r);
                }
                Ok(())
            }
            "Gather" => self.gather(n),
            "Slice" | "Concat" | "Unsqueeze" if self.all_constant(n) => self.fold(n),
            "Slice" => self.slice(n),
            "Transpose" => match self.role(n, 0)? {
                Role::Y(l) if attr_ints(n, "perm").as_deref() == Some(&[0, 2, 1, 3]) => {
                    self.set(n, Role::YT(l));
                    Ok(())
                }
                r => Err(format!("Transpose of {r:?} is not part of the pattern")),
            },
            "LSTM" | "GRU" | "RNN" => self.recurrent(op, n),
            "Squeeze" => match self.role(n, 0)? {
                Role::Y(l) => {
                    let axes =
                        if n.input.len() > 1 { self.ints(n, 1)? } else { attr_ints(n, "axes").unwrap_or_default() };
                    if axes != [1] {
                        return Err(format!("squeezes axes {axes:?} of an RNN output; expected [1], its direction"));
                    }
                    self.set(n, Role::Seq(l));
                    Ok(())
                }
                r => Err(format!("Squeeze of {r:?} is not part of the pattern")),
            },
            "Concat" => {
                for i in 0..n.input.len() {
                    if self.role(n, i)? != Role::Final {
                        return Err("Concat of something else than final states".into());
                    }
                }
                self.set(n, Role::Final);
                Ok(())
            }
            "MatMul" => self.decoder(n),
            "Add" => {
                let (d, c) = match (self.role(n, 0), self.role(n, 1)) {
                    (Ok(r @ Role::Decoded { bias: false, .. }), _) => (r, 1),
                    (_, Ok(r @ Role::Decoded { bias: false, .. })) => (r, 0),
                    _ => return Err("Add that is not the decoder's bias".into()),
                };
                let v = self.output.as_ref().map_or(0, |o| o.1);
                self.output_bias = Some(self.floats(n, c, &[v], "the decoder bias")?);
                let Role::Decoded { rank, .. } = d else { unreachable!() };
                self.set(n, Role::Decoded { bias: true, rank });
                Ok(())
            }
            "Reshape" if self.role(n, 0).is_ok_and(|r| matches!(r, Role::YT(_))) => {
                let Ok(Role::YT(l)) = self.role(n, 0) else { unreachable!("matched above") };
                let shape = self.ints(n, 1)?;
                if shape.len() != 3 || shape[2] != self.hidden as i64 {
                    return Err(format!(
                        "Reshape of an RNN output to {shape:?}; expected (seq, batch, {})",
                        self.hidden
                    ));
                }
                self.set(n, Role::Seq(l));
                Ok(())
            }
            "Reshape" => {
                let r = self.role(n, 0)?;
                let Role::Decoded { bias, .. } = r else {
                    return Err(format!("Reshape of {r:?} is not part of the pattern"));
                };
                let shape = self.ints(n, 1)?;
                let v = self.output.as_ref().map_or(0, |o| o.1) as i64;
                if shape.last() != Some(&v) {
                    return Err(format!("Reshape to {shape:?} does not keep the vocabulary ({v}) last"));
                }
                self.set(n, Role::Decoded { bias, rank: shape.len() });
                Ok(())
            }
            "LogSoftmax" => {
                let Role::Decoded { rank, .. } = self.role(n, 0)? else {
                    return Err("LogSoftmax of something else than the decoder output".into());
                };
                let axis = attr_int(n, "axis").unwrap_or(-1);
                if axis != -1 && axis != rank as i64 - 1 {
                    return Err(format!("LogSoftmax over axis {axis}; expected the vocabulary, the last"));
                }
                self.set(n, Role::Logits);
                Ok(())
            }
            _ => Err(format!(
                "operator {} is not part of the recurrent pattern (embedding → LSTM/GRU/RNN → linear decoder)",
                shown(op)
            )),
        }
    }

    /// Whether every input of `n` is a constant (no computed tensor or graph input).
    fn all_constant(&self, n: &pb::NodeProto) -> bool {
        n.input.iter().filter(|i| !i.is_empty()).all(|i| !self.roles.contains_key(i) && self.consts.contains(i))
    }

    /// Folds a Slice (one axis, step 1), Concat or Unsqueeze of float constants: how the
    /// dynamo exporter reorders PyTorch's gate blocks into ONNX's.
    fn fold(&mut self, n: &pb::NodeProto) -> R<()> {
        let x = self.constant(n, 0)?;
        let rank = x.dims.len() as i64;
        let axis_of = |a: i64, rank: i64| -> R<usize> {
            let a = if a < 0 { a + rank } else { a };
            usize::try_from(a).ok().filter(|&a| (a as i64) < rank).ok_or_else(|| format!("axis {a} out of range"))
        };
        // (outer, axis length, inner) of a shape around `axis`.
        let split = |dims: &[usize], axis: usize| {
            (dims[..axis].iter().product::<usize>(), dims[axis], dims[axis + 1..].iter().product::<usize>())
        };
        let floats = |t: &Tensor| t.floats().map(<[f32]>::to_vec).ok_or("a folded constant is not float".to_string());
        let (dims, data) = match n.op_type.as_str() {
            "Unsqueeze" => {
                let mut dims = x.dims.clone();
                let mut axes =
                    if n.input.len() > 1 { self.ints(n, 1)? } else { attr_ints(n, "axes").unwrap_or_default() };
                let out_rank = rank + axes.len() as i64;
                for a in axes.iter_mut() {
                    *a = axis_of(*a, out_rank)? as i64;
                }
                axes.sort_unstable();
                for &a in &axes {
                    dims.insert(a as usize, 1);
                }
                (dims, floats(&x)?)
            }
            "Concat" => {
                let axis = axis_of(attr_int(n, "axis").unwrap_or(0), rank)?;
                let parts: Vec<Rc<Tensor>> = (0..n.input.len()).map(|i| self.constant(n, i)).collect::<R<_>>()?;
                let (outer, _, inner) = split(&x.dims, axis);
                let mut dims = x.dims.clone();
                dims[axis] = 0;
                for p in &parts {
                    if p.dims.len() != x.dims.len()
                        || split(&p.dims, axis).0 != outer
                        || split(&p.dims, axis).2 != inner
                    {
                        return Err("Concat of constants of different shapes".into());
                    }
                    dims[axis] += p.dims[axis];
                }
                let mut out = Vec::with_capacity(dims.iter().product());
                let parts: Vec<Vec<f32>> = parts.iter().map(|p| floats(p)).collect::<R<_>>()?;
                for o in 0..outer {
                    for p in &parts {
                        let len = p.len() / outer;
                        out.extend_from_slice(&p[o * len..(o + 1) * len]);
                    }
                }
                (dims, out)
            }
            _ => {
                let (starts, ends) = (self.ints(n, 1)?, self.ints(n, 2)?);
                let axes = if n.input.len() > 3 { self.ints(n, 3)? } else { vec![0] };
                let steps = if n.input.len() > 4 { self.ints(n, 4)? } else { vec![1] };
                let ([st], [en], [ax], [1]) = (&starts[..], &ends[..], &axes[..], &steps[..]) else {
                    return Err("Slice of a constant on more than one axis or with a step".into());
                };
                let axis = axis_of(*ax, rank)?;
                let (outer, len, inner) = split(&x.dims, axis);
                let clamp = |i: i64| super::super::proto::clamp_index(i, len as i64) as usize;
                let (a, b) = (clamp(*st), clamp(*en).max(clamp(*st)));
                let v = floats(&x)?;
                let mut out = Vec::with_capacity(outer * (b - a) * inner);
                for o in 0..outer {
                    out.extend_from_slice(&v[(o * len + a) * inner..(o * len + b) * inner]);
                }
                let mut dims = x.dims.clone();
                dims[axis] = b - a;
                (dims, out)
            }
        };
        let t = Rc::new(Tensor { dims, data: Data::F32(data) });
        for o in &n.output {
            self.consts.insert(o.clone(), Ok(t.clone()));
        }
        Ok(())
    }

    fn gather(&mut self, n: &pb::NodeProto) -> R<()> {
        if self.role(n, 1)? != Role::Input || attr_int(n, "axis").unwrap_or(0) != 0 {
            return Err("Gather is not the token embedding (a constant (V, E) indexed by the token input)".into());
        }
        if self.embedding.is_some() {
            return Err("a second embedding".into());
        }
        let t = self.constant(n, 0)?;
        if t.dims.len() != 2 || t.floats().is_none() {
            return Err(format!("the embedding has shape {}; expected a float (V, E)", t.show_dims()));
        }
        self.embedding = Some(t);
        self.set(n, Role::Seq(0));
        Ok(())
    }

    fn slice(&mut self, n: &pb::NodeProto) -> R<()> {
        if self.role(n, 0)? != Role::Input {
            return Err("Slice of something else than a state input".into());
        }
        let (starts, ends) = (self.ints(n, 1)?, self.ints(n, 2)?);
        let axes = if n.input.len() > 3 { self.ints(n, 3)? } else { vec![0] };
        let steps = if n.input.len() > 4 { self.ints(n, 4)? } else { vec![1] };
        match (starts.as_slice(), ends.as_slice(), axes.as_slice(), steps.as_slice()) {
            ([s], [e], [0], [1]) if *s >= 0 && *e == *s + 1 => {
                self.set(n, Role::StateSlice(*s as usize));
                Ok(())
            }
            _ => Err(format!("Slice {starts:?}..{ends:?} on axes {axes:?} is not one layer's state")),
        }
    }

    fn recurrent(&mut self, op: &str, n: &pb::NodeProto) -> R<()> {
        let cell = cell_of(op, n)?;
        if self.cell.is_some_and(|c| c != cell) {
            return Err(format!("a {op} layer after {:?} layers; every layer must have the same cell", self.cell));
        }
        self.cell = Some(cell);
        let l = self.layers.len();
        match self.role(n, 0)? {
            Role::Seq(s) if s == l => {}
            Role::Input if l == 0 && self.embedding.is_none() => self.value_input = true,
            _ => return Err(format!("the input of recurrent layer {l} is not the output of layer {}", l as i64 - 1)),
        }
        let direction = attr_str(n, "direction").unwrap_or_else(|| "forward".into());
        if direction != "forward" {
            return Err(format!("direction '{}' is not supported (only forward)", shown(&direction)));
        }
        for a in ["activation_alpha", "activation_beta", "clip"] {
            if attr(n, a).is_some() {
                return Err(format!("attribute {a} is not supported"));
            }
        }
        if attr_int(n, "layout").unwrap_or(0) != 0 {
            return Err("layout = 1 (batch first) is not supported".into());
        }
        if attr_int(n, "input_forget").unwrap_or(0) != 0 {
            return Err("input_forget (coupled input and forget gates) is not supported".into());
        }
        if cell == Cell::Gru && attr_int(n, "linear_before_reset").unwrap_or(0) != 1 {
            return Err("linear_before_reset = 0 is not supported (PyTorch's GRU exports 1)".into());
        }
        if cell == Cell::Lstm && input_name(n, 7).is_some() {
            return Err("peephole weights (input P) are not supported".into());
        }
        if input_name(n, 4).is_some() {
            return Err("sequence_lens is not supported".into());
        }
        let w = self.constant(n, 1)?;
        let g = cell.gates();
        let [1, gh, input] = w.dims[..] else {
            return Err(format!("W has shape {}; expected (1, {g}·hidden, input)", w.show_dims()));
        };
        let h = gh / g;
        if gh % g != 0 || h == 0 || attr_int(n, "hidden_size").is_some_and(|s| s != h as i64) {
            return Err(format!("W has shape {} for hidden_size {:?}", w.show_dims(), attr_int(n, "hidden_size")));
        }
        if l > 0 && (h != self.hidden || input != self.hidden) {
            return Err(format!("layer {l} is {input} → {h}; the layer before it gives {}", self.hidden));
        }
        self.hidden = h;
        let w = w.floats().map(<[f32]>::to_vec).ok_or("W is not a float tensor")?;
        let r = self.floats(n, 2, &[1, gh, h], "R")?;
        let (bw, br) = match input_name(n, 3) {
            Some(_) => {
                let b = self.floats(n, 3, &[1, 2 * gh], "B")?;
                (b[..gh].to_vec(), b[gh..].to_vec())
            }
            None => (vec![0.0; gh], vec![0.0; gh]),
        };
        let states = if cell == Cell::Lstm { 5..7 } else { 5..6 };
        for i in states {
            match input_name(n, i).map(|_| self.role(n, i)).transpose()? {
                None => {}
                Some(Role::StateSlice(s)) if s == l => {}
                Some(Role::Input) if l == 0 => self.direct_state = true,
                Some(r) => return Err(format!("initial state input {i} is {r:?}, not layer {l}'s slice of a state")),
            }
        }
        self.layers.push(OnnxLayer { w, r, bw, br, input });
        if let Some(y) = n.output.first().filter(|o| !o.is_empty()) {
            self.roles.insert(y.clone(), Role::Y(l + 1));
        }
        for o in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
            self.roles.insert(o.clone(), Role::Final);
        }
        Ok(())
    }

    fn decoder(&mut self, n: &pb::NodeProto) -> R<()> {
        let l = self.layers.len();
        if l == 0 || self.role(n, 0)? != Role::Seq(l) || self.output.is_some() {
            return Err("MatMul that is not the decoder of the last recurrent layer's output".into());
        }
        let b = self.constant(n, 1)?;
        let (Some(v), &[h, vocab]) = (b.floats(), &b.dims[..]) else {
            return Err(format!("the decoder weight has shape {}; expected a float (hidden, vocab)", b.show_dims()));
        };
        if h != self.hidden {
            return Err(format!("the decoder takes {h} inputs; the last layer gives {}", self.hidden));
        }
        // (H, V) → (V, H).
        let mut t = vec![0.0f32; h * vocab];
        for i in 0..h {
            for j in 0..vocab {
                t[j * h + i] = v[i * vocab + j];
            }
        }
        self.output = Some((t, vocab));
        self.set(n, Role::Decoded { bias: false, rank: 3 });
        Ok(())
    }
}

/// Walks `graph` (see the module doc).
pub fn parse(graph: &pb::GraphProto) -> R<Parsed> {
    let consts = Constants::new(graph, Bools::Refuse);
    let mut roles = HashMap::new();
    for i in graph.input.iter().filter(|i| !consts.contains(&i.name)) {
        roles.insert(i.name.clone(), Role::Input);
    }
    let mut w = Walk {
        consts,
        roles,
        cell: None,
        embedding: None,
        value_input: false,
        layers: Vec::new(),
        hidden: 0,
        direct_state: false,
        output: None,
        output_bias: None,
    };
    walk_nodes(graph, |_, n| w.visit(n))?;
    let Some(cell) = w.cell else {
        return Err("the graph has no recurrent layer (LSTM, GRU or RNN)".into());
    };
    if w.embedding.is_none() && !w.value_input {
        return Err("the graph has no token embedding (Gather) before its first recurrent layer".into());
    }
    if w.direct_state && w.layers.len() > 1 {
        return Err("a layer of a stacked model reads a whole state input instead of its slice".into());
    }
    let Some((output, vocab)) = w.output.take() else {
        return Err("the graph has no decoder (MatMul by a (hidden, vocab) constant) after its last layer".into());
    };
    let logits = graph
        .output
        .iter()
        .filter(|o| matches!(w.roles.get(&o.name), Some(Role::Logits | Role::Decoded { .. })))
        .count();
    if logits != 1 {
        return Err(format!("{logits} graph outputs are the decoder's; expected one"));
    }
    let (v, e) = w.embedding.as_ref().map_or((vocab, 1), |emb| (emb.dims[0], emb.dims[1]));
    if v != vocab || w.layers[0].input != e {
        return Err(format!(
            "the embedding is ({v}, {e}), the first layer takes {} inputs and the decoder gives {vocab}",
            w.layers[0].input
        ));
    }
    Ok(Parsed {
        cell,
        vocab,
        embed: e,
        hidden: w.hidden,
        token_embd: w.embedding.as_ref().map(|emb| emb.floats().map(<[f32]>::to_vec).unwrap_or_default()),
        layers: w.layers,
        output,
        output_bias: w.output_bias.unwrap_or_else(|| vec![0.0; vocab]),
    })
}
