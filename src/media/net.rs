//! The shared media socket with batched I/O: `recvmmsg` in, `sendmmsg` out.

use std::collections::VecDeque;
use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use bytes::BytesMut;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest datagram we accept; WebRTC stays under the path MTU.
pub const MAX_DATAGRAM: usize = 2048;

/// Where a worker's datagrams come from and go to: the UDP socket in the server, memory in the
/// benches that measure the media plane alone.
pub trait Datagrams {
    /// Reads up to `BATCH` datagrams; calls `each(source, bytes, received)` for each, with the
    /// kernel's receive time when known, handing over the buffer the datagram was read into.
    /// Returns how many were read (0 when nothing waits).
    fn recv_batch(
        &mut self,
        each: impl FnMut(SocketAddr, BytesMut, Option<RealTime>),
    ) -> io::Result<usize>;

    /// Sends every datagram of `out` and empties it. Returns how many were refused (dropped).
    fn send_all(&mut self, out: &mut Vec<(SocketAddr, BytesMut)>) -> usize;
}

impl Datagrams for BatchSocket {
    fn recv_batch(
        &mut self,
        each: impl FnMut(SocketAddr, BytesMut, Option<RealTime>),
    ) -> io::Result<usize> {
        self.recv_batch_owned(each)
    }

    fn send_all(&mut self, out: &mut Vec<(SocketAddr, BytesMut)>) -> usize {
        let refused = self.send_segmented(out);
        out.clear();
        refused
    }
}

/// Datagrams in memory: the caller fills `inbound` and takes `outbound`. No system calls, so a
/// bench through a `Worker` built on it measures the media plane's own CPU.
#[derive(Default)]
pub struct MemoryDatagrams {
    pub inbound: VecDeque<(SocketAddr, BytesMut)>,
    pub outbound: Vec<(SocketAddr, BytesMut)>,
}

impl Datagrams for MemoryDatagrams {
    fn recv_batch(
        &mut self,
        mut each: impl FnMut(SocketAddr, BytesMut, Option<RealTime>),
    ) -> io::Result<usize> {
        let n = self.inbound.len().min(BATCH);
        for (from, bytes) in self.inbound.drain(..n) {
            each(from, bytes, None);
        }
        Ok(n)
    }

    fn send_all(&mut self, out: &mut Vec<(SocketAddr, BytesMut)>) -> usize {
        self.outbound.append(out);
        0
    }
}

/// A `CLOCK_REALTIME` instant in nanoseconds: what the kernel stamps received datagrams with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RealTime(pub u64);

impl RealTime {
    pub fn now() -> Self {
        Self::from_timespec(&clock_now(libc::CLOCK_REALTIME))
    }

    fn from_timespec(ts: &libc::timespec) -> Self {
        Self(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// Time from `earlier` to `self`; zero if the clock stepped back.
    pub fn since(self, earlier: RealTime) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`): what the benches and the load
/// tool's baseline charge per packet.
pub fn thread_cpu_time() -> std::time::Duration {
    let ts = clock_now(libc::CLOCK_THREAD_CPUTIME_ID);
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Puts the calling thread in scheduling class `policy` at `priority`; threads it creates
/// afterwards inherit both. The media workers' `SCHED_FIFO` (`--media-rt-priority`) and the
/// load tool's idle-class clients (`--sched-idle`) go through it.
pub fn set_thread_scheduler(policy: libc::c_int, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param, and pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn clock_now(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts
}

/// `UDP_SEGMENT` (linux/udp.h), not in every libc target's constants.
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// Most datagrams in one segmented send (the kernel's UDP_MAX_SEGMENTS is 64 or 128).
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one segmented send (one UDP payload).
const MAX_GSO_BYTES: usize = 65_000;
/// Most datagrams per `sendmmsg` of segmented sends.
const MAX_SEGMENTS_PER_CALL: usize = 256;

/// Room for one `SCM_TIMESTAMPNS` control message (a `cmsghdr` and a `timespec`, aligned).
const CONTROL_LEN: usize = 64;

pub struct BatchSocket {
    socket: UdpSocket,
    /// One receive buffer per datagram of a batch, each empty with room for `MAX_DATAGRAM`
    /// bytes between reads. `recv_batch_owned` hands a filled one over instead of copying it.
    bufs: Vec<BytesMut>,
    addrs: Vec<libc::sockaddr_storage>,
    /// Per-datagram control buffers for the kernel's receive timestamps (u64 for alignment).
    controls: Vec<[u64; CONTROL_LEN / 8]>,
    /// The kernel refused a segmented send once: `send_segmented` sends one by one from then.
    no_gso: std::sync::atomic::AtomicBool,
}

impl BatchSocket {
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Bursts of 20 participants' video: give the kernel room before we read.
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        // The kernel's receive time on every datagram: how long a packet waited before we
        // forwarded it (`switchboard_forwarding_delay_seconds`). Best effort.
        let on: libc::c_int = 1;
        // SAFETY: a valid socket, and an int option value of the right size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(Self {
            socket: socket.into(),
            bufs: (0..BATCH)
                .map(|_| BytesMut::with_capacity(MAX_DATAGRAM))
                .collect(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            controls: vec![[0; CONTROL_LEN / 8]; BATCH],
            no_gso: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn raw_fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// Reads up to `BATCH` datagrams; calls `each(source, bytes)` for each. Returns how many
    /// were read (0 when nothing is waiting). The buffers are kept for the next read.
    pub fn recv_batch(&mut self, mut each: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        self.recv_into_bufs(|from, buf, _| each(from, buf))
    }

    /// Reads up to `BATCH` datagrams; calls `each(source, bytes, received)` for each, with the
    /// kernel's receive time (`SO_TIMESTAMPNS`), handing over the buffer the datagram was read
    /// into (and allocating its successor) rather than copying it out.
    pub fn recv_batch_owned(
        &mut self,
        mut each: impl FnMut(SocketAddr, BytesMut, Option<RealTime>),
    ) -> io::Result<usize> {
        self.recv_into_bufs(|from, buf, at| each(from, std::mem::take(buf), at))
    }

    /// One `recvmmsg` into `self.bufs`; calls `each` with every datagram's buffer, whose length
    /// is the datagram's. A buffer `each` takes (or shrinks) is replaced, the others emptied.
    fn recv_into_bufs(
        &mut self,
        mut each: impl FnMut(SocketAddr, &mut BytesMut, Option<RealTime>),
    ) -> io::Result<usize> {
        // SAFETY: iovecs and headers point into self.bufs' spare capacity (MAX_DATAGRAM bytes
        // each) and self.addrs/self.controls, which outlive the call and are not touched until
        // it returns; the kernel writes at most iov_len/msg_namelen/msg_controllen bytes.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: self.bufs[i].spare_capacity_mut().as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = CONTROL_LEN;
        }
        let n = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        for ((hdr, addr), buf) in hdrs.iter().zip(&self.addrs).zip(&mut self.bufs).take(n) {
            if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue; // larger than any WebRTC datagram: not ours
            }
            let Some(addr) = from_storage(addr) else {
                continue;
            };
            // SAFETY: the kernel wrote msg_len (≤ MAX_DATAGRAM, the capacity) bytes from the
            // start of the spare capacity.
            unsafe { buf.set_len(hdr.msg_len as usize) };
            each(addr, buf, receive_time(&hdr.msg_hdr));
            if buf.capacity() < MAX_DATAGRAM {
                *buf = BytesMut::with_capacity(MAX_DATAGRAM);
            } else {
                buf.clear();
            }
        }
        Ok(n)
    }

    /// Sends `datagrams` with UDP generic segmentation offload (`UDP_SEGMENT`): each run of
    /// consecutive datagrams to one address, of one size (the last of the run may be shorter),
    /// goes down the kernel's send path once as one buffer that is cut into datagrams late
    /// (in the NIC, or just before delivery), instead of once per datagram. Up to `BATCH` runs
    /// per `sendmmsg`. Falls back to `send_batch` for good if the kernel refuses segmentation.
    /// Returns how many datagrams were refused, as `send_batch`.
    pub fn send_segmented<B: AsRef<[u8]>>(&self, datagrams: &[(SocketAddr, B)]) -> usize {
        if self.no_gso.load(std::sync::atomic::Ordering::Relaxed) {
            return self.send_batch(datagrams);
        }
        let mut refused = 0;
        let mut next = 0;
        while next < datagrams.len() {
            // Up to BATCH messages and MAX_SEGMENTS_PER_CALL datagrams per call. Only the
            // entries a call uses are written: zeroing all of them (11 KiB) cost more than the
            // send's own bookkeeping when a turn sends one datagram.
            let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; BATCH];
            let mut controls = [const { MaybeUninit::<[u64; 4]>::uninit() }; BATCH];
            let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_SEGMENTS_PER_CALL];
            let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
            let mut runs = [(0usize, 0usize); BATCH]; // (first datagram, datagrams)
            let (mut messages, mut used) = (0, 0);
            while messages < BATCH && next < datagrams.len() {
                let (to, first) = (&datagrams[next].0, datagrams[next].1.as_ref());
                let seg = first.len();
                let mut len = 1;
                let mut total = seg;
                while len < MAX_SEGMENTS
                    && used + len < MAX_SEGMENTS_PER_CALL
                    && next + len < datagrams.len()
                {
                    let (addr, bytes) =
                        (&datagrams[next + len].0, datagrams[next + len].1.as_ref());
                    if addr != to || bytes.len() > seg || total + bytes.len() > MAX_GSO_BYTES {
                        break;
                    }
                    total += bytes.len();
                    len += 1;
                    if bytes.len() < seg {
                        break; // a shorter datagram ends the run
                    }
                }
                if used + len > MAX_SEGMENTS_PER_CALL {
                    break;
                }
                for (i, (_, bytes)) in datagrams[next..next + len].iter().enumerate() {
                    iovs[used + i].write(iovec(bytes.as_ref()));
                }
                let hdr = &mut message(&mut hdrs[messages], *to, &mut names[messages]).msg_hdr;
                hdr.msg_iov = iovs[used].as_mut_ptr();
                hdr.msg_iovlen = len;
                if len > 1 {
                    hdr.msg_control = controls[messages].write([0; 4]).as_mut_ptr().cast();
                    // SAFETY: the control buffer (32 bytes, aligned) holds one cmsghdr and a
                    // u16 (CMSG_SPACE(2) = 24 on 64-bit Linux); CMSG_* stay inside it.
                    unsafe {
                        hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
                        let cmsg = libc::CMSG_FIRSTHDR(hdr);
                        (*cmsg).cmsg_level = SOL_UDP;
                        (*cmsg).cmsg_type = UDP_SEGMENT;
                        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
                        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg as u16);
                    }
                }
                runs[messages] = (next, len);
                messages += 1;
                used += len;
                next += len;
            }
            let mut sent = 0;
            while sent < messages {
                // SAFETY: the first `messages` headers are written and point at live locals and
                // `datagrams`, valid for the call.
                let n = unsafe {
                    libc::sendmmsg(
                        self.socket.as_raw_fd(),
                        hdrs[sent..].as_mut_ptr().cast(),
                        (messages - sent) as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                if n >= 0 {
                    sent += n as usize;
                    continue;
                }
                let err = io::Error::last_os_error();
                let (first, len) = runs[sent];
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // No segmentation on this route or device: never try again.
                    Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) if len > 1 => {
                        self.no_gso
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        let rest: usize = runs[sent..messages].iter().map(|r| r.1).sum();
                        return refused
                            + self.send_batch(&datagrams[first..first + rest])
                            + self.send_batch(&datagrams[next..]);
                    }
                    // Full buffer or an unreachable destination: skip this run.
                    _ => {
                        refused += len;
                        sent += 1;
                    }
                }
            }
        }
        refused
    }

    /// Sends `datagrams` in batches. Returns how many the kernel refused for a full buffer
    /// (they are dropped: media is loss-tolerant, and the peers retransmit control traffic).
    pub fn send_batch<B: AsRef<[u8]>>(&self, datagrams: &[(SocketAddr, B)]) -> usize {
        let mut refused = 0;
        for chunk in datagrams.chunks(BATCH) {
            let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; BATCH];
            let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; BATCH];
            let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; BATCH];
            for (i, (addr, bytes)) in chunk.iter().enumerate() {
                let hdr = &mut message(&mut hdrs[i], *addr, &mut names[i]).msg_hdr;
                hdr.msg_iov = iovs[i].write(iovec(bytes.as_ref()));
                hdr.msg_iovlen = 1;
            }
            let mut sent = 0;
            while sent < chunk.len() {
                // SAFETY: the chunk's headers are written and point at live locals and
                // `datagrams`, valid for the call.
                let n = unsafe {
                    libc::sendmmsg(
                        self.socket.as_raw_fd(),
                        hdrs[sent..].as_mut_ptr().cast(),
                        (chunk.len() - sent) as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // Full buffer or an unreachable destination: skip this datagram.
                    refused += 1;
                    sent += 1;
                } else {
                    sent += n as usize;
                }
            }
        }
        refused
    }
}

/// The `SCM_TIMESTAMPNS` control message of a received datagram, if the kernel attached one.
fn receive_time(msg: &libc::msghdr) -> Option<RealTime> {
    // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG_* macros stay
    // within it, and a SCM_TIMESTAMPNS payload is a timespec.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                return Some(RealTime::from_timespec(&ts));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// An `iovec` for sending `bytes` (the kernel does not write through it).
fn iovec(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    }
}

/// Writes a zeroed `mmsghdr` into `slot` and its destination `to` into `name`, which it points
/// at; the caller sets the data (and any control message).
fn message<'a>(
    slot: &'a mut MaybeUninit<libc::mmsghdr>,
    to: SocketAddr,
    name: &mut MaybeUninit<libc::sockaddr_storage>,
) -> &'a mut libc::mmsghdr {
    // SAFETY: both are plain old data, for which all-zero is a valid value.
    let name = name.write(unsafe { zeroed() });
    let hdr = slot.write(unsafe { zeroed() });
    hdr.msg_hdr.msg_namelen = to_storage(to, name);
    hdr.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
    hdr
}

fn to_storage(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let out = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in) };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = a.port().to_be();
            out.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let out = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in6) };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = a.port().to_be();
            out.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            out.sin6_flowinfo = a.flowinfo();
            out.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Blocks until the socket or the waker is readable, or `timeout_us` passes.
pub fn wait(fds: [i32; 2], timeout: Option<std::time::Duration>) {
    let mut pfds = [
        libc::pollfd {
            fd: fds[0],
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fds[1],
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: pfds and ts live across the call; a null timeout means wait forever.
    unsafe { libc::ppoll(pfds.as_mut_ptr(), 2, ts_ptr, std::ptr::null()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_on_loopback() {
        let mut a = BatchSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = BatchSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = a.local_addr().unwrap();
        let msgs: Vec<(SocketAddr, Vec<u8>)> =
            (0..40u8).map(|i| (to, vec![i; 10 + i as usize])).collect();
        let sent_at = RealTime::now();
        assert_eq!(b.send_batch(&msgs), 0);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while got.len() < 40 && std::time::Instant::now() < deadline {
            wait(
                [a.raw_fd(), a.raw_fd()],
                Some(std::time::Duration::from_millis(50)),
            );
            // The buffers handed over are kept across reads: a later read must not reuse them.
            a.recv_batch_owned(|from, bytes, at| {
                let at = at.expect("SO_TIMESTAMPNS stamps every datagram");
                assert!(at >= sent_at && RealTime::now().since(at).as_secs() < 2);
                got.push((from, bytes))
            })
            .unwrap();
        }
        assert_eq!(got.len(), 40);
        assert!(got.iter().all(|(from, _)| *from == b.local_addr().unwrap()));
        assert!(got.iter().zip(&msgs).all(|((_, g), (_, m))| g[..] == m[..]));
    }

    #[test]
    fn segmented_sends_arrive_as_the_same_datagrams_in_order() {
        let mut a = BatchSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut c = BatchSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = BatchSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (to_a, to_c) = (a.local_addr().unwrap(), c.local_addr().unwrap());
        // Runs of equal sizes with a shorter one at the end, a longer one that must start a
        // new run, two destinations interleaved, and a run longer than MAX_SEGMENTS.
        let mut msgs: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut n = 0u8;
        let mut push = |to, len: usize| {
            n = n.wrapping_add(1);
            msgs.push((to, vec![n; len]));
        };
        for len in [1100, 1100, 1100, 900, 1100, 1200, 100, 100] {
            push(to_a, len);
        }
        push(to_c, 1100);
        push(to_a, 1100);
        for _ in 0..70 {
            push(to_c, 500);
        }
        assert_eq!(b.send_segmented(&msgs), 0);
        assert!(
            !b.no_gso.load(std::sync::atomic::Ordering::Relaxed),
            "loopback takes segmented sends"
        );
        for (sock, to) in [(&mut a, to_a), (&mut c, to_c)] {
            let want: Vec<&Vec<u8>> = msgs.iter().filter(|m| m.0 == to).map(|m| &m.1).collect();
            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while got.len() < want.len() && std::time::Instant::now() < deadline {
                wait(
                    [sock.raw_fd(), sock.raw_fd()],
                    Some(std::time::Duration::from_millis(50)),
                );
                sock.recv_batch(|_, bytes| got.push(bytes.to_vec()))
                    .unwrap();
            }
            assert_eq!(got.len(), want.len());
            assert!(got.iter().zip(&want).all(|(g, w)| g == *w));
        }
    }
}
