//! Records in the DHT, from the swarm task: a record a service puts is signed here, with the
//! node's key (which no other service holds), as a libp2p signed envelope whose payload type is
//! the record's key, so that a record cannot be replayed under another key; a record got from
//! the DHT is handed on only if its signature verifies, with the peer that signed it.
//!
//! Kademlia keeps one record per key on each node: the last one stored there wins.

use bytes::Bytes;
use libp2p::{core::SignedEnvelope, kad};
use p2pos_protocols::network::{Error, Reply, SignedRecord};
use tracing::debug;

use crate::{event_loop::EventLoop, waiting::RecordQuery};

/// The signing domain of records: a signature made for another purpose never verifies here.
const DOMAIN: &str = "p2pos-record";
/// Most puts and gets of records at once.
const MAX_RECORD_QUERIES: usize = 64;
/// Most distinct records one get hands back.
const MAX_FOUND: usize = 16;

/// The record found under `key` as a [`SignedRecord`], if its envelope's signature verifies
/// for that key.
fn verify(key: &str, value: &[u8]) -> Option<SignedRecord> {
    let envelope = SignedEnvelope::from_protobuf_encoding(value).ok()?;
    let (payload, signer) = envelope
        .payload_and_signing_key(DOMAIN.to_owned(), key.as_bytes())
        .ok()?;
    Some(SignedRecord {
        publisher: signer.to_peer_id(),
        value: Bytes::copy_from_slice(payload),
    })
}

impl EventLoop {
    fn record_query_room(&self) -> Result<(), Error> {
        if !self.swarm.behaviour().kad.is_enabled() {
            return Err(Error::DhtDisabled);
        }
        if self.record_queries.len() >= MAX_RECORD_QUERIES {
            return Err(Error::Busy {
                what: "DHT record puts and gets in progress",
                limit: MAX_RECORD_QUERIES,
            });
        }
        Ok(())
    }

    /// Signs `value` for `key` and puts it in the DHT.
    pub(crate) fn put_record(&mut self, key: String, value: Bytes, reply: Reply<()>) {
        if let Err(e) = self.record_query_room() {
            let _ = reply.send(Err(e));
            return;
        }
        let envelope = match SignedEnvelope::new(
            &self.keypair,
            DOMAIN.to_owned(),
            key.as_bytes().to_vec(),
            value.to_vec(),
        ) {
            Ok(envelope) => envelope,
            Err(e) => {
                let _ = reply.send(Err(Error::Setup(format!("cannot sign a record: {e}"))));
                return;
            }
        };
        let record = kad::Record::new(kad::RecordKey::new(&key), envelope.into_protobuf_encoding());
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        match kad.put_record(record, kad::Quorum::One) {
            Ok(id) => {
                self.record_queries.insert(id, RecordQuery::Put { reply });
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Store(format!("cannot store the record: {e}"))));
            }
        }
    }

    /// Looks up the records under `key`.
    pub(crate) fn get_record(&mut self, key: String, reply: Reply<Vec<SignedRecord>>) {
        if let Err(e) = self.record_query_room() {
            let _ = reply.send(Err(e));
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let id = kad.get_record(kad::RecordKey::new(&key));
        self.record_queries.insert(
            id,
            RecordQuery::Get {
                key,
                found: Vec::new(),
                reply,
            },
        );
    }

    /// Kademlia's news of record puts and gets.
    pub(crate) fn on_record_event(&mut self, event: kad::Event) {
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return;
        };
        match result {
            kad::QueryResult::PutRecord(result) => {
                let Some(RecordQuery::Put { reply }) = self.record_queries.remove(&id) else {
                    return;
                };
                let answer = match result {
                    Ok(_) => Ok(()),
                    // Stored here, and republished by Kademlia: peers that join later get it.
                    Err(kad::PutRecordError::QuorumFailed { .. }) => {
                        debug!("a record is stored on this node only, for now");
                        Ok(())
                    }
                    Err(e) => Err(Error::Timeout {
                        what: format!("storing a record in the DHT ({e})"),
                        after: crate::behaviour::KAD_QUERY_TIMEOUT,
                    }),
                };
                let _ = reply.send(answer);
            }
            kad::QueryResult::GetRecord(result) => {
                let finished = step.last || !matches!(result, Ok(kad::GetRecordOk::FoundRecord(_)));
                if let (
                    Ok(kad::GetRecordOk::FoundRecord(peer_record)),
                    Some(RecordQuery::Get { key, found, .. }),
                ) = (&result, self.record_queries.get_mut(&id))
                {
                    match verify(key, &peer_record.record.value) {
                        Some(record) if !found.contains(&record) && found.len() < MAX_FOUND => {
                            found.push(record);
                        }
                        Some(_) => {}
                        None => {
                            debug!(from = ?peer_record.peer, "a record whose signature does not verify; ignored")
                        }
                    }
                }
                if finished {
                    self.end_get(id);
                }
            }
            _ => {}
        }
    }

    fn end_get(&mut self, id: kad::QueryId) {
        let Some(RecordQuery::Get { key, found, reply }) = self.record_queries.remove(&id) else {
            return;
        };
        let answer = match found.is_empty() {
            true => Err(Error::RecordNotFound { key }),
            false => Ok(found),
        };
        let _ = reply.send(answer);
    }

    /// The records that are still wanted: a caller that gave up frees its place.
    pub(crate) fn expire_record_queries(&mut self) {
        self.record_queries.retain(|_, q| match q {
            RecordQuery::Put { reply } => !reply.is_closed(),
            RecordQuery::Get { reply, .. } => !reply.is_closed(),
        });
    }
}

#[cfg(test)]
mod tests {
    use libp2p::identity::Keypair;

    use super::*;

    fn envelope(key: &Keypair, record_key: &str, value: &[u8]) -> Vec<u8> {
        SignedEnvelope::new(
            key,
            DOMAIN.to_owned(),
            record_key.as_bytes().to_vec(),
            value.to_vec(),
        )
        .expect("sign")
        .into_protobuf_encoding()
    }

    #[test]
    fn a_record_verifies_only_under_its_own_key_and_names_its_signer() {
        let key = Keypair::generate_ed25519();
        let signed = envelope(&key, "/p2pos/test/a", b"hello");
        let record = verify("/p2pos/test/a", &signed).expect("verifies");
        assert_eq!(record.value, Bytes::from_static(b"hello"));
        assert_eq!(record.publisher, key.public().to_peer_id());
        assert!(
            verify("/p2pos/test/b", &signed).is_none(),
            "replayed under another key"
        );
        assert!(verify("/p2pos/test/a", b"not an envelope").is_none());
        let mut tampered = signed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(verify("/p2pos/test/a", &tampered).is_none(), "tampered");
    }
}
