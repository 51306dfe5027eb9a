//! The wire format both ends speak: request lines, paths and their
//! encoding, reply codes and the data replies carry. It knows neither the
//! server nor the client; both import it.

mod code;
mod number;
mod path;
mod reply;
mod request;

pub use code::{ErrorCode, UnknownErrorCode};
pub(crate) use number::number;
pub use path::{PathError, RelPath, encode_name, percent_decode};
pub(crate) use path::{RESERVED_PREFIX, printable_line};
pub(crate) use reply::list_line;
pub use reply::{EntryKind, FileSum, ListEntry, MalformedReply, Stat};
pub use request::{MAX_LINE, Password, Request, RequestError, parse_request};
