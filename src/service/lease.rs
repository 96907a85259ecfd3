//! A lease in the shared database (a block's claim, a task's finish), kept while its holder works:
//! renewed every third of its length, let go when dropped. A node that dies renews nothing, and
//! what it held is free once the lease runs out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::store::StoreError;

/// A renewal: `Ok(false)` when the lease was gone (it ran out, and another node took it).
pub type Renew = Box<dyn Fn() -> BoxFuture<'static, Result<bool, StoreError>> + Send + Sync>;
/// What lets the lease go.
pub type Release = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), StoreError>> + Send>;

pub struct Lease {
    renewal: tokio::task::JoinHandle<()>,
    release: Option<Release>,
    lost: Arc<AtomicBool>,
    what: &'static str,
}

impl Lease {
    /// Starts renewing a lease of `length` just taken; `what` names it in the log.
    pub fn keep(what: &'static str, length: Duration, renew: Renew, release: Release) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn({
            let lost = lost.clone();
            async move {
                let mut ticks = tokio::time::interval(length / 3);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    match renew().await {
                        Ok(true) => {}
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
        Lease { renewal, release: Some(release), lost, what }
    }

    /// The lease ran out while held: what it guarded may have been taken by another node.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
        let (Some(release), Ok(runtime)) = (self.release.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let what = self.what;
        // Not awaited by the holder: its request may be over. If this fails, the lease runs out.
        runtime.spawn(async move {
            if let Err(e) = release().await {
                tracing::warn!(lease = what, error = %e, "cannot let a lease go; it runs out by itself");
            }
        });
    }
}
