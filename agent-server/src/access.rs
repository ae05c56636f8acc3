//! Signed access tokens for a job's desktop and Jupyter Lab.
//!
//! Browsers cannot put an `Authorization` header on a WebSocket or an iframe, so with
//! `AGENT_API_TOKEN` set the desktop and Jupyter paths accept only a short-lived token that an
//! authorised client asked for (`POST /access/{id}`): an HMAC-SHA256 over the job, the service,
//! the mode (view-only or not) and the expiry. The token names no secret — neither the API token
//! nor Jupyter's — and only opens what it was signed for: another job's or another service's
//! path refuses it, and so does every path once it has expired.
//!
//! Wire form: `{expires}.{mode}.{signature}` — `expires` in Unix seconds, `mode` `v` (view only)
//! or `f` (full), `signature` base64url without padding. Job and service come from the path.

use std::fmt;
use std::time::Duration;

use agent_core::JobId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The longest lifetime a token may be given: 24 hours.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The lifetime of a token when none is asked for: 10 minutes.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(600);

/// A service of a job that a token can open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessService {
    /// The job's desktop (noVNC viewer and its VNC WebSocket).
    Desktop,
    /// The job's Jupyter Lab.
    Jupyter,
}

impl AccessService {
    /// The service's name in paths and signatures.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessService::Desktop => "desktop",
            AccessService::Jupyter => "jupyter",
        }
    }
}

impl From<AccessService> for agent_core::Service {
    fn from(s: AccessService) -> Self {
        match s {
            AccessService::Desktop => agent_core::Service::Desktop,
            AccessService::Jupyter => agent_core::Service::Jupyter,
        }
    }
}

impl fmt::Display for AccessService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a valid token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The job.
    pub job: JobId,
    /// The service.
    pub service: AccessService,
    /// Input is refused (the desktop is only watched).
    pub view_only: bool,
    /// Unix seconds after which the token is refused.
    pub expires: i64,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// No token was presented.
    #[error("this path needs a signed access token (POST /access/{{id}} gives one)")]
    Missing,
    /// The token is not of the form `expires.mode.signature`.
    #[error("the access token is malformed")]
    Malformed,
    /// The token has expired.
    #[error("the access token has expired")]
    Expired,
    /// The signature does not match: another job's or service's token, or a forged one.
    #[error("the access token is not valid for this job and service")]
    BadSignature,
}

/// The key's length: HMAC-SHA256's block size.
pub const KEY_BYTES: usize = 64;

/// Signs and checks access tokens with one secret key. Cheap to clone.
#[derive(Clone)]
pub struct AccessSigner {
    key: std::sync::Arc<[u8; KEY_BYTES]>,
}

impl fmt::Debug for AccessSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessSigner { key: <redacted> }")
    }
}

impl AccessSigner {
    /// A signer with a fresh random key: tokens die with the process that issued them.
    pub fn random() -> Self {
        let mut key = [0u8; KEY_BYTES];
        rand::fill(&mut key[..]);
        Self::with_key(key)
    }

    /// A signer with a given key (for several servers sharing tokens, and tests).
    pub fn with_key(key: [u8; KEY_BYTES]) -> Self {
        Self {
            key: std::sync::Arc::new(key),
        }
    }

    fn mac(&self, job: JobId, service: AccessService, view_only: bool, expires: i64) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new(&(*self.key).into());
        let message = format!(
            "containerized-agent access v1\n{job}\n{service}\n{}\n{expires}",
            if view_only { "view" } else { "full" }
        );
        mac.update(message.as_bytes());
        mac
    }

    /// A token for `grant`.
    pub fn sign(&self, grant: &Grant) -> String {
        let tag = self
            .mac(grant.job, grant.service, grant.view_only, grant.expires)
            .finalize()
            .into_bytes();
        format!(
            "{}.{}.{}",
            grant.expires,
            if grant.view_only { 'v' } else { 'f' },
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// A token for `job`'s `service` that expires `ttl` after `now` (Unix seconds).
    pub fn issue(
        &self,
        job: JobId,
        service: AccessService,
        view_only: bool,
        now: i64,
        ttl: Duration,
    ) -> (String, Grant) {
        let ttl = i64::try_from(ttl.min(MAX_TOKEN_TTL).as_secs()).unwrap_or(600);
        let grant = Grant {
            job,
            service,
            view_only,
            expires: now.saturating_add(ttl),
        };
        (self.sign(&grant), grant)
    }

    /// Checks `token` for `job`'s `service` at `now` (Unix seconds).
    pub fn verify(
        &self,
        token: Option<&str>,
        job: JobId,
        service: AccessService,
        now: i64,
    ) -> Result<Grant, AccessError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let token = token.ok_or(AccessError::Missing)?;
        let mut parts = token.splitn(3, '.');
        let (Some(expires), Some(mode), Some(sig)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AccessError::Malformed);
        };
        let expires: i64 = expires.parse().map_err(|_| AccessError::Malformed)?;
        let view_only = match mode {
            "v" => true,
            "f" => false,
            _ => return Err(AccessError::Malformed),
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| AccessError::Malformed)?;
        // The signature first: an expired forgery is reported as a forgery.
        self.mac(job, service, view_only, expires)
            .verify_slice(&sig)
            .map_err(|_| AccessError::BadSignature)?;
        if now >= expires {
            return Err(AccessError::Expired);
        }
        Ok(Grant {
            job,
            service,
            view_only,
            expires,
        })
    }
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_token_opens_what_it_was_signed_for_and_nothing_else() {
        let signer = AccessSigner::with_key([7; KEY_BYTES]);
        let job = JobId::new();
        let (token, grant) = signer.issue(
            job,
            AccessService::Desktop,
            true,
            NOW,
            Duration::from_secs(60),
        );
        assert_eq!(grant.expires, NOW + 60);
        let ok = signer
            .verify(Some(&token), job, AccessService::Desktop, NOW + 59)
            .unwrap();
        assert_eq!(ok, grant);
        assert!(ok.view_only);

        let check = |t: Option<&str>, j, s, now| signer.verify(t, j, s, now).unwrap_err();
        assert_eq!(
            check(Some(&token), job, AccessService::Desktop, NOW + 60),
            AccessError::Expired
        );
        assert_eq!(
            check(Some(&token), JobId::new(), AccessService::Desktop, NOW),
            AccessError::BadSignature
        );
        assert_eq!(
            check(Some(&token), job, AccessService::Jupyter, NOW),
            AccessError::BadSignature
        );
        assert_eq!(
            check(None, job, AccessService::Desktop, NOW),
            AccessError::Missing
        );
        assert_eq!(
            check(Some(""), job, AccessService::Desktop, NOW),
            AccessError::Missing
        );
        // Turning a view-only token into a full one, or stretching its expiry, breaks it.
        let full = token.replacen(".v.", ".f.", 1);
        assert_eq!(
            check(Some(&full), job, AccessService::Desktop, NOW),
            AccessError::BadSignature
        );
        let (_, rest) = token.split_once('.').unwrap();
        let later = format!("{}.{rest}", NOW + 3600);
        assert_eq!(
            check(Some(&later), job, AccessService::Desktop, NOW),
            AccessError::BadSignature
        );
        // Another key's token is refused.
        let other = AccessSigner::with_key([8; KEY_BYTES]);
        assert_eq!(
            other
                .verify(Some(&token), job, AccessService::Desktop, NOW)
                .unwrap_err(),
            AccessError::BadSignature
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let signer = AccessSigner::random();
        let job = JobId::new();
        for bad in ["x", "1.f", "abc.f.AAAA", "1.x.AAAA", "1.f.***", "1.f"] {
            assert_eq!(
                signer
                    .verify(Some(bad), job, AccessService::Jupyter, NOW)
                    .unwrap_err(),
                AccessError::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn lifetimes_are_capped_and_the_key_is_not_printed() {
        let signer = AccessSigner::with_key([1; KEY_BYTES]);
        let (_, grant) = signer.issue(
            JobId::new(),
            AccessService::Jupyter,
            false,
            NOW,
            Duration::from_secs(10 * 24 * 3600),
        );
        assert_eq!(grant.expires, NOW + MAX_TOKEN_TTL.as_secs() as i64);
        assert!(!format!("{signer:?}").contains('1'));
    }
}
