//! Users and rights (`--users FILE`): the users file, password checks
//! through the hash crates' own verifiers, the per-source throttle of
//! failed logins, and the rule that keeps passwords off plaintext
//! connections.
//!
//! A password check is slow on purpose (argon2id, bcrypt): at most one per
//! core runs at once, a throttled source gets no check at all, and nothing
//! here ever sleeps to slow a guesser down, so a failing client never holds
//! its running slot longer than the check itself.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

use super::fs::Root;
use crate::protocol::wire::RelPath;
use crate::util::lock;

/// How long a failed login counts against its source.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Past this many sources with failures on record, expired ones are
/// dropped before another is added.
const PRUNE_AT: usize = 10_000;

/// Hashes `password` as an argon2id PHC string with a random salt and the
/// argon2 crate's default parameters (19 MiB, 2 passes, 1 lane: OWASP's
/// recommended minimum), as `filesrv --hash-password` prints it.
///
/// # Errors
///
/// The hasher's error (the system's random source failed).
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default().hash_password(password)?.to_string())
}

/// Whether a password may be checked on this connection: on TLS, from a
/// loopback peer, or when the operator allows plaintext logins (TLS ended
/// at a trusted proxy).
pub(crate) fn plain_auth_allowed(tls: bool, peer: IpAddr, allow_plain: bool) -> bool {
    tls || allow_plain || peer.to_canonical().is_loopback()
}

/// One user of the users file.
pub(crate) struct User {
    name: String,
    hash: Hash,
    /// `rw`: may upload (with uploads on).
    write: bool,
    /// `root=<dir>`, opened beneath the served root; `None`: the served
    /// root itself.
    root: Option<Root>,
}

impl User {
    /// The user's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the user has the `rw` right.
    pub(crate) fn may_write(&self) -> bool {
        self.write
    }

    /// The user's own root, if not the served one.
    pub(crate) fn root(&self) -> Option<&Root> {
        self.root.as_ref()
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

/// A stored password hash, of a kind the crates verify.
enum Hash {
    Argon2id(String),
    Bcrypt(String),
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        if text.starts_with("$argon2id$") {
            argon2::password_hash::phc::PasswordHash::new(text)
                .map_err(|e| format!("bad argon2id hash: {e}"))?;
            Ok(Hash::Argon2id(text.to_owned()))
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) {
            text.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("bad bcrypt hash: {e}"))?;
            Ok(Hash::Bcrypt(text.to_owned()))
        } else {
            Err(
                "the hash is neither argon2id ($argon2id$) nor bcrypt ($2a$, $2b$, $2y$)"
                    .to_owned(),
            )
        }
    }

    /// Whether `password` matches: the crates' verifiers compare, never
    /// this code.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Argon2id(hash) => Argon2::default()
                .verify_password(password, hash.as_str())
                .is_ok(),
            Hash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        }
    }
}

/// Why the users file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    /// The file could not be read.
    #[error("cannot read the users file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed, repeats a name, or names a missing root.
    #[error("users file {}, line {line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// The users of one reading of the file.
#[derive(Default)]
struct Table {
    users: HashMap<String, Arc<User>>,
}

impl Table {
    fn load(path: &Path, served: &Root) -> Result<Table, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message: String| UsersError::Line {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let user = parse_line(line, served).map_err(error)?;
            if users.contains_key(&user.name) {
                return Err(error(format!("duplicate user {}", user.name)));
            }
            users.insert(user.name.clone(), Arc::new(user));
        }
        Ok(Table { users })
    }
}

/// Whether `name` is 1 to 64 bytes of `[A-Za-z0-9._-]`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `<name>:<hash>[:<rights>]`.
fn parse_line(line: &str, served: &Root) -> Result<User, String> {
    let mut fields = line.split(':');
    let (Some(name), Some(hash)) = (fields.next(), fields.next()) else {
        return Err("expected <name>:<hash>[:<rights>]".to_owned());
    };
    let rights = fields.next();
    if fields.next().is_some() {
        return Err("expected <name>:<hash>[:<rights>]".to_owned());
    }
    if !valid_name(name) {
        return Err("a name is 1 to 64 of A-Z a-z 0-9 . _ -".to_owned());
    }
    let hash = Hash::parse(hash)?;
    let mut user = User {
        name: name.to_owned(),
        hash,
        write: false,
        root: None,
    };
    for right in rights.into_iter().flat_map(|r| r.split(',')) {
        match right {
            "ro" => user.write = false,
            "rw" => user.write = true,
            _ if right.starts_with("root=") => {
                let dir = &right["root=".len()..];
                let rel = RelPath::decode(dir.as_bytes())
                    .map_err(|e| format!("root={dir}: {}", e.message()))?;
                let root = served
                    .open_beneath(&rel)
                    .map_err(|e| format!("root={dir}: {}", e.message()))?;
                user.root = Some(root);
            }
            _ => return Err(format!("unknown right {right:?} (ro, rw, root=<dir>)")),
        }
    }
    Ok(user)
}

/// How an `AUTH` went.
#[derive(Debug)]
pub(crate) enum Login {
    /// The password matched.
    Ok(Arc<User>),
    /// Wrong name or password (one answer for both).
    Denied,
    /// The source failed too often lately: refused without a check.
    Throttled,
}

/// The users file, reloaded on demand, and the throttle of failed logins.
pub(crate) struct Users {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    /// What an unknown name is checked against, so that it takes as long
    /// as a wrong password.
    dummy: Hash,
    throttle: Throttle,
    checks: Permits,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Users {
    /// Reads `path`; user roots are opened beneath `served`.
    pub(crate) fn load(
        path: &Path,
        served: &Root,
        max_failures: usize,
    ) -> Result<Users, UsersError> {
        let table = Table::load(path, served)?;
        let dummy = hash_password(b"filesrv: no such user").map_err(|e| UsersError::Line {
            path: path.to_owned(),
            line: 0,
            message: format!("cannot make the dummy hash: {e}"),
        })?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(Users {
            path: path.to_owned(),
            table: RwLock::new(Arc::new(table)),
            dummy: Hash::Argon2id(dummy),
            throttle: Throttle::new(max_failures),
            checks: Permits::new(cores),
        })
    }

    /// Reads the file again; on failure the old table stays and a
    /// warning is logged.
    pub(crate) fn reload(&self, served: &Root) {
        match Table::load(&self.path, served) {
            Ok(table) => {
                let n = table.users.len();
                *crate::util::write(&self.table) = Arc::new(table);
                log::info!("users file {} reloaded: {n} users", self.path.display());
            }
            Err(e) => log::warn!("{e}; keeping the users loaded before"),
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Checks `name` and `password` for a client at `source`; `checked` is
    /// called once for each password check actually run.
    pub(crate) fn authenticate(
        &self,
        source: IpAddr,
        name: &str,
        password: &[u8],
        checked: impl FnOnce(),
    ) -> Login {
        // The attempt counts as a failure until it succeeds, so that
        // concurrent guesses from one source are throttled too.
        let Some(attempt) = self.throttle.begin(source) else {
            return Login::Throttled;
        };
        let user = crate::util::read(&self.table).users.get(name).cloned();
        let matched = {
            let _permit = self.checks.acquire();
            checked();
            match &user {
                Some(user) => user.hash.verify(password),
                None => {
                    self.dummy.verify(password);
                    false
                }
            }
        };
        // An empty password never logs in, even against a hash of one
        // (`htpasswd -nbB bob ''`): that would be a user anyone is.
        match user {
            Some(user) if matched && !password.is_empty() => {
                self.throttle.succeeded(source, attempt);
                Login::Ok(user)
            }
            _ => Login::Denied,
        }
    }
}

/// The key a source is throttled under: an IPv4 address, or an IPv6
/// address's /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Failed logins per source within [`FAILURE_WINDOW`].
struct Throttle {
    /// 0: no limit.
    limit: usize,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Throttle {
    fn new(limit: usize) -> Throttle {
        Throttle {
            limit,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records an attempt as a failure (undone by
    /// [`succeeded`](Throttle::succeeded)), or `None` when the source
    /// already has `limit` failures in the window.
    fn begin(&self, source: IpAddr) -> Option<Instant> {
        if self.limit == 0 {
            return Some(Instant::now());
        }
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        if failures.len() >= PRUNE_AT {
            failures.retain(|_, times| times.back().is_some_and(|&t| now - t < FAILURE_WINDOW));
        }
        let times = failures.entry(source_key(source)).or_default();
        while times.front().is_some_and(|&t| now - t >= FAILURE_WINDOW) {
            times.pop_front();
        }
        if times.len() >= self.limit {
            return None;
        }
        times.push_back(now);
        Some(now)
    }

    /// The attempt begun at `at` succeeded: it is no failure.
    fn succeeded(&self, source: IpAddr, at: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut failures = lock(&self.failures);
        let key = source_key(source);
        if let Some(times) = failures.get_mut(&key) {
            if let Some(i) = times.iter().rposition(|&t| t == at) {
                times.remove(i);
            }
            if times.is_empty() {
                failures.remove(&key);
            }
        }
    }
}

/// A counting semaphore: at most `n` password checks at once.
struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Permits {
    fn new(n: usize) -> Permits {
        Permits {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> Permit<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = crate::util::wait(&self.freed, free);
        }
        *free -= 1;
        Permit(self)
    }
}

/// Gives its permit back when dropped.
struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_cross_in_clear_only_on_loopback_or_when_allowed() {
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        let far6: IpAddr = "2001:db8::7".parse().unwrap();
        let mapped_far: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        for local in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            let local: IpAddr = local.parse().unwrap();
            assert!(plain_auth_allowed(false, local, false), "{local}");
        }
        for peer in [far, far6, mapped_far] {
            assert!(!plain_auth_allowed(false, peer, false), "{peer}");
            assert!(plain_auth_allowed(true, peer, false), "{peer} over TLS");
            assert!(plain_auth_allowed(false, peer, true), "{peer} allowed");
        }
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let key = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn the_throttle_refuses_past_the_limit_and_forgets_successes() {
        let throttle = Throttle::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let ok = throttle.begin(a).unwrap();
        throttle.succeeded(a, ok);
        for _ in 0..3 {
            assert!(throttle.begin(a).is_some());
        }
        assert!(throttle.begin(a).is_none());
        assert!(throttle.begin(b).is_some());
        assert!(Throttle::new(0).begin(a).is_some());
    }

    #[test]
    fn names_are_short_and_plain() {
        assert!(valid_name("alice.b-c_9"));
        assert!(valid_name(&"a".repeat(64)));
        for bad in ["", "a b", "a:b", "é", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn hashes_verify_through_the_crates() {
        let argon = Hash::parse(&hash_password(b"s3cret pw").unwrap()).unwrap();
        assert!(argon.verify(b"s3cret pw"));
        assert!(!argon.verify(b"s3cret pX"));
        let bc = Hash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        assert!(bc.verify(b"pw"));
        assert!(!bc.verify(b"px"));
        assert!(Hash::parse("plain").is_err());
        assert!(Hash::parse("$argon2id$garbage").is_err());
    }
}
