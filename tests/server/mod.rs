//! The file server over real TCP: the wire protocol, its limits and
//! timeouts, hostile clients and processes, and the `filesrv` binary.

mod cli;
mod disk;
mod hidden;
mod hostile_input;
mod hostile_net;
mod hostile_process;
pub(crate) mod http;
pub(crate) mod metrics;
mod new_connections;
mod operations;
mod pace;
mod parking;
mod protocol;
mod server_resize;
mod signals;
mod slots;
mod test_deps;
pub(crate) mod tls;
mod users;
