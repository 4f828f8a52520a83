//! [`S3`]: a repository as objects under a prefix of an S3 bucket (FORMAT.md, section
//! 11), through Apache Arrow's `object_store` client. It signs requests, retries
//! transient failures (connection errors, 5xx, 429 and SlowDown) with exponential
//! backoff, and reads ranges; its async API stays inside this file, on a runtime of
//! its own, behind the same blocking [`Backend`] the local directory implements.
//!
//! Object-store semantics (no rename, no directory fsync) suit the format: packs and
//! snapshots are uploaded under their content names in one PUT each (a pack is at most
//! a few tens of MiB, well under S3's 5 GiB single-PUT limit), so an object is either
//! absent or whole, never half-uploaded and visible, and a retried upload writes the
//! same bytes again. No multipart upload is ever started, so none is left behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload};

use super::profile::Profile;
use super::{Backend, ObjectKind, ObjectMeta};
use crate::error::{Error, IoContext, Result};

/// Everything needed to reach the bucket, from the AWS conventions.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Settings {
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
    /// AWS_DEFAULT_REGION), AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), and where one is
    /// unset, the AWS_PROFILE profile (else `default`) of the shared config files.
    pub fn from_env(bucket: &str, prefix: &str) -> Result<S3Settings> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let profile = Profile::load(&env("AWS_PROFILE").unwrap_or_else(|| "default".into()));
        let from = |vars: &[&str], key: &str| {
            vars.iter()
                .find_map(|v| env(v))
                .or_else(|| profile.get(key).map(String::from))
        };
        let missing = |what: &str| {
            Error::Store {
            object: format!("s3://{bucket}"),
            reason: format!(
                "no {what}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (AWS_PROFILE)"
            ),
        }
        };
        Ok(S3Settings {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: from(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"], "endpoint_url"),
            region: from(&["AWS_REGION", "AWS_DEFAULT_REGION"], "region")
                .unwrap_or_else(|| "us-east-1".into()),
            access_key_id: from(&["AWS_ACCESS_KEY_ID"], "aws_access_key_id")
                .ok_or_else(|| missing("access key id"))?,
            secret_access_key: from(&["AWS_SECRET_ACCESS_KEY"], "aws_secret_access_key")
                .ok_or_else(|| missing("secret access key"))?,
            session_token: from(&["AWS_SESSION_TOKEN"], "aws_session_token"),
        })
    }

    fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// How long requests may take and how hard they are retried. A throttled store
/// (503 SlowDown, 429) is waited out for up to [`RETRY_FOR`] per request rather than
/// failing the backup; a request that hangs is cut off after [`REQUEST_TIMEOUT`] and
/// retried.
const RETRY_FOR: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A bucket prefix holding a repository.
pub struct S3 {
    store: Arc<AmazonS3>,
    runtime: tokio::runtime::Runtime,
    settings: S3Settings,
}

impl S3 {
    /// A client for `settings`, checked with one listing of the prefix so that a wrong
    /// endpoint, credentials or bucket fail now, in one line, and after a few seconds
    /// rather than the minutes of retries a running backup allows itself.
    pub fn connect(settings: S3Settings) -> Result<S3> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dedisk-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::Store {
                object: settings.url(),
                reason: format!("cannot start the S3 client: {e}"),
            })?;
        let patient = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: 30,
            retry_timeout: RETRY_FOR,
        };
        let quick = object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let probe = build(&settings, quick)?;
        let store = Arc::new(build(&settings, patient)?);
        let s3 = S3 {
            store,
            runtime,
            settings,
        };
        let prefix = s3.key("");
        let mut checked = s3
            .runtime
            .block_on(async { probe.list_with_delimiter(Some(&prefix)).await });
        if let Err(e) = &checked {
            // A store that answers "busy" (503 SlowDown, 429, other 5xx) is there and
            // will be waited for like any request; only silence fails quickly.
            let text = e.to_string();
            let busy = [" 500 ", " 502 ", " 503 ", " 504 ", " 429 ", "SlowDown"]
                .iter()
                .any(|c| text.contains(c));
            if busy {
                checked = s3
                    .runtime
                    .block_on(async { s3.store.list_with_delimiter(Some(&prefix)).await });
            }
        }
        if let Err(e) = checked {
            return Err(Error::Store {
                object: s3.settings.url(),
                reason: match e {
                    e if matches!(e, object_store::Error::NotFound { .. })
                        || e.to_string().contains("NoSuchBucket") =>
                    {
                        format!(
                            "bucket {} does not exist at {}",
                            s3.settings.bucket,
                            s3.endpoint()
                        )
                    }
                    e => reason(&e, &s3.endpoint()),
                },
            });
        }
        Ok(s3)
    }

    fn endpoint(&self) -> String {
        self.settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("s3.{}.amazonaws.com", self.settings.region))
    }

    /// The object key of a path relative to the repository root.
    fn key(&self, relative: &str) -> ObjectPath {
        let full = match (self.settings.prefix.is_empty(), relative.is_empty()) {
            (true, _) => relative.to_string(),
            (false, true) => self.settings.prefix.clone(),
            (false, false) => format!("{}/{relative}", self.settings.prefix),
        };
        ObjectPath::from(full)
    }

    fn object_key(&self, kind: ObjectKind, name: &str) -> ObjectPath {
        self.key(&kind.relative_path(name))
    }

    fn failed(&self, kind: ObjectKind, name: &str, e: &object_store::Error) -> Error {
        Error::Store {
            object: self.object_name(kind, name).display().to_string(),
            reason: reason(e, &self.endpoint()),
        }
    }

    fn put(&self, kind: ObjectKind, name: &str, bytes: Vec<u8>) -> Result<()> {
        let key = self.object_key(kind, name);
        let payload = PutPayload::from(bytes);
        self.runtime
            .block_on(async { self.store.put(&key, payload).await })
            .map(|_| ())
            .map_err(|e| self.failed(kind, name, &e))
    }
}

fn build(settings: &S3Settings, retry: object_store::RetryConfig) -> Result<AmazonS3> {
    let mut options = ClientOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT);
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&settings.bucket)
        .with_region(&settings.region)
        .with_access_key_id(&settings.access_key_id)
        .with_secret_access_key(&settings.secret_access_key)
        // Path-style requests: what self-hosted stores (Garage, MinIO, Ceph) expect.
        .with_virtual_hosted_style_request(false)
        .with_retry(retry);
    if let Some(endpoint) = &settings.endpoint {
        if endpoint.starts_with("http://") {
            options = options.with_allow_http(true);
        }
        b = b.with_endpoint(endpoint);
    }
    if let Some(token) = &settings.session_token {
        b = b.with_token(token);
    }
    b.with_client_options(options)
        .build()
        .map_err(|e| Error::Store {
            object: settings.url(),
            reason: one_line(&e.to_string()),
        })
}

/// The store's answer in one line, with what to check for the usual mistakes.
fn reason(e: &object_store::Error, endpoint: &str) -> String {
    let text = one_line(&e.to_string());
    let said = store_said(&text);
    let denied = matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || text.contains(" 403 ")
        || text.contains(" 401 ")
        || [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ]
        .iter()
        .any(|c| text.contains(c));
    if denied {
        return format!(
            "access denied by {endpoint}{} (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and the key's rights on the bucket)",
            said.map(|s| format!(": {s}")).unwrap_or_default()
        );
    }
    if let object_store::Error::NotFound { .. } = e {
        return "no such object".into();
    }
    if let Some(said) = said {
        let hint = if said.contains("AuthorizationHeaderMalformed") {
            " (check AWS_REGION: it must be the store's region)"
        } else {
            ""
        };
        return format!("{endpoint} answered {said}{hint}");
    }
    if text.contains("error sending request") || text.contains("onnect") {
        return format!("cannot reach {endpoint}: {text}");
    }
    text
}

/// The `<Code>` and `<Message>` of an S3 error document quoted in `text`.
fn store_said(text: &str) -> Option<String> {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let from = text.find(&open)? + open.len();
        let to = text[from..].find(&format!("</{name}>"))? + from;
        Some(text[from..to].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => Some(format!("{c} ({m})")),
        (Some(c), None) => Some(c),
        (None, Some(m)) => Some(m),
        (None, None) => None,
    }
}

fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(400) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}

impl Backend for S3 {
    fn describe(&self) -> String {
        self.settings.url()
    }

    fn put_file(&self, kind: ObjectKind, name: &str, tmp: &Path) -> Result<()> {
        let bytes = std::fs::read(tmp).at(tmp)?;
        self.put(kind, name, bytes)?;
        std::fs::remove_file(tmp).at(tmp)
    }

    fn put_bytes(&self, kind: ObjectKind, name: &str, bytes: &[u8]) -> Result<()> {
        self.put(kind, name, bytes.to_vec())
    }

    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let key = self.object_key(kind, name);
        let end = offset.checked_add(len).ok_or_else(|| {
            Error::io(
                self.object_name(kind, name),
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let got = self
            .runtime
            .block_on(async { self.store.get_range(&key, offset..end).await });
        match got {
            Ok(bytes) if bytes.len() as u64 == len => Ok(Vec::from(bytes)),
            Ok(_) => Err(Error::io(
                self.object_name(kind, name),
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
            Err(object_store::Error::NotFound { .. }) => Err(Error::io(
                self.object_name(kind, name),
                std::io::ErrorKind::NotFound.into(),
            )),
            // A range past the end (416): a short object, as a short file would be.
            Err(e) if e.to_string().contains("416") || e.to_string().contains("Range") => {
                Err(Error::io(
                    self.object_name(kind, name),
                    std::io::ErrorKind::UnexpectedEof.into(),
                ))
            }
            Err(e) => Err(self.failed(kind, name, &e)),
        }
    }

    fn try_get(&self, kind: ObjectKind, name: &str) -> Result<Option<Vec<u8>>> {
        let key = self.object_key(kind, name);
        let got = self.runtime.block_on(async {
            match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.map(|b| b.map(Vec::from))
            .map_err(|e| self.failed(kind, name, &e))
    }

    fn size(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>> {
        let key = self.object_key(kind, name);
        match self.runtime.block_on(async { self.store.head(&key).await }) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(kind, name, &e)),
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectMeta>> {
        if kind == ObjectKind::Config {
            let config = self.try_get(kind, "")?;
            return Ok(config
                .map(|b| ObjectMeta {
                    name: String::new(),
                    len: b.len() as u64,
                    modified: None,
                })
                .into_iter()
                .collect());
        }
        let folder = self.key(kind.folder());
        let strip = if self.settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.settings.prefix)
        };
        let listed: std::result::Result<Vec<object_store::ObjectMeta>, object_store::Error> =
            self.runtime.block_on(async {
                let mut out = Vec::new();
                let mut stream = self.store.list(Some(&folder));
                while let Some(item) = stream.next().await {
                    out.push(item?);
                }
                Ok(out)
            });
        let listed = listed.map_err(|e| Error::Store {
            object: format!("{}/{}", self.settings.url(), kind.folder()),
            reason: reason(&e, &self.endpoint()),
        })?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                let relative = m.location.as_ref().strip_prefix(&strip)?;
                let name = kind.name_in(relative)?;
                Some(ObjectMeta {
                    name,
                    len: m.size,
                    modified: Some(m.last_modified.into()),
                })
            })
            .collect())
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        let key = self.object_key(kind, name);
        match self
            .runtime
            .block_on(async { self.store.delete(&key).await })
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(kind, name, &e)),
        }
    }

    fn object_name(&self, kind: ObjectKind, name: &str) -> PathBuf {
        PathBuf::from(format!(
            "{}/{}",
            self.settings.url(),
            kind.relative_path(name)
        ))
    }
}
