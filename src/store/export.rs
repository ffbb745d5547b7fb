//! `intentd export`: decrypts a time range of the conversation log to JSONL for an authorised
//! operator. Every export, finished or not, leaves an audit row (who, which range, how many rows).

use std::io::Write;

use super::audit::{write_now, AuditAction};
use super::{Store, StoreError};

const PAGE: usize = 500;

/// Writes one JSON object per conversation with `from_ms <= at_ms <= to_ms` (text and reply are
/// the PII-redacted clear text; user and message ids are their stored pseudonyms) and returns
/// the number of rows written.
pub fn export_jsonl(
    store: &dyn Store,
    actor: &str,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
    out: &mut dyn Write,
) -> Result<usize, StoreError> {
    if from_ms > to_ms {
        return Err(StoreError::Invalid(format!(
            "export range: from_ms ({from_ms}) is after to_ms ({to_ms})"
        )));
    }
    let mut written = 0usize;
    let result = write_rows(store, from_ms, to_ms, out, &mut written);
    let detail = match &result {
        Ok(()) => format!("exported conversations from_ms={from_ms} to_ms={to_ms} rows={written}"),
        Err(e) => {
            format!("export from_ms={from_ms} to_ms={to_ms} failed after rows={written}: {e}")
        }
    };
    write_now(store, actor, AuditAction::Export, detail, now_ms)?;
    result.map(|()| written)
}

fn write_rows(
    store: &dyn Store,
    from_ms: i64,
    to_ms: i64,
    out: &mut dyn Write,
    written: &mut usize,
) -> Result<(), StoreError> {
    let mut after_id = 0;
    loop {
        let page = store.conversations(from_ms, to_ms, after_id, PAGE)?;
        let Some(last) = page.last() else { break };
        after_id = last.id;
        for row in &page {
            let line = serde_json::to_string(row).map_err(|e| StoreError::Io(e.to_string()))?;
            writeln!(out, "{line}")?;
            *written += 1;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{Record, SqliteStore};
    use super::*;

    #[test]
    fn exports_a_range_as_jsonl_and_audits_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            &dir.path().join("e.db"),
            keyring(&format!("k1:{}", key_b64(8))),
        )
        .unwrap();
        // More rows than one page, to cross the paging boundary.
        let recs: Vec<_> = (0..(PAGE as i64 + 20))
            .map(|i| {
                let mut c = conversation("bot", "g", &format!("m{i}"), 1_000 + i);
                c.text = format!("第{i}条 手机13912345678");
                Record::Conversation(c)
            })
            .collect();
        store.write_batch(&recs).unwrap();
        let mut out = Vec::new();
        let n = export_jsonl(
            &store,
            "ops:alice",
            1_010,
            1_000 + PAGE as i64 + 9,
            99_999,
            &mut out,
        )
        .unwrap();
        assert_eq!(n, PAGE);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), PAGE);
        // Message ids come out as stored: their pseudonyms.
        assert_eq!(
            lines[0]["message_id"],
            store.stored_message_id("bot", "m10")
        );
        assert!(lines[0]["message_id"].as_str().unwrap().starts_with("m~"));
        assert_eq!(lines[0]["text"], "第10条 手机[PHONE]");
        assert_eq!(lines[0]["intent"], "price");
        assert_eq!(lines[0]["action"], "reply");
        assert_eq!(lines[0]["key_id"], "k1");
        assert_eq!(lines[0]["timings"]["inference_us"], 200);

        let audit = store.audit_rows(0, 100_000).unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].actor, "ops:alice");
        assert_eq!(audit[0].action, AuditAction::Export);
        assert_eq!(audit[0].at_ms, 99_999);
        assert!(
            audit[0].detail.contains(&format!("rows={PAGE}")),
            "{}",
            audit[0].detail
        );
    }

    #[test]
    fn a_failed_export_is_audited_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.db");
        SqliteStore::open(&path, keyring(&format!("old:{}", key_b64(1))))
            .unwrap()
            .write_batch(&[Record::Conversation(conversation("b", "g", "m", 5))])
            .unwrap();
        // A row whose sealed text was tampered with (a wrong key stops the start instead).
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE conversations SET sealed = zeroblob(64)", [])
            .unwrap();
        let store = SqliteStore::open(&path, keyring(&format!("old:{}", key_b64(1)))).unwrap();
        let err = export_jsonl(&store, "ops", 0, 10, 20, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("'old'"), "{err}");
        let audit = store.audit_rows(0, 100).unwrap();
        assert!(
            audit[0].detail.contains("failed after rows=0"),
            "{}",
            audit[0].detail
        );
        assert!(export_jsonl(&store, "ops", 10, 0, 20, &mut Vec::new()).is_err());
    }
}
