//! Checking what port forwarding is given: service names (the registry's grammar, a bare name
//! meaning version 1) and loopback `HOST:PORT` addresses.

use std::net::SocketAddr;

use p2pos_protocols::ids::{ServiceName, invalid_service_name};

use crate::Error;

/// Checks a service name and returns it in canonical form, `<name>/<version>`, as the
/// registry's grammar says ([`ServiceName`]); a bare name (no `/`) gets version `1`.
pub(crate) fn parse_service_name(input: &str) -> Result<String, Error> {
    ServiceName::parse_or_first(input)
        .map(ServiceName::into_string)
        .map_err(|reason| Error::InvalidServiceName(invalid_service_name(input, reason)))
}

/// Parses a loopback `HOST:PORT`: an IPv4 address in 127.0.0.0/8, `[::1]`, or `localhost`
/// (as 127.0.0.1). `what` names the field in the error.
pub(crate) fn parse_loopback(what: &'static str, input: &str) -> Result<SocketAddr, Error> {
    let invalid = |reason: String| Error::InvalidAddress {
        what,
        input: input.chars().take(80).collect(),
        reason,
    };
    let addr: SocketAddr = match input.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|e| invalid(format!("bad port: {e}")))?,
        None => input.parse().map_err(|_| {
            invalid("expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080".to_owned())
        })?,
    };
    if !addr.ip().is_loopback() {
        return Err(invalid(format!(
            "{} is not a loopback address (127.0.0.0/8 or ::1)",
            addr.ip()
        )));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_the_registrys_in_canonical_form() {
        // The grammar itself is `ServiceName`'s, tested with it.
        assert_eq!(parse_service_name("web").expect("bare"), "web/1");
        assert_eq!(parse_service_name("web/2").expect("versioned"), "web/2");
        for bad in ["", "web/01", &"x".repeat(49)] {
            let err = parse_service_name(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidServiceName(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn only_loopback_addresses_are_taken() {
        let ok = |s: &str| parse_loopback("target", s).expect(s).to_string();
        assert_eq!(ok("127.0.0.1:80"), "127.0.0.1:80");
        assert_eq!(ok("127.1.2.3:0"), "127.1.2.3:0");
        assert_eq!(ok("[::1]:8080"), "[::1]:8080");
        assert_eq!(ok("localhost:22"), "127.0.0.1:22");
        for bad in [
            "",
            "127.0.0.1",
            "0.0.0.0:80",
            "10.0.0.1:80",
            "[::]:80",
            "example.com:80",
            "localhost:99999",
            "127.0.0.1:http",
        ] {
            let err = parse_loopback("target", bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidAddress { .. }), "{bad}: {err}");
        }
    }
}
