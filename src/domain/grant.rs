//! Upload grants: what a business server hands a client that must create its upload itself (a tus
//! or IETF client: Uppy, URLSession). A grant names the upload it allows and is signed with the
//! business server's fupload token, so fupload checks it with no round trip and the token never
//! reaches the client. docs/API.md, section 9.4, gives the format:
//!
//! `base64url(JSON claims) "." base64url(HMAC-SHA256(token, "fupload-grant-v1." + base64url(JSON claims)))`
//!
//! without padding. Each grant is redeemed at most once (its `grantId`; the store remembers it).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use super::{FieldError, FileName, FileSize, Md5Hex};

/// What the signature covers besides the claims: a grant is not valid as any other signed text.
const SIGNED_PREFIX: &str = "fupload-grant-v1.";

/// The longest grant accepted: a header of a few KiB is plenty for any claims.
pub const MAX_GRANT_LEN: usize = 8 << 10;

/// The claims of a grant, as they travel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantClaims {
    pub user_id: String,
    pub file_name: String,
    /// `None`: the client tells the length later (tus creation-defer-length).
    pub file_size: Option<u64>,
    pub file_md5: Option<String>,
    #[serde(default)]
    pub store_path: String,
    /// Any JSON; handed back verbatim in the callback.
    #[serde(default)]
    pub feed_back_parameter: Option<Box<RawValue>>,
    /// Seconds since 1970 after which the grant is refused.
    pub expires_at: u64,
    /// Random and unique per grant: a second creation with the same grant is refused.
    pub grant_id: String,
}

impl GrantClaims {
    /// Claims for one upload, valid for `ttl_secs` from `now_secs`, with a random `grantId`.
    pub fn new(
        user_id: &str,
        file_name: &str,
        file_size: Option<u64>,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<Self, getrandom::Error> {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)?;
        Ok(Self {
            user_id: user_id.to_owned(),
            file_name: file_name.to_owned(),
            file_size,
            file_md5: None,
            store_path: String::new(),
            feed_back_parameter: None,
            expires_at: now_secs + ttl_secs,
            grant_id: hex::encode(id),
        })
    }

    /// The grant: these claims signed with the business server's token.
    pub fn sign(&self, token: &str) -> String {
        let claims = serde_json::to_vec(self).expect("grant claims always serialize");
        let claims = URL_SAFE_NO_PAD.encode(claims);
        let signature = URL_SAFE_NO_PAD.encode(signature(token, &claims).finalize().into_bytes());
        format!("{claims}.{signature}")
    }
}

fn signature(token: &str, encoded_claims: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(SIGNED_PREFIX.as_bytes());
    mac.update(encoded_claims.as_bytes());
    mac
}

/// A grant whose signature, expiry and fields were checked.
#[derive(Debug, Clone)]
pub struct UploadGrant {
    pub user_id: String,
    pub file_name: FileName,
    pub file_size: Option<FileSize>,
    pub file_md5: Option<Md5Hex>,
    pub store_path: String,
    /// Raw JSON, verbatim (`null` when there was none).
    pub feedback_parameter: String,
    pub grant_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("is not a grant: expected two base64url parts joined by a dot")]
    Malformed,
    #[error(
        "is not signed by the token of any business server this fupload knows: ask the business server for a new grant"
    )]
    BadSignature,
    #[error("expired at {expires_at} (seconds since 1970): ask the business server for a new grant")]
    Expired { expires_at: u64 },
    #[error("names a bad field: {0}")]
    Field(FieldError),
}

/// The signature's check, then the claims' parse. `tokens` are the configured business servers'
/// tokens; the one that signed the grant is returned with it. Every token is tried, so the time
/// taken tells nothing about which one matched.
pub fn verify<'t>(
    grant: &str,
    tokens: impl IntoIterator<Item = &'t str>,
    now_secs: u64,
) -> Result<(&'t str, UploadGrant), GrantError> {
    if grant.len() > MAX_GRANT_LEN {
        return Err(GrantError::Malformed);
    }
    let (encoded_claims, encoded_signature) = grant.split_once('.').ok_or(GrantError::Malformed)?;
    let sent_signature = URL_SAFE_NO_PAD.decode(encoded_signature).map_err(|_| GrantError::Malformed)?;
    let mut signer = None;
    for token in tokens {
        if signature(token, encoded_claims).verify_slice(&sent_signature).is_ok() {
            signer = Some(token);
        }
    }
    let signer = signer.ok_or(GrantError::BadSignature)?;
    let claims = URL_SAFE_NO_PAD.decode(encoded_claims).map_err(|_| GrantError::Malformed)?;
    let claims: GrantClaims = serde_json::from_slice(&claims)
        .map_err(|e| GrantError::Field(FieldError::new("grant", format!("claims cannot be read: {e}"))))?;
    if claims.expires_at <= now_secs {
        return Err(GrantError::Expired { expires_at: claims.expires_at });
    }
    Ok((signer, parse_claims(claims).map_err(GrantError::Field)?))
}

fn parse_claims(claims: GrantClaims) -> Result<UploadGrant, FieldError> {
    if claims.grant_id.is_empty() || claims.grant_id.len() > 64 {
        return Err(FieldError::new("grantId", "must hold 1 to 64 characters").with_sent(&claims.grant_id));
    }
    if claims.user_id.is_empty() {
        return Err(FieldError::new("userId", "is required"));
    }
    Ok(UploadGrant {
        user_id: claims.user_id,
        file_name: FileName::parse(&claims.file_name)?,
        file_size: claims.file_size.map(FileSize::new).transpose()?,
        file_md5: claims.file_md5.as_deref().map(|md5| Md5Hex::parse("fileMd5", md5)).transpose()?,
        store_path: claims.store_path,
        feedback_parameter: claims.feed_back_parameter.map_or_else(|| "null".to_owned(), |raw| raw.get().to_owned()),
        grant_id: claims.grant_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn claims() -> GrantClaims {
        let mut claims = GrantClaims::new("7", "a.bin", Some(10), NOW, 60).unwrap();
        claims.store_path = "users/7/".into();
        claims.feed_back_parameter = Some(RawValue::from_string(r#"{"album":3}"#.into()).unwrap());
        claims
    }

    #[test]
    fn a_signed_grant_is_verified_and_names_its_signer() {
        let grant = claims().sign("cp2");
        let (signer, checked) = verify(&grant, ["cp1", "cp2"], NOW).unwrap();
        assert_eq!(signer, "cp2");
        assert_eq!((checked.user_id.as_str(), checked.file_name.as_str()), ("7", "a.bin"));
        assert_eq!(checked.file_size.map(|s| s.bytes()), Some(10));
        assert_eq!(checked.feedback_parameter, r#"{"album":3}"#);
    }

    #[test]
    fn a_changed_claim_a_foreign_token_or_an_expired_grant_is_refused() {
        let grant = claims().sign("cp1");
        assert_eq!(verify(&grant, ["other"], NOW).unwrap_err(), GrantError::BadSignature);
        let (encoded, signature) = grant.split_once('.').unwrap();
        let mut forged = claims();
        forged.file_size = Some(1 << 40);
        let forged_claims = forged.sign("cp1").split_once('.').unwrap().0.to_owned();
        assert_ne!(forged_claims, encoded);
        assert_eq!(
            verify(&format!("{forged_claims}.{signature}"), ["cp1"], NOW).unwrap_err(),
            GrantError::BadSignature
        );
        assert!(matches!(verify(&grant, ["cp1"], NOW + 60), Err(GrantError::Expired { .. })));
        assert_eq!(verify("no-dot", ["cp1"], NOW).unwrap_err(), GrantError::Malformed);
        assert_eq!(verify("a.!!", ["cp1"], NOW).unwrap_err(), GrantError::Malformed);
    }

    #[test]
    fn a_signed_grant_with_a_bad_field_is_refused_by_field() {
        let mut bad = claims();
        bad.file_name = "../x".into();
        assert!(matches!(verify(&bad.sign("cp1"), ["cp1"], NOW), Err(GrantError::Field(_))));
    }
}
