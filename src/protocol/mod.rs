//! The file-transfer protocol: the [`Server`] that serves a directory, the
//! [`Client`] that talks to it, and the wire format they share.
//!
//! The wire protocol is specified in the project's `docs/PROTOCOL.md`. In
//! short: one request line (`GET`, `PUT`, `LIST`, `STAT`, `SUM`, `QUIT`), one
//! reply line (`OK ...` or `ERR <code> <message>`), and bodies whose
//! length is announced first.
//!
//! Three layers, each in its own folder:
//!
//! - the [`wire`] format both ends speak: [`parse_request`](wire::parse_request)
//!   turns a line into a [`Request`](wire::Request), [`RelPath`](wire::RelPath)
//!   is a decoded, checked path, [`encode_name`](wire::encode_name) writes
//!   names for replies, [`ErrorCode`](wire::ErrorCode) is an `ERR` reply's
//!   code, and [`Stat`](wire::Stat), [`ListEntry`](wire::ListEntry) and
//!   [`FileSum`](wire::FileSum) are the data replies carry, each written
//!   with `Display` and read with `FromStr`;
//! - the [`Server`], which listens, admits connections through a
//!   [`Manager`](crate::Manager) and serves each with a handler confined
//!   beneath its root;
//! - the [`Client`], the other end, which knows only the wire format.
//!
//! ```
//! use filesrv::protocol::{Client, Server, ServerConfig};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = std::env::temp_dir().join(format!("filesrv-mod-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! std::fs::write(dir.join("a.txt"), "abc")?;
//! let server = Server::bind("127.0.0.1:0".parse()?, ServerConfig::new(&dir))?;
//!
//! let mut client = Client::connect_timeout(server.local_addr(), Duration::from_secs(5))?;
//! let mut body = Vec::new();
//! assert_eq!(client.get_to("a.txt", 1, &mut body)?, 2);
//! assert_eq!(body, b"bc");
//! client.quit()?;
//!
//! server.shutdown();
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

mod checksum;
mod client;
mod client_tls;
mod pin;
mod server;
mod terminal;
pub mod wire;

pub use client::{Client, ClientError, Progress, Stage, TransferOptions};
pub use client_tls::{ClientTls, ClientTlsError};
pub use server::{
    AccessLog, LingeringCloser, Server, ServerConfig, ServerError, TlsError, UsersError,
    hash_password, raise_descriptor_limit,
};
pub use terminal::ask_password;
