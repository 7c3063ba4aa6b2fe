//! Object names as the API accepts them. A name is never a path on the hub (objects are stored
//! under random ids), but clients list names back and save files by them, so a name must be
//! one harmless file name: Unicode NFC (one spelling per name), no path separators, no control
//! characters, not `.` or `..`, 1 to 255 bytes.

use unicode_normalization::UnicodeNormalization;

/// Why a name is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameRefused {
    #[error("the name is empty")]
    Empty,
    #[error("the name has more than 255 bytes (in NFC)")]
    TooLong,
    #[error("the name may not be '.' or '..'")]
    Dot,
    #[error("the name may not contain '/' or '\\'")]
    Separator,
    #[error("the name may not contain control characters (NUL included)")]
    Control,
}

/// The NFC form of `raw` if it is an acceptable object name.
pub fn object_name(raw: &str) -> Result<String, NameRefused> {
    let name: String = raw.nfc().collect();
    if name.is_empty() {
        return Err(NameRefused::Empty);
    }
    if name.len() > 255 {
        return Err(NameRefused::TooLong);
    }
    if name == "." || name == ".." {
        return Err(NameRefused::Dot);
    }
    if name.contains(['/', '\\']) {
        return Err(NameRefused::Separator);
    }
    // Cc covers C0, DEL and C1; line and paragraph separators and bidirectional controls would
    // let a listed name display as another one.
    if name.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}')
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    }) {
        return Err(NameRefused::Control);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_review_are_refused_or_normalised() {
        assert_eq!(object_name("../../x"), Err(NameRefused::Separator));
        assert_eq!(object_name("/etc/passwd"), Err(NameRefused::Separator));
        assert_eq!(object_name("a\\b"), Err(NameRefused::Separator));
        assert_eq!(object_name("a\0b"), Err(NameRefused::Control));
        assert_eq!(object_name("a\nb"), Err(NameRefused::Control));
        assert_eq!(object_name("a\u{202E}gpj.exe"), Err(NameRefused::Control));
        assert_eq!(object_name(".."), Err(NameRefused::Dot));
        assert_eq!(object_name("."), Err(NameRefused::Dot));
        assert_eq!(object_name(""), Err(NameRefused::Empty));
        assert_eq!(object_name(&"a".repeat(256)), Err(NameRefused::TooLong));
        assert_eq!(object_name(&"a".repeat(255)).unwrap().len(), 255);
        // Two spellings of one name: decomposed e + combining acute becomes the composed é.
        assert_eq!(
            object_name("caf\u{0065}\u{0301}.csv").unwrap(),
            "caf\u{e9}.csv"
        );
        assert_eq!(object_name("caf\u{e9}.csv").unwrap(), "caf\u{e9}.csv");
        assert_eq!(object_name("..x").unwrap(), "..x");
        assert_eq!(object_name("scan 1.dcm").unwrap(), "scan 1.dcm");
    }
}
