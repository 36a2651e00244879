//! Renderers: desired state (or a diff) → the exact text the kernel tools take. Pure functions,
//! no I/O, deterministic output (golden-tested).

pub mod conntrackd;
pub mod ipvsadm;
pub mod nft;
