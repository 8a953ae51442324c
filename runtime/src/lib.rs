//! arq: a `no_std` runtime for quantized autoregressive models.
//!
//! The engine runs from a `&[u8]` holding an `.arq` file (an mmap on a host, a
//! `static` blob in microcontroller flash) and one caller-supplied arena whose
//! exact size [`Model::memory_plan`] computes before anything runs. `alloc` adds the
//! tokenizer's encoder conveniences, [`aligned`] and [`quant::quantize_weights_q8`];
//! `std` adds the file writer ([`format::writer`], over `std::io`), the synthetic
//! PixelCNN files ([`models::pixelcnn::synth`]) and runtime ISA detection; `gpu` adds
//! [`gpu`], the matrix products on a Vulkan/Metal/DX12 device through wgpu; `defmt` or
//! `log` route the runtime's few log lines (model loads, session arenas) to that back
//! end (`trace.rs`).
//!
//! Modules: [`format`](mod@format) reads (and writes) the file, with [`format::keys`] the table of
//! its names; [`quant`] specifies each dtype; [`kernels`] computes on them; [`linear`]
//! holds what every model shares; [`models`] the model families.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
pub mod aligned;
pub mod arena;
pub mod error;
pub mod format;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod kernels;
pub mod linear;
pub mod math;
pub mod models;
pub mod parallel;
pub mod quant;
pub mod sampler;
pub mod tokenizer;
mod trace;

pub use error::Error;
pub use models::pixelcnn::{PixelCnn, PixelConfig, PixelSession, PixelSessionConfig};
pub use models::pixelgraph::{GraphConfig, GraphSession, GraphSessionConfig, PixelGraph};
pub use models::rnn::{Rnn, RnnConfig, RnnInput, RnnSession};
pub use models::transformer::{Family, KvDtype, Model, Session, SessionConfig, TransformerConfig};
