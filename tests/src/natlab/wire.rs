//! Links with latency: each link is a pair of TAP devices, and one thread of the lab copies
//! every frame from one end to the other after a fixed delay, both ways (a veth pair that takes
//! its time).
//!
//! `tc qdisc … netem` would do this in the kernel, but kernels built without `sch_netem` (this
//! CI's among them) refuse it; a TAP device needs only `/dev/net/tun`.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsFd, AsRawFd},
    os::unix::fs::OpenOptionsExt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    libc,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

/// Frames waiting on one direction of a link; more are dropped, as a full router queue does.
const MAX_QUEUED: usize = 4096;
/// How long the thread sleeps at most before it looks at its stop flag again.
const TICK: Duration = Duration::from_millis(50);
/// Larger than any frame a TAP device without offloads hands out (MTU 1500 plus headers).
const MAX_FRAME: usize = 65_536;

/// Creates a TAP device named `name` in this process's network namespace; frames the kernel
/// sends through the device are read from the file, frames written to it arrive at the device.
/// The device lives as long as the file (move it to another namespace with `ip link set`).
pub(super) fn tap(name: &str) -> io::Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _union_rest: [u8; 22],
    }
    let file = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _union_rest: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!(
            "interface name {name:?} too long"
        )));
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq` lays out (name,
    // flags, the rest of the union); `req` outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// One link: its two ends, its delay, and the frames read from each end waiting to be written
/// to the other (`queued[i]` came from `ends[i]`), each with the time it is due.
struct Link {
    ends: [File; 2],
    delay: Duration,
    queued: [VecDeque<(Instant, Vec<u8>)>; 2],
}

/// The thread that carries the frames of every link of a lab; stopped (and its devices closed)
/// on drop.
pub(super) struct DelayLine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DelayLine {
    /// Carries the frames of `links` (each the two ends of a link, from [`tap`], and its delay
    /// each way).
    pub(super) fn start(links: Vec<([File; 2], Duration)>) -> io::Result<DelayLine> {
        let stop = Arc::new(AtomicBool::new(false));
        let links = links
            .into_iter()
            .map(|(ends, delay)| Link {
                ends,
                delay,
                queued: [VecDeque::new(), VecDeque::new()],
            })
            .collect();
        let thread = std::thread::Builder::new()
            .name("natlab-delay".into())
            .spawn({
                let stop = stop.clone();
                move || carry(links, &stop)
            })?;
        Ok(DelayLine {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread's loop: writes what is due, waits for frames or the next due time, reads.
fn carry(mut links: Vec<Link>, stop: &AtomicBool) {
    let mut buf = vec![0u8; MAX_FRAME];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut next_due = now + TICK;
        for link in &mut links {
            for from in 0..2 {
                while let Some((due, _)) = link.queued[from].front() {
                    if *due > now {
                        next_due = next_due.min(*due);
                        break;
                    }
                    if let Some((_, frame)) = link.queued[from].pop_front() {
                        // A frame the other end cannot take is lost, as on a real wire.
                        let _ = (&link.ends[1 - from]).write(&frame);
                    }
                }
            }
        }
        // Rounded up: waking before a frame is due would only spin.
        let wait = next_due.saturating_duration_since(now);
        let millis = wait.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::ZERO);
        let mut fds: Vec<PollFd<'_>> = links
            .iter()
            .flat_map(|l| &l.ends)
            .map(|end| PollFd::new(end.as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, timeout).is_err() {
            continue;
        }
        let readable: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let now = Instant::now();
        let mut cut = Vec::new();
        for (i, link) in links.iter_mut().enumerate() {
            for from in 0..2 {
                if !readable[2 * i + from] {
                    continue;
                }
                // Everything waiting now, so that one busy end cannot hold up the others long.
                loop {
                    match (&link.ends[from]).read(&mut buf) {
                        Ok(n) if n > 0 => {
                            if link.queued[from].len() < MAX_QUEUED {
                                link.queued[from].push_back((now + link.delay, buf[..n].to_vec()));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // The device is gone (its namespace was deleted): the link is cut, and
                        // polling it again would only spin.
                        Ok(_) | Err(_) => {
                            cut.push(i);
                            break;
                        }
                    }
                }
            }
        }
        cut.dedup();
        for i in cut.into_iter().rev() {
            links.swap_remove(i);
        }
    }
}
