//! The model families: [`transformer`], the decoder-only engine with one thin file per
//! family and a family table, and [`pixelcnn`], a causal-convolution graph executor with
//! its output heads.

pub mod pixelcnn;
pub mod transformer;
