//! The operator console in a real browser: `examples/console-e2e/console.js` drives Debian's
//! chromium through playwright-core (its locked npm dependencies installed with `npm ci`)
//! against the real `intentd serve` with the trained default model on a manual clock. This
//! side seeds a week of traffic (messages, feedback, A/B exposures and clicks) so every page
//! has something to show, copies the operator files (the script breaks replies.yml and
//! repairs it), and checks the script passed.
//!
//! Screenshots of every page go to a folder under target/; with INTENTD_WRITE_SCREENSHOTS=1
//! they replace the ones in docs/console/.
//!
//! Needs node (20+), npm, chromium (`/usr/bin/chromium`, or the path in CHROMIUM) and a CJK
//! font; `.ci/run` installs chromium and fonts-wqy-microhei. Without them the test fails when CI=true and is skipped otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::server::{ServerOptions, TestServer, ADMIN_TOKEN, BOT, BOT_TOKEN, T0};
use intentd::pb;
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn skip_or_fail(why: &str) -> Option<()> {
    assert!(!in_ci(), "CI=true but {why}");
    eprintln!("SKIPPED console_browser: {why}");
    None
}

fn tool_version(tool: &str) -> Option<String> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// node, npm and chromium present, and `npm ci` done when node_modules is older than the lock.
fn tools_ready(dir: &Path) -> Option<()> {
    let (Some(node), Some(_)) = (tool_version("node"), tool_version("npm")) else {
        return skip_or_fail("node and npm (Node 20+) are needed for the console browser test");
    };
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "the console browser test needs Node 20+, found {node}"
    );
    if !chromium().is_file() {
        return skip_or_fail(&format!(
            "chromium is missing at {} (apt-get install chromium, or set CHROMIUM)",
            chromium().display()
        ));
    }
    // Without a CJK font chromium draws Chinese as boxes: the screenshots would be useless.
    let cjk = Command::new("fc-list")
        .arg(":lang=zh")
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !cjk {
        return skip_or_fail(
            "no CJK font (fc-list :lang=zh is empty): apt-get install fonts-wqy-microhei",
        );
    }
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let fresh = match (std::fs::metadata(&lock), std::fs::metadata(&installed)) {
        (Ok(l), Ok(i)) => i.modified().unwrap() >= l.modified().unwrap(),
        _ => false,
    };
    if !fresh {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .output()
            .expect("run npm ci");
        assert!(
            out.status.success(),
            "npm ci in examples/console-e2e failed (needs the npm registry on first run):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Some(())
}

async fn post(http: &reqwest::Client, s: &TestServer, path: &str, body: Value) -> Value {
    let resp = http
        .post(format!("http://{}{path}", s.http_addr))
        .bearer_auth(BOT_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// A week of traffic in three groups, one day at a time on the manual clock: FAQs, coupon
/// questions (the A/B experiment) with some clicks, handoffs, a blocked message, feedback.
async fn seed_week(s: &TestServer) {
    let http = reqwest::Client::new();
    let mut admin = s.admin().await;
    let texts = [
        "发票怎么开",
        "有优惠券吗",
        "几点发货",
        "我要退款",
        "有没有满减活动",
        "转人工",
        "尺码怎么选",
        "优惠券在哪里领",
    ];
    let groups = [
        ("g-shoes", "潮鞋交流群"),
        ("g-vip", "VIP会员群"),
        ("g-new", "新人福利群"),
    ];
    let mut n = 0;
    for day in (0..7).rev() {
        let now = T0 - day * DAY_MS;
        admin
            .set_clock(pb::SetClockRequest { now_ms: now })
            .await
            .unwrap();
        // More traffic on later days, so the chart has a shape.
        let count = 6 + (6 - day) * 2;
        for i in 0..count {
            n += 1;
            let (chat, name) = groups[(n as usize) % groups.len()];
            let text = texts[(n as usize * 7 + i as usize) % texts.len()];
            let id = format!("seed-{n}");
            let r = post(
                &http,
                s,
                "/v1/classify",
                json!({"bot_id": BOT, "chat_id": chat, "chat_name": name, "message_id": id,
                       "text": text, "user": {"id": format!("user-{}", n % 23), "nickname": format!("群友{}", n % 23)}}),
            )
            .await;
            let variant = r["reply"]["variant_id"].as_str().unwrap_or("").to_string();
            let kind = match n % 5 {
                0 => "RESOLVED",
                1 => "THUMBS_UP",
                2 if !variant.is_empty() => "CLICKED",
                3 => "UNRESOLVED",
                _ => continue,
            };
            post(
                &http,
                s,
                "/v1/feedback",
                json!({"bot_id": BOT, "message_id": id, "kind": kind, "variant_id": variant}),
            )
            .await;
        }
    }
    admin
        .set_clock(pb::SetClockRequest { now_ms: T0 })
        .await
        .unwrap();
}

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let dir = common::repo_root().join("examples/console-e2e");
    if tools_ready(&dir).is_none() {
        return;
    }
    // The operator files, copied: the script breaks replies.yml and repairs it.
    let tmp = tempfile::tempdir().unwrap();
    let operator = tmp.path().join("operator");
    std::fs::create_dir(&operator).unwrap();
    for e in std::fs::read_dir(common::repo_root().join("config/operator")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), operator.join(e.file_name())).unwrap();
    }
    let s = TestServer::start(ServerOptions {
        model: Some(common::default_model_dir()),
        manual_clock: Some(T0 - 6 * DAY_MS),
        operator_dir: Some(operator.clone()),
        ..Default::default()
    })
    .await;
    seed_week(&s).await;

    let shots = if std::env::var("INTENTD_WRITE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        common::repo_root().join("docs/console")
    } else {
        common::repo_root().join("target/console-screenshots")
    };
    let base = format!("http://{}", s.http_addr);
    let replies = operator.join("replies.yml");
    let chromium = chromium();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("console.js")
            .args(["--base", &base])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--bot", BOT])
            .args(["--bot-token", BOT_TOKEN])
            .arg("--replies")
            .arg(&replies)
            .arg("--screenshots")
            .arg(&shots)
            .env("CHROMIUM", chromium)
            .current_dir(&dir)
            .output()
            .expect("run node console.js")
    });
    let out = tokio::time::timeout(Duration::from_secs(300), out)
        .await
        .expect("the browser script took over 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console.js failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        std::fs::read_to_string(&s.stderr_log).unwrap_or_default()
    );
    assert!(
        stdout.contains("console e2e: all ") && stdout.contains(" steps passed"),
        "{stdout}\n{stderr}"
    );
    println!("{stdout}");
}
