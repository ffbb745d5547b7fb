//! Proactive sends (schedules, countdowns, re-activation, welcomes, delayed replies): the
//! playbook hands each due item out once, the per-bot outbox keeps it until a subscriber of
//! that bot takes it, and [`Service::subscribe`] streams them to one subscriber.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::outbox::{Dropped, Outbox};
use super::validate::InvalidField;
use super::{Service, ServiceError};
use crate::metrics::DroppedLabels;
use crate::policy::scheduler::OutboundItem;
use crate::policy::state::PlannedSends;
use crate::store::pg_outbox::PgOutbox;
use crate::store::{ConversationRecord, Record};
use crate::types::{Action, Source, Timings};

/// Items a subscription buffers between the service and a slow front door.
const SUBSCRIPTION_BUFFER: usize = 64;

impl Service {
    /// Moves everything the playbook has due into the per-bot outbox (each item is handed out
    /// by the playbook exactly once, so one place collects and the streams share it). Wakes
    /// the subscribers when something arrived.
    pub async fn collect_due(&self) -> usize {
        // Among replicas that all serve, the lease holder plans (any could: the state's
        // versioned rows keep a send from being planned twice, but they would contend).
        if !self.leads() {
            return 0;
        }
        let now = self.now_ms();
        if let Some(shared) = &self.shared_outbox {
            let Ok(_planning) = self.planning.try_lock() else {
                return 0; // the planner running now takes what is due
            };
            return match self.playbook.plan_due(now).await {
                Ok(PlannedSends::Queued {
                    sends,
                    overflow,
                    expired,
                }) => {
                    self.count_dropped("", Dropped { overflow, expired });
                    if let Ok(n) = shared.total().await {
                        self.metrics.outbound_queued.set(n as i64);
                    }
                    sends
                }
                Ok(PlannedSends::ToQueue(items)) => {
                    let n = items.len();
                    self.push_shared(shared, items, now).await;
                    n
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proactive sends not collected; next tick retries");
                    0
                }
            };
        }
        // The playbook's record that an item went out and the item in the outbox are committed
        // together or not at all.
        let _together = match &self.storage {
            Some(s) => Some(s.hold_change().await),
            None => None,
        };
        let items = match self.playbook.due(now).await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "proactive sends not collected; next tick retries");
                return 0;
            }
        };
        let n = items.len();
        if n > 0 {
            self.with_outbox(|outbox| {
                for item in items {
                    let bot = item.bot_id.clone();
                    let dropped = outbox.push(item, now);
                    self.count_dropped(&bot, dropped);
                }
            });
        }
        n
    }

    async fn push_shared(&self, shared: &Arc<PgOutbox>, items: Vec<OutboundItem>, now: i64) {
        let n = items.len();
        match shared.push(items, now).await {
            Ok(d) => self.count_dropped(
                "",
                Dropped {
                    overflow: d.overflow,
                    expired: d.expired,
                },
            ),
            Err(e) => {
                tracing::error!(error = %e, items = n, "proactive sends lost: the shared outbox refused them")
            }
        }
    }

    /// Queues one send made outside the playbook's schedule (an approved review's answer) and
    /// wakes the subscribers.
    pub(super) async fn queue_outbound(&self, item: OutboundItem) {
        let now = self.now_ms();
        if let Some(shared) = &self.shared_outbox {
            self.push_shared(shared, vec![item], now).await;
        } else {
            let bot = item.bot_id.clone();
            let dropped = self.with_outbox(|outbox| outbox.push(item, now));
            self.count_dropped(&bot, dropped);
        }
        self.notify_outbound();
    }

    /// Runs `f` on the outbox and keeps the `outbound_queued` gauge in step with it.
    fn with_outbox<R>(&self, f: impl FnOnce(&mut Outbox) -> R) -> R {
        let mut outbox = self.outbox.lock();
        let r = f(&mut outbox);
        self.metrics.outbound_queued.set(outbox.total() as i64);
        r
    }

    /// Wakes the subscribers (the clock moved, or something was queued).
    pub fn notify_outbound(&self) {
        self.outbound_changed.notify_waiters();
    }

    /// Takes the waiting proactive sends for `bot_id` (only `chats` when not empty); items for
    /// other chats stay for another stream.
    pub async fn take_outbound(&self, bot_id: &str, chats: &[String]) -> Vec<OutboundItem> {
        self.collect_due().await;
        let now = self.now_ms();
        let (items, dropped) = match &self.shared_outbox {
            Some(shared) => match shared.take(bot_id, chats, now).await {
                Ok((items, d)) => (
                    items,
                    Dropped {
                        overflow: d.overflow,
                        expired: d.expired,
                    },
                ),
                Err(e) => {
                    tracing::warn!(bot = %bot_id, error = %e, "shared outbox not read; next wake retries");
                    (Vec::new(), Dropped::default())
                }
            },
            None => self.with_outbox(|o| o.take(bot_id, chats, now)),
        };
        self.count_dropped(bot_id, dropped);
        if !items.is_empty() {
            self.record_sent(&items, now);
            self.commit_taken(bot_id, items.len()).await;
        }
        items
    }

    /// Logs each send under its id (source `proactive`, no message text), so Feedback naming
    /// the id finds it and a click counts as a conversion of its variant. It goes in the same
    /// group commit as the outbox change; a send delivered again keeps its id and its one row.
    fn record_sent(&self, items: &[OutboundItem], now: i64) {
        let Some(storage) = &self.storage else {
            return;
        };
        for item in items {
            let rec = ConversationRecord {
                bot_id: item.bot_id.clone(),
                chat_id: item.chat_id.clone(),
                user_id: item.user_ids.first().cloned().unwrap_or_default(),
                message_id: item.id.clone(),
                at_ms: now,
                sent_at_ms: item.send_at_ms,
                text: String::new(),
                intent: String::new(),
                confidence: 1.0,
                source: Source::Proactive,
                action: Action::Reply,
                triggered: false,
                reply_text: item.reply.text.clone(),
                variant_id: item.reply.variant_id.clone(),
                experiment: item.reply.experiment.clone(),
                timings: Timings::default(),
                model_version: String::new(),
                reason: item.rule_id.clone(),
                answer: None,
            };
            // The commit is waited for below (with the outbox change); a full queue only
            // loses the record, never the send.
            if let Err(e) = storage.submit(Record::Conversation(rec)) {
                tracing::warn!(error = %e, id = %item.id, "proactive send not logged");
            }
        }
    }

    /// Waits until taking items out of the durable outbox is committed, so a restart after the
    /// send cannot send them again. If the store cannot commit, they are sent anyway (a repeat
    /// after a crash is then possible) and that is logged.
    async fn commit_taken(&self, bot_id: &str, n: usize) {
        if let Err(outcome) = self.flush_state().await {
            tracing::warn!(bot = %bot_id, items = n, error = %outcome, "proactive sends go out before their removal from the outbox was stored");
        }
    }

    /// Commits the playbook state and outbox changes made so far, and waits for it (Ok at once
    /// without a store).
    pub(super) async fn flush_state(&self) -> Result<(), String> {
        let Some(storage) = &self.storage else {
            return Ok(());
        };
        let wait = Duration::from_millis(self.settings.request_timeout_ms);
        // Waited for on a blocking thread: a paused test clock does not jump ahead while one
        // runs, so the commit (on the writer's own thread) is not mistaken for a timeout.
        let ticket = storage.flush_state().map_err(|e| e.to_string())?;
        let commit = tokio::task::spawn_blocking(move || ticket.wait());
        match tokio::time::timeout(wait, commit).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("commit timed out".to_string()),
        }
    }

    /// Loads the proactive sends a previous run left waiting (call before serving).
    pub fn restore_outbox(&self, rows: &[crate::durable::StoredRow]) -> Result<usize, String> {
        self.with_outbox(|o| o.restore(rows))
    }

    /// Puts items back at the front (a stream closed before it could send them).
    pub async fn return_outbound(&self, bot_id: &str, items: Vec<OutboundItem>) {
        let now = self.now_ms();
        let dropped = match &self.shared_outbox {
            Some(shared) => {
                let n = items.len();
                match shared.put_back(bot_id, items, now).await {
                    Ok(d) => Dropped {
                        overflow: d.overflow,
                        expired: d.expired,
                    },
                    Err(e) => {
                        tracing::error!(bot = %bot_id, items = n, error = %e, "proactive sends lost: taken but neither sent nor put back");
                        Dropped::default()
                    }
                }
            }
            None => self.with_outbox(|o| o.put_back(bot_id, items, now)),
        };
        self.count_dropped(bot_id, dropped);
    }

    fn count_dropped(&self, bot_id: &str, dropped: Dropped) {
        if !dropped.any() {
            return;
        }
        for (reason, n) in [("overflow", dropped.overflow), ("expired", dropped.expired)] {
            if n > 0 {
                self.metrics
                    .outbound_dropped
                    .get_or_create(&DroppedLabels {
                        reason: reason.into(),
                    })
                    .inc_by(n as u64);
            }
        }
        tracing::warn!(
            bot_id,
            overflow = dropped.overflow,
            expired = dropped.expired,
            max_per_bot = self.settings.outbox.max_per_bot,
            max_age_ms = self.settings.outbox.max_age_ms,
            "proactive sends dropped: no Subscribe stream took them in time"
        );
    }

    pub async fn next_outbound_ms(&self) -> Option<i64> {
        // A replica that does not plan has nothing to wait for but the shared outbox, which
        // its streams look into every second.
        if !self.leads() {
            return None;
        }
        self.playbook.next_due_ms().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "next proactive send unknown");
            None
        })
    }

    /// Streams the proactive sends of `bot_id` (only `chat_ids` when not empty) until the
    /// receiver is dropped; what the subscriber did not take goes back to the outbox.
    pub fn subscribe(
        self: &Arc<Self>,
        bot_id: &str,
        chat_ids: Vec<String>,
    ) -> Result<mpsc::Receiver<OutboundItem>, ServiceError> {
        if !self.known_bot(bot_id) {
            return Err(InvalidField {
                field: "bot_id".into(),
                problem: format!("unknown bot '{}'", super::validate::shown(bot_id)),
            }
            .into());
        }
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let service = self.clone();
        let bot_id = bot_id.to_string();
        tokio::spawn(async move {
            loop {
                // Register interest before checking, so a notify between the check and the wait
                // is not missed.
                let notified = service.outbound_changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let mut items = service.take_outbound(&bot_id, &chat_ids).await.into_iter();
                while let Some(item) = items.next() {
                    if let Err(mpsc::error::SendError(item)) = tx.send(item).await {
                        // The subscriber left: keep what it did not receive for the next one.
                        let mut rest = vec![item];
                        rest.extend(items);
                        service.return_outbound(&bot_id, rest).await;
                        tracing::info!(bot = %bot_id, "subscriber disconnected");
                        return;
                    }
                }
                // Sleep until the next due item (system clock) or a change; at most 1 s so
                // wall-clock schedules are never late by more than that.
                let wait = service
                    .next_outbound_ms()
                    .await
                    .map(|t| (t - service.now_ms()).clamp(1, 1000) as u64)
                    .unwrap_or(1000);
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}
