//! The tus 1.0 and IETF resumable-upload use cases on the same engine: a creation redeems an
//! upload grant and records a task; an append is a block at the task's offset; a final upload
//! of a concatenation takes over the bytes of its partial uploads.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::Digest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::block::BlockAccepted;
use super::{blocking, TaskRef, UploadError, Uploads};
use crate::blob;
use crate::domain::checksum::{ChecksumAlgorithm, ContentChecksum};
use crate::domain::grant::{self, UploadGrant};
use crate::domain::{ConcatRole, FieldError, FileSize, Md5Hex, Protocol, TaskStatus, UploadKey};
use crate::store::{GrantedCreation, NewTask, Task, TaskSpec};

/// The most partial uploads one final upload may join.
pub const MAX_PARTIALS: usize = 64;

/// The length a creation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadLength {
    Known(u64),
    /// Sent later, with a PATCH (tus `Upload-Defer-Length: 1`; an IETF upload not yet complete).
    Deferred,
}

/// A creation's part in a concatenation.
#[derive(Debug, Clone)]
pub enum Concat {
    Partial,
    /// The partial uploads, in order.
    Final(Vec<TaskRef>),
}

/// A creation request of a tus or IETF client.
#[derive(Debug, Clone)]
pub struct Creation {
    /// The upload grant, from `Authorization: Bearer`.
    pub grant: Option<String>,
    pub length: UploadLength,
    pub concat: Option<Concat>,
    pub protocol: Protocol,
    /// The whole file's md5 the client names (an IETF `Repr-Digest`), checked as the grant's.
    pub file_md5: Option<Md5Hex>,
}

/// A task as a tus HEAD (or an IETF offset retrieval) reports it.
#[derive(Debug, Clone)]
pub struct UploadState {
    pub task_id: i64,
    pub upload_key: String,
    pub status: TaskStatus,
    /// Bytes received without a gap from the start.
    pub offset: u64,
    /// `None` while the length is deferred.
    pub length: Option<u64>,
    /// When the task expires unless a block comes (open tasks only).
    pub expires_at: Option<SystemTime>,
    pub concat_role: Option<ConcatRole>,
    /// The file's md5, once the task is finished (checked against the one named, or computed).
    pub file_md5: Option<Md5Hex>,
}

/// A PATCH of a tus or IETF client.
#[derive(Debug, Clone)]
pub struct Append {
    pub offset: u64,
    /// The body's length, from `Content-Length`.
    pub body_len: u64,
    /// The upload's length, when a deferred one is declared with this request.
    pub declared_length: Option<u64>,
    pub checksum: Option<ContentChecksum>,
    pub protocol: Protocol,
}

impl Uploads {
    /// Checks the grant (signature, expiry, not redeemed before) and records the task it allows.
    /// A final upload of a concatenation takes its partials' bytes at once and is finished.
    pub async fn create_upload(&self, creation: Creation) -> Result<UploadState, UploadError> {
        let now_secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let text = creation.grant.as_deref().ok_or_else(|| {
            UploadError::GrantRefused(
                "is missing: send the upload grant your business server made as Authorization: Bearer <grant>".into(),
            )
        })?;
        let (token, grant) = grant::verify(text, self.business_servers.tokens(), now_secs)
            .map_err(|e| UploadError::GrantRefused(e.to_string()))?;
        let authorized = self.authorize(Some(token))?;
        let partials = match &creation.concat {
            // The final upload is joined from the partials' local temp files (docs/SCALING.md).
            Some(Concat::Final(_)) if self.storage.s3().is_some() => {
                return Err(FieldError::new("Upload-Concat", "final is not supported with S3 storage").into())
            }
            Some(Concat::Final(refs)) => Some(self.partials_to_join(refs, &grant).await?),
            _ => None,
        };
        let (size, deferred) = self.creation_length(&creation, &grant, partials.as_deref())?;
        let file_md5 = match (grant.file_md5, creation.file_md5) {
            (Some(granted), Some(sent)) if granted != sent => {
                return Err(FieldError::new(
                    "Repr-Digest",
                    format!("names an md5 other than the fileMd5 {granted} of the grant: send the file's own md5"),
                )
                .with_sent(sent.as_str())
                .into())
            }
            (granted, sent) => granted.or(sent),
        };
        let store_dir = self.store_dir_of(&grant.store_path)?;
        let upload_key = UploadKey::generate().map_err(|e| anyhow::anyhow!("no randomness for an upload key: {e}"))?;
        let concat_role = creation.concat.as_ref().map(|concat| match concat {
            Concat::Partial => ConcatRole::Partial,
            Concat::Final(_) => ConcatRole::Final,
        });
        let spec = TaskSpec {
            upload_key: upload_key.as_str().to_owned(),
            business_server: authorized.server.name.clone(),
            token_sha256: authorized.token_sha256,
            user_id: grant.user_id,
            file_name: grant.file_name,
            file_size: size,
            file_md5,
            store_path: grant.store_path,
            store_dir: store_dir.to_string_lossy().into_owned(),
            feedback_parameter: grant.feedback_parameter,
            protocol: creation.protocol,
            length_deferred: deferred,
            concat_role,
            grant_id: Some(grant.grant_id),
        };
        // An empty file has nothing to receive; a final upload's bytes come from its partials.
        let status = if size.bytes() == 0 && concat_role != Some(ConcatRole::Partial) {
            TaskStatus::Verify
        } else {
            TaskStatus::Upload
        };
        let new_task = NewTask { spec, tmp_dir: self.settings.tmp_dir.to_string_lossy().into_owned(), status };
        let redeem = concat_role != Some(ConcatRole::Partial);
        let (task, created) = match self.store.create_with_grant(&new_task, redeem).await? {
            GrantedCreation::Created(task) => (task, true),
            GrantedCreation::Resumed(task) => (task, false),
            GrantedCreation::GrantUsed => {
                return Err(UploadError::GrantRefused(
                    "was used for an upload already: ask the business server for a new grant".into(),
                ))
            }
        };
        match partials {
            Some(partials) if created => self.join(task, &partials).await,
            _ => {
                self.set_up_task(&task, created).await?;
                self.upload_state(&self.store.task(task.task_id).await?.unwrap_or(task))
            }
        }
    }

    /// The upload's size and whether it is deferred, as the creation and the grant agree on it.
    fn creation_length(
        &self,
        creation: &Creation,
        grant: &UploadGrant,
        partials: Option<&[Task]>,
    ) -> Result<(FileSize, bool), UploadError> {
        let granted = grant.file_size.map(|size| size.bytes());
        let length = match (partials, creation.length) {
            (Some(partials), _) => UploadLength::Known(partials.iter().map(Task::file_bytes).sum()),
            (None, length) => length,
        };
        let size = match (length, granted) {
            (UploadLength::Deferred, None) => return Ok((FileSize::new(self.settings.max_file_size)?, true)),
            (UploadLength::Deferred, Some(granted)) => granted,
            (UploadLength::Known(sent), None) => sent,
            // A partial upload holds a part of the granted file.
            (UploadLength::Known(sent), Some(granted))
                if sent == granted || (matches!(creation.concat, Some(Concat::Partial)) && sent <= granted) =>
            {
                sent
            }
            (UploadLength::Known(sent), Some(granted)) => {
                return Err(FieldError::new(
                    "Upload-Length",
                    format!("is not the {granted} bytes the grant names: send the length of the granted file"),
                )
                .with_sent(&sent.to_string())
                .into())
            }
        };
        if size > self.settings.max_file_size {
            return Err(UploadError::TooLarge(format!(
                "the upload's length of {size} bytes is more than the server's maxFileSize of {} bytes",
                self.settings.max_file_size
            )));
        }
        Ok((FileSize::new(size)?, false))
    }

    /// The partial uploads a final upload names: each of the same grant, complete and not joined.
    async fn partials_to_join(&self, refs: &[TaskRef], grant: &UploadGrant) -> Result<Vec<Task>, UploadError> {
        if refs.is_empty() || refs.len() > MAX_PARTIALS {
            return Err(FieldError::new(
                "Upload-Concat",
                format!("must name 1 to {MAX_PARTIALS} partial uploads, their URLs separated by spaces"),
            )
            .into());
        }
        let mut partials = Vec::with_capacity(refs.len());
        for task_ref in refs {
            let task = self.authorized_task(task_ref).await?;
            let problem = match () {
                _ if task.spec.concat_role != Some(ConcatRole::Partial) => Some("is not a partial upload"),
                _ if task.spec.grant_id.as_deref() != Some(grant.grant_id.as_str()) => {
                    Some("was created with another grant")
                }
                _ if task.status != TaskStatus::Upload || task.spec.length_deferred => {
                    Some("is not open with a known length")
                }
                _ if task.received_bytes != task.file_bytes() => Some("has not received all its bytes"),
                _ if partials.iter().any(|p: &Task| p.task_id == task.task_id) => Some("is named twice"),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(FieldError::new(
                    "Upload-Concat",
                    format!("the partial upload {} {problem}: finish each partial upload of this grant, then send the final one", task.task_id),
                )
                .into());
            }
            partials.push(task);
        }
        Ok(partials)
    }

    /// Copies the partials' bytes into the final task's temp file (by reference where the file
    /// system can), records them in one write, and finishes the final task.
    async fn join(&self, task: Task, partials: &[Task]) -> Result<UploadState, UploadError> {
        self.check_dir_and_make_temp(&task, true).await?;
        let sources: Vec<_> = partials.iter().map(|p| (p.tmp_path(), p.file_bytes())).collect();
        let target = task.tmp_path();
        blocking(move || blob::concatenate(&sources, &target))
            .await?
            .map_err(|e| UploadError::disk("cannot join the partial uploads", e))?;
        let ids: Vec<i64> = partials.iter().map(|p| p.task_id).collect();
        let change = self.store.join_partials(task.task_id, &ids, task.file_bytes()).await?;
        if let Some(refused) = UploadError::for_change(task.task_id, change) {
            let _ = self.store.record_failure(task.task_id, "its partial uploads changed while it was joined").await;
            return Err(refused);
        }
        for partial in partials {
            self.remove_temp(partial).await;
        }
        let mut joined = task.clone();
        joined.status = TaskStatus::Verify;
        self.finish_and_wait(joined).await;
        self.upload_state(&self.store.task(task.task_id).await?.unwrap_or(task))
    }

    /// The task's state as HEAD reports it, in any status.
    pub async fn upload(&self, task_ref: &TaskRef) -> Result<UploadState, UploadError> {
        let task = self.authorized_task(task_ref).await?;
        self.upload_state(&task)
    }

    fn upload_state(&self, task: &Task) -> Result<UploadState, UploadError> {
        let length = (!task.spec.length_deferred).then(|| task.file_bytes());
        let offset = match task.status {
            TaskStatus::Finish => task.file_bytes(),
            _ => task.received_prefix,
        };
        let open = matches!(task.status, TaskStatus::Upload | TaskStatus::Pause);
        Ok(UploadState {
            task_id: task.task_id,
            upload_key: task.spec.upload_key.clone(),
            status: task.status,
            offset,
            length,
            expires_at: open.then(|| task.updated_at + Duration::from_secs(self.settings.task_timeout)),
            concat_role: task.spec.concat_role,
            file_md5: task.spec.file_md5.clone().filter(|_| task.status == TaskStatus::Finish),
        })
    }

    /// Writes the body at `append.offset`, which must be the task's offset. A body that ends
    /// early keeps the bytes that came, unless a checksum was sent (then nothing is recorded);
    /// a checksum that does not match records nothing.
    pub async fn append<S, E>(&self, task_ref: &TaskRef, append: Append, body: S) -> Result<UploadState, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut target = self.check_block_target(task_ref).await?;
        let mut task = target.task().clone();
        if task.spec.concat_role == Some(ConcatRole::Final) {
            return Err(UploadError::FinalUpload);
        }
        if append.checksum.is_none() && self.settings.check_tmp_md5 {
            return Err(FieldError::new(
                "Upload-Checksum",
                "is required: this server checks every block (checkTmpMd5 is on); send Upload-Checksum (tus) or \
                 Content-Digest with each PATCH",
            )
            .into());
        }
        if task.spec.protocol != append.protocol && task.spec.protocol == Protocol::Fupload {
            self.store.set_protocol(task.task_id, append.protocol).await?;
        }
        let offset = task.received_prefix;
        if append.offset != offset {
            return Err(UploadError::OffsetMismatch { expected: offset, sent: append.offset });
        }
        if let Some(length) = append.declared_length {
            let deferred = task.spec.length_deferred;
            task = self.declare_length(task, length).await?;
            if deferred && task.status == TaskStatus::Upload {
                // The block is planned against the task with its length.
                target = self.check_block_target(task_ref).await?;
            }
        }
        if append.body_len == 0 {
            return self.upload_state(&task);
        }
        // Saturating: a Content-Length near u64::MAX is past any upload's end, and refused so.
        let end = offset.saturating_add(append.body_len - 1);
        if task.spec.length_deferred && end >= task.file_bytes() {
            return Err(UploadError::TooLarge(format!(
                "the upload would grow past the server's maxFileSize of {} bytes",
                task.file_bytes()
            )));
        }
        if !task.spec.length_deferred && end >= task.file_bytes() {
            return Err(UploadError::PastLength { length: task.file_bytes(), end });
        }
        let plan = self.plan_block(&target, offset, end).await?;
        if !plan.holds_whole_range() {
            return Err(UploadError::AppendInFlight);
        }
        let checking = ChecksumOf::new(append.checksum.as_ref().map(|c| c.algorithm));
        let ended_early = Arc::new(AtomicBool::new(false));
        let body = until_broken(body, ended_early.clone(), checking.clone());
        let received = self.receive_block(plan, body).await?;
        let broken = ended_early.load(Ordering::Relaxed) || received.body_len() < append.body_len;
        let accepted = match (&append.checksum, broken) {
            (Some(_), true) => {
                return Err(UploadError::BadRange(super::RangeProblem::BodyLength(
                    "the body ended before Content-Length bytes came; with a checksum nothing is kept".into(),
                )))
            }
            (Some(sent), false) => {
                let computed = checking.digest(&received.md5());
                if computed != sent.digest {
                    return Err(UploadError::ChecksumMismatch { algorithm: sent.algorithm, offset, end });
                }
                self.commit_checked_block(received, None).await?
            }
            (None, true) => match received.cut_to_body() {
                Some(cut) => self.commit_checked_block(cut, None).await?,
                None => return self.upload_state(&task),
            },
            (None, false) => self.commit_checked_block(received, None).await?,
        };
        Ok(self.state_after(&task, &accepted))
    }

    fn state_after(&self, task: &Task, accepted: &BlockAccepted) -> UploadState {
        let finished = accepted.task_status == TaskStatus::Finish;
        UploadState {
            task_id: task.task_id,
            upload_key: task.spec.upload_key.clone(),
            status: accepted.task_status,
            offset: if finished { task.file_bytes() } else { accepted.received_prefix },
            length: (!task.spec.length_deferred).then(|| task.file_bytes()),
            expires_at: (accepted.task_status == TaskStatus::Upload)
                .then(|| SystemTime::now() + Duration::from_secs(self.settings.task_timeout)),
            concat_role: task.spec.concat_role,
            // Known once finished; the caller asks for the task again when it needs it.
            file_md5: None,
        }
    }

    /// Declares the length of a deferred upload: the temp file is cut to it first (a crash
    /// between the two leaves a shorter file that recovery reads as cut short, losing nothing).
    async fn declare_length(&self, task: Task, length: u64) -> Result<Task, UploadError> {
        if !task.spec.length_deferred {
            return match length == task.file_bytes() {
                true => Ok(task),
                false => Err(UploadError::LengthChanged { length: task.file_bytes(), sent: length }),
            };
        }
        if length > self.settings.max_file_size || length < task.received_bytes {
            return Err(FieldError::new(
                "Upload-Length",
                format!(
                    "must be between the {} bytes received and the server's maxFileSize of {} bytes",
                    task.received_bytes, self.settings.max_file_size
                ),
            )
            .with_sent(&length.to_string())
            .into());
        }
        let path = task.tmp_path();
        blocking(move || std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(length)))
            .await?
            .map_err(|e| UploadError::disk("cannot set the temp file's length", e))?;
        let change = self.store.declare_length(task.task_id, FileSize::new(length)?).await?;
        if let Some(refused) = UploadError::for_change(task.task_id, change) {
            return Err(refused);
        }
        let task = self.store.task(task.task_id).await?.ok_or(UploadError::TaskNotFound(task.task_id))?;
        if task.status == TaskStatus::Verify {
            let status = self.finish_and_wait(task.clone()).await;
            return Ok(Task { status, ..task });
        }
        Ok(task)
    }

    /// tus termination and IETF cancellation: the task is cancelled, its callback says so.
    pub async fn terminate(&self, task_ref: &TaskRef) -> Result<(), UploadError> {
        self.change_state(task_ref, super::RequestedState::Cancel).await.map(drop)
    }
}

/// Ends the body quietly where it breaks, noting that it did: the bytes before the break are
/// kept (a tus client resumes from them). Each piece is also fed to the checksum.
fn until_broken<S, E>(
    body: S,
    ended_early: Arc<AtomicBool>,
    checksum: ChecksumOf,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    body.take_while(move |piece| {
        let ok = piece.is_ok();
        if let Err(e) = piece {
            tracing::debug!(error = %e, "an append's body ended early");
            ended_early.store(true, Ordering::Relaxed);
        }
        std::future::ready(ok)
    })
    .filter_map(move |piece| {
        let piece = piece.ok();
        if let Some(piece) = &piece {
            checksum.update(piece);
        }
        std::future::ready(piece.map(Ok))
    })
}

/// The checksum of a body other than its md5 (which the engine computes anyway).
#[derive(Clone)]
struct ChecksumOf(Option<Arc<Mutex<Hasher>>>);

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Md5,
}

impl ChecksumOf {
    fn new(algorithm: Option<ChecksumAlgorithm>) -> Self {
        ChecksumOf(algorithm.map(|algorithm| {
            Arc::new(Mutex::new(match algorithm {
                ChecksumAlgorithm::Md5 => Hasher::Md5,
                ChecksumAlgorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
                ChecksumAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
                ChecksumAlgorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            }))
        }))
    }

    fn update(&self, piece: &[u8]) {
        if let Some(hasher) = &self.0 {
            let mut hasher = hasher.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match &mut *hasher {
                Hasher::Sha1(h) => h.update(piece),
                Hasher::Sha256(h) => h.update(piece),
                Hasher::Sha512(h) => h.update(piece),
                Hasher::Md5 => {}
            }
        }
    }

    /// The digest; for md5, the one the engine computed over the same body.
    fn digest(&self, md5: &Md5Hex) -> Vec<u8> {
        let Some(hasher) = &self.0 else { return Vec::new() };
        let hasher =
            std::mem::replace(&mut *hasher.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), Hasher::Md5);
        match hasher {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
            Hasher::Md5 => hex::decode(md5.as_str()).unwrap_or_default(),
        }
    }
}
