pub mod gguf;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod vocab;
