//! The node's effective configuration as TOML, for `Monitor.GetConfig` and diagnostic bundles:
//! rendered once at start from what the defaults, the config file, the environment and the
//! flags made of [`NodeConfig`], in the shape of `p2posd.toml`, with any key that names a
//! secret left out (and named in the header, so a reader knows something was removed).

use crate::config::NodeConfig;

/// The last word of a key that names a secret (`api_token`, `private_key`, `relay_secret`):
/// the thing the key holds. Only the last word counts: `trust_private_addresses` holds
/// addresses and `send_key_ttl_secs` a duration, neither secret.
const SECRET_WORDS: &[&str] = &[
    "token",
    "tokens",
    "secret",
    "secrets",
    "password",
    "passphrase",
    "credential",
    "credentials",
    "key",
];

/// `config` as TOML, secrets left out, with a header saying what it is.
pub(crate) fn render(config: &NodeConfig) -> String {
    let mut left_out = Vec::new();
    let body = match toml::Value::try_from(config) {
        Ok(mut value) => {
            strip_secrets(&mut value, "", &mut left_out);
            toml::to_string(&value).unwrap_or_else(|e| format!("# cannot render it: {e}\n"))
        }
        Err(e) => format!("# cannot render it: {e}\n"),
    };
    let left_out = if left_out.is_empty() {
        "nothing".to_owned()
    } else {
        left_out.join(", ")
    };
    format!(
        "# p2posd's effective configuration: the defaults, then the config file, then the\n\
         # environment and flags; rendered when the node started, in the shape of p2posd.toml.\n\
         # Left out as secret: {left_out}.\n\n{body}"
    )
}

fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let last = key.rsplit(['_', '-', '.']).next().unwrap_or_default();
    SECRET_WORDS.contains(&last)
}

/// Removes secret keys from `value`'s tables, however deep, noting their dotted paths.
fn strip_secrets(value: &mut toml::Value, path: &str, left_out: &mut Vec<String>) {
    match value {
        toml::Value::Table(table) => {
            let secret: Vec<String> = table.keys().filter(|k| is_secret(k)).cloned().collect();
            for key in secret {
                table.remove(&key);
                left_out.push(format!("{path}{key}"));
            }
            for (key, inner) in table.iter_mut() {
                strip_secrets(inner, &format!("{path}{key}."), left_out);
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                strip_secrets(item, path, left_out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_valid_config_file_of_the_same_settings() {
        let mut config = NodeConfig {
            data_dir: "/tmp/node".into(),
            ..NodeConfig::default()
        };
        config.network.mdns = false;
        config.gateway.tcp = Some("127.0.0.1:5000".parse().unwrap());
        let text = render(&config);
        assert!(text.contains("Left out as secret: nothing."), "{text}");
        let back: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.network, config.network);
        assert_eq!(back.gateway, config.gateway);
        assert_eq!(back.data_dir, config.data_dir);
        assert!(
            text.contains("[network]") && text.contains("mdns = false"),
            "{text}"
        );
    }

    #[test]
    fn secret_keys_are_left_out_and_named() {
        let mut value: toml::Value = toml::from_str(
            "a = 1\napi_token = \"t\"\n[x]\nprivate_key = \"k\"\nmax_send_keys = 3\n\
             trust_private_addresses = true\nsend_key_ttl_secs = 1\n[[y]]\npassword = \"p\"\n",
        )
        .unwrap();
        let mut left_out = Vec::new();
        strip_secrets(&mut value, "", &mut left_out);
        let text = toml::to_string(&value).unwrap();
        assert!(!text.contains("\"t\"") && !text.contains("\"k\"") && !text.contains("\"p\""));
        assert!(text.contains("max_send_keys = 3"), "{text}");
        assert!(text.contains("trust_private_addresses = true"), "{text}");
        assert!(text.contains("send_key_ttl_secs = 1"), "{text}");
        left_out.sort();
        assert_eq!(left_out, ["api_token", "x.private_key", "y.password"]);
    }
}
