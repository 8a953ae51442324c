//! The MLP activation of a GPT-2: a scalar function of the fc output built node by node
//! ([`Expr`]) and checked against the tanh GELU on a grid, and constant folding of the
//! same operators.

use std::rc::Rc;

use tract_onnx::pb;

use super::{Kind, Operand, Role, Val, Walker};
use crate::import::onnx::proto::{attr_str, output0, Data, Tensor, R};

/// The GELU is checked on `x` in `-GELU_RANGE..=GELU_RANGE`, step `1/16`.
const GELU_RANGE: f64 = 8.0;

/// Allowed deviation from the tanh GELU, relative to `1 + |gelu(x)|`: the f32 rounding
/// of the constants is ~1e-7; a wrong constant in any digit that matters is ~1e-4.
const GELU_TOLERANCE: f64 = 1e-6;

/// A node of a scalar function of the fc output `x` (the MLP activation).
#[derive(Clone, Copy, Debug)]
pub(super) enum Expr {
    X,
    C(f64),
    Un(Un, usize),
    Bin(Bin, usize, usize),
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Un {
    Tanh,
    Sqrt,
    Neg,
    Reciprocal,
    GeluTanh,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl Bin {
    pub(super) fn from_op(op: &str) -> Option<Bin> {
        Some(match op {
            "Add" => Bin::Add,
            "Sub" => Bin::Sub,
            "Mul" => Bin::Mul,
            "Div" => Bin::Div,
            "Pow" => Bin::Pow,
            _ => return None,
        })
    }
    fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            Bin::Add => a + b,
            Bin::Sub => a - b,
            Bin::Mul => a * b,
            Bin::Div => a / b,
            Bin::Pow => a.powf(b),
        }
    }
}

impl Un {
    pub(super) fn from_op(op: &str) -> Option<Un> {
        Some(match op {
            "Tanh" => Un::Tanh,
            "Sqrt" => Un::Sqrt,
            "Neg" => Un::Neg,
            "Reciprocal" => Un::Reciprocal,
            _ => return None,
        })
    }
    fn apply(self, x: f64) -> f64 {
        match self {
            Un::Tanh => x.tanh(),
            Un::Sqrt => x.sqrt(),
            Un::Neg => -x,
            Un::Reciprocal => 1.0 / x,
            Un::GeluTanh => gelu_tanh(x),
        }
    }
}

/// GPT-2's `gelu_new`, the runtime's GELU.
fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// `exprs[id]` at `x`. Operands always precede their uses in `exprs`, so one pass in
/// order evaluates it (no recursion, and shared operands are evaluated once).
fn eval(exprs: &[Expr], id: usize, x: f64) -> f64 {
    let mut v = Vec::with_capacity(id + 1);
    for e in &exprs[..=id] {
        let y = match *e {
            Expr::X => x,
            Expr::C(c) => c,
            Expr::Un(op, a) => op.apply(v[a]),
            Expr::Bin(op, a, b) => op.apply(v[a], v[b]),
        };
        v.push(y);
    }
    v[id]
}

/// `x op y` on constants where one is a scalar or both have the same shape.
pub(super) fn fold(op: Bin, x: &Tensor, y: &Tensor) -> Option<Tensor> {
    let as_f64 = |t: &Tensor| -> Option<Vec<f64>> {
        match &t.data {
            Data::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Data::I64(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Data::Bool(_) => None,
        }
    };
    let (a, b) = (as_f64(x)?, as_f64(y)?);
    let ints = matches!((&x.data, &y.data), (Data::I64(_), Data::I64(_)));
    let (dims, vals): (Vec<usize>, Vec<f64>) = if a.len() == 1 {
        (y.dims.clone(), b.iter().map(|&v| op.apply(a[0], v)).collect())
    } else if b.len() == 1 || x.dims == y.dims {
        (x.dims.clone(), a.iter().enumerate().map(|(j, &v)| op.apply(v, b[if b.len() == 1 { 0 } else { j }])).collect())
    } else {
        return None;
    };
    let data = if ints && !matches!(op, Bin::Div | Bin::Pow) {
        Data::I64(vals.iter().map(|&v| v as i64).collect())
    } else {
        Data::F32(vals.iter().map(|&v| v as f32).collect())
    };
    Some(Tensor { dims, data })
}

impl Walker<'_> {
    /// `a op b` as a step of the MLP activation, where one side is the activation so far
    /// and the other the activation or a scalar constant; `false` where it is not one.
    pub(super) fn act_binary(&mut self, i: usize, out0: &str, op: &str, bin: Bin, a: &Operand, b: &Operand) -> R<bool> {
        let other_ok = |o: &Operand| Self::is_act(o) || matches!(o, Operand::C(c) if c.scalar().is_some());
        if !(Self::is_act(a) || Self::is_act(b)) || !(other_ok(a) && other_ok(b)) {
            return Ok(false);
        }
        let (la, ea) = self.act_operand(a)?;
        let (lb, eb) = self.act_operand(b)?;
        let l = la.or(lb).ok_or("internal: an MLP activation of constants")?;
        if let Some(m) = lb.filter(|&m| m != l) {
            return Err(format!("{op} of layer {l}'s and layer {m}'s MLP activations"));
        }
        let e = self.expr(Expr::Bin(bin, ea, eb));
        self.add(out0, Val { kind: Kind::Act { l, expr: e }, node: i });
        Ok(true)
    }

    /// `Gelu` with `approximate = "tanh"` of the fc output.
    pub(super) fn gelu(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let approx = attr_str(n, "approximate").unwrap_or_else(|| "none".into());
        if approx != "tanh" {
            return Err(format!(
                "Gelu with approximate = '{approx}' (the exact erf GELU); the runtime computes GPT-2's tanh \
                 approximation: export with approximate='tanh'"
            ));
        }
        let (Some(l), x) = self.act_operand(&Operand::V(v))? else {
            return Err("internal: an MLP activation of constants".into());
        };
        let e = self.expr(Expr::Un(Un::GeluTanh, x));
        self.add(&output0(n), Val { kind: Kind::Act { l, expr: e }, node: i });
        Ok(())
    }

    fn expr(&mut self, e: Expr) -> usize {
        self.exprs.push(e);
        self.exprs.len() - 1
    }

    /// An operand of the MLP activation: its layer (`None` for a constant) and its
    /// expression.
    fn act_operand(&mut self, o: &Operand) -> R<(Option<usize>, usize)> {
        match o {
            Operand::C(c) => match c.scalar() {
                Some(v) => Ok((None, self.expr(Expr::C(v)))),
                None => Err(format!("a constant {} in the MLP activation (expected scalars)", c.show_dims())),
            },
            Operand::V(Val { kind: Kind::Lin { role: Role::Fc, l, biased }, .. }) => {
                self.use_lin(Role::Fc, *l, *biased)?;
                Ok((Some(*l), self.expr(Expr::X)))
            }
            Operand::V(Val { kind: Kind::Act { l, expr }, .. }) => Ok((Some(*l), *expr)),
            Operand::V(v) => Err(format!("{} in an MLP activation", self.describe(&v.kind))),
        }
    }

    fn is_act(o: &Operand) -> bool {
        matches!(o, Operand::V(Val { kind: Kind::Lin { role: Role::Fc, .. } | Kind::Act { .. }, .. }))
    }

    pub(super) fn unary(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let op = n.op_type.as_str();
        let un = Un::from_op(op).ok_or("internal: not a unary op")?;
        let out0 = output0(n);
        let x = self.operand(n, 0)?;
        if let Operand::C(c) = &x {
            let Some(v) = c.floats() else { return Err(format!("{op} of integer constants")) };
            let data = v.iter().map(|&x| un.apply(x as f64) as f32).collect();
            self.consts.insert(out0, Ok(Rc::new(Tensor { dims: c.dims.clone(), data: Data::F32(data) })));
            return Ok(());
        }
        if !Self::is_act(&x) {
            let Operand::V(v) = &x else { unreachable!("constants handled above") };
            return Err(format!("{op} of {}", self.describe(&v.kind)));
        }
        let (Some(l), e) = self.act_operand(&x)? else {
            return Err("internal: an MLP activation of constants".into());
        };
        let e = self.expr(Expr::Un(un, e));
        self.add(&out0, Val { kind: Kind::Act { l, expr: e }, node: i });
        Ok(())
    }

    /// The MLP activation `exprs[expr]` must be the tanh GELU on a grid of inputs.
    pub(super) fn check_gelu(&self, l: usize, expr: usize) -> R<()> {
        let steps = (2.0 * GELU_RANGE * 16.0) as i32;
        let mut worst: Option<(f64, f64, f64)> = None;
        for s in 0..=steps {
            let x = -GELU_RANGE + s as f64 / 16.0;
            let (got, want) = (eval(&self.exprs, expr, x), gelu_tanh(x));
            let err = (got - want).abs() / (1.0 + want.abs());
            if (err.is_nan() || err > GELU_TOLERANCE) && worst.is_none_or(|(e, _, _)| err > e || e.is_nan()) {
                worst = Some((if err.is_nan() { f64::INFINITY } else { err }, x, got));
            }
        }
        match worst {
            None => Ok(()),
            Some((_, x, got)) => Err(format!(
                "layer {l}'s MLP activation is not the tanh GELU x/2 (1 + tanh(sqrt(2/π) (x + 0.044715 x³))): at x = \
                 {x} it gives {got:.7} instead of {:.7} (check its constants)",
                gelu_tanh(x)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_expression() {
        // 0.5 x (1 + tanh(c (x + 0.044715 x^3))), in the exporter's order.
        let e = vec![
            Expr::X,
            Expr::C(3.0),
            Expr::Bin(Bin::Pow, 0, 1),
            Expr::C(0.044715),
            Expr::Bin(Bin::Mul, 3, 2),
            Expr::Bin(Bin::Add, 0, 4),
            Expr::C((2.0 / std::f64::consts::PI).sqrt()),
            Expr::Bin(Bin::Mul, 6, 5),
            Expr::Un(Un::Tanh, 7),
            Expr::C(1.0),
            Expr::Bin(Bin::Add, 8, 9),
            Expr::C(0.5),
            Expr::Bin(Bin::Mul, 11, 10),
            Expr::Bin(Bin::Mul, 0, 12),
        ];
        for x in [-3.0, -0.5, 0.0, 1.0, 4.0] {
            assert!((eval(&e, 13, x) - gelu_tanh(x)).abs() < 1e-12);
        }
    }
}
