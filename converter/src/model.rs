//! An `.arq` file opened once into the model it holds: a text model, a recurrent one or a
//! PixelCNN, told
//! apart by `arq.architecture` in this one place.

use arq::format::keys;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use arq::format::ArqFile;
use arq::{Model, PixelCnn, PixelGraph, Rnn};

use crate::aligned::ModelBytes;

/// The kinds of model an `.arq` file can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A transformer with its tokenizer (LLaMA, GPT-2).
    Text,
    /// A PixelCNN over images: the gated pattern or a pixel graph.
    Pixel,
    /// A recurrent language model (LSTM, GRU) with a word or character vocabulary.
    Recurrent,
}

impl Kind {
    /// The kind `file` declares; `None` for an architecture neither loader knows.
    pub fn of(file: &ArqFile<'_>) -> Option<Kind> {
        match file.meta(keys::ARCHITECTURE).and_then(|v| v.as_str()) {
            Some(keys::ARCH_LLAMA | keys::ARCH_GPT2 | keys::ARCH_TORCH_ENCODER) => Some(Kind::Text),
            Some(keys::ARCH_PIXELCNN | keys::ARCH_PIXELGRAPH) => Some(Kind::Pixel),
            Some(keys::ARCH_RNN) => Some(Kind::Recurrent),
            _ => None,
        }
    }
}

/// A loaded model of either kind, borrowing the file's bytes.
pub enum Loaded<'a> {
    Text(Model<'a>),
    Pixel(PixelCnn<'a>),
    /// Boxed: the model keeps a fixed table of its nodes.
    Graph(Box<PixelGraph<'a>>),
    /// Boxed: the model keeps a fixed table of its layers' views.
    Recurrent(Box<Rnn<'a>>),
}

impl<'a> Loaded<'a> {
    /// Runs the loader of the file's kind. A file of unknown architecture goes to the
    /// text loader, which names the problem ([`arq::Error::UnsupportedArchitecture`]).
    pub fn from_file(file: ArqFile<'a>) -> Result<Self, arq::Error> {
        match Kind::of(&file) {
            Some(Kind::Pixel)
                if file.meta(keys::ARCHITECTURE).and_then(|v| v.as_str()) == Some(keys::ARCH_PIXELGRAPH) =>
            {
                PixelGraph::from_file(file).map(|m| Loaded::Graph(Box::new(m)))
            }
            Some(Kind::Pixel) => PixelCnn::from_file(file).map(Loaded::Pixel),
            Some(Kind::Recurrent) => Rnn::from_file(file).map(|m| Loaded::Recurrent(Box::new(m))),
            _ => Model::from_file(file).map(Loaded::Text),
        }
    }
}

/// A model file mapped read-only, with its path for error messages.
pub struct ModelFile {
    path: PathBuf,
    bytes: ModelBytes,
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<Self> {
        crate::input::regular_file(path)?;
        Ok(ModelFile { path: path.to_path_buf(), bytes: ModelBytes::map(path)? })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }

    /// The `.arq` structure; errors name the file.
    pub fn parse(&self) -> Result<ArqFile<'_>> {
        ArqFile::parse(self.bytes.bytes()).map_err(|e| self.error(e))
    }

    /// The kind the file declares, without loading it; `None` when it does not parse or
    /// its architecture is unknown (loading then says why).
    pub fn kind(&self) -> Option<Kind> {
        ArqFile::parse(self.bytes.bytes()).ok().as_ref().and_then(Kind::of)
    }

    /// Parses and loads the model of the file's kind.
    pub fn load(&self) -> Result<Loaded<'_>> {
        self.load_parsed(self.parse()?)
    }

    /// Loads a model from this file's already parsed structure.
    pub fn load_parsed<'a>(&self, file: ArqFile<'a>) -> Result<Loaded<'a>> {
        Loaded::from_file(file).map_err(|e| self.error(e))
    }

    fn error(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {e}", self.path.display())
    }
}
