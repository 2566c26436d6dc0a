//! What the plug-in sends: an endless sine tone, or a WAV file once (read and checked before
//! the call, padded with silence to whole frames).

use std::f64::consts::TAU;
use std::path::Path;

use crate::frame::{FRAME_SAMPLES, SAMPLE_RATE};

/// Longest WAV file sent: 10 minutes (about 55 MiB of samples in memory).
pub(crate) const MAX_CLIP_SECONDS: u32 = 600;
/// Peak of the tone: a quarter of full scale.
const TONE_AMPLITUDE: f64 = 0.25 * i16::MAX as f64;

/// A source of 20 ms frames.
#[derive(Debug)]
pub(crate) enum Source {
    /// A sine tone that never ends.
    Tone {
        /// Phase advance per sample, in radians.
        step: f64,
        /// Current phase, in radians.
        phase: f64,
    },
    /// Samples sent once.
    Clip {
        samples: Vec<i16>,
        /// Next sample to send.
        at: usize,
    },
}

impl Source {
    /// A sine tone of `hz` (0 gives silence).
    pub(crate) fn tone(hz: f64) -> Source {
        Source::Tone {
            step: TAU * hz / f64::from(SAMPLE_RATE),
            phase: 0.0,
        }
    }

    /// `samples` once, the last frame padded with zeros.
    pub(crate) fn clip(samples: Vec<i16>) -> Source {
        Source::Clip { samples, at: 0 }
    }

    /// The next frame's [`FRAME_SAMPLES`] samples; `None` once a clip is over.
    pub(crate) fn next_frame(&mut self) -> Option<Vec<i16>> {
        match self {
            Source::Tone { step, phase } => {
                let frame = (0..FRAME_SAMPLES)
                    .map(|_| {
                        let sample = (TONE_AMPLITUDE * phase.sin()).round() as i16;
                        *phase = (*phase + *step) % TAU;
                        sample
                    })
                    .collect();
                Some(frame)
            }
            Source::Clip { samples, at } => {
                if *at >= samples.len() {
                    return None;
                }
                let end = (*at + FRAME_SAMPLES).min(samples.len());
                let mut frame = samples[*at..end].to_vec();
                frame.resize(FRAME_SAMPLES, 0);
                *at = end;
                Some(frame)
            }
        }
    }
}

/// Reads a 48 kHz mono 16-bit integer PCM WAV file of at most [`MAX_CLIP_SECONDS`]; any other
/// file gives a one-line reason.
pub(crate) fn load_wav(path: &Path) -> Result<Vec<i16>, String> {
    let shown = path.display();
    let reader =
        hound::WavReader::open(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    let spec = reader.spec();
    let wanted = spec.channels == 1
        && spec.sample_rate == SAMPLE_RATE
        && spec.bits_per_sample == 16
        && spec.sample_format == hound::SampleFormat::Int;
    if !wanted {
        let format = match spec.sample_format {
            hound::SampleFormat::Int => "PCM",
            hound::SampleFormat::Float => "float",
        };
        return Err(format!(
            "{shown} is {} Hz, {} channel(s), {}-bit {format}: expected 48000 Hz mono 16-bit PCM",
            spec.sample_rate, spec.channels, spec.bits_per_sample
        ));
    }
    let max = u64::from(MAX_CLIP_SECONDS) * u64::from(SAMPLE_RATE);
    if u64::from(reader.duration()) > max {
        return Err(format!(
            "{shown} is longer than {MAX_CLIP_SECONDS} s, the most this plug-in sends"
        ));
    }
    reader
        .into_samples::<i16>()
        .collect::<Result<Vec<i16>, _>>()
        .map_err(|err| format!("cannot read {shown}: {err}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write_wav(path: &Path, spec: hound::WavSpec, samples: &[i16]) {
        let mut writer = hound::WavWriter::create(path, spec).unwrap();
        for s in samples {
            writer.write_sample(*s).unwrap();
        }
        writer.finalize().unwrap();
    }

    fn pcm(rate: u32, channels: u16) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        }
    }

    #[test]
    fn clips_are_sent_once_in_whole_frames() {
        let samples: Vec<i16> = (0..2000).map(|i| i as i16).collect();
        let mut source = Source::clip(samples.clone());
        let a = source.next_frame().unwrap();
        let b = source.next_frame().unwrap();
        let c = source.next_frame().unwrap();
        assert_eq!(source.next_frame(), None);
        assert_eq!(source.next_frame(), None);
        assert_eq!(&a[..], &samples[..960]);
        assert_eq!(&b[..], &samples[960..1920]);
        assert_eq!(&c[..80], &samples[1920..]);
        assert!(c[80..].iter().all(|s| *s == 0));
        assert_eq!(c.len(), FRAME_SAMPLES);
        assert_eq!(Source::clip(Vec::new()).next_frame(), None);
    }

    #[test]
    fn tone_is_continuous_across_frames() {
        let mut source = Source::tone(1000.0);
        let a = source.next_frame().unwrap();
        let b = source.next_frame().unwrap();
        assert_eq!(a.len(), FRAME_SAMPLES);
        assert_eq!(a[0], 0);
        // 1 kHz at 48 kHz: 48 samples per period, so 960 samples are 20 whole periods.
        assert_eq!(a, b);
        let peak = a.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((8000..=8200).contains(&peak), "peak {peak}");
    }

    #[test]
    fn loads_48k_mono_16_bit_files_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.wav");
        write_wav(&good, pcm(48_000, 1), &[1, -2, 3]);
        assert_eq!(load_wav(&good).unwrap(), vec![1, -2, 3]);

        let stereo = dir.path().join("stereo.wav");
        write_wav(&stereo, pcm(48_000, 2), &[1, 2]);
        let err = load_wav(&stereo).unwrap_err();
        assert!(err.contains("2 channel(s)"), "{err}");
        assert!(err.contains("expected 48000 Hz mono 16-bit PCM"), "{err}");

        let slow = dir.path().join("slow.wav");
        write_wav(&slow, pcm(44_100, 1), &[1]);
        assert!(load_wav(&slow).unwrap_err().contains("44100 Hz"));

        let missing = load_wav(&dir.path().join("none.wav")).unwrap_err();
        assert!(missing.starts_with("cannot read "), "{missing}");
        assert!(!missing.contains('\n'));

        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"not a wav file").unwrap();
        assert!(load_wav(&junk).unwrap_err().starts_with("cannot read "));
    }
}
