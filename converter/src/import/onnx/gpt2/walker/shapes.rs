//! Shape arithmetic of a GPT-2 graph: symbolic dimensions (`B`, `T`, numbers), the
//! shape tensors computed from them, and the nodes that move data without computing
//! (Shape, Gather, Squeeze, Concat, Range, Slice, Split, Reshape, Transpose).

use std::rc::Rc;

use arq::quant::QK8;
use tract_onnx::pb;

use super::attention::{show_axes, Qkv, BTHD};
use super::linear::transpose;
use super::{Kind, Operand, Role, Val, Walker};
use crate::import::onnx::proto::{attr, attr_int, attr_ints, clamp_index, input_name, output0, Data, Tensor, R};

/// A symbolic dimension `B^b T^t n` (`B` batch, `T` sequence length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Dim {
    pub(super) b: u8,
    pub(super) t: u8,
    pub(super) n: u64,
}

impl Dim {
    pub(super) const B: Dim = Dim { b: 1, t: 0, n: 1 };
    pub(super) const T: Dim = Dim { b: 0, t: 1, n: 1 };
    pub(super) fn n(n: u64) -> Dim {
        Dim { b: 0, t: 0, n }
    }
    fn mul(self, o: Dim) -> Dim {
        Dim { b: self.b.saturating_add(o.b), t: self.t.saturating_add(o.t), n: self.n.saturating_mul(o.n) }
    }
    fn div(self, o: Dim) -> Option<Dim> {
        if o.n == 0 || !self.n.is_multiple_of(o.n) {
            return None;
        }
        Some(Dim { b: self.b.checked_sub(o.b)?, t: self.t.checked_sub(o.t)?, n: self.n / o.n })
    }
    pub(super) fn show(self) -> String {
        let mut parts = Vec::new();
        if self.b > 0 {
            parts.push(if self.b == 1 { "B".to_string() } else { format!("B^{}", self.b) });
        }
        if self.t > 0 {
            parts.push(if self.t == 1 { "T".to_string() } else { format!("T^{}", self.t) });
        }
        if self.n != 1 || parts.is_empty() {
            parts.push(self.n.to_string());
        }
        parts.join("*")
    }
}

/// An element of an integer shape tensor: a dimension, or Reshape's `0` (copy) and `-1`
/// (infer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Item {
    Dim(Dim),
    Zero,
    Infer,
}

impl Item {
    fn from_const(v: i64) -> R<Item> {
        match v {
            0 => Ok(Item::Zero),
            -1 => Ok(Item::Infer),
            v if v > 0 => Ok(Item::Dim(Dim::n(v as u64))),
            v => Err(format!("shape value {v}")),
        }
    }
    pub(super) fn show(self) -> String {
        match self {
            Item::Dim(d) => d.show(),
            Item::Zero => "0".into(),
            Item::Infer => "-1".into(),
        }
    }
}

pub(super) fn show_items(items: &[Item]) -> String {
    format!("({})", items.iter().map(|i| i.show()).collect::<Vec<_>>().join(", "))
}

pub(super) fn show_dims(dims: &[Dim]) -> String {
    format!("({})", dims.iter().map(|d| d.show()).collect::<Vec<_>>().join(", "))
}

/// The end of a Slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    At(i64),
    /// The sequence length.
    T,
}

impl End {
    pub(super) fn show(self) -> String {
        match self {
            End::At(v) => v.to_string(),
            End::T => "T".into(),
        }
    }
}

/// The output shape of a Reshape of `input` to `spec` (0: copy the input's dimension
/// unless `allowzero`, -1: inferred), or `None` if it does not resolve.
fn resolve_reshape(input: &[Dim], spec: &[Item], allowzero: bool) -> Option<Vec<Dim>> {
    let total = input.iter().fold(Dim::n(1), |a, &d| a.mul(d));
    let mut out: Vec<Option<Dim>> = Vec::with_capacity(spec.len());
    let mut known = Dim::n(1);
    let mut infer = None;
    for (j, item) in spec.iter().enumerate() {
        let d = match *item {
            Item::Dim(d) => Some(d),
            Item::Zero if !allowzero => Some(*input.get(j)?),
            Item::Zero => return None,
            Item::Infer if infer.is_none() => {
                infer = Some(j);
                None
            }
            Item::Infer => return None,
        };
        if let Some(d) = d {
            known = known.mul(d);
        }
        out.push(d);
    }
    if let Some(j) = infer {
        out[j] = Some(total.div(known)?);
    } else if known != total {
        return None;
    }
    out.into_iter().collect()
}

impl Walker<'_> {
    /// Input `i` of a Slice (its ends): constant integers or the sequence length `T`.
    fn slice_ends(&self, n: &pb::NodeProto, i: usize) -> R<Option<Vec<End>>> {
        let Some(name) = input_name(n, i) else { return Ok(None) };
        match self.operand(n, i)? {
            Operand::V(Val { kind: Kind::Shape { items, .. }, .. }) => items
                .iter()
                .map(|it| match it {
                    Item::Dim(Dim::T) => Ok(End::T),
                    Item::Dim(Dim { b: 0, t: 0, n }) => Ok(End::At((*n).min(i64::MAX as u64) as i64)),
                    it => Err(format!("Slice to {}", it.show())),
                })
                .collect::<R<Vec<_>>>()
                .map(Some),
            Operand::V(v) => Err(format!("Slice ends '{name}' are {}", self.describe(&v.kind))),
            Operand::C(c) => {
                let ints = c.ints().ok_or_else(|| format!("'{name}' must hold integers"))?;
                Ok(Some(ints.iter().map(|&v| End::At(v)).collect()))
            }
        }
    }

    /// Input `i` as shape items: a computed shape tensor or constant integers.
    fn shape_items(&self, n: &pb::NodeProto, i: usize) -> R<Option<Vec<Item>>> {
        let Some(name) = input_name(n, i) else { return Ok(None) };
        match self.operand(n, i)? {
            Operand::V(Val { kind: Kind::Shape { items, .. }, .. }) => Ok(Some(items)),
            Operand::V(v) => Err(format!("input '{name}' is {}, not a shape", self.describe(&v.kind))),
            Operand::C(c) => {
                let ints = c.ints().ok_or_else(|| format!("'{name}' must hold integers"))?;
                Ok(Some(ints.iter().map(|&v| Item::from_const(v)).collect::<R<Vec<_>>>()?))
            }
        }
    }

    pub(super) fn shape(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let dims = self.dims_of(&v.kind).ok_or_else(|| format!("Shape of {}", self.describe(&v.kind)))?;
        let r = dims.len() as i64;
        let s = clamp_index(attr_int(n, "start").unwrap_or(0), r);
        let e = clamp_index(attr_int(n, "end").unwrap_or(r), r);
        let items = dims[s as usize..e.max(s) as usize].iter().map(|&d| Item::Dim(d)).collect();
        self.add(&output0(n), Val { kind: Kind::Shape { items, scalar: false }, node: i });
        Ok(())
    }

    pub(super) fn gather(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let axis = attr_int(n, "axis").unwrap_or(0);
        let out0 = output0(n);
        let data = self.operand(n, 0)?;
        let idx = self.operand(n, 1)?;
        match (data, idx) {
            (Operand::V(Val { kind: Kind::Shape { items, .. }, .. }), Operand::C(c)) if axis == 0 => {
                let ix = c.ints().ok_or("Gather of shape values with non-integer indices")?;
                let picked = ix
                    .iter()
                    .map(|&j| {
                        let j = if j < 0 { j + items.len() as i64 } else { j };
                        usize::try_from(j).ok().and_then(|j| items.get(j).copied()).ok_or("Gather index out of range")
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let kind = Kind::Shape { items: picked, scalar: c.dims.is_empty() };
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
            (Operand::C(t), Operand::V(v)) if axis == 0 => match v.kind {
                Kind::Tokens => {
                    if t.dims.len() != 2 || t.floats().is_none() {
                        return Err(format!("the token embedding {} is not a float matrix (V, d)", t.show_dims()));
                    }
                    let d = t.dims[1];
                    if d == 0 || !d.is_multiple_of(QK8) {
                        return Err(format!("the model width d = {d} is not a positive multiple of 32"));
                    }
                    if let Some((_, at)) = &self.tok_emb {
                        return Err(format!("a second token embedding (the first is {})", self.label(*at)));
                    }
                    self.tok_emb = Some((t, i));
                    self.add(&out0, Val { kind: Kind::Emb, node: i });
                    Ok(())
                }
                Kind::Positions => {
                    let rank = t.dims.len();
                    let kind = Kind::TSlice { t, rank, rows: true, cols: false, negated: false };
                    self.add(&out0, Val { kind, node: i });
                    Ok(())
                }
                k => Err(format!("Gather of a constant by {}", self.describe(&k))),
            },
            (Operand::V(v), _) => Err(format!("Gather from {}", self.describe(&v.kind))),
            _ => Err(format!("Gather on axis {axis} is not part of the pattern")),
        }
    }

    pub(super) fn squeeze(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let axes = match attr_ints(n, "axes") {
            Some(a) => a,
            None => self.const_ints(n, 1)?.unwrap_or_default(),
        };
        let out0 = output0(n);
        let unsq = n.op_type == "Unsqueeze";
        let v = self.val(n, 0)?;
        let kind = match v.kind {
            Kind::Shape { items, scalar: true } if unsq && axes == [0] => Kind::Shape { items, scalar: false },
            Kind::Shape { items, scalar: false } if !unsq && items.len() == 1 && (axes == [0] || axes.is_empty()) => {
                Kind::Shape { items, scalar: true }
            }
            Kind::Positions if unsq && axes == [0] => Kind::Positions,
            Kind::TSlice { t, rank, rows, cols, negated } if unsq && axes.iter().all(|&a| a == 0) => {
                Kind::TSlice { t, rank: rank + axes.len(), rows, cols, negated }
            }
            k => return Err(format!("{} of {} on axes {axes:?}", n.op_type, self.describe(&k))),
        };
        self.add(&out0, Val { kind, node: i });
        Ok(())
    }

    pub(super) fn concat(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let axis = attr_int(n, "axis").unwrap_or(0);
        let mut items = Vec::new();
        for j in 0..n.input.len() {
            match self.operand(n, j)? {
                Operand::V(Val { kind: Kind::Shape { items: it, scalar: false }, .. }) if axis == 0 => items.extend(it),
                Operand::C(c) if axis == 0 && c.dims.len() == 1 && c.ints().is_some() => {
                    for &v in c.ints().unwrap_or_default() {
                        items.push(Item::from_const(v)?);
                    }
                }
                Operand::V(v) => {
                    return Err(format!("Concat of {} (only shape values are concatenated)", self.describe(&v.kind)))
                }
                Operand::C(c) => return Err(format!("Concat of a constant {} on axis {axis}", c.show_dims())),
            }
        }
        self.add(&output0(n), Val { kind: Kind::Shape { items, scalar: false }, node: i });
        Ok(())
    }

    pub(super) fn range(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let start = self.operand(n, 0)?;
        let limit = self.operand(n, 1)?;
        let delta = self.operand(n, 2)?;
        let is = |o: &Operand, x: f64| matches!(o, Operand::C(c) if c.scalar() == Some(x));
        let to_t = matches!(&limit, Operand::V(Val { kind: Kind::Shape { items, .. }, .. }) if items[..] == [Item::Dim(Dim::T)]);
        if !(is(&start, 0.0) && is(&delta, 1.0) && to_t) {
            return Err("Range is not Range(0, T, 1) over the sequence length".into());
        }
        self.add(&output0(n), Val { kind: Kind::Positions, node: i });
        Ok(())
    }

    /// Normalizes a possibly negative axis of a rank-`r` tensor.
    fn axis(a: i64, r: usize) -> R<usize> {
        let a2 = if a < 0 { a + r as i64 } else { a };
        usize::try_from(a2).ok().filter(|&x| x < r).ok_or_else(|| format!("axis {a} of a rank-{r} tensor"))
    }

    pub(super) fn slice(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let out0 = output0(n);
        let (starts, ends, axes, steps) = if attr(n, "starts").is_some() {
            let ends = attr_ints(n, "ends").map(|v| v.iter().map(|&x| End::At(x)).collect());
            (attr_ints(n, "starts"), ends, attr_ints(n, "axes"), None)
        } else {
            (self.const_ints(n, 1)?, self.slice_ends(n, 2)?, self.const_ints(n, 3)?, self.const_ints(n, 4)?)
        };
        let (Some(starts), Some(ends)) = (starts, ends) else {
            return Err("Slice without starts and ends".into());
        };
        if let Some(steps) = &steps {
            if steps.iter().any(|&s| s != 1) {
                return Err(format!("Slice steps {steps:?} (only 1 is supported)"));
            }
        }
        let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
        if ends.len() != starts.len() || axes.len() != starts.len() {
            return Err("Slice starts, ends and axes differ in length".into());
        }
        match self.operand(n, 0)? {
            // pos_emb[0:T] or the mask[0:T, 0:T].
            Operand::C(t) => {
                let rank = t.dims.len();
                let kind = Kind::TSlice { t, rank, rows: false, cols: false, negated: false };
                let kind = self.t_slice(kind, &starts, &ends, &axes)?;
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
            Operand::V(Val { kind: k @ Kind::TSlice { .. }, .. }) => {
                let kind = self.t_slice(k, &starts, &ends, &axes)?;
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
            Operand::V(Val { kind: Kind::Lin { role: Role::Qkv, l, biased }, .. }) => {
                let d = self.dim().unwrap_or(0) as i64;
                if axes.len() != 1 || Self::axis(axes[0], 3)? != 2 {
                    return Err(format!("Slice of layer {l}'s qkv on axes {axes:?} (expected the last axis)"));
                }
                let End::At(end) = ends[0] else {
                    return Err(format!("Slice of layer {l}'s qkv to T"));
                };
                let (s, e) = (clamp_index(starts[0], 3 * d), clamp_index(end, 3 * d));
                let which = match (s / d.max(1), e - s) {
                    (0, len) if len == d && s == 0 => Qkv::Q,
                    (1, len) if len == d && s == d => Qkv::K,
                    (2, len) if len == d && s == 2 * d => Qkv::V,
                    _ => {
                        return Err(format!(
                        "Slice [{s}, {e}) of layer {l}'s qkv (3d = {}) is not its q [0, d), k [d, 2d) or v [2d, 3d)",
                        3 * d
                    ))
                    }
                };
                self.use_lin(Role::Qkv, l, biased)?;
                self.add(&out0, Val { kind: Kind::Part { l, which }, node: i });
                Ok(())
            }
            Operand::V(v) => Err(format!("Slice of {}", self.describe(&v.kind))),
        }
    }

    /// A Slice of a constant along its last two axes, from 0 to `T`.
    fn t_slice(&self, k: Kind, starts: &[i64], ends: &[End], axes: &[i64]) -> R<Kind> {
        let Kind::TSlice { t, rank, mut rows, mut cols, negated } = k else { unreachable!("a TSlice") };
        if rank < 2 {
            return Err(format!("Slice of a constant {} (expected pos_emb or the causal mask)", t.show_dims()));
        }
        for (j, &a) in axes.iter().enumerate() {
            let a = Self::axis(a, rank)?;
            if starts[j] != 0 || ends[j] != End::T {
                return Err(format!(
                    "Slice [{}, {}) of a constant {} on axis {a}: only [0, T) with T the sequence length is part \
                     of the pattern",
                    starts[j],
                    ends[j].show(),
                    t.show_dims()
                ));
            }
            if a == rank - 2 {
                rows = true;
            } else if a == rank - 1 {
                cols = true;
            } else {
                return Err(format!("Slice of a constant {} on axis {a}", t.show_dims()));
            }
        }
        Ok(Kind::TSlice { t, rank, rows, cols, negated })
    }

    pub(super) fn split(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let Kind::Lin { role: Role::Qkv, l, biased } = v.kind else {
            return Err(format!("Split of {}", self.describe(&v.kind)));
        };
        let d = self.dim().unwrap_or(0) as i64;
        let axis = Self::axis(attr_int(n, "axis").unwrap_or(0), 3)?;
        let sizes = match attr_ints(n, "split") {
            Some(s) => Some(s),
            None => self.const_ints(n, 1)?,
        };
        let equal = sizes.as_ref().is_none_or(|s| s[..] == [d, d, d]);
        if axis != 2 || n.output.len() != 3 || !equal {
            return Err(format!("Split of layer {l}'s qkv is not three equal parts of the last axis (q, k, v)"));
        }
        self.use_lin(Role::Qkv, l, biased)?;
        for (o, which) in n.output.iter().zip([Qkv::Q, Qkv::K, Qkv::V]) {
            self.add(o, Val { kind: Kind::Part { l, which }, node: i });
        }
        Ok(())
    }

    pub(super) fn reshape(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let v = self.val(n, 0)?;
        let spec = self.shape_items(n, 1)?.ok_or("Reshape without a shape")?;
        let allowzero = attr_int(n, "allowzero").unwrap_or(0) != 0;
        let input = self.dims_of(&v.kind).ok_or_else(|| format!("Reshape of {}", self.describe(&v.kind)))?;
        let out = resolve_reshape(&input, &spec, allowzero).ok_or_else(|| {
            format!("Reshape of {} {} to {}", self.describe(&v.kind), show_dims(&input), show_items(&spec))
        })?;
        let d = self.dim().unwrap_or(0) as u64;
        let out0 = output0(n);
        match v.kind {
            Kind::Part { l, which } => {
                let [Dim::B, Dim::T, h, hd] = out[..] else {
                    return Err(format!(
                        "Reshape of layer {l}'s {} to {}; expected (B, T, heads, head_dim)",
                        which.name(),
                        show_dims(&out)
                    ));
                };
                if h.b + h.t + hd.b + hd.t != 0 || h.n * hd.n != d {
                    return Err(format!("Reshape of layer {l}'s {} to {}", which.name(), show_dims(&out)));
                }
                let h = h.n as usize;
                match self.heads {
                    None => self.heads = Some((h, i)),
                    Some((have, _)) if have == h => {}
                    Some((have, at)) => {
                        return Err(format!("{h} heads, but {} split {have} heads", self.label(at)));
                    }
                }
                self.add(&out0, Val { kind: Kind::Heads { l, which, axes: BTHD, scale: 1.0 }, node: i });
                Ok(())
            }
            Kind::Ctx { l, axes } => {
                if axes != BTHD || out[..] != [Dim::B, Dim::T, Dim::n(d)] {
                    return Err(format!(
                        "Reshape of layer {l}'s attention output {} to {}; expected the heads concatenated: \
                         (B, T, heads, head_dim) to (B, T, d)",
                        show_axes(&axes),
                        show_dims(&out)
                    ));
                }
                self.add(&out0, Val { kind: Kind::Merged(l), node: i });
                Ok(())
            }
            k => Err(format!("Reshape of {}", self.describe(&k))),
        }
    }

    pub(super) fn transpose(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let perm = attr_ints(n, "perm");
        let out0 = output0(n);
        match self.operand(n, 0)? {
            Operand::C(c) => {
                let (Some(w), &[r, k]) = (c.floats(), &c.dims[..]) else {
                    return Err(format!("Transpose of a constant {}", c.show_dims()));
                };
                if perm.as_ref().is_some_and(|p| p[..] != [1, 0]) {
                    return Err(format!("Transpose of a matrix with perm {perm:?}"));
                }
                let data = transpose(w, r, k);
                self.consts.insert(out0, Ok(Rc::new(Tensor { dims: vec![k, r], data: Data::F32(data) })));
                Ok(())
            }
            Operand::V(v) => {
                let (l, axes) = match &v.kind {
                    Kind::Heads { l, axes, .. } | Kind::Ctx { l, axes } => (*l, *axes),
                    k => return Err(format!("Transpose of {}", self.describe(k))),
                };
                let perm = perm.unwrap_or_else(|| vec![3, 2, 1, 0]);
                let mut seen = [false; 4];
                let mut new = axes;
                if perm.len() != 4 {
                    return Err(format!("Transpose perm {perm:?} of layer {l}'s per-head tensor"));
                }
                for (j, &p) in perm.iter().enumerate() {
                    let p = usize::try_from(p)
                        .ok()
                        .filter(|&p| p < 4 && !seen[p])
                        .ok_or("Transpose perm is not a permutation")?;
                    seen[p] = true;
                    new[j] = axes[p];
                }
                let kind = match v.kind {
                    Kind::Heads { l, which, scale, .. } => Kind::Heads { l, which, axes: new, scale },
                    _ => Kind::Ctx { l, axes: new },
                };
                self.add(&out0, Val { kind, node: i });
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_resolution() {
        let (b, t) = (Dim::B, Dim::T);
        let btd = [b, t, Dim::n(96)];
        let heads = [Item::Dim(b), Item::Dim(t), Item::Dim(Dim::n(4)), Item::Dim(Dim::n(24))];
        assert_eq!(resolve_reshape(&btd, &heads, true).unwrap(), vec![b, t, Dim::n(4), Dim::n(24)]);
        let copy = [Item::Zero, Item::Zero, Item::Dim(Dim::n(4)), Item::Infer];
        assert_eq!(resolve_reshape(&btd, &copy, false).unwrap(), vec![b, t, Dim::n(4), Dim::n(24)]);
        assert!(resolve_reshape(&btd, &copy, true).is_none());
        let infer_t = [Item::Dim(b), Item::Infer, Item::Dim(Dim::n(4)), Item::Dim(Dim::n(24))];
        assert_eq!(resolve_reshape(&btd, &infer_t, false).unwrap()[1], t);
        let wrong = [Item::Dim(b), Item::Dim(t), Item::Dim(Dim::n(5)), Item::Dim(Dim::n(24))];
        assert!(resolve_reshape(&btd, &wrong, false).is_none());
    }
}
