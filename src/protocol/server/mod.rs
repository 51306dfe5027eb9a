//! The file server: the listener and its accepting thread, the settings,
//! one `Session` handler per connection, body transfer, the
//! lingering close, and the file-system layer beneath the root.

mod accepting;
mod access_log;
mod agent;
mod closer;
mod config;
mod fs;
mod http;
mod limits;
mod listener;
mod metrics;
mod pace;
mod proxy;
mod readbuf;
mod reasons;
mod session;
mod sidecar;
mod sockopt;
mod stream;
mod tls;
mod transfer;
mod users;
mod watch;

pub use access_log::AccessLog;
pub use closer::LingeringCloser;
pub use config::{ServerConfig, ServerError};
pub use limits::raise_descriptor_limit;
pub use listener::Server;
pub use tls::TlsError;
pub use users::{UsersError, hash_password};
