//! The domain's values as SQLite and PostgreSQL columns: a value read back is parsed again, so a
//! row this version cannot read is an error, never a default.

use std::time::SystemTime;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

use crate::domain::{ConcatRole, FieldError, FileName, FileSize, Md5Hex, Protocol, TaskStatus};

/// Implements `Type`, `Encode` and `Decode` for a value stored as the SQL type of `$stored`,
/// written by `$encode` and read back by `$decode`.
macro_rules! stored_as {
    ($value:ty, $stored:ty, $encode:expr, $decode:expr) => {
        impl Type<Sqlite> for $value {
            fn type_info() -> SqliteTypeInfo {
                <$stored as Type<Sqlite>>::type_info()
            }

            fn compatible(ty: &SqliteTypeInfo) -> bool {
                <$stored as Type<Sqlite>>::compatible(ty)
            }
        }

        impl<'q> Encode<'q, Sqlite> for $value {
            fn encode_by_ref(&self, args: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
                let stored: $stored = $encode(self);
                <$stored as Encode<'q, Sqlite>>::encode(stored, args)
            }
        }

        impl<'r> Decode<'r, Sqlite> for $value {
            fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
                let stored = <$stored as Decode<'r, Sqlite>>::decode(value)?;
                Ok($decode(stored)?)
            }
        }

        impl Type<Postgres> for $value {
            fn type_info() -> PgTypeInfo {
                <$stored as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <$stored as Type<Postgres>>::compatible(ty)
            }
        }

        impl Encode<'_, Postgres> for $value {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                let stored: $stored = $encode(self);
                <$stored as Encode<'_, Postgres>>::encode(stored, buf)
            }
        }

        impl<'r> Decode<'r, Postgres> for $value {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let stored = <$stored as Decode<'r, Postgres>>::decode(value)?;
                Ok($decode(stored)?)
            }
        }
    };
}

stored_as!(TaskStatus, String, |s: &TaskStatus| s.as_str().to_owned(), |text: String| text.parse::<TaskStatus>());
stored_as!(Md5Hex, String, |m: &Md5Hex| m.as_str().to_owned(), |text: String| Md5Hex::parse("file_md5", &text));
stored_as!(FileName, String, |n: &FileName| n.as_str().to_owned(), |text: String| FileName::parse(&text));
stored_as!(Protocol, String, |p: &Protocol| p.as_str().to_owned(), |text: String| text.parse::<Protocol>());
stored_as!(ConcatRole, String, |r: &ConcatRole| r.as_str().to_owned(), |text: String| text.parse::<ConcatRole>());
// FileSize keeps within 63 bits, so a signed 64-bit INTEGER (BIGINT) holds every one.
stored_as!(FileSize, i64, |s: &FileSize| i64::try_from(s.bytes()).unwrap_or(i64::MAX), |n: i64| {
    u64::try_from(n).map_err(|_| FieldError::new(FileSize::FIELD, "must not be negative")).and_then(FileSize::new)
});

/// A moment as the schema keeps it: ISO-8601 UTC text with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

stored_as!(Timestamp, String, |t: &Timestamp| super::timestamp(t.0), |text: String| humantime::parse_rfc3339(&text)
    .map(Timestamp));
