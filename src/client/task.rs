//! A task as the client knows it: its URLs, how it is created, what the server says about it.

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ClientError;
use super::file::LocalFile;
use crate::domain::{ByteRange, TaskStatus};
use crate::http::{BLOCKS_INFO_PATH, BLOCK_PATH, NEW_TASK_PATH, STATE_PATH};
/// What `blocksUrl` says about a task: the server's own type.
pub use crate::service::BlocksInfo;

/// The URLs of one task, as the create reply gives them. They carry the task's upload key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskUrls {
    pub task_id: i64,
    pub upload_url: String,
    pub blocks_url: String,
    pub state_url: String,
    /// Where to answer `challenge`: offered only to a create that asked for an instant upload
    /// of a file the server holds already.
    #[serde(default)]
    pub instant_url: Option<String>,
    #[serde(default)]
    pub challenge: Option<Challenge>,
}

/// An instant upload's challenge: answered with the md5 of `nonce` and the bytes of `ranges`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    pub nonce: String,
    pub ranges: Vec<ChallengeRange>,
    pub expires_in: u64,
    pub answers_left: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeRange {
    pub start_byte: u64,
    pub end_byte: u64,
}

impl TaskUrls {
    /// The task's URLs from any one of them: they differ only in their path.
    pub fn from_url(url: &str) -> Result<Self, ClientError> {
        let bad = |problem: &str| ClientError::Usage(format!("{url}: {problem}"));
        let (location, query) = url.split_once('?').ok_or_else(|| bad("has no ?taskId=…"))?;
        let base = [BLOCKS_INFO_PATH, BLOCK_PATH, STATE_PATH]
            .iter()
            .find_map(|path| location.strip_suffix(path))
            .ok_or_else(|| bad("is not an uploadUrl, blocksUrl or stateUrl"))?;
        let mut task_id = None;
        let mut key = None;
        for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
            match name {
                "taskId" => task_id = Some(value.parse().map_err(|_| bad("taskId is not an integer"))?),
                "key" => key = Some(value),
                _ => {}
            }
        }
        let task_id = task_id.ok_or_else(|| bad("has no taskId"))?;
        Self::from_parts(base, task_id, key)
    }

    /// The URLs of task `task_id` on the server at `server` (scheme, host, port and any path prefix).
    /// `key` may be left out only where the server runs with `requireUploadKey: false`.
    pub fn from_parts(server: &str, task_id: i64, key: Option<&str>) -> Result<Self, ClientError> {
        let base = server_base(server)?;
        let query = match key {
            Some(key) => format!("taskId={task_id}&key={key}"),
            None => format!("taskId={task_id}"),
        };
        let url = |path: &str| format!("{base}{path}?{query}");
        Ok(Self {
            task_id,
            upload_url: url(BLOCK_PATH),
            blocks_url: url(BLOCKS_INFO_PATH),
            state_url: url(STATE_PATH),
            instant_url: None,
            challenge: None,
        })
    }
}

/// `server` without a trailing slash, if it is an http:// or https:// URL.
fn server_base(server: &str) -> Result<&str, ClientError> {
    if server.starts_with("http://") || server.starts_with("https://") {
        Ok(server.trim_end_matches('/'))
    } else {
        Err(ClientError::Usage(format!("{server}: not an http:// or https:// URL")))
    }
}

/// Who creates the task. Either way, creating a task with the same fields as an unfinished one
/// returns that task again, which is how a second run resumes the first.
#[derive(Debug, Clone)]
pub enum TaskCreator {
    /// A business server: POST `{userId, fileName, fileSize, fileMd5}` to its create URL; it adds
    /// its token and storePath, and answers with fupload's reply.
    BusinessServer { create_url: String, user_id: String },
    /// fupload itself, with a business server's token (for scripts and operations).
    Fupload { server: String, token: String, user_id: String, store_path: String },
}

impl TaskCreator {
    pub(super) fn url(&self) -> Result<String, ClientError> {
        match self {
            TaskCreator::BusinessServer { create_url, .. } => Ok(server_base(create_url)?.to_owned()),
            TaskCreator::Fupload { server, .. } => Ok(format!("{}{NEW_TASK_PATH}", server_base(server)?)),
        }
    }

    pub(super) fn body(&self, file: &LocalFile) -> Value {
        match self {
            // `instant`: an instant upload if the server holds the file already (servers and
            // business servers that do not know the field ignore it).
            TaskCreator::BusinessServer { user_id, .. } => json!({
                "userId": user_id, "fileName": file.name, "fileSize": file.size, "fileMd5": file.md5.as_str(),
                "instant": true,
            }),
            TaskCreator::Fupload { token, user_id, store_path, .. } => json!({
                "token": token, "userId": user_id, "storePath": store_path,
                "fileName": file.name, "fileSize": file.size, "fileMd5": file.md5.as_str(), "instant": true,
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlocksInfoJson {
    task_id: i64,
    total_size: u64,
    received_size: u64,
    status: String,
    expect_blocks: Vec<RangeJson>,
    #[serde(default)]
    last_error: Option<String>,
    #[serde(default)]
    finish_attempts: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RangeJson {
    start_byte: u64,
    end_byte: u64,
}

/// What `blocksUrl` says about a task (the `data` of its reply), in the server's own terms.
pub(super) fn blocks_info(data: Value) -> Result<BlocksInfo, String> {
    let json: BlocksInfoJson = serde_json::from_value(data).map_err(|e| e.to_string())?;
    let status = json.status.parse().map_err(|e| format!("{e}"))?;
    let expect_blocks = json
        .expect_blocks
        .iter()
        .map(|r| ByteRange::new(r.start_byte, r.end_byte).ok_or(format!("bad range {}-{}", r.start_byte, r.end_byte)))
        .collect::<Result<_, _>>()?;
    Ok(BlocksInfo {
        task_id: json.task_id,
        total_size: json.total_size,
        received_size: json.received_size,
        status,
        expect_blocks,
        last_error: json.last_error,
        finish_attempts: json.finish_attempts,
    })
}

/// A state a client may ask for on `stateUrl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WantedState {
    Pause,
    /// Back to `upload` after a pause.
    Resume,
    Cancel,
}

impl WantedState {
    pub fn as_str(self) -> &'static str {
        match self {
            WantedState::Pause => "pause",
            WantedState::Resume => "upload",
            WantedState::Cancel => "cancel",
        }
    }

    /// The task's status once the change is made.
    pub fn status(self) -> TaskStatus {
        match self {
            WantedState::Pause => TaskStatus::Pause,
            WantedState::Resume => TaskStatus::Upload,
            WantedState::Cancel => TaskStatus::Cancel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_task_url_gives_all_three() {
        let state = "http://up.example.com/prefix/api/upload/files/state?taskId=12&key=abc";
        let urls = TaskUrls::from_url(state).unwrap();
        assert_eq!(urls.task_id, 12);
        assert_eq!(urls.state_url, state);
        assert_eq!(urls.upload_url, "http://up.example.com/prefix/api/upload/files/block?taskId=12&key=abc");
        assert_eq!(urls.blocks_url, "http://up.example.com/prefix/api/upload/files/blocks/info?taskId=12&key=abc");
        for url in [&urls.upload_url, &urls.blocks_url] {
            assert_eq!(TaskUrls::from_url(url).unwrap(), urls);
        }
    }

    #[test]
    fn urls_from_parts_with_and_without_a_key() {
        let urls = TaskUrls::from_parts("http://127.0.0.1:8080/", 3, Some("k")).unwrap();
        assert_eq!(urls.blocks_url, "http://127.0.0.1:8080/api/upload/files/blocks/info?taskId=3&key=k");
        let secure = TaskUrls::from_parts("https://up.example.com", 3, Some("k")).unwrap();
        assert_eq!(secure.upload_url, "https://up.example.com/api/upload/files/block?taskId=3&key=k");
        let bare = TaskUrls::from_parts("http://127.0.0.1:8080", 3, None).unwrap();
        assert_eq!(bare.state_url, "http://127.0.0.1:8080/api/upload/files/state?taskId=3");
    }

    #[test]
    fn unusable_urls_are_usage_errors() {
        for url in [
            "http://h/api/upload/files/state",
            "http://h/api/upload/other?taskId=1",
            "http://h/api/upload/files/state?key=k",
            "http://h/api/upload/files/state?taskId=x",
            "ftp://h/api/upload/files/state?taskId=1",
        ] {
            assert!(matches!(TaskUrls::from_url(url), Err(ClientError::Usage(_))), "{url}");
        }
    }

    #[test]
    fn blocks_info_is_read_from_the_reply_data() {
        let data = json!({"taskId": 1, "totalSize": 10, "receivedSize": 4, "status": "upload",
            "expectBlocks": [{"startByte": 4, "endByte": 9}]});
        let info = blocks_info(data).unwrap();
        assert_eq!(info.status, TaskStatus::Upload);
        assert_eq!(info.expect_blocks, vec![ByteRange::new(4, 9).unwrap()]);
        let bad = json!({"taskId": 1, "totalSize": 10, "receivedSize": 4, "status": "upload",
            "expectBlocks": [{"startByte": 9, "endByte": 4}]});
        assert!(blocks_info(bad).is_err());
    }
}
