//! Disks read from an NBD server: `nbd://HOST[:PORT]/EXPORT` and
//! `nbd+unix:///EXPORT?socket=PATH`, the URI forms qemu uses. The server is QEMU in a
//! libvirt pull-mode backup, `qemu-nbd` over a shut-off disk, or any NBD server.
//!
//! The client speaks the fixed newstyle handshake with structured replies, asks for the
//! `base:allocation` context (holes and zero ranges are never read) and, when a change
//! map is wanted, `qemu:dirty-bitmap:NAME`, whose set bits are the blocks written since
//! the bitmap started ([`DiskSource::changed_ranges`]). A server that allows several
//! connections (`NBD_FLAG_CAN_MULTI_CONN`) gets one per parallel reader.
//!
//! Written here rather than taken from a crate: the Rust NBD crates are servers, or
//! clients without structured replies and metadata contexts, which are the point here.
//! Every length the server sends is checked before it is used: a reply that does not fit
//! what was asked is a clear error, never a wrong disk or a huge allocation.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{DiskSource, SourceError};
use crate::io::nbd_wire::*;

/// The port an `nbd://` URI means without one.
const DEFAULT_PORT: u16 = 10809;
/// Largest read asked in one request (servers accept at least 32 MiB; qemu does).
const MAX_READ: u32 = 4 << 20;
/// Largest range asked in one block-status request.
const STATUS_SPAN: u64 = 1 << 30;
/// Option replies longer than this are refused (a server list or an error message).
const MAX_OPTION_REPLY: u32 = 1 << 20;
/// How long a connection and its handshake may take, and a reply may be awaited.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an extra connection for parallel reads may take to be greeted: a server
/// that advertises multi-conn but serves one client at a time (`qemu-nbd` without
/// `--shared`) accepts the connection and never greets it.
const EXTRA_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// Where an NBD URI points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix { socket: std::path::PathBuf },
}

/// A parsed NBD URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    pub endpoint: Endpoint,
    pub export: String,
}

/// True when `spec` is meant as an NBD URI (and not a file path).
pub fn is_nbd_uri(spec: &str) -> bool {
    spec.starts_with("nbd://") || spec.starts_with("nbd+unix://") || spec.starts_with("nbds")
}

/// Parses `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
pub fn parse_uri(uri: &str) -> Result<NbdUri, String> {
    let bad = |why: &str| format!("{uri}: {why}");
    if uri.starts_with("nbds") {
        return Err(bad(
            "NBD over TLS is not supported; use nbd:// or nbd+unix://",
        ));
    }
    let (rest, unix) = if let Some(r) = uri.strip_prefix("nbd+unix://") {
        (r, true)
    } else if let Some(r) = uri.strip_prefix("nbd://") {
        (r, false)
    } else {
        return Err(bad("not an nbd:// or nbd+unix:// URI"));
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let export = percent_decode(path).ok_or_else(|| bad("bad %-escape in the export name"))?;
    if export.len() > 4096 || export.contains('\0') {
        return Err(bad("export name too long or holding NUL"));
    }
    let endpoint = if unix {
        if !authority.is_empty() {
            return Err(bad(
                "nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)",
            ));
        }
        let socket = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("socket="))
            .ok_or_else(|| bad("nbd+unix:// needs ?socket=PATH"))?;
        let socket =
            percent_decode(socket).ok_or_else(|| bad("bad %-escape in the socket path"))?;
        Endpoint::Unix {
            socket: socket.into(),
        }
    } else {
        if query.is_some() {
            return Err(bad("nbd:// takes no query"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        Endpoint::Tcp {
            host: host.into(),
            port,
        }
    };
    Ok(NbdUri { endpoint, export })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One end of a connection, TCP or Unix.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(endpoint: &Endpoint, timeout: Duration) -> std::io::Result<Stream> {
        let s = match endpoint {
            Endpoint::Unix { socket } => Stream::Unix(UnixStream::connect(socket)?),
            Endpoint::Tcp { host, port } => {
                use std::net::ToSocketAddrs;
                let mut last = None;
                let mut found = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = found.ok_or_else(|| {
                    last.unwrap_or_else(|| std::io::Error::other("the host has no address"))
                })?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        s.set_timeout(timeout)?;
        Ok(s)
    }

    fn set_timeout(&self, t: Duration) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A connected, negotiated NBD export.
struct Conn {
    r: BufReader<Stream>,
    w: Stream,
    next_handle: u64,
}

/// A disk exported over NBD.
pub struct NbdSource {
    uri: String,
    parsed: NbdUri,
    conn: Conn,
    size: u64,
    flags: u16,
    max_read: u32,
    /// Context ids the server granted.
    allocation: Option<u32>,
    dirty: Option<u32>,
    bitmap: Option<String>,
    /// The last `base:allocation` answer: `(start, end, reads as data)` runs tiling
    /// `[start of the first, end of the last)`. A server computes each answer over up to
    /// a GiB of image metadata, so `next_data` asks once per span, not once per call.
    allocation_cache: Vec<(u64, u64, bool)>,
    /// A request failed: the replies may be out of step with the requests, so the
    /// connection is not used again.
    broken: bool,
}

/// Most changed ranges a dirty bitmap may give (256 MiB of them): a map finer than that
/// is no help, and a server sending more is not believed.
pub const MAX_CHANGED_RANGES: usize = 1 << 24;

impl NbdSource {
    /// Connects to `uri` and negotiates the export; `bitmap` also asks for
    /// `qemu:dirty-bitmap:NAME` (or a full context name when it holds a ':').
    pub fn open(uri: &str, bitmap: Option<&str>) -> Result<Self, SourceError> {
        let parsed = parse_uri(uri).map_err(|reason| SourceError::Nbd {
            uri: uri.into(),
            reason,
        })?;
        NbdSource::connect(uri, parsed, bitmap.map(str::to_string), CONNECT_TIMEOUT)
    }

    fn connect(
        uri: &str,
        parsed: NbdUri,
        bitmap: Option<String>,
        timeout: Duration,
    ) -> Result<Self, SourceError> {
        let fail = |reason: String| SourceError::Nbd {
            uri: uri.into(),
            reason,
        };
        let io = |what: &str, e: std::io::Error| fail(io_reason(what, &e));
        let stream = Stream::connect(&parsed.endpoint, timeout).map_err(|e| io("connecting", e))?;
        let w = stream.try_clone().map_err(|e| io("connecting", e))?;
        let mut conn = Conn {
            r: BufReader::with_capacity(1 << 20, stream),
            w,
            next_handle: 1,
        };
        let context = match &bitmap {
            Some(b) if b.contains(':') => Some(b.clone()),
            Some(b) => Some(format!("qemu:dirty-bitmap:{b}")),
            None => None,
        };
        let hs = handshake(&mut conn, &parsed.export, context.as_deref()).map_err(|e| match e {
            HsError::Io(what, e) => io(what, e),
            HsError::Protocol(reason) => {
                // Leave the way the protocol asks, so the server logs no broken client.
                let _ = send_option(&mut conn.w, OPT_ABORT, &[]);
                fail(reason)
            }
        })?;
        conn.r
            .get_ref()
            .set_timeout(REPLY_TIMEOUT)
            .map_err(|e| io("connecting", e))?;
        Ok(NbdSource {
            uri: uri.into(),
            parsed,
            conn,
            size: hs.size,
            flags: hs.flags,
            max_read: hs.max_read,
            allocation: hs.allocation,
            dirty: hs.dirty,
            bitmap,
            allocation_cache: Vec::new(),
            broken: false,
        })
    }

    fn err(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Nbd {
            uri: self.uri.clone(),
            reason: reason.into(),
        }
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> SourceError {
        self.err(io_reason(what, &e))
    }

    fn send(&mut self, cmd: u16, offset: u64, len: u32) -> Result<u64, SourceError> {
        if self.broken && cmd != CMD_DISC {
            return Err(self.err("the connection is not used after an earlier failed request"));
        }
        let handle = self.conn.next_handle;
        self.conn.next_handle += 1;
        let mut req = Vec::with_capacity(28);
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&cmd.to_be_bytes());
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        self.conn
            .w
            .write_all(&req)
            .map_err(|e| self.io_err("sending a request", e))?;
        Ok(handle)
    }

    /// Reads one reply chunk's header for `handle`: (flags, type, payload length), or a
    /// simple reply as (DONE, NONE, 0) after checking its error.
    fn reply_header(&mut self, handle: u64, what: &str) -> Result<(u16, u16, u32), SourceError> {
        let magic = self.get_u32(what)?;
        match magic {
            STRUCTURED_REPLY_MAGIC => {
                let flags = self.get_u16(what)?;
                let kind = self.get_u16(what)?;
                let h = self.get_u64(what)?;
                let len = self.get_u32(what)?;
                if h != handle {
                    return Err(self.err(format!(
                        "a reply for request {h} came for request {handle} ({what})"
                    )));
                }
                Ok((flags, kind, len))
            }
            SIMPLE_REPLY_MAGIC => {
                let error = self.get_u32(what)?;
                let h = self.get_u64(what)?;
                if h != handle {
                    return Err(self.err(format!(
                        "a reply for request {h} came for request {handle} ({what})"
                    )));
                }
                if error != 0 {
                    return Err(self.err(format!("{what} failed: {}", errno_text(error))));
                }
                Ok((REPLY_FLAG_DONE, u16::MAX, 0))
            }
            m => Err(self.err(format!("bad reply magic {m:#x} ({what}): not an NBD reply"))),
        }
    }

    /// Reads an error chunk's payload and returns it as an error.
    fn error_chunk(&mut self, kind: u16, len: u32, what: &str) -> SourceError {
        let body = match self.get_bytes(len as usize, what, 1 << 16) {
            Ok(b) => b,
            Err(e) => return e,
        };
        let code = body
            .get(..4)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4")));
        let mlen = body
            .get(4..6)
            .map_or(0, |b| u16::from_be_bytes(b.try_into().expect("2")) as usize);
        let msg = body
            .get(6..6 + mlen)
            .map(|m| {
                String::from_utf8_lossy(m)
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            })
            .unwrap_or_default();
        let at = if kind == REPLY_TYPE_ERROR_OFFSET {
            body.get(6 + mlen..14 + mlen)
                .map(|b| format!(" at byte {}", u64::from_be_bytes(b.try_into().expect("8"))))
                .unwrap_or_default()
        } else {
            String::new()
        };
        self.err(format!(
            "{what} failed{at}: {}{}",
            errno_text(code),
            if msg.is_empty() {
                String::new()
            } else {
                format!(" ({msg})")
            }
        ))
    }

    fn read_once(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let len = buf.len() as u32;
        let handle = self.send(CMD_READ, offset, len)?;
        buf.fill(0);
        let mut covered = 0u64;
        loop {
            let (flags, kind, plen) = self.reply_header(handle, "read")?;
            match kind {
                u16::MAX => {
                    // A simple reply: the data follows whole.
                    self.conn
                        .r
                        .read_exact(buf)
                        .map_err(|e| self.io_err("read", e))?;
                    return Ok(());
                }
                REPLY_TYPE_OFFSET_DATA => {
                    let at = self.get_u64("read")?;
                    let n = plen
                        .checked_sub(8)
                        .ok_or_else(|| self.err("short data chunk"))?
                        as u64;
                    let start = at
                        .checked_sub(offset)
                        .filter(|s| s + n <= len as u64)
                        .ok_or_else(|| {
                            self.err(format!(
                                "the server sent bytes {at}..+{n} for a read of {offset}..+{len}"
                            ))
                        })?;
                    let dst = &mut buf[start as usize..(start + n) as usize];
                    self.conn
                        .r
                        .read_exact(dst)
                        .map_err(|e| self.io_err("read", e))?;
                    covered += n;
                }
                REPLY_TYPE_OFFSET_HOLE => {
                    if plen != 12 {
                        return Err(self.err("bad hole chunk"));
                    }
                    let at = self.get_u64("read")?;
                    let n = self.get_u32("read")? as u64;
                    at.checked_sub(offset)
                        .filter(|s| s + n <= len as u64)
                        .ok_or_else(|| {
                            self.err(format!(
                                "the server sent a hole {at}..+{n} for a read of {offset}..+{len}"
                            ))
                        })?;
                    covered += n;
                }
                REPLY_TYPE_NONE if plen == 0 => {}
                REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                    let e = self.error_chunk(kind, plen, "read");
                    // Drain to the last chunk so the connection stays usable? The
                    // server ends with DONE; the error is what matters.
                    return Err(e);
                }
                other => {
                    return Err(self.err(format!("unexpected reply chunk type {other} to a read")));
                }
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if covered != len as u64 {
            return Err(self.err(format!(
                "the server's reply covered {covered} of the {len} bytes read at {offset}"
            )));
        }
        Ok(())
    }

    /// Block status of context `ctx` from `offset`: `(length, flags)` descriptors
    /// covering at least one byte, clipped to the disk.
    fn block_status(&mut self, ctx: u32, offset: u64) -> Result<Vec<(u64, u32)>, SourceError> {
        let r = self.block_status_once(ctx, offset);
        self.broken |= r.is_err();
        r
    }

    fn block_status_once(&mut self, ctx: u32, offset: u64) -> Result<Vec<(u64, u32)>, SourceError> {
        let len = (self.size - offset).min(STATUS_SPAN) as u32;
        let handle = self.send(CMD_BLOCK_STATUS, offset, len)?;
        let mut mine = Vec::new();
        loop {
            let (flags, kind, plen) = self.reply_header(handle, "block status")?;
            match kind {
                REPLY_TYPE_BLOCK_STATUS => {
                    if plen < 12 || (plen - 4) % 8 != 0 || plen > 8 << 20 {
                        return Err(self.err(format!("bad block status chunk of {plen} bytes")));
                    }
                    let body = self.get_bytes(plen as usize, "block status", 8 << 20)?;
                    let id = u32::from_be_bytes(body[..4].try_into().expect("4"));
                    if id == ctx {
                        for d in body[4..].chunks_exact(8) {
                            let n = u32::from_be_bytes(d[..4].try_into().expect("4")) as u64;
                            let f = u32::from_be_bytes(d[4..].try_into().expect("4"));
                            mine.push((n, f));
                        }
                    }
                }
                REPLY_TYPE_NONE if plen == 0 => {}
                REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                    return Err(self.error_chunk(kind, plen, "block status"));
                }
                u16::MAX => {
                    return Err(self.err("the server answered block status without its extents"))
                }
                other => {
                    return Err(self.err(format!(
                        "unexpected reply chunk type {other} to block status"
                    )))
                }
            }
            if flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        // Clip to the disk; a descriptor of no length would never advance.
        let mut out = Vec::with_capacity(mine.len());
        let mut at = offset;
        for (n, f) in mine {
            if n == 0 || at >= self.size {
                break;
            }
            let n = n.min(self.size - at);
            out.push((n, f));
            at += n;
        }
        if out.is_empty() {
            return Err(self.err(format!("block status at byte {offset} described nothing")));
        }
        Ok(out)
    }

    fn get_bytes(&mut self, n: usize, what: &str, max: usize) -> Result<Vec<u8>, SourceError> {
        if n > max {
            return Err(self.err(format!(
                "a reply of {n} bytes ({what}) is more than any server sends"
            )));
        }
        let mut b = vec![0; n];
        self.conn
            .r
            .read_exact(&mut b)
            .map_err(|e| self.io_err(what, e))?;
        Ok(b)
    }
    fn get_u16(&mut self, what: &str) -> Result<u16, SourceError> {
        let mut b = [0; 2];
        self.conn
            .r
            .read_exact(&mut b)
            .map_err(|e| self.io_err(what, e))?;
        Ok(u16::from_be_bytes(b))
    }
    fn get_u32(&mut self, what: &str) -> Result<u32, SourceError> {
        let mut b = [0; 4];
        self.conn
            .r
            .read_exact(&mut b)
            .map_err(|e| self.io_err(what, e))?;
        Ok(u32::from_be_bytes(b))
    }
    fn get_u64(&mut self, what: &str) -> Result<u64, SourceError> {
        let mut b = [0; 8];
        self.conn
            .r
            .read_exact(&mut b)
            .map_err(|e| self.io_err(what, e))?;
        Ok(u64::from_be_bytes(b))
    }
}

impl DiskSource for NbdSource {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn size_bytes(&self) -> Option<u64> {
        Some(self.size)
    }

    fn next_data(&mut self, offset: u64) -> Result<Option<(u64, u64)>, SourceError> {
        let Some(ctx) = self.allocation else {
            return Ok((offset < self.size).then_some((offset, self.size)));
        };
        let mut at = offset;
        while at < self.size {
            let cached = self
                .allocation_cache
                .first()
                .zip(self.allocation_cache.last())
                .is_some_and(|(first, last)| first.0 <= at && at < last.1);
            if !cached {
                let mut runs = Vec::new();
                let mut pos = at;
                for (n, f) in self.block_status(ctx, at)? {
                    // Ranges that read as zeros are never read (allocated or not).
                    runs.push((pos, pos + n, f & STATE_ZERO == 0));
                    pos += n;
                }
                self.allocation_cache = runs;
            }
            let mut start = None;
            let from = at;
            for &(s, e, data) in self.allocation_cache.iter().filter(|r| r.1 > from) {
                match (data, start) {
                    (true, None) => start = Some(s.max(at)),
                    (false, Some(st)) => return Ok(Some((st, s))),
                    _ => {}
                }
                at = e;
            }
            if let Some(s) = start {
                return Ok(Some((s, at)));
            }
        }
        Ok(None)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        if offset >= self.size {
            return Ok(0);
        }
        let want = buf.len().min((self.size - offset) as usize);
        let mut done = 0;
        while done < want {
            let n = (want - done).min(self.max_read as usize);
            if let Err(e) = self.read_once(offset + done as u64, &mut buf[done..done + n]) {
                self.broken = true;
                return Err(e);
            }
            done += n;
        }
        Ok(want)
    }

    fn clone_reader(&self) -> Option<Box<dyn DiskSource>> {
        if self.flags & TFLAG_CAN_MULTI_CONN == 0 {
            return None;
        }
        // The clones read data only: no bitmap context to negotiate.
        match NbdSource::connect(&self.uri, self.parsed.clone(), None, EXTRA_CONNECT_TIMEOUT) {
            Ok(c) => Some(Box::new(c)),
            Err(e) => {
                log::info!("{e}; reading over one connection");
                None
            }
        }
    }

    fn changed_ranges(&mut self) -> Option<Result<Vec<(u64, u64)>, SourceError>> {
        let bitmap = self.bitmap.clone()?;
        let Some(ctx) = self.dirty else {
            return Some(Err(self.err(format!(
                "the export has no dirty bitmap {bitmap:?} (the server did not grant its context)"
            ))));
        };
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut at = 0;
        while at < self.size {
            let status = match self.block_status(ctx, at) {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            for (n, f) in status {
                if f & STATE_DIRTY != 0 {
                    match ranges.last_mut() {
                        Some(last) if last.1 == at => last.1 = at + n,
                        _ => ranges.push((at, at + n)),
                    }
                    if ranges.len() > MAX_CHANGED_RANGES {
                        return Some(Err(self.err(format!(
                            "dirty bitmap {bitmap:?} holds more than {MAX_CHANGED_RANGES} separate ranges"
                        ))));
                    }
                }
                at += n;
            }
        }
        Some(Ok(ranges))
    }
}

impl Drop for NbdSource {
    fn drop(&mut self) {
        // A polite goodbye; the server cleans up either way.
        let _ = self.send(CMD_DISC, 0, 0);
    }
}

/// What an I/O error on the connection means, in words (`what` names the step).
fn io_reason(what: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => format!("the server closed the connection ({what})"),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer from the server ({what})")
        }
        _ => format!("{what}: {e}"),
    }
}

fn errno_text(code: u32) -> String {
    match code {
        1 => "permission denied (EPERM)".into(),
        5 => "I/O error (EIO)".into(),
        12 => "out of memory (ENOMEM)".into(),
        22 => "invalid argument (EINVAL)".into(),
        28 => "no space (ENOSPC)".into(),
        75 => "value too large (EOVERFLOW)".into(),
        95 => "not supported (ENOTSUP)".into(),
        108 => "server shutting down (ESHUTDOWN)".into(),
        c => format!("error {c}"),
    }
}

/// What the handshake settled.
struct Negotiated {
    size: u64,
    flags: u16,
    max_read: u32,
    allocation: Option<u32>,
    dirty: Option<u32>,
}

enum HsError {
    Io(&'static str, std::io::Error),
    Protocol(String),
}

fn handshake(conn: &mut Conn, export: &str, dirty: Option<&str>) -> Result<Negotiated, HsError> {
    let io = |e| HsError::Io("handshake", e);
    let r = &mut conn.r;
    let mut b8 = [0u8; 8];
    r.read_exact(&mut b8).map_err(io)?;
    if u64::from_be_bytes(b8) != NBDMAGIC {
        return Err(HsError::Protocol(
            "not an NBD server (no NBDMAGIC greeting)".into(),
        ));
    }
    r.read_exact(&mut b8).map_err(io)?;
    if u64::from_be_bytes(b8) != IHAVEOPT {
        return Err(HsError::Protocol(
            "an old-style NBD server; only the newstyle handshake is supported".into(),
        ));
    }
    let mut b2 = [0u8; 2];
    r.read_exact(&mut b2).map_err(io)?;
    let hflags = u16::from_be_bytes(b2);
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(HsError::Protocol(
            "the server does not speak fixed newstyle NBD".into(),
        ));
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = CLIENT_FIXED_NEWSTYLE | if no_zeroes { CLIENT_NO_ZEROES } else { 0 };
    conn.w.write_all(&cflags.to_be_bytes()).map_err(io)?;

    // Structured replies, which block status needs.
    let structured = {
        send_option(&mut conn.w, OPT_STRUCTURED_REPLY, &[]).map_err(io)?;
        let (kind, _) = option_reply(&mut conn.r, OPT_STRUCTURED_REPLY)?;
        kind == REP_ACK
    };
    let mut allocation = None;
    let mut dirty_id = None;
    if structured {
        let mut queries = vec!["base:allocation"];
        queries.extend(dirty);
        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in &queries {
            data.extend_from_slice(&(q.len() as u32).to_be_bytes());
            data.extend_from_slice(q.as_bytes());
        }
        send_option(&mut conn.w, OPT_SET_META_CONTEXT, &data).map_err(io)?;
        loop {
            let (kind, body) = option_reply(&mut conn.r, OPT_SET_META_CONTEXT)?;
            match kind {
                REP_META_CONTEXT if body.len() >= 4 => {
                    let id = u32::from_be_bytes(body[..4].try_into().expect("4"));
                    let name = &body[4..];
                    if name == b"base:allocation" {
                        allocation = Some(id);
                    } else if dirty.is_some_and(|d| d.as_bytes() == name) {
                        dirty_id = Some(id);
                    }
                }
                REP_ACK => break,
                // Contexts refused as a whole: read without them.
                k if k & OPT_REPLY_TYPE_ERR_BIT != 0 => break,
                _ => {}
            }
        }
    }
    // GO: the export's size and flags, and its block sizes.
    let mut data = Vec::new();
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(&mut conn.w, OPT_GO, &data).map_err(io)?;
    let mut size = None;
    let mut flags = 0;
    let mut max_read = MAX_READ;
    loop {
        let (kind, body) = option_reply(&mut conn.r, OPT_GO)?;
        match kind {
            REP_INFO if body.len() >= 2 => {
                let info = u16::from_be_bytes(body[..2].try_into().expect("2"));
                if info == INFO_EXPORT && body.len() == 12 {
                    size = Some(u64::from_be_bytes(body[2..10].try_into().expect("8")));
                    flags = u16::from_be_bytes(body[10..12].try_into().expect("2"));
                } else if info == INFO_BLOCK_SIZE && body.len() == 14 {
                    let max = u32::from_be_bytes(body[10..14].try_into().expect("4"));
                    if max >= 4096 {
                        max_read = max_read.min(max);
                    }
                }
            }
            REP_ACK => break,
            k if k & OPT_REPLY_TYPE_ERR_BIT != 0 => {
                let msg = String::from_utf8_lossy(&body)
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>();
                let what = match k {
                    REP_ERR_UNKNOWN => "no such export".to_string(),
                    REP_ERR_UNSUP => "the server does not support NBD_OPT_GO".to_string(),
                    k => format!("refused (reply {k:#x})"),
                };
                return Err(HsError::Protocol(format!(
                    "export {export:?}: {what}{}",
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!(": {msg}")
                    }
                )));
            }
            _ => {}
        }
    }
    let size =
        size.ok_or_else(|| HsError::Protocol("the server did not say the export's size".into()))?;
    if size > repo_format::snapshot::MAX_DISK_BYTES {
        return Err(HsError::Protocol(format!(
            "an export of {size} bytes is beyond any disk"
        )));
    }
    Ok(Negotiated {
        size,
        flags,
        max_read,
        allocation,
        dirty: dirty_id,
    })
}

fn send_option(w: &mut Stream, opt: u32, data: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    w.write_all(&m)
}

fn option_reply(r: &mut BufReader<Stream>, opt: u32) -> Result<(u32, Vec<u8>), HsError> {
    let io = |e| HsError::Io("handshake", e);
    let mut h = [0u8; 20];
    r.read_exact(&mut h).map_err(io)?;
    if u64::from_be_bytes(h[..8].try_into().expect("8")) != OPT_REPLY_MAGIC {
        return Err(HsError::Protocol("bad option reply magic".into()));
    }
    let got = u32::from_be_bytes(h[8..12].try_into().expect("4"));
    if got != opt {
        return Err(HsError::Protocol(format!(
            "reply to option {got} where {opt} was asked"
        )));
    }
    let kind = u32::from_be_bytes(h[12..16].try_into().expect("4"));
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4"));
    if len > MAX_OPTION_REPLY {
        return Err(HsError::Protocol(format!("an option reply of {len} bytes")));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body).map_err(io)?;
    Ok((kind, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_qemu_writes_them() {
        assert_eq!(
            parse_uri("nbd://host:10900/vda").unwrap(),
            NbdUri {
                endpoint: Endpoint::Tcp {
                    host: "host".into(),
                    port: 10900
                },
                export: "vda".into()
            }
        );
        assert_eq!(
            parse_uri("nbd://[::1]/a%20b").unwrap(),
            NbdUri {
                endpoint: Endpoint::Tcp {
                    host: "::1".into(),
                    port: 10809
                },
                export: "a b".into()
            }
        );
        assert_eq!(
            parse_uri("nbd+unix:///vda?socket=/run/x.sock").unwrap(),
            NbdUri {
                endpoint: Endpoint::Unix {
                    socket: "/run/x.sock".into()
                },
                export: "vda".into()
            }
        );
        for bad in [
            "nbds://h/e",
            "nbd+unix:///e",
            "nbd+unix://h/e?socket=/s",
            "nbd://:5/e",
            "nbd://h:99999/e",
            "nbd://h/%zz",
            "nbd://h/e?x=1",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }
}
