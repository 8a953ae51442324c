//! The Conv nodes of a gated PixelCNN: each one's role from its input's, and the taps
//! its kernel, dilation and pads read, which must be the causal ones of that role.

use arq::quant::QK8;
use tract_onnx::pb;

use super::{show_frame, Axis, Found, Kind, LayerParts, Role, Val, Walker};
use crate::import::onnx::pixelcnn::{ConvWeights, MAX_CHANNELS, MAX_DILATION, MAX_KERNEL, MAX_LAYERS, MAX_PAD};
use crate::import::onnx::proto::{attr_int, attr_ints, attr_str, input_name, output0, Data, R};

/// A Conv node's weights and attributes, checked for what every role shares.
struct ConvNode {
    /// `[out_channels, in_channels, kernel_height, kernel_width]`.
    shape: [usize; 4],
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// `[d_rows, d_cols]`, each >= 1.
    dil: [usize; 2],
    /// `[top, left, bottom, right]`, each within `MAX_PAD`.
    pads: [i64; 4],
}

/// What the tap checks of one Conv read: its kernel, dilations and pads, the image size
/// and the frame of its input.
struct Taps<'a> {
    /// The convolution in refusals (`layer 2 vconv`).
    what: &'a str,
    kh: usize,
    kw: usize,
    dil: [usize; 2],
    pads: [i64; 4],
    rows: Axis,
    cols: Axis,
    h: i64,
    w: i64,
    /// Where the input is sliced or padded, for the refusals ("" where it is not).
    note: String,
}

impl Walker<'_> {
    pub(super) fn conv(&mut self, i: usize, n: &pb::NodeProto) -> R<()> {
        let (_, x) = self.val(n, 0)?;
        let c = self.conv_node(n, x)?;
        let [co, ci, kh, kw] = c.shape;
        let (role, l) = self.conv_role(x.kind, kh, kw)?;
        let what = match role {
            Role::Out1 | Role::Out2 => role.name().to_string(),
            _ => format!("layer {l} {}", role.name()),
        };
        if l >= MAX_LAYERS {
            return Err(format!("{what}: more than {MAX_LAYERS} gated layers"));
        }
        let taps = self.taps(&what, &c, x);
        let (k, d) = match role {
            Role::VConv => taps.vconv()?,
            Role::HConv => taps.hconv(l)?,
            _ => taps.pointwise()?,
        };
        self.conv_channels(role, co, i, &what)?;
        let found = Found { node: i, k, d, w: ConvWeights { shape: [co, ci, kh, kw], weight: c.weight, bias: c.bias } };
        self.record(role, l, &what, found)?;
        let kind = match role {
            Role::VConv => Kind::VPre(l),
            Role::HConv => Kind::HConv(l),
            Role::V2h => Kind::V2h(l),
            Role::HOut => Kind::HOut(l),
            Role::Out1 => Kind::Out1,
            Role::Out2 => Kind::Out2,
        };
        self.add(&output0(n), Val { kind, ch: co, frame: self.identity(), node: i });
        Ok(())
    }

    /// The weights, bias and attributes of Conv `n` on `x`: group 1, strides 1, `x`'s
    /// channels in, four pads.
    fn conv_node(&self, n: &pb::NodeProto, x: Val) -> R<ConvNode> {
        let wname = input_name(n, 1).ok_or("Conv without weights")?;
        let w = self.constant(wname)?;
        let Data::F32(weight) = &w.data else {
            return Err(format!("weight '{wname}' is not floating point"));
        };
        let wdims = &w.dims;
        let [co, ci, kh, kw] = wdims[..] else {
            return Err(format!("weight '{wname}' has shape {wdims:?}; only 2-D convolutions are supported"));
        };
        if co == 0 || kh == 0 || kw == 0 {
            return Err(format!("weight '{wname}' has shape {wdims:?}"));
        }
        let bias = match input_name(n, 2) {
            None => vec![0.0; co],
            Some(b) => {
                let c = self.constant(b)?;
                match c.floats() {
                    Some(data) if c.dims == [co] => data.to_vec(),
                    _ => return Err(format!("bias '{b}' is not {co} floats")),
                }
            }
        };
        let group = attr_int(n, "group").unwrap_or(1);
        if group != 1 {
            return Err(format!("group {group} (only group 1 is supported)"));
        }
        if ci != x.ch {
            return Err(format!("weight has {ci} input channels, but {} has {}", self.describe(x.kind), x.ch));
        }
        let strides = attr_ints(n, "strides").unwrap_or_else(|| vec![1, 1]);
        if strides.iter().any(|&s| s != 1) {
            return Err(format!("strides {strides:?} (only 1 is supported)"));
        }
        let dil = attr_ints(n, "dilations").unwrap_or_else(|| vec![1, 1]);
        if dil.len() != 2 || dil.iter().any(|&d| d < 1) {
            return Err(format!("dilations {dil:?}"));
        }
        if let Some(ks) = attr_ints(n, "kernel_shape") {
            if ks != [kh as i64, kw as i64] {
                return Err(format!("kernel_shape {ks:?} differs from the weight's {kh}x{kw}"));
            }
        }
        let pads = attr_ints(n, "pads").unwrap_or_else(|| vec![0; 4]);
        if pads.len() != 4 || pads.iter().any(|p| p.abs() > MAX_PAD) {
            return Err(format!("pads {pads:?}"));
        }
        match attr_str(n, "auto_pad").as_deref() {
            None | Some("NOTSET") => {}
            Some("VALID") if pads.iter().all(|&p| p == 0) => {}
            Some(a) => return Err(format!("auto_pad {a} is not supported (export with explicit pads)")),
        }
        Ok(ConvNode {
            shape: [co, ci, kh, kw],
            weight: weight.clone(),
            bias,
            dil: [dil[0] as usize, dil[1] as usize],
            pads: [pads[0], pads[1], pads[2], pads[3]],
        })
    }

    /// The role of a `kh x kw` Conv on a tensor of kind `input`, and its layer.
    fn conv_role(&self, input: Kind, kh: usize, kw: usize) -> R<(Role, usize)> {
        Ok(match input {
            Kind::Input if kh > 1 => (Role::VConv, 0),
            Kind::Input => (Role::HConv, 0),
            Kind::V(l) => (Role::VConv, l + 1),
            Kind::VPre(l) => (Role::V2h, l),
            Kind::H(l) if kh > 1 || kw > 1 => (Role::HConv, l + 1),
            Kind::H(l) => (Role::Out1, l),
            Kind::G(l) => (Role::HOut, l),
            Kind::OutGate => (Role::Out2, 0),
            k => return Err(format!("a Conv on {} is not part of the gated PixelCNN pattern", self.describe(k))),
        })
    }

    fn taps<'a>(&self, what: &'a str, c: &ConvNode, x: Val) -> Taps<'a> {
        let [rows, cols] = x.frame;
        let note = if x.frame == self.identity() {
            String::new()
        } else {
            format!(" on an input sliced/padded to {}", show_frame(x.frame))
        };
        let [_, _, kh, kw] = c.shape;
        Taps { what, kh, kw, dil: c.dil, pads: c.pads, rows, cols, h: self.h, w: self.w, note }
    }

    /// The channel counts a Conv of `role` with `co` outputs sets (`C`, `OH`).
    fn conv_channels(&mut self, role: Role, co: usize, i: usize, what: &str) -> R<()> {
        match role {
            Role::VConv | Role::HConv | Role::V2h => {
                if !co.is_multiple_of(2) {
                    return Err(format!("{what}: {co} output channels (a gate needs 2C)"));
                }
                self.set_channels(co / 2, i, what)?;
            }
            Role::HOut => self.set_channels(co, i, what)?,
            Role::Out1 => {
                let oh = co / 2;
                if !co.is_multiple_of(2) || oh == 0 || !oh.is_multiple_of(QK8) || oh > MAX_CHANNELS {
                    return Err(format!(
                        "out1: {co} output channels (2 OH): OH must be a multiple of 32, at most {MAX_CHANNELS}"
                    ));
                }
                self.out_hidden = Some(oh);
            }
            Role::Out2 => {}
        }
        Ok(())
    }

    /// Keeps `found` as layer `l`'s `role` (or out1, out2), the first of its kind.
    fn record(&mut self, role: Role, l: usize, what: &str, found: Found) -> R<()> {
        match role {
            Role::Out1 | Role::Out2 => {
                let have = if role == Role::Out1 {
                    self.out1.as_ref().map(|o| o.0.node)
                } else {
                    self.out2.as_ref().map(|o| o.node)
                };
                if let Some(at) = have {
                    return Err(format!("a second {what} (the first is {})", self.label(at)));
                }
                if role == Role::Out1 {
                    self.out1 = Some((found, l));
                } else {
                    self.out2 = Some(found);
                }
            }
            _ => {
                if self.layers.len() <= l {
                    self.layers.resize(l + 1, LayerParts::default());
                }
                if let Some(prev) = self.layers[l].slot(role) {
                    let at = prev.node;
                    return Err(format!("a second {what} (the first is {})", self.label(at)));
                }
                *self.layers[l].slot(role) = Some(found);
            }
        }
        Ok(())
    }
}

impl Taps<'_> {
    fn bad_pads(&self, expected: String, causal: bool) -> String {
        format!(
            "{}: pads {:?}{} {} (expected {expected})",
            self.what,
            self.pads,
            self.note,
            if causal { "are not causal" } else { "do not fit" }
        )
    }

    /// A vconv `(m+1) x k`, dilations `[d, d]`, pads `[d m, d m, 0, d m]`: `(k, d)`.
    fn vconv(&self) -> R<(usize, usize)> {
        let (what, kh, kw, [dh, dw]) = (self.what, self.kh, self.kw, self.dil);
        let m = kh - 1;
        if kw != 2 * m + 1 || !(3..=MAX_KERNEL).contains(&kw) {
            return Err(format!("{what}: kernel {kh}x{kw} is not (k/2+1) x k with odd k in 3..={MAX_KERNEL}"));
        }
        if dh != dw {
            return Err(format!("{what}: dilations {:?} differ (expected [d, d])", [dh as i64, dw as i64]));
        }
        let d = dw;
        if d > MAX_DILATION {
            return Err(format!("{what}: dilation {d} is above {MAX_DILATION}"));
        }
        let dm = (d * m) as i64;
        let (di, ki, p) = (d as i64, kh as i64, self.pads);
        let ok = self.rows.conv_reads(self.h, ki, di, p[0], p[2], -dm)
            && self.cols.conv_reads(self.w, kw as i64, di, p[1], p[3], -dm);
        if !ok {
            return Err(self.bad_pads(format!("[{dm}, {dm}, 0, {dm}] for kernel {kh}x{kw}, dilation {d}"), true));
        }
        Ok((kw, d))
    }

    /// An hconv: layer 0 `1 x m` on the input with its last `d` columns sliced off,
    /// later layers `1 x (m+1)`; pads `[0, d m, 0, 0]`: `(k, d)` with `k = 2m + 1`.
    fn hconv(&self, l: usize) -> R<(usize, usize)> {
        let (what, kh, kw, p) = (self.what, self.kh, self.kw, self.pads);
        if kh != 1 {
            return Err(format!("{what}: kernel {kh}x{kw} is not one row (1 x (k/2+1), or 1 x k/2 in layer 0)"));
        }
        let m = if l == 0 { kw } else { kw - 1 };
        if m == 0 || 2 * m + 1 > MAX_KERNEL {
            return Err(format!(
                "{what}: kernel 1x{kw} is not 1 x {}k/2{} with odd k in 3..={MAX_KERNEL}",
                if l == 0 { "" } else { "(" },
                if l == 0 { "" } else { "+1)" }
            ));
        }
        // A one-tap kernel's dilation is free: its offset comes from the pads.
        let d = if kw > 1 {
            self.dil[1]
        } else {
            let shift = p[1] - self.cols.off;
            if shift <= 0 || shift % m as i64 != 0 {
                return Err(self.bad_pads(
                    format!("[0, d*{m}, 0, 0] with d >= 1 on the input with its last d columns sliced off"),
                    true,
                ));
            }
            (shift / m as i64) as usize
        };
        if d > MAX_DILATION {
            return Err(format!("{what}: dilation {d} is above {MAX_DILATION}"));
        }
        let dm = (d * m) as i64;
        let ok = self.rows.conv_reads(self.h, 1, 1, p[0], p[2], 0)
            && self.cols.conv_reads(self.w, kw as i64, d as i64, p[1], p[3], -dm);
        if !ok {
            let tail = if l == 0 {
                format!(", on the input with its last {d} column{} sliced off", if d == 1 { "" } else { "s" })
            } else {
                String::new()
            };
            return Err(self.bad_pads(format!("[0, {dm}, 0, 0] for kernel 1x{kw}, dilation {d}{tail}"), true));
        }
        Ok((2 * m + 1, d))
    }

    /// A 1x1 Conv (v2h, hout, out1, out2), unpadded: `(0, 0)`.
    fn pointwise(&self) -> R<(usize, usize)> {
        let (kh, kw, p) = (self.kh, self.kw, self.pads);
        if kh != 1 || kw != 1 {
            return Err(format!("{}: kernel {kh}x{kw} (expected 1x1)", self.what));
        }
        let ok = self.rows.conv_reads(self.h, 1, 1, p[0], p[2], 0) && self.cols.conv_reads(self.w, 1, 1, p[1], p[3], 0);
        if !ok {
            return Err(self.bad_pads("[0, 0, 0, 0]".into(), false));
        }
        Ok((0, 0))
    }
}
