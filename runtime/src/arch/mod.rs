pub mod gpt2;
pub mod llama;
pub mod pixelcnn;
#[cfg(feature = "std")]
pub mod pixelcnn_synth;
pub mod transformer;
