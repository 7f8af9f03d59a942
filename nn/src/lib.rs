//! Layers shared by Janus-Pro's language model, SigLIP encoder and heads,
//! on top of the CPU kernels of `janus-kernels`:
//!
//! - [`QLinear`]: a linear layer whose weight is f32 (exact), bf16 or
//!   quantised ([`Quant`]), with the kernel chosen per call by row count
//!   and CPU;
//! - [`stored_blocks`] / [`load_weight`]: weights a checkpoint stores
//!   already quantised, under the naming rule of [`blocks_name`];
//! - [`activation_dtype`]: the dtype activations flow in.

#![warn(missing_docs)]

mod compute;
mod linear;
mod quant;
mod stored;

pub use compute::{bf16_compute, reduced_precision_cpu};
pub use linear::{activation_dtype, QLinear};
pub use quant::Quant;
pub use stored::{
    blocks_name, is_broadcast_view, load_weight, parse_blocks_name, stored_blocks, Loaded,
};
