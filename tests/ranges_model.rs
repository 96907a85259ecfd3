//! Property test of the range bookkeeping: any sequence of block commits (overlapping, adjacent,
//! repeated, out of order, several ranges per commit) against a model that is a plain
//! `Vec<bool>` of received cells. After every commit the store's answers — bytes added, received
//! size and prefix, status, the gaps (expectBlocks), the stored (coalesced) ranges — must be the model's.
//!
//! A cell is one byte in the small-file property, and a huge run of bytes in the large-file one,
//! which puts offsets next to the 63-bit limit SQLite's INTEGER imposes.
//! `PROPTEST_CASES=5000 cargo test --test ranges_model` runs more cases.

use std::sync::atomic::{AtomicUsize, Ordering};

use fupload::config::Durability;
use fupload::domain::{ByteRange, FileName, FileSize, Md5Hex, TaskStatus};
use fupload::store::{BlockOutcome, NewTask, Store, TaskSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// One commit: the cell ranges `(start, len)` it wrote, and a cell range to probe afterwards.
#[derive(Debug, Clone)]
struct Commit {
    written: Vec<(usize, usize)>,
    probe: (usize, usize),
}

#[derive(Debug, Clone)]
struct Case {
    cells: usize,
    commits: Vec<Commit>,
}

fn cases(max_cells: usize) -> impl Strategy<Value = Case> {
    (1..=max_cells).prop_flat_map(|cells| {
        let range = (0..cells).prop_flat_map(move |start| (Just(start), 1..=cells - start));
        let commit =
            (prop::collection::vec(range.clone(), 1..=3), range).prop_map(|(written, probe)| Commit { written, probe });
        (Just(cells), prop::collection::vec(commit, 1..=24)).prop_map(|(cells, commits)| Case { cells, commits })
    })
}

/// The model: which cells are received.
struct Model {
    received: Vec<bool>,
}

impl Model {
    fn count(&self) -> usize {
        self.received.iter().filter(|r| **r).count()
    }

    fn prefix(&self) -> usize {
        self.received.iter().take_while(|r| **r).count()
    }

    /// Maximal runs of cells whose received flag is `wanted`, as inclusive cell ranges.
    fn runs(&self, wanted: bool) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut start = None;
        for (i, &received) in self.received.iter().chain(std::iter::once(&!wanted)).enumerate() {
            match (received == wanted, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    runs.push((s, i - 1));
                    start = None;
                }
                _ => {}
            }
        }
        runs
    }
}

/// Maps cells to bytes: cell `c` is bytes `[c * stride, (c + 1) * stride - 1]`.
struct Scale {
    stride: u64,
}

impl Scale {
    fn range(&self, first: usize, last: usize) -> ByteRange {
        ByteRange::new(first as u64 * self.stride, (last as u64 + 1) * self.stride - 1).unwrap()
    }

    fn ranges(&self, cells: &[(usize, usize)]) -> Vec<ByteRange> {
        cells.iter().map(|&(first, last)| self.range(first, last)).collect()
    }

    fn bytes(&self, cells: usize) -> u64 {
        cells as u64 * self.stride
    }
}

static TASKS: AtomicUsize = AtomicUsize::new(0);

fn new_task(file_size: u64) -> NewTask {
    // A different name per case, so that no create resumes an earlier case's task.
    let n = TASKS.fetch_add(1, Ordering::Relaxed);
    NewTask {
        spec: TaskSpec {
            upload_key: "0".repeat(32),
            business_server: "cp1".into(),
            token_sha256: "t".into(),
            user_id: "1".into(),
            file_name: FileName::parse(&format!("case-{n}.bin")).unwrap(),
            file_size: FileSize::new(file_size).unwrap(),
            file_md5: Some(Md5Hex::parse("fileMd5", &"0".repeat(32)).unwrap()),
            protocol: fupload::domain::Protocol::Fupload,
            length_deferred: false,
            concat_role: None,
            grant_id: None,
            store_path: String::new(),
            store_dir: "/nowhere".into(),
            feedback_parameter: "null".into(),
        },
        tmp_dir: "/nowhere".into(),
        status: TaskStatus::Upload,
    }
}

async fn check(store: &Store, case: Case, stride: u64) -> Result<(), TestCaseError> {
    let scale = Scale { stride };
    let file_size = scale.bytes(case.cells);
    let task_id = store.create_or_resume_task(&new_task(file_size)).await.unwrap().0.task_id;
    let mut model = Model { received: vec![false; case.cells] };
    for commit in case.commits {
        let written: Vec<(usize, usize)> =
            commit.written.iter().map(|&(start, len)| (start, start + len - 1)).collect();
        let was_complete = model.count() == case.cells;
        let before = model.count();
        let outcome = store.commit_block(task_id, 0, &scale.ranges(&written)).await.unwrap();
        if was_complete {
            // The task moved to verify with the last byte: it takes nothing more.
            prop_assert_eq!(outcome, BlockOutcome::NotUploading(TaskStatus::Verify));
        } else {
            for &(first, last) in &written {
                model.received[first..=last].iter_mut().for_each(|r| *r = true);
            }
            let BlockOutcome::Committed(commit_state) = outcome else {
                return Err(TestCaseError::fail(format!("commit refused: {outcome:?}")));
            };
            prop_assert_eq!(commit_state.new_bytes, scale.bytes(model.count() - before));
            prop_assert_eq!(commit_state.received_size, scale.bytes(model.count()));
            prop_assert_eq!(commit_state.received_prefix, scale.bytes(model.prefix()));
            let complete = model.count() == case.cells;
            prop_assert_eq!(commit_state.status, if complete { TaskStatus::Verify } else { TaskStatus::Upload });
        }
        let gaps = store.expected_blocks(task_id, file_size).await.unwrap();
        prop_assert_eq!(gaps, scale.ranges(&model.runs(false)), "gaps after {:?}", written);
        let whole = scale.range(0, case.cells - 1);
        let stored = store.received_within(task_id, whole).await.unwrap();
        prop_assert_eq!(stored, scale.ranges(&model.runs(true)), "stored ranges are the coalesced runs");
        let (probe_start, probe_len) = commit.probe;
        let probe = (probe_start, probe_start + probe_len - 1);
        let touching: Vec<(usize, usize)> =
            model.runs(true).into_iter().filter(|&(first, last)| first <= probe.1 && last >= probe.0).collect();
        let found = store.received_within(task_id, scale.range(probe.0, probe.1)).await.unwrap();
        prop_assert_eq!(found, scale.ranges(&touching), "ranges within {:?}", probe);
        let task = store.task(task_id).await.unwrap().unwrap();
        prop_assert_eq!(task.received_bytes as u64, scale.bytes(model.count()));
    }
    prop_assert_eq!(store.received_prefix(task_id).await.unwrap(), scale.bytes(model.prefix()));
    Ok(())
}

fn run_property(max_cells: usize, stride: impl Fn(usize) -> u64, default_cases: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ranges.db").display());
    let store = runtime.block_on(Store::open(&url, Durability::Process, 2)).unwrap();
    // PROPTEST_CASES in the environment overrides the default number of cases.
    let cases_wanted = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(default_cases);
    let config = Config { cases: cases_wanted, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let outcome = runner.run(&cases(max_cells), |case| {
        let stride = stride(case.cells);
        runtime.block_on(check(&store, case, stride))
    });
    runtime.block_on(store.close());
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn byte_ranges_of_small_files_match_the_model() {
    run_property(200, |_| 1, 256);
}

#[test]
fn ranges_near_the_63_bit_limit_match_the_model() {
    // The file is as large as SQLite's INTEGER allows for this many cells.
    run_property(48, |cells| i64::MAX as u64 / cells as u64, 64);
}
