//! The GPT-2 walker: gives every computed tensor its role in the forward pass (module
//! [`super`] lists the accepted pattern) and its symbolic shape, and collects the
//! weights of each role. The roles' nodes are read in [`shapes`], [`attention`],
//! [`linear`] and [`activation`]; [`Walker::finish`] checks that they make a model.

mod activation;
mod attention;
mod linear;
mod shapes;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use tract_onnx::pb;

use self::activation::{fold, Bin, Expr};
use self::attention::{show_axes, Ax, Qkv};
use self::shapes::{show_items, Dim, Item};
use super::{Gpt2Layer, LayerNorm, Linear};
use crate::import::onnx::proto::{
    attr_int, constant_node, graph_input, input_name, label, output0, walk_nodes, Bools, Constants, Data, Tensor, R,
};

/// The graph's one real input (not an initializer): its name and ONNX element type.
pub(super) fn token_input(g: &pb::GraphProto) -> R<(String, i32)> {
    let (name, tt) = graph_input(g, "a GPT-2 has one, the token ids (batch, seq)")?;
    if tt.elem_type != 7 && tt.elem_type != 6 {
        return Err(format!("input '{name}' has ONNX data type {}; expected int64 token ids", tt.elem_type));
    }
    if let Some(rank) = tt.shape.as_ref().map(|s| s.dim.len()) {
        if rank != 2 {
            return Err(format!("input '{name}' has rank {rank}; expected token ids (batch, seq)"));
        }
    }
    Ok((name.to_string(), tt.elem_type))
}

/// A linear layer's place in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Qkv,
    Proj,
    Fc,
    Fc2,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Qkv => "qkv",
            Role::Proj => "proj",
            Role::Fc => "fc",
            Role::Fc2 => "fc2",
        }
    }
}

/// The role of a computed tensor.
#[derive(Clone, Debug)]
enum Kind {
    Tokens,
    /// An integer shape tensor (1-D, or a scalar).
    Shape {
        items: Vec<Item>,
        scalar: bool,
    },
    /// `Range(0, T, 1)`.
    Positions,
    /// `tok_emb[tokens]`.
    Emb,
    /// A constant sliced to `[0, T)` on its second-to-last (`rows`) and/or last (`cols`)
    /// axis: the positions `pos_emb[0:T]` or the causal mask; `rank` is its current rank
    /// (Unsqueeze adds leading axes), `negated` counts Not nodes.
    TSlice {
        t: Rc<Tensor>,
        rank: usize,
        rows: bool,
        cols: bool,
        negated: bool,
    },
    /// The residual stream after `p` sublayers (`2l + 1`: layer `l`'s attention).
    X(usize),
    /// A LayerNormalization of `X(p)`; `id` indexes the walker's `norms`.
    Norm {
        p: usize,
        id: usize,
    },
    /// A linear layer's output, with or without its bias added yet.
    Lin {
        role: Role,
        l: usize,
        biased: bool,
    },
    /// The q, k or v part of layer `l`'s qkv, `(B, T, d)`.
    Part {
        l: usize,
        which: Qkv,
    },
    /// The part split into heads; `scale`: the product of constant factors applied.
    Heads {
        l: usize,
        which: Qkv,
        axes: [Ax; 4],
        scale: f64,
    },
    /// `q kᵀ`, `(B, H, T, T)`, times `scale`; `masked` once the causal mask is applied.
    Scores {
        l: usize,
        masked: bool,
        scale: f64,
    },
    Probs(usize),
    /// `probs v` per head.
    Ctx {
        l: usize,
        axes: [Ax; 4],
    },
    /// The heads concatenated, `(B, T, d)`.
    Merged(usize),
    /// Layer `l`'s MLP activation so far: `exprs[expr]` of the fc output.
    Act {
        l: usize,
        expr: usize,
    },
    Logits,
}

#[derive(Clone, Debug)]
struct Val {
    kind: Kind,
    /// The node that computed it (`usize::MAX` for the graph input).
    node: usize,
}

/// An input of a node: computed, or a constant.
enum Operand {
    V(Val),
    C(Rc<Tensor>),
}

/// A linear layer found in the graph.
#[derive(Clone, Debug)]
struct FoundLinear {
    node: usize,
    lin: Linear,
    has_bias: bool,
    /// Its output was used without a bias, so none may be added later.
    used_unbiased: bool,
}

#[derive(Clone, Debug)]
struct FoundNorm {
    node: usize,
    p: usize,
    norm: LayerNorm,
}

#[derive(Clone, Debug, Default)]
struct LayerParts {
    ln_1: Option<usize>,
    qkv: Option<FoundLinear>,
    proj: Option<FoundLinear>,
    ln_2: Option<usize>,
    fc: Option<FoundLinear>,
    fc2: Option<FoundLinear>,
}

impl LayerParts {
    fn get(&self, r: Role) -> Option<&FoundLinear> {
        match r {
            Role::Qkv => self.qkv.as_ref(),
            Role::Proj => self.proj.as_ref(),
            Role::Fc => self.fc.as_ref(),
            Role::Fc2 => self.fc2.as_ref(),
        }
    }

    fn slot(&mut self, r: Role) -> &mut Option<FoundLinear> {
        match r {
            Role::Qkv => &mut self.qkv,
            Role::Proj => &mut self.proj,
            Role::Fc => &mut self.fc,
            Role::Fc2 => &mut self.fc2,
        }
    }
}

pub(super) struct Parsed {
    pub(super) vocab_size: usize,
    pub(super) dim: usize,
    pub(super) heads: usize,
    pub(super) ffn: usize,
    pub(super) context_length: usize,
    pub(super) epsilon: f32,
    pub(super) token_embd: Vec<f32>,
    pub(super) position_embd: Vec<f32>,
    pub(super) output_norm: LayerNorm,
    pub(super) output: Option<Vec<f32>>,
    pub(super) layers: Vec<Gpt2Layer>,
}

struct Walker<'g> {
    graph: &'g pb::GraphProto,
    opset: i64,
    consts: Constants,
    names: HashMap<String, Val>,
    /// Names that are the graph output or reach it through Identity-like nodes.
    output_names: HashSet<String>,
    exprs: Vec<Expr>,
    /// `tok_emb` `(V, d)` and its Gather node.
    tok_emb: Option<(Rc<Tensor>, usize)>,
    /// `pos_emb` `(C, d)` and the node that added it.
    pos_emb: Option<(Rc<Tensor>, usize)>,
    /// Heads and the Reshape that set them.
    heads: Option<(usize, usize)>,
    /// The MLP width and the fc that set it.
    ffn: Option<(usize, usize)>,
    /// The LayerNorm epsilon and the node that set it.
    epsilon: Option<(f32, usize)>,
    norms: Vec<FoundNorm>,
    layers: Vec<LayerParts>,
    /// The head: its node, its LayerNorm (in `norms`), its `(out, in)` weight (`None`:
    /// tied).
    head: Option<(usize, usize, Option<Vec<f32>>)>,
    /// Masks found causal: (tensor address, polarity).
    causal_masks: HashSet<(usize, bool)>,
}

/// Reads the GPT-2 of `graph`; `opset` is the model's standard opset (Softmax's default
/// axis changed at 13).
pub(super) fn parse(graph: &pb::GraphProto, opset: i64) -> R<Parsed> {
    let (input, _) = token_input(graph)?;
    let mut wk = Walker {
        graph,
        opset,
        consts: Constants::new(graph, Bools::Accept),
        names: HashMap::new(),
        output_names: HashSet::new(),
        exprs: Vec::new(),
        tok_emb: None,
        pos_emb: None,
        heads: None,
        ffn: None,
        epsilon: None,
        norms: Vec::new(),
        layers: Vec::new(),
        head: None,
        causal_masks: HashSet::new(),
    };
    if graph.output.len() != 1 {
        return Err(format!("the graph has {} outputs; a GPT-2 has one (the logits)", graph.output.len()));
    }
    wk.output_names.insert(graph.output[0].name.clone());
    for n in graph.node.iter().rev() {
        let passes = matches!(n.op_type.as_str(), "Identity" | "Dropout" | "Cast");
        if passes && n.output.first().is_some_and(|o| wk.output_names.contains(o)) {
            if let Some(i) = n.input.first() {
                wk.output_names.insert(i.clone());
            }
        }
    }
    wk.names.insert(input, Val { kind: Kind::Tokens, node: usize::MAX });
    walk_nodes(graph, |i, n| wk.node(i, n))?;
    wk.finish()
}

impl Walker<'_> {
    fn label(&self, i: usize) -> String {
        label(self.graph, i)
    }

    fn dim(&self) -> Option<usize> {
        self.tok_emb.as_ref().map(|(t, _)| t.dims[1])
    }

    fn describe(&self, k: &Kind) -> String {
        match k {
            Kind::Tokens => "the token ids".into(),
            Kind::Shape { items, .. } => format!("the shape values {}", show_items(items)),
            Kind::Positions => "the positions Range(0, T)".into(),
            Kind::Emb => "the token embedding".into(),
            Kind::TSlice { t, rows, cols, .. } => {
                let which = match (rows, cols) {
                    (true, true) => "rows and columns",
                    (true, false) => "rows",
                    _ => "columns",
                };
                format!("a constant {} with its {which} sliced to T", t.show_dims())
            }
            Kind::X(0) => "the embedding sum (token + position)".into(),
            Kind::X(p) if p % 2 == 1 => format!("the residual stream after layer {}'s attention", p / 2),
            Kind::X(p) => format!("the residual stream after layer {}", p / 2 - 1),
            Kind::Norm { p, .. } => format!("a LayerNorm of {}", self.describe(&Kind::X(*p))),
            Kind::Lin { role, l, biased } => {
                format!("layer {l}'s {} output{}", role.name(), if *biased { "" } else { " (before its bias)" })
            }
            Kind::Part { l, which } => format!("layer {l}'s {}", which.name()),
            Kind::Heads { l, which, axes, .. } => format!("layer {l}'s {} heads {}", which.name(), show_axes(axes)),
            Kind::Scores { l, masked, .. } => {
                format!("layer {l}'s {}attention scores", if *masked { "masked " } else { "" })
            }
            Kind::Probs(l) => format!("layer {l}'s attention probabilities"),
            Kind::Ctx { l, axes } => format!("layer {l}'s attention output {}", show_axes(axes)),
            Kind::Merged(l) => format!("layer {l}'s attention output (B, T, d)"),
            Kind::Act { l, .. } => format!("layer {l}'s MLP activation (partial)"),
            Kind::Logits => "the logits".into(),
        }
    }

    /// The symbolic shape of a computed tensor, where the pattern fixes it.
    fn dims_of(&self, k: &Kind) -> Option<Vec<Dim>> {
        if let Kind::Tokens = k {
            return Some(vec![Dim::B, Dim::T]);
        }
        let d = Dim::n(self.dim()? as u64);
        let h = self.heads.map(|(h, _)| h as u64);
        let ax = |a: &[Ax; 4]| -> Option<Vec<Dim>> {
            let (h, hd) = (h?, d.n / h?);
            Some(
                a.iter()
                    .map(|x| match x {
                        Ax::B => Dim::B,
                        Ax::T => Dim::T,
                        Ax::H => Dim::n(h),
                        Ax::D => Dim::n(hd),
                    })
                    .collect(),
            )
        };
        match k {
            Kind::Emb | Kind::X(_) | Kind::Norm { .. } | Kind::Part { .. } | Kind::Merged(_) => {
                Some(vec![Dim::B, Dim::T, d])
            }
            Kind::Lin { role, l, .. } => {
                let out = self.layers.get(*l)?.get(*role)?.lin.rows;
                Some(vec![Dim::B, Dim::T, Dim::n(out as u64)])
            }
            Kind::Heads { axes, .. } | Kind::Ctx { axes, .. } => ax(axes),
            _ => None,
        }
    }

    fn add(&mut self, name: &str, v: Val) {
        if !name.is_empty() {
            self.names.insert(name.to_string(), v);
        }
    }

    fn constant(&self, name: &str) -> R<Rc<Tensor>> {
        self.consts.lookup(name, self.names.contains_key(name))
    }

    fn operand(&self, n: &pb::NodeProto, i: usize) -> R<Operand> {
        let name = input_name(n, i).ok_or_else(|| format!("input {i} is missing"))?;
        if let Some(v) = self.names.get(name) {
            return Ok(Operand::V(v.clone()));
        }
        match self.consts.get(name) {
            Some(Ok(c)) => Ok(Operand::C(c.clone())),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("input '{name}' is not computed by an earlier node")),
        }
    }

    /// Input `i`, which must be computed (not a constant).
    fn val(&self, n: &pb::NodeProto, i: usize) -> R<Val> {
        match self.operand(n, i)? {
            Operand::V(v) => Ok(v),
            Operand::C(_) => Err(format!(
                "input {i} is the constant '{}' where the pattern has a computed tensor",
                input_name(n, i).unwrap_or("")
            )),
        }
    }

    /// Input `i` as constant integers (absent: `None`).
    fn const_ints(&self, n: &pb::NodeProto, i: usize) -> R<Option<Vec<i64>>> {
        match input_name(n, i) {
            None => Ok(None),
            Some(name) => {
                let c = self.constant(name)?;
                c.ints().map(|v| Some(v.to_vec())).ok_or_else(|| format!("'{name}' must hold integers"))
            }
        }
    }

    fn node(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        match n.op_type.as_str() {
            "Constant" => {
                self.consts.insert(output0(n), constant_node(n, Bools::Accept).map(Rc::new));
                Ok(())
            }
            "Identity" => self.alias(n),
            "Dropout" => self.dropout(n),
            "Cast" => self.cast(i, n),
            "Shape" => self.shape(i, n),
            "Gather" => self.gather(i, n),
            "Unsqueeze" | "Squeeze" => self.squeeze(i, n),
            "Concat" => self.concat(i, n),
            "Range" => self.range(i, n),
            "Slice" => self.slice(i, n),
            "Split" => self.split(i, n),
            "Reshape" => self.reshape(i, n),
            "Transpose" => self.transpose(i, n),
            "Not" => self.not(i, n),
            "LayerNormalization" => self.layer_norm(i, n),
            "MatMul" | "Gemm" => self.matmul(i, n),
            "Add" | "Sub" | "Mul" | "Div" | "Pow" => self.binary(i, n),
            "Tanh" | "Sqrt" | "Neg" | "Reciprocal" => self.unary(i, n),
            "Gelu" => self.gelu(i, n),
            "Where" => self.where_node(i, n),
            "Softmax" => self.softmax(i, n),
            op => Err(self.unsupported(op, n)),
        }
    }

    /// The refusal of operator `op`, with a hint where its input suggests what was meant.
    fn unsupported(&self, op: &str, n: &pb::NodeProto) -> String {
        let on = n.input.first().and_then(|s| self.names.get(s)).map(|v| v.kind.clone());
        let hint = match (op, on) {
            ("Erf", _) => ": the exact erf GELU; the runtime computes GPT-2's tanh approximation (export with \
                 gelu(approximate='tanh'))"
                .to_string(),
            (_, Some(Kind::Lin { role: Role::Fc, l, .. } | Kind::Act { l, .. })) => {
                format!(" in layer {l}'s MLP activation (expected the tanh GELU: Pow/Mul/Add/Mul/Tanh/Add/Mul/Mul)")
            }
            ("ReduceMean", _) => ": a decomposed LayerNorm? Export with opset >= 17 (LayerNormalization)".to_string(),
            _ => String::new(),
        };
        format!("unsupported operator {op}{hint}")
    }

    /// Dropout in inference mode: an Identity.
    fn dropout(&mut self, n: &pb::NodeProto) -> R<()> {
        if let Some(name) = input_name(n, 2) {
            if self.constant(name)?.scalar() != Some(0.0) {
                return Err("Dropout in training mode".into());
            }
        }
        if n.output.get(1).is_some_and(|m| !m.is_empty()) {
            return Err("Dropout with a mask output".into());
        }
        self.alias(n)
    }

    /// Not of the causal mask (which flips its polarity).
    fn not(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        match v.kind {
            Kind::TSlice { t, rank, rows, cols, negated } => {
                let kind = Kind::TSlice { t, rank, rows, cols, negated: !negated };
                self.add(&output0(n), Val { kind, node: i });
                Ok(())
            }
            k => Err(format!("Not of {}", self.describe(&k))),
        }
    }

    fn alias(&mut self, n: &pb::NodeProto) -> R<()> {
        let src = input_name(n, 0).ok_or("input 0 is missing")?;
        let out0 = output0(n);
        if let Some(v) = self.names.get(src).cloned() {
            self.add(&out0, v);
        } else if let Some(c) = self.consts.get(src).cloned() {
            self.consts.insert(out0, c);
        } else {
            return Err(format!("input '{src}' is not computed by an earlier node"));
        }
        Ok(())
    }

    fn cast(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let to = attr_int(n, "to").ok_or("Cast without 'to'")?;
        let out0 = output0(n);
        match self.operand(n, 0)? {
            Operand::C(c) => {
                let data = match (to, &c.data) {
                    (1, Data::F32(v)) => Data::F32(v.clone()),
                    (1, Data::I64(v)) => Data::F32(v.iter().map(|&x| x as f32).collect()),
                    (6 | 7, Data::I64(v)) => Data::I64(v.clone()),
                    (9, _) => Data::Bool((0..c.len()).map(|j| c.truth(j)).collect()),
                    (to, _) => return Err(format!("Cast of a constant to ONNX data type {to} is not supported")),
                };
                self.consts.insert(out0, Ok(Rc::new(Tensor { dims: c.dims.clone(), data })));
                Ok(())
            }
            Operand::V(v) => {
                let ok = match &v.kind {
                    Kind::Tokens | Kind::Shape { .. } | Kind::Positions => to == 7 || to == 6,
                    Kind::TSlice { .. } => to == 9 || to == 1,
                    _ => to == 1,
                };
                if !ok {
                    return Err(format!(
                        "Cast of {} to ONNX data type {to} (the runtime computes in f32)",
                        self.describe(&v.kind)
                    ));
                }
                self.add(&out0, Val { node: i, ..v });
                Ok(())
            }
        }
    }

    fn binary(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let op = n.op_type.as_str();
        let a = self.operand(n, 0)?;
        let b = self.operand(n, 1)?;
        let out0 = output0(n);
        let bin = Bin::from_op(op).ok_or("internal: not a binary op")?;
        // Constants fold (scalars with scalars or tensors).
        if let (Operand::C(x), Operand::C(y)) = (&a, &b) {
            let c =
                fold(bin, x, y).ok_or_else(|| format!("{op} of constants {} and {}", x.show_dims(), y.show_dims()))?;
            self.consts.insert(out0, Ok(Rc::new(c)));
            return Ok(());
        }
        let bias_add = op == "Add" && self.is_bias(&a, &b);
        if !bias_add && self.act_binary(i, &out0, op, bin, &a, &b)? {
            return Ok(());
        }
        let (a, b, swapped) = match (a, b) {
            (Operand::C(c), Operand::V(v)) => (Operand::V(v), Operand::C(c), true),
            (a, b) => (a, b, false),
        };
        match (op, &a, &b) {
            ("Add", Operand::V(x), Operand::V(y)) => self.add_values(i, &out0, x.clone(), y.clone()),
            ("Add", Operand::V(Val { kind: Kind::Lin { role, l, biased: false }, .. }), Operand::C(c)) => {
                self.bias_add(i, &out0, *role, *l, c)
            }
            ("Add", Operand::V(Val { kind: Kind::Lin { role, l, biased: true }, .. }), Operand::C(_)) => {
                Err(format!("a second bias on layer {l}'s {}", role.name()))
            }
            ("Add", Operand::V(Val { kind: Kind::Logits, .. }), Operand::C(_)) => {
                Err("a bias on the logits; GPT-2's head has none".into())
            }
            ("Add", Operand::V(Val { kind: Kind::Scores { l, .. }, .. }), _) => Err(format!(
                "an Add to layer {l}'s attention scores: additive masks are not supported (expected Where(causal \
                 mask, -inf, scores))"
            )),
            ("Mul" | "Div", Operand::V(v), Operand::C(c)) if !(op == "Div" && swapped) => {
                self.scale(i, &out0, op, v, c)
            }
            (_, x, y) => {
                let show = |o: &Operand| match o {
                    Operand::V(v) => self.describe(&v.kind),
                    Operand::C(c) => match c.scalar() {
                        Some(s) => format!("the constant {s}"),
                        None => format!("a constant {}", c.show_dims()),
                    },
                };
                Err(format!("{op} of {} and {} is not part of the pattern", show(x), show(y)))
            }
        }
    }

    fn finish(self) -> R<Parsed> {
        let oname = &self.graph.output[0].name;
        let Some(o) = self.names.get(oname) else {
            return Err(format!("graph output '{oname}' is not computed by any node"));
        };
        if !matches!(o.kind, Kind::Logits) {
            return Err(format!(
                "graph output '{oname}' is {} ({}); expected the logits: LayerNormalization then MatMul with \
                 Transpose(tok_emb) or a (d, vocab) matrix",
                self.describe(&o.kind),
                self.label(o.node)
            ));
        }
        let (head_node, head_norm, output) = self.head.clone().ok_or("internal: logits without a head")?;
        let nf = &self.norms[head_norm];
        if !nf.p.is_multiple_of(2) || nf.p == 0 {
            return Err(format!(
                "{}: the head reads {}; expected the residual stream after the last layer",
                self.label(head_node),
                self.describe(&Kind::X(nf.p))
            ));
        }
        let n_layers = nf.p / 2;
        for (l, parts) in self.layers.iter().enumerate().skip(n_layers) {
            let any = [&parts.qkv, &parts.proj, &parts.fc, &parts.fc2].into_iter().flatten().next();
            if let Some(f) = any {
                return Err(format!(
                    "{}: layer {l} does not reach the output (the head reads layer {})",
                    self.label(f.node),
                    n_layers - 1
                ));
            }
        }
        let (tok, _) = self.tok_emb.clone().ok_or("internal: no token embedding")?;
        let (pos, _) = self.pos_emb.clone().ok_or("internal: no position embedding")?;
        let (heads, _) = self.heads.ok_or("internal: no heads")?;
        let (ffn, _) = self.ffn.ok_or("internal: no MLP")?;
        let (epsilon, _) = self.epsilon.ok_or("internal: no LayerNorm")?;
        let d = tok.dims[1];
        let mut layers = Vec::with_capacity(n_layers);
        for (l, parts) in self.layers.iter().take(n_layers).enumerate() {
            let missing = |role: &str| format!("layer {l} has no {role}");
            let norm = |id: Option<usize>, role: &str| -> R<LayerNorm> {
                id.map(|id| self.norms[id].norm.clone()).ok_or_else(|| missing(role))
            };
            let qkv = parts.qkv.as_ref().ok_or_else(|| missing("qkv"))?;
            let lin =
                |f: &Option<FoundLinear>, role: &str| f.as_ref().map(|f| f.lin.clone()).ok_or_else(|| missing(role));
            layers.push(Gpt2Layer {
                attn_norm: norm(parts.ln_1, "ln_1")?,
                attn_q: qkv.lin.rows(0, d),
                attn_k: qkv.lin.rows(d, 2 * d),
                attn_v: qkv.lin.rows(2 * d, 3 * d),
                attn_output: lin(&parts.proj, "proj")?,
                ffn_norm: norm(parts.ln_2, "ln_2")?,
                ffn_up: lin(&parts.fc, "fc")?,
                ffn_down: lin(&parts.fc2, "fc2")?,
            });
        }
        let pr = pos.dims.len();
        Ok(Parsed {
            vocab_size: tok.dims[0],
            dim: d,
            heads,
            ffn,
            context_length: pos.dims[pr - 2],
            epsilon,
            token_embd: tok.floats().map(<[f32]>::to_vec).unwrap_or_default(),
            position_embd: pos.floats().map(<[f32]>::to_vec).unwrap_or_default(),
            output_norm: nf.norm.clone(),
            output,
            layers,
        })
    }
}
