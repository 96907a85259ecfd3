//! `POST /api/upload/new/task`: the business server creates (or resumes) a task.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::openapi::{CreateTaskRequest, Refusal};
use super::{ok, task_url, BLOCKS_INFO_PATH, BLOCK_PATH, INSTANT_PATH, STATE_PATH};
use crate::domain::{FieldError, FileName, FileSize, Md5Hex};
use crate::service::{CreateTask, CreatedTask, UploadError, Uploads};
use crate::telemetry::metrics;

/// Bodies larger than this are refused: a create request is a few hundred bytes plus the
/// business server's feedBackParameter.
pub const MAX_CREATE_BODY: usize = 1 << 20;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskUrls {
    task_id: i64,
    upload_url: String,
    blocks_url: String,
    state_url: String,
    /// The same task for a tus client: resumed there with no creation (docs/API.md, section 9).
    tus_url: String,
    /// With a `challenge` only: where to answer it.
    #[serde(skip_serializing_if = "Option::is_none")]
    instant_url: Option<String>,
    /// Only for a create with `"instant": true` whose file is stored already (docs/API.md, section 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    challenge: Option<ChallengeJson>,
}

/// The challenge of an instant upload.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeJson {
    /// 32 hex digits; the proof hashes them as ASCII text first.
    nonce: String,
    /// The byte ranges (inclusive) whose bytes follow the nonce in the proof, in this order.
    ranges: Vec<RangeJson>,
    /// Seconds from now the answer may take.
    expires_in: u64,
    /// Answers this task may still give, right or wrong.
    answers_left: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeJson {
    start_byte: u64,
    end_byte: u64,
}

/// Creates a task, or returns the unfinished task with the same fields again (resume).
#[utoipa::path(
    post,
    path = "/api/upload/new/task",
    tag = "tasks",
    request_body(content = CreateTaskRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "retCode 0: the task and its URLs", body = super::Envelope<TaskUrls>),
        (status = 400, description = "retCode 6: a field is wrong", body = Refusal),
        (status = 401, description = "retCode 1: unknown or missing token", body = Refusal),
        (status = 403, description = "retCode 9: storePath leaves storeDir", body = Refusal),
        (status = 413, description = "retCode 10: fileSize or body too large", body = Refusal),
        (status = 500, description = "retCode 3 or 20: disk or system error", body = Refusal),
        (status = 507, description = "retCode 3: disk full", body = Refusal),
    )
)]
pub async fn create_task(uploads: web::Data<Uploads>, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let body = match body.to_bytes_limited(MAX_CREATE_BODY).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(ApiError::field("body", format!("cannot be read: {e}"))),
        Err(_) => {
            return Err(UploadError::TooLarge(format!(
                "the create body is larger than {MAX_CREATE_BODY} bytes: send a smaller feedBackParameter"
            ))
            .into())
        }
    };
    let created = create_from_body(&uploads, &body).await?;
    if created.created {
        metrics::task_created();
    }
    let base = uploads.settings().server.public_base_url();
    let url = |path| task_url(&base, path, created.task_id, &created.upload_key);
    Ok(ok(TaskUrls {
        task_id: created.task_id,
        upload_url: url(BLOCK_PATH),
        blocks_url: url(BLOCKS_INFO_PATH),
        state_url: url(STATE_PATH),
        tus_url: super::tus::tus_url(&base, created.task_id, &created.upload_key),
        instant_url: created.challenge.as_ref().map(|_| url(INSTANT_PATH)),
        challenge: created.challenge.map(|c| ChallengeJson {
            nonce: c.nonce,
            ranges: c.ranges.iter().map(|r| RangeJson { start_byte: r.start(), end_byte: r.end() }).collect(),
            expires_in: c.expires_in,
            answers_left: c.answers_left,
        }),
    }))
}

/// Creates the task a create request's body asks for: the token first (nothing else is looked at
/// without a known one), then the fields, each refusal naming its field.
pub async fn create_from_body(uploads: &Uploads, body: &[u8]) -> Result<CreatedTask, UploadError> {
    let body = CreateTaskBody::parse(body)?;
    let authorized = uploads.authorize(body.token().as_deref())?;
    uploads.create_task(authorized, body.into_command()?).await
}

/// The JSON body of a create request, each field still raw: the token is checked before any
/// other field is looked at, and each field's error can name the field.
pub struct CreateTaskBody {
    fields: HashMap<String, Box<RawValue>>,
}

impl CreateTaskBody {
    pub fn parse(body: &[u8]) -> Result<Self, FieldError> {
        serde_json::from_slice(body)
            .map(|fields| Self { fields })
            .map_err(|e| FieldError::new("body", format!("must be a JSON object: {e}")))
    }

    fn token(&self) -> Option<String> {
        self.string("token").ok()
    }

    fn raw(&self, field: &'static str) -> Result<&RawValue, FieldError> {
        self.fields.get(field).map(|raw| &**raw).ok_or_else(|| FieldError::new(field, "is required"))
    }

    fn string(&self, field: &'static str) -> Result<String, FieldError> {
        let raw = self.raw(field)?.get();
        serde_json::from_str(raw).map_err(|_| FieldError::new(field, "must be a string").with_sent(raw))
    }

    /// A string, or an integer taken as its decimal text.
    fn string_or_integer(&self, field: &'static str) -> Result<String, FieldError> {
        match serde_json::from_str::<serde_json::Value>(self.raw(field)?.get()) {
            Ok(serde_json::Value::String(text)) => Ok(text),
            Ok(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            _ => Err(FieldError::new(field, "must be a string or an integer").with_sent(self.raw(field)?.get())),
        }
    }

    fn file_size(&self) -> Result<FileSize, FieldError> {
        let field = FileSize::FIELD;
        match serde_json::from_str::<serde_json::Value>(self.raw(field)?.get()) {
            Ok(serde_json::Value::String(text)) => FileSize::from_decimal(&text),
            Ok(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(bytes) => FileSize::new(bytes),
                None => Err(FieldError::new(field, "must be a non-negative integer").with_sent(&n.to_string())),
            },
            _ => Err(FieldError::new(field, "must be a non-negative integer or a decimal string")
                .with_sent(self.raw(field)?.get())),
        }
    }

    fn into_command(self) -> Result<CreateTask, FieldError> {
        let user_id = self.string_or_integer("userId")?;
        let store_path = match self.fields.contains_key("storePath") {
            true => self.string("storePath")?,
            false => String::new(),
        };
        let file_name = FileName::parse(&self.string("fileName")?)?;
        let file_size = self.file_size()?;
        let file_md5 = Md5Hex::parse("fileMd5", &self.string("fileMd5")?)?;
        let feedback_parameter = ["feedBackParameter", "feedbackParameter"]
            .iter()
            .find_map(|name| self.fields.get(*name))
            .map_or_else(|| "null".to_owned(), |raw| raw.get().to_owned());
        let instant = match self.fields.get("instant").map(|raw| raw.get()) {
            None | Some("false") | Some("null") => false,
            Some("true") => true,
            Some(other) => return Err(FieldError::new("instant", "must be true or false").with_sent(other)),
        };
        Ok(CreateTask { user_id, store_path, file_name, file_size, file_md5, feedback_parameter, instant })
    }
}
