//! Target resolution: which gateway to dial and which token to present.
//!
//! Precedence, for each of gateway, token and data directory: the explicit option (a command-line
//! flag), then the environment variable, then the node's data directory (default
//! [`default_data_dir`]), which holds the gateway socket [`SOCKET_FILE`] and the admin token
//! [`TOKEN_FILE`]. Without a token, the admin token is read from the token file at each call
//! (the node writes a new one at every start): that of the data directory, or the one beside a
//! unix socket named without a data directory. The node refuses a call without a token on
//! every transport.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::Error;
use crate::token_file::read_token;

/// Environment variable naming the gateway (`unix:/path` or `http://HOST:PORT`).
pub const GATEWAY_ENV: &str = "P2POS_GATEWAY";
/// Environment variable holding the token to present.
pub const TOKEN_ENV: &str = "P2POS_TOKEN";
/// Environment variable naming the node's data directory.
pub const DATA_DIR_ENV: &str = "P2POS_DATA_DIR";
/// File name of the gateway's Unix socket inside the data directory.
pub const SOCKET_FILE: &str = "gateway.sock";
/// File name of the admin token inside the data directory.
pub const TOKEN_FILE: &str = "gateway.token";

/// The node's default data directory: the platform data directory of `org.p2pos.p2pos`
/// (`~/.local/share/p2pos` on Linux). The daemon and every client use this same function.
///
/// Falls back to `.p2pos` in the current directory when no home directory is known.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("org", "p2pos", "p2pos")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".p2pos"))
}

/// Where the node's gateway listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gateway {
    /// A Unix socket, written `unix:/path/to/gateway.sock`.
    Unix(PathBuf),
    /// A TCP address, written `http://127.0.0.1:PORT` (stored with its `http://` scheme).
    Tcp(String),
}

impl Gateway {
    /// Whether a target with this gateway must know its token when it is resolved (TCP does;
    /// on the Unix socket it may come from the token file beside the socket, read at each call).
    pub fn requires_token(&self) -> bool {
        matches!(self, Gateway::Tcp(_))
    }
}

impl FromStr for Gateway {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            // Accept `unix:///abs/path` as well as `unix:/abs/path`.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Error::InvalidGateway(s.to_owned()));
            }
            return Ok(Gateway::Unix(PathBuf::from(path)));
        }
        if let Some(authority) = s.strip_prefix("http://") {
            let authority = authority.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(Error::InvalidGateway(s.to_owned()));
            }
            return Ok(Gateway::Tcp(format!("http://{authority}")));
        }
        Err(Error::InvalidGateway(s.to_owned()))
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gateway::Unix(path) => write!(f, "unix:{}", path.display()),
            Gateway::Tcp(uri) => f.write_str(uri),
        }
    }
}

/// What the caller asked for explicitly (usually command-line flags); `None` falls back to the
/// environment and then to the data directory.
#[derive(Clone, Debug, Default)]
pub struct TargetOptions {
    /// `--gateway`: `unix:/path/to/gateway.sock` or `http://127.0.0.1:PORT`.
    pub gateway: Option<String>,
    /// `--token`: the token to present.
    pub token: Option<String>,
    /// `--data-dir`: the node's data directory.
    pub data_dir: Option<PathBuf>,
}

/// A resolved place to connect to: the gateway, the token to present (given, or the token file
/// to read it from at each call), and the data directory it came from (used for hints in error
/// messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    gateway: Gateway,
    token: Option<String>,
    token_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
}

impl Target {
    /// Resolves options, then `P2POS_GATEWAY` / `P2POS_TOKEN` / `P2POS_DATA_DIR`, then the data
    /// directory (`<data_dir>/gateway.sock` and `<data_dir>/gateway.token`).
    ///
    /// With an explicit gateway, the token file is that of an explicitly named data directory,
    /// else (a unix socket) the one beside the socket. Fails on a malformed gateway, or a TCP
    /// gateway without a token.
    pub fn resolve(options: TargetOptions) -> Result<Target, Error> {
        let TargetOptions {
            gateway,
            token,
            data_dir,
        } = options;
        let gateway = non_empty(gateway).or_else(|| env_var(GATEWAY_ENV));
        let token = non_empty(token).or_else(|| env_var(TOKEN_ENV));
        let data_dir = data_dir
            .filter(|d| !d.as_os_str().is_empty())
            .or_else(|| env_var(DATA_DIR_ENV).map(PathBuf::from));
        let (gateway, data_dir) = match gateway {
            Some(gateway) => (gateway.parse()?, data_dir),
            None => {
                let dir = data_dir.unwrap_or_else(default_data_dir);
                (Gateway::Unix(dir.join(SOCKET_FILE)), Some(dir))
            }
        };
        // TCP needs the token now (it is checked below); the socket reads it at each call.
        let token = match (&gateway, token) {
            (Gateway::Tcp(_), None) => data_dir
                .as_deref()
                .and_then(|dir| read_token(&dir.join(TOKEN_FILE))),
            (_, token) => token,
        };
        Target::new(gateway, token, data_dir)
    }

    /// A target from explicit parts; checks that a TCP gateway has a token and that the token
    /// can be sent as a header. Without a token, calls present the admin token of the token
    /// file of `data_dir` (or, on a unix socket without one, beside the socket), read at each
    /// call.
    pub fn new(
        gateway: Gateway,
        token: Option<String>,
        data_dir: Option<PathBuf>,
    ) -> Result<Target, Error> {
        let token = non_empty(token.map(|t| t.trim().to_owned()));
        if token.is_none() && gateway.requires_token() {
            return Err(Error::TokenRequired { gateway });
        }
        if let Some(token) = &token {
            crate::client::Auth::new(Some(token))?;
        }
        let token_file = match (&token, &data_dir, &gateway) {
            (Some(_), _, _) => None,
            (None, Some(dir), _) => Some(dir.join(TOKEN_FILE)),
            (None, None, Gateway::Unix(socket)) => socket.parent().map(|d| d.join(TOKEN_FILE)),
            (None, None, Gateway::Tcp(_)) => None,
        };
        Ok(Target {
            gateway,
            token,
            token_file,
            data_dir,
        })
    }

    /// The gateway to connect to.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The token given (option, environment), presented on every call, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Without a given token: the node's token file, whose token each call presents.
    pub fn token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }

    /// The node's data directory this target was derived from, if known.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token itself.
        f.debug_struct("Target")
            .field("gateway", &self.gateway)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.gateway.fmt(f)
    }
}

fn env_var(name: &str) -> Option<String> {
    non_empty(std::env::var(name).ok())
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_gateways() {
        assert_eq!(
            "unix:/tmp/x/gateway.sock".parse::<Gateway>().unwrap(),
            Gateway::Unix("/tmp/x/gateway.sock".into())
        );
        assert_eq!(
            "unix:///tmp/g.sock".parse::<Gateway>().unwrap(),
            Gateway::Unix("/tmp/g.sock".into())
        );
        assert_eq!(
            "http://127.0.0.1:7000/".parse::<Gateway>().unwrap(),
            Gateway::Tcp("http://127.0.0.1:7000".into())
        );
        for bad in [
            "",
            "unix:",
            "127.0.0.1:7000",
            "https://x:1",
            "http://",
            "http://a/b",
        ] {
            assert!(bad.parse::<Gateway>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn displays_gateways() {
        assert_eq!(
            Gateway::Unix("/x/gateway.sock".into()).to_string(),
            "unix:/x/gateway.sock"
        );
        assert_eq!(
            Gateway::Tcp("http://127.0.0.1:1".into()).to_string(),
            "http://127.0.0.1:1"
        );
    }

    #[test]
    fn data_dir_gives_socket_and_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "secret\n").unwrap();
        let target = Target::resolve(TargetOptions {
            data_dir: Some(dir.path().to_path_buf()),
            ..TargetOptions::default()
        })
        .unwrap();
        assert_eq!(
            target.gateway(),
            &Gateway::Unix(dir.path().join(SOCKET_FILE))
        );
        assert_eq!(target.token(), None, "read at each call");
        assert_eq!(
            target.token_file(),
            Some(dir.path().join(TOKEN_FILE).as_path())
        );
        assert_eq!(target.data_dir(), Some(dir.path()));
        assert!(!format!("{target:?}").contains("secret"));
    }

    #[test]
    fn explicit_token_wins_and_missing_file_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::resolve(TargetOptions {
            data_dir: Some(dir.path().to_path_buf()),
            token: Some("t1".into()),
            gateway: None,
        })
        .unwrap();
        assert_eq!(target.token(), Some("t1"));
        assert_eq!(target.token_file(), None);
    }

    #[test]
    fn a_socket_named_alone_takes_the_token_file_beside_it() {
        let target = Target::new(Gateway::Unix("/x/gateway.sock".into()), None, None).unwrap();
        assert_eq!(target.token_file(), Some(Path::new("/x/gateway.token")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "tcp-secret\n").unwrap();
        let tcp = Target::resolve(TargetOptions {
            gateway: Some("http://127.0.0.1:1".into()),
            data_dir: Some(dir.path().to_path_buf()),
            token: None,
        })
        .unwrap();
        assert_eq!(tcp.token(), Some("tcp-secret"), "TCP reads it at once");
    }

    #[test]
    fn tcp_needs_a_token() {
        let err = Target::new(Gateway::Tcp("http://127.0.0.1:1".into()), None, None).unwrap_err();
        assert!(matches!(err, Error::TokenRequired { .. }));
        assert!(
            Target::new(
                Gateway::Tcp("http://127.0.0.1:1".into()),
                Some("t".into()),
                None
            )
            .is_ok()
        );
        assert!(Target::new(Gateway::Unix("/x".into()), None, None).is_ok());
    }

    #[test]
    fn rejects_tokens_that_are_not_header_values() {
        let err = Target::new(Gateway::Unix("/x".into()), Some("a\u{7f}b".into()), None);
        assert!(matches!(err, Err(Error::InvalidToken)));
    }
}
