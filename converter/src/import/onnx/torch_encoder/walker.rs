//! The symbolic walk of a `TransformerModel` graph (the pattern in [`super`]): every
//! computed tensor gets a [`Role`]; the weights are collected on the way.

use std::collections::HashMap;

use tract_onnx::pb;

use super::{Block, LayerNorm, Linear};
use crate::import::onnx::proto::{
    attr_int, constant_node, graph_input, input_name, output0, walk_nodes, Bools, Constants, Tensor, R,
};

/// What a computed tensor is in the forward pass; `usize` fields are the block.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Tokens,
    /// Derived from constants and shapes only (the mask, reshape targets).
    Glue,
    /// The gathered token embeddings times `scale`.
    Embed {
        scale: f32,
    },
    /// The input of block `l` (the embedding plus positions for block 0).
    Stream(usize),
    /// The in-projection and everything the attention computes from it.
    Attn(usize),
    /// The out-projection's output (bias added or not).
    AttnOut(usize),
    /// `Stream(l) + AttnOut(l)`.
    Resid1(usize),
    Norm1(usize),
    Up(usize),
    Act(usize),
    Down(usize),
    /// `Norm1(l) + Down(l)`.
    Resid2(usize),
    FinalNorm,
    Logits,
    LogProbs,
}

/// What the walk read.
pub(super) struct Parsed {
    pub dim: usize,
    pub ffn: usize,
    pub epsilon: f32,
    /// The traced sequence length (rows of the exported position table).
    pub seq_len: usize,
    pub token_embd: Vec<f32>,
    pub position_embd: Vec<f32>,
    pub blocks: Vec<Block>,
    pub final_norm: LayerNorm,
    pub decoder: Linear,
}

/// The graph's one input, checked to be integer token ids: its ONNX data type (6 or 7).
pub(super) fn token_input(g: &pb::GraphProto) -> R<i32> {
    let (name, tt) = graph_input(g, "a transformer language model has one, the token ids (seq, batch)")?;
    // Integer images (a PixelCNN's (N, C, H, W) levels) are not token ids.
    if let Some(rank) = tt.shape.as_ref().map(|s| s.dim.len()).filter(|&r| r != 2) {
        return Err(format!("input '{name}' has {rank} dimensions; token ids are (seq, batch)"));
    }
    match tt.elem_type {
        6 | 7 => Ok(tt.elem_type),
        t => Err(format!("input '{name}' has ONNX data type {t}; expected int64 or int32 token ids")),
    }
}

struct Walk {
    consts: Constants,
    roles: HashMap<String, Role>,
    dim: usize,
    vocab: usize,
    epsilon: Option<f32>,
    seq_len: usize,
    token_embd: Vec<f32>,
    position_embd: Vec<f32>,
    blocks: Vec<Block>,
    final_norm: Option<LayerNorm>,
    decoder: Linear,
    /// The latest in-projection product (its bias Add comes next).
    in_proj_out: String,
}

/// Walks `g` in file order.
pub(super) fn parse(g: &pb::GraphProto) -> R<Parsed> {
    token_input(g)?;
    let (input, _) = graph_input(g, "")?;
    let mut w = Walk {
        consts: Constants::new(g, Bools::Accept),
        roles: HashMap::from([(input.to_string(), Role::Tokens)]),
        dim: 0,
        vocab: 0,
        epsilon: None,
        seq_len: 0,
        token_embd: Vec::new(),
        position_embd: Vec::new(),
        blocks: Vec::new(),
        final_norm: None,
        decoder: Linear::default(),
        in_proj_out: String::new(),
    };
    walk_nodes(g, |_, n| w.node(n))?;
    let out = g.output.first().map(|o| o.name.as_str()).unwrap_or("");
    match w.roles.get(out) {
        Some(Role::LogProbs | Role::Logits) => {}
        _ => return Err("the graph's output is not the decoder's log-softmax or logits".into()),
    }
    if w.blocks.is_empty() {
        return Err("no encoder layer found".into());
    }
    let ffn = w.blocks[0].linear1.rows;
    if w.blocks.iter().any(|b| b.linear1.rows != ffn) {
        return Err("the encoder layers have different MLP widths".into());
    }
    Ok(Parsed {
        dim: w.dim,
        ffn,
        epsilon: w.epsilon.unwrap_or(1e-5),
        seq_len: w.seq_len,
        token_embd: w.token_embd,
        position_embd: w.position_embd,
        blocks: w.blocks,
        final_norm: w.final_norm.unwrap_or_default(),
        decoder: w.decoder,
    })
}

impl Walk {
    fn role(&self, name: &str) -> Option<Role> {
        match self.roles.get(name) {
            Some(r) => Some(*r),
            None if self.consts.contains(name) => Some(Role::Glue),
            None => None,
        }
    }

    fn constant(&self, name: &str) -> R<std::rc::Rc<Tensor>> {
        self.consts.lookup(name, self.roles.contains_key(name))
    }

    /// A constant of floats with shape `dims`.
    fn floats(&self, name: &str, dims: &[usize], what: &str) -> R<Vec<f32>> {
        let c = self.constant(name)?;
        match c.floats() {
            Some(f) if c.dims == dims => Ok(f.to_vec()),
            _ => Err(format!("{what} must be a float constant of shape {dims:?}, not {}", c.show_dims())),
        }
    }

    /// `MatMul(x, W (in, out))` or `Gemm(x, W, b)` (`transB` 0 or 1) as a [`Linear`]
    /// (bias zero when absent; an Add may bring it later).
    fn linear(&self, n: &pb::NodeProto, cols: usize) -> R<Linear> {
        let w_name = input_name(n, 1).unwrap_or("");
        let c = self.constant(w_name)?;
        let (Some(f), [a, b]) = (c.floats(), c.dims.as_slice()) else {
            return Err(format!("the weight must be a float matrix, not {}", c.show_dims()));
        };
        let trans = n.op_type == "Gemm" && attr_int(n, "transB") == Some(1);
        if n.op_type == "Gemm"
            && (attr_int(n, "transA").unwrap_or(0) != 0
                || crate::import::onnx::proto::attr(n, "alpha").is_some_and(|a| a.f != 1.0)
                || crate::import::onnx::proto::attr(n, "beta").is_some_and(|a| a.f != 1.0))
        {
            return Err("Gemm with transA or alpha, beta other than 1 is not supported".into());
        }
        let (inp, out) = if trans { (*b, *a) } else { (*a, *b) };
        if inp != cols {
            return Err(format!("the weight has {inp} inputs; expected {cols}"));
        }
        // Stored (out, in).
        let weight =
            if trans { f.to_vec() } else { (0..out).flat_map(|o| (0..inp).map(move |i| f[i * out + o])).collect() };
        let bias = match input_name(n, 2) {
            Some(b) => self.floats(b, &[out], "the Gemm bias")?,
            None => vec![0.0; out],
        };
        Ok(Linear { rows: out, cols: inp, weight, bias })
    }

    fn block(&mut self, l: usize) -> R<&mut Block> {
        self.blocks.get_mut(l).ok_or_else(|| "internal: block out of order".to_string())
    }

    fn layer_norm(&mut self, n: &pb::NodeProto) -> R<LayerNorm> {
        let d = self.dim;
        if attr_int(n, "axis").is_some_and(|a| a != -1 && a != 2) {
            return Err("LayerNormalization must normalize the last axis".into());
        }
        let eps = crate::import::onnx::proto::attr(n, "epsilon").map_or(1e-5, |a| a.f);
        match self.epsilon {
            Some(e) if e != eps => return Err(format!("epsilon {eps:e} differs from the first norm's {e:e}")),
            _ => self.epsilon = Some(eps),
        }
        let weight = self.floats(input_name(n, 1).unwrap_or(""), &[d], "the LayerNorm weight")?;
        let bias = match input_name(n, 2) {
            Some(b) => self.floats(b, &[d], "the LayerNorm bias")?,
            None => vec![0.0; d],
        };
        Ok(LayerNorm { weight, bias })
    }

    /// The bias of `Add(x, b)` (either order) where `x` has a linear role; `len` values.
    fn add_bias(&self, n: &pb::NodeProto, len: usize) -> R<Option<Vec<f32>>> {
        for i in 0..2 {
            let other = input_name(n, 1 - i).unwrap_or("");
            if self.role(other) == Some(Role::Glue) && !self.roles.contains_key(other) {
                return self.floats(other, &[len], "the bias").map(Some);
            }
        }
        Ok(None)
    }

    fn node(&mut self, n: &pb::NodeProto) -> R<()> {
        let op = n.op_type.as_str();
        let out = output0(n);
        if op == "Constant" {
            self.consts.insert(out, constant_node(n, Bools::Accept).map(std::rc::Rc::new));
            return Ok(());
        }
        // The exporter shares equal initializers (an untrained model's zero biases)
        // through Identity nodes: the output is that constant.
        let from = input_name(n, 0).unwrap_or("");
        if op == "Identity" && !self.roles.contains_key(from) {
            if let Some(c) = self.consts.get(from).cloned() {
                self.consts.insert(out, c);
                return Ok(());
            }
        }
        let ins: Vec<Option<Role>> = n.input.iter().filter(|s| !s.is_empty()).map(|s| self.role(s)).collect();
        if let Some(i) = ins.iter().position(Option::is_none) {
            return Err(format!("input '{}' is not defined", n.input[i]));
        }
        let ins: Vec<Role> = ins.into_iter().flatten().collect();
        let role = self.role_of(n, op, &ins)?;
        for o in &n.output {
            self.roles.insert(o.clone(), role);
        }
        Ok(())
    }

    /// The role of `n`'s outputs from its operator and its inputs' roles `ins`; collects
    /// weights.
    fn role_of(&mut self, n: &pb::NodeProto, op: &str, ins: &[Role]) -> R<Role> {
        use Role::*;
        let first = ins.first().copied().unwrap_or(Glue);
        let pass = matches!(op, "Identity" | "Dropout");
        if op == "Shape" || ins.iter().all(|r| *r == Glue) {
            return Ok(Glue);
        }
        if pass {
            return Ok(first);
        }
        let d = self.dim;
        match (op, ins) {
            ("Gather", [Glue, Tokens]) => {
                let c = self.constant(input_name(n, 0).unwrap_or(""))?;
                let (Some(f), [v, d]) = (c.floats(), c.dims.as_slice()) else {
                    return Err(format!("the embedding must be a float matrix (V, d), not {}", c.show_dims()));
                };
                (self.vocab, self.dim, self.token_embd) = (*v, *d, f.to_vec());
                Ok(Embed { scale: 1.0 })
            }
            ("Mul", [Embed { scale }, Glue] | [Glue, Embed { scale }]) => {
                let k = ins.iter().position(|r| *r == Glue).unwrap_or(1);
                let c = self.constant(input_name(n, k).unwrap_or(""))?;
                let s = c.scalar().ok_or("the embedding's factor must be a scalar constant")?;
                Ok(Embed { scale: scale * s as f32 })
            }
            ("Add", [Embed { scale }, Glue] | [Glue, Embed { scale }]) => {
                let k = ins.iter().position(|r| *r == Glue).unwrap_or(1);
                let c = self.constant(input_name(n, k).unwrap_or(""))?;
                let rows = c.dims.first().copied().unwrap_or(0);
                let shape_ok = matches!(c.dims.as_slice(), [_, 1, x] | [_, x] if *x == d);
                let (Some(f), true) = (c.floats(), shape_ok && rows > 0) else {
                    return Err(format!("the positions must be a float constant (T, 1, {d}), not {}", c.show_dims()));
                };
                self.position_embd = f.to_vec();
                self.seq_len = rows;
                let s = *scale;
                self.token_embd.iter_mut().for_each(|v| *v *= s);
                Ok(Stream(0))
            }
            ("MatMul" | "Gemm", [Stream(l), Glue, ..]) if self.blocks.len() == *l => {
                let lin = self.linear(n, d)?;
                if lin.rows != 3 * d {
                    return Err(format!(
                        "the block input goes to a {} → {} linear layer; expected the attention's in-projection {d} → {} \
                         (pre-LN blocks, norm_first=True, are not supported)",
                        lin.cols,
                        lin.rows,
                        3 * d
                    ));
                }
                self.blocks.push(Block { in_proj: lin, ..Block::default() });
                self.in_proj_out = output0(n);
                Ok(Attn(*l))
            }
            // The in-projection's bias: an Add of a constant to the product itself.
            ("Add", [Attn(l), Glue] | [Glue, Attn(l)]) if n.input.contains(&self.in_proj_out) => {
                let l = *l;
                let b = self.add_bias(n, 3 * d)?.ok_or("the in-projection's bias must be a constant vector")?;
                self.block(l)?.in_proj.bias.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                Ok(Attn(l))
            }
            ("MatMul" | "Gemm", [Attn(l), Glue, ..]) if self.is_weight(n, d) => {
                let l = *l;
                let lin = self.linear(n, d)?;
                if lin.rows != d {
                    return Err(format!("the attention's out-projection has {} outputs; expected {d}", lin.rows));
                }
                self.block(l)?.out_proj = lin;
                Ok(AttnOut(l))
            }
            (
                "Reshape" | "Transpose" | "Unsqueeze" | "Squeeze" | "Gather" | "Slice" | "Split" | "Mul" | "Div" | "MatMul"
                | "Add" | "Sub" | "Softmax" | "Where" | "Concat" | "Cast" | "Sqrt" | "Expand",
                _,
            ) if ins.iter().all(|r| matches!(r, Attn(_) | Glue)) => {
                let l = ins.iter().find_map(|r| if let Attn(l) = r { Some(*l) } else { None }).unwrap_or(0);
                Ok(Attn(l))
            }
            ("Add", [AttnOut(l), Glue] | [Glue, AttnOut(l)]) => {
                let l = *l;
                if let Some(b) = self.add_bias(n, d)? {
                    self.block(l)?.out_proj.bias.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                }
                Ok(AttnOut(l))
            }
            ("Reshape", [AttnOut(l), Glue]) => Ok(AttnOut(*l)),
            ("Add", [Stream(a), AttnOut(b)] | [AttnOut(b), Stream(a)]) if a == b => Ok(Resid1(*a)),
            ("LayerNormalization", [Resid1(l), ..]) => {
                let norm = self.layer_norm(n)?;
                self.block(*l)?.norm1 = norm;
                Ok(Norm1(*l))
            }
            ("MatMul" | "Gemm", [Norm1(l), Glue, ..]) => {
                let lin = self.linear(n, d)?;
                self.block(*l)?.linear1 = lin;
                Ok(Up(*l))
            }
            ("Add", [Up(l), Glue] | [Glue, Up(l)]) => {
                let (l, ff) = (*l, self.blocks[*l].linear1.rows);
                let b = self.add_bias(n, ff)?.ok_or("the MLP's bias must be a constant vector")?;
                self.block(l)?.linear1.bias.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                Ok(Up(l))
            }
            ("Relu", [Up(l)]) => Ok(Act(*l)),
            (_, [Up(_), ..]) => Err(format!(
                "the MLP activation must be Relu (PyTorch's default activation=\"relu\"); {op} is not supported"
            )),
            ("MatMul" | "Gemm", [Act(l), Glue, ..]) => {
                let ff = self.blocks[*l].linear1.rows;
                let lin = self.linear(n, ff)?;
                if lin.rows != d {
                    return Err(format!("the MLP's second linear layer has {} outputs; expected {d}", lin.rows));
                }
                self.block(*l)?.linear2 = lin;
                Ok(Down(*l))
            }
            ("Add", [Down(l), Glue] | [Glue, Down(l)]) => {
                let l = *l;
                let b = self.add_bias(n, d)?.ok_or("the MLP's bias must be a constant vector")?;
                self.block(l)?.linear2.bias.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                Ok(Down(l))
            }
            ("Add", [Norm1(a), Down(b)] | [Down(b), Norm1(a)]) if a == b => Ok(Resid2(*a)),
            ("LayerNormalization", [Resid2(l), ..]) => {
                let norm = self.layer_norm(n)?;
                self.block(*l)?.norm2 = norm;
                Ok(Stream(l + 1))
            }
            ("LayerNormalization", [Stream(l), ..]) if *l > 0 && self.blocks.len() == *l => {
                self.final_norm = Some(self.layer_norm(n)?);
                Ok(FinalNorm)
            }
            ("LayerNormalization", [Stream(_), ..]) => Err(
                "a LayerNormalization of a block's input: pre-LN blocks (norm_first=True) are not supported, PyTorch's \
                 default post-LN ones are"
                    .into(),
            ),
            ("MatMul" | "Gemm", [FinalNorm, Glue, ..]) => {
                let lin = self.linear(n, d)?;
                if lin.rows != self.vocab {
                    return Err(format!(
                        "the decoder has {} outputs; expected the vocabulary's {} (pre-LN blocks are not supported)",
                        lin.rows, self.vocab
                    ));
                }
                self.decoder = lin;
                Ok(Logits)
            }
            ("Add", [Logits, Glue] | [Glue, Logits]) => {
                let b = self.add_bias(n, self.vocab)?.ok_or("the decoder's bias must be a constant vector")?;
                self.decoder.bias.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                Ok(Logits)
            }
            ("LogSoftmax", [Logits]) if attr_int(n, "axis").is_none_or(|a| a == -1 || a == 2) => Ok(LogProbs),
            _ => Err(format!("does not fit the TransformerModel pattern (its inputs are {ins:?})")),
        }
    }

    /// Whether input 1 of `n` is a `(d, d)` float matrix (the out-projection), as
    /// opposed to a product inside the attention.
    fn is_weight(&self, n: &pb::NodeProto, d: usize) -> bool {
        let name = input_name(n, 1).unwrap_or("");
        !self.roles.contains_key(name)
            && self.consts.get(name).is_some_and(|c| c.as_ref().is_ok_and(|c| c.dims == [d, d] && c.floats().is_some()))
    }
}
