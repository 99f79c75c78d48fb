//! The HTTP accept loop: every connection is bounded in time and in number.
//!
//! - **Time.** A connection must deliver a complete request head within `header_timeout` of its
//!   accept, or of the first byte of a later request on it. Between requests (keep-alive) it may
//!   stay silent for `idle_timeout`; a request whose body or response stops moving for
//!   `idle_timeout` is closed too. A connection that upgraded to a WebSocket leaves all of this:
//!   its own pings govern it.
//! - **Number.** At most `max_per_ip` connections from one source address (an IPv6 source is
//!   its /64; a new one past that is refused) and `max_total` in all, kept below the open-file
//!   limit. At the total cap a new connection first reclaims the oldest connection that is idle
//!   between requests or has not finished its request head (as nginx reuses keep-alive
//!   connections when it runs out); only when every connection is busy (a request in flight, a
//!   WebSocket) is it refused.
//! - **Refusing is cheap**: the accepted socket gets a fixed 503 with one non-blocking write,
//!   nothing is read, and it is closed at once. Refusals are counted in `/metrics` and logged at
//!   most once per `REFUSAL_LOG_EVERY`.
//!
//! The handlers see the peer address as `ConnectInfo<SocketAddr>` (IPv4-mapped IPv6 addresses
//! folded to IPv4). Graceful shutdown works as `axum::serve`'s: once `shutdown` resolves, the
//! listener closes, every connection finishes the request it is in and closes, and `serve`
//! returns when the last one has (WebSockets are not waited for).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;
use tracing::{debug, error, warn};

/// Seconds a request head may take by default (`--http-header-timeout`).
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Seconds a keep-alive connection may sit idle by default (`--http-idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Connections one source address may hold by default (`--max-connections-per-ip`).
pub const DEFAULT_MAX_PER_IP: usize = 256;
/// `--max-connections` defaults to the open-file limit less this share of it (at least
/// `FD_RESERVE_MIN`): media sockets, ICE-TCP, the call store, the runtime's own descriptors.
pub const FD_RESERVE_MIN: u64 = 256;
/// Ceiling of the derived `--max-connections` default.
pub const DEFAULT_MAX_TOTAL_CEILING: usize = 16_384;
/// Refusals and accept errors are logged at most this often (each line says how many).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The bounds the accept loop enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_per_ip: usize,
    pub max_total: usize,
}

/// The open-file limit after `raise_fd_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (an unlimited hard limit counts as the
/// kernel's `fs.nr_open`). Returns the limits before and after; an error if they cannot be read
/// or set (then the soft limit is unchanged).
pub fn raise_fd_limit() -> Result<FdLimit, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", io::Error::last_os_error()));
    }
    let before = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    let hard = lim.rlim_max;
    if lim.rlim_cur >= target {
        return Ok(FdLimit {
            before,
            soft: before,
            hard,
        });
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit(2) reads one rlimit struct we own; a soft limit up to the hard one is
    // always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!(
            "setrlimit to {target}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(FdLimit {
        before,
        soft: target,
        hard,
    })
}

/// RLIMIT_NOFILE's soft limit now (1024 if it cannot be read).
pub fn fd_soft_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit(2) writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Descriptors kept back from HTTP connections under an open-file limit of `fd_limit`.
pub fn fd_reserve(fd_limit: u64) -> u64 {
    (fd_limit / 4).max(FD_RESERVE_MIN)
}

/// The most HTTP connections an open-file limit leaves room for (the `--max-connections`
/// default): the limit less `fd_reserve`, at most `DEFAULT_MAX_TOTAL_CEILING`, at least 16.
pub fn max_total_for(fd_limit: u64) -> usize {
    let room = fd_limit.saturating_sub(fd_reserve(fd_limit));
    (room.min(DEFAULT_MAX_TOTAL_CEILING as u64) as usize).max(16)
}

/// A connection's phase, as the watchdog and the eviction see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Reading a request head (or not a byte yet on a new connection).
    Head = 0,
    /// A request is being handled (its body read, its handler run).
    Busy = 1,
    /// Between requests: the last response is out (or being written), no new bytes yet.
    Idle = 2,
    /// Left HTTP (a WebSocket) or being closed: no timer, never reclaimed.
    Done = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Head,
            1 => Phase::Busy,
            2 => Phase::Idle,
            _ => Phase::Done,
        }
    }
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head within `header_timeout`.
    HeaderTimeout,
    /// Nothing moved for `idle_timeout` (between requests, or within one).
    IdleTimeout,
    /// Reclaimed for a new connection at the total cap.
    Reclaimed,
}

impl CloseReason {
    pub const ALL: [CloseReason; 3] = [
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::Reclaimed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Reclaimed => "reclaimed",
        }
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address holds `max_per_ip` connections.
    PerIp,
    /// `max_total` connections are open and none of them can be reclaimed.
    Total,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::PerIp, Refusal::Total];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip",
            Refusal::Total => "total",
        }
    }
}

/// What the watchdog does with a connection at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Look again at this time (milliseconds on the `now_ms` clock); `None`: never.
    KeepUntil(Option<u64>),
    Close(CloseReason),
}

/// The watchdog's decision for a connection in `phase`, whose current request head began at
/// `head_since` and whose last byte in either direction moved at `last_io` (all in ms).
pub fn verdict(phase: Phase, head_since: u64, last_io: u64, now: u64, limits: &Limits) -> Verdict {
    let (deadline, reason) = match phase {
        Phase::Head => (
            head_since + limits.header_timeout.as_millis() as u64,
            CloseReason::HeaderTimeout,
        ),
        Phase::Busy | Phase::Idle => (
            last_io + limits.idle_timeout.as_millis() as u64,
            CloseReason::IdleTimeout,
        ),
        Phase::Done => return Verdict::KeepUntil(None),
    };
    if now >= deadline {
        Verdict::Close(reason)
    } else {
        Verdict::KeepUntil(Some(deadline))
    }
}

/// What to do with a new connection from a source holding `from_ip` connections while `total`
/// are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Admit it after closing the oldest reclaimable connection.
    AdmitReclaiming,
    Refuse(Refusal),
}

pub fn admission(from_ip: usize, total: usize, reclaimable: bool, limits: &Limits) -> Admission {
    if from_ip >= limits.max_per_ip {
        Admission::Refuse(Refusal::PerIp)
    } else if total < limits.max_total {
        Admission::Admit
    } else if reclaimable {
        Admission::AdmitReclaiming
    } else {
        Admission::Refuse(Refusal::Total)
    }
}

/// Milliseconds since the first call, a monotonic clock the atomics can hold.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: [AtomicU64; 2],
    closed: [AtomicU64; 3],
    accept_errors: AtomicU64,
}

impl ConnStats {
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r as usize].load(Ordering::Relaxed)
    }

    pub fn closed(&self, r: CloseReason) -> u64 {
        self.closed[r as usize].load(Ordering::Relaxed)
    }

    /// The HTTP connection families of the Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP switchboard_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
        };
        family(
            out,
            "http_connections",
            "gauge",
            "HTTP connections open (WebSockets included).",
        );
        let _ = writeln!(out, "switchboard_http_connections {}", self.open());
        family(
            out,
            "http_connections_accepted_total",
            "counter",
            "HTTP connections admitted.",
        );
        let _ = writeln!(
            out,
            "switchboard_http_connections_accepted_total {}",
            self.accepted.load(Ordering::Relaxed)
        );
        family(
            out,
            "http_connections_refused_total",
            "counter",
            "New HTTP connections refused at a cap (per_ip: its source's; total: all busy).",
        );
        for r in Refusal::ALL {
            let _ = writeln!(
                out,
                "switchboard_http_connections_refused_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.refused(r)
            );
        }
        family(
            out,
            "http_connections_closed_total",
            "counter",
            "HTTP connections the server closed itself, by reason.",
        );
        for r in CloseReason::ALL {
            let _ = writeln!(
                out,
                "switchboard_http_connections_closed_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.closed(r)
            );
        }
        family(
            out,
            "http_accept_errors_total",
            "counter",
            "accept(2) failures on the HTTP port (EMFILE and the like).",
        );
        let _ = writeln!(
            out,
            "switchboard_http_accept_errors_total {}",
            self.accept_errors.load(Ordering::Relaxed)
        );
    }
}

/// One admitted connection, shared by its IO, its service and its watchdog.
#[derive(Debug)]
struct Conn {
    id: u64,
    ip: IpAddr,
    phase: AtomicU8,
    head_since: AtomicU64,
    last_io: AtomicU64,
    reclaim: Notify,
}

impl Conn {
    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }

    /// Bytes moved at `now`; the first byte after a response starts the next request head.
    fn moved(&self, read: bool) {
        let now = now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if read
            && self
                .phase
                .compare_exchange(
                    Phase::Idle as u8,
                    Phase::Head as u8,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.head_since.store(now, Ordering::Relaxed);
        }
    }

    fn verdict(&self, now: u64, limits: &Limits) -> Verdict {
        verdict(
            self.phase(),
            self.head_since.load(Ordering::Relaxed),
            self.last_io.load(Ordering::Relaxed),
            now,
            limits,
        )
    }

    /// When it started waiting (for eviction: oldest first), if it may be reclaimed.
    fn waiting_since(&self) -> Option<u64> {
        match self.phase() {
            Phase::Head => Some(self.head_since.load(Ordering::Relaxed)),
            Phase::Idle => Some(self.last_io.load(Ordering::Relaxed)),
            Phase::Busy | Phase::Done => None,
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    by_ip: HashMap<IpAddr, usize>,
    open: HashMap<u64, Arc<Conn>>,
}

impl Table {
    /// The connection that has waited longest for a request (head or idle), if any.
    fn oldest_waiting(&self) -> Option<Arc<Conn>> {
        self.open
            .values()
            .filter_map(|c| c.waiting_since().map(|t| (t, c)))
            .min_by_key(|(t, c)| (*t, c.id))
            .map(|(_, c)| c.clone())
    }
}

/// Refusals or accept errors since the last log line.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// Whether to log now, and how many were not logged before this one.
    fn tick(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The table of open connections and the caps on it.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    stats: Arc<crate::metrics::Metrics>,
    table: Mutex<Table>,
    refusals: Mutex<Throttle>,
    accept_errors: Mutex<Throttle>,
}

impl Connections {
    pub fn new(limits: Limits, metrics: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            stats: metrics,
            table: Mutex::default(),
            refusals: Mutex::default(),
            accept_errors: Mutex::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn stats(&self) -> &ConnStats {
        &self.stats.connections
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A poisoned lock only means a panic elsewhere mid-update of plain counters.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip` (counted by `source_key`; a `Ticket` that releases its place when dropped), or
    /// says why not.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let ip = source_key(ip);
        let mut table = self.table();
        let from_ip = table.by_ip.get(&ip).copied().unwrap_or(0);
        let total = table.open.len();
        let oldest = if total >= self.limits.max_total && from_ip < self.limits.max_per_ip {
            table.oldest_waiting()
        } else {
            None
        };
        match admission(from_ip, total, oldest.is_some(), &self.limits) {
            Admission::Refuse(r) => {
                self.stats().refused[r as usize].fetch_add(1, Ordering::Relaxed);
                return Err(r);
            }
            Admission::AdmitReclaiming => {
                if let Some(victim) = oldest {
                    self.reclaim(&victim);
                }
            }
            Admission::Admit => {}
        }
        let now = now_ms();
        table.next_id += 1;
        let conn = Arc::new(Conn {
            id: table.next_id,
            ip,
            phase: AtomicU8::new(Phase::Head as u8),
            head_since: AtomicU64::new(now),
            last_io: AtomicU64::new(now),
            reclaim: Notify::new(),
        });
        table.open.insert(conn.id, conn.clone());
        *table.by_ip.entry(ip).or_default() += 1;
        self.stats().open.fetch_add(1, Ordering::Relaxed);
        self.stats().accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            conn,
            conns: self.clone(),
        })
    }

    /// Closes `victim` (a connection waiting for a request) to make room.
    fn reclaim(&self, victim: &Conn) {
        // Done: not picked again while it closes. Only if it is still waiting: a request that
        // began since it was picked is left alone (and the new connection admitted anyway).
        let phase = victim.phase.load(Ordering::Relaxed);
        if !matches!(Phase::from_u8(phase), Phase::Head | Phase::Idle)
            || victim
                .phase
                .compare_exchange(
                    phase,
                    Phase::Done as u8,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        victim.reclaim.notify_one();
        self.stats().closed[CloseReason::Reclaimed as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn release(&self, conn: &Conn) {
        let mut table = self.table();
        if table.open.remove(&conn.id).is_none() {
            return;
        }
        if let Some(n) = table.by_ip.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                table.by_ip.remove(&conn.ip);
            }
        }
        self.stats().open.fetch_sub(1, Ordering::Relaxed);
    }

    fn log_refusal(&self, ip: IpAddr, why: Refusal) {
        let tick = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tick();
        if let Some(before) = tick {
            let cap = match why {
                Refusal::PerIp => format!("--max-connections-per-ip {}", self.limits.max_per_ip),
                Refusal::Total => format!(
                    "--max-connections {}, every connection busy",
                    self.limits.max_total
                ),
            };
            warn!(
                %ip,
                refused_before = before,
                "refused a new HTTP connection at the cap ({cap}); refusals are logged at most \
                 every {}s, all counted in switchboard_http_connections_refused_total",
                REFUSAL_LOG_EVERY.as_secs()
            );
        }
    }

    /// After an accept error: log (throttled), and if it is the open-file limit, reclaim a
    /// waiting connection so the next accept can succeed.
    async fn accept_failed(&self, e: io::Error) {
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            return;
        }
        self.stats().accept_errors.fetch_add(1, Ordering::Relaxed);
        let tick = self
            .accept_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tick();
        if let Some(before) = tick {
            error!(error = %e, errors_before = before, "accept error on the HTTP port");
        }
        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            let oldest = self.table().oldest_waiting();
            if let Some(victim) = oldest {
                self.reclaim(&victim);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection's place in the table, released when its socket is dropped (also after an
/// upgrade, when the WebSocket ends).
#[derive(Debug)]
struct Ticket {
    conn: Arc<Conn>,
    conns: Arc<Connections>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.conns.release(&self.conn);
    }
}

/// The socket of an admitted connection: records when bytes move.
struct ConnIo {
    stream: TcpStream,
    ticket: Ticket,
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.ticket.conn.moved(true);
        }
        polled
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.ticket.conn.moved(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.ticket.conn.moved(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router for one connection: the peer address in each request, and the phase kept.
#[derive(Clone)]
struct ConnService {
    app: Router,
    conn: Arc<Conn>,
    peer: SocketAddr,
}

/// Puts a connection back to `Idle` when its request's handler is done (or dropped).
struct RequestDone(Arc<Conn>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        let _ = self.0.phase.compare_exchange(
            Phase::Busy as u8,
            Phase::Idle as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.0.last_io.store(now_ms(), Ordering::Relaxed);
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        // Head complete: from here the idle timeout watches the request, not the head timeout.
        let _ = self.conn.phase.compare_exchange(
            Phase::Head as u8,
            Phase::Busy as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let done = RequestDone(self.conn.clone());
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let handled = self.app.clone().oneshot(req.map(axum::body::Body::new));
        Box::pin(async move {
            let response = handled.await;
            drop(done);
            response
        })
    }
}

/// The fixed answer of a refused connection.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 85\r\nConnection: close\r\nRetry-After: 1\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many connections; try again\"}}";

/// The source a connection counts against for `max_per_ip`: its IPv4 address, or its IPv6
/// /64 prefix (one subscriber's network hands out a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if !v6.is_loopback() => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        other => other,
    }
}

/// Folds an IPv4-mapped IPv6 peer (a dual-stack listener) to its IPv4 address.
pub fn canonical(peer: SocketAddr) -> SocketAddr {
    match peer.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), peer.port()),
            None => peer,
        },
        IpAddr::V4(_) => peer,
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes as described in the
/// module docs.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    conns: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = conns.limits;
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's own head timer starts when it waits for a head, idle time included: a backstop
    // that never fires before ours.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout + limits.idle_timeout);
    let (signal_tx, signal_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                conns.accept_failed(e).await;
                continue;
            }
        };
        let peer = canonical(peer);
        let ticket = match conns.admit(peer.ip()) {
            Ok(t) => t,
            Err(why) => {
                // One try, never waiting: a full send buffer just means no answer.
                let _ = stream.try_write(REFUSED);
                drop(stream);
                conns.log_refusal(peer.ip(), why);
                continue;
            }
        };
        let conn = ticket.conn.clone();
        let service = ConnService {
            app: app.clone(),
            conn: conn.clone(),
            peer,
        };
        let connection = builder
            .serve_connection(TokioIo::new(ConnIo { stream, ticket }), service)
            .with_upgrades();
        tokio::spawn(watch_connection(
            connection,
            conn,
            conns.clone(),
            signal_rx.clone(),
            close_rx.clone(),
        ));
    }
    drop(listener);
    let _ = signal_tx.send(true);
    drop(close_rx);
    close_tx.closed().await;
}

/// Drives one connection, closing it when the watchdog or a reclaim says so.
async fn watch_connection(
    connection: hyper::server::conn::http1::UpgradeableConnection<TokioIo<ConnIo>, ConnService>,
    conn: Arc<Conn>,
    conns: Arc<Connections>,
    mut signal: watch::Receiver<bool>,
    close_rx: watch::Receiver<()>,
) {
    let mut connection = std::pin::pin!(connection);
    let mut shutting_down = false;
    loop {
        let now = now_ms();
        let wake = match conn.verdict(now, &conns.limits) {
            Verdict::Close(reason) => {
                conn.set_phase(Phase::Done);
                debug!(ip = %conn.ip, reason = reason.as_str(), "closing an HTTP connection");
                conns.stats().closed[reason as usize].fetch_add(1, Ordering::Relaxed);
                break;
            }
            Verdict::KeepUntil(at) => at,
        };
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    debug!(ip = %conn.ip, error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            changed = signal.changed(), if !shutting_down => {
                shutting_down = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = conn.reclaim.notified() => break,
            () = sleep => {}
        }
    }
    // The socket lives on only inside an upgrade now, which no timer here governs.
    conn.set_phase(Phase::Done);
    drop(close_rx);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_per_ip: 3,
            max_total: 5,
        }
    }

    #[test]
    fn a_head_has_the_header_timeout_from_its_first_byte() {
        let l = limits();
        assert_eq!(
            verdict(Phase::Head, 1_000, 1_000, 5_000, &l),
            Verdict::KeepUntil(Some(11_000))
        );
        // Bytes trickling in do not extend it.
        assert_eq!(
            verdict(Phase::Head, 1_000, 10_900, 11_000, &l),
            Verdict::Close(CloseReason::HeaderTimeout)
        );
    }

    #[test]
    fn idle_and_stalled_connections_have_the_idle_timeout_from_their_last_byte() {
        let l = limits();
        for phase in [Phase::Idle, Phase::Busy] {
            assert_eq!(
                verdict(phase, 0, 30_000, 60_000, &l),
                Verdict::KeepUntil(Some(90_000))
            );
            assert_eq!(
                verdict(phase, 0, 30_000, 90_000, &l),
                Verdict::Close(CloseReason::IdleTimeout)
            );
        }
        assert_eq!(
            verdict(Phase::Done, 0, 0, u64::MAX / 2, &l),
            Verdict::KeepUntil(None),
            "an upgraded connection has no timer here"
        );
    }

    #[test]
    fn admission_caps_each_source_then_the_total() {
        let l = limits();
        assert_eq!(admission(0, 0, false, &l), Admission::Admit);
        assert_eq!(admission(2, 4, false, &l), Admission::Admit);
        assert_eq!(
            admission(3, 3, true, &l),
            Admission::Refuse(Refusal::PerIp),
            "a source at its cap is refused even with room left"
        );
        assert_eq!(admission(1, 5, true, &l), Admission::AdmitReclaiming);
        assert_eq!(
            admission(1, 5, false, &l),
            Admission::Refuse(Refusal::Total)
        );
    }

    #[test]
    fn the_total_default_leaves_a_reserve_of_open_files() {
        assert_eq!(max_total_for(1024), 768);
        assert_eq!(max_total_for(4096), 3072);
        assert_eq!(max_total_for(20_000), 15_000);
        assert_eq!(max_total_for(1 << 20), DEFAULT_MAX_TOTAL_CEILING);
        assert_eq!(max_total_for(100), 16, "a tiny limit still serves a few");
    }

    #[test]
    fn ipv6_sources_count_by_their_64_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source_key(ip("2001:db8:1:2:ffff::9")),
            source_key(ip("2001:db8:1:2::7"))
        );
        assert_ne!(
            source_key(ip("2001:db8:1:3::1")),
            source_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(source_key(ip("198.18.0.1")), ip("198.18.0.1"));
        assert_eq!(source_key(ip("::1")), ip("::1"));
    }

    #[test]
    fn mapped_peers_fold_to_ipv4() {
        let p: SocketAddr = "[::ffff:198.18.0.1]:5000".parse().unwrap();
        assert_eq!(canonical(p).to_string(), "198.18.0.1:5000");
        let p: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(canonical(p), p);
    }

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[test]
    fn connection_stats_render_every_family() {
        let s = ConnStats::default();
        let mut out = String::from("before\n");
        s.render(&mut out);
        assert!(out.starts_with("before\n"));
        for needle in [
            "switchboard_http_connections 0",
            "switchboard_http_connections_refused_total{reason=\"per_ip\"} 0",
            "switchboard_http_connections_closed_total{reason=\"header_timeout\"} 0",
            "switchboard_http_accept_errors_total 0",
        ] {
            assert!(out.contains(needle), "{needle} in {out}");
        }
    }
}
