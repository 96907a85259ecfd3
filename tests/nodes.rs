//! Two fupload nodes on one PostgreSQL database and one tmpDir and storeDir, in this process: the
//! blocks of one task split between them, a corrupted block in flight on one node while the good
//! ones go to the other. Runs when FUPLOAD_TEST_POSTGRES_URL names a server
//! (scripts/postgres-tests.sh); on SQLite, one process owns its database, and the tests say so
//! and pass. scripts/multinode.sh runs three server processes behind nginx.

use fupload_testkit::{acks, helpers, raw_http};

use std::time::Duration;

use helpers::*;

/// Node A, and node B on A's database, directories and business server.
async fn two_nodes() -> Option<(TestApp, TestApp)> {
    if on_sqlite() {
        eprintln!("FUPLOAD_TEST_POSTGRES_URL is not set: nodes share a PostgreSQL database only");
        return None;
    }
    let a = spawn_app().await;
    let shared = a.settings.clone();
    let b = spawn_app_with(move |s| {
        s.database.url = shared.database.url;
        s.tmp_dir = shared.tmp_dir;
        s.store_dir = shared.store_dir;
        s.business_servers = shared.business_servers;
    })
    .await;
    Some((a, b))
}

/// The task's URLs on `node`.
fn on(node: &TestApp, of: &TestApp, task: &TaskUrls) -> TaskUrls {
    let rebase = |url: &String| url.replace(&of.base, &node.base);
    TaskUrls {
        task_id: task.task_id,
        upload_url: rebase(&task.upload_url),
        blocks_url: rebase(&task.blocks_url),
        state_url: rebase(&task.state_url),
        tus_url: rebase(&task.tus_url),
    }
}

/// The callback of task `task_id`, once it has come.
async fn callback_of(node: &TestApp, task_id: i64) -> Callback {
    for _ in 0..300 {
        if let Some(callback) = node.callbacks.callbacks().into_iter().find(|c| c.json["taskId"] == task_id) {
            return callback;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no callback for task {task_id}");
}

#[actix_web::test]
async fn a_corrupted_block_in_flight_on_one_node_cannot_spoil_the_good_ones_another_takes() {
    let Some((a, b)) = two_nodes().await else { return };
    for attempt in 0..5 {
        let data = content(400_000, 7 + attempt);
        let task_on_a = a.new_task(&format!("split-{attempt}.bin"), &data).await;
        let task_on_b = on(&b, &a, &task_on_a);
        // On node A: bytes 0-299999 flipped, sent with the good bytes' md5; a third of them
        // arrive and it stalls, its claim held (in the database) and its first bytes written.
        let good = &data[..300_000];
        let bad: Vec<u8> = good.iter().map(|byte| !byte).collect();
        let (content_type, body) = multipart(&[
            ("startByte", b"0"),
            ("endByte", b"299999"),
            ("partMd5", md5_hex(good).as_bytes()),
            ("file", &bad),
        ]);
        let file_starts = body.windows(64).position(|w| w == &bad[..64]).unwrap();
        let mut corrupted = raw_http::send_partly(&task_on_a.upload_url, &content_type, &body, file_starts + 100_000);
        actix_web::rt::time::sleep(Duration::from_millis(300 * (attempt as u64 + 1))).await;
        // Node B takes the whole file, good: it writes and records only what A's claim leaves.
        let reply = b.send_block(&task_on_b, &data, 0, 399_999).await;
        reply.expect(200, "0");
        if acks::acknowledged(0, 399_999, &reply.json) == [(0, 399_999)] {
            // A had not claimed its range yet when B's block came. Try again, slower.
            continue;
        }
        assert_eq!(acks::acknowledged(0, 399_999, &reply.json), [(300_000, 399_999)], "{}", reply.json);
        // Node A's block ends, and its md5 does not match: nothing of it is recorded.
        let rest = body[file_starts + 100_000..].to_vec();
        let refused = actix_web::rt::task::spawn_blocking(move || {
            corrupted.send(&rest).unwrap();
            corrupted.reply().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(refused.status, 400, "{}", refused.json());
        // The good bytes again, through node B: the file is right.
        b.send_missing(&task_on_b, &data).await;
        let callback = callback_of(&a, task_on_a.task_id).await;
        assert_eq!(callback.json["retCode"], "0", "{}", callback.json);
        assert_eq!(TestApp::stored_file(&callback), data);
        assert_eq!(query(&a, "SELECT COUNT(*) FROM block_claims").await[0][0], "0", "no claim is left");
        return;
    }
    panic!("node A's block never claimed its range before node B's block came");
}

#[actix_web::test]
async fn tasks_finished_on_either_node_call_back_once_each() {
    let Some((a, b)) = two_nodes().await else { return };
    let nodes = [&a, &b];
    let mut tasks = Vec::new();
    for i in 0..4 {
        let data = content(200_000, 20 + i);
        let task = a.new_task(&format!("f{i}.bin"), &data).await;
        // Blocks alternate between the nodes; the one that takes the last finishes the task.
        for (n, start) in (0..200_000).step_by(50_000).enumerate() {
            let node = nodes[(n + i as usize) % 2];
            node.send_block(&on(node, &a, &task), &data, start, start + 49_999).await.expect(200, "0");
        }
        tasks.push(task.task_id);
    }
    a.callbacks.wait_for(tasks.len()).await;
    // Both nodes' outbox workers looked meanwhile; none sends a callback again.
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let mut called_back: Vec<i64> =
        a.callbacks.callbacks().iter().map(|c| c.json["taskId"].as_i64().unwrap()).collect();
    called_back.sort_unstable();
    assert_eq!(called_back, tasks);
    assert!(a.callbacks.callbacks().iter().all(|c| c.json["retCode"] == "0"));
}

#[actix_web::test]
async fn a_block_whose_claim_cannot_be_renewed_stops_before_another_node_could_take_its_bytes() {
    let Some((a, _b)) = two_nodes().await else { return };
    let data = content(300_000, 9);
    let task = a.new_task("cut-off.bin", &data).await;
    let (content_type, body) = block_multipart(0, &data);
    let file_starts = body.windows(64).position(|w| w == &data[..64]).unwrap();
    let mut arriving = raw_http::send_partly(&task.upload_url, &content_type, &body, file_starts + 100_000);
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    // As if node A could not reach the database: its claim's renewals wait, and fail.
    let lock = DatabaseLock::hold_tables(&a.settings.database.url, "block_claims");
    // Two renewals missed: the claim counts as gone on node A, a third of its lease before the
    // database would give the bytes to another node.
    actix_web::rt::time::sleep(Duration::from_secs(7)).await;
    let rest = body[file_starts + 100_000..].to_vec();
    let reply = actix_web::rt::task::spawn_blocking(move || {
        // The server may have stopped reading: what is left need not all go out.
        let _ = arriving.send(&rest);
        arriving.reply().unwrap()
    })
    .await
    .unwrap();
    drop(lock);
    assert_eq!((reply.status, reply.ret_code().as_str()), (503, "20"), "{}", reply.json());
    assert_eq!(a.blocks_info(&task).await["receivedSize"], 0, "nothing of the block is recorded");
    let temp = std::fs::read(a.path(&format!("tmp/task-{}.part", task.task_id))).unwrap();
    assert!(temp[150_000..].iter().all(|&b| b == 0), "nothing sent after the claim stopped holding was written");
    a.send_missing(&task, &data).await;
    assert_eq!(TestApp::stored_file(&callback_of(&a, task.task_id).await), data);
}

#[actix_web::test]
async fn a_slow_block_whose_bytes_are_all_another_blocks_is_answered_not_cut_off() {
    let Some((a, b)) = two_nodes().await else { return };
    let data = content(300_000, 11);
    let task_on_a = a.new_task("covered.bin", &data).await;
    let task_on_b = on(&b, &a, &task_on_a);
    let block = |start: usize, end: usize| {
        let part = &data[start..=end];
        let (s, e) = (start.to_string(), end.to_string());
        let (content_type, body) = multipart(&[
            ("startByte", s.as_bytes()),
            ("endByte", e.as_bytes()),
            ("partMd5", md5_hex(part).as_bytes()),
            ("file", part),
        ]);
        let file_starts = body.windows(64).position(|w| w == &part[..64]).unwrap();
        (content_type, body, file_starts)
    };
    // On node A, the whole file, stalled after a third: its claim holds every byte.
    let (content_type, whole, whole_starts) = block(0, 299_999);
    let mut holding = raw_http::send_partly(&task_on_a.upload_url, &content_type, &whole, whole_starts + 100_000);
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    // On node B, a block inside it whose body takes longer than two of a claim's renewals: it
    // claims nothing, holds nothing, and so nothing of it can run out.
    let (content_type, inner, inner_starts) = block(0, 99_999);
    let mut covered = raw_http::send_partly(&task_on_b.upload_url, &content_type, &inner, inner_starts + 10_000);
    actix_web::rt::time::sleep(Duration::from_secs(7)).await;
    let (rest_inner, rest_whole) = (inner[inner_starts + 10_000..].to_vec(), whole[whole_starts + 100_000..].to_vec());
    let (covered, holding) = actix_web::rt::task::spawn_blocking(move || {
        covered.send(&rest_inner).unwrap();
        let covered = covered.reply().unwrap();
        holding.send(&rest_whole).unwrap();
        (covered, holding.reply().unwrap())
    })
    .await
    .unwrap();
    // Accepted with nothing new (retCode 1): its bytes are the other block's to record.
    assert_eq!((covered.status, covered.ret_code().as_str()), (200, "1"), "{}", covered.json());
    assert_eq!((holding.status, holding.ret_code().as_str()), (200, "0"), "{}", holding.json());
    assert_eq!(TestApp::stored_file(&callback_of(&a, task_on_a.task_id).await), data);
}
