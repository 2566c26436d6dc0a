//! Helper output: a ring of the last lines per helper, the tasks that read a process's stdout
//! and stderr into it line by line (bounded), and the tasks that serve `Logs` readers.
//!
//! The ring sits behind its own small mutex, shared by the readers of the helper's current
//! process and the `Logs` calls; the helper table itself stays with the actor. Subscribing to
//! new lines happens under the same lock as copying the kept ones, so a follower sees every
//! line once, in order.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use p2pos_kernel::events::now_ms;
use p2pos_proto::tasks::v1::{LogLine, LogStream};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt},
    sync::{OwnedSemaphorePermit, broadcast, mpsc},
};

/// Lines kept per helper.
pub const MAX_LINES: usize = 1000;
/// Longest line kept, in bytes; the rest of a longer line is skipped up to its newline.
pub const MAX_LINE_BYTES: usize = 4096;
/// Most bytes of text kept per helper (so 512 helpers cannot hold 2 GiB of output).
pub const MAX_RING_BYTES: usize = 256 * 1024;
/// Lines a follower may fall behind before it misses some.
pub const FOLLOW_BUFFER: usize = 256;
/// The buffer of the channel that answers a `Logs` call.
pub const LOGS_CHANNEL: usize = 64;

/// The kept output of one helper, across restarts.
#[derive(Debug)]
pub(crate) struct LogRing {
    lines: VecDeque<LogLine>,
    /// Bytes of text in `lines`, kept under [`MAX_RING_BYTES`].
    bytes: usize,
    next_seq: u64,
    /// `None` once the helper is removed: followers then end.
    followers: Option<broadcast::Sender<LogLine>>,
}

/// A ring shared by the readers and the `Logs` calls.
pub(crate) type SharedLog = Arc<Mutex<LogRing>>;

impl LogRing {
    /// An empty ring.
    pub(crate) fn shared() -> SharedLog {
        let (tx, _) = broadcast::channel(FOLLOW_BUFFER);
        Arc::new(Mutex::new(LogRing {
            lines: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            followers: Some(tx),
        }))
    }

    /// Adds a line (cut at [`MAX_LINE_BYTES`], invalid UTF-8 replaced).
    pub(crate) fn push(&mut self, stream: LogStream, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(MAX_LINE_BYTES)];
        let line = LogLine {
            seq: self.next_seq,
            at_ms: now_ms(),
            stream: stream as i32,
            text: String::from_utf8_lossy(bytes).into_owned(),
        };
        self.next_seq += 1;
        if let Some(tx) = &self.followers {
            let _ = tx.send(line.clone());
        }
        self.bytes += line.text.len();
        self.lines.push_back(line);
        while self.lines.len() > MAX_LINES || self.bytes > MAX_RING_BYTES {
            let Some(oldest) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= oldest.text.len();
        }
    }

    /// Ends every follower (the helper is removed).
    pub(crate) fn close(&mut self) {
        self.followers = None;
    }

    /// The last `tail` kept lines (0: all), and new ones if `follow`.
    fn snapshot(
        &self,
        tail: usize,
        follow: bool,
    ) -> (Vec<LogLine>, Option<broadcast::Receiver<LogLine>>) {
        let skip = match tail {
            0 => 0,
            n => self.lines.len().saturating_sub(n),
        };
        let kept = self.lines.iter().skip(skip).cloned().collect();
        let rx = if follow {
            self.followers.as_ref().map(broadcast::Sender::subscribe)
        } else {
            None
        };
        (kept, rx)
    }
}

fn lock(log: &SharedLog) -> MutexGuard<'_, LogRing> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `reader` line by line into `log` until end of file (or a read error). At most
/// [`MAX_LINE_BYTES`] of a line are buffered; the rest is skipped up to the newline.
pub(crate) async fn read_lines<R: AsyncBufRead + Unpin>(
    mut reader: R,
    stream: LogStream,
    log: SharedLog,
) {
    let mut line = Vec::with_capacity(256);
    let mut skipping = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let room = MAX_LINE_BYTES - line.len();
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => {
                if !skipping {
                    line.extend_from_slice(&buf[..end.min(room)]);
                    lock(&log).push(stream, &line);
                }
                line.clear();
                skipping = false;
                reader.consume(end + 1);
            }
            None => {
                let len = buf.len();
                if !skipping {
                    line.extend_from_slice(&buf[..len.min(room)]);
                    if line.len() == MAX_LINE_BYTES {
                        lock(&log).push(stream, &line);
                        line.clear();
                        skipping = true;
                    }
                }
                reader.consume(len);
            }
        }
    }
    if !line.is_empty() {
        lock(&log).push(stream, &line);
    }
}

/// Answers a `Logs` call: the kept lines (the last `tail`, 0: all), then with `follow` new
/// lines until the receiver is dropped or the helper is removed. A follower that falls more
/// than [`FOLLOW_BUFFER`] lines behind gets a line saying how many it missed. `permit` bounds
/// the number of these tasks.
pub(crate) fn serve(
    log: &SharedLog,
    tail: u32,
    follow: bool,
    permit: OwnedSemaphorePermit,
) -> mpsc::Receiver<LogLine> {
    let (kept, followers) = lock(log).snapshot(usize::try_from(tail).unwrap_or(0), follow);
    let (tx, rx) = mpsc::channel(LOGS_CHANNEL);
    tokio::spawn(async move {
        let _permit = permit;
        for line in kept {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let Some(mut followers) = followers else {
            return;
        };
        loop {
            let line = tokio::select! {
                () = tx.closed() => return,
                next = followers.recv() => match next {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Closed) => return,
                    Err(broadcast::error::RecvError::Lagged(n)) => LogLine {
                        seq: 0,
                        at_ms: now_ms(),
                        stream: LogStream::Unspecified as i32,
                        text: format!("[p2posd: {n} lines skipped]"),
                    },
                },
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    fn texts(log: &SharedLog) -> Vec<String> {
        lock(log).lines.iter().map(|l| l.text.clone()).collect()
    }

    #[test]
    fn the_ring_keeps_the_last_lines_with_growing_seqs() {
        let log = LogRing::shared();
        for i in 0..MAX_LINES + 5 {
            lock(&log).push(LogStream::Stdout, format!("line {i}").as_bytes());
        }
        let ring = lock(&log);
        assert_eq!(ring.lines.len(), MAX_LINES);
        assert_eq!(ring.lines[0].text, "line 5");
        assert_eq!(ring.lines[0].seq, 6);
        assert_eq!(ring.lines[MAX_LINES - 1].seq, (MAX_LINES + 5) as u64);
        let (tail, _) = ring.snapshot(2, false);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].text, format!("line {}", MAX_LINES + 4));
        assert_eq!(ring.snapshot(0, false).0.len(), MAX_LINES);
        assert_eq!(ring.snapshot(5000, false).0.len(), MAX_LINES);
    }

    #[test]
    fn long_lines_are_kept_within_the_byte_budget() {
        let log = LogRing::shared();
        let long = vec![b'x'; MAX_LINE_BYTES];
        for _ in 0..MAX_LINES {
            lock(&log).push(LogStream::Stdout, &long);
        }
        let ring = lock(&log);
        assert_eq!(ring.lines.len(), MAX_RING_BYTES / MAX_LINE_BYTES);
        assert!(ring.bytes <= MAX_RING_BYTES);
        assert_eq!(ring.lines.back().map(|l| l.seq), Some(MAX_LINES as u64));
    }

    #[tokio::test]
    async fn lines_are_split_cut_and_made_valid() {
        let log = LogRing::shared();
        let mut input = b"hi\n\nbad \xff utf8\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 100));
        input.extend(b"\nafter\nno newline");
        // A tiny buffer makes every path of the reader run.
        let reader = tokio::io::BufReader::with_capacity(7, &input[..]);
        read_lines(reader, LogStream::Stderr, log.clone()).await;
        let got = texts(&log);
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(got[0], "hi");
        assert_eq!(got[1], "");
        assert_eq!(got[2], "bad \u{fffd} utf8");
        assert_eq!(got[3], "x".repeat(MAX_LINE_BYTES));
        assert_eq!(got[4], "after");
        assert_eq!(got[5], "no newline");
        assert_eq!(lock(&log).lines[0].stream, LogStream::Stderr as i32);
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_kept_whole() {
        let log = LogRing::shared();
        let mut input = vec![b'y'; MAX_LINE_BYTES];
        input.extend(b"\nnext\n");
        read_lines(&input[..], LogStream::Stdout, log.clone()).await;
        assert_eq!(texts(&log), vec!["y".repeat(MAX_LINE_BYTES), "next".into()]);
    }

    async fn recv(rx: &mut mpsc::Receiver<LogLine>) -> Option<LogLine> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a line or the end in time")
    }

    #[tokio::test]
    async fn followers_get_kept_then_new_lines_until_removal() {
        let log = LogRing::shared();
        let permits = Arc::new(Semaphore::new(1));
        lock(&log).push(LogStream::Stdout, b"one");
        lock(&log).push(LogStream::Stdout, b"two");
        let permit = permits.clone().try_acquire_owned().unwrap();
        let mut rx = serve(&log, 1, true, permit);
        assert!(permits.clone().try_acquire_owned().is_err(), "bounded");
        assert_eq!(recv(&mut rx).await.unwrap().text, "two");
        lock(&log).push(LogStream::Stdout, b"three");
        let line = recv(&mut rx).await.unwrap();
        assert_eq!((line.text.as_str(), line.seq), ("three", 3));
        lock(&log).close();
        assert!(
            recv(&mut rx).await.is_none(),
            "ends when the helper is removed"
        );

        let permit = permits.clone().try_acquire_owned().unwrap();
        let mut rx = serve(&log, 0, false, permit);
        let all: Vec<_> = [
            recv(&mut rx).await,
            recv(&mut rx).await,
            recv(&mut rx).await,
        ]
        .into_iter()
        .map(|l| l.unwrap().text)
        .collect();
        assert_eq!(all, ["one", "two", "three"]);
        assert!(recv(&mut rx).await.is_none(), "without follow it ends");
    }

    #[tokio::test]
    async fn a_lagging_follower_is_told_what_it_missed() {
        let log = LogRing::shared();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let mut rx = serve(&log, 0, true, permit);
        // The follower subscribed before `serve` returned; it falls behind at once.
        for i in 0..(LOGS_CHANNEL + FOLLOW_BUFFER + 100) {
            lock(&log).push(LogStream::Stdout, format!("l{i}").as_bytes());
        }
        let mut skipped = None;
        while let Some(line) = recv(&mut rx).await {
            if line.text.starts_with("[p2posd: ") {
                skipped = Some(line.text);
                break;
            }
        }
        let skipped = skipped.expect("a skipped-lines notice");
        assert!(skipped.ends_with(" lines skipped]"), "{skipped}");
    }
}
