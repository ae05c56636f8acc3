//! Several users: API tokens from a file, each a named tenant, some with the admin scope.
//!
//! `AGENT_API_TOKENS_FILE` names a JSON file listing the tenants and the SHA-256 of each one's
//! token (never the token itself):
//!
//! ```json
//! {"tenants": [
//!   {"name": "alice", "sha256": "<64 hex digits>"},
//!   {"name": "ops", "sha256": "<64 hex digits>", "admin": true}
//! ]}
//! ```
//!
//! `agent token new NAME [--admin]` prints a fresh random token once, and the entry to add.
//! A tenant sees and controls only its own jobs and live sandboxes (another tenant's id answers
//! exactly as an unknown id does); a token with `"admin": true`, and `AGENT_API_TOKEN` (the
//! admin, unnamed), see and control everything. Every job records the tenant that submitted it
//! ([`JobSpec::tenant`]). Presented tokens are hashed and compared with every stored digest in
//! constant time ([`subtle`]); the tokens are never stored, logged or echoed.

use std::path::Path;
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use agent_core::manager::JobManager;
use agent_core::{Job, JobFilter, JobId, JobSpec, SecretString};

/// What a new token starts with (so a leaked one is easy to search for).
pub const TOKEN_PREFIX: &str = "agt_";

/// The metrics label of jobs without a tenant (the admin's, or a server without tenants).
pub const ADMIN_LABEL: &str = "admin";

/// The metrics label of jobs whose tenant is no longer in the tokens file.
pub const OTHER_LABEL: &str = "other";

/// The longest tenant name.
pub const MAX_NAME_LEN: usize = 64;

/// Who sent a request: a named tenant, the admin, or both (a tenant with the admin scope).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    name: Option<Arc<str>>,
    admin: bool,
}

impl Caller {
    /// The unnamed admin: `AGENT_API_TOKEN`, or anyone on a server without tokens.
    pub fn admin() -> Self {
        Self {
            name: None,
            admin: true,
        }
    }

    /// A named tenant; `admin`: with the admin scope.
    pub fn tenant(name: impl Into<Arc<str>>, admin: bool) -> Self {
        Self {
            name: Some(name.into()),
            admin,
        }
    }

    /// The tenant's name (`None`: the unnamed admin).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether it sees and controls every job.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Whether it may see and control `job`.
    pub fn sees(&self, job: &Job) -> bool {
        self.owns(job.spec.tenant.as_deref())
    }

    /// Whether it may see and control what `tenant` owns.
    pub fn owns(&self, tenant: Option<&str>) -> bool {
        self.admin || (self.name.is_some() && tenant == self.name())
    }

    /// Marks `spec` as this caller's (every front end that makes a job calls it at admission).
    pub fn stamp(&self, spec: &mut JobSpec) {
        spec.tenant = self.name.as_deref().map(str::to_string);
    }

    /// `filter` narrowed to what this caller may list.
    pub fn narrow(&self, filter: JobFilter) -> JobFilter {
        match (&self.name, self.admin) {
            (Some(name), false) => filter.of_tenant(name.as_ref()),
            _ => filter,
        }
    }

    /// Fails with [`agent_core::Error::JobNotFound`] — exactly as for an unknown id — unless
    /// the caller may see job `id`. The admin is not looked up.
    pub async fn check(&self, manager: &JobManager, id: JobId) -> Result<(), agent_core::Error> {
        self.checked(manager, id).await.map(drop)
    }

    /// [`check`](Self::check), handing back the job it read to tell (`None` for the admin,
    /// who is not looked up), so a handler that needs the job does not read it again.
    pub async fn checked(
        &self,
        manager: &JobManager,
        id: JobId,
    ) -> Result<Option<std::sync::Arc<Job>>, agent_core::Error> {
        if self.admin {
            return Ok(None);
        }
        match manager.get_shared(id).await {
            Ok(job) if self.sees(&job) => Ok(Some(job)),
            Ok(_) | Err(agent_core::Error::JobNotFound(_)) => {
                Err(agent_core::Error::JobNotFound(id))
            }
            Err(e) => Err(e),
        }
    }
}

/// One entry of the tokens file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantToken {
    /// The tenant's name.
    pub name: String,
    /// The SHA-256 of its token.
    pub digest: [u8; 32],
    /// Whether it has the admin scope.
    pub admin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    tenants: Vec<FileEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    admin: bool,
}

/// The SHA-256 of a token.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("must have 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may hold only ASCII letters, digits, '-', '_' and '.'".into());
    }
    if name == ADMIN_LABEL || name == OTHER_LABEL {
        return Err(format!("{name:?} is reserved (a metrics label)"));
    }
    Ok(())
}

/// Parses the tokens file's text. The error names the line and column (malformed JSON, an
/// unknown or missing field) or the entry and field (`tenants[2].sha256: …`) at fault.
pub fn parse_tokens(text: &str) -> Result<Vec<TenantToken>, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let doc: FileDoc = serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        let path = e.path().to_string();
        let at = if path == "." { String::new() } else { format!("{path}: ") };
        format!(
            "{at}{inner} (expected {{\"tenants\": [{{\"name\": …, \"sha256\": …, \"admin\": false}}]}})"
        )
    })?;
    let mut out: Vec<TenantToken> = Vec::with_capacity(doc.tenants.len());
    for (i, entry) in doc.tenants.into_iter().enumerate() {
        let field = |f: &str| format!("tenants[{i}].{f}");
        check_name(&entry.name).map_err(|e| format!("{}: {e}", field("name")))?;
        let digest = parse_digest(&entry.sha256).ok_or_else(|| {
            let hint = if entry.sha256.starts_with(TOKEN_PREFIX) {
                " (this looks like a token in clear: store only its SHA-256, as `agent token new` prints it)"
            } else {
                ""
            };
            format!(
                "{}: expected the token's SHA-256 as 64 hex digits{hint}",
                field("sha256")
            )
        })?;
        if let Some(j) = out.iter().position(|t| t.name == entry.name) {
            return Err(format!(
                "{}: the name {:?} is also tenants[{j}]'s",
                field("name"),
                entry.name
            ));
        }
        if let Some(j) = out.iter().position(|t| bool::from(t.digest.ct_eq(&digest))) {
            return Err(format!(
                "{}: the same token as tenants[{j}] ({:?})",
                field("sha256"),
                out[j].name
            ));
        }
        out.push(TenantToken {
            name: entry.name,
            digest,
            admin: entry.admin,
        });
    }
    Ok(out)
}

/// Reads and parses the tokens file at `path` (errors name the file, and the line or field).
pub fn load_tokens_file(path: &Path) -> Result<Vec<TenantToken>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("AGENT_API_TOKENS_FILE {}: {e}", path.display()))?;
    parse_tokens(&text).map_err(|e| format!("AGENT_API_TOKENS_FILE {}: {e}", path.display()))
}

/// A fresh random token (`agt_` and 43 base64url characters: 256 bits from the OS-seeded
/// CSPRNG).
pub fn new_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The tokens file entry of tenant `name` whose token is `token`.
pub fn file_entry(name: &str, token: &str, admin: bool) -> Result<String, String> {
    check_name(name).map_err(|e| format!("NAME: {e}"))?;
    let entry = serde_json::json!({
        "name": name,
        "sha256": hex(&digest(token.as_bytes())),
        "admin": admin,
    });
    Ok(entry.to_string())
}

#[derive(Debug, Default)]
struct Registry {
    /// Each token's digest and who it is.
    entries: Vec<([u8; 32], Caller)>,
    /// The tenants' names (the only `tenant` label values besides `admin` and `other`).
    names: Vec<String>,
}

/// The API's tokens: `AGENT_API_TOKEN` (the admin) and the tokens file's tenants. Empty: no
/// authentication (everyone is the admin). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    inner: Arc<Registry>,
}

impl Tokens {
    /// The admin token (when set) and the tenants. Refuses an admin token that is also a
    /// tenant's.
    pub fn new(admin: Option<&SecretString>, tenants: &[TenantToken]) -> Result<Self, String> {
        let mut entries = Vec::with_capacity(tenants.len() + 1);
        if let Some(token) = admin {
            let d = digest(token.expose().as_bytes());
            if let Some(t) = tenants.iter().find(|t| bool::from(t.digest.ct_eq(&d))) {
                return Err(format!(
                    "AGENT_API_TOKEN is also the token of tenant {:?} in AGENT_API_TOKENS_FILE",
                    t.name
                ));
            }
            entries.push((d, Caller::admin()));
        }
        for t in tenants {
            entries.push((t.digest, Caller::tenant(t.name.as_str(), t.admin)));
        }
        Ok(Self {
            inner: Arc::new(Registry {
                entries,
                names: tenants.iter().map(|t| t.name.clone()).collect(),
            }),
        })
    }

    /// Whether requests need a token.
    pub fn required(&self) -> bool {
        !self.inner.entries.is_empty()
    }

    /// The tenants' names, as in the tokens file.
    pub fn names(&self) -> &[String] {
        &self.inner.names
    }

    /// Whether a tokens file configured tenants.
    pub fn has_tenants(&self) -> bool {
        !self.inner.names.is_empty()
    }

    /// Who `presented` is the token of. Its digest is compared with every stored one, in
    /// constant time, whether or not one matched already.
    pub fn identify(&self, presented: &[u8]) -> Option<Caller> {
        let d = digest(presented);
        let mut found = None;
        for (stored, caller) in &self.inner.entries {
            if bool::from(stored.ct_eq(&d)) {
                found = Some(caller);
            }
        }
        found.cloned()
    }

    /// Who the `Authorization: Bearer <token>` header of `headers` is, if a known token.
    pub fn bearer(&self, headers: &HeaderMap) -> Option<Caller> {
        bearer_token(headers).and_then(|t| self.identify(t))
    }

    /// The `tenant` metrics label of a job owned by `tenant`: its name while the tokens file
    /// lists it, [`ADMIN_LABEL`] for none, [`OTHER_LABEL`] for a name no longer listed (so
    /// the label takes only configured values).
    pub fn label<'a>(&'a self, tenant: Option<&str>) -> &'a str {
        match tenant {
            None => ADMIN_LABEL,
            Some(t) => self
                .inner
                .names
                .iter()
                .find(|n| n.as_str() == t)
                .map_or(OTHER_LABEL, String::as_str),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, the token
/// trimmed).
pub fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    value
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| value.get(7..))
        .map(<[u8]>::trim_ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, token: &str, admin: bool) -> String {
        file_entry(name, token, admin).unwrap()
    }

    #[test]
    fn a_file_of_entries_made_by_file_entry_parses_and_identifies_its_tokens() {
        let text = format!(
            "{{\"tenants\": [\n  {},\n  {}\n]}}",
            entry("alice", "tok-a", false),
            entry("ops", "tok-o", true)
        );
        assert!(!text.contains("tok-a"), "{text}");
        let tenants = parse_tokens(&text).unwrap();
        assert_eq!(tenants.len(), 2);
        let admin = SecretString::new("tok-admin");
        let tokens = Tokens::new(Some(&admin), &tenants).unwrap();
        assert!(tokens.required() && tokens.has_tenants());
        assert_eq!(
            tokens.identify(b"tok-a"),
            Some(Caller::tenant("alice", false))
        );
        assert_eq!(tokens.identify(b"tok-o"), Some(Caller::tenant("ops", true)));
        assert_eq!(tokens.identify(b"tok-admin"), Some(Caller::admin()));
        assert_eq!(tokens.identify(b"tok-b"), None);
        assert_eq!(tokens.identify(b""), None);
        assert_eq!(tokens.label(Some("alice")), "alice");
        assert_eq!(tokens.label(None), ADMIN_LABEL);
        assert_eq!(tokens.label(Some("gone")), OTHER_LABEL);
    }

    #[test]
    fn bad_files_are_refused_naming_the_line_or_the_field() {
        let good = digest(b"x");
        let good = hex(&good);
        let other = hex(&digest(b"y"));
        let cases: Vec<(String, &str)> = vec![
            ("{\"tenants\": [\n{\"name\": \"a\",}]}".into(), "line 2"),
            ("[]".into(), "expected"),
            ("{\"tenants\": [{\"name\": \"a\"}]}".into(), "sha256"),
            (
                format!("{{\"tenants\": [{{\"name\": \"a\", \"sha256\": \"{good}\", \"scope\": 1}}]}}"),
                "tenants[0]",
            ),
            (
                "{\"tenants\": [{\"name\": \"a\", \"sha256\": \"agt_abc\"}]}".into(),
                "in clear",
            ),
            (
                "{\"tenants\": [{\"name\": \"a\", \"sha256\": \"zz\"}]}".into(),
                "tenants[0].sha256",
            ),
            (
                format!("{{\"tenants\": [{{\"name\": \"a b\", \"sha256\": \"{good}\"}}]}}"),
                "tenants[0].name",
            ),
            (
                format!("{{\"tenants\": [{{\"name\": \"admin\", \"sha256\": \"{good}\"}}]}}"),
                "reserved",
            ),
            (
                format!(
                    "{{\"tenants\": [{{\"name\": \"a\", \"sha256\": \"{good}\"}}, {{\"name\": \"a\", \"sha256\": \"{other}\"}}]}}"
                ),
                "tenants[1].name: the name \"a\" is also tenants[0]'s",
            ),
            (
                format!(
                    "{{\"tenants\": [{{\"name\": \"a\", \"sha256\": \"{good}\"}}, {{\"name\": \"b\", \"sha256\": \"{}\"}}]}}",
                    good.to_uppercase()
                ),
                "tenants[1].sha256: the same token as tenants[0]",
            ),
        ];
        for (text, want) in cases {
            let err = parse_tokens(&text).unwrap_err();
            assert!(err.contains(want), "{text}: {err} (wanted {want:?})");
        }
    }

    #[test]
    fn the_admin_token_may_not_be_a_tenants_and_new_tokens_are_fresh() {
        let tenants =
            parse_tokens(&format!("{{\"tenants\": [{}]}}", entry("a", "same", false))).unwrap();
        let err = Tokens::new(Some(&SecretString::new("same")), &tenants).unwrap_err();
        assert!(err.contains("\"a\""), "{err}");
        assert!(!err.contains("same"), "{err}");
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 43);
        assert!(file_entry("bad name", &a, false).is_err());
        assert!(!Tokens::default().required());
    }

    #[test]
    fn callers_see_their_own_jobs_and_the_admin_every_job() {
        let mut job = Job::new(JobId::new(), JobSpec::default());
        let alice = Caller::tenant("alice", false);
        alice.stamp(&mut job.spec);
        assert_eq!(job.spec.tenant.as_deref(), Some("alice"));
        assert!(alice.sees(&job));
        assert!(!Caller::tenant("bob", false).sees(&job));
        assert!(Caller::tenant("ops", true).sees(&job));
        assert!(Caller::admin().sees(&job));
        let mut mine = Job::new(JobId::new(), JobSpec::default());
        Caller::admin().stamp(&mut mine.spec);
        assert!(!alice.sees(&mine));
        assert_eq!(
            alice.narrow(JobFilter::default()).tenant.as_deref(),
            Some("alice")
        );
        assert_eq!(
            Caller::tenant("ops", true)
                .narrow(JobFilter::default())
                .tenant,
            None
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bEaReR  tok ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some(&b"tok"[..]));
        h.insert(header::AUTHORIZATION, "Basic tok".parse().unwrap());
        assert_eq!(bearer_token(&h), None);
    }
}
