//! Sizes people type: `512K`, `256M`, `1G` (binary units, as `KiB`, `MiB`, `GiB` are; `KB`,
//! `MB`, `GB` are decimal), or a bare number of bytes: one reading for every command (what
//! `resources share --memory 1G` lends is what `jobs run --memory 1G` asks for).

/// The size in bytes in `text`, the value of option `flag` (named in the error).
pub(crate) fn parse(flag: &str, text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| anyhow::anyhow!("{flag} is a size such as 512K, 256M, 1G (got {text:?})"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => anyhow::bail!("{flag}: unknown unit {other:?} (K, M, G, T or B)"),
    };
    let bytes = n * scale as f64;
    if bytes >= u64::MAX as f64 {
        anyhow::bail!("{flag}: {text:?} is too large");
    }
    Ok(bytes.round() as u64)
}

/// [`parse`] as clap's value parser.
pub(crate) fn bytes(text: &str) -> Result<u64, String> {
    parse("", text).map_err(|_| {
        "not a size: bytes, or a size such as 512K, 256M, 1G (binary), 2GB (decimal)".to_owned()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_units() {
        let b = |t: &str| parse("--x", t).unwrap();
        assert_eq!(b("512K"), 512 << 10);
        assert_eq!(b("256M"), 256 << 20);
        assert_eq!(b("256MiB"), 256 << 20);
        assert_eq!(b(" 1G "), 1 << 30);
        assert_eq!(b("1.5G"), 3 << 29);
        assert_eq!(b("2MB"), 2_000_000);
        assert_eq!(b("4096"), 4096);
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        let err = |t: &str| parse("--memory", t).unwrap_err().to_string();
        assert!(err("").starts_with("--memory is a size"), "{}", err(""));
        assert!(err("M").starts_with("--memory is a size"));
        assert!(err("-5M").starts_with("--memory is a size"));
        assert!(err("5Y").contains("unknown unit \"y\""));
    }
}
