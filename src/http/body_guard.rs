//! Guards on request bodies, against clients that hold a connection (and a block's claim on its
//! bytes) without sending, or make the multipart parser buffer without end.
//!
//! - A body that pauses longer than `server.clientBodyTimeout` fails the request: its block is
//!   refused and releases its claim, its connection is closed. (actix's own timers cover only the
//!   request head and the idle time between requests.)
//! - The multipart parser keeps in memory whatever it has read and not yet handed out, so a
//!   part header or boundary line that never ends would grow it without bound. A block's body may
//!   run ahead of what the handler has taken by at most `MAX_BUFFERED` bytes.
//! - A multipart body that ends inside a part leaves the parser waiting for good (actix-multipart
//!   0.7 answers `Pending` at the end of the body): such a block is refused once its body has
//!   ended `clientBodyTimeout` ago.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::HttpMessage;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::service::Uploads;

/// Bytes of a block's body that may be read ahead of what the handler took: room for the part
/// headers and boundaries of every field, and a chunk in flight.
pub const MAX_BUFFERED: u64 = 1 << 20;

/// Middleware: every request body fails once it pauses for `server.clientBodyTimeout`.
pub async fn fail_idle_bodies(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let timeout = req.app_data::<web::Data<Uploads>>().map(|u| u.settings().server.client_body_timeout);
    if let Some(seconds) = timeout.filter(|s| *s > 0.0) {
        let body = IdleTimeout::new(req.take_payload(), Duration::from_secs_f64(seconds));
        req.set_payload(Payload::from(Box::pin(body) as Pin<Box<dyn Stream<Item = _>>>));
    }
    next.call(req).await
}

struct IdleTimeout<S> {
    body: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    timed_out: bool,
}

impl<S> IdleTimeout<S> {
    fn new(body: S, idle: Duration) -> Self {
        Self { body, idle, deadline: Box::pin(tokio::time::sleep(idle)), timed_out: false }
    }
}

impl<S: Stream<Item = Result<Bytes, PayloadError>> + Unpin> Stream for IdleTimeout<S> {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_next(cx) {
            Poll::Ready(item) => {
                let next = Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                Poll::Ready(item)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.timed_out = true;
                    let why = format!("no body data for {:?}", self.idle);
                    Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(io::ErrorKind::TimedOut, why)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Counts the bytes the multipart parser reads and the bytes the handler takes out of fields, and
/// tells when the body has ended.
#[derive(Clone, Default)]
pub struct Meter {
    read: Rc<Cell<u64>>,
    taken: Rc<Cell<u64>>,
    ended: Rc<Notify>,
}

impl Meter {
    /// The body for the multipart parser: fails with `Overflow` once it would read more than
    /// `MAX_BUFFERED` bytes ahead of what the handler took.
    pub fn body(&self, payload: web::Payload) -> impl Stream<Item = Result<Bytes, PayloadError>> + 'static {
        let meter = self.clone();
        let ended = self.ended.clone();
        payload
            .and_then(move |chunk| {
                let read = meter.read.get() + chunk.len() as u64;
                meter.read.set(read);
                let ahead = read.saturating_sub(meter.taken.get());
                futures_util::future::ready(if ahead > MAX_BUFFERED { Err(PayloadError::Overflow) } else { Ok(chunk) })
            })
            .chain(futures_util::stream::poll_fn(move |_| {
                ended.notify_one();
                Poll::Ready(None)
            }))
    }

    /// Resolves `grace` after the body ended. A body that ends inside a part (no closing
    /// boundary) leaves the multipart parser waiting for bytes that never come.
    pub async fn ended_for(&self, grace: Duration) {
        self.ended.notified().await;
        tokio::time::sleep(grace).await;
    }

    /// A field's bytes, counted as taken by the handler as they are read.
    pub fn take<S, E>(&self, field: S) -> impl Stream<Item = Result<Bytes, E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let taken = self.taken.clone();
        field.inspect_ok(move |chunk| taken.set(taken.get() + chunk.len() as u64))
    }
}
