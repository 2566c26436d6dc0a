//! An app's session (`Apps.Session`) read as what an app's event loop acts on.

use p2pos_proto::app::v1::{IncomingCall, IncomingChannel, SessionEvent, session_event::Kind};
use tonic::Streaming;

use crate::describe_status;

/// One thing a session says.
#[derive(Debug)]
pub enum SessionUpdate {
    /// The app is registered; `peer_id` is this node's.
    Registered {
        /// This node's peer id.
        peer_id: String,
    },
    /// A channel to accept (`Client::accept_channel`) within 30 s.
    Incoming(IncomingChannel),
    /// A call to a service the app provides, to answer with `Services.Reply`.
    Call(IncomingCall),
    /// The session is over (the node ended it, or the connection broke): why, in one line.
    /// Nothing comes after it.
    Ended(String),
}

/// The next update of a session's stream.
pub async fn next_update(stream: &mut Streaming<SessionEvent>) -> SessionUpdate {
    loop {
        match stream.message().await {
            Ok(Some(SessionEvent { kind: Some(kind) })) => {
                return match kind {
                    Kind::Registered(registered) => SessionUpdate::Registered {
                        peer_id: registered.peer_id,
                    },
                    Kind::Incoming(incoming) => SessionUpdate::Incoming(incoming),
                    Kind::Call(call) => SessionUpdate::Call(call),
                };
            }
            // An event of a newer node this client does not know.
            Ok(Some(SessionEvent { kind: None })) => {}
            Ok(None) => return SessionUpdate::Ended("the node ended the session".to_owned()),
            Err(status) => return SessionUpdate::Ended(describe_status(&status)),
        }
    }
}
