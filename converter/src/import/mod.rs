pub mod gguf;
pub mod hf;
pub mod text;
#[cfg(feature = "onnx")]
pub mod onnx;
