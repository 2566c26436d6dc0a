//! The call's media: the voice channel opening (the recording starts), one paced audio frame
//! out, one audio frame in (counted and recorded), and the stats reports to the app.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Flow, Phase, Plugin};
use crate::control::{Report, Stats};
use crate::frame::{FRAME_DURATION, FRAME_SAMPLES, Frame, SAMPLE_RATE};
use crate::recorder::{MAX_RECORDING_SECONDS, Recording};

impl Plugin {
    pub(super) fn voice_opened(&mut self, peer_id: &str, input: mpsc::Sender<Bytes>) -> Flow {
        if !matches!(self.phase, Phase::Connecting) {
            // Dropping `input` closes it.
            return Flow::Go;
        }
        println!("voice channel open with {peer_id}");
        let path = match &self.out {
            Some(out) => self.dir.join(out),
            None => self.dir.join(format!(
                "call-{}-{}.wav",
                short(peer_id),
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default()
            )),
        };
        match Recording::create(&path) {
            Ok(recording) => self.recording = Some(recording),
            Err(reason) => {
                return Flow::End {
                    reason,
                    failed: true,
                };
            }
        }
        self.phase = Phase::Live;
        self.deadline = None;
        self.voice = Some(input);
        self.clock = Instant::now();
        let mut pace = tokio::time::interval(FRAME_DURATION);
        // Catch up after a stall: the receiver sees it as jitter, and nothing is skipped.
        pace.set_missed_tick_behavior(MissedTickBehavior::Burst);
        self.pace = Some(pace);
        self.report_stats()
    }

    pub(super) fn send_frame(&mut self) -> Flow {
        let Some(voice) = &self.voice else {
            self.pace = None;
            return Flow::Go;
        };
        let Some(samples) = self.source.next_frame() else {
            // A clip is over: the call goes on without sending.
            self.pace = None;
            return Flow::Go;
        };
        let frame = Frame {
            seq: self.seq,
            sample_index: self.seq * FRAME_SAMPLES as u64,
            sent_at_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or_default(),
            samples,
        };
        self.seq += 1;
        match voice.try_send(Bytes::from(frame.encode())) {
            Ok(()) => self.sent += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.pace = None,
        }
        Flow::Go
    }

    pub(super) fn audio(&mut self, data: &[u8]) -> Flow {
        let frame = match Frame::decode(data) {
            Ok(frame) => frame,
            Err(bad) => {
                self.bad_frames += 1;
                if self.bad_frames == 1 {
                    let message = format!("ignored a bad audio frame: {bad}");
                    self.report(Report::Error { message });
                }
                return Flow::Go;
            }
        };
        let arrival = self.clock.elapsed().as_secs_f64() * f64::from(SAMPLE_RATE);
        if !self
            .reception
            .record(frame.seq, frame.sample_index, arrival)
        {
            return Flow::Go;
        }
        let Some(recording) = &mut self.recording else {
            return Flow::Go;
        };
        match recording.write(&frame.samples) {
            Ok(true) => {}
            Ok(false) => {
                if !self.recording_full {
                    self.recording_full = true;
                    let message = format!(
                        "the recording is full ({MAX_RECORDING_SECONDS} s); the rest of the call is not recorded"
                    );
                    self.report(Report::Error { message });
                }
            }
            Err(reason) => {
                return Flow::End {
                    reason,
                    failed: true,
                };
            }
        }
        Flow::Go
    }

    /// Brings the WAV header up to date and sends the counters (while the voice channel is up).
    pub(super) fn report_stats(&mut self) -> Flow {
        if !matches!(self.phase, Phase::Live | Phase::Ending { .. }) {
            return Flow::Go;
        }
        if let Some(recording) = &mut self.recording
            && let Err(reason) = recording.flush()
        {
            return Flow::End {
                reason,
                failed: true,
            };
        }
        self.report(Report::Stats(self.stats(false)));
        Flow::Go
    }

    pub(super) fn stats(&self, last: bool) -> Stats {
        Stats {
            peer: self.peer.clone().unwrap_or_default(),
            sent: self.sent,
            received: self.reception.received(),
            lost: self.reception.lost(),
            jitter_ms: self.reception.jitter_ms(),
            wav: self
                .recording
                .as_ref()
                .map(|r| r.path().display().to_string()),
            last,
        }
    }

    /// Queues a report for the app; dropped if the app is gone or not reading.
    pub(super) fn report(&self, report: Report) {
        if let Some(control) = &self.control {
            let _ = control.try_send(Bytes::from(report.encode()));
        }
    }
}

/// The last 8 characters of a peer id (what the chat shows).
fn short(peer_id: &str) -> &str {
    match peer_id.char_indices().rev().nth(7) {
        Some((at, _)) => &peer_id[at..],
        None => peer_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_peer_ids_are_the_last_8_characters() {
        assert_eq!(short("12D3KooWAbCdEfGh"), "AbCdEfGh");
        assert_eq!(short("abc"), "abc");
    }
}
