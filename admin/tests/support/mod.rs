//! Helpers shared by the integration tests that need real components.
#![allow(dead_code)]

pub mod pg;
