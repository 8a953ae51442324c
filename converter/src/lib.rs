//! arq-convert: importers (GGUF), the quantizer, the `.arq` writer and the accuracy report.
pub mod gguf;
