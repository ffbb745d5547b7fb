//! The Wechaty group bot (`examples/wechaty-bot/`) end to end: its locked npm dependencies
//! installed with `npm ci`, its test/e2e.js driving a wechaty-puppet-mock account against the
//! real `intentd serve` on its manual clock. This side starts intentd and, when the script asks,
//! stops it and starts it again on the same address (the bot must stay silent while it is
//! gone and recover by itself). intentd runs from its rules alone (no trained model needed);
//! the script's texts are ones the keyword layer decides, and the bot's behaviour does not
//! depend on where a decision came from.
//!
//! Needs node (20+) and npm; `npm ci` needs the npm registry on first run. Without node/npm
//! the test fails when CI=true and is skipped with a message otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::server::{ServerOptions, TestServer, ADMIN_TOKEN, BOT_TOKEN, T0};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn example_dir() -> PathBuf {
    common::repo_root().join("examples/wechaty-bot")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn tool_version(tool: &str) -> Option<String> {
    let out = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `npm ci` when node_modules is missing or older than package-lock.json. `None` when node or
/// npm is missing outside CI (the caller skips).
fn npm_ready(dir: &Path) -> Option<()> {
    let (node, npm) = (tool_version("node"), tool_version("npm"));
    let (Some(node), Some(_npm)) = (node, npm) else {
        assert!(
            !in_ci(),
            "CI=true but node/npm are missing: the Wechaty bot test needs Node 20+ and npm on PATH"
        );
        eprintln!("SKIPPED wechaty_bot: node and npm are needed (install Node 20+ to run it)");
        return None;
    };
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(major >= 20, "the Wechaty bot needs Node 20+, found {node}");
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let fresh = match (std::fs::metadata(&lock), std::fs::metadata(&installed)) {
        (Ok(l), Ok(i)) => i.modified().unwrap() >= l.modified().unwrap(),
        _ => false,
    };
    if !fresh {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .output()
            .expect("run npm ci");
        assert!(
            out.status.success(),
            "npm ci in examples/wechaty-bot failed (needs the npm registry on first run):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(())
}

async fn start_intentd(data: &Path, listen: Option<String>, clock: i64) -> TestServer {
    TestServer::start(ServerOptions {
        manual_clock: Some(clock),
        data_dir: Some(data.to_path_buf()),
        listen,
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechaty_bot_end_to_end_with_the_mock_puppet() {
    let dir = example_dir();
    if npm_ready(&dir).is_none() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut server = Some(start_intentd(data.path(), None, T0).await);
    let addr = server.as_ref().unwrap().addr.clone();
    let stderr_log = data.path().join("e2e.stderr.log");

    let mut child = tokio::process::Command::new("node")
        .arg("test/e2e.js")
        .current_dir(&dir)
        .env("INTENTD_ADDR", &addr)
        .env("INTENTD_TOKEN", BOT_TOKEN)
        .env("INTENTD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("INTENTD_T0", T0.to_string())
        .env("WECHATY_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start node test/e2e.js");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let report = |what: &str, server: &Option<TestServer>| -> String {
        format!(
            "{what}\n--- e2e.js stderr ---\n{}\n--- intentd stderr ---\n{}",
            std::fs::read_to_string(&stderr_log).unwrap_or_default(),
            server.as_ref().map(|s| s.stderr()).unwrap_or_default()
        )
    };

    let mut stats = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while stats.is_none() {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => panic!("{}", report(&format!("reading e2e.js: {e}"), &server)),
            Err(_) => panic!("{}", report("e2e.js took longer than 240 s", &server)),
        };
        match line.trim() {
            "@@ stop" => {
                drop(server.take()); // kills the process and waits for it
                stdin.write_all(b"stopped\n").await.unwrap();
            }
            l if l.starts_with("@@ start ") => {
                // Same address and data folder, the clock where the script says it was.
                let clock: i64 = l["@@ start ".len()..].parse().expect("clock ms");
                server = Some(start_intentd(data.path(), Some(addr.clone()), clock).await);
                stdin.write_all(b"started\n").await.unwrap();
            }
            l if l.starts_with("@@ ok ") => stats = Some(l["@@ ok ".len()..].to_string()),
            _ => {}
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("e2e.js exits")
        .unwrap();
    assert!(
        status.success() && stats.is_some(),
        "{}",
        report(&format!("e2e.js failed ({status})"), &server)
    );
    let stats: serde_json::Value = serde_json::from_str(stats.as_deref().unwrap()).unwrap();
    // Counted by the bot itself: one call failed while intentd was down, nothing failed to send.
    assert!(stats["unreachable"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["send_errors"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["rejected"].as_u64(), Some(0), "{stats}");
    assert!(stats["stream_connects"].as_u64().unwrap() >= 2, "{stats}");
}
