//! Who is calling, and which helpers they may address: the admin everything; app `X` the
//! helpers of `X` and of its helpers' app ids (`X:<helper>`), where an empty app id means `X`.

use p2pos_protocols::names;

use crate::{Error, spec};

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// p2pctl or another admin-scoped client.
    Admin,
    /// An app-scoped client (or a helper acting as `<app>:<helper>`).
    App(String),
}

/// One helper's place in the table: its app ("" for the node's) and its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub(crate) app: String,
    pub(crate) name: String,
}

impl Key {
    /// The admin-installed spec of the same name.
    pub(crate) fn node_wide(&self) -> Key {
        Key {
            app: String::new(),
            name: self.name.clone(),
        }
    }

    /// The store key: `app \0 name`.
    pub(crate) fn store_key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.app.len() + 1 + self.name.len());
        key.extend_from_slice(self.app.as_bytes());
        key.push(0);
        key.extend_from_slice(self.name.as_bytes());
        key
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.app.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.app, self.name)
        }
    }
}

impl Caller {
    /// From a request's `caller_app` (empty: admin).
    pub(crate) fn parse(caller_app: String) -> Result<Caller, Error> {
        if caller_app.is_empty() {
            return Ok(Caller::Admin);
        }
        spec::validate_app_id(&caller_app)?;
        Ok(Caller::App(caller_app))
    }

    /// Whether the caller may see and act on helpers of `app_id`.
    pub(crate) fn covers(&self, app_id: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::App(own) => names::covers(own, app_id),
        }
    }

    /// The app a request means by `app_id`: itself for an app that leaves it empty; checked
    /// against the caller's scope.
    pub(crate) fn app(&self, app_id: &str) -> Result<String, Error> {
        let app = match self {
            Caller::App(own) if app_id.is_empty() => own.clone(),
            _ => app_id.to_owned(),
        };
        if !app.is_empty() {
            spec::validate_app_id(&app)?;
        }
        if !self.covers(&app) {
            return Err(Error::PermissionDenied {
                caller: match self {
                    Caller::App(own) => own.clone(),
                    Caller::Admin => String::new(),
                },
                app_id: app,
            });
        }
        Ok(app)
    }

    /// Whether the caller is bound to a session: the app whose session a helper it starts
    /// lives by.
    pub(crate) fn session_app(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::App(own) => Some(own),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_addresses_its_own_helpers_only() {
        let chat = Caller::parse("chat".into()).unwrap();
        assert_eq!(chat.app("").unwrap(), "chat");
        assert_eq!(chat.app("chat").unwrap(), "chat");
        assert_eq!(chat.app("chat:voice").unwrap(), "chat:voice");
        for other in ["chatty", "other", "cha", "voice.chat"] {
            let err = chat.app(other).unwrap_err();
            assert!(matches!(err, Error::PermissionDenied { .. }), "{other}");
        }
        let helper = Caller::parse("chat:voice".into()).unwrap();
        assert!(
            helper.app("chat").is_err(),
            "a helper may not act as its app"
        );
        assert!(chat.covers("chat:voice:x"));
        assert!(
            !chat.covers(""),
            "admin-installed helpers are not the app's"
        );
    }

    #[test]
    fn the_admin_addresses_everything() {
        let admin = Caller::parse(String::new()).unwrap();
        assert_eq!(admin, Caller::Admin);
        assert_eq!(admin.app("").unwrap(), "", "the node-wide helper");
        assert_eq!(admin.app("chat").unwrap(), "chat");
        assert!(admin.session_app().is_none());
        assert!(admin.app("..").is_err());
        assert!(Caller::parse("bad/app".into()).is_err());
    }

    #[test]
    fn keys_sort_and_store_by_app_then_name() {
        let k = Key {
            app: "chat".into(),
            name: "voice".into(),
        };
        assert_eq!(k.store_key(), b"chat\0voice".to_vec());
        assert_eq!(k.node_wide().store_key(), b"\0voice".to_vec());
        assert_eq!(k.to_string(), "chat/voice");
        assert_eq!(k.node_wide().to_string(), "voice");
    }
}
