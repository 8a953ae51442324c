//! The library's typed errors: small, `Copy`, no allocation.

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
    /// A required tensor is missing, or has the wrong dtype or shape.
    /// `layer` is `None` for global tensors.
    BadTensor { role: &'static str, layer: Option<u32>, problem: &'static str },
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
            Error::BadTensor { role, layer: Some(l), problem } => write!(f, "tensor blk.{l}.{role}: {problem}"),
            Error::BadTensor { role, layer: None, problem } => write!(f, "tensor {role}: {problem}"),
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
