//! Channels-last (NHWC) graphs, as Keras exports them: an `(N, H, W, 1)` input and a
//! `Transpose` to channels-first before every convolution and back after it. A value in
//! NHWC layout is the same graph tensor as its NCHW twin ([`Val::Nhwc`]); Transposes
//! switch between the two, pointwise ops keep the layout, and anything else must see
//! NCHW.

use std::rc::Rc;

use tract_onnx::pb;

use super::walker::{Val, Walker};
use crate::import::onnx::proto::{attr_ints, input_name};

/// NHWC to NCHW.
const TO_NCHW: [i64; 4] = [0, 3, 1, 2];
/// NCHW to NHWC.
const TO_NHWC: [i64; 4] = [0, 2, 3, 1];

/// Ops that compute each element from the same element of their inputs (and scalars).
const POINTWISE: [&str; 11] = ["Identity", "Cast", "Add", "Sub", "Mul", "Div", "Neg", "Tanh", "Sigmoid", "Relu", "Elu"];

impl Walker {
    /// Reads `n` when it is a Transpose or touches an NHWC value; `false` to read it
    /// as usual.
    pub(super) fn through_nhwc(&mut self, n: &pb::NodeProto) -> Result<bool, String> {
        if n.op_type == "Transpose" {
            let perm = attr_ints(n, "perm").unwrap_or_default();
            let v = match (self.input(n, 0)?, perm.as_slice()) {
                (Val::Nhwc(v), p) if p == TO_NCHW => *v,
                (v @ (Val::Map(_) | Val::Image { .. } | Val::Window(_)), p) if p == TO_NHWC => Val::Nhwc(Box::new(v)),
                (_, p) => {
                    return Err(format!(
                        "Transpose with perm {p:?}: only NCHW <-> NHWC ([0, 2, 3, 1] and [0, 3, 1, 2]) of a feature map are supported"
                    ))
                }
            };
            self.set(n, v);
            return Ok(true);
        }
        let inputs: Vec<Option<Val>> = (0..n.input.len())
            .map(|i| input_name(n, i).map(|_| self.input(n, i)).transpose())
            .collect::<Result<_, _>>()?;
        if !inputs.iter().any(|v| matches!(v, Some(Val::Nhwc(_)))) {
            return Ok(false);
        }
        if !POINTWISE.contains(&n.op_type.as_str()) {
            return Err(format!(
                "{} of a channels-last (NHWC) tensor: only pointwise ops, and a Transpose to NCHW, are supported on one",
                n.op_type
            ));
        }
        // The same node over the NCHW twins, under names no ONNX tensor has.
        let mut twin = n.clone();
        for (i, v) in inputs.into_iter().enumerate() {
            match v {
                Some(Val::Nhwc(inner)) => {
                    let name = format!("{}\u{0}nchw", n.input[i]);
                    self.vals.insert(name.clone(), *inner);
                    twin.input[i] = name;
                }
                Some(Val::Map(_) | Val::Window(_) | Val::Image { .. }) => {
                    return Err(format!("{} of an NHWC and an NCHW tensor", n.op_type));
                }
                // One value per channel broadcasts along the last axis in NHWC: the
                // NCHW twin's constant is `[C, 1, 1]`.
                Some(Val::Floats(t)) if !t.dims.is_empty() && t.dims[..t.dims.len() - 1].iter().all(|&d| d == 1) => {
                    let mut c = (*t).clone();
                    c.dims = vec![t.dims[t.dims.len() - 1], 1, 1];
                    let name = format!("{}\u{0}nchw", n.input[i]);
                    self.vals.insert(name.clone(), Val::Floats(Rc::new(c)));
                    twin.input[i] = name;
                }
                _ => {}
            }
        }
        twin.output = n.output.iter().map(|o| format!("{o}\u{0}nchw")).collect();
        self.node(&twin)?;
        for (o, t) in n.output.iter().zip(&twin.output) {
            if let Some(v) = self.vals.remove(t) {
                self.vals.insert(o.clone(), Val::Nhwc(Box::new(v)));
            }
        }
        Ok(true)
    }
}
