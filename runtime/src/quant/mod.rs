//! Block types and their scalar quantize/dequantize: the specification of each dtype.
//!
//! `q8` ([`BlockQ8`], in `q8.rs`): symmetric int8 in [-127, 127] with one f16 scale per
//! block of 32 values along the reduction (last) dimension. A row of `k` values is
//! `k / 32` consecutive blocks. Weights and on-the-fly activations use the same block, so
//! the dot product of two blocks is an exact i32 sum times the product of the two scales.
//!
//! `q4` ([`BlockQ4`], in `q4.rs`): asymmetric 4-bit weights with an f16 scale and an f16
//! minimum per block of 32; activations stay q8.
//!
//! Each file holds its dtype's weight quantizer (the reference the converter writes
//! files with); `q8.rs` also holds the activation quantizer that every kernel tier
//! reproduces bit for bit.

mod q4;
mod q8;

pub use q4::{dequantize_row_q4, quantize_row_q4, BlockQ4, QK4};
#[cfg(feature = "alloc")]
pub use q8::quantize_weights_q8;
pub use q8::{dequantize_row_q8, quantize_row_q8, quantize_weights_row_q8, BlockQ8, QK8};
