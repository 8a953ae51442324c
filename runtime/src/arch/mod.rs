pub mod llama;
pub mod pixelcnn;
