//! Which image pixels each tensor may see, and the one line that names a leak
//! (FORMAT.md, "Pixel graphs": the reach and the three schedules). The runtime's loader
//! derives the same facts from the written taps; here they also remember which tap
//! made them, so a refusal can name the ONNX node and kernel tap.

use std::rc::Rc;

/// A kept convolution tap, described for a refusal.
#[derive(Clone, Debug)]
pub(super) struct TapNote {
    /// `node 3 (Conv "name"): tap (ki, kj) of its KHxKW kernel, at offset (dy, dx)`.
    pub(super) text: String,
    /// Whether the kernel is taller than one row: such a tap is where a vertical stack
    /// is shifted down (or fails to be).
    pub(super) tall: bool,
    pub(super) offset: (i64, i64),
}

/// Per graph tensor facts.
#[derive(Clone, Debug)]
pub(super) struct Info {
    pub(super) channels: usize,
    /// The last image pixel, in raster order, its value at `(r, c)` may depend on, as an
    /// offset `(dy, dx)` from `(r, c)` (row first, then column; `dx` never clipped, so
    /// it can only over-state).
    pub(super) reach: (i64, i64),
    /// Whether it may see the current pixel or a later one of its row: cached
    /// generation computes it once the row is complete, and only rows below may read it.
    pub(super) completed_row: bool,
    /// The input its reach comes from, and through which tap (a convolution's).
    pub(super) via: Option<(usize, Option<Rc<TapNote>>)>,
}

impl Info {
    pub(super) fn image() -> Info {
        Info { channels: 1, reach: (0, 0), completed_row: false, via: None }
    }

    /// A convolution of tensor `a` with these taps (`notes` in the same order).
    pub(super) fn conv(info: &[Info], a: usize, channels: usize, taps: &[(i16, i16)], notes: Vec<TapNote>) -> Info {
        let ia = &info[a];
        let (mut reach, mut best, mut first_leak, mut reads_completed) = ((i64::MIN, 0), 0, None, false);
        for (k, &(dy, dx)) in taps.iter().enumerate() {
            // Adding an offset keeps the raster order, so the latest pixel a tap reaches
            // is the tap plus the input's latest.
            let r = (ia.reach.0 + dy as i64, ia.reach.1.saturating_add(dx as i64));
            if r > reach {
                (reach, best) = (r, k);
            }
            if r >= (0, 0) && first_leak.is_none() {
                first_leak = Some(k);
            }
            reads_completed |= dy == 0 && ia.completed_row;
        }
        let note = notes.into_iter().nth(first_leak.unwrap_or(best)).map(Rc::new);
        let completed_row = reach.0 == 0 && (reach.1 >= 0 || reads_completed);
        Info { channels, reach, completed_row, via: Some((a, note)) }
    }

    /// A pointwise op of `a` (and `b`): the later reach of the two.
    pub(super) fn pointwise(info: &[Info], a: usize, b: usize, channels: usize) -> Info {
        let (ia, ib) = (&info[a], &info[b]);
        // On a tie, the earlier tensor: the path back to the image stays short.
        let from = if ib.reach > ia.reach || (ib.reach == ia.reach && b < a) { b } else { a };
        Info {
            channels,
            reach: ia.reach.max(ib.reach),
            completed_row: ia.completed_row || ib.completed_row,
            via: Some((from, None)),
        }
    }
}

/// Why tensor `out`, read as the head's input, is not a conditional on the pixels
/// before it (`None` when it is). Follows the reach back to the image and names the
/// first convolution on the way out that sees the current pixel; when that kernel is one
/// row high (a vertical stack's `1 x N` conv may see its whole row, legitimately, if a
/// taller kernel shifts it down afterwards), the first taller one after it.
pub(super) fn leak(info: &[Info], out: usize) -> Option<String> {
    if !info[out].completed_row {
        return None;
    }
    let mut path = Vec::new();
    let mut t = out;
    while let Some((from, note)) = &info[t].via {
        path.push((t, *from, note.clone()));
        t = *from;
    }
    path.reverse();
    let first = path.iter().position(|(t, _, note)| note.is_some() && info[*t].reach >= (0, 0));
    let Some(first) = first else {
        return Some(
            "the output reads, on the current row, a tensor that is only known once its row is complete".into(),
        );
    };
    let tall = path[first..].iter().find(|(_, _, n)| n.as_ref().is_some_and(|n| n.tall));
    let (_, from, note) = match tall {
        Some(p) if !path[first].2.as_ref().is_some_and(|n| n.tall) => p,
        _ => &path[first],
    };
    let note = note.as_ref()?;
    let (dy, dx) = note.offset;
    let why = if *from == 0 && (dy, dx) == (0, 0) {
        "reads the current pixel of the image: the first layer needs mask A (a mask B, or pads that move the kernel, let it see the pixel it predicts)".to_string()
    } else if *from == 0 {
        format!("reads {dx} pixel(s) right of the current pixel of the image")
    } else {
        let r = info[*from].reach;
        format!(
            "reads row {dy} of a tensor that already sees pixel ({}, {:+}) of its own: a vertical stack must be shifted down a row (pads, or Pad and Slice) before the current row reads it",
            r.0, r.1
        )
    };
    Some(format!("{}, {why}; the output would see the current pixel or a later one", note.text))
}
