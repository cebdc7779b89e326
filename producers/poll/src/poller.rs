//! One source's poller: crawls, page by page, each page one transaction (see
//! [`crate::writer`]), then waits `interval` and crawls again from the watermark minus the
//! lookback. With `overlap_commit`, a transaction commits while the next page is fetched,
//! parsed and checked against the (id, version) store; that page is staged once the commit
//! succeeded.
//!
//! Nothing in memory is trusted past a Kafka error: the poller is opened again, which
//! fences the producer and reads the committed state back (see [`crate::run_source`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::Shutdown;
use sluice_schemas::metadata::{now_ms, parse_rfc3339_ms};
use sluice_stream::state::kafka::read_partitions;

use crate::cursor::{
    self, Crawl, CrawlSummary, Cursor, ErrorStatus, PageRef, Restored, StateRecord,
};
use crate::fetch::{FetchError, Fetched, Fetcher, Step};
use crate::page::{self, Page, PageError};
use crate::record;
use crate::request::{self, RequestError};
use crate::seen::{Decision, Seen, SeenEntry};
use crate::settings::Settings;
use crate::writer::{Committing, PageWriter, RawOut, Refused, RefusedItems, WriteError};

/// How often (in pages) entries behind the lookback are forgotten.
const FORGET_EVERY_PAGES: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("page: {0}")]
    Page(#[from] PageError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the first page of a crawl answered 410 Gone")]
    FirstPageGone,
    #[error("writing to Kafka: {0}")]
    Kafka(#[from] WriteError),
    #[error("reading the source's state from {topic}: {reason}")]
    Restore { topic: String, reason: String },
}

impl PollError {
    /// The metric label of the failure.
    pub fn kind(&self) -> &'static str {
        match self {
            PollError::Kafka(_) | PollError::Restore { .. } => "kafka",
            PollError::Page(_) | PollError::Request(_) => "page",
            PollError::Fetch(_) | PollError::FirstPageGone => "api",
        }
    }
}

/// What every poller of a process shares.
#[derive(Debug)]
pub struct Shared {
    pub clients: KafkaClients,
    pub fetcher: Fetcher,
    pub state_topic: String,
    pub state_partitions: i32,
    /// Where items too large to be raw records go.
    pub dlq_topic: String,
    /// Items the broker refused as too large, dead-lettered when fetched again.
    pub refused: Arc<RefusedItems>,
}

/// How a poller is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// This process's first opening of the source. A session found open is another
    /// process's unclean stop, whose last answer (perhaps a 429) is unknown.
    Takeover,
    /// Again in the same process after a Kafka failure: its budgets still hold every wait
    /// the API set.
    Reopen,
}

pub struct Poller {
    settings: Settings,
    shared: Arc<Shared>,
    writer: PageWriter,
    cursor: Cursor,
    seen: Seen,
    status: ErrorStatus,
    /// Whether every item of the crawl so far came in time order (then entries behind the
    /// lookback can be forgotten).
    ordered: bool,
    /// The longest wait the API set for the source (ms), kept with every pause.
    longest_pause_ms: i64,
    /// Items and pages staged in the open transaction, counted once it commits.
    staged: (u64, u64),
    /// A transaction committing in the background (`overlap_commit`), with its items and
    /// pages.
    committing: Option<(Committing, (u64, u64))>,
    /// State records for the next transaction: deletions of pages of entries behind the
    /// lookback, entries carried over from per-item records.
    unwritten: Vec<StateRecord>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("source", &self.settings.source)
            .field("cursor", &self.cursor)
            .finish()
    }
}

/// A page fetched ahead: its URL and the answer to one attempt (abandoned when dropped,
/// e.g. when the page before it failed to commit).
struct Ahead {
    url: url::Url,
    answer: Option<tokio::task::JoinHandle<Result<Step, FetchError>>>,
}

impl Ahead {
    /// The answer, when it is for `url` (the page the cursor now points at).
    async fn answer_for(mut self, url: &url::Url) -> Option<Result<Step, FetchError>> {
        if &self.url != url {
            return None;
        }
        self.answer.take()?.await.ok()
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        if let Some(answer) = self.answer.take() {
            answer.abort();
        }
    }
}

/// The state partition of `source`.
pub fn partition_of(source: &str, partitions: i32) -> i32 {
    // FNV-1a: stable across versions and platforms, unlike the std hasher.
    let hash = source.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % partitions.max(1) as u64) as i32
}

/// Reads `source`'s committed state back.
pub async fn restore(
    clients: &KafkaClients,
    topic: &str,
    partition: i32,
    source: &str,
) -> Result<Restored, PollError> {
    let (c, t, s) = (clients.clone(), topic.to_string(), source.to_string());
    tokio::task::spawn_blocking(move || {
        let mut state = Restored::default();
        read_partitions(&c, &t, &[partition], |_, key, value| {
            cursor::apply(&mut state, &s, key, value)
        })
        .map(|_| state)
        .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
    .map_err(|reason| PollError::Restore {
        topic: topic.to_string(),
        reason,
    })
}

impl Poller {
    /// Fences the source's previous poller, reads its state back, and records its own
    /// session open (with any wait still binding) before its first request.
    pub async fn open(
        settings: Settings,
        shared: Arc<Shared>,
        opening: Opening,
    ) -> Result<Self, PollError> {
        let partition = partition_of(&settings.source, shared.state_partitions);
        let writer = PageWriter::open(
            &shared.clients,
            &settings.source,
            &settings.raw_topic,
            &shared.state_topic,
            &shared.dlq_topic,
            Arc::clone(&shared.refused),
            partition,
        )
        .await?;
        let mut restored = restore(
            &shared.clients,
            &shared.state_topic,
            partition,
            &settings.source,
        )
        .await?;
        let legacy: Vec<String> = restored.items.keys().cloned().collect();
        let (entries, pages) = restored.seen();
        let mut poller = Self {
            seen: Seen::new(entries, pages),
            cursor: restored.cursor,
            status: restored.status,
            settings,
            shared,
            writer,
            ordered: true,
            longest_pause_ms: restored.longest_pause_ms.unwrap_or(0),
            staged: (0, 0),
            committing: None,
            unwritten: Vec::new(),
        };
        let horizon = poller
            .cursor
            .crawl
            .as_ref()
            .map_or_else(|| poller.next_since(), |c| c.since_ms);
        if let Some(h) = horizon {
            poller.forget_before(h);
        }
        poller.carry_over(&legacy);
        // The session's commit carries the deletions and the carried-over entries.
        let unclean = restored.unclean && opening == Opening::Takeover;
        poller
            .start_session(restored.pause_until_ms, unclean)
            .await?;
        tracing::info!(source = %poller.settings.source, watermark = ?poller.cursor.watermark_ms,
            resuming = poller.cursor.crawl.is_some(), items_kept = poller.seen.len(),
            pages_kept = poller.seen.pages(), "poller opened");
        Ok(poller)
    }

    /// Replaces the per-item records of earlier versions (`ids`) with page 0's records of
    /// the entries still kept.
    fn carry_over(&mut self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let source = &self.settings.source;
        let kept: Vec<(String, SeenEntry)> = ids
            .iter()
            .filter_map(|id| self.seen.get(id).map(|e| (id.clone(), e.clone())))
            .collect();
        self.unwritten
            .extend(ids.iter().map(|id| (cursor::item_key(source, id), None)));
        if !kept.is_empty() {
            let (records, written) = cursor::seen_records(source, 0, &kept);
            self.unwritten.extend(records);
            self.seen.page_written(0, written);
        }
        tracing::info!(source = %source, items = ids.len(), kept = kept.len(),
            "per-item (id, version) records replaced by one page record");
    }

    /// Forgets entries older than `horizon_ms` and deletes the pages holding only such.
    fn forget_before(&mut self, horizon_ms: i64) {
        let source = &self.settings.source;
        for (page, records) in self.seen.forget_before(horizon_ms) {
            self.unwritten
                .extend(cursor::seen_tombstones(source, page, records));
        }
    }

    /// Commits the session open, with the wait no request may precede: the API's last one
    /// still running and, after an unclean stop, the longest the API ever set, counted from
    /// now (after any answer the predecessor got); then holds the host's budget to it.
    async fn start_session(
        &mut self,
        paused_until_ms: Option<i64>,
        unclean: bool,
    ) -> Result<(), PollError> {
        let source = &self.settings.source;
        let now = now_ms();
        let mut until = paused_until_ms.filter(|u| *u > now);
        if unclean && self.longest_pause_ms > 0 {
            tracing::warn!(source = %source, wait_ms = self.longest_pause_ms,
                "the previous poller stopped uncleanly, perhaps right after a 429; waiting as long as the longest wait the API has set before asking");
            until = until.max(Some(now + self.longest_pause_ms));
        }
        let session = cursor::Session {
            open: true,
            at_ms: now,
        };
        let mut state = vec![cursor::put(cursor::session_key(source), &session)];
        if let Some(until_ms) = until {
            let pause = cursor::Pause {
                until_ms,
                longest_ms: self.longest_pause_ms,
            };
            state.push(cursor::put(cursor::pause_key(source), &pause));
        }
        self.commit(state).await?;
        if let Some(until_ms) = until {
            let wait = Duration::from_millis((until_ms - now) as u64);
            self.shared
                .fetcher
                .budgets
                .pause(&self.settings.host_key, wait);
        }
        Ok(())
    }

    /// Records a clean stop: every request's answer is known and any wait it set is
    /// committed, so the next poller need not wait beyond that.
    async fn end_session(&mut self) -> Result<(), PollError> {
        let session = cursor::Session {
            open: false,
            at_ms: now_ms(),
        };
        let source = &self.settings.source;
        let state = vec![cursor::put(cursor::session_key(source), &session)];
        self.commit(state).await?;
        Ok(())
    }

    /// Crawls every `interval` until shutdown, then records the clean stop; returns a
    /// Kafka failure for the caller to open the poller again.
    pub async fn run(mut self, shutdown: &Shutdown) -> Result<(), PollError> {
        let source = self.settings.source.clone();
        self.shared.fetcher.metrics.start(&source);
        while !shutdown.is_triggered() {
            match self.crawl(shutdown).await {
                Ok(()) | Err(PollError::Fetch(FetchError::Stopped)) => {}
                Err(e @ (PollError::Kafka(_) | PollError::Restore { .. })) => return Err(e),
                Err(e) => self.failed(&e).await?,
            }
            self.settle().await?;
            tokio::select! {
                _ = tokio::time::sleep(self.settings.spec.interval.0) => {}
                _ = shutdown.wait() => {}
            }
        }
        self.end_session().await
    }

    /// Counts and records a failed crawl; the next one starts after the interval, from the
    /// committed cursor.
    async fn failed(&mut self, e: &PollError) -> Result<(), PollError> {
        let source = &self.settings.source;
        tracing::warn!(source = %source, error = %e, "crawl failed; trying again after the interval");
        self.shared
            .fetcher
            .metrics
            .errors
            .with_label_values(&[source, e.kind()])
            .inc();
        self.status.errors += 1;
        self.status.last_error = e.to_string();
        self.status.at_ms = now_ms();
        let state = vec![cursor::put(cursor::status_key(source), &self.status)];
        self.commit(state).await?;
        Ok(())
    }

    /// Records `why` a crawl ends before its list does (see [`page::Progress`]), with the
    /// page: following its pages would never end. With `since`, the watermark still moves
    /// past what the crawl read, so an API that honours only `since` is read in full over the
    /// next crawls.
    fn stalled(&mut self, why: String) {
        let source = &self.settings.source;
        tracing::warn!(source = %source, "{why}");
        self.shared
            .fetcher
            .metrics
            .errors
            .with_label_values(&[source, "page"])
            .inc();
        self.status.errors += 1;
        self.status.last_error = why;
        self.status.at_ms = now_ms();
        self.unwritten
            .push(cursor::put(cursor::status_key(source), &self.status));
    }

    /// Where a new crawl starts: the watermark minus the lookback, else the backfill start.
    fn next_since(&self) -> Option<i64> {
        let since = self.settings.spec.since.as_ref()?;
        match self.cursor.watermark_ms {
            Some(w) => Some(w - since.lookback.0.as_millis() as i64),
            None => since.start.as_deref().and_then(parse_rfc3339_ms),
        }
    }

    /// One pass over the list, resuming an interrupted one.
    async fn crawl(&mut self, shutdown: &Shutdown) -> Result<(), PollError> {
        if self.cursor.crawl.is_none() {
            self.cursor.crawl = Some(Crawl {
                since_ms: self.next_since(),
                next: PageRef::First,
                newest_ms: None,
                started_ms: now_ms(),
                items: 0,
            });
            self.ordered = true;
        }
        let started = Instant::now();
        let mut pages = 0u64;
        let mut ahead: Option<Ahead> = None;
        let mut progress = page::Progress::default();
        loop {
            let crawl = self.cursor.crawl.clone().expect("a crawl is under way");
            let url = request::page_url(&self.settings, &crawl)?;
            let req = request::build(&self.settings, &self.cursor, url.clone());
            let asked = Instant::now();
            let first = match ahead.take() {
                Some(a) => a.answer_for(&url).await,
                None => None,
            };
            let fetched = self.fetch(&req, first, shutdown).await?;
            let answered = asked.elapsed();
            let etag = fetched.etag();
            let (body, headers) = match fetched {
                Fetched::NotModified => {
                    self.cursor.crawl = None;
                    self.succeeded();
                    return Ok(());
                }
                Fetched::Gone if crawl.next == PageRef::First => {
                    return Err(PollError::FirstPageGone)
                }
                Fetched::Gone => {
                    // The API forgot our place: start the crawl over from its `since`; the
                    // (id, version) store drops what was written already.
                    tracing::warn!(source = %self.settings.source, "the API expired the page cursor (410); the crawl starts over");
                    self.shared
                        .fetcher
                        .metrics
                        .cursor_expired
                        .with_label_values(&[&self.settings.source])
                        .inc();
                    self.cursor.crawl = Some(Crawl {
                        next: PageRef::First,
                        ..crawl
                    });
                    progress = page::Progress::default();
                    continue;
                }
                Fetched::Page { body, headers } => (body, headers),
            };
            let parsing = Instant::now();
            let mut page = page::parse(&self.settings.spec, &crawl.next, &body, &headers)?;
            // A list of one page (whose ETag then stands for the whole list): before a stall
            // cuts a longer one short.
            let single = crawl.next == PageRef::First && page.next.is_none();
            if let Some(stall) = progress.stall(&crawl.next, &page) {
                self.stalled(stall.describe(&crawl.next));
                page.next = None;
            }
            let parsed = parsing.elapsed();
            let etag = etag.filter(|_| single).map(|e| (url.to_string(), e));
            ahead = self.fetch_ahead(&crawl, &page, shutdown)?;
            let writing = Instant::now();
            let finished = self.commit_page(crawl, page, etag, started).await?;
            // Where a page's time goes, for tuning: waiting for its answer (the rest of it,
            // when it was fetched ahead), parsing it, writing it (with the commit, when it
            // ends a transaction).
            tracing::debug!(source = %self.settings.source, ?answered, ?parsed, written = ?writing.elapsed(), "poll page");
            pages += 1;
            if pages.is_multiple_of(FORGET_EVERY_PAGES) {
                self.forget_behind();
            }
            if finished {
                self.forget_behind();
                return Ok(());
            }
        }
    }

    /// Starts fetching the page after `page` while `page` is staged, when both go into the
    /// same transaction: a kill then fetches again no more pages than that transaction
    /// holds, as without it. Not across a commit (that is `overlap_commit`'s choice).
    fn fetch_ahead(
        &self,
        crawl: &Crawl,
        page: &Page,
        shutdown: &Shutdown,
    ) -> Result<Option<Ahead>, PollError> {
        let Some(next) = &page.next else {
            return Ok(None);
        };
        let per_tx = u64::from(self.settings.spec.pages_per_transaction);
        if self.writer.staged_pages() + 1 >= per_tx {
            return Ok(None);
        }
        let after = Crawl {
            next: next.clone(),
            ..crawl.clone()
        };
        let url = request::page_url(&self.settings, &after)?;
        let req = request::build(&self.settings, &self.cursor, url.clone());
        let (fetcher, source, shutdown) = (
            self.shared.fetcher.clone(),
            self.settings.source.clone(),
            shutdown.clone(),
        );
        let keys: Vec<String> = self
            .settings
            .budget_keys()
            .into_iter()
            .map(str::to_string)
            .collect();
        let answer = tokio::spawn(async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            fetcher.attempt(&source, &keys, &req, 0, &shutdown).await
        });
        Ok(Some(Ahead {
            url,
            answer: Some(answer),
        }))
    }

    /// Fetches `req`, waiting out whatever the API and the budgets ask; a wait the API set
    /// is committed first, so a poller started during it waits too. `first` is the answer
    /// to a first attempt already made ahead.
    async fn fetch(
        &mut self,
        req: &sluice_runtime::outbound::OutboundRequest,
        mut first: Option<Result<Step, FetchError>>,
        shutdown: &Shutdown,
    ) -> Result<Fetched, PollError> {
        let fetcher = self.shared.fetcher.clone();
        let source = self.settings.source.clone();
        let mut failures = 0;
        loop {
            let keys = self.settings.budget_keys();
            let step = match first.take() {
                Some(answer) => answer?,
                None => {
                    fetcher
                        .attempt(&source, &keys, req, failures, shutdown)
                        .await?
                }
            };
            match step {
                Step::Done(fetched) => return Ok(fetched),
                Step::Wait { wait, why, binding } => {
                    failures += 1;
                    if binding {
                        // Before anything else: a successor must not ask before it.
                        self.longest_pause_ms = self.longest_pause_ms.max(wait.as_millis() as i64);
                        let pause = cursor::Pause {
                            until_ms: now_ms() + wait.as_millis() as i64,
                            longest_ms: self.longest_pause_ms,
                        };
                        let state = vec![cursor::put(cursor::pause_key(&source), &pause)];
                        self.commit(state).await?;
                    }
                    fetcher.sleep(&source, why, wait, shutdown).await?;
                }
            }
        }
    }

    /// Stages the page's new item versions with the cursor after it, committing them with
    /// the pages staged before every `pages_per_transaction` pages and at the end of the
    /// crawl; true when the crawl ended with it.
    async fn commit_page(
        &mut self,
        crawl: Crawl,
        page: Page,
        etag: Option<(String, String)>,
        started: Instant,
    ) -> Result<bool, PollError> {
        let s = &self.settings;
        let metrics = &self.shared.fetcher.metrics;
        let now = now_ms();
        let mut newest = crawl.newest_ms;
        let mut records = Vec::new();
        let mut entries = Vec::new();
        for item in &page.items {
            if let (Some(t), Some(n)) = (item.time_ms, newest) {
                self.ordered &= t >= n;
            }
            newest = newest.max(item.time_ms);
            match self.seen.decide(&item.id, &item.version) {
                Decision::Write => {}
                Decision::Duplicate | Decision::Stale => {
                    let reason = match self.seen.decide(&item.id, &item.version) {
                        Decision::Stale => "stale",
                        _ => "duplicate",
                    };
                    metrics
                        .dropped
                        .with_label_values(&[&s.source, reason])
                        .inc();
                    continue;
                }
            }
            let entry = SeenEntry {
                v: item.version.as_str().to_string(),
                t: item.time_ms,
            };
            // Recorded now, so a second copy on the same page is a duplicate; a failed
            // commit reopens the poller, which reads the store back from Kafka.
            self.seen.record(item.id.clone(), entry.clone());
            entries.push((item.id.clone(), entry));
            records.push(RawOut {
                delivery_id: record::delivery_id(item),
                key: item.id.clone(),
                value: item.body.clone(),
                headers: record::headers(
                    &s.source,
                    &s.spec.provider,
                    s.spec.event_type.as_deref(),
                    item,
                    now,
                ),
            });
        }
        // Nothing is staged before the previous transaction's commit is known to have held.
        self.settle().await?;
        let page_items = records.len();
        let refused = self.writer.send_items(records).await?;
        self.dead_lettered(&refused);
        let s = &self.settings;
        let written = (page_items - refused.len()) as u64;
        let mut next = self.cursor.clone();
        next.items_written += written;
        next.pages += 1;
        let mut state = std::mem::take(&mut self.unwritten);
        if !entries.is_empty() {
            let (seen, written) = cursor::seen_records(&s.source, next.pages, &entries);
            state.extend(seen);
            self.seen.page_written(next.pages, written);
        }
        next.last_success_ms = Some(now);
        let finished = page.next.is_none();
        match page.next {
            None => {
                next.watermark_ms = next.watermark_ms.max(newest);
                // The rate of the last crawl that wrote anything: idle crawls say nothing.
                if crawl.items + written > 0 {
                    next.last_crawl = Some(CrawlSummary {
                        items: crawl.items + written,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                }
                next.crawl = None;
                next.etag = etag;
            }
            Some(after) => {
                next.crawl = Some(Crawl {
                    next: after,
                    newest_ms: newest,
                    items: crawl.items + written,
                    ..crawl
                });
            }
        }
        state.push(cursor::put(cursor::cursor_key(&s.source), &next));
        self.writer.stage(state).await?;
        // The next page is asked for from here; a failed commit reopens the poller, which
        // reads the committed cursor back.
        self.cursor = next;
        self.staged = (self.staged.0 + written, self.staged.1 + 1);
        let full = self.writer.staged_pages() >= u64::from(s.spec.pages_per_transaction);
        if full && !finished && s.spec.overlap_commit {
            let staged = std::mem::take(&mut self.staged);
            self.committing = Some((self.writer.commit_behind(), staged));
        } else if finished || full {
            self.commit(Vec::new()).await?;
        }
        self.succeeded();
        Ok(finished)
    }

    /// Commits the staged pages with `state` (after any commit under way), then counts them.
    async fn commit(&mut self, mut state: Vec<StateRecord>) -> Result<(), PollError> {
        self.settle().await?;
        state.append(&mut self.unwritten);
        self.writer.commit(state).await?;
        let staged = std::mem::take(&mut self.staged);
        self.count(staged);
        Ok(())
    }

    /// Waits for the transaction committing in the background, if any, and counts it.
    async fn settle(&mut self) -> Result<(), PollError> {
        if let Some((committing, staged)) = self.committing.take() {
            self.writer.settle(committing).await?;
            self.count(staged);
        }
        Ok(())
    }

    /// Reports items dead-lettered as too large to be raw records.
    fn dead_lettered(&self, refused: &[Refused]) {
        let source = &self.settings.source;
        for r in refused {
            tracing::warn!(source = %source, item = %r.id, bytes = r.bytes, dlq = %self.shared.dlq_topic,
                "polled item too large for a Kafka record; dead-lettered, the crawl goes on");
            self.shared
                .fetcher
                .metrics
                .dead_lettered
                .with_label_values(&[source, "too_large"])
                .inc();
        }
    }

    /// Counts committed items and pages.
    fn count(&self, (items, pages): (u64, u64)) {
        let m = &self.shared.fetcher.metrics;
        let source = &self.settings.source;
        m.items.with_label_values(&[source]).inc_by(items);
        m.pages.with_label_values(&[source]).inc_by(pages);
    }

    /// Forgets items no crawl asks for again: those older than the newest item time minus
    /// the lookback. Mid-crawl only when the API has listed items oldest first so far (a
    /// later page of a crawl in another order can still hold older items); between crawls
    /// whatever the order, since the next crawl asks from the watermark minus the lookback.
    fn forget_behind(&mut self) {
        let Some(since) = &self.settings.spec.since else {
            return;
        };
        let newest = match &self.cursor.crawl {
            Some(crawl) if self.ordered => crawl.newest_ms.or(self.cursor.watermark_ms),
            Some(_) => None,
            None => self.cursor.watermark_ms,
        };
        if let Some(n) = newest {
            self.forget_before(n - since.lookback.0.as_millis() as i64);
        }
    }

    fn succeeded(&self) {
        let m = &self.shared.fetcher.metrics;
        let source = &self.settings.source;
        let now = now_ms();
        m.last_success.with_label_values(&[source]).set(now / 1000);
        if let Some(w) = self.cursor.watermark_ms {
            m.watermark_age
                .with_label_values(&[source])
                .set((now - w).max(0) / 1000);
        }
    }
}

/// Opens and runs `settings`' poller until shutdown, opening it again (fencing, reading the
/// committed state back) after any Kafka failure.
pub async fn run_source(settings: Settings, shared: Arc<Shared>, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(500);
    let mut opening = Opening::Takeover;
    while !shutdown.is_triggered() {
        let opened = Poller::open(settings.clone(), Arc::clone(&shared), opening).await;
        let result = match opened {
            Ok(poller) => {
                opening = Opening::Reopen;
                backoff = Duration::from_millis(500);
                poller.run(&shutdown).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            shared
                .fetcher
                .metrics
                .errors
                .with_label_values(&[&settings.source, e.kind()])
                .inc();
            tracing::warn!(source = %settings.source, error = %e, retry_in = ?backoff,
                "poller stopped; it is opened again from its committed state");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}
