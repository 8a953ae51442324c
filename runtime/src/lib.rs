//! arq: a `no_std` runtime for quantized autoregressive models.
//!
//! The engine runs from a `&[u8]` holding an `.arq` file (an mmap on a host, a
//! `static` blob in microcontroller flash) and one caller-supplied arena whose
//! exact size [`Model::memory_plan`](arch::transformer::Model::memory_plan) computes
//! before anything runs. `alloc` adds the tokenizer's encoder conveniences and
//! the file writer; `std` adds runtime ISA detection; `gpu` adds [`gpu`], the matrix
//! products on a Vulkan/Metal/DX12 device through wgpu; `defmt` or `log` route the
//! runtime's few log lines (model loads, session arenas) to that back end (`trace.rs`).
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod arch;
pub mod arena;
pub mod error;
pub mod format;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod heads;
pub mod kernels;
pub mod math;
pub mod parallel;
pub mod quant;
pub mod sampler;
pub mod tokenizer;
mod trace;

pub use arch::pixelcnn::{PixelCnn, PixelConfig, PixelSession, PixelSessionConfig};
pub use arch::transformer::{Family, KvDtype, Model, Session, SessionConfig, TransformerConfig};
pub use error::Error;
