#[cfg(feature = "onnx")]
pub mod onnx;
