//! Why a request is refused, in the words both protocols give: the line
//! protocol's `ERR` message and the body of HTTP's error reply.

pub(super) const UPLOADS_DISABLED: &str = "uploads are disabled";
pub(super) const READ_ONLY_USER: &str = "this user may not upload";
pub(super) const HIDDEN_WRITE: &str = "hidden names may not be written";
pub(super) const AUTH_REQUIRED: &str = "authentication required";
pub(super) const BAD_CREDENTIALS: &str = "bad credentials";
pub(super) const TOO_MANY_FAILURES: &str = "too many failed logins";
pub(super) const NO_REQUEST_IN_TIME: &str = "no complete request in time";
pub(super) const UPLOAD_STALLED: &str = "upload stalled";

/// An upload declared larger than `--max-upload`.
pub(super) fn too_large(size: u64, limit: u64) -> String {
    format!("upload of {size} bytes exceeds the size limit of {limit} bytes")
}
