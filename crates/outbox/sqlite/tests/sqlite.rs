//! SQLite-specific behaviour: start-up errors, the in-transaction API, crash
//! durability (SIGKILL right after `enqueue`), corrupt rows.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_notify_core::testing::outbox_conformance::notification;
use mesh_notify_core::{NotificationId, Outbox, OutboxError, Timestamp};
use mesh_notify_outbox_sqlite::rusqlite::Connection;
use mesh_notify_outbox_sqlite::{
    configure_connection, enqueue_in_tx, install_schema, SqliteOutbox, SqliteOutboxConfig,
    DEFAULT_BUSY_TIMEOUT,
};

/// Set in a re-executed copy of this test binary to make it act as a child process.
const CHILD_ENV: &str = "MESH_OUTBOX_SQLITE_CHILD";

fn assert_open_error(result: Result<SqliteOutbox, OutboxError>, path: &Path, why: &str) {
    match result {
        Err(OutboxError::Open { target, reason }) => {
            assert_eq!(target, path.display().to_string(), "{why}: names the path");
            assert!(!reason.is_empty());
            let shown = OutboxError::Open { target, reason }.to_string();
            assert!(
                shown.contains(&path.display().to_string()),
                "{why}: {shown}"
            );
        }
        Err(other) => panic!("{why}: expected OutboxError::Open, got {other:?}"),
        Ok(_) => panic!("{why}: expected OutboxError::Open, opened fine"),
    }
}

#[test]
fn a_directory_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    assert_open_error(SqliteOutbox::open(dir.path()), dir.path(), "directory");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(
        &path,
        "these are not the bytes you are looking for\n".repeat(200),
    )
    .unwrap();
    assert_open_error(SqliteOutbox::open(&path), &path, "text file");
}

#[test]
fn a_corrupt_database_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE filler (x TEXT); CREATE INDEX filler_x ON filler (x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO filler SELECT hex(randomblob(64)) FROM n;",
        )
        .unwrap();
    }
    // Keep the header (first page) valid, scribble over the b-tree pages.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 4096);
    for b in &mut bytes[4096..12 * 4096] {
        *b = 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
    assert_open_error(SqliteOutbox::open(&path), &path, "corrupt file");
}

#[test]
fn a_missing_parent_directory_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/outbox.db");
    assert_open_error(SqliteOutbox::open(&path), &path, "missing directory");
}

/// Re-runs this test binary as a child process doing `task` (see `child_process`).
fn spawn_child(
    task: &str,
    path: &Path,
    id: Option<NotificationId>,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, task)
        .env("MESH_OUTBOX_SQLITE_CHILD_PATH", path)
        .env(
            "MESH_OUTBOX_SQLITE_CHILD_ID",
            id.map(|i| i.to_string()).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

/// Reads the child's stdout until the line `want` (libtest prints its own lines too).
fn wait_for_line(stdout: &mut BufReader<std::process::ChildStdout>, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited before printing {want:?}");
        // libtest may have printed `test child_process ... ` on the same line.
        if line.trim_end().ends_with(want) {
            return;
        }
    }
}

/// Not a test of its own: the body of the child processes. Does nothing unless
/// `MESH_OUTBOX_SQLITE_CHILD` is set.
#[test]
fn child_process() {
    let Ok(task) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = std::env::var("MESH_OUTBOX_SQLITE_CHILD_PATH").unwrap();
    // Kept open (with its lock) until the process ends.
    let _conn = match task.as_str() {
        "enqueue" => {
            let id: NotificationId = std::env::var("MESH_OUTBOX_SQLITE_CHILD_ID")
                .unwrap()
                .parse()
                .unwrap();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let outbox = SqliteOutbox::open(&path).unwrap();
                let mut n = notification("crash");
                n.id = id;
                assert!(outbox.enqueue(&n, Timestamp::now()).await.unwrap());
                let mut out = std::io::stdout().lock();
                writeln!(out, "enqueued").unwrap();
                out.flush().unwrap();
            });
            None
        }
        "lock" => {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS mine (x);")
                .unwrap();
            let mut out = std::io::stdout().lock();
            writeln!(out, "locked").unwrap();
            out.flush().unwrap();
            Some(conn)
        }
        other => panic!("unknown child task {other}"),
    };
    // Hold on (and keep the lock) until the parent kills us or closes stdin.
    let mut buf = String::new();
    let _ = std::io::stdin().read_line(&mut buf);
}

#[tokio::test]
async fn an_entry_survives_sigkill_right_after_enqueue_returned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let id = NotificationId::new();
    let (mut child, mut stdout) = spawn_child("enqueue", &path, Some(id));
    wait_for_line(&mut stdout, "enqueued");
    child.kill().unwrap(); // SIGKILL on Unix: no destructors, no checkpoint
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child was killed, not finished: {status:?}"
    );

    let outbox = SqliteOutbox::open(&path).unwrap();
    let pending = outbox.pending(10).await.unwrap();
    assert_eq!(pending.len(), 1, "the enqueued entry is in the file");
    assert_eq!(pending[0].notification.id, id);
    assert_eq!(pending[0].notification.title, "note crash");
}

#[test]
fn a_file_locked_by_another_process_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let (mut child, mut stdout) = spawn_child("lock", &path, None);
    wait_for_line(&mut stdout, "locked");
    let config = SqliteOutboxConfig {
        busy_timeout: Duration::from_millis(200),
    };
    let started = Instant::now();
    let result = SqliteOutbox::open_with(&path, &config);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_open_error(result, &path, "locked file");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails within the busy timeout"
    );
    // Once the other process is gone the file opens fine.
    SqliteOutbox::open(&path).unwrap();
}

#[tokio::test]
async fn enqueue_in_tx_commits_with_the_callers_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.db");
    let outbox = SqliteOutbox::open(&path).unwrap();

    let mut conn = Connection::open(&path).unwrap();
    configure_connection(&conn, DEFAULT_BUSY_TIMEOUT).unwrap();
    install_schema(&conn).unwrap(); // idempotent, the outbox created it already
    conn.execute_batch("CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .unwrap();

    // Rolled back: neither the message nor the notification.
    let dropped = notification("rolled back");
    {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO messages (body) VALUES ('lost')", [])
            .unwrap();
        assert!(enqueue_in_tx(&tx, &dropped, Timestamp::now()).unwrap());
        tx.rollback().unwrap();
    }
    assert!(outbox.pending(10).await.unwrap().is_empty());

    // Committed: both, and the outbox sees the entry.
    let kept = notification("committed");
    {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO messages (body) VALUES ('Salut Bob')", [])
            .unwrap();
        assert!(enqueue_in_tx(&tx, &kept, Timestamp::now()).unwrap());
        assert!(
            !enqueue_in_tx(&tx, &kept, Timestamp::now()).unwrap(),
            "dedup inside the tx"
        );
        tx.commit().unwrap();
    }
    let messages: i64 = conn
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(messages, 1);
    let claims = outbox
        .claim("w1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].entry.notification, kept);
}

#[tokio::test]
async fn a_corrupt_row_is_quarantined_and_does_not_block_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let outbox = SqliteOutbox::open(&path).unwrap();
    let good = notification("good");
    outbox
        .enqueue(&good, Timestamp(Timestamp::now().as_millis() - 10))
        .await
        .unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO mesh_notify_outbox (id, payload, due_at, attempts, enqueued_at)
         VALUES ('bogus', '{not json', 0, 0, 0)",
        [],
    )
    .unwrap();

    let claims = outbox
        .claim("w1", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1, "the good entry is still delivered");
    assert_eq!(claims[0].entry.notification, good);
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.dead),
        (1, 1),
        "the corrupt row was moved to the dead letters"
    );
    match outbox.dead(10).await {
        Err(OutboxError::Corrupt { id, reason }) => {
            assert_eq!(id, "bogus");
            assert!(reason.contains("payload"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(outbox.purge_dead().await.unwrap(), 1);
}

#[tokio::test]
async fn health_is_healthy_on_a_working_file() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = SqliteOutbox::open(dir.path().join("outbox.db")).unwrap();
    assert_eq!(outbox.health().await, mesh_notify_core::Health::Healthy);
    assert_eq!(outbox.backend(), "sqlite");
}

#[test]
fn set_synchronous_takes_effect_with_its_cached_statement() {
    use mesh_notify_outbox_sqlite::{rusqlite::Connection, set_synchronous, Synchronous};
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("s.db")).unwrap();
    let read =
        |c: &Connection| -> i64 { c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap() };
    for _ in 0..2 {
        set_synchronous(&conn, Synchronous::Normal).unwrap();
        assert_eq!(read(&conn), 1, "NORMAL");
        set_synchronous(&conn, Synchronous::Full).unwrap();
        assert_eq!(read(&conn), 2, "FULL");
    }
}
