//! Nothing here: the benchmarks are in `benches/pick.rs`.
