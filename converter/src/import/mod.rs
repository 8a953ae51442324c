pub mod gguf;
pub mod text;
#[cfg(feature = "onnx")]
pub mod onnx;
