//! The client library and the `fsc` binary against a real server.

mod end_to_end;
mod integrity;
