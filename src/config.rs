//! Settings: `conf/fupload.yml` with `FUPLOAD__…` environment overrides on top.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub database: DatabaseSettings,
    /// Refuse blocks that carry no `partMd5`.
    #[serde(default)]
    pub check_tmp_md5: bool,
    /// Task URLs must carry the task's `key`; `false` accepts bare `?taskId=` URLs.
    #[serde(default = "yes")]
    pub require_upload_key: bool,
    #[serde(default = "default_tmp_dir")]
    pub tmp_dir: PathBuf,
    /// `""` allows any absolute storePath (the original's behaviour).
    #[serde(default = "default_store_dir")]
    pub store_dir: PathBuf,
    /// Seconds without an accepted block or state change before a task expires.
    #[serde(default = "default_task_timeout")]
    pub task_timeout: u64,
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    #[serde(default = "default_max_block_size")]
    pub max_block_size: u64,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default)]
    pub callback: CallbackSettings,
    /// Instant upload: creates with `"instant": true` (docs/API.md, section 8).
    #[serde(default)]
    pub instant: InstantSettings,
    /// Business servers by token.
    #[serde(default, rename = "bServer")]
    pub business_servers: HashMap<String, BusinessServer>,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub cors: CorsSettings,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT before they are cut off.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: u64,
    #[serde(default)]
    pub readiness: ReadinessSettings,
    /// Where finished files go: `storeDir` (`local`, the default) or an S3 bucket.
    #[serde(default)]
    pub storage: StorageSettings,
}

/// `storage`: which kind holds the finished files, and the S3 bucket's settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageSettings {
    pub kind: StorageKind,
    pub s3: S3Settings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// The temp file in `tmpDir`, moved into `storeDir/storePath` at the finish.
    #[default]
    Local,
    /// Staging objects and a multipart upload, completed into `prefix/storePath/fileName`.
    S3,
}

/// `storage.s3`. Credentials are not here: they come from the environment as the AWS tools read
/// them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct S3Settings {
    pub bucket: String,
    /// The service's URL, such as `https://s3.eu-west-1.amazonaws.com` or a MinIO server's.
    pub endpoint: String,
    /// `""`: `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// Put before every key, without a trailing slash (`""`: none).
    pub prefix: String,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key` (MinIO, most self-hosted servers).
    pub path_style: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Scheme and host the task URLs are built from, with `port`.
    pub addr: String,
    /// When set, task URLs start with this instead (a reverse proxy's public address).
    pub proxy_addr: String,
    /// Connections served at once, over all worker threads; more wait to be accepted.
    pub max_connections: usize,
    /// Seconds a client has to send a request's head (0: no limit).
    pub client_request_timeout: f64,
    /// Seconds an idle keep-alive connection stays open (0: no keep-alive).
    pub keep_alive: f64,
    /// Seconds a request body may pause before the request is given up (0: no limit).
    pub client_body_timeout: f64,
    /// Serve https with this certificate and key (both PEM files) instead of http.
    pub tls: TlsFiles,
}

/// `server.tls`: both files set, or neither (plain http).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The certificate and key files, if https is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        (!self.cert.as_os_str().is_empty()).then_some((self.cert.as_path(), self.key.as_path()))
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            addr: "http://127.0.0.1".into(),
            proxy_addr: String::new(),
            max_connections: 1024,
            client_request_timeout: 5.0,
            keep_alive: 5.0,
            client_body_timeout: 60.0,
            tls: TlsFiles::default(),
        }
    }
}

impl ServerSettings {
    /// What task URLs start with, without a trailing slash.
    pub fn public_base_url(&self) -> String {
        if self.proxy_addr.is_empty() {
            format!("{}:{}", self.addr.trim_end_matches('/'), self.port)
        } else {
            self.proxy_addr.trim_end_matches('/').to_owned()
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: "sqlite://data/fupload.db".into() }
    }
}

/// What an acknowledged block survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A crash of the fupload process (kill -9): data written, range committed, no fsync.
    #[default]
    Process,
    /// Also a power loss: the block's data and the SQLite commit are fsynced before the reply.
    Power,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CallbackSettings {
    /// Seconds one POST may take.
    pub timeout: u64,
    pub max_attempts: u32,
    /// Seconds before the first retry; doubles with each attempt up to `maxBackoff`.
    pub initial_backoff: f64,
    pub max_backoff: f64,
    /// A PEM file of CA certificates trusted for https notifyUrls besides the built-in and the
    /// system's roots (a private CA); `""`: none.
    pub ca_file: PathBuf,
}

/// The challenge of an instant upload (docs/SECURITY.md, "Instant upload").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InstantSettings {
    /// Seconds a challenge may be answered in.
    pub challenge_timeout: u64,
    /// Answers a task may give, right or wrong, over all its creates.
    pub max_answers: u64,
    /// Byte ranges a challenge asks for, and the bytes in each (less for a smaller file).
    pub ranges: u64,
    pub range_bytes: u64,
}

impl Default for InstantSettings {
    fn default() -> Self {
        Self { challenge_timeout: 60, max_answers: 3, ranges: 4, range_bytes: 4096 }
    }
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self { timeout: 10, max_attempts: 12, initial_backoff: 1.0, max_backoff: 600.0, ca_file: PathBuf::new() }
    }
}

impl CallbackSettings {
    /// `caFile`, if set.
    pub fn ca_file(&self) -> Option<&Path> {
        (!self.ca_file.as_os_str().is_empty()).then_some(self.ca_file.as_path())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BusinessServer {
    pub name: String,
    pub notify_url: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Cross-origin access for browsers that upload straight to fupload. No allowed origin (the
/// default) means no CORS headers are ever sent, so browsers keep other origins out.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsSettings {
    /// Exact origins (`https://app.example.com`), or `*` for any.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    /// Seconds a browser may cache a preflight answer.
    pub max_age: u64,
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: vec!["GET".into(), "POST".into()],
            allowed_headers: vec!["content-type".into()],
            max_age: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessSettings {
    /// Bytes that must stay free on the file systems of tmpDir and storeDir for `/readyz` to
    /// answer ready.
    pub min_free_disk: u64,
}

impl Default for ReadinessSettings {
    fn default() -> Self {
        Self { min_free_disk: 1 << 30 }
    }
}

fn yes() -> bool {
    true
}
fn default_tmp_dir() -> PathBuf {
    "data/tmp".into()
}
fn default_store_dir() -> PathBuf {
    "data/store".into()
}
fn default_task_timeout() -> u64 {
    3600
}
fn default_max_file_size() -> u64 {
    1 << 40
}
fn default_max_block_size() -> u64 {
    64 << 20
}
fn default_shutdown_grace() -> u64 {
    25
}

/// The environment variable prefix; `__` separates key levels.
const ENV_PREFIX: &str = "FUPLOAD__";

impl Settings {
    /// Reads `path`, then applies `FUPLOAD__…` variables from `env`.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_yaml(&text, env).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_yaml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let file =
            config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Yaml)).build()?;
        let mut builder = config::Config::builder().add_source(file.clone());
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else { continue };
            let key = known_key(&file, path).with_context(|| format!("{name}: no such setting"))?;
            builder = if is_list(&key) {
                builder.set_override(key, comma_separated(&value))?
            } else {
                builder.set_override(key, value)?
            };
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.task_timeout > 0, "taskTimeout must be positive");
        if self.storage.kind == StorageKind::S3 {
            let s3 = &self.storage.s3;
            anyhow::ensure!(!s3.bucket.is_empty(), "storage.s3.bucket must be set (storage.kind is s3)");
            anyhow::ensure!(!s3.endpoint.is_empty(), "storage.s3.endpoint must be set (storage.kind is s3)");
        }
        anyhow::ensure!(self.max_block_size > 0, "maxBlockSize must be positive");
        anyhow::ensure!(self.callback.max_attempts > 0, "callback.maxAttempts must be positive");
        anyhow::ensure!(
            self.callback.initial_backoff >= 0.0 && self.callback.max_backoff >= self.callback.initial_backoff,
            "callback backoffs must satisfy 0 <= initialBackoff <= maxBackoff"
        );
        anyhow::ensure!(!self.tmp_dir.as_os_str().is_empty(), "tmpDir must be set");
        let instant = &self.instant;
        anyhow::ensure!(instant.challenge_timeout > 0, "instant.challengeTimeout must be positive");
        anyhow::ensure!(
            (1..=64).contains(&instant.ranges) && (1..=1 << 20).contains(&instant.range_bytes),
            "instant.ranges must be 1..64 and instant.rangeBytes 1..1048576"
        );
        anyhow::ensure!(self.server.max_connections > 0, "server.maxConnections must be positive");
        anyhow::ensure!(
            self.server.tls.cert.as_os_str().is_empty() == self.server.tls.key.as_os_str().is_empty(),
            "server.tls needs both cert and key (PEM files), or neither for plain http"
        );
        // actix reads its clock for the head and keep-alive deadlines from a cache renewed every
        // 0.5 s, so shorter timeouts would not be kept.
        for (key, seconds, least) in [
            ("server.clientRequestTimeout", self.server.client_request_timeout, 1.0),
            ("server.keepAlive", self.server.keep_alive, 1.0),
            ("server.clientBodyTimeout", self.server.client_body_timeout, 0.0),
        ] {
            anyhow::ensure!(
                seconds == 0.0 || (least..=86_400.0).contains(&seconds),
                "{key} must be 0 (no limit) or {least}..86400 seconds"
            );
        }
        for origin in self.cors.allowed_origins.iter().filter(|origin| *origin != "*") {
            actix_web::http::Uri::try_from(origin.as_str())
                .map_err(|_| anyhow::anyhow!("cors.allowedOrigins: {origin:?} is not an origin"))?;
        }
        for method in &self.cors.allowed_methods {
            actix_web::http::Method::from_bytes(method.as_bytes())
                .map_err(|_| anyhow::anyhow!("cors.allowedMethods: {method:?} is not an HTTP method"))?;
        }
        for header in &self.cors.allowed_headers {
            actix_web::http::header::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| anyhow::anyhow!("cors.allowedHeaders: {header:?} is not a header name"))?;
        }
        Ok(())
    }

    /// `storeDir` made absolute, or `None` for `storeDir: ""` (no confinement).
    pub fn store_root(&self) -> Option<&Path> {
        (!self.store_dir.as_os_str().is_empty()).then_some(self.store_dir.as_path())
    }
}

/// Maps `SERVER__PROXYADDR` to the configured spelling (`server.proxyAddr`), case-insensitively,
/// knowing both the keys this file sets and the ones `Settings` takes.
fn known_key(file: &config::Config, env_path: &str) -> Option<String> {
    let wanted: Vec<String> = env_path.split("__").map(str::to_ascii_lowercase).collect();
    let mut candidates = SETTING_KEYS.iter().map(|key| key.path.clone()).collect::<Vec<_>>();
    if let Ok(table) = file.clone().try_deserialize::<HashMap<String, config::Value>>() {
        collect_keys(&table, "", &mut candidates);
    }
    candidates.into_iter().find(|candidate| {
        let parts: Vec<&str> = candidate.split('.').collect();
        parts.len() == wanted.len() && parts.iter().zip(&wanted).all(|(have, want)| have.to_ascii_lowercase() == *want)
    })
}

fn collect_keys(table: &HashMap<String, config::Value>, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if let Ok(inner) = value.clone().into_table() {
            collect_keys(&inner.into_iter().collect(), &path, out);
        }
        out.push(path);
    }
}

/// A setting an environment variable can set even where the file leaves it out.
struct SettingKey {
    /// As the file spells it: `server.proxyAddr`.
    path: String,
    /// Lists are given comma-separated
    /// (`FUPLOAD__CORS__ALLOWEDORIGINS=https://a.example,https://b.example`).
    list: bool,
}

/// Every scalar and list setting, read off what the defaults serialize to, so that a field added
/// to `Settings` has its key without a list to keep up. Tables keyed by the operator (`bServer`)
/// are empty there: their entries take overrides once the file names them.
static SETTING_KEYS: LazyLock<Vec<SettingKey>> = LazyLock::new(|| {
    let defaults: Settings = serde_json::from_str("{}").expect("every setting has a default");
    let mut keys = Vec::new();
    leaf_keys(&serde_json::to_value(defaults).expect("settings serialize"), "", &mut keys);
    keys
});

fn leaf_keys(value: &serde_json::Value, path: &str, out: &mut Vec<SettingKey>) {
    match value {
        serde_json::Value::Object(members) => {
            for (name, member) in members {
                leaf_keys(member, &if path.is_empty() { name.clone() } else { format!("{path}.{name}") }, out);
            }
        }
        _ => out.push(SettingKey { path: path.to_owned(), list: value.is_array() }),
    }
}

fn is_list(key: &str) -> bool {
    SETTING_KEYS.iter().any(|setting| setting.list && setting.path == key)
}

fn comma_separated(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
server: {host: "127.0.0.1", port: 8080, addr: "http://127.0.0.1", proxyAddr: ""}
database: {url: "sqlite://data/fupload.db"}
taskTimeout: 3600
bServer:
  Cp1-Secret: {name: "cp1", notifyUrl: "http://127.0.0.1:8090/cb"}
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_yaml_with_defaults_and_keeps_token_case() {
        let settings = Settings::from_yaml(YAML, env(&[])).unwrap();
        assert_eq!(settings.server.port, 8080);
        assert_eq!(settings.max_block_size, 64 << 20);
        assert!(settings.require_upload_key);
        assert_eq!(settings.durability, Durability::Process);
        assert_eq!(settings.business_servers["Cp1-Secret"].notify_url, "http://127.0.0.1:8090/cb");
        assert_eq!(settings.server.public_base_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn environment_overrides_match_keys_case_insensitively() {
        let settings = Settings::from_yaml(
            YAML,
            env(&[
                ("FUPLOAD__SERVER__PORT", "9000"),
                ("FUPLOAD__TASKTIMEOUT", "60"),
                ("FUPLOAD__SERVER__PROXYADDR", "https://up.example.com/"),
                ("FUPLOAD__durability", "power"),
                ("FUPLOAD__CALLBACK__MAXATTEMPTS", "3"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.server.port, 9000);
        assert_eq!(settings.task_timeout, 60);
        assert_eq!(settings.durability, Durability::Power);
        assert_eq!(settings.callback.max_attempts, 3);
        assert_eq!(settings.server.public_base_url(), "https://up.example.com");
    }

    #[test]
    fn operations_settings_have_defaults_and_take_lists_from_the_environment() {
        let settings = Settings::from_yaml(YAML, env(&[])).unwrap();
        assert_eq!(settings.log.format, LogFormat::Pretty);
        assert!(settings.cors.allowed_origins.is_empty(), "CORS is closed by default");
        assert_eq!(settings.shutdown_grace, 25);
        assert_eq!(settings.readiness.min_free_disk, 1 << 30);
        let settings = Settings::from_yaml(
            YAML,
            env(&[
                ("FUPLOAD__LOG__FORMAT", "json"),
                ("FUPLOAD__CORS__ALLOWEDORIGINS", "https://a.example, https://b.example"),
                ("FUPLOAD__CORS__ALLOWEDMETHODS", "POST"),
                ("FUPLOAD__CORS__MAXAGE", "60"),
                ("FUPLOAD__SHUTDOWNGRACE", "5"),
                ("FUPLOAD__READINESS__MINFREEDISK", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.log.format, LogFormat::Json);
        assert_eq!(settings.cors.allowed_origins, vec!["https://a.example", "https://b.example"]);
        assert_eq!(settings.cors.allowed_methods, vec!["POST"]);
        assert_eq!(settings.cors.allowed_headers, vec!["content-type"]);
        assert_eq!((settings.cors.max_age, settings.shutdown_grace, settings.readiness.min_free_disk), (60, 5, 0));
        let yaml = "cors: {allowedOrigins: [\"https://a.example\"], allowedHeaders: [content-type, x-trace]}\n";
        let settings = Settings::from_yaml(yaml, env(&[])).unwrap();
        assert_eq!(settings.cors.allowed_headers, vec!["content-type", "x-trace"]);
        assert!(Settings::from_yaml("cors: {allowedMethods: [\"GE T\"]}\n", env(&[])).is_err());
        assert!(Settings::from_yaml("cors: {allowedOrigins: [\"https://a b\"]}\n", env(&[])).is_err());
        assert!(Settings::from_yaml("log: {format: xml}\n", env(&[])).is_err());
    }

    #[test]
    fn the_shipped_configs_load() {
        for file in ["conf/fupload.yml", "conf/fupload.production.yml"] {
            let settings = Settings::load(Path::new(env!("CARGO_MANIFEST_DIR")).join(file).as_path(), env(&[]))
                .unwrap_or_else(|e| panic!("{file}: {e:#}"));
            assert!(!settings.business_servers.is_empty(), "{file}");
        }
    }

    #[test]
    fn every_setting_has_an_override_key() {
        // A field whose default serializes to an empty table gets no key; only bServer may, since
        // its entries are keyed by the operator's tokens and take overrides once the file names them.
        fn empty_tables(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
            let Some(members) = value.as_object() else { return };
            if members.is_empty() {
                out.push(path.to_owned());
            }
            for (name, member) in members {
                empty_tables(member, &format!("{path}{}{name}", if path.is_empty() { "" } else { "." }), out);
            }
        }
        let defaults = serde_json::to_value(Settings::from_yaml("{}", env(&[])).unwrap()).unwrap();
        let mut keyless = Vec::new();
        empty_tables(&defaults, "", &mut keyless);
        assert_eq!(keyless, ["bServer"]);

        // Each key, set from the environment to its default, names a real setting.
        for key in SETTING_KEYS.iter() {
            let name = format!("{ENV_PREFIX}{}", key.path.replace('.', "__").to_ascii_uppercase());
            let value = defaults.pointer(&format!("/{}", key.path.replace('.', "/"))).unwrap();
            let text = match value {
                serde_json::Value::Array(items) => {
                    items.iter().map(|item| item.as_str().unwrap()).collect::<Vec<_>>().join(",")
                }
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            assert_eq!(key.list, value.is_array(), "{name}");
            let settings =
                Settings::from_yaml("{}", env(&[(&name, &text)])).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(serde_json::to_value(settings).unwrap(), defaults, "{name}={text}");
        }
        assert!(SETTING_KEYS.iter().any(|key| key.path == "server.proxyAddr" && !key.list));
        assert!(SETTING_KEYS.iter().any(|key| key.path == "cors.allowedOrigins" && key.list));
        for tls_key in ["server.tls.cert", "server.tls.key", "callback.caFile"] {
            assert!(SETTING_KEYS.iter().any(|key| key.path == tls_key && !key.list), "{tls_key}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Settings::from_yaml(YAML, env(&[("FUPLOAD__NOPE", "1")])).is_err());
        assert!(Settings::from_yaml("taskTimeot: 5\n", env(&[])).is_err());
        assert!(Settings::from_yaml("taskTimeout: 0\n", env(&[])).is_err());
        assert!(Settings::from_yaml("server: {keepAlive: 0.5}\n", env(&[])).is_err());
        assert!(Settings::from_yaml("server: {clientRequestTimeout: -1}\n", env(&[])).is_err());
        assert!(Settings::from_yaml("server: {maxConnections: 0}\n", env(&[])).is_err());
        assert!(Settings::from_yaml("server: {tls: {cert: a.pem}}\n", env(&[])).is_err());
    }

    #[test]
    fn storage_is_local_unless_s3_is_named_with_its_bucket_and_endpoint() {
        assert_eq!(Settings::from_yaml(YAML, env(&[])).unwrap().storage.kind, StorageKind::Local);
        assert!(Settings::from_yaml(YAML, env(&[("FUPLOAD__STORAGE__KIND", "s3")])).is_err());
        let s3 = env(&[
            ("FUPLOAD__STORAGE__KIND", "s3"),
            ("FUPLOAD__STORAGE__S3__BUCKET", "b"),
            ("FUPLOAD__STORAGE__S3__ENDPOINT", "http://127.0.0.1:9000"),
            ("FUPLOAD__STORAGE__S3__PATHSTYLE", "true"),
        ]);
        let settings = Settings::from_yaml(YAML, s3).unwrap();
        assert_eq!(settings.storage.kind, StorageKind::S3);
        assert!(settings.storage.s3.path_style);
    }
}
