//! `GET /api/events`: the live feed of a page, as server-sent events. Each open page follows
//! the event bus with its own bounded subscriber (a page that falls behind by more than the
//! bus's buffer gets a `lagged` event saying how many it missed, as `Monitor.Events` does) and
//! the new chart samples. At most [`MAX_STREAMS`] pages follow at once.
//!
//! Frames: `event: event` with an [`Event`](p2pos_proto::monitor::v1::Event) as canonical
//! JSON, `event: sample` with a chart sample, `event: lagged` with `{"missed": N}`, and a
//! comment every [`KEEP_ALIVE`] so a dead page is noticed.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use p2pos_proto::monitor::v1::Event;
use tokio::sync::{
    OwnedSemaphorePermit,
    broadcast::{self, error::RecvError},
};

use super::{State, api::EVENT, json::to_json, samples::Sample};

/// Most pages following events at once.
pub(crate) const MAX_STREAMS: usize = 4;
/// How often an idle stream sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A page's subscription: what it follows, and its place among [`MAX_STREAMS`].
struct Feed {
    events: broadcast::Receiver<Event>,
    samples: broadcast::Receiver<Sample>,
    keep_alive: tokio::time::Interval,
    _slot: OwnedSemaphorePermit,
}

/// A new feed's body, or `None` when [`MAX_STREAMS`] pages follow already.
pub(crate) fn open(state: &State) -> Option<BoxBody<Bytes, Infallible>> {
    let slot = state.feeds.clone().try_acquire_owned().ok()?;
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.reset();
    let feed = Feed {
        events: state.ctx.events.subscribe(),
        samples: state.samples.follow(),
        keep_alive,
        _slot: slot,
    };
    // The page retries 2 s after a cut.
    let first = futures::stream::once(async { Bytes::from_static(b"retry: 2000\n\n") });
    let frames = futures::stream::unfold(feed, |mut feed| async move {
        let frame = feed.next().await?;
        Some((frame, feed))
    });
    let body = futures::StreamExt::map(futures::StreamExt::chain(first, frames), |bytes| {
        Ok::<_, Infallible>(Frame::data(bytes))
    });
    Some(StreamBody::new(body).boxed())
}

impl Feed {
    /// The next frame; `None` once the node's event bus is gone.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                event = self.events.recv() => return match event {
                    Ok(event) => match to_json(&event, EVENT) {
                        Ok(json) => Some(frame("event", &json.to_string())),
                        Err(_) => continue,
                    },
                    Err(RecvError::Lagged(missed)) => {
                        Some(frame("lagged", &format!("{{\"missed\":{missed}}}")))
                    }
                    Err(RecvError::Closed) => None,
                },
                sample = self.samples.recv() => match sample {
                    Ok(sample) => match serde_json::to_string(&sample) {
                        Ok(json) => return Some(frame("sample", &json)),
                        Err(_) => continue,
                    },
                    // A missed sample is in the ring the page reads again on reconnect.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
                _ = self.keep_alive.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    }
}

/// One server-sent event; `data` is one line of JSON.
fn frame(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}
