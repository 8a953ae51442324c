//! The linear layers and LayerNorms of a GPT-2: MatMul or Gemm with a constant matrix,
//! bias Adds, and the residual stream they add to.

use arq::quant::QK8;
use tract_onnx::pb;

use super::{FoundLinear, FoundNorm, Kind, LayerParts, Operand, Role, Val, Walker};
use crate::import::onnx::gpt2::{LayerNorm, Linear};
use crate::import::onnx::proto::{attr, attr_int, input_name, output0, Tensor, R};

/// `(r, c)` row-major → `(c, r)`.
pub(super) fn transpose(w: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = w[i * c + j];
        }
    }
    out
}

/// A bias of `out` floats (any shape with one non-1 axis).
fn bias_values(c: &Tensor, out: usize) -> Option<Vec<f32>> {
    let f = c.floats()?;
    (f.len() == out && c.dims.iter().filter(|&&x| x != 1).count() <= 1).then(|| f.to_vec())
}

/// A constant matrix applied by a MatMul or Gemm, in `.arq` layout.
struct Matrix<'a> {
    /// The initializer, for refusals.
    name: &'a str,
    cin: usize,
    cout: usize,
    /// `(cout, cin)`, row-major.
    weight: Vec<f32>,
    /// Gemm's bias (a MatMul's comes in a later Add).
    bias: Option<Vec<f32>>,
}

impl Walker<'_> {
    /// `x + c` with `x` layer `l`'s `role` output before its bias: the bias.
    pub(super) fn bias_add(&mut self, i: usize, out0: &str, role: Role, l: usize, c: &Tensor) -> R<()> {
        let f = self.layers[l].slot(role).as_mut().ok_or("internal: a linear output without its layer")?;
        let out = f.lin.rows;
        let bias = bias_values(c, out)
            .ok_or_else(|| format!("layer {l} {}: the bias {} is not {out} floats", role.name(), c.show_dims()))?;
        if f.used_unbiased {
            return Err(format!("a bias added to layer {l}'s {} output, which is also used without it", role.name()));
        }
        f.lin.bias = bias;
        f.has_bias = true;
        self.add(out0, Val { kind: Kind::Lin { role, l, biased: true }, node: i });
        Ok(())
    }

    pub(super) fn layer_norm(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let Kind::X(p) = v.kind else {
            return Err(format!("LayerNormalization of {}; expected the residual stream", self.describe(&v.kind)));
        };
        let d = self.dim().unwrap_or(0);
        let axis = attr_int(n, "axis").unwrap_or(-1);
        if axis != -1 && axis != 2 {
            return Err(format!("LayerNormalization on axis {axis} (expected the last, -1)"));
        }
        let vec_of = |j: usize, what: &str| -> R<Option<Vec<f32>>> {
            let Some(name) = input_name(n, j) else { return Ok(None) };
            let c = self.constant(name)?;
            match c.floats() {
                Some(f) if f.len() == d && c.dims.iter().filter(|&&x| x != 1).count() <= 1 => Ok(Some(f.to_vec())),
                _ => Err(format!("LayerNormalization {what} '{name}' {} is not d = {d} floats", c.show_dims())),
            }
        };
        let weight = vec_of(1, "scale")?.ok_or("LayerNormalization without a scale")?;
        let bias = vec_of(2, "bias")?.unwrap_or_else(|| vec![0.0; d]);
        let eps = attr(n, "epsilon").map_or(1e-5, |a| a.f);
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(format!("LayerNormalization epsilon {eps}"));
        }
        match self.epsilon {
            None => self.epsilon = Some((eps, i)),
            Some((e, _)) if e == eps => {}
            Some((e, at)) => return Err(format!("epsilon {eps:e}, but {} uses {e:e}", self.label(at))),
        }
        self.norms.push(FoundNorm { node: i, p, norm: LayerNorm { weight, bias } });
        let id = self.norms.len() - 1;
        self.add(&output0(n), Val { kind: Kind::Norm { p, id }, node: i });
        Ok(())
    }

    pub(super) fn matmul(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let a = self.val(n, 0)?;
        let b = self.operand(n, 1)?;
        let out0 = output0(n);
        let gemm = n.op_type == "Gemm";
        let w = match b {
            Operand::V(_) if gemm => return Err("Gemm with a computed B".into()),
            Operand::V(b) => return self.attention_matmul(i, &out0, &a, &b),
            Operand::C(w) => w,
        };
        let name = input_name(n, 1).unwrap_or("");
        let (Some(wv), &[r, c]) = (w.floats(), &w.dims[..]) else {
            return Err(format!("weight '{name}' {} is not a float matrix", w.show_dims()));
        };
        // `(out, in)` rows: the transpose of MatMul's `B (in, out)`; Gemm's transB = 1
        // already stores `(out, in)`.
        let trans_b = gemm && attr_int(n, "transB").unwrap_or(0) != 0;
        let (cin, cout, weight) = if trans_b { (c, r, wv.to_vec()) } else { (r, c, transpose(wv, r, c)) };
        let mut bias = None;
        if gemm {
            let alpha = attr(n, "alpha").map_or(1.0, |a| a.f);
            let beta = attr(n, "beta").map_or(1.0, |a| a.f);
            if alpha != 1.0 || beta != 1.0 || attr_int(n, "transA").unwrap_or(0) != 0 {
                return Err(format!("Gemm with alpha {alpha}, beta {beta}, transA (expected 1, 1, 0)"));
            }
            if let Some(bn) = input_name(n, 2) {
                let bc = self.constant(bn)?;
                bias = Some(
                    bias_values(&bc, cout)
                        .ok_or_else(|| format!("Gemm bias '{bn}' {} is not {cout} floats", bc.show_dims()))?,
                );
            }
        }
        self.linear(i, &out0, a, Matrix { name, cin, cout, weight, bias })
    }

    /// Matrix `m` applied to `a`: the head, or layer `l`'s qkv, proj, fc or fc2.
    fn linear(&mut self, i: usize, out0: &str, a: Val, m: Matrix) -> R<()> {
        let (role, l) = match a.kind {
            Kind::Norm { p, id } if p % 2 == 0 && self.output_names.contains(out0) => {
                return self.lm_head(i, out0, id, m);
            }
            Kind::Norm { p, .. } if p % 2 == 0 => (Role::Qkv, p / 2),
            Kind::Norm { p, .. } => (Role::Fc, p / 2),
            Kind::Merged(l) => (Role::Proj, l),
            Kind::Act { l, expr } => {
                self.check_gelu(l, expr)?;
                (Role::Fc2, l)
            }
            Kind::Lin { role: Role::Fc, l, .. } => {
                return Err(format!(
                    "layer {l}'s fc output goes into a MatMul without an activation (expected the tanh GELU)"
                ))
            }
            Kind::X(_) => return Err("a linear layer on the residual stream without a LayerNorm".into()),
            ref k => return Err(format!("a linear layer on {}", self.describe(k))),
        };
        self.check_linear(i, role, l, &m)?;
        if self.layers.len() <= l {
            self.layers.resize(l + 1, LayerParts::default());
        }
        if let Kind::Norm { id, .. } = a.kind {
            self.set_norm(role, l, id)?;
        }
        let has_bias = m.bias.is_some();
        let lin =
            Linear { rows: m.cout, cols: m.cin, weight: m.weight, bias: m.bias.unwrap_or_else(|| vec![0.0; m.cout]) };
        let found = FoundLinear { node: i, lin, has_bias, used_unbiased: false };
        let slot = self.layers[l].slot(role);
        if let Some(prev) = slot {
            let at = prev.node;
            return Err(format!("a second layer {l} {} (the first is {})", role.name(), self.label(at)));
        }
        *slot = Some(found);
        self.add(out0, Val { kind: Kind::Lin { role, l, biased: has_bias }, node: i });
        Ok(())
    }

    /// The head: matrix `m` on the LayerNorm `norms[norm]` of the last residual stream.
    fn lm_head(&mut self, i: usize, out0: &str, norm: usize, m: Matrix) -> R<()> {
        let d = self.dim().unwrap_or(0);
        if m.bias.is_some() {
            return Err("the head (logits) has a bias; GPT-2's has none".into());
        }
        if let Some((at, _, _)) = self.head {
            return Err(format!("a second head (the first is {})", self.label(at)));
        }
        let (tok, _) = self.tok_emb.clone().ok_or("the head before the token embedding")?;
        let (name, cin, cout) = (m.name, m.cin, m.cout);
        if cin != d || cout != tok.dims[0] {
            return Err(format!(
                "the head weight '{name}' maps {cin} to {cout}; expected d = {d} to the vocabulary, {}",
                tok.dims[0]
            ));
        }
        let tied = tok.floats().is_some_and(|t| t == &m.weight[..]);
        self.head = Some((i, norm, if tied { None } else { Some(m.weight) }));
        self.add(out0, Val { kind: Kind::Logits, node: i });
        Ok(())
    }

    /// Whether `m` has the shape of layer `l`'s `role`; an fc sets the MLP width.
    fn check_linear(&mut self, i: usize, role: Role, l: usize, m: &Matrix) -> R<()> {
        let d = self.dim().unwrap_or(0);
        let (name, cin, cout) = (m.name, m.cin, m.cout);
        let ffn = self.ffn.map(|(f, _)| f);
        let (want_in, want_out) = match role {
            Role::Qkv => (d, Some(3 * d)),
            Role::Proj => (d, Some(d)),
            Role::Fc => (d, None),
            Role::Fc2 => (ffn.unwrap_or(0), Some(d)),
        };
        if cin != want_in || want_out.is_some_and(|o| o != cout) {
            let hint = if role == Role::Qkv && cout == d {
                " (separate q, k, v projections are not supported: one fused qkv d -> 3d)"
            } else {
                ""
            };
            return Err(format!(
                "layer {l} {}: weight '{name}' maps {cin} to {cout}; expected {want_in} to {}{hint}",
                role.name(),
                want_out.map_or("ffn".to_string(), |o| o.to_string())
            ));
        }
        if role == Role::Fc {
            if cout == 0 || !cout.is_multiple_of(QK8) {
                return Err(format!("layer {l} fc: the MLP width {cout} is not a positive multiple of 32"));
            }
            match self.ffn {
                None => self.ffn = Some((cout, i)),
                Some((f, _)) if f == cout => {}
                Some((f, at)) => return Err(format!("layer {l} fc: MLP width {cout}, but {} has {f}", self.label(at))),
            }
        }
        Ok(())
    }

    /// LayerNorm `norms[id]` is layer `l`'s ln_1 (before the qkv) or ln_2 (before the fc).
    fn set_norm(&mut self, role: Role, l: usize, id: usize) -> R<()> {
        let slot = if role == Role::Qkv { self.layers[l].ln_1 } else { self.layers[l].ln_2 };
        if let Some(first) = slot.filter(|&s| s != id) {
            let at = self.label(self.norms[first].node);
            return Err(format!("layer {l}: a second LayerNorm before its {} (the first is {at})", role.name()));
        }
        if role == Role::Qkv {
            self.layers[l].ln_1 = Some(id);
        } else {
            self.layers[l].ln_2 = Some(id);
        }
        Ok(())
    }

    /// Layer `l`'s `role` output is used (not by its bias Add): with `biased` false, no
    /// bias may come later, and none may have come before.
    pub(super) fn use_lin(&mut self, role: Role, l: usize, biased: bool) -> R<()> {
        if biased {
            return Ok(());
        }
        let f = self.layers[l].slot(role).as_mut().ok_or("internal: a linear output without its layer")?;
        if f.has_bias {
            return Err(format!("layer {l}'s {} output is used both with and without its bias", role.name()));
        }
        f.used_unbiased = true;
        Ok(())
    }

    /// Whether `a + b` is a linear layer's bias Add (an unbiased output plus a vector).
    pub(super) fn is_bias(&self, a: &Operand, b: &Operand) -> bool {
        let lin_vec = |x: &Operand, y: &Operand| {
            matches!(x, Operand::V(Val { kind: Kind::Lin { biased: false, .. }, .. }))
                && matches!(y, Operand::C(c) if c.len() > 1)
        };
        lin_vec(a, b) || lin_vec(b, a)
    }

    /// `x + y` of two computed tensors: the embedding sum or a residual Add.
    pub(super) fn add_values(&mut self, i: usize, out0: &str, x: Val, y: Val) -> R<()> {
        let (x, y) = match (&x.kind, &y.kind) {
            (Kind::TSlice { .. } | Kind::Lin { .. }, _) => (y, x),
            _ => (x, y),
        };
        match (&x.kind, &y.kind) {
            (Kind::Emb, Kind::TSlice { t, rows: true, cols: false, negated: false, .. }) => {
                let d = self.dim().unwrap_or(0);
                let r = t.dims.len();
                if r < 2 || t.dims[..r - 2].iter().any(|&x| x != 1) || t.dims[r - 1] != d || t.floats().is_none() {
                    return Err(format!(
                        "the positions come from a constant {}; expected pos_emb (context, d = {d})",
                        t.show_dims()
                    ));
                }
                if let Some((_, at)) = &self.pos_emb {
                    return Err(format!("a second position embedding (the first is added by {})", self.label(*at)));
                }
                if t.dims[r - 2] == 0 {
                    return Err("pos_emb has no rows".into());
                }
                self.pos_emb = Some((t.clone(), i));
                self.add(out0, Val { kind: Kind::X(0), node: i });
                Ok(())
            }
            (Kind::X(p), Kind::Lin { role: role @ (Role::Proj | Role::Fc2), l, biased }) => {
                let want = if *role == Role::Proj { 2 * l } else { 2 * l + 1 };
                if *p != want {
                    return Err(format!(
                        "the residual Add of layer {l}'s {} to {}; expected {}",
                        role.name(),
                        self.describe(&x.kind),
                        self.describe(&Kind::X(want))
                    ));
                }
                let (role, l, biased, p) = (*role, *l, *biased, *p);
                self.use_lin(role, l, biased)?;
                self.add(out0, Val { kind: Kind::X(p + 1), node: i });
                Ok(())
            }
            (a, b) => Err(format!(
                "Add of {} and {}; expected the embedding sum, a bias or a residual Add",
                self.describe(a),
                self.describe(b)
            )),
        }
    }
}
