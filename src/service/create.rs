//! Creating a task (or finding the unfinished one it repeats).

use std::io;
use std::path::{Path, PathBuf};

use super::{blocking, Authorized, StorePathRefusal, UploadError, Uploads};
use crate::blob;
use crate::domain::store_path::{self, StorePathError};
use crate::domain::{FileName, FileSize, Md5Hex, Protocol, TaskStatus, UploadKey};
use crate::store::{NewTask, Task, TaskSpec};
use crate::telemetry::metrics;

/// A create request whose fields all parsed (src/http parses the body).
#[derive(Debug, Clone)]
pub struct CreateTask {
    pub user_id: String,
    /// As the business server sent it; empty when it sent none.
    pub store_path: String,
    pub file_name: FileName,
    pub file_size: FileSize,
    pub file_md5: Md5Hex,
    /// The raw JSON of `feedBackParameter`, verbatim (`null` when there was none).
    pub feedback_parameter: String,
    /// `"instant": true`: offer a challenge if the file is stored already.
    pub instant: bool,
}

/// What checking a task's directory, and making the temp file of a task just recorded, came to.
enum DirAndTemp {
    Ready,
    LeavesStoreDir,
    Unreadable(io::Error),
    NoTempFile(io::Error),
}

#[derive(Debug, Clone)]
pub struct CreatedTask {
    pub task_id: i64,
    pub upload_key: String,
    pub status: TaskStatus,
    /// False when an unfinished task with the same fields was returned again.
    pub created: bool,
    /// Asked for with `"instant": true`, and offered when the file is stored already.
    pub challenge: Option<super::OfferedChallenge>,
}

impl Uploads {
    /// The business server whose token this is. Asked before any other field of a create is
    /// looked at, so that a caller without a token learns nothing about the fields.
    pub fn authorize(&self, token: Option<&str>) -> Result<Authorized<'_>, UploadError> {
        token.and_then(|token| self.business_servers.authorize(token)).ok_or(UploadError::Unauthorized)
    }

    pub async fn create_task(
        &self,
        authorized: Authorized<'_>,
        request: CreateTask,
    ) -> Result<CreatedTask, UploadError> {
        if request.file_size.bytes() > self.settings.max_file_size {
            return Err(UploadError::TooLarge(format!(
                "fileSize {} is larger than the server's maxFileSize of {} bytes: this server takes no file that \
                 large (its operator sets maxFileSize)",
                request.file_size.bytes(),
                self.settings.max_file_size
            )));
        }
        let store_dir = self.store_dir_of(&request.store_path)?;
        let upload_key = UploadKey::generate().map_err(|e| anyhow::anyhow!("no randomness for an upload key: {e}"))?;
        let (file_size, instant) = (request.file_size, request.instant);
        let spec = TaskSpec {
            upload_key: upload_key.as_str().to_owned(),
            business_server: authorized.server.name.clone(),
            token_sha256: authorized.token_sha256,
            user_id: request.user_id,
            file_name: request.file_name,
            file_size,
            file_md5: Some(request.file_md5),
            store_path: request.store_path,
            store_dir: store_dir.to_string_lossy().into_owned(),
            feedback_parameter: request.feedback_parameter,
            protocol: Protocol::Fupload,
            length_deferred: false,
            concat_role: None,
            grant_id: None,
        };
        let new_task = NewTask {
            spec,
            tmp_dir: self.settings.tmp_dir.to_string_lossy().into_owned(),
            // An empty file has nothing to receive: straight to verify.
            status: if file_size.bytes() == 0 { TaskStatus::Verify } else { TaskStatus::Upload },
        };
        let (task, created) = self.store.create_or_resume_task(&new_task).await?;
        let status = self.set_up_task(&task, created).await?;
        let challenge = match instant {
            true => self.offer_challenge(&task).await?,
            false => None,
        };
        Ok(CreatedTask { task_id: task.task_id, upload_key: task.spec.upload_key, status, created, challenge })
    }

    /// Readies a task just recorded (or found again): its directory checked, its temp file made,
    /// and an empty file finished at once. Returns the task's status.
    pub(super) async fn set_up_task(&self, task: &Task, created: bool) -> Result<TaskStatus, UploadError> {
        self.check_dir_and_make_temp(task, created).await?;
        if !created {
            return Ok(task.status);
        }
        if task.file_bytes() == 0 {
            return Ok(self.finish_and_wait(task.clone()).await);
        }
        self.hashers.track(task.task_id, &task.tmp_path());
        Ok(task.status)
    }

    /// `storePath` as an absolute directory inside `storeDir`, as it is spelled; symlinks are
    /// followed by `check_dir_and_make_temp`.
    pub(super) fn store_dir_of(&self, requested: &str) -> Result<PathBuf, UploadError> {
        let cwd = std::env::current_dir().map_err(|e| UploadError::disk("no working directory", e))?;
        store_path::resolve(self.settings.store_root(), &cwd, requested).map_err(|e| match e {
            StorePathError::Invalid(field) => UploadError::InvalidField(field),
            StorePathError::Escapes(resolved) => UploadError::StorePathNotAllowed(StorePathRefusal {
                requested: requested.to_owned(),
                resolved,
                store_dir: self.settings.store_root().map(Path::to_path_buf).unwrap_or_default(),
                through_symlink: false,
            }),
        })
    }

    /// Checks that the task's directory stays inside `storeDir` once symlinks are followed, and
    /// makes the temp file of a task just created, in one blocking call: that is why the task is
    /// recorded before the check (one hand-off to the blocking pool per upload, not two). A task
    /// just created whose directory fails the check is deleted again before the refusal goes out.
    pub(super) async fn check_dir_and_make_temp(&self, task: &Task, created: bool) -> Result<(), UploadError> {
        let root = self.settings.store_root().map(Path::to_path_buf);
        if root.is_none() && !created {
            return Ok(()); // any directory is allowed, and the task found again has its temp file
        }
        let (dir, tmp_path) = (PathBuf::from(&task.spec.store_dir), task.tmp_path());
        let size = task.file_bytes();
        let outcome = blocking(move || {
            let confined =
                root.map(|root| blob::make_dir_again("storeDir", &root).and_then(|()| blob::is_confined(&root, &dir)));
            match confined {
                Some(Err(e)) => return DirAndTemp::Unreadable(e),
                Some(Ok(false)) => return DirAndTemp::LeavesStoreDir,
                Some(Ok(true)) | None => {}
            }
            match created.then(|| blob::create_temp(&tmp_path, size)) {
                Some(Err(e)) => DirAndTemp::NoTempFile(e),
                Some(Ok(())) | None => DirAndTemp::Ready,
            }
        })
        .await?;
        let refusal = match outcome {
            DirAndTemp::Ready => return Ok(()),
            DirAndTemp::NoTempFile(e) => {
                self.store.record_failure(task.task_id, &format!("cannot create temp file: {e}")).await?;
                metrics::task_ended(TaskStatus::Fail);
                return Err(UploadError::disk("cannot create temp file", e));
            }
            DirAndTemp::LeavesStoreDir => UploadError::StorePathNotAllowed(StorePathRefusal {
                requested: task.spec.store_path.clone(),
                resolved: Some(PathBuf::from(&task.spec.store_dir)),
                store_dir: self.settings.store_root().map(Path::to_path_buf).unwrap_or_default(),
                through_symlink: true,
            }),
            DirAndTemp::Unreadable(e) => UploadError::StoreDir(e),
        };
        if created {
            self.store.delete_refused_task(task.task_id).await?;
        }
        Err(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::{test_uploads, TOKEN};

    async fn create(t: &crate::service::test_support::TestUploads, body: &str) -> Result<CreatedTask, UploadError> {
        crate::http::create_from_body(&t.uploads, body.as_bytes()).await
    }

    fn body(extra: &str) -> String {
        format!(
            r#"{{"token":"{TOKEN}","userId":"123","storePath":"hello/","fileName":"hello.mp4",
                "fileSize":"345000000","fileMd5":"04465d416b4eca345976021db8698f15"{extra}}}"#
        )
    }

    #[tokio::test]
    async fn the_original_curl_example_creates_a_task_and_a_repeat_resumes_it() {
        let t = test_uploads(|_| {}).await;
        let created = create(&t, &body("")).await.unwrap();
        assert!(created.created);
        assert_eq!(created.status, TaskStatus::Upload);
        assert_eq!(created.upload_key.len(), 32);
        let task = t.uploads.store().task(created.task_id).await.unwrap().unwrap();
        assert_eq!(std::fs::metadata(task.tmp_path()).unwrap().len(), 345_000_000);
        assert!(task.spec.store_dir.ends_with("/store/hello"));
        let again = create(&t, &body("")).await.unwrap();
        assert_eq!((again.task_id, again.created), (created.task_id, false));
        assert_eq!(again.upload_key, created.upload_key);
    }

    #[tokio::test]
    async fn feedback_parameter_is_kept_verbatim_under_either_spelling() {
        let t = test_uploads(|_| {}).await;
        let raw = r#"{"z": 1, "a": [1.50, "x"]}"#;
        let created = create(&t, &body(&format!(r#","feedbackParameter":{raw}"#))).await.unwrap();
        let task = t.uploads.store().task(created.task_id).await.unwrap().unwrap();
        assert_eq!(task.spec.feedback_parameter, raw);
    }

    #[tokio::test]
    async fn integer_user_id_and_file_size_are_accepted() {
        let t = test_uploads(|_| {}).await;
        let body = format!(
            r#"{{"token":"{TOKEN}","userId":123,"fileName":"a.bin","fileSize":10,"fileMd5":"04465D416B4ECA345976021DB8698F15"}}"#
        );
        let created = create(&t, &body).await.unwrap();
        let task = t.uploads.store().task(created.task_id).await.unwrap().unwrap();
        assert_eq!((task.spec.user_id.as_str(), task.spec.file_size.bytes()), ("123", 10));
        assert_eq!(task.spec.file_md5.unwrap().as_str(), "04465d416b4eca345976021db8698f15");
    }

    #[tokio::test]
    async fn the_token_is_checked_before_anything_else() {
        let t = test_uploads(|_| {}).await;
        for body in [r#"{"fileSize": -1}"#, r#"{"token": 5}"#, r#"{"token": "nope", "fileName": "a"}"#] {
            assert!(matches!(create(&t, body).await, Err(UploadError::Unauthorized)), "{body}");
        }
    }

    #[tokio::test]
    async fn bad_fields_name_the_field() {
        let t = test_uploads(|settings| settings.max_file_size = 1000).await;
        let cases = [
            (body("").replace(r#""fileName":"hello.mp4","#, ""), "fileName"),
            (body("").replace("hello.mp4", "../x"), "fileName"),
            (body("").replace(r#""345000000""#, "-1"), "fileSize"),
            (body("").replace(r#""345000000""#, "1.5"), "fileSize"),
            (body("").replace(r#""345000000""#, r#""12a""#), "fileSize"),
            (body("").replace(r#""345000000""#, "9223372036854775808"), "fileSize"),
            (body("").replace("04465d416b4eca345976021db8698f15", "xyz"), "fileMd5"),
            (body("").replace(r#""123""#, "[1]"), "userId"),
            (body("").replace(r#""hello/""#, "7"), "storePath"),
        ];
        for (body, field) in cases {
            match create(&t, &body).await {
                Err(UploadError::InvalidField(e)) => assert_eq!(e.field, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn limits_and_store_path_escapes_are_refused() {
        let t = test_uploads(|settings| settings.max_file_size = 1000).await;
        assert!(matches!(create(&t, &body("")).await, Err(UploadError::TooLarge(_))));
        let small = body("").replace("345000000", "10");
        for escape in ["../", "/etc/", "a/../../x"] {
            let attempt = small.replace("hello/", escape);
            assert!(matches!(create(&t, &attempt).await, Err(UploadError::StorePathNotAllowed(_))), "{escape}");
        }
    }
}
