//! Payloads of `send` and `services call` given on the command line, read from standard input
//! (`-`) or from a file, never more than the node takes.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// Largest payload (the node refuses more, for a message and for a call).
pub(crate) const MAX_PAYLOAD: u64 = 1024 * 1024;

/// Where a payload comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The text on the command line.
    Text(String),
    /// Standard input, to its end.
    Stdin,
    /// A file's contents.
    File(PathBuf),
}

impl Source {
    /// The payload argument as `send` and `services call` take it: `-` alone is standard
    /// input; `file` (`--file`), if given, wins (and `-` there is standard input too).
    pub(crate) fn from_args(text: Option<String>, file: Option<PathBuf>) -> Source {
        match (text, file) {
            (_, Some(path)) if path.as_os_str() == "-" => Source::Stdin,
            (_, Some(path)) => Source::File(path),
            (Some(text), None) if text == "-" => Source::Stdin,
            (text, None) => Source::Text(text.unwrap_or_default()),
        }
    }

    /// Reads the payload: at most [`MAX_PAYLOAD`] bytes, an error past it.
    pub(crate) fn read(self) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::Text(text) => Ok(text.into_bytes()),
            Source::Stdin => read_limited(std::io::stdin().lock(), "stdin"),
            Source::File(path) => {
                let file = std::fs::File::open(&path).map_err(|e| cannot_read(&path, e))?;
                read_limited(file, &path.display().to_string())
            }
        }
    }
}

fn cannot_read(path: &Path, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot read the payload from {}: {e}", path.display())
}

/// At most [`MAX_PAYLOAD`] bytes from `reader` (named `from` in errors).
fn read_limited(reader: impl Read, from: &str) -> anyhow::Result<Vec<u8>> {
    let mut payload = Vec::new();
    reader
        .take(MAX_PAYLOAD + 1)
        .read_to_end(&mut payload)
        .map_err(|e| anyhow::anyhow!("cannot read the payload from {from}: {e}"))?;
    if payload.len() as u64 > MAX_PAYLOAD {
        anyhow::bail!("the payload from {from} is over the 1 MiB limit");
    }
    Ok(payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dash_is_stdin_and_a_file_wins() {
        let text = |t: &str| Some(t.to_owned());
        assert_eq!(Source::from_args(text("-"), None), Source::Stdin);
        assert_eq!(
            Source::from_args(text("hi"), None),
            Source::Text("hi".into())
        );
        assert_eq!(Source::from_args(None, Some("-".into())), Source::Stdin);
        assert_eq!(
            Source::from_args(None, Some("f".into())),
            Source::File("f".into())
        );
    }

    #[test]
    fn reads_files_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        std::fs::write(&path, vec![7u8; MAX_PAYLOAD as usize]).unwrap();
        assert_eq!(
            Source::File(path.clone()).read().unwrap().len() as u64,
            MAX_PAYLOAD
        );
        std::fs::write(&path, vec![7u8; MAX_PAYLOAD as usize + 1]).unwrap();
        let err = Source::File(path.clone()).read().unwrap_err().to_string();
        assert!(err.contains("over the 1 MiB limit"), "{err}");
        let err = Source::File(dir.path().join("none")).read().unwrap_err();
        assert!(err.to_string().starts_with("cannot read the payload from"));
    }
}
