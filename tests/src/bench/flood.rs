//! A small-packet UDP flood: several flows, each a connected socket sending with
//! `sendmmsg(2)` in batches, received (when something listens) by one socket per flow with
//! `recvmmsg(2)`. One iperf3 flow tops out near 180 kpps here, too slow to show a probe's
//! cost; this goes as fast as the two CPUs allow, or at a fixed rate.
//!
//! Side effects: sockets in the given namespaces; traffic only between them.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::observe::in_netns;

/// 18 bytes of payload: 14 + 20 + 8 + 18 = 60 bytes, a 64-byte Ethernet frame with its FCS.
pub const PAYLOAD: usize = 18;
const BATCH: usize = 64;

/// What to send: `flows` flows from `from` (in namespace `from_ns`) to `to`, ports
/// `port`, `port + 1`, ...; `packets` in all; at `rate` packets a second in all, or as
/// fast as possible.
#[derive(Clone, Debug)]
pub struct Flood {
    pub from_ns: String,
    pub from: Ipv4Addr,
    pub to_ns: String,
    pub to: Ipv4Addr,
    pub port: u16,
    pub flows: usize,
    pub packets: u64,
    pub rate: Option<u64>,
    /// Whether receivers listen (else the datagrams are left to whatever drops them).
    pub receive: bool,
}

/// What a flood did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flooded {
    pub sent: u64,
    pub received: u64,
    /// From the first send to the last send returning.
    pub send_secs: f64,
    /// From the first send to the last datagram received.
    pub recv_secs: f64,
}

impl Flooded {
    /// Packets a second the senders handed to the kernel (each send also runs the receive
    /// path: veth delivers in the sender's softirq).
    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.send_secs
    }

    /// Packets a second delivered to the receivers' sockets.
    pub fn received_pps(&self) -> f64 {
        self.received as f64 / self.recv_secs
    }
}

fn set_int(fd: i32, level: i32, opt: i32, value: i32) {
    // SAFETY: a valid socket fd and a pointer to an int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {opt}: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends `n` datagrams on the connected `sock`, `BATCH` per `sendmmsg`; paced to `rate` a
/// second when given. Returns how many the kernel took.
fn send_flow(sock: &UdpSocket, n: u64, rate: Option<u64>) -> u64 {
    let payload = [0x5bu8; PAYLOAD];
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: PAYLOAD,
        })
        .collect();
    let mut msgs = headers(&mut iov);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let want = (n - sent).min(BATCH as u64) as u32;
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // SAFETY: `msgs` holds `want` initialised headers pointing at live buffers.
        let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), want, 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED) => continue,
                _ => panic!("sendmmsg: {e}"),
            }
        }
        sent += rc as u64;
    }
    sent
}

/// One `sendmmsg`/`recvmmsg` header per buffer of `iov`: no address, no control data.
fn headers(iov: &mut [libc::iovec]) -> Vec<libc::mmsghdr> {
    iov.iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; zeroed means no name and no control.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect()
}

/// Receives on `sock` until `stop` and a quiet 100 ms; (datagrams, when the last came).
fn receive_flow(sock: &UdpSocket, stop: &AtomicBool) -> (u64, Option<Instant>) {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut bufs = vec![[0u8; 64]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs = headers(&mut iov);
    let (mut got, mut last) = (0u64, None);
    loop {
        // SAFETY: `msgs` holds BATCH headers pointing at live buffers.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                // glibc declares the flags `c_int`, musl (the arm64 VM tests' build)
                // `c_uint`: let the target's declaration decide.
                libc::MSG_WAITFORONE as _,
                std::ptr::null_mut(),
            )
        };
        if rc > 0 {
            got += rc as u64;
            last = Some(Instant::now());
        } else if stop.load(Ordering::Relaxed) {
            return (got, last);
        }
    }
}

impl Flood {
    /// Runs the flood; returns once every sender is done and the receivers went quiet.
    pub fn run(&self) -> Flooded {
        let per_flow = self.packets / self.flows as u64;
        let receivers: Vec<UdpSocket> = if self.receive {
            (0..self.flows)
                .map(|i| {
                    in_netns(&self.to_ns, || {
                        let s = UdpSocket::bind((self.to, self.port + i as u16)).expect("bind");
                        // Room for a burst: the receivers share two CPUs with the senders.
                        set_int(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_RCVBUFFORCE,
                            8 << 20,
                        );
                        s
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let senders: Vec<UdpSocket> = (0..self.flows)
            .map(|i| {
                in_netns(&self.from_ns, || {
                    let s = UdpSocket::bind((self.from, 0)).expect("bind sender");
                    let to: SocketAddr = (self.to, self.port + i as u16).into();
                    s.connect(to).expect("connect");
                    s
                })
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let rate = self.rate.map(|r| r / self.flows as u64);
        std::thread::scope(|s| {
            let rx: Vec<_> = receivers
                .iter()
                .map(|sock| {
                    let stop = stop.clone();
                    s.spawn(move || receive_flow(sock, &stop))
                })
                .collect();
            let start = Instant::now();
            let tx: Vec<_> = senders
                .iter()
                .map(|sock| s.spawn(move || send_flow(sock, per_flow, rate)))
                .collect();
            let sent: u64 = tx.into_iter().map(|t| t.join().unwrap()).sum();
            let send_secs = start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let mut received = 0;
            let mut last = start;
            for r in rx {
                let (n, l) = r.join().unwrap();
                received += n;
                if let Some(l) = l {
                    last = last.max(l);
                }
            }
            Flooded {
                sent,
                received,
                send_secs,
                recv_secs: last.duration_since(start).as_secs_f64(),
            }
        })
    }
}
