//! The receiving side: [`Reception`] counts frames, losses (gaps in sequence numbers) and
//! RFC 3550 interarrival jitter; [`Recording`] writes the received samples to a WAV file whose
//! header is brought up to date by every [`Recording::flush`], so the file is valid at any time.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::frame::SAMPLE_RATE;

/// Longest recording: 2 hours (about 660 MiB); later samples are not written.
pub(crate) const MAX_RECORDING_SECONDS: u64 = 2 * 60 * 60;

/// Reception statistics of one call.
#[derive(Debug, Default)]
pub(crate) struct Reception {
    /// Sequence number of the first frame received.
    first_seq: Option<u64>,
    /// Highest sequence number received.
    highest_seq: u64,
    /// Frames received in order (each is recorded).
    received: u64,
    /// Frames that came at or below the highest sequence number (duplicates, late): dropped.
    late: u64,
    /// Relative transit time of the previous frame, in samples.
    last_transit: Option<f64>,
    /// RFC 3550 interarrival jitter estimate, in samples.
    jitter: f64,
}

impl Reception {
    /// Counts a frame that arrived at `arrival` (in samples, on the receiver's clock, from any
    /// fixed origin). Returns whether it is new and in order, so to be recorded.
    pub(crate) fn record(&mut self, seq: u64, sample_index: u64, arrival: f64) -> bool {
        match self.first_seq {
            None => self.first_seq = Some(seq),
            Some(_) if seq <= self.highest_seq => {
                self.late += 1;
                return false;
            }
            Some(_) => {}
        }
        self.highest_seq = seq;
        self.received += 1;
        // RFC 3550 §6.4.1: D = (Rj - Ri) - (Sj - Si); J += (|D| - J) / 16.
        let transit = arrival - sample_index as f64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        true
    }

    /// Frames received and recorded.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Frames missing: the gaps in sequence numbers up to the highest received.
    pub(crate) fn lost(&self) -> u64 {
        match self.first_seq {
            Some(first) => (self.highest_seq - first + 1).saturating_sub(self.received),
            None => 0,
        }
    }

    /// Frames dropped for coming late or twice.
    #[cfg(test)]
    pub(crate) fn late(&self) -> u64 {
        self.late
    }

    /// The interarrival jitter in milliseconds.
    pub(crate) fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(SAMPLE_RATE)
    }
}

/// A WAV file (48 kHz mono 16-bit) being written.
pub(crate) struct Recording {
    writer: hound::WavWriter<BufWriter<File>>,
    path: PathBuf,
    /// Samples that may still be written.
    room: u64,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Recording {
    /// Creates (or truncates) the file and writes a valid header at once.
    pub(crate) fn create(path: &Path) -> Result<Recording, String> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let fail = |err: hound::Error| format!("cannot write {}: {err}", path.display());
        let mut writer = hound::WavWriter::create(path, spec).map_err(fail)?;
        writer.flush().map_err(fail)?;
        Ok(Recording {
            writer,
            path: path.to_path_buf(),
            room: MAX_RECORDING_SECONDS * u64::from(SAMPLE_RATE),
        })
    }

    /// Where it is written.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends samples (buffered). `Ok(false)`: the recording is full (see
    /// [`MAX_RECORDING_SECONDS`]) and they were not all written.
    pub(crate) fn write(&mut self, samples: &[i16]) -> Result<bool, String> {
        let fits = usize::try_from(self.room).map_or(samples.len(), |room| room.min(samples.len()));
        for sample in &samples[..fits] {
            if let Err(err) = self.writer.write_sample(*sample) {
                return Err(self.error(err));
            }
        }
        self.room -= fits as u64;
        Ok(fits == samples.len())
    }

    /// Writes out what is buffered and updates the header: the file is valid as it stands.
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        self.writer.flush().map_err(|err| self.error(err))
    }

    /// Completes the file.
    pub(crate) fn finish(self) -> Result<PathBuf, String> {
        let Recording { writer, path, .. } = self;
        writer
            .finalize()
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        Ok(path)
    }

    fn error(&self, err: hound::Error) -> String {
        format!("cannot write {}: {err}", self.path.display())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Samples per 20 ms frame.
    const F: u64 = 960;

    #[test]
    fn in_order_frames_on_time_have_no_loss_and_no_jitter() {
        let mut r = Reception::default();
        for seq in 0..50 {
            // Arrival 1234 samples after sending, always.
            assert!(r.record(seq, seq * F, (seq * F + 1234) as f64));
        }
        assert_eq!(r.received(), 50);
        assert_eq!(r.lost(), 0);
        assert_eq!(r.jitter_ms(), 0.0);
    }

    #[test]
    fn gaps_count_as_lost_and_late_frames_are_dropped() {
        let mut r = Reception::default();
        for seq in [10, 11, 14, 15, 20] {
            assert!(r.record(seq, seq * F, (seq * F) as f64));
        }
        assert_eq!(r.received(), 5);
        assert_eq!(r.lost(), 2 + 4);
        assert!(!r.record(12, 12 * F, 0.0), "late");
        assert!(!r.record(20, 20 * F, 0.0), "duplicate");
        assert_eq!(r.late(), 2);
        assert_eq!(r.received(), 5);
        assert_eq!(r.lost(), 6);
        assert_eq!(Reception::default().lost(), 0);
    }

    #[test]
    fn jitter_follows_rfc_3550() {
        let mut r = Reception::default();
        // Frames alternately 0 and 48 samples (1 ms) late: |D| = 48 from the second on.
        let mut expected = 0.0;
        for seq in 0..40u64 {
            let delay = if seq % 2 == 0 { 0 } else { 48 };
            r.record(seq, seq * F, (seq * F + delay) as f64);
            if seq > 0 {
                expected += (48.0 - expected) / 16.0;
            }
        }
        let ms = r.jitter_ms();
        assert!((ms - expected / 48.0).abs() < 1e-9, "{ms}");
        // It converges towards 1 ms.
        assert!(ms > 0.9 && ms < 1.0, "{ms}");
    }

    #[test]
    fn jitter_of_one_late_frame() {
        let mut r = Reception::default();
        r.record(0, 0, 0.0);
        r.record(1, F, (F + 480) as f64); // 10 ms late: J = 480 / 16 = 30 samples
        assert!((r.jitter_ms() - 30.0 / 48.0).abs() < 1e-9);
        r.record(2, 2 * F, (2 * F) as f64); // back on time: D = 480 again
        let j = 30.0 + (480.0 - 30.0) / 16.0;
        assert!((r.jitter_ms() - j / 48.0).abs() < 1e-9);
    }

    #[test]
    fn recordings_are_valid_wav_files_at_every_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("call.wav");
        let mut rec = Recording::create(&path).unwrap();
        assert_eq!(rec.path(), path);
        assert_eq!(hound::WavReader::open(&path).unwrap().duration(), 0);

        let first: Vec<i16> = (0..960).map(|i| (i * 31 % 65536 - 32768) as i16).collect();
        rec.write(&first).unwrap();
        rec.flush().unwrap();
        let reader = hound::WavReader::open(&path).unwrap();
        let spec = reader.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (1, 48_000, 16)
        );
        let read: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
        assert_eq!(read, first);

        assert!(rec.write(&[7; 960]).unwrap());
        assert_eq!(rec.finish().unwrap(), path);
        let read: Vec<i16> = hound::WavReader::open(&path)
            .unwrap()
            .into_samples()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read.len(), 1920);
        assert_eq!(&read[..960], &first[..]);
        assert!(read[960..].iter().all(|s| *s == 7));
    }

    #[test]
    fn a_full_recording_takes_no_more_samples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.wav");
        let mut rec = Recording::create(&path).unwrap();
        rec.room = 1000;
        assert!(rec.write(&[1; 960]).unwrap());
        assert!(!rec.write(&[2; 960]).unwrap(), "only 40 fit");
        assert!(!rec.write(&[3; 960]).unwrap());
        rec.finish().unwrap();
        let read: Vec<i16> = hound::WavReader::open(&path)
            .unwrap()
            .into_samples()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read.len(), 1000);
        assert!(read[960..].iter().all(|s| *s == 2));
    }

    #[test]
    fn unwritable_paths_are_one_line_errors() {
        let err = Recording::create(Path::new("/nonexistent-dir/x.wav")).unwrap_err();
        assert!(
            err.starts_with("cannot write /nonexistent-dir/x.wav: "),
            "{err}"
        );
    }
}
