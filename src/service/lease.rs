//! A lease in the shared database (a block's claim, a task's finish), kept while its holder works:
//! renewed every third of its length, let go when dropped. A node that dies renews nothing, and
//! what it held is free once the lease runs out.
//!
//! The holder counts the lease as gone (`LeaseHeld::holds` turns false) once two renewals in a
//! row have failed: two thirds of its length after the last renewal was sent, a third before the
//! database can give it to another node (whose clock it is; the time is taken before the request
//! goes out, so the database's is later). A block stops writing then, before another node may
//! write the same bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::store::StoreError;

/// A renewal: `Ok(false)` when the lease was gone (it ran out, and another node took it).
pub type Renew = Box<dyn Fn() -> BoxFuture<'static, Result<bool, StoreError>> + Send + Sync>;
/// What lets the lease go.
pub type Release = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), StoreError>> + Send>;

pub struct Lease {
    renewal: tokio::task::JoinHandle<()>,
    release: Option<Release>,
    held: LeaseHeld,
    what: &'static str,
    /// Told `true` once the lease has been let go (or the attempt failed).
    let_go: tokio::sync::watch::Sender<bool>,
}

/// How long `LetGo::wait` waits for the database to let a lease go: one that takes longer (the
/// database is slow, or its table locked) runs out by itself.
const LET_GO_WAIT: Duration = Duration::from_secs(1);

/// The letting go of a dropped lease, for a holder that must not answer before it is done: a
/// block's refusal tells the client to send the bytes again, and they must be free by then.
pub struct LetGo(tokio::sync::watch::Receiver<bool>);

impl LetGo {
    /// Waits until the lease has been let go, for at most `LET_GO_WAIT`.
    pub async fn wait(mut self) {
        // An error means the sender is gone: nothing is left to wait for.
        let _ = tokio::time::timeout(LET_GO_WAIT, self.0.wait_for(|done| *done)).await;
    }
}

/// Whether a lease still holds, as its holder can tell; cheap to clone.
#[derive(Clone)]
pub struct LeaseHeld {
    /// A renewal found it taken.
    lost: Arc<AtomicBool>,
    /// When the last renewal that succeeded (or the take) was sent.
    renewed: Arc<Mutex<Instant>>,
    /// Two thirds of the lease's length.
    trusted_for: Duration,
}

impl LeaseHeld {
    pub fn holds(&self) -> bool {
        let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        !self.lost.load(Ordering::Acquire) && renewed.elapsed() < self.trusted_for
    }
}

impl Lease {
    /// Starts renewing a lease of `length` whose take was sent at `taken_at`; `what` names it in
    /// the log.
    pub fn keep(what: &'static str, length: Duration, taken_at: Instant, renew: Renew, release: Release) -> Self {
        let held = LeaseHeld {
            lost: Arc::new(AtomicBool::new(false)),
            renewed: Arc::new(Mutex::new(taken_at)),
            trusted_for: length * 2 / 3,
        };
        let renewal = tokio::spawn({
            let (lost, renewed) = (held.lost.clone(), held.renewed.clone());
            async move {
                let mut ticks = tokio::time::interval(length / 3);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let sent = Instant::now();
                    match renew().await {
                        Ok(true) => *renewed.lock().unwrap_or_else(|e| e.into_inner()) = sent,
                        Ok(false) => {
                            tracing::warn!(
                                lease = what,
                                "a lease ran out before it was renewed: another node may hold it"
                            );
                            lost.store(true, Ordering::Release);
                            return;
                        }
                        // Tried again at the next tick, well before the lease runs out.
                        Err(e) => tracing::warn!(lease = what, error = %e, "cannot renew a lease"),
                    }
                }
            }
        });
        Lease { renewal, release: Some(release), held, what, let_go: tokio::sync::watch::channel(false).0 }
    }

    /// What tells when the lease, once dropped, has been let go.
    pub fn let_go(&self) -> LetGo {
        LetGo(self.let_go.subscribe())
    }

    /// Whether the lease still holds (see the module's docs).
    pub fn held(&self) -> &LeaseHeld {
        &self.held
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        let (Some(release), Ok(runtime)) = (self.release.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (what, let_go) = (self.what, self.let_go.clone());
        // Not awaited here: the holder's request may be over. If this fails, the lease runs out.
        runtime.spawn(async move {
            if let Err(e) = release().await {
                tracing::warn!(lease = what, error = %e, "cannot let a lease go; it runs out by itself");
            }
            let_go.send_replace(true);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_renewed_by(answer: fn() -> Result<bool, StoreError>) -> Lease {
        let length = Duration::from_millis(300);
        let release: Release = Box::new(|| Box::pin(async { Ok(()) }));
        Lease::keep("test", length, Instant::now(), Box::new(move || Box::pin(async move { answer() })), release)
    }

    #[tokio::test]
    async fn a_lease_holds_while_renewed_and_not_once_two_renewals_failed_or_it_was_taken() {
        let renewed = lease_renewed_by(|| Ok(true));
        let failing = lease_renewed_by(|| Err(StoreError::Closed));
        let taken = lease_renewed_by(|| Ok(false));
        assert!(renewed.held().holds() && failing.held().holds() && taken.held().holds());
        // After the first renewal (at 100 ms): the taken one is gone, the failing one not yet.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(renewed.held().holds() && failing.held().holds());
        assert!(!taken.held().holds());
        // Two thirds of the length after the take, with no renewal that succeeded.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!failing.held().holds(), "its database may give it away a third of the length later");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(renewed.held().holds(), "renewed every third of its length");
    }
}
