//! Readiness: can this process take uploads right now? The database answers and takes writes,
//! tmpDir and storeDir take a new file, and their file systems have more than
//! `readiness.minFreeDisk` free.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::Serialize;

use crate::config::ServerSettings;
use crate::store::Store;

/// How long the database may take to answer before it counts as down.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// One check's outcome; `problem` is short and names no path (details go to the log).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Check {
    /// `database`, `tmpDir` or `storeDir`.
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Check {
    fn pass(name: &'static str) -> Self {
        Check { name, ok: true, problem: None }
    }

    fn fail(name: &'static str, problem: impl Into<String>) -> Self {
        Check { name, ok: false, problem: Some(problem.into()) }
    }
}

/// The directories to check; `store_dir` is `None` with `storeDir: ""` (files go anywhere).
pub struct Readiness<'a> {
    pub store: &'a Store,
    pub tmp_dir: &'a Path,
    pub store_dir: Option<&'a Path>,
    pub min_free_disk: u64,
}

impl Readiness<'_> {
    /// Runs every check (all of them, so the answer lists everything that is wrong).
    pub async fn check(&self) -> Vec<Check> {
        let mut checks = vec![self.database().await];
        let mut dirs = vec![("tmpDir", self.tmp_dir.to_path_buf())];
        dirs.extend(self.store_dir.map(|dir| ("storeDir", dir.to_path_buf())));
        for (name, dir) in dirs {
            let min_free = self.min_free_disk;
            let check = tokio::task::spawn_blocking(move || dir_check(name, &dir, min_free))
                .await
                .unwrap_or_else(|e| Check::fail(name, format!("check did not run: {e}")));
            checks.push(check);
        }
        for check in checks.iter().filter(|c| !c.ok) {
            tracing::warn!(check = check.name, problem = check.problem.as_deref().unwrap_or(""), "not ready");
        }
        checks
    }

    async fn database(&self) -> Check {
        match tokio::time::timeout(DATABASE_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the database failed");
                return Check::fail("database", "does not answer");
            }
            Err(_) => return Check::fail("database", format!("no answer within {DATABASE_TIMEOUT:?}")),
        }
        if self.store.writes_failing().is_none() {
            return Check::pass("database");
        }
        // With no uploads coming in, only a write tells whether writes work again.
        if let Some(probe) = self.store.probe_write() {
            match tokio::time::timeout(DATABASE_TIMEOUT, probe).await {
                Ok(Ok(())) => return Check::pass("database"),
                Ok(Err(e)) => tracing::warn!(error = %e, "readiness: the probe write failed"),
                Err(_) => tracing::warn!("readiness: the probe write is still waiting for the database"),
            }
        }
        match self.store.writes_failing() {
            Some(failing) => {
                let seconds = SystemTime::now().duration_since(failing.since).unwrap_or_default().as_secs();
                tracing::warn!(error = failing.error, "readiness: database writes fail");
                Check::fail("database", format!("writes fail for {seconds} s: {}", failing.trouble))
            }
            // A write committed meanwhile.
            None => Check::pass("database"),
        }
    }
}

/// `dir` takes a new file (created, written, synced, removed) and its file system has more than
/// `min_free` bytes available to unprivileged users.
fn dir_check(name: &'static str, dir: &Path, min_free: u64) -> Check {
    if let Err(e) = write_probe(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "readiness: directory not writable");
        return Check::fail(name, format!("not writable: {}", e.kind()));
    }
    match available_bytes(dir) {
        Ok(free) if free > min_free => Check::pass(name),
        Ok(free) => Check::fail(name, format!("{free} bytes free, readiness.minFreeDisk is {min_free}")),
        Err(e) => Check::fail(name, format!("free space unknown: {}", e.kind())),
    }
}

fn write_probe(dir: &Path) -> io::Result<()> {
    // A name of its own per probe: readiness checks may run side by side.
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let probe: PathBuf = dir.join(format!(".ready-probe-{}-{n}", std::process::id()));
    let written = std::fs::write(&probe, b"ok").and_then(|()| std::fs::File::open(&probe)?.sync_all());
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

fn available_bytes(dir: &Path) -> io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    let (blocks, size) = (u64::from(stats.blocks_available()), u64::from(stats.fragment_size()));
    Ok(blocks.saturating_mul(size))
}

/// How long the health probe waits for the server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `path` from the server that `server` describes (on loopback when it listens on every
/// interface) and succeeds on a 200. Plain HTTP/1.1 over a socket: no client library needed.
pub fn probe(server: &ServerSettings, path: &str) -> anyhow::Result<()> {
    let ip = match server.host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Ok(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Ok(ip) => ip,
        Err(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let address = SocketAddr::new(ip, server.port);
    let mut stream =
        TcpStream::connect_timeout(&address, PROBE_TIMEOUT).with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).context("reading the answer")?;
    let status_line = String::from_utf8_lossy(&head[..read]);
    let status_line = status_line.lines().next().unwrap_or_default();
    anyhow::ensure!(status_line.split(' ').nth(1) == Some("200"), "{path} answered {status_line:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_directory_with_room_passes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dir_check("tmpDir", dir.path(), 0), Check::pass("tmpDir"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the probe is removed");
    }

    #[test]
    fn a_file_where_the_directory_should_be_fails() {
        // Permission bits do not stop root (CI runs as root); a file in the directory's place
        // stops everyone.
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("store");
        std::fs::write(&not_a_dir, b"").unwrap();
        let check = dir_check("storeDir", &not_a_dir, 0);
        assert!(!check.ok);
        assert!(check.problem.unwrap().starts_with("not writable"));
    }

    #[test]
    fn too_little_free_space_fails() {
        let dir = tempfile::tempdir().unwrap();
        let check = dir_check("tmpDir", dir.path(), u64::MAX);
        assert!(!check.ok);
        assert!(check.problem.unwrap().contains("readiness.minFreeDisk"));
    }
}
