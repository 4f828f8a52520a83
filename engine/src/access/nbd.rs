//! A read-only NBD server for snapshot disks (the protocol as in NBD's `doc/proto.md`):
//! fixed newstyle handshake, NBD_OPT_GO / INFO / LIST / EXPORT_NAME, structured replies,
//! and NBD_CMD_BLOCK_STATUS for the `base:allocation` context so clients see holes.
//!
//! One thread per client, each with its own [`DiskReader`]; a client that misbehaves or
//! disappears ends only its own thread. Writes are refused with EPERM; malformed requests
//! get EINVAL (or, when the stream can no longer be trusted, the connection is closed).

use std::io::{Read, Write};
use std::sync::Arc;

use repo_format::lock::SharedLock;
use repo_format::{Extent, ManifestRoot, Repository};

use crate::read::DiskReader;

use crate::io::nbd_wire::*;

/// The only metadata context served, and its id.
const BASE_ALLOCATION: &str = "base:allocation";
const BASE_ALLOCATION_ID: u32 = 1;
/// Largest option payload and request length accepted.
const MAX_OPTION_BYTES: u32 = 64 << 10;
const MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Block-status descriptors per reply.
const MAX_STATUS_DESCRIPTORS: usize = 4096;

/// One disk offered to clients.
#[derive(Clone, Debug)]
pub struct Export {
    /// `VM@ID:LABEL`.
    pub name: String,
    /// Other names a client may ask for (`VM@latest:LABEL`, the full snapshot id...).
    pub aliases: Vec<String>,
    pub manifest: ManifestRoot,
}

/// The exports of one server, shared by every client thread.
pub struct Exports {
    pub repo: Arc<Repository>,
    /// Held while serving: a prune must not delete packs clients are reading.
    _lock: SharedLock,
    pub list: Vec<Export>,
    /// One chunk cache for every client, so memory does not grow with their number.
    pub cache: crate::read::SharedChunkCache,
    /// Bytes of read replies being built at once, over all clients.
    budget: ReadBudget,
}

/// Read-reply bytes all clients together may hold at once: a client's 32 MiB read waits
/// for others to finish instead of adding to them (issue 11: 12 clients took 1.2 GB).
pub const READ_BUDGET_BYTES: u64 = 256 << 20;

/// A counting semaphore of bytes.
struct ReadBudget {
    left: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
}

impl ReadBudget {
    fn take(&self, n: u64) -> BudgetGuard<'_> {
        let n = n.min(READ_BUDGET_BYTES);
        let mut left = self.left.lock().expect("no panics while held");
        while *left < n {
            left = self.freed.wait(left).expect("no panics while held");
        }
        *left -= n;
        BudgetGuard { budget: self, n }
    }
}

struct BudgetGuard<'a> {
    budget: &'a ReadBudget,
    n: u64,
}

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        *self.budget.left.lock().expect("no panics while held") += self.n;
        self.budget.freed.notify_all();
    }
}

/// Limits that keep one client, or many, from taking the server down (issue 11).
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Clients served at once; more are accepted and closed at once, with a log line.
    pub max_clients: usize,
    /// A client that sends nothing (between requests, or in the middle of one) for this
    /// long is disconnected.
    pub idle_timeout: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_clients: 64,
            idle_timeout: std::time::Duration::from_secs(600),
        }
    }
}

impl Exports {
    /// The exports `list` of `repo`, with one chunk cache and one read budget for all.
    /// The exports `list` of `repo`, holding `lock` for as long as they are served.
    pub fn new(repo: Arc<Repository>, lock: SharedLock, list: Vec<Export>) -> Exports {
        Exports {
            repo,
            _lock: lock,
            list,
            cache: Default::default(),
            budget: ReadBudget {
                left: std::sync::Mutex::new(READ_BUDGET_BYTES),
                freed: std::sync::Condvar::new(),
            },
        }
    }

    fn find(&self, name: &str) -> Option<&Export> {
        if name.is_empty() && self.list.len() == 1 {
            return self.list.first(); // the default export
        }
        self.list
            .iter()
            .find(|e| e.name == name || e.aliases.iter().any(|a| a == name))
    }
}

/// Serves one client until it disconnects; returns its error, if any, for logging.
pub fn serve_client<S: Read + Write>(exports: Arc<Exports>, mut stream: S) -> std::io::Result<()> {
    let Some((export, structured, meta)) = negotiate(&exports, &mut stream)? else {
        return Ok(());
    };
    let reader =
        DiskReader::with_cache(exports.repo.clone(), export.manifest, exports.cache.clone())
            .map_err(std::io::Error::other)?;
    transmission(reader, &exports.budget, structured, meta, &mut stream)
}

fn read_u16(s: &mut impl Read) -> std::io::Result<u16> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32(s: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(s: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn option_reply(s: &mut impl Write, opt: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend(OPT_REPLY_MAGIC.to_be_bytes());
    b.extend(opt.to_be_bytes());
    b.extend(kind.to_be_bytes());
    b.extend((data.len() as u32).to_be_bytes());
    b.extend(data);
    s.write_all(&b)
}

fn transmission_flags(structured: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN;
    if structured {
        f |= TFLAG_SEND_DF;
    }
    f
}

/// A length-prefixed string inside an option payload.
fn take_str(data: &[u8], at: &mut usize) -> Option<String> {
    let len = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    *at += 4;
    let s = std::str::from_utf8(data.get(*at..(*at).checked_add(len)?)?)
        .ok()?
        .to_string();
    *at += len;
    Some(s)
}

/// What the handshake settled: the export, structured replies, and base:allocation.
type Negotiated = (Export, bool, bool);

/// The handshake and option haggling. `None` when the client aborted or only listed.
fn negotiate<S: Read + Write>(exports: &Exports, s: &mut S) -> std::io::Result<Option<Negotiated>> {
    let mut hello = Vec::new();
    hello.extend(NBDMAGIC.to_be_bytes());
    hello.extend(IHAVEOPT.to_be_bytes());
    hello.extend((FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let client_flags = read_u32(s)?;
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let mut structured = false;
    let mut meta_context = false;
    loop {
        if read_u64(s)? != IHAVEOPT {
            return Err(invalid("option without IHAVEOPT magic"));
        }
        let opt = read_u32(s)?;
        let len = read_u32(s)?;
        if len > MAX_OPTION_BYTES {
            return Err(invalid("option too long"));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                // No way to report an error here but closing the connection.
                let Some(e) = exports.find(&name) else {
                    return Ok(None);
                };
                let mut b = Vec::new();
                b.extend(e.manifest.len_bytes.to_be_bytes());
                b.extend(transmission_flags(false).to_be_bytes());
                if !no_zeroes {
                    b.extend([0u8; 124]);
                }
                s.write_all(&b)?;
                return Ok(Some((e.clone(), false, false)));
            }
            OPT_ABORT => {
                let _ = option_reply(s, opt, REP_ACK, &[]);
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    option_reply(s, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                    continue;
                }
                for e in &exports.list {
                    let mut b = Vec::new();
                    b.extend((e.name.len() as u32).to_be_bytes());
                    b.extend(e.name.as_bytes());
                    option_reply(s, opt, REP_SERVER, &b)?;
                }
                option_reply(s, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let mut at = 0;
                let Some(name) = take_str(&data, &mut at) else {
                    option_reply(s, opt, REP_ERR_INVALID, b"malformed NBD_OPT_GO")?;
                    continue;
                };
                let Some(e) = exports.find(&name) else {
                    let msg = format!("no export named {name:?}");
                    option_reply(s, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                };
                let mut info = Vec::new();
                info.extend(INFO_EXPORT.to_be_bytes());
                info.extend(e.manifest.len_bytes.to_be_bytes());
                info.extend(transmission_flags(structured).to_be_bytes());
                option_reply(s, opt, REP_INFO, &info)?;
                let mut bs = Vec::new();
                bs.extend(INFO_BLOCK_SIZE.to_be_bytes());
                bs.extend(1u32.to_be_bytes());
                bs.extend(4096u32.to_be_bytes());
                bs.extend(MAX_REQUEST_BYTES.to_be_bytes());
                option_reply(s, opt, REP_INFO, &bs)?;
                option_reply(s, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return Ok(Some((e.clone(), structured, meta_context)));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    option_reply(s, opt, REP_ERR_INVALID, b"takes no data")?;
                    continue;
                }
                structured = true;
                option_reply(s, opt, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if !structured {
                    option_reply(
                        s,
                        opt,
                        REP_ERR_INVALID,
                        b"negotiate structured replies first",
                    )?;
                    continue;
                }
                let mut at = 0;
                let name = take_str(&data, &mut at);
                let count = data
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
                at += 4;
                let (Some(name), Some(count)) = (name, count) else {
                    option_reply(s, opt, REP_ERR_INVALID, b"malformed meta context request")?;
                    continue;
                };
                if exports.find(&name).is_none() {
                    option_reply(s, opt, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let mut queries = Vec::new();
                for _ in 0..count.min(1024) {
                    match take_str(&data, &mut at) {
                        Some(q) => queries.push(q),
                        None => break,
                    }
                }
                let wanted = if opt == OPT_LIST_META_CONTEXT && queries.is_empty() {
                    true
                } else {
                    queries.iter().any(|q| q == BASE_ALLOCATION || q == "base:")
                };
                if wanted {
                    let mut b = Vec::new();
                    b.extend(BASE_ALLOCATION_ID.to_be_bytes());
                    b.extend(BASE_ALLOCATION.as_bytes());
                    option_reply(s, opt, REP_META_CONTEXT, &b)?;
                    if opt == OPT_SET_META_CONTEXT {
                        meta_context = true;
                    }
                }
                option_reply(s, opt, REP_ACK, &[])?;
            }
            _ => option_reply(s, opt, REP_ERR_UNSUP, b"option not supported")?,
        }
    }
}

fn simple_reply(s: &mut impl Write, cookie: u64, error: u32, data: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend(SIMPLE_REPLY_MAGIC.to_be_bytes());
    b.extend(error.to_be_bytes());
    b.extend(cookie.to_be_bytes());
    b.extend(data);
    s.write_all(&b)
}

fn structured_reply(
    s: &mut impl Write,
    cookie: u64,
    kind: u16,
    flags: u16,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + payload.len());
    b.extend(STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b.extend(flags.to_be_bytes());
    b.extend(kind.to_be_bytes());
    b.extend(cookie.to_be_bytes());
    b.extend((payload.len() as u32).to_be_bytes());
    b.extend(payload);
    s.write_all(&b)
}

/// Answers a request with no data: OK or an errno.
fn status(
    s: &mut impl Write,
    structured: bool,
    cookie: u64,
    error: u32,
    msg: &str,
) -> std::io::Result<()> {
    if !structured {
        return simple_reply(s, cookie, error, &[]);
    }
    if error == 0 {
        return structured_reply(s, cookie, REPLY_TYPE_NONE, REPLY_FLAG_DONE, &[]);
    }
    let mut p = Vec::new();
    p.extend(error.to_be_bytes());
    p.extend((msg.len() as u16).to_be_bytes());
    p.extend(msg.as_bytes());
    structured_reply(s, cookie, REPLY_TYPE_ERROR, REPLY_FLAG_DONE, &p)
}

fn transmission<S: Read + Write>(
    mut reader: DiskReader,
    budget: &ReadBudget,
    structured: bool,
    meta: bool,
    s: &mut S,
) -> std::io::Result<()> {
    let size = reader.len_bytes();
    let mut buf = Vec::new();
    loop {
        let magic = match read_u32(s) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if magic != REQUEST_MAGIC {
            return Err(invalid("request without magic"));
        }
        let flags = read_u16(s)?;
        let kind = read_u16(s)?;
        let cookie = read_u64(s)?;
        let offset = read_u64(s)?;
        let len = read_u32(s)?;
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= size);
        match kind {
            CMD_READ => {
                if !in_range || len > MAX_REQUEST_BYTES {
                    status(
                        s,
                        structured,
                        cookie,
                        EINVAL,
                        "read outside the disk or too long",
                    )?;
                    continue;
                }
                // The data and a structured reply's copy of it.
                let _held = budget.take(2 * u64::from(len));
                // Large reads borrow a large buffer only for as long as they take.
                buf.truncate(0);
                buf.shrink_to(1 << 20);
                buf.resize(len as usize, 0);
                match reader.read_at(offset, &mut buf) {
                    Ok(_) if structured => {
                        let mut p = Vec::with_capacity(8 + buf.len());
                        p.extend(offset.to_be_bytes());
                        p.extend(&buf);
                        structured_reply(s, cookie, REPLY_TYPE_OFFSET_DATA, REPLY_FLAG_DONE, &p)?;
                    }
                    Ok(_) => simple_reply(s, cookie, 0, &buf)?,
                    Err(e) => {
                        log::error!("NBD read at {offset}: {e}");
                        status(s, structured, cookie, EIO, &e.to_string())?;
                    }
                }
            }
            CMD_WRITE => {
                // Drain the payload to stay in step with the client, then refuse.
                if len > MAX_REQUEST_BYTES {
                    return Err(invalid("write payload too long"));
                }
                std::io::copy(&mut (&mut *s).take(u64::from(len)), &mut std::io::sink())?;
                status(s, structured, cookie, EPERM, "read-only export")?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                status(s, structured, cookie, EPERM, "read-only export")?
            }
            CMD_DISC => return Ok(()),
            CMD_FLUSH | CMD_CACHE => status(s, structured, cookie, 0, "")?,
            CMD_BLOCK_STATUS if structured && meta => {
                if !in_range || len == 0 {
                    status(
                        s,
                        structured,
                        cookie,
                        EINVAL,
                        "block status outside the disk",
                    )?;
                    continue;
                }
                match block_status(&mut reader, offset, len, flags & CMD_FLAG_REQ_ONE != 0) {
                    Ok(p) => {
                        structured_reply(s, cookie, REPLY_TYPE_BLOCK_STATUS, REPLY_FLAG_DONE, &p)?
                    }
                    Err(e) => status(s, structured, cookie, EIO, &e.to_string())?,
                }
            }
            _ => status(s, structured, cookie, ENOTSUP, "command not supported")?,
        }
        s.flush()?;
    }
}

/// base:allocation descriptors from `offset` for up to `len` bytes: holes are
/// HOLE|ZERO, chunks are data. Adjacent extents of one kind are merged.
fn block_status(
    reader: &mut DiskReader,
    offset: u64,
    len: u32,
    one: bool,
) -> crate::Result<Vec<u8>> {
    let end = offset + u64::from(len);
    let mut descriptors: Vec<(u32, u32)> = Vec::new();
    let mut pos = offset;
    while pos < end && descriptors.len() < MAX_STATUS_DESCRIPTORS {
        let Some((start, extent)) = reader.extent_at(pos)? else {
            break;
        };
        let n = (start + extent.len()).min(end) - pos;
        let flags = match extent {
            Extent::Hole { .. } => STATE_HOLE | STATE_ZERO,
            Extent::Chunk { .. } => 0,
        };
        let have = descriptors.len();
        match descriptors.last_mut() {
            Some((l, f)) if *f == flags => *l += n as u32,
            _ if one && have > 0 => break,
            _ => descriptors.push((n as u32, flags)),
        }
        pos += n;
    }
    let mut p = Vec::with_capacity(4 + descriptors.len() * 8);
    p.extend(BASE_ALLOCATION_ID.to_be_bytes());
    for (l, f) in descriptors {
        p.extend(l.to_be_bytes());
        p.extend(f.to_be_bytes());
    }
    Ok(p)
}

/// Where the server listens.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Accepts clients until `cancel` is set, each on its own thread. Nothing a client
/// does ends the server: accept errors (a full descriptor table, an aborted connection)
/// are logged and retried with a growing pause, so VMs running from an overlay on an
/// export keep their disk. Once cancelled, every client's socket is shut down and its
/// thread joined before this returns (and the exports, with their lock, are released).
pub fn serve(
    exports: Arc<Exports>,
    listener: Listener,
    limits: ServeLimits,
    cancel: &crate::cancel::Cancel,
) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    match &listener {
        Listener::Tcp(l) => l.set_nonblocking(true)?,
        Listener::Unix(l) => l.set_nonblocking(true)?,
    }
    let active = Arc::new(AtomicUsize::new(0));
    let mut backoff = Duration::from_millis(50);
    // Each client's thread, with a way to shut its socket down from here.
    type Client = (std::thread::JoinHandle<()>, Box<dyn Fn() + Send>);
    let mut clients: Vec<Client> = Vec::new();
    while cancel.check().is_ok() {
        let timeout = Some(limits.idle_timeout);
        let accepted: std::io::Result<Accepted> = match &listener {
            Listener::Tcp(l) => l.accept().and_then(|(c, peer)| {
                c.set_nodelay(true)?;
                accepted_client(c, peer.to_string(), timeout)
            }),
            Listener::Unix(l) => l
                .accept()
                .and_then(|(c, _)| accepted_client(c, "unix socket".into(), timeout)),
        };
        // Threads of clients that left are joined as we go.
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut clients)
            .into_iter()
            .partition(|(t, _)| t.is_finished());
        clients = running;
        for (t, _) in done {
            let _ = t.join();
        }
        match accepted {
            Ok((conn, peer, stop)) => {
                backoff = Duration::from_millis(50);
                if active.load(Ordering::SeqCst) >= limits.max_clients {
                    log::warn!(
                        "NBD client {peer} refused: {} clients already (--max-clients)",
                        limits.max_clients
                    );
                    drop(conn);
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (exports, active) = (exports.clone(), active.clone());
                let thread = std::thread::spawn(move || {
                    log::info!("NBD client {peer} connected");
                    // Every reply is built whole and written with one call, so the
                    // socket needs no buffering.
                    match serve_client(exports, conn) {
                        Ok(()) => log::info!("NBD client {peer} disconnected"),
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            log::warn!("NBD client {peer} disconnected in the middle of a message")
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            log::warn!("NBD client {peer} idle too long; connection closed")
                        }
                        Err(e) => log::warn!("NBD client {peer}: {e}; connection closed"),
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
                clients.push((thread, stop));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOMEM pass when clients leave; ECONNABORTED at once.
                log::warn!("NBD server: accepting a client failed ({e}); retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    for (_, stop) in &clients {
        stop();
    }
    for (t, _) in clients {
        // A client thread that panicked has nothing left to release.
        let _ = t.join();
    }
    Ok(())
}

/// A client just accepted: its connection, who it is, and a way to shut it down.
type Accepted = (Box<dyn ReadWrite>, String, Box<dyn Fn() + Send>);

/// What the server needs of a TCP or Unix stream.
trait Socket: ReadWrite + Sized + 'static {
    fn prepare(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()>;
    fn twin(&self) -> std::io::Result<Self>;
    fn close(&self);
}

macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            fn prepare(&self, timeout: Option<std::time::Duration>) -> std::io::Result<()> {
                self.set_nonblocking(false)?;
                self.set_read_timeout(timeout)?;
                self.set_write_timeout(timeout)
            }
            fn twin(&self) -> std::io::Result<Self> {
                self.try_clone()
            }
            fn close(&self) {
                let _ = self.shutdown(std::net::Shutdown::Both);
            }
        }
    };
}
socket!(std::net::TcpStream);
socket!(std::os::unix::net::UnixStream);

/// Blocking reads and writes with the idle timeout, and a second handle that shuts the
/// connection down when the server stops.
fn accepted_client<S: Socket>(
    c: S,
    peer: String,
    timeout: Option<std::time::Duration>,
) -> std::io::Result<Accepted> {
    c.prepare(timeout)?;
    let handle = c.twin()?;
    Ok((Box::new(c), peer, Box::new(move || handle.close())))
}

/// A connection: TCP or Unix.
pub trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}
