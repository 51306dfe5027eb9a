//! Sending GET bodies: `sendfile(2)` where the file system allows it, a
//! buffered copy otherwise.

use std::fs::File;
use std::io::{self, Write};
use std::net::TcpStream;

use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendFlags};

use super::config::ServerConfig;
use super::pace::Pace;
use crate::util::chunk_len;

/// The largest chunk one `sendfile` call is asked for.
const SENDFILE_CHUNK: usize = 1 << 30;
/// Bodies up to this size go in one blocking `sendfile`, which waits at
/// most once, within the socket's send timeout; larger ones are paced.
const ONE_WAIT: u64 = 64 * 1024;
/// The buffer of the copying fallback.
const COPY_CHUNK: usize = 64 * 1024;

/// How sending a body ended.
pub(super) enum Sent {
    All,
    /// The file ended before the announced length.
    Short(u64),
    /// The client stopped reading for the stall timeout, or vanished.
    Stalled(u64),
}

/// A reply body written to the socket within its [`Pace`]: each write
/// waits for room only as long as the stall timeout and the minimum rate
/// allow, so a client that reads a LIST slowly is cut as a slow GET is.
/// Once the pace is broken every write fails, and
/// [`stalled`](PacedWriter::stalled) says why.
pub(super) struct PacedWriter<'a> {
    stream: &'a TcpStream,
    pace: Pace,
    stalled: bool,
}

impl<'a> PacedWriter<'a> {
    pub(super) fn new(stream: &'a TcpStream, config: &ServerConfig) -> PacedWriter<'a> {
        PacedWriter {
            stream,
            pace: Pace::new(config),
            stalled: false,
        }
    }

    /// Whether a write failed because the client read too slowly.
    pub(super) fn stalled(&self) -> bool {
        self.stalled
    }

    /// One non-blocking `send` by `send`, after waiting for room as long
    /// as the pace allows.
    fn send_paced(
        &mut self,
        send: impl Fn(&TcpStream, SendFlags) -> rustix::io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            if self.stalled {
                return Err(io::ErrorKind::TimedOut.into());
            }
            match send(self.stream, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => {
                    self.pace.progress(n);
                    return Ok(n);
                }
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    self.stalled = self.pace.wait_writable(self.stream)?.is_err();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Write for PacedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send_paced(|stream, flags| rustix::net::send(stream, buf, flags))
    }

    /// One `sendmsg` for all of `bufs`: the TLS records rustls holds
    /// (a reply's head and its body) leave in one call.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.send_paced(|stream, flags| {
            rustix::net::sendmsg(stream, bufs, &mut SendAncillaryBuffer::default(), flags)
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A timed-out blocking socket call reports `WouldBlock` on Unix.
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub(super) fn send_all(stream: &TcpStream, mut bytes: &[u8], flags: SendFlags) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(stream, bytes, flags | SendFlags::NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends `count` bytes of `file` from `offset`: `sendfile(2)` where the
/// file system allows it, a buffered copy otherwise. A body larger than
/// [`ONE_WAIT`] is sent with the socket non-blocking, waiting in `poll`
/// for the time its [`Pace`] leaves, so the stall timeout is wall time without
/// progress and the minimum rate holds.
pub(super) fn send_body(
    stream: &TcpStream,
    file: &File,
    offset: u64,
    count: u64,
    config: &ServerConfig,
) -> io::Result<Sent> {
    if count <= ONE_WAIT {
        return send_file(stream, file, offset, count, None);
    }
    let mut pace = Pace::new(config);
    rustix::io::ioctl_fionbio(stream, true)?;
    let sent = send_file(stream, file, offset, count, Some(&mut pace));
    rustix::io::ioctl_fionbio(stream, false)?;
    sent
}

/// The `sendfile(2)` loop: blocking (`pace` is `None`), or on a
/// non-blocking socket, waiting for room as long as `pace` allows.
fn send_file(
    stream: &TcpStream,
    file: &File,
    mut offset: u64,
    count: u64,
    mut pace: Option<&mut Pace>,
) -> io::Result<Sent> {
    let end = offset + count;
    let sent = |offset: u64| count - (end - offset);
    while offset < end {
        let chunk = chunk_len(end - offset, SENDFILE_CHUNK);
        match rustix::fs::sendfile(stream, file, Some(&mut offset), chunk) {
            Ok(0) => return Ok(Sent::Short(sent(offset))),
            Ok(n) => {
                if let Some(pace) = pace.as_deref_mut() {
                    pace.progress(n);
                }
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if pace.is_some() => {
                let pace = pace.as_deref().expect("matched on is_some");
                if pace.wait_writable(stream)?.is_err() {
                    return Ok(Sent::Stalled(sent(offset)));
                }
            }
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                if pace.is_some() {
                    rustix::io::ioctl_fionbio(stream, false)?;
                }
                return copy_body(&mut &*stream, file, offset, end, count);
            }
            // A stall (the send timeout, or the pace's deadline) or a
            // vanished client.
            Err(_) => return Ok(Sent::Stalled(sent(offset))),
        }
    }
    Ok(Sent::All)
}

/// The fallback for files `sendfile(2)` cannot read, and the way bodies
/// go through TLS: sends the bytes from `offset` to `end`, the last
/// `count` bytes of which are the body. A write that fails (the stall
/// timeout as the socket's send timeout, or a client gone) is a stall.
pub(super) fn copy_body(
    stream: &mut dyn Write,
    file: &File,
    mut offset: u64,
    end: u64,
    count: u64,
) -> io::Result<Sent> {
    use std::os::unix::fs::FileExt;
    let sent = |offset: u64| count - (end - offset);
    // No larger than the body: a 4 KiB GET over TLS would otherwise
    // allocate and zero 64 KiB.
    let mut buf = vec![0u8; chunk_len(end - offset, COPY_CHUNK)];
    while offset < end {
        let want = chunk_len(end - offset, buf.len());
        let n = match file.read_at(&mut buf[..want], offset) {
            Ok(0) => return Ok(Sent::Short(sent(offset))),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if stream
            .write_all(&buf[..n])
            .and_then(|()| stream.flush())
            .is_err()
        {
            return Ok(Sent::Stalled(sent(offset)));
        }
        offset += n as u64;
    }
    // A body of no bytes has flushed nothing yet: through TLS its head
    // is still held.
    if stream.flush().is_err() {
        return Ok(Sent::Stalled(sent(offset)));
    }
    Ok(Sent::All)
}
