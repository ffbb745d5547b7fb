//! The outbox of proactive sends shared by replicas on one PostgreSQL (`leader.followers:
//! serve`): whichever replica holds a bot's Subscribe stream takes the bot's sends from here.
//!
//! Taking is one `DELETE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`,
//! committed before the stream sends anything: two replicas taking at the same moment get
//! disjoint items, and a replica that dies after the commit cannot send them again (what a
//! stream could not send is put back at the front). The bounds are those of the in-memory
//! outbox (`service/outbox.rs`): at most `max_per_bot` items per bot (the oldest go) and
//! none older than `max_age_ms`; what goes is counted for the caller.
//!
//! The table `outbox_shared` is migration 3 in `postgres.rs`. Items are sealed JSON like every
//! other row (the bot's pseudonym in the additional data); bot and chat are keyed pseudonyms, so
//! the database never sees an id or a text in clear.

use std::sync::Arc;

use deadpool_postgres::Transaction;

use super::crypto::{state_aad, Keyring};
use super::pg::{store_err, Pg};
use super::pseudonyms::Pseudonyms;
use super::StoreError;
use crate::policy::scheduler::OutboundItem;

/// How many items one take hands out at most (the rest wait for the next).
const TAKE_LIMIT: i64 = 500;

/// The additional data an item is sealed with.
const KIND: &str = "outbox_shared";

/// Items one call removed without sending, by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxDrops {
    /// The bot's queue was over `max_per_bot`.
    pub overflow: usize,
    /// Waited longer than `max_age_ms`.
    pub expired: usize,
}

impl std::ops::AddAssign for OutboxDrops {
    fn add_assign(&mut self, o: Self) {
        self.overflow += o.overflow;
        self.expired += o.expired;
    }
}

/// The bounds of each bot's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBounds {
    pub max_per_bot: usize,
    pub max_age_ms: i64,
}

/// See the module doc.
pub struct PgOutbox {
    pg: Arc<Pg>,
    keyring: Arc<Keyring>,
    pseudonyms: Pseudonyms,
    bounds: OutboxBounds,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox")
            .field("pg", &self.pg)
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

/// One item sealed for its row.
struct Sealed {
    bot: String,
    chat: String,
    key_id: String,
    blob: Vec<u8>,
}

impl PgOutbox {
    pub fn new(
        pg: Arc<Pg>,
        keyring: Arc<Keyring>,
        pseudonyms: Pseudonyms,
        bounds: OutboxBounds,
    ) -> PgOutbox {
        PgOutbox {
            pg,
            keyring,
            pseudonyms,
            bounds,
        }
    }

    fn bot_key(&self, bot_id: &str) -> String {
        self.pseudonyms.state(KIND, bot_id)
    }

    fn chat_key(&self, bot_id: &str, chat_id: &str) -> String {
        self.pseudonyms
            .state(KIND, &format!("{bot_id}\u{1f}{chat_id}"))
    }

    fn seal(&self, item: &OutboundItem) -> Result<Sealed, StoreError> {
        let bot = self.bot_key(&item.bot_id);
        let chat = self.chat_key(&item.bot_id, &item.chat_id);
        let json = serde_json::to_vec(item)
            .map_err(|e| StoreError::Db(format!("outbox item does not serialise: {e}")))?;
        let s = self.keyring.seal(&json, &state_aad(KIND, &bot))?;
        Ok(Sealed {
            bot,
            chat,
            key_id: s.key_id,
            blob: s.blob,
        })
    }

    fn open(&self, bot: &str, key_id: &str, blob: &[u8]) -> Result<OutboundItem, StoreError> {
        let json = self
            .keyring
            .open(key_id, blob, &state_aad(KIND, bot))
            .map_err(|e| StoreError::Crypto(format!("{KIND} row: {e}")))?;
        serde_json::from_slice(&json)
            .map_err(|e| StoreError::Crypto(format!("{KIND} row is not a valid item: {e}")))
    }

    /// Runs `f` on a blocking thread: [`Pg::block`] parks its caller, so never on an async
    /// one.
    async fn off_runtime<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&PgOutbox) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Db(format!("{KIND}: {e}")))?
    }

    /// Runs `f` in one transaction, committed when it succeeds (blocking).
    fn in_tx<T>(
        &self,
        f: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.pg.block(async {
            let mut client = self.pg.client().await?;
            let tx = client.transaction().await.map_err(store_err)?;
            let out = f(&tx).await?;
            tx.commit().await.map_err(store_err)?;
            Ok(out)
        })
    }

    /// Queues `items` at the back of their bots' queues.
    pub async fn push(
        self: &Arc<Self>,
        items: Vec<OutboundItem>,
        now_ms: i64,
    ) -> Result<OutboxDrops, StoreError> {
        self.off_runtime(move |o| o.in_tx(async |tx| o.push_in(tx, &items, now_ms).await))
            .await
    }

    /// [`Self::push`] inside the caller's transaction (proactive planning queues its sends in
    /// the same commit as the state change that planned them).
    pub async fn push_in(
        &self,
        tx: &Transaction<'_>,
        items: &[OutboundItem],
        now_ms: i64,
    ) -> Result<OutboxDrops, StoreError> {
        let mut drops = OutboxDrops::default();
        let mut bots: Vec<String> = Vec::new();
        for item in items {
            let s = self.seal(item)?;
            tx.execute(
                "INSERT INTO outbox_shared (bot, chat, queued_ms, key_id, sealed) VALUES ($1, $2, $3, $4, $5)",
                &[&s.bot, &s.chat, &now_ms, &s.key_id, &s.blob],
            )
            .await
            .map_err(store_err)?;
            if !bots.contains(&s.bot) {
                bots.push(s.bot);
            }
        }
        for bot in &bots {
            drops.expired += self.expire(tx, bot, now_ms).await?;
            drops.overflow += self.trim(tx, bot).await?;
        }
        Ok(drops)
    }

    /// Takes `bot_id`'s waiting items (only those for `chats` when it is not empty), oldest
    /// first; items locked by another replica's take are skipped, not waited for.
    pub async fn take(
        self: &Arc<Self>,
        bot_id: &str,
        chats: &[String],
        now_ms: i64,
    ) -> Result<(Vec<OutboundItem>, OutboxDrops), StoreError> {
        let bot = self.bot_key(bot_id);
        let chats: Vec<String> = chats.iter().map(|c| self.chat_key(bot_id, c)).collect();
        self.off_runtime(move |o| o.in_tx(async |tx| o.take_in(tx, &bot, &chats, now_ms).await))
            .await
    }

    async fn take_in(
        &self,
        tx: &Transaction<'_>,
        bot: &str,
        chats: &[String],
        now_ms: i64,
    ) -> Result<(Vec<OutboundItem>, OutboxDrops), StoreError> {
        let drops = OutboxDrops {
            expired: self.expire(tx, bot, now_ms).await?,
            overflow: 0,
        };
        let rows = tx
            .query(
                "DELETE FROM outbox_shared WHERE id IN (
                     SELECT id FROM outbox_shared
                     WHERE bot = $1 AND (cardinality($2::text[]) = 0 OR chat = ANY($2))
                     ORDER BY pos, id LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING pos, id, key_id, sealed",
                &[&bot, &chats, &TAKE_LIMIT],
            )
            .await
            .map_err(store_err)?;
        let mut rows: Vec<(i64, i64, String, Vec<u8>)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        rows.sort_by_key(|r| (r.0, r.1));
        let items = rows
            .iter()
            .map(|(_, _, key_id, blob)| self.open(bot, key_id, blob))
            .collect::<Result<_, _>>()?;
        Ok((items, drops))
    }

    /// Puts items a stream could not send back at the front of their bot's queue, in their
    /// order, as queued now (if that is over the bound, they are the ones dropped).
    pub async fn put_back(
        self: &Arc<Self>,
        bot_id: &str,
        items: Vec<OutboundItem>,
        now_ms: i64,
    ) -> Result<OutboxDrops, StoreError> {
        let bot_id = bot_id.to_string();
        self.off_runtime(move |o| {
            o.in_tx(async |tx| o.put_back_in(tx, &bot_id, items, now_ms).await)
        })
        .await
    }

    async fn put_back_in(
        &self,
        tx: &Transaction<'_>,
        bot_id: &str,
        items: Vec<OutboundItem>,
        now_ms: i64,
    ) -> Result<OutboxDrops, StoreError> {
        let bot = self.bot_key(bot_id);
        let first: Option<i64> = tx
            .query_one("SELECT min(pos) FROM outbox_shared WHERE bot = $1", &[&bot])
            .await
            .map_err(store_err)?
            .get(0);
        let first = first.unwrap_or(0);
        let n = items.len() as i64;
        for (i, mut item) in items.into_iter().enumerate() {
            item.bot_id = bot_id.to_string();
            let s = self.seal(&item)?;
            let pos = first - n + i as i64;
            tx.execute(
                "INSERT INTO outbox_shared (pos, bot, chat, queued_ms, key_id, sealed) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&pos, &s.bot, &s.chat, &now_ms, &s.key_id, &s.blob],
            )
            .await
            .map_err(store_err)?;
        }
        Ok(OutboxDrops {
            overflow: self.trim(tx, &bot).await?,
            expired: 0,
        })
    }

    /// Items waiting for any bot.
    pub async fn total(self: &Arc<Self>) -> Result<usize, StoreError> {
        self.off_runtime(|o| {
            o.in_tx(async |tx| {
                let n: i64 = tx
                    .query_one("SELECT count(*) FROM outbox_shared", &[])
                    .await
                    .map_err(store_err)?
                    .get(0);
                Ok(n as usize)
            })
        })
        .await
    }

    async fn expire(
        &self,
        tx: &Transaction<'_>,
        bot: &str,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let before = now_ms.saturating_sub(self.bounds.max_age_ms);
        let n = tx
            .execute(
                "DELETE FROM outbox_shared WHERE bot = $1 AND queued_ms < $2",
                &[&bot, &before],
            )
            .await
            .map_err(store_err)?;
        Ok(n as usize)
    }

    /// Drops the bot's oldest items beyond `max_per_bot`.
    async fn trim(&self, tx: &Transaction<'_>, bot: &str) -> Result<usize, StoreError> {
        let keep = self.bounds.max_per_bot as i64;
        let n = tx
            .execute(
                "DELETE FROM outbox_shared WHERE id IN (
                     SELECT id FROM outbox_shared WHERE bot = $1
                     ORDER BY pos DESC, id DESC OFFSET $2)",
                &[&bot, &keep],
            )
            .await
            .map_err(store_err)?;
        Ok(n as usize)
    }
}
