//! Pure calculation: a node's view in, the desired host state out. No I/O here.

pub mod bird;
pub mod nat;
