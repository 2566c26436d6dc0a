//! Signal names as the open spec writes them ("SIGTERM", or "TERM" where allowed), parsed into
//! [`Signal`]s, and the names of the signals that killed a process.

use nix::sys::signal::Signal;

use crate::Error;

/// Signals a spec may name as its stop signal.
const STOP_SIGNALS: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGKILL,
];
const STOP_ALLOWED: &str = "SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 or SIGKILL";

/// Signals `SignalHelper` may send: the stop signals plus SIGSTOP and SIGCONT.
const SENDABLE: &[Signal] = &[Signal::SIGSTOP, Signal::SIGCONT];
const SEND_ALLOWED: &str =
    "SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL, SIGSTOP or SIGCONT";

/// The default stop signal.
pub(crate) const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGTERM;

fn lookup(given: &str, allowed: &[Signal]) -> Option<Signal> {
    let upper = given.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    allowed.iter().copied().find(|s| s.as_str() == full)
}

/// A spec's stop signal: empty means SIGTERM; with or without the `SIG` prefix.
pub(crate) fn parse_stop_signal(given: &str) -> Result<Signal, Error> {
    if given.is_empty() {
        return Ok(DEFAULT_STOP_SIGNAL);
    }
    lookup(given, STOP_SIGNALS).ok_or_else(|| Error::InvalidSignal {
        given: given.chars().take(32).collect(),
        allowed: STOP_ALLOWED,
    })
}

/// A signal `SignalHelper` may send (with or without the `SIG` prefix).
pub(crate) fn parse_sendable(given: &str) -> Result<Signal, Error> {
    lookup(given, STOP_SIGNALS)
        .or_else(|| lookup(given, SENDABLE))
        .ok_or_else(|| Error::InvalidSignal {
            given: given.chars().take(32).collect(),
            allowed: SEND_ALLOWED,
        })
}

/// "SIGSEGV" for 11; "signal 99" for a number without a name.
pub(crate) fn name(signo: i32) -> String {
    Signal::try_from(signo)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {signo}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_parse_with_or_without_the_prefix() {
        assert_eq!(parse_stop_signal("").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_stop_signal("SIGINT").unwrap(), Signal::SIGINT);
        assert_eq!(parse_stop_signal("usr1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_stop_signal("KILL").unwrap(), Signal::SIGKILL);
        assert!(
            parse_stop_signal("SIGSTOP").is_err(),
            "SIGSTOP stops nothing"
        );
        assert!(parse_stop_signal("SIGSEGV").is_err());
        assert!(parse_stop_signal("15").is_err());
        let err = parse_stop_signal("TERMINATE").unwrap_err();
        assert!(err.to_string().contains("SIGTERM, SIGINT"), "{err}");
    }

    #[test]
    fn sendable_signals_include_stop_and_cont() {
        assert_eq!(parse_sendable("SIGSTOP").unwrap(), Signal::SIGSTOP);
        assert_eq!(parse_sendable("CONT").unwrap(), Signal::SIGCONT);
        assert_eq!(parse_sendable("SIGHUP").unwrap(), Signal::SIGHUP);
        assert!(parse_sendable("").is_err());
        assert!(parse_sendable("SIGSEGV").is_err());
    }

    #[test]
    fn signal_numbers_have_names() {
        assert_eq!(name(9), "SIGKILL");
        assert_eq!(name(11), "SIGSEGV");
        assert_eq!(name(999), "signal 999");
    }
}
