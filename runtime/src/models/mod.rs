//! The model families: [`transformer`], the decoder-only engine with one thin file per
//! family and a family table, and [`pixelcnn`], a causal-convolution graph executor with
//! its output heads; [`pixelgraph`], causal convolution graphs of any shape on the same
//! heads; [`rnn`], recurrent networks (LSTM, GRU) with a fixed-size state.

pub mod pixelcnn;
pub mod pixelgraph;
pub mod rnn;
pub mod transformer;
