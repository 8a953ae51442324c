//! arq-convert: importers (GGUF; ONNX PixelCNN and GPT-2), the quantizer, the `.arq` writer pipeline, the
//! accuracy report, and the pieces of the `arq` command-line tool.
pub mod aligned;
pub mod convert;
pub mod gguf;
pub mod images;
pub mod import;
pub mod pixel;
pub mod progress;
pub mod report;
