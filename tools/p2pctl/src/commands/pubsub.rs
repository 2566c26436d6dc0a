//! `groups publish` and `groups watch`: group pubsub (`Groups.Publish`, `Groups.Subscribe`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::{BASE64, HEXLOWER};
use p2pos_client::{Client, describe_status};
use p2pos_proto::group::v1::{PublishReply, PublishRequest, SubscribeRequest, TopicMessage};
use serde_json::{Value, json};

use super::{RpcResult, duration, payload};
use crate::{
    cli::{PublishArgs, WatchArgs},
    output,
};

/// The longest `--report` (the node's limit).
const MAX_REPORT: Duration = Duration::from_secs(60);
/// Bytes of data that is not UTF-8 shown in hex; the rest is left out.
const HEX_SHOWN: usize = 32;

/// Publishes one message and prints its number (and, with `--report`, who has it).
pub(crate) async fn publish(client: &Client, args: PublishArgs) -> anyhow::Result<()> {
    let PublishArgs {
        group,
        app,
        topic,
        text,
        report,
        json,
    } = args;
    let report_ms = match report {
        Some(text) => {
            let wait = duration::parse("--report", &text)?;
            if wait > MAX_REPORT {
                anyhow::bail!("--report is at most 60s (got {text})");
            }
            u32::try_from(wait.as_millis())?
        }
        None => 0,
    };
    let data = payload::Source::from_args(Some(text.join(" ")), None).read()?;
    let reply = client
        .groups()
        .publish(PublishRequest {
            group,
            app,
            topic,
            data: data.into(),
            report_ms,
        })
        .await
        .or_fail("cannot publish")?;
    if json {
        output::json_line(&publish_json(&reply))?;
    } else {
        output::line(publish_text(&reply, report_ms > 0))?;
    }
    Ok(())
}

/// `{seq, sent_ms, sent_to, delivered, missing}`.
fn publish_json(reply: &PublishReply) -> Value {
    let PublishReply {
        seq,
        sent_ms,
        sent_to,
        delivered,
        missing,
    } = reply;
    json!({
        "seq": seq,
        "sent_ms": sent_ms,
        "sent_to": sent_to,
        "delivered": delivered,
        "missing": missing,
    })
}

/// `seq N (sent to K members' nodes)`, then with a report a table of the other members' nodes.
fn publish_text(reply: &PublishReply, report: bool) -> String {
    let mut text = format!(
        "seq {} (sent to {} members' nodes that follow the topic)",
        reply.seq,
        reply.sent_to.len()
    );
    if report {
        let mut table = output::table(["PEER", "RECEIPT"]);
        for peer in &reply.delivered {
            table.add_row([peer.as_str(), "delivered"]);
        }
        for peer in &reply.missing {
            table.add_row([peer.as_str(), "missing"]);
        }
        if reply.delivered.is_empty() && reply.missing.is_empty() {
            text.push_str("\nno other members");
        } else {
            text.push('\n');
            text.push_str(&table.trim_fmt());
        }
    }
    text
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Follows a topic until the stream ends: one line per message, or one JSON object per line.
pub(crate) async fn watch(client: &Client, args: WatchArgs) -> anyhow::Result<()> {
    let WatchArgs {
        group,
        app,
        topic,
        since,
        since_ms,
        json,
    } = args;
    let since_ms = match (since, since_ms) {
        (Some(text), _) => {
            let back = duration::parse("--since", &text)?;
            now_ms().saturating_sub(back.as_millis() as u64).max(1)
        }
        (None, Some(ms)) => ms,
        (None, None) => 0,
    };
    let what = format!("topic {topic:?} of app {app} in group {group}");
    let mut stream = client
        .groups()
        .subscribe(SubscribeRequest {
            group,
            app,
            topic,
            since_ms,
        })
        .await
        .or_fail("cannot follow the topic")?;
    // On stderr, so that stdout holds only messages: says the follower is attached.
    eprintln!("following {what} (Ctrl-C to stop)");
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                if json {
                    output::json_line(&message_json(&message))?;
                } else {
                    output::line(message_line(&message))?;
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => anyhow::bail!("the subscription ended: {}", describe_status(&status)),
        }
    }
}

/// The last 8 characters of a peer id (every ed25519 peer id starts with `12D3KooW`).
pub(crate) fn short(peer_id: &str) -> &str {
    match peer_id.char_indices().rev().nth(7) {
        Some((at, _)) => &peer_id[at..],
        None => peer_id,
    }
}

/// Data for a line: UTF-8 text with control characters escaped (so it stays one line), or
/// `<N bytes: hex...>`.
pub(crate) fn data_text(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) => crate::output::escaped(text),
        Err(_) => {
            let shown = HEXLOWER.encode(&data[..data.len().min(HEX_SHOWN)]);
            let more = if data.len() > HEX_SHOWN { "..." } else { "" };
            format!("<{} bytes: {shown}{more}>", data.len())
        }
    }
}

/// `sender seq time text`.
fn message_line(m: &TopicMessage) -> String {
    format!(
        "{} {} {} {}",
        short(&m.sender),
        m.seq,
        output::timestamp(m.sent_ms),
        data_text(&m.data)
    )
}

/// `{group, app, topic, sender, seq, sent_ms, replayed, data_text, data_base64}`; `data_text`
/// is null for data that is not UTF-8.
fn message_json(m: &TopicMessage) -> Value {
    let TopicMessage {
        group,
        app,
        topic,
        sender,
        seq,
        sent_ms,
        data,
        replayed,
    } = m;
    json!({
        "group": group,
        "app": app,
        "topic": topic,
        "sender": sender,
        "seq": seq,
        "sent_ms": sent_ms,
        "replayed": replayed,
        "data_text": std::str::from_utf8(data).ok(),
        "data_base64": BASE64.encode(data),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shows_text_on_one_line_and_bytes_in_hex() {
        assert_eq!(data_text(b"hello world"), "hello world");
        assert_eq!(data_text("h\u{e9}\tl\nlo".as_bytes()), "h\u{e9}\\tl\\nlo");
        assert_eq!(data_text(&[0xff, 0x00]), "<2 bytes: ff00>");
        let long = data_text(&[0xff; 40]);
        assert!(long.starts_with("<40 bytes: ffff"), "{long}");
        assert!(long.ends_with("...>"), "{long}");
        assert_eq!(data_text(b""), "");
    }

    #[test]
    fn message_lines_and_json() {
        let m = TopicMessage {
            group: "g".into(),
            app: "chat".into(),
            topic: "room".into(),
            sender: "12D3KooWAbCdEfGh".into(),
            seq: 7,
            sent_ms: 1_718_454_896_789,
            data: b"hi there".to_vec().into(),
            replayed: true,
        };
        assert_eq!(
            message_line(&m),
            "AbCdEfGh 7 2024-06-15T12:34:56.789Z hi there"
        );
        let v = message_json(&m);
        assert_eq!(v["data_text"], "hi there");
        assert_eq!(v["data_base64"], "aGkgdGhlcmU=");
        assert_eq!(v["replayed"], true);
        assert_eq!(v["seq"], 7);
        let bytes = TopicMessage {
            data: vec![0xff].into(),
            ..m
        };
        assert_eq!(message_json(&bytes)["data_text"], Value::Null);
    }

    #[test]
    fn publish_text_lists_receipts() {
        let reply = PublishReply {
            seq: 3,
            sent_ms: 1,
            sent_to: vec!["a".into(), "b".into()],
            delivered: vec!["a".into()],
            missing: vec!["b".into()],
        };
        assert_eq!(
            publish_text(&reply, false),
            "seq 3 (sent to 2 members' nodes that follow the topic)"
        );
        let text = publish_text(&reply, true);
        assert!(text.ends_with("a     delivered\nb     missing"), "{text}");
        assert_eq!(publish_json(&reply)["missing"][0], "b");
    }
}
