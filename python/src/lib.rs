//! `import arq`: the Python face of arq's library crates. This crate converts types
//! only — Python arguments to the library's, its results to Python objects and numpy
//! arrays, its errors to exceptions — and releases the GIL around every call that
//! computes. What runs is `arq_convert`'s: [`arq_convert::convert`],
//! [`arq_convert::text`], [`arq_convert::pixel`].
//!
//! Modules: [`owned`] keeps a model with its file and a session with its arena (the
//! crate's only `unsafe`); [`model`] is `arq.Model`; [`session`] is `arq.Session` and
//! the generation iterator.

use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use arq_convert::quantize::Quant;
use arq_convert::{ConvertOptions, InputFormat};

mod model;
mod owned;
mod session;

create_exception!(_arq, ArqError, PyException, "An error reported by arq, with its one-line message.");
create_exception!(_arq, BadFileError, ArqError, "A model or input file that cannot be opened, parsed or loaded.");
create_exception!(
    _arq,
    BadArgumentError,
    ArqError,
    "An argument that does not fit the model or the call (a size, a range, a token id)."
);
create_exception!(_arq, ArenaTooSmallError, ArqError, "A session's memory is smaller than its plan needs.");

/// Which exception an error becomes when its cause does not say.
#[derive(Clone, Copy)]
enum Blame {
    File,
    Argument,
}

/// `e` as the exception of its cause: the runtime's error kinds where the error carries
/// one, else `blame`'s. The message is the line the CLI prints.
fn to_py(e: anyhow::Error, blame: Blame) -> PyErr {
    let msg = arq_convert::message::line(&format!("{e:#}"));
    match e.downcast_ref::<arq::Error>() {
        Some(arq::Error::ArenaTooSmall { .. }) => ArenaTooSmallError::new_err(msg),
        Some(
            arq::Error::Format(_)
            | arq::Error::UnsupportedArchitecture
            | arq::Error::BadTensor { .. }
            | arq::Error::BadHyperparameter(_)
            | arq::Error::Tokenizer(_),
        ) => BadFileError::new_err(msg),
        Some(_) => BadArgumentError::new_err(msg),
        None => match blame {
            Blame::File => BadFileError::new_err(msg),
            Blame::Argument => BadArgumentError::new_err(msg),
        },
    }
}

fn bad_argument(msg: impl Into<String>) -> PyErr {
    BadArgumentError::new_err(msg.into())
}

fn parse_quant(quant: &str) -> PyResult<Quant> {
    match quant {
        "q8" => Ok(Quant::Q8),
        "q4" => Ok(Quant::Q4),
        "f32" => Ok(Quant::F32),
        _ => Err(bad_argument(format!("quant must be 'q8', 'q4' or 'f32', not {quant:?}"))),
    }
}

/// Converts a GGUF file, an ONNX graph (PixelCNN, GPT-2) or a Hugging Face directory
/// to the `.arq` file `output`, as `arq convert` does; returns its report as a dict.
#[pyfunction]
#[pyo3(signature = (input, output, quant = "q8", *, force = false, calib = None, calibrate = true, progress = true, head = None, levels = None, vocab = None))]
#[allow(clippy::too_many_arguments)]
fn convert<'py>(
    py: Python<'py>,
    input: PathBuf,
    output: PathBuf,
    quant: &str,
    force: bool,
    calib: Option<PathBuf>,
    calibrate: bool,
    progress: bool,
    head: Option<String>,
    levels: Option<usize>,
    vocab: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ConvertOptions {
        quant: parse_quant(quant)?,
        force,
        calib,
        skip_calibration: !calibrate,
        progress,
        head,
        levels,
        vocab,
    };
    let s = py.detach(|| arq_convert::convert(&input, &output, &opts)).map_err(|e| to_py(e, Blame::File))?;
    let d = PyDict::new(py);
    let format = match s.format {
        InputFormat::Gguf => "gguf",
        InputFormat::Onnx => "onnx",
        InputFormat::HuggingFace => "huggingface",
    };
    d.set_item("format", format)?;
    d.set_item("output", output)?;
    d.set_item("bytes", s.bytes)?;
    d.set_item("quant", opts.quant.name())?;
    let errors = PyDict::new(py);
    for (name, err) in &s.tensor_errors {
        errors.set_item(name, err)?;
    }
    d.set_item("tensor_errors", errors)?;
    let accuracy = match &s.accuracy {
        Some(a) => {
            let v = PyDict::new(py);
            v.set_item("tokens", a.tokens)?;
            v.set_item("kl_mean", a.kl_mean)?;
            v.set_item("top1_agreement", a.top1_agreement)?;
            v.set_item("ppl_reference", a.ppl_reference)?;
            v.set_item("ppl_quantized", a.ppl_quantized)?;
            Some(v)
        }
        None => None,
    };
    d.set_item("accuracy", accuracy)?;
    d.set_item("description", s.description)?;
    Ok(d)
}

/// How many text sessions (`Session` objects and generation iterators) are alive.
#[pyfunction]
fn _live_sessions() -> usize {
    owned::live_sessions()
}

#[pymodule]
fn _arq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // The kernel settings the CLI uses on this machine (`arq tune`'s cache, the
    // environment, or this CPU's defaults): speed only, results are identical.
    arq_convert::tune::apply().map_err(|e| BadArgumentError::new_err(format!("{e:#}")))?;
    m.add("ArqError", py.get_type::<ArqError>())?;
    m.add("BadFileError", py.get_type::<BadFileError>())?;
    m.add("BadArgumentError", py.get_type::<BadArgumentError>())?;
    m.add("ArenaTooSmallError", py.get_type::<ArenaTooSmallError>())?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(_live_sessions, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<session::Session>()?;
    m.add_class::<session::Generation>()?;
    Ok(())
}
