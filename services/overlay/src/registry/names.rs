//! What the registry is given from elsewhere than the gateway (a peer's call or channel):
//! service names (always `<name>/<version>`), descriptions, and payloads.

use p2pos_protocols::wire::MAX_PAYLOAD;

use p2pos_protocols::ids::ServiceName;

use crate::Error;

/// Longest service description, in bytes.
pub(crate) const MAX_DESCRIPTION: usize = 256;

/// Checks a service name as the registry takes it: `<name>/<version>` ([`ServiceName`]).
pub(crate) fn validate_service(input: &str) -> Result<(), Error> {
    ServiceName::parse(input)
        .map(|_| ())
        .map_err(|reason| Error::InvalidServiceName {
            input: input.chars().take(80).collect(),
            reason,
        })
}

/// Checks a description: at most [`MAX_DESCRIPTION`] bytes.
pub(crate) fn validate_description(description: &str) -> Result<(), Error> {
    match description.len() {
        size if size > MAX_DESCRIPTION => Err(Error::DescriptionTooLong { size }),
        _ => Ok(()),
    }
}

/// Checks a call's or a reply's payload: at most 1 MiB.
pub(crate) fn validate_payload(what: &'static str, size: usize) -> Result<(), Error> {
    match size {
        size if size > MAX_PAYLOAD => Err(Error::PayloadTooLarge { what, size }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_names_need_a_version() {
        assert!(validate_service("translate/1").is_ok());
        assert!(validate_service("org.example_x-y/123456789").is_ok());
        let reason = |input: &str| match validate_service(input) {
            Err(Error::InvalidServiceName { reason, .. }) => reason,
            other => panic!("{input:?}: {other:?}"),
        };
        assert_eq!(reason(""), "the name is empty");
        assert_eq!(
            reason("translate"),
            "it has no version (write it as name/version)"
        );
        assert_eq!(
            reason(&"x".repeat(49)),
            "the name is longer than 48 characters"
        );
        assert_eq!(
            reason("a b/1"),
            "the name has a character other than [A-Za-z0-9._-]"
        );
        assert_eq!(reason("a/v1"), "the version is not 1 to 9 digits");
        assert_eq!(reason("a/1/2"), "the version is not 1 to 9 digits");
        assert_eq!(reason("a/01"), "the version has a leading zero");
    }

    #[test]
    fn descriptions_and_payloads_are_bounded() {
        assert!(validate_description(&"d".repeat(256)).is_ok());
        assert!(matches!(
            validate_description(&"d".repeat(257)),
            Err(Error::DescriptionTooLong { size: 257 })
        ));
        assert!(validate_payload("a call payload", MAX_PAYLOAD).is_ok());
        assert!(validate_payload("a call payload", MAX_PAYLOAD + 1).is_err());
    }
}
