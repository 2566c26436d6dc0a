//! Voice calls between two chats through their `p2p-voice` plug-ins, all real processes: A's
//! chat calls B's, A's plug-in streams a known WAV file, and B's recording must hold exactly
//! its samples; after the hang-up both plug-ins are stopped. Also: a call without the plug-in
//! installed, and the plug-in run by hand.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use p2pos_proto::tasks::v1::{HelperState, ListHelpersRequest};
use p2pos_tests::{Chat, Node, bin, p2pctl, wait_for};

const T: Duration = Duration::from_secs(30);
/// Frames in the WAV file sent (20 ms each).
const FRAMES: usize = 50;
const FRAME_SAMPLES: usize = 960;

/// The last 8 characters of a peer id, as the chat shows it.
fn short(peer_id: &str) -> &str {
    &peer_id[peer_id.len() - 8..]
}

/// A deterministic full-range pseudo-random signal over a slow ramp.
fn test_signal(len: usize) -> Vec<i16> {
    let mut state: u32 = 0x2545_f491;
    (0..len)
        .map(|i| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (state >> 16) as i16;
            noise.wrapping_add((i % 4096) as i16)
        })
        .collect()
}

/// Writes 48 kHz mono 16-bit PCM.
fn write_wav(path: &Path, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + samples.len() * 2);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&48_000u32.to_le_bytes());
    bytes.extend_from_slice(&96_000u32.to_le_bytes()); // bytes per second
    bytes.extend_from_slice(&2u16.to_le_bytes()); // block align
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write the WAV file");
}

/// Reads a 48 kHz mono 16-bit PCM WAV file's samples, checking its format chunk.
fn read_wav(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).expect("read the recording");
    assert!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut at = 12;
    let mut format_ok = false;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32_at(at + 4) as usize;
        let body = at + 8;
        assert!(body + len <= bytes.len(), "chunk past the end of the file");
        if id == b"fmt " {
            let (format, channels, rate, bits) = (
                u16_at(body),
                u16_at(body + 2),
                u32_at(body + 4),
                u16_at(body + 14),
            );
            assert_eq!((format, channels, rate, bits), (1, 1, 48_000, 16));
            format_ok = true;
        } else if id == b"data" {
            assert!(format_ok, "data before fmt");
            return bytes[body..body + len]
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                .collect();
        }
        at = body + len + len % 2;
    }
    panic!("{} has no data chunk", path.display());
}

/// Waits until the node's `chat` / `voice` helper exists and is not running (nor stopping).
async fn voice_helper_stopped(node: &mut Node, what: &str) {
    let client = node.client().await;
    wait_for(what, T, || {
        let client = client.clone();
        async move {
            let helpers = client
                .tasks()
                .list_helpers(ListHelpersRequest {
                    app_id: String::new(),
                })
                .await
                .ok()?
                .into_inner()
                .helpers;
            let voice = helpers.iter().find(|h| {
                h.spec
                    .as_ref()
                    .is_some_and(|s| s.app_id == "chat" && s.name == "voice")
            })?;
            let running = [HelperState::Running as i32, HelperState::Stopping as i32];
            (!running.contains(&voice.state)).then_some(())
        }
    })
    .await;
}

/// A and B, A connected to B, and both chats connected.
async fn two_chats(a: &mut Node, b: &mut Node, a_args: &[&str]) -> (Chat, Chat, String, String) {
    let b_ticket = b.ticket().await;
    let a_id = a.peer_id().await;
    let b_id = b.peer_id().await;
    let (ok, out, err) = p2pctl(a, &["dial", &b_ticket]);
    assert!(ok, "A dials B: {out}{err}");
    let mut chat_b = Chat::start(b, None);
    chat_b.expect_line("* waiting for a chat", T);
    let mut chat_a = Chat::start_with_args(a, Some(&b_id), a_args);
    chat_a.expect_line(&format!("* connected to {b_id}"), T);
    chat_b.expect_line(&format!("* connected to {a_id}"), T);
    (chat_a, chat_b, a_id, b_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_carries_a_wav_file_sample_exact_and_both_plug_ins_stop_after_hangup() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    a.install_plugin("p2p-voice");
    b.install_plugin("p2p-voice");
    let dir = tempfile::tempdir().expect("temp dir");
    let sent = dir.path().join("sent.wav");
    let samples = test_signal(FRAMES * FRAME_SAMPLES);
    write_wav(&sent, &samples);
    let sent_arg = sent.display().to_string();
    let (mut chat_a, mut chat_b, a_id, b_id) =
        two_chats(&mut a, &mut b, &["--call-audio", &sent_arg]).await;

    chat_a.type_line("/call");
    chat_a.expect_line(&format!("* calling {}", short(&b_id)), T);
    chat_b.expect_line(&format!("* incoming call from {}", short(&a_id)), T);
    let line = chat_b.expect_line(&format!("received {FRAMES} frames"), T);
    assert!(line.contains(", lost 0, "), "{line}");
    let (_, recording) = line
        .split_once(", recording ")
        .unwrap_or_else(|| panic!("no recording in {line:?}"));
    let recording = Path::new(recording).to_path_buf();
    chat_a.expect_line(&format!("* voice: sent {FRAMES} frames"), T);

    chat_a.type_line("/hangup");
    chat_a.expect_line("* call ended", T);
    chat_b.expect_line("* call ended", T);

    let received = read_wav(&recording);
    assert_eq!(received.len(), samples.len(), "sample count");
    let first_difference = received.iter().zip(&samples).position(|(r, s)| r != s);
    assert_eq!(
        first_difference, None,
        "the recording differs from the file"
    );

    voice_helper_stopped(&mut a, "A's voice plug-in to stop").await;
    voice_helper_stopped(&mut b, "B's voice plug-in to stop").await;

    // The chat goes on after the call.
    chat_a.type_line("still there?");
    chat_b.expect_line("still there?", T);
}

#[tokio::test(flavor = "multi_thread")]
async fn calling_without_the_plug_in_says_why_and_the_chat_goes_on() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let (mut chat_a, mut chat_b, _, _) = two_chats(&mut a, &mut b, &[]).await;
    chat_a.type_line("/call");
    let line = chat_a.expect_line("* cannot call: ", T);
    assert!(line.contains("not found"), "{line}");
    chat_a.type_line("hello anyway");
    chat_b.expect_line("hello anyway", T);
    chat_b.type_line("/hangup");
    chat_b.expect_line("* no call to hang up", T);
}

#[test]
fn the_plug_in_run_by_hand_says_what_is_missing_in_one_line() {
    let out = Command::new(bin("p2p-voice"))
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run p2p-voice");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: P2POS_APP_ID is not set"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // A WAV file in another format is refused before anything else.
    let dir = tempfile::tempdir().expect("temp dir");
    let wav = dir.path().join("cd.wav");
    write_wav(&wav, &[0; 10]);
    let mut bytes = std::fs::read(&wav).expect("read");
    bytes[24..28].copy_from_slice(&44_100u32.to_le_bytes());
    bytes[28..32].copy_from_slice(&88_200u32.to_le_bytes());
    std::fs::write(&wav, bytes).expect("write");
    let out = Command::new(bin("p2p-voice"))
        .env_clear()
        .env("P2POS_APP_ID", "chat:voice")
        .env("P2POS_GATEWAY", "unix:/nonexistent/gateway.sock")
        .env("P2POS_HELPER_DIR", dir.path())
        .arg("--wav")
        .arg(&wav)
        .stdin(Stdio::null())
        .output()
        .expect("run p2p-voice");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("44100 Hz"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
