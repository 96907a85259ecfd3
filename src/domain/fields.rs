//! Values a client or business server sends, parsed once into types that are known to be good.

use std::fmt;

use subtle::ConstantTimeEq;

/// A field that failed to parse: `status` of a retCode "6" reply names the field, the value sent
/// (when there was one) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
    /// What was sent, cut to `SHOWN_VALUE_CHARS`.
    pub sent: Option<String>,
}

/// How much of a refused value a reply repeats: enough to recognise it.
const SHOWN_VALUE_CHARS: usize = 64;

impl FieldError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self { field, problem: problem.into(), sent: None }
    }

    /// The same error, naming the value that was sent.
    pub fn with_sent(mut self, value: &str) -> Self {
        let mut shown: String = value.chars().take(SHOWN_VALUE_CHARS).collect();
        if shown.len() < value.len() {
            shown.push('…');
        }
        self.sent = Some(shown);
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sent {
            Some(sent) => write!(f, "{} {sent:?}: {}", self.field, self.problem),
            None => write!(f, "{}: {}", self.field, self.problem),
        }
    }
}

impl std::error::Error for FieldError {}

/// 32 hex digits, kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Md5Hex(String);

impl Md5Hex {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, FieldError> {
        if text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Md5Hex(text.to_ascii_lowercase()))
        } else {
            Err(FieldError::new(field, "must be 32 hex digits").with_sent(text))
        }
    }

    pub fn of_digest(digest: &[u8]) -> Self {
        Md5Hex(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Md5Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plain file name: no directory part, nothing the file system would read specially.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName(String);

impl FileName {
    const FIELD: &'static str = "fileName";
    const MAX_BYTES: usize = 255;

    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let problem = if text.is_empty() {
            "must not be empty"
        } else if text.len() > Self::MAX_BYTES {
            "must be at most 255 bytes"
        } else if text == "." || text == ".." {
            "must not be . or .."
        } else if text.contains(['/', '\\']) {
            "must not contain / or \\"
        } else if text.chars().any(char::is_control) {
            "must not contain control characters"
        } else {
            return Ok(FileName(text.to_owned()));
        };
        Err(FieldError::new(Self::FIELD, problem).with_sent(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A file size in bytes that fits in 63 bits, so SQLite's INTEGER holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileSize(u64);

impl FileSize {
    pub const FIELD: &'static str = "fileSize";

    pub fn new(bytes: u64) -> Result<Self, FieldError> {
        if bytes <= i64::MAX as u64 {
            Ok(FileSize(bytes))
        } else {
            Err(FieldError::new(Self::FIELD, "must fit in 63 bits"))
        }
    }

    /// A decimal string such as "345000000", as the original clients send it.
    pub fn from_decimal(text: &str) -> Result<Self, FieldError> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(Self::FIELD, "must be a non-negative integer").with_sent(text));
        }
        text.parse::<u64>()
            .map_err(|_| FieldError::new(Self::FIELD, "must fit in 63 bits").with_sent(text))
            .and_then(Self::new)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// The secret in a task's URLs: 128 random bits as 32 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadKey(String);

impl UploadKey {
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bits = [0u8; 16];
        getrandom::getrandom(&mut bits)?;
        Ok(UploadKey(hex::encode(bits)))
    }

    /// A key read back from the store.
    pub fn from_stored(text: String) -> Self {
        UploadKey(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Constant-time, so a client cannot find the key byte by byte from reply times.
    pub fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl fmt::Debug for UploadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UploadKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_error_names_the_value_sent_cut_to_a_recognisable_length() {
        let short = Md5Hex::parse("fileMd5", "abc").unwrap_err();
        assert_eq!(short.to_string(), "fileMd5 \"abc\": must be 32 hex digits");
        let long = FileName::parse(&"x".repeat(300)).unwrap_err();
        let sent = long.sent.unwrap();
        assert_eq!(sent.chars().count(), SHOWN_VALUE_CHARS + 1, "{sent}");
        assert!(sent.ends_with('…'));
        assert_eq!(FieldError::new("file", "is required").to_string(), "file: is required");
    }

    #[test]
    fn md5_accepts_any_case_and_keeps_lower() {
        let md5 = Md5Hex::parse("fileMd5", "04465D416b4eca345976021db8698f15").unwrap();
        assert_eq!(md5.as_str(), "04465d416b4eca345976021db8698f15");
        for bad in [
            "",
            "04465d416b4eca345976021db8698f1",
            "04465d416b4eca345976021db8698f1g",
            "é4465d416b4eca345976021db8698f1",
        ] {
            assert!(Md5Hex::parse("fileMd5", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_name_refuses_paths_and_specials() {
        assert_eq!(FileName::parse("hello.mp4").unwrap().as_str(), "hello.mp4");
        assert!(FileName::parse("数据 (1).tar.gz").is_ok());
        let too_long = "a".repeat(256);
        for bad in ["", ".", "..", "a/b", "../x", "a\\b", "a\0b", "a\nb", too_long.as_str()] {
            assert!(FileName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(FileName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn file_size_takes_decimal_strings_within_63_bits() {
        assert_eq!(FileSize::from_decimal("345000000").unwrap().bytes(), 345_000_000);
        assert_eq!(FileSize::from_decimal("0").unwrap().bytes(), 0);
        assert_eq!(FileSize::from_decimal("9223372036854775807").unwrap().bytes(), i64::MAX as u64);
        for bad in ["", "-1", "1.5", " 1", "1e3", "+5", "9223372036854775808", "99999999999999999999999"] {
            assert!(FileSize::from_decimal(bad).is_err(), "{bad:?}");
        }
        assert!(FileSize::new(u64::MAX).is_err());
    }

    #[test]
    fn upload_keys_are_random_and_compare_exactly() {
        let a = UploadKey::generate().unwrap();
        let b = UploadKey::generate().unwrap();
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a, b);
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
        assert!(!a.matches(""));
        assert!(!a.matches(&a.as_str()[..31]));
    }
}
