//! dsbox-bench: the benchmarks behind `dsbox bench`; every figure is measured beside a
//! baseline in the same run and reported as JSON with medians and p99.

pub mod eval;
pub mod kernel;
pub mod rootfs;
pub mod serve;
pub mod start;
pub mod synth;
