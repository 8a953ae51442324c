//! arq-convert: the importers that turn other formats into `.arq` files, and the library
//! side of the `arq` command-line tool.
//!
//! Converting:
//! - [`import`]: one module per source format ([`import::gguf`]: GGUF reader and the
//!   text importer; [`import::hf`]: Hugging Face directories; `import::onnx`: shared protobuf helpers and one module per
//!   graph pattern: gated PixelCNN, GPT-2, recurrent LSTM/GRU). Importers do
//!   not import each other; what they share lives below them:
//! - [`quantize`]: the output weight types and the encoding of a matrix in one;
//! - [`output`]: the path checks and the atomic, re-validated write;
//! - [`report`]: per-tensor errors and the calibration run against the unquantized model;
//! - [`message`]: names from input files escaped and cut for error lines;
//! - [`input`]: the checks on what a command reads (a regular file, a capped stream).
//! - [`convert`]: the one entry that picks the importer from the input.
//!
//! Running: the library holds what any front end runs on a model — this binary, and the
//! Python package and HTTP server that will call the same functions — taking typed
//! inputs, returning values, printing nothing: [`model`] (a file opened once into the
//! model it holds), [`text`] (prompt encoding with the chat template, the generation
//! loop, next-token distributions, windowed scoring), [`pixel`] (scoring, sampling,
//! imputation of images), [`recurrent`] (the text jobs on LSTM/GRU models), [`series`]
//! (scoring and forecasting real-valued series) and [`images`] (PNG and `.npy` in and
//! out). The binary's `cli/`
//! holds argument parsing and printing only, one module per command family; what it
//! keeps beyond that are the measurements of `bench` and the choice of `--backend`, which
//! report as they time.
pub mod aligned;
pub mod images;
pub mod import;
pub mod input;
pub mod message;
pub mod model;
pub mod output;
pub mod pixel;
pub mod progress;
pub mod quantize;
pub mod recurrent;
pub mod report;
pub mod series;
#[cfg(feature = "serve")]
pub mod serve;
pub mod text;
pub mod tune;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use quantize::{Quant, TensorError};
use report::AccuracyReport;

/// The format of a conversion's input, which picks the importer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// A GGUF file (LLaMA family); also anything not named `.onnx`, which the GGUF
    /// reader then rejects by its magic.
    Gguf,
    /// An ONNX graph (gated PixelCNN, GPT-2), by its `.onnx` extension.
    Onnx,
    /// A Hugging Face model directory (`config.json`, safetensors weights,
    /// `tokenizer.json`), or its `config.json`, shard index or a `.safetensors` file in it.
    HuggingFace,
}

impl InputFormat {
    pub fn of(input: &Path) -> InputFormat {
        let ext = |x: &str| input.extension().is_some_and(|e| e.eq_ignore_ascii_case(x));
        if ext("onnx") {
            InputFormat::Onnx
        } else if input.is_dir() || ext("safetensors") || import::hf::names_the_model(input) {
            InputFormat::HuggingFace
        } else {
            InputFormat::Gguf
        }
    }
}

/// Options of [`convert`].
pub struct ConvertOptions {
    pub quant: Quant,
    /// Overwrite an existing output.
    pub force: bool,
    /// Text models (GGUF, Hugging Face): calibration text file for the accuracy report (`None`: the built-in text).
    pub calib: Option<PathBuf>,
    /// Text models: skip the calibration run (per-tensor errors are still reported).
    pub skip_calibration: bool,
    /// Text models: progress bars on stderr.
    pub progress: bool,
    /// ONNX PixelCNN: the output head (`categorical`, `logistic_mixture:K`, ...),
    /// overriding the file's metadata.
    pub head: Option<String>,
    /// ONNX PixelCNN: discrete levels per pixel, overriding the file's metadata (with `head`).
    pub levels: Option<usize>,
    /// ONNX recurrent model: the vocabulary file the graph lacks.
    pub vocab: Option<PathBuf>,
}

/// What [`convert`] wrote.
pub struct ConvertSummary {
    pub format: InputFormat,
    pub bytes: u64,
    /// Relative error of each quantized matrix.
    pub tensor_errors: Vec<TensorError>,
    /// Text models: the calibration run (`None` for f32 output or when skipped).
    pub accuracy: Option<AccuracyReport>,
    /// ONNX: what was read (layers, head).
    pub description: Option<String>,
}

/// `arq convert`: converts `input` (by [`InputFormat::of`]) to the `.arq` file `out`.
/// Never leaves a partial output, never touches the input.
pub fn convert(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertSummary> {
    match InputFormat::of(input) {
        InputFormat::Onnx => convert_onnx(input, out, opts),
        InputFormat::Gguf | InputFormat::HuggingFace if opts.head.is_some() || opts.levels.is_some() => {
            bail!("--head and --levels apply to ONNX PixelCNN models only")
        }
        InputFormat::Gguf | InputFormat::HuggingFace if opts.vocab.is_some() => {
            bail!("--vocab applies to ONNX recurrent models only")
        }
        InputFormat::Gguf => import::gguf::text::convert(input, out, opts),
        InputFormat::HuggingFace => import::hf::convert(input, out, opts),
    }
}

#[cfg(not(feature = "onnx"))]
fn convert_onnx(input: &Path, _: &Path, _: &ConvertOptions) -> Result<ConvertSummary> {
    bail!("{}: this arq was built without ONNX import (cargo feature `onnx`)", input.display())
}

#[cfg(feature = "onnx")]
fn convert_onnx(input: &Path, out: &Path, opts: &ConvertOptions) -> Result<ConvertSummary> {
    use import::onnx::{onnx_architecture, HeadSpec, OnnxConvertOptions};
    let (head, levels) = (opts.head.as_deref(), opts.levels);
    if (head.is_some() || levels.is_some())
        && onnx_architecture(input)?.as_deref() == Some(arq::format::keys::ARCH_GPT2)
    {
        bail!("{}: --head and --levels apply to PixelCNN models; this is a gpt2 text model", input.display());
    }
    let head = match (head, levels) {
        (Some(h), l) => Some(HeadSpec { levels: l.or(h.parse::<HeadSpec>()?.levels), ..h.parse::<HeadSpec>()? }),
        (None, Some(_)) => bail!("--levels needs --head"),
        (None, None) => None,
    };
    let onnx_opts = OnnxConvertOptions { quant: opts.quant, force: opts.force, head, vocab: opts.vocab.clone() };
    let s = import::onnx::convert_onnx(input, out, &onnx_opts)?;
    Ok(ConvertSummary {
        format: InputFormat::Onnx,
        bytes: s.bytes,
        tensor_errors: s.tensor_errors,
        accuracy: None,
        description: Some(s.description),
    })
}
