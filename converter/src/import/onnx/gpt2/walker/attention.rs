//! The attention of a GPT-2: per-head axes, q kᵀ, its scaling, the causal mask and the
//! softmax.

use std::rc::Rc;

use tract_onnx::pb;

use super::{Kind, Operand, Val, Walker};
use crate::import::onnx::proto::{attr_int, output0, Tensor, R};

/// Allowed relative deviation of the attention scale from `1/sqrt(head_dim)` (f32
/// rounding of the constant, or of `sqrt(head_dim)` as a divisor).
const SCALE_TOLERANCE: f64 = 1e-6;

/// A masked score must be filled with at most this (`-inf`, `finfo.min`, GPT-2's -1e4).
const MASK_FILL_MAX: f32 = -1e4;

/// The axes of a per-head tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ax {
    B,
    T,
    /// Heads.
    H,
    /// Within a head.
    D,
}

pub(super) const BTHD: [Ax; 4] = [Ax::B, Ax::T, Ax::H, Ax::D];

const BHTD: [Ax; 4] = [Ax::B, Ax::H, Ax::T, Ax::D];

const BHDT: [Ax; 4] = [Ax::B, Ax::H, Ax::D, Ax::T];

pub(super) fn show_axes(a: &[Ax; 4]) -> String {
    let s: Vec<&str> = a
        .iter()
        .map(|x| match x {
            Ax::B => "B",
            Ax::T => "T",
            Ax::H => "heads",
            Ax::D => "head_dim",
        })
        .collect();
    format!("({})", s.join(", "))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Qkv {
    Q,
    K,
    V,
}

impl Qkv {
    pub(super) fn name(self) -> &'static str {
        match self {
            Qkv::Q => "q",
            Qkv::K => "k",
            Qkv::V => "v",
        }
    }
}

impl Walker<'_> {
    /// A MatMul of two computed tensors: `q kᵀ` or `probs v`.
    pub(super) fn attention_matmul(&mut self, i: usize, out0: &str, a: &Val, b: &Val) -> R<()> {
        let kind = match (&a.kind, &b.kind) {
            (
                Kind::Heads { l, which: Qkv::Q, axes: qa, scale: qs },
                Kind::Heads { l: m, which: Qkv::K, axes: ka, scale: ks },
            ) if l == m => {
                if *qa != BHTD || *ka != BHDT {
                    return Err(format!(
                        "layer {l}: MatMul of q {} and k {}; expected q (B, heads, T, head_dim) and kᵀ (B, heads, \
                         head_dim, T)",
                        show_axes(qa),
                        show_axes(ka)
                    ));
                }
                Kind::Scores { l: *l, masked: false, scale: qs * ks }
            }
            (Kind::Probs(l), Kind::Heads { l: m, which: Qkv::V, axes, scale }) if l == m => {
                if *axes != BHTD || *scale != 1.0 {
                    return Err(format!(
                        "layer {l}: MatMul of the probabilities and v {}; expected v (B, heads, T, head_dim)",
                        show_axes(axes)
                    ));
                }
                Kind::Ctx { l: *l, axes: BHTD }
            }
            (x, y) => {
                return Err(format!(
                    "MatMul of {} and {}; expected q kᵀ, probabilities v, or a linear layer",
                    self.describe(x),
                    self.describe(y)
                ))
            }
        };
        self.add(out0, Val { kind, node: i });
        Ok(())
    }

    /// `v * c` or `v / c` for a scalar `c`: the attention scale, on q, k or the scores.
    pub(super) fn scale(&mut self, i: usize, out0: &str, op: &str, v: &Val, c: &Tensor) -> R<()> {
        let s = c.scalar().ok_or_else(|| format!("{op} by a constant {} (expected a scalar)", c.show_dims()))?;
        let f = if op == "Mul" { s } else { 1.0 / s };
        let kind = match &v.kind {
            Kind::Heads { l, which: which @ (Qkv::Q | Qkv::K), axes, scale } => {
                Kind::Heads { l: *l, which: *which, axes: *axes, scale: scale * f }
            }
            Kind::Scores { l, masked, scale } => Kind::Scores { l: *l, masked: *masked, scale: scale * f },
            k => return Err(format!("{op} of {} by {s}", self.describe(k))),
        };
        self.add(out0, Val { kind, node: i });
        Ok(())
    }

    pub(super) fn where_node(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let cond = self.val(n, 0)?;
        let x = self.operand(n, 1)?;
        let y = self.operand(n, 2)?;
        let Kind::TSlice { t, rank: _, rows, cols, negated } = cond.kind else {
            return Err(format!("Where on {}; expected the causal mask", self.describe(&cond.kind)));
        };
        // Which branch is the fill: masked = cond (fill first) or !cond (fill second).
        let (scores, fill, fill_if) = match (&x, &y) {
            (Operand::C(c), Operand::V(v)) => (v.clone(), c.clone(), true),
            (Operand::V(v), Operand::C(c)) => (v.clone(), c.clone(), false),
            _ => return Err("Where without a constant fill on one side".into()),
        };
        let Kind::Scores { l, masked: false, scale } = scores.kind else {
            return Err(format!("Where on {}; expected the attention scores", self.describe(&scores.kind)));
        };
        let fv = fill.scalar().unwrap_or(0.0) as f32;
        if fill.len() != 1 || fv > MASK_FILL_MAX {
            return Err(format!(
                "layer {l}: the masked scores are filled with {}; expected -inf (or at most {MASK_FILL_MAX})",
                fill.scalar().map_or(fill.show_dims(), |v| v.to_string())
            ));
        }
        if !(rows && cols) {
            return Err(format!("layer {l}: the attention mask is not sliced to (T, T)"));
        }
        let r = t.dims.len();
        if r < 2 || t.dims[..r - 2].iter().any(|&x| x != 1) || t.dims[r - 2] != t.dims[r - 1] {
            return Err(format!("layer {l}: the attention mask {} is not (…, m, m)", t.show_dims()));
        }
        let m = t.dims[r - 1];
        let ctx = self.pos_emb.as_ref().map_or(0, |(p, _)| p.dims[p.dims.len() - 2]);
        if m < ctx {
            return Err(format!("layer {l}: the attention mask is {m} x {m}, smaller than the context length {ctx}"));
        }
        // masked(q, k) must be k > q; each mask is checked once.
        let key = (Rc::as_ptr(&t) as usize, negated ^ !fill_if);
        for q in (0..m).take_while(|_| !self.causal_masks.contains(&key)) {
            for k in 0..m {
                let masked = t.truth(q * m + k) ^ negated ^ !fill_if;
                if masked != (k > q) {
                    return Err(format!(
                        "layer {l}: the attention mask is not causal: query {q} {} key {k} (expected every key after \
                         the query masked, the query itself and every earlier key kept)",
                        if masked { "cannot see" } else { "sees" }
                    ));
                }
            }
        }
        self.causal_masks.insert(key);
        self.add(&output0(n), Val { kind: Kind::Scores { l, masked: true, scale }, node: i });
        Ok(())
    }

    pub(super) fn softmax(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let Kind::Scores { l, masked, scale } = v.kind else {
            return Err(format!("Softmax of {}; expected the attention scores", self.describe(&v.kind)));
        };
        let axis = attr_int(n, "axis").unwrap_or(if self.opset >= 13 { -1 } else { 1 });
        if axis != -1 && axis != 3 {
            return Err(format!("layer {l}: Softmax on axis {axis} (expected the last, the keys)"));
        }
        if !masked {
            return Err(format!(
                "layer {l}: Softmax of unmasked attention scores: the attention is not causal (expected \
                 Where(causal mask, -inf, scores) first)"
            ));
        }
        let (h, _) = self.heads.ok_or("internal: attention without heads")?;
        let hd = (self.dim().unwrap_or(0) / h) as f64;
        let want = 1.0 / hd.sqrt();
        if ((scale - want) / want).abs() > SCALE_TOLERANCE {
            return Err(format!(
                "layer {l}: the attention scores are scaled by {scale}; expected 1/sqrt(head_dim) = 1/sqrt({hd}) = \
                 {want:.8}"
            ));
        }
        self.add(&output0(n), Val { kind: Kind::Probs(l), node: i });
        Ok(())
    }
}
