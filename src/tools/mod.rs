//! Client-side tools built into the `intentd` binary but not into the service library.

pub mod loadgen;
