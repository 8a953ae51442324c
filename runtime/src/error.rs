//! The library's typed errors: small, `Copy`, no allocation.

use crate::format::keys::LayerNaming;
use crate::format::FormatError;
use crate::tokenizer::TokenizerError;
use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The file's structure is invalid.
    Format(FormatError),
    /// The file describes an architecture this build does not run.
    UnsupportedArchitecture,
    /// A required tensor is missing, or has the wrong dtype or shape. `layer` is `None`
    /// for global tensors (then `role` is the tensor's name); a layer's tensor is named
    /// as `naming` says (`blk.3.attn_q`, `l3.vconv.weight`). Built by `bad` (this module).
    BadTensor { naming: LayerNaming, role: &'static str, layer: Option<u32>, problem: &'static str },
    /// A hyperparameter is zero, inconsistent or over its cap.
    BadHyperparameter(&'static str),
    /// The caller's arena is smaller than [`memory_plan`](crate::Model::memory_plan) says.
    ArenaTooSmall { need: usize, have: usize },
    /// The session's context is full.
    ContextFull { ctx: usize },
    /// A token id is not in the vocabulary.
    TokenOutOfRange { id: u32, vocab: usize },
    /// A session configuration value is invalid (e.g. a zero context).
    BadConfig(&'static str),
    /// The tokenizer tables are invalid.
    Tokenizer(TokenizerError),
    /// A value passed to a session does not fit the model (e.g. an image of another
    /// size, a pixel level out of range).
    BadInput(&'static str),
    /// The offload device (the GPU) failed during a step.
    Offload(&'static str),
}

/// The one constructor of [`Error::BadTensor`]: tensor `role` of `layer` (or the global
/// tensor `role`), named as `naming` says, has `problem`.
pub(crate) fn bad(naming: LayerNaming, role: &'static str, layer: Option<u32>, problem: &'static str) -> Error {
    Error::BadTensor { naming, role, layer, problem }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Format(e) => e.fmt(f),
            Error::UnsupportedArchitecture => write!(f, "unsupported model architecture"),
            Error::BadTensor { naming, role, layer: Some(l), problem } => {
                write!(f, "tensor {}{l}.{role}: {problem}", naming.prefix())
            }
            Error::BadTensor { role, layer: None, problem, .. } => write!(f, "tensor {role}: {problem}"),
            Error::BadHyperparameter(what) => write!(f, "invalid hyperparameter: {what}"),
            Error::ArenaTooSmall { need, have } => {
                write!(f, "arena too small: need {need} bytes, have {have} ({} missing)", need - have.min(need))
            }
            Error::ContextFull { ctx } => write!(f, "context of {ctx} tokens is full"),
            Error::TokenOutOfRange { id, vocab } => {
                write!(f, "token id {id} out of range (vocabulary {vocab})")
            }
            Error::BadConfig(what) => write!(f, "invalid session configuration: {what}"),
            Error::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            Error::BadInput(what) => f.write_str(what),
            Error::Offload(what) => write!(f, "gpu: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
#[cfg(feature = "std")]
impl std::error::Error for FormatError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn bad_tensor_names_the_tensor_the_file_holds() {
        let e = bad(LayerNaming::L, "vconv.weight", Some(3), "shape does not match the hyperparameters");
        assert_eq!(e.to_string(), "tensor l3.vconv.weight: shape does not match the hyperparameters");
        let e = bad(LayerNaming::Blk, "ffn_up.bias", Some(1), "missing or out of the canonical order");
        assert_eq!(e.to_string(), "tensor blk.1.ffn_up.bias: missing or out of the canonical order");
        let e = bad(LayerNaming::L, "out1.bias", None, "missing");
        assert_eq!(e.to_string(), "tensor out1.bias: missing");
    }
}
