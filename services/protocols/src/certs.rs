//! Service certificates: a publisher's ed25519 key, held offline, vouches that an app (and its
//! helpers) on a node provides a service on the publisher's behalf until a time. Callers pin
//! publisher keys; their node checks a provider's certificate before it sends that provider a
//! call or opens a channel to it, and the provider's node checks again, against the app
//! registered there now, before it gives the call or channel to that app. Text forms are
//! copy-pasteable like tickets: `p2pospub…` (a public key), `p2possec…` (a secret key, for the
//! publisher's file only) and `p2poscert…` (a certificate), each the prefix and lowercase RFC
//! 4648 base32 without padding.

use data_encoding::BASE32_NOPAD;
use libp2p::{PeerId, identity::ed25519};
use p2pos_proto::wire::v1::ServiceCertificate;
use prost::Message;

/// The text form of a publisher's public key starts with this.
pub const KEY_PREFIX: &str = "p2pospub";
/// The text form of a publisher's secret key starts with this.
pub const SECRET_PREFIX: &str = "p2possec";
/// The text form of a certificate starts with this.
pub const CERT_PREFIX: &str = "p2poscert";
/// Most certificates one registration presents.
pub const MAX_CERTIFICATES: usize = 8;
/// Most publisher keys one request pins.
pub const MAX_PINNED_KEYS: usize = 16;
/// Longest certificate accepted, encoded (a service name, a peer id, a key and a signature
/// take about 200 bytes).
pub const MAX_CERTIFICATE: usize = 512;
/// What a signature covers first: the protocol and version of the statement.
const DOMAIN: &[u8] = b"p2pos-service-certificate/2";

/// A publisher's public key, pinned by callers.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublisherKey([u8; 32]);

impl std::fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl PublisherKey {
    /// Parses `p2pospub…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = decode(text.trim(), KEY_PREFIX, "publisher key")?;
        if bytes.len() != 32 {
            return Err("a publisher key is 32 bytes; copy it again in full".to_owned());
        }
        Self::from_bytes(&bytes)
    }

    /// `p2pospub…`.
    pub fn to_text(&self) -> String {
        encode(KEY_PREFIX, &self.0)
    }

    /// The 32 bytes, as a call frame or a channel hello carries them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "a publisher key is 32 bytes".to_owned())?;
        ed25519::PublicKey::try_from_bytes(&bytes)
            .map_err(|e| format!("not an ed25519 public key: {e}"))?;
        Ok(Self(bytes))
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn public(&self) -> Option<ed25519::PublicKey> {
        ed25519::PublicKey::try_from_bytes(&self.0).ok()
    }
}

/// A publisher's key pair, which signs certificates.
#[derive(Clone)]
pub struct PublisherSecret(ed25519::Keypair);

impl PublisherSecret {
    /// A new random key pair.
    pub fn generate() -> Self {
        Self(ed25519::Keypair::generate())
    }

    /// Parses `p2possec…` (the 32-byte secret).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut bytes = decode(text.trim(), SECRET_PREFIX, "publisher secret key")?;
        let secret = ed25519::SecretKey::try_from_bytes(&mut bytes)
            .map_err(|e| format!("not an ed25519 secret key: {e}"))?;
        Ok(Self(ed25519::Keypair::from(secret)))
    }

    /// `p2possec…`: keep it in a file only its owner reads.
    pub fn to_text(&self) -> String {
        encode(SECRET_PREFIX, self.0.secret().as_ref())
    }

    /// The public half, which callers pin.
    pub fn public(&self) -> PublisherKey {
        PublisherKey(self.0.public().to_bytes())
    }

    /// A certificate that app `app` (a root app id: its helpers qualify too) on `provider`
    /// provides `service` until `expires_ms` (ms since the Unix epoch); or why `service` or
    /// `app` cannot be certified.
    pub fn certify(
        &self,
        service: &str,
        (app, provider): (&str, PeerId),
        expires_ms: u64,
    ) -> Result<Certificate, String> {
        check_names(service, app)?;
        let provider_bytes = provider.to_bytes();
        let signature = self
            .0
            .sign(&signed_bytes(service, app, &provider_bytes, expires_ms));
        let message = ServiceCertificate {
            publisher_key: self.0.public().to_bytes().to_vec().into(),
            service: service.to_owned(),
            provider: provider_bytes.into(),
            expires_ms,
            signature: signature.into(),
            app_id: app.to_owned(),
        };
        Ok(Certificate {
            publisher: self.public(),
            service: service.to_owned(),
            app: app.to_owned(),
            provider,
            expires_ms,
            encoded: message.encode_to_vec(),
        })
    }
}

/// Whether `service` is a service name and `app` a root app id (no helper part), as a
/// certificate names them; if not, why (the input shortened).
fn check_names(service: &str, app: &str) -> Result<(), String> {
    crate::ids::ServiceName::parse_explained(service)?;
    crate::names::check_app_id(app)?;
    if crate::names::root_app(app) != app {
        return Err(format!(
            "a certificate names an app, not a helper ({:?}): the app's helpers qualify with it",
            app.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// A certificate whose signature verifies (what it names is checked by [`Certificate::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// Who signed it.
    pub publisher: PublisherKey,
    /// The service it is for.
    pub service: String,
    /// The app it is for (a root app id: its helpers qualify too).
    pub app: String,
    /// The node it vouches for.
    pub provider: PeerId,
    /// Valid until, ms since the Unix epoch.
    pub expires_ms: u64,
    /// As it travels (a `ServiceCertificate`).
    encoded: Vec<u8>,
}

impl Certificate {
    /// Parses `p2poscert…` and verifies its signature.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::from_bytes(&decode(text.trim(), CERT_PREFIX, "certificate")?)
    }

    /// Decodes an encoded `ServiceCertificate` and verifies its signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_CERTIFICATE {
            return Err(format!(
                "a certificate of {} bytes exceeds the {MAX_CERTIFICATE}-byte limit",
                bytes.len()
            ));
        }
        let ServiceCertificate {
            publisher_key,
            service,
            provider,
            expires_ms,
            signature,
            app_id,
        } = ServiceCertificate::decode(bytes)
            .map_err(|_| "the certificate is damaged; copy it again in full".to_owned())?;
        check_names(&service, &app_id).map_err(|e| format!("the certificate is invalid: {e}"))?;
        let key: [u8; 32] = publisher_key
            .as_ref()
            .try_into()
            .map_err(|_| "the certificate's publisher key is not 32 bytes".to_owned())?;
        let publisher = PublisherKey(key);
        let public = publisher
            .public()
            .ok_or_else(|| "the certificate's publisher key is not an ed25519 key".to_owned())?;
        if !public.verify(
            &signed_bytes(&service, &app_id, &provider, expires_ms),
            &signature,
        ) {
            return Err("the certificate's signature does not verify".into());
        }
        let peer = PeerId::from_bytes(&provider)
            .map_err(|_| "the certificate's provider is not a peer id".to_owned())?;
        Ok(Self {
            publisher,
            service,
            app: app_id,
            provider: peer,
            expires_ms,
            encoded: bytes.to_vec(),
        })
    }

    /// As it travels.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encoded.clone()
    }

    /// `p2poscert…`.
    pub fn to_text(&self) -> String {
        encode(CERT_PREFIX, &self.encoded)
    }

    /// Whether it vouches for `provider` as a provider of `service` at `now_ms` (for some
    /// app: see [`Certificate::check_app`]); if not, why.
    pub fn check(&self, service: &str, provider: &PeerId, now_ms: u64) -> Result<(), String> {
        if self.service != service {
            return Err(format!(
                "the certificate is for service '{}', not '{service}'",
                self.service
            ));
        }
        if self.provider != *provider {
            return Err(format!(
                "the certificate is for peer {}, not {provider}",
                self.provider
            ));
        }
        if self.expires_ms <= now_ms {
            return Err(format!(
                "the certificate expired {} s ago",
                (now_ms - self.expires_ms) / 1000
            ));
        }
        Ok(())
    }

    /// Whether it is for app `app_id` (the app named, or one of its helpers); if not, why.
    pub fn check_app(&self, app_id: &str) -> Result<(), String> {
        match crate::names::covers(&self.app, app_id) {
            true => Ok(()),
            false => Err(format!(
                "the certificate is for app '{}', not '{}'",
                self.app,
                crate::names::root_app(app_id)
            )),
        }
    }
}

/// What a publisher signs: the domain, then the service, the app and the provider's peer id,
/// each preceded by its length (2 bytes, big-endian), then the expiry (8 bytes, big-endian).
fn signed_bytes(service: &str, app: &str, provider: &[u8], expires_ms: u64) -> Vec<u8> {
    let mut bytes =
        Vec::with_capacity(DOMAIN.len() + service.len() + app.len() + provider.len() + 14);
    bytes.extend_from_slice(DOMAIN);
    for field in [service.as_bytes(), app.as_bytes(), provider] {
        // Fields are far shorter than 64 KiB (a certificate is at most 512 bytes).
        let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(field);
    }
    bytes.extend_from_slice(&expires_ms.to_be_bytes());
    bytes
}

fn encode(prefix: &str, bytes: &[u8]) -> String {
    format!(
        "{prefix}{}",
        BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
    )
}

fn decode(text: &str, prefix: &str, what: &str) -> Result<Vec<u8>, String> {
    let body = text
        .strip_prefix(prefix)
        .ok_or_else(|| format!("a {what} starts with '{prefix}'"))?;
    if body.len() > 2 * MAX_CERTIFICATE {
        return Err(format!("the {what} is too long"));
    }
    BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("the {what} is damaged (not base32); copy it again in full"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_round_trips_and_checks_what_it_names() {
        let secret = PublisherSecret::generate();
        let again = PublisherSecret::parse(&secret.to_text()).expect("secret");
        assert_eq!(again.public(), secret.public());
        let key = PublisherKey::parse(&secret.public().to_text()).expect("key");
        assert_eq!(key, secret.public());

        let peer = PeerId::random();
        let cert = secret
            .certify("echo/1", ("vault", peer), 2_000)
            .expect("certify");
        let text = cert.to_text();
        assert!(text.starts_with(CERT_PREFIX));
        let parsed = Certificate::parse(&text).expect("parses");
        assert_eq!(parsed, cert);
        assert_eq!(parsed.publisher, key);
        assert!(parsed.check("echo/1", &peer, 1_000).is_ok());
        assert!(parsed.check("echo/2", &peer, 1_000).is_err());
        assert!(parsed.check("echo/1", &PeerId::random(), 1_000).is_err());
        assert!(parsed.check("echo/1", &peer, 2_000).is_err(), "expired");
        assert!(parsed.check_app("vault").is_ok());
        assert!(parsed.check_app("vault:worker").is_ok(), "its helper");
        assert!(parsed.check_app("mallory").is_err());
        assert!(parsed.check_app("mallory:vault").is_err());
    }

    #[test]
    fn only_service_names_and_app_ids_are_certified() {
        let secret = PublisherSecret::generate();
        let peer = PeerId::random();
        assert!(secret.certify("no version", ("vault", peer), 1).is_err());
        assert!(secret.certify("echo/1", ("vault:helper", peer), 1).is_err());
        assert!(secret.certify("echo/1", ("", peer), 1).is_err());
        // Signed, but naming no service: refused when read.
        let good = secret
            .certify("echo/1", ("vault", peer), 1)
            .expect("certify");
        let mut message = ServiceCertificate::decode(good.to_bytes().as_slice()).expect("decode");
        message.service = "x".repeat(300);
        message.signature = secret
            .0
            .sign(&signed_bytes(
                &message.service,
                "vault",
                &peer.to_bytes(),
                1,
            ))
            .into();
        let err = Certificate::from_bytes(&message.encode_to_vec()).expect_err("no name");
        assert!(err.contains("invalid"), "{err}");
        // The fields are length-prefixed: moving bytes between them breaks the signature.
        let a = signed_bytes("ab/1", "c", b"p", 1);
        let b = signed_bytes("ab/1c", "", b"p", 1);
        assert_ne!(a, b);
    }

    #[test]
    fn a_forged_or_damaged_certificate_is_refused() {
        let secret = PublisherSecret::generate();
        let peer = PeerId::random();
        let cert = secret
            .certify("echo/1", ("vault", peer), 2_000)
            .expect("certify");
        let mut message = ServiceCertificate::decode(cert.to_bytes().as_slice()).expect("decode");
        message.expires_ms = 9_999;
        let err = Certificate::from_bytes(&message.encode_to_vec()).expect_err("forged");
        assert!(err.contains("signature"), "{err}");
        message.publisher_key = PublisherSecret::generate().public().0.to_vec().into();
        assert!(Certificate::from_bytes(&message.encode_to_vec()).is_err());
        let mut other_app = ServiceCertificate::decode(cert.to_bytes().as_slice()).expect("decode");
        other_app.app_id = "mallory".into();
        assert!(
            Certificate::from_bytes(&other_app.encode_to_vec()).is_err(),
            "bound to its app"
        );
        assert!(Certificate::parse("p2poscert!!").is_err());
        assert!(Certificate::parse(&secret.public().to_text()).is_err());
        assert!(PublisherKey::parse("p2pospubaaaa").is_err());
        assert!(Certificate::from_bytes(&[0u8; MAX_CERTIFICATE + 1]).is_err());
    }
}
