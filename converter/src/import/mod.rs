pub mod gguf;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod text;
pub mod vocab;
