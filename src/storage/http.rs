//! The S3 requests' connection thread. awc's client is not `Send`, and S3 requests are made from
//! tasks on any runtime thread (a finish, a block's commit): they are handed to one thread that
//! runs its own client and answers each request on a oneshot channel.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

/// One signed request: the URL carries the signature.
pub(super) struct Request {
    pub method: awc::http::Method,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// What S3 answered.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Bytes,
}

type Job = (Request, oneshot::Sender<Result<Reply, String>>);

/// The largest reply body read: a ranged GET's piece, or a listing.
const MAX_REPLY: usize = 32 << 20;

pub(super) struct Connection {
    jobs: flume::Sender<Job>,
}

impl Connection {
    /// Starts the thread. It ends when the connection is dropped.
    pub fn start(timeout: Duration) -> std::io::Result<Self> {
        let tls = crate::tls::client_config(None).map_err(std::io::Error::other)?;
        let (jobs, queue) = flume::unbounded::<Job>();
        std::thread::Builder::new().name("fupload-s3".into()).spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let client = awc::Client::builder()
                    .connector(awc::Connector::new().rustls_0_23(tls))
                    .timeout(timeout)
                    .disable_redirects()
                    .finish();
                while let Ok((request, answer)) = queue.recv_async().await {
                    let client = client.clone();
                    actix_web::rt::spawn(async move {
                        // The asker may have gone (its request was dropped): nobody to tell.
                        let _ = answer.send(send(&client, request).await);
                    });
                }
            })
        })?;
        Ok(Self { jobs })
    }

    pub async fn send(&self, request: Request) -> Result<Reply, String> {
        let (answer, reply) = oneshot::channel();
        self.jobs.send_async((request, answer)).await.map_err(|_| "the S3 connection thread is gone".to_owned())?;
        reply.await.map_err(|_| "the S3 connection thread dropped the request".to_owned())?
    }
}

async fn send(client: &awc::Client, request: Request) -> Result<Reply, String> {
    let mut outgoing = client.request(request.method, request.url);
    for (name, value) in request.headers {
        outgoing = outgoing.insert_header((name, value));
    }
    let mut response = outgoing.send_body(request.body).await.map_err(|e| e.to_string())?;
    let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.body().limit(MAX_REPLY).await.map_err(|e| e.to_string())?;
    Ok(Reply { status: response.status().as_u16(), etag, body })
}
