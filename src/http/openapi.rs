//! The OpenAPI 3.1 document of the whole API, served at `/api/openapi.json`. Reply types are the
//! handlers' own (so the document follows the code); request bodies, which the handlers read field
//! by field, are described by the types below.

use std::sync::OnceLock;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{block, create_task, info, instant, ops, state};
use crate::domain::TaskStatus;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fupload",
        description = "Resumable large-file uploads with the fuploadServer protocol. Every reply of the task \
            endpoints is the envelope {retCode, status, data}; the HTTP status is meaningful too. Task URLs come from \
            the create reply and carry the task's key.",
        license(name = "MIT")
    ),
    paths(
        create_task::create_task,
        block::upload_block,
        info::blocks_info,
        state::change_state,
        instant::answer,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi
    ),
    tags(
        (name = "tasks", description = "The upload protocol: business server and client."),
        (name = "operations", description = "Health, readiness, metrics and this document.")
    )
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as served, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| document().to_json().expect("the document is plain data and serialises"))
}

/// A refused request: the envelope with a non-zero retCode and `data: null`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Refusal {
    #[schema(schema_with = refusal_code)]
    pub ret_code: String,
    /// Why, in words; a parameter error names the field first.
    #[schema(example = "fileMd5: must be 32 hex digits")]
    pub status: String,
    #[schema(schema_with = null)]
    pub data: (),
}

/// The query of the task URLs that must name their task.
#[derive(IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct TaskParams {
    /// The task, from its URL.
    pub task_id: i64,
    /// The task's upload key, from its URL.
    pub key: Option<String>,
}

/// `POST /api/upload/new/task`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct CreateTaskRequest {
    /// A token of the `bServer` config; checked before any other field.
    #[schema(example = "cp1-secret")]
    pub token: String,
    /// A string or an integer.
    #[schema(schema_with = string_or_integer)]
    pub user_id: String,
    /// A directory: relative to storeDir, or absolute inside it. Default: storeDir itself.
    #[schema(example = "videos/2026/")]
    pub store_path: Option<String>,
    /// A plain name: no `/`, `\`, control characters, not `.` or `..`, 1 to 255 bytes.
    #[schema(example = "hello.mp4")]
    pub file_name: String,
    /// Bytes: an integer or a decimal string, at most maxFileSize.
    #[schema(schema_with = size)]
    pub file_size: u64,
    #[schema(pattern = "^[0-9a-fA-F]{32}$", example = "04465d416b4eca345976021db8698f15")]
    pub file_md5: String,
    /// Any JSON; sent back verbatim as the callback's `data` (alias: `feedbackParameter`).
    #[schema(value_type = Option<Object>)]
    pub feed_back_parameter: Option<serde_json::Value>,
    /// Ask for an instant upload: when this business server holds the file already, the reply
    /// carries a `challenge` and an `instantUrl` to answer it at.
    pub instant: Option<bool>,
}

/// `POST instantUrl`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct InstantAnswer {
    /// md5 of the challenge's nonce (its 32 hex digits as ASCII) followed by the bytes of its
    /// ranges in order, in hex.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub proof: String,
}

/// `POST uploadUrl`: one block, `multipart/form-data`. Fields may come in any order; with the text
/// fields before `file` the bytes stream straight to disk.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct BlockForm {
    /// First byte of the block, 0-based.
    pub start_byte: u64,
    /// Last byte of the block, inclusive.
    pub end_byte: u64,
    /// md5 of the block, hex; checked when present, required with `checkTmpMd5: true`.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub part_md5: Option<String>,
    /// The block's bytes: `endByte - startByte + 1` of them.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// `POST stateUrl`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct StateRequest {
    /// Optional; when given it must equal the URL's taskId. An integer or a decimal string.
    #[schema(schema_with = string_or_integer)]
    pub task_id: Option<String>,
    #[schema(schema_with = requested_state)]
    pub status: String,
}

/// The retCodes of refusals (PROTOCOL.md's table).
const REFUSAL_CODES: [&str; 13] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "20"];

fn refusal_code() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(REFUSAL_CODES))
}

fn null() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Null)
}

fn string_or_integer() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Integer))
        .into()
}

fn size() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]+$")))
        .into()
}

fn requested_state() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["pause", "upload", "cancel"]))
}

/// A task status as the replies spell it.
pub fn task_status() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(TaskStatus::ALL.map(TaskStatus::as_str)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_mounted_path() {
        let doc = document();
        let paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in [
            super::super::NEW_TASK_PATH,
            super::super::BLOCK_PATH,
            super::super::BLOCKS_INFO_PATH,
            super::super::STATE_PATH,
            super::super::INSTANT_PATH,
            super::super::HEALTHZ_PATH,
            super::super::READYZ_PATH,
            super::super::METRICS_PATH,
            super::super::OPENAPI_PATH,
        ] {
            assert!(paths.contains(&path), "{path} is missing from {paths:?}");
        }
        let json: serde_json::Value = serde_json::from_str(document_json()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3."));
        let block = &json["paths"][super::super::BLOCK_PATH]["post"];
        assert!(block["requestBody"]["content"]["multipart/form-data"].is_object(), "{block}");
        let params: Vec<(&str, &str, bool)> = block["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap(), p["required"] == true))
            .collect();
        assert_eq!(params, [("taskId", "query", true), ("key", "query", false)]);
    }
}
