//! Support shared by filesrv's unit tests, integration tests, benches and
//! examples, so that each helper is defined once: a temporary directory,
//! a hostile tree of links around a served root, random percent-encodings,
//! the external programs tests drive, and the load generator.
//!
//! A dev-dependency only: nothing here ships with the crate.

pub mod encoding;
pub mod hostile;
pub mod loadgen;
pub mod tempdir;
pub mod tools;

pub use tempdir::TempDir;
