pub mod gguf;
pub mod hf;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod text;
pub mod vocab;
