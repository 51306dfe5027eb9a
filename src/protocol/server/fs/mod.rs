//! The file-system layer beneath the served root: path resolution on file
//! descriptors, the read operations, uploads through temporary files, and
//! the error type that maps failures to reply codes.

#[cfg(test)]
mod confinement_tests;
mod error;
mod listing;
mod resolve;
mod root;
#[cfg(test)]
mod testutil;
mod upload;

pub(crate) use error::FsError;
pub(crate) use listing::Listing;
pub(crate) use root::Root;
pub(crate) use upload::TempFile;
