//! The outbox worker: sends due callbacks, marks them delivered on a 2xx, reschedules them with
//! exponential backoff otherwise, and gives up after `callback.maxAttempts`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::config::CallbackSettings;
use crate::store::{DueCallback, DueCallbacks, Store};
use crate::telemetry::metrics;

/// Callbacks sent at once.
const BATCH: u32 = 32;
/// Longest sleep between looks at the outbox when nothing wakes the worker.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// How long the worker waits, once woken by a callback just queued, for others to join it: under
/// load one read and one write then carry several callbacks instead of one or two each (W3: 1.7
/// per round without the wait).
const GATHER: Duration = Duration::from_millis(5);

/// The delay before attempt `attempts + 1`, after `attempts` failed ones.
pub fn backoff(settings: &CallbackSettings, attempts: u32) -> Duration {
    let factor = 2f64.powi(attempts.saturating_sub(1).min(62) as i32);
    Duration::from_secs_f64((settings.initial_backoff * factor).min(settings.max_backoff))
}

/// Runs until the task is dropped. awc's client is not `Send`: this runs on the thread that
/// spawned it, with its own client; https notifyUrls are verified against `tls`'s roots
/// (`crate::tls::client_config`).
pub async fn run_outbox(store: Store, settings: CallbackSettings, tls: Arc<rustls::ClientConfig>, wakeup: Arc<Notify>) {
    let client = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(tls))
        .timeout(Duration::from_secs(settings.timeout))
        .disable_redirects()
        .finish();
    loop {
        let looked = tokio::time::Instant::now();
        let next_due_in = match store.due_callbacks(BATCH).await {
            Ok(DueCallbacks { due, next_due_in }) => {
                let full = due.len() == BATCH as usize;
                let all_delivered = send_and_record(&client, &settings, &store, due).await;
                // Look again at once if more may be due: the batch was full, or an attempt failed
                // and its next one is due sooner than `next_due_in` knew. Otherwise every callback
                // due at the look is delivered, and one queued since has woken `wakeup`.
                if full || !all_delivered {
                    continue;
                }
                next_due_in
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the callback outbox");
                None
            }
        };
        // Counted from the look, not from now: the sends above may have taken a while.
        let wait = next_due_in.map_or(IDLE_POLL, |due_in| due_in.min(IDLE_POLL));
        tokio::select! {
            _ = wakeup.notified() => tokio::time::sleep(GATHER).await,
            _ = tokio::time::sleep_until(looked + wait) => {}
        }
    }
}

/// Sends `due` at once and records the outcomes as they come back, a few at a time: a slow
/// business server must not hold back the record of the others (a crash meanwhile would send
/// them all again), and the delivered ones of a few go in one write. Says whether every one was
/// delivered and recorded so.
async fn send_and_record(
    client: &awc::Client,
    settings: &CallbackSettings,
    store: &Store,
    due: Vec<DueCallback>,
) -> bool {
    let mut answered = due
        .into_iter()
        .map(|callback| deliver(client, settings, callback))
        .collect::<FuturesUnordered<_>>()
        .ready_chunks(BATCH as usize);
    let mut all_delivered = true;
    while let Some(attempts) = answered.next().await {
        all_delivered &= record(store, attempts).await;
    }
    all_delivered
}

/// How one attempt to deliver a callback went.
enum Attempt {
    /// The business server took it (2xx).
    Delivered { callback_id: i64 },
    /// To be tried again after `retry_in`, or, with `None`, given up.
    Failed { callback_id: i64, task_id: i64, error: String, retry_in: Option<Duration> },
}

/// Records the outcome of some attempts: the delivered ones in one statement. Says whether every
/// one of them was delivered and recorded so.
async fn record(store: &Store, attempts: Vec<Attempt>) -> bool {
    let sent = attempts.len();
    let mut delivered = Vec::new();
    for attempt in attempts {
        match attempt {
            Attempt::Delivered { callback_id } => delivered.push(callback_id),
            Attempt::Failed { callback_id, task_id, error, retry_in } => {
                match store.callback_attempt_failed(callback_id, &error, retry_in).await {
                    Ok(()) => metrics::callback_failed(retry_in.is_none()),
                    Err(e) => tracing::error!(task_id, error = %e, "cannot record a callback attempt"),
                }
            }
        }
    }
    match store.callbacks_delivered(&delivered).await {
        // Counted once recorded, so the counters never run ahead of the outbox table.
        Ok(()) => {
            metrics::callbacks_delivered(delivered.len());
            delivered.len() == sent
        }
        // They stay pending and are sent again: at least once.
        Err(e) => {
            tracing::error!(error = %e, "cannot record delivered callbacks");
            false
        }
    }
}

/// POSTs one callback, and says how it went, with the next try scheduled or the callback given up.
async fn deliver(client: &awc::Client, settings: &CallbackSettings, callback: DueCallback) -> Attempt {
    let sent = client
        .post(&callback.notify_url)
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-fupload-signature", callback.signature.as_str()))
        .send_body(callback.body.clone())
        .await;
    let attempts = u32::try_from(callback.attempts).unwrap_or(u32::MAX).saturating_add(1);
    let error = match sent {
        Ok(response) if response.status().is_success() => {
            tracing::info!(task_id = callback.task_id, attempts, "callback delivered");
            return Attempt::Delivered { callback_id: callback.callback_id };
        }
        Ok(response) => format!("business server answered {}", response.status()),
        Err(e) => format!("cannot reach the business server: {e}"),
    };
    let retry_in = (attempts < settings.max_attempts).then(|| backoff(settings, attempts));
    tracing::warn!(task_id = callback.task_id, attempts, ?retry_in, %error, "callback not delivered");
    Attempt::Failed { callback_id: callback.callback_id, task_id: callback.task_id, error, retry_in }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let settings = CallbackSettings {
            timeout: 1,
            max_attempts: 12,
            initial_backoff: 1.0,
            max_backoff: 10.0,
            ..Default::default()
        };
        let delays: Vec<u64> = (1..=6).map(|a| backoff(&settings, a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(&settings, u32::MAX).as_secs(), 10);
    }
}
