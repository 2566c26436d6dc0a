//! App ids, and the app ids of helpers, and group members' short names: one grammar for every
//! service and the gateway.
//!
//! An app id is 1–64 characters: segments of `[A-Za-z0-9._-]` (none `.` or `..`, since an app
//! id names a directory) joined by `:`. A `:` marks a *helper's* app id: app `chat`'s helper
//! `voice` acts as `chat:voice`, and a node-wide helper `clock` as `_node:clock`. Tokens from
//! `Node.CreateAppToken` are only issued for plain app ids (no `:`), so no ordinary app can
//! pose as a helper, and app `X` covers exactly `X` and its helpers' ids `X:...`.

/// Longest app id, in bytes.
pub const MAX_APP_ID: usize = 64;
/// Joins an app id and a helper name into the helper's app id.
pub const HELPER_SEPARATOR: char = ':';
/// The owner part of a node-wide helper's app id; not an app id an app can have.
pub const NODE_HELPER_OWNER: &str = "_node";

/// Longest member's short name within a group, in characters.
pub const MAX_MEMBER_NAME: usize = 32;

/// A member's short name checked: 1 to [`MAX_MEMBER_NAME`] characters of `[a-z0-9._-]`; the error says why, for people.
pub fn check_member_name(name: &str) -> Result<String, String> {
    let shown = name.chars().take(40).collect::<String>();
    if name.is_empty() || name.chars().count() > MAX_MEMBER_NAME {
        return Err(format!(
            "invalid member name {shown:?}: a member's name has 1 to {MAX_MEMBER_NAME} characters"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return Err(format!(
            "invalid member name {shown:?}: {bad:?} is not allowed; a member's name is made of \
             lowercase letters, digits, '.', '_' and '-' (e.g. alice, bob-laptop)"
        ));
    }
    Ok(name.to_owned())
}

/// Why an app id is refused, for people.
pub fn check_app_id(app_id: &str) -> Result<(), String> {
    if app_id.is_empty() {
        return Err("app_id is empty".to_owned());
    }
    if app_id.len() > MAX_APP_ID {
        return Err(format!(
            "app_id is {} bytes long; the limit is {MAX_APP_ID}",
            app_id.len()
        ));
    }
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if app_id.split(HELPER_SEPARATOR).all(segment_ok) {
        Ok(())
    } else {
        Err(format!(
            "app_id {:?} may only hold letters, digits, '.', '_' and '-' (and ':' between an app and its helper)",
            app_id.chars().take(80).collect::<String>()
        ))
    }
}

/// Whether tokens may be issued for `app_id`: a valid app id of an app, not of a helper.
pub fn check_plain_app_id(app_id: &str) -> Result<(), String> {
    check_app_id(app_id)?;
    if app_id.contains(HELPER_SEPARATOR) || app_id == NODE_HELPER_OWNER {
        return Err(format!(
            "{app_id:?} is a helper's app id; helpers get their tokens from the node when they start"
        ));
    }
    Ok(())
}

/// The app an app id belongs to: `X` for `X`, `X:<helper>` and `X:<helper>:<...>`. Per-app
/// budgets count an app and all its helpers together, so helpers do not multiply it.
pub fn root_app(app_id: &str) -> &str {
    app_id.split(HELPER_SEPARATOR).next().unwrap_or(app_id)
}

/// Whether a caller acting as app `own` may act for `app_id`: its own id and its helpers'.
pub fn covers(own: &str, app_id: &str) -> bool {
    app_id == own
        || app_id
            .strip_prefix(own)
            .is_some_and(|rest| rest.starts_with(HELPER_SEPARATOR))
}

/// The app id helper `name` of app `owner` acts as (`owner` empty: a node-wide helper).
pub fn helper_app_id(owner: &str, name: &str) -> String {
    let owner = if owner.is_empty() {
        NODE_HELPER_OWNER
    } else {
        owner
    };
    format!("{owner}{HELPER_SEPARATOR}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_follow_the_grammar() {
        for good in [
            "chat",
            "org.chat_2-x",
            "chat:voice",
            "chat:voice:tts",
            "_node:clock",
        ] {
            assert!(check_app_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            ":x",
            "x:",
            "a::b",
            "x:..",
            &"a".repeat(65),
        ] {
            assert!(check_app_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_plain_app_id("chat").is_ok());
        assert!(check_plain_app_id("chat:voice").is_err());
        assert!(check_plain_app_id("_node").is_err());
    }

    #[test]
    fn an_app_covers_itself_and_its_helpers_only() {
        assert!(covers("chat", "chat"));
        assert!(covers("chat", "chat:voice"));
        assert!(covers("chat", "chat:voice:tts"));
        assert!(!covers("chat", "chatty"));
        assert!(!covers("chat", "chat.voice"), "a dotted id is another app");
        assert!(!covers("chat:voice", "chat"), "a helper is not its app");
        assert_eq!(helper_app_id("chat", "voice"), "chat:voice");
        assert_eq!(helper_app_id("", "clock"), "_node:clock");
    }
}
