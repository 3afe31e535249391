//! Prometheus metrics: opt in with [`ApplicationBuilder::metrics`](crate::ApplicationBuilder::metrics)
//! and serve [`Metrics::handler`] where your scraper looks (`/metrics`, say).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `channels_connections_open` | gauge | `transport`, `route` | connections open now: WebSockets (`websocket`), HTTP consumers' held requests (`long-poll`) and streams (`sse`), and what handlers count with [`HttpRequest::open_connection`](crate::http::HttpRequest::open_connection) |
//! | `channels_connections_accepted_total` | counter | `transport`, `route` | connections accepted, the same way |
//! | `channels_handshakes_denied_total` | counter | `reason` | WebSocket handshakes refused: `bad_request`, `shutting_down`, `middleware`, `no_route`, `connection_limit`, `denied` (by the consumer or its `connect` failing), `unavailable` (the layer failed or was too slow) |
//! | `channels_messages_received_total` | counter | `transport` | data frames from clients, and what handlers count with [`Metrics::count_received`] |
//! | `channels_messages_sent_total` | counter | `transport` | data frames to clients; an HTTP consumer's long-poll answers and stream chunks; what handlers count with [`Metrics::count_sent`] |
//! | `channels_received_bytes_total` | counter | `transport` | their payload bytes |
//! | `channels_sent_bytes_total` | counter | `transport` | their payload bytes |
//! | `channels_closes_sent_total` | counter | `code` | close frames the server started (a handler's close, 1001 at shutdown, 1009 for a message too big...) |
//! | `channels_handler_errors_total` | counter | `kind` | consumer hooks that failed (`error`) or panicked (`panic`), HTTP handlers that panicked (`http_panic`) |
//! | `channels_handler_duration_seconds` | histogram | `hook` | time in `receive` (every client frame) and in `message` (one burst of layer messages in 64 on each thread: a sample, so that fan-out does not read the clock twice per delivery) |
//! | `channels_connection_duration_seconds` | histogram | `transport` | how long connections lasted |
//! | `channels_group_sends_total` | counter | `layer` | `group_send` calls through the application's layers (consumers', HTTP handlers' and yours through [`Application::layers`](crate::Application::layers)) |
//! | `channels_group_deliveries_total` | counter | `layer` | members' channels those sends reached |
//! | `channels_group_dropped_total` | counter | `layer` | members skipped because their channel was full |
//! | `channels_layer_sends_refused_full_total` | counter | `layer` | `send`s refused because the channel was full |
//! | `channels_layer_errors_total` | counter | `layer`, `operation` | layer operations the backend failed (Redis down, say) |
//! | `channels_layer_recoveries_total` | counter | `layer` | times the backend answered again after failing (Redis back, the layer reconnected) |
//!
//! The counters a frame touches are sharded by thread (no lock, no allocation, no cache line
//! shared between threads, and no locked instruction for the first 15 threads that count);
//! the frames a connection sends in a burst of layer messages are tallied in the connection
//! and added once per burst, before the burst is flushed to the socket, so a scrape never
//! reads fewer than clients could have received. A group send adds to plain atomics once per
//! call (not per member).
//! With metrics off (the default) none of this runs, and the clock is not read for it. The exposition is OpenMetrics text written by
//! [`prometheus-client`](https://docs.rs/prometheus-client).

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use async_trait::async_trait;

use crate::layer::{
    BackendError, ChannelLayer, ChannelReceiver, FlushError, GroupError, GroupSendReport, HistoryStore, LayerConfig,
    Message, NewChannelError, PresenceStore, ReceiveError, SendError,
};

/// Label pairs of a family.
type Labels = Vec<(&'static str, String)>;

/// Collects the application's metrics and renders them for Prometheus. Cheap to clone; every
/// clone is the same set of metrics.
///
/// ```
/// use channels_core::metrics::Metrics;
/// use channels_core::prelude::*;
///
/// let metrics = Metrics::new();
/// let app = Application::builder(Router::new().http("/metrics", metrics.handler()))
///     .metrics(metrics.clone())
///     .build();
/// let text = metrics.render();
/// assert!(text.contains("channels_messages_sent_total{transport=\"websocket\"} 0"));
/// assert!(text.ends_with("# EOF\n"));
/// # drop(app);
/// ```
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

struct Inner {
    registry: Registry,
    hot: Arc<Hot>,
    open: Family<Labels, Gauge>,
    accepted: Family<Labels, Counter>,
    denied: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    connection_duration: Arc<[AtomicHistogram; TRANSPORTS.len()]>,
    layers: LayerCounters,
}

impl Metrics {
    /// A new, empty set of metrics.
    pub fn new() -> Self {
        let open = Family::<Labels, Gauge>::default();
        let accepted = Family::<Labels, Counter>::default();
        let denied = Family::<Labels, Counter>::default();
        let closes = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let hot = Hot::new();
        // The rare counters connections reach through the hot part they hold.
        let _ = hot.closes.set(closes.clone());
        let _ = hot.errors.set(errors.clone());
        let hot = Arc::new(hot);
        let connection_duration = Arc::new(std::array::from_fn(|_| AtomicHistogram::new(CONNECTION_BOUNDS)));
        let mut registry = Registry::default();
        registry.register("channels_connections_open", "Connections open now", open.clone());
        registry.register("channels_connections_accepted", "Connections accepted", accepted.clone());
        registry.register("channels_handshakes_denied", "WebSocket handshakes refused, by reason", denied.clone());
        for (name, help, slot) in [
            ("channels_messages_received", "Data frames from clients", Slot::MessagesIn),
            ("channels_messages_sent", "Data frames to clients", Slot::MessagesOut),
            ("channels_received_bytes", "Payload bytes from clients", Slot::BytesIn),
            ("channels_sent_bytes", "Payload bytes to clients", Slot::BytesOut),
        ] {
            registry.register(name, help, HotCounter { hot: hot.clone(), slot });
        }
        registry.register("channels_closes_sent", "Close frames the server started, by code", closes.clone());
        registry.register("channels_handler_errors", "Handlers that failed or panicked", errors.clone());
        registry.register(
            "channels_handler_duration_seconds",
            "Time in consumer hooks: receive per client frame, message per burst of layer messages (one in 64 sampled)",
            HotHistogram { hot: hot.clone() },
        );
        registry.register(
            "channels_connection_duration_seconds",
            "How long connections lasted",
            ByTransport(connection_duration.clone()),
        );
        let layers = LayerCounters::default();
        registry.register("channels_group_sends", "group_send calls, by layer alias", layers.group_sends.clone());
        registry.register(
            "channels_group_deliveries",
            "Group messages put on members' channels, by layer alias",
            layers.deliveries.clone(),
        );
        registry.register(
            "channels_group_dropped",
            "Group messages dropped for members whose channel was full, by layer alias",
            layers.dropped.clone(),
        );
        registry.register(
            "channels_layer_sends_refused_full",
            "Sends to a channel refused because it was full, by layer alias",
            layers.refused_full.clone(),
        );
        registry.register(
            "channels_layer_recoveries",
            "Times a layer's backend answered again after failing (Redis back after an outage), by layer alias",
            layers.recoveries.clone(),
        );
        registry.register(
            "channels_layer_errors",
            "Layer operations the backend failed (an outage), by layer alias and operation",
            layers.errors.clone(),
        );
        Self { inner: Arc::new(Inner { registry, hot, open, accepted, denied, errors, connection_duration, layers }) }
    }

    /// The metrics in the OpenMetrics text format (what Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    pub(crate) fn hot(&self) -> &Arc<Hot> {
        &self.inner.hot
    }

    pub(crate) fn denied(&self, reason: &'static str) {
        self.inner.denied.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    pub(crate) fn http_panic(&self) {
        self.inner.errors.get_or_create(&vec![("kind", "http_panic".to_owned())]).inc();
    }

    /// A WebSocket connection on `route` was accepted; the guard counts it open until dropped.
    pub(crate) fn websocket_opened(&self, route: &str) -> OpenConnection {
        self.open_connection(Transport::Websocket, route)
    }

    /// Counts a connection of `transport` on `route` as accepted and open until the returned
    /// [`OpenConnection`] drops, then observes its duration. The framework counts its own
    /// connections (WebSockets, [`HttpConsumer`](crate::http_consumer::HttpConsumer)s' held
    /// requests and streams); this is for a transport a handler of yours serves itself, such
    /// as a long poll it holds. From a handler, [`HttpRequest::open_connection`](crate::http::HttpRequest::open_connection)
    /// fills in the route.
    ///
    /// ```
    /// use channels_core::metrics::{Metrics, Transport};
    ///
    /// let metrics = Metrics::new();
    /// let poll = metrics.open_connection(Transport::LongPoll, "/events");
    /// metrics.count_sent(Transport::LongPoll, 3, 120);
    /// let text = metrics.render();
    /// assert!(text.contains(r#"channels_connections_open{transport="long-poll",route="/events"} 1"#));
    /// assert!(text.contains(r#"channels_messages_sent_total{transport="long-poll"} 3"#));
    /// drop(poll);
    /// assert!(metrics.render().contains(r#"channels_connections_open{transport="long-poll",route="/events"} 0"#));
    /// ```
    pub fn open_connection(&self, transport: Transport, route: &str) -> OpenConnection {
        let labels = vec![("transport", TRANSPORTS[transport as usize].to_owned()), ("route", route.to_owned())];
        self.inner.accepted.get_or_create(&labels).inc();
        let open = self.inner.open.get_or_create(&labels).clone();
        open.inc();
        OpenConnection { open, started: Instant::now(), durations: self.inner.connection_duration.clone(), transport }
    }

    /// Counts `messages` from clients of `transport`, `bytes` of payload in all, for a
    /// transport a handler of yours serves (the framework counts its own).
    pub fn count_received(&self, transport: Transport, messages: u64, bytes: u64) {
        self.inner.hot.received_on(transport, messages, bytes);
    }

    /// Counts `messages` to clients of `transport`, `bytes` of payload in all, like
    /// [`count_received`](Self::count_received).
    pub fn count_sent(&self, transport: Transport, messages: u64, bytes: u64) {
        self.inner.hot.sent_on(transport, messages, bytes);
    }
}

/// A connection counted open (`channels_connections_open`) while this lives; its duration is
/// observed when it drops. See [`Metrics::open_connection`].
pub struct OpenConnection {
    open: Gauge,
    started: Instant,
    durations: Arc<[AtomicHistogram; TRANSPORTS.len()]>,
    transport: Transport,
}

impl fmt::Debug for OpenConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenConnection").field("transport", &self.transport).finish_non_exhaustive()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
        self.durations[self.transport as usize].observe(self.started.elapsed());
    }
}

/// How a client is connected: the `transport` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// A WebSocket (`websocket`).
    Websocket = 0,
    /// An HTTP request held until there is something to answer (`long-poll`).
    LongPoll = 1,
    /// A streamed HTTP response: server-sent events (`sse`).
    Sse = 2,
}

/// The `transport` label of each [`Transport`].
const TRANSPORTS: [&str; 3] = ["websocket", "long-poll", "sse"];

/// Bucket bounds, in seconds.
const HANDLER_BOUNDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
const CONNECTION_BOUNDS: &[f64] = &[1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14_400.0, 86_400.0];

/// The per-message counters, one slot each in every shard.
#[derive(Clone, Copy)]
enum Slot {
    MessagesIn = 0,
    MessagesOut = 1,
    BytesIn = 2,
    BytesOut = 3,
}

/// Consumer hooks timed.
#[derive(Clone, Copy)]
pub(crate) enum Hook {
    Receive = 0,
    Message = 1,
}

const HOOKS: [&str; 2] = ["receive", "message"];
/// Per transport: messages and bytes, in and out.
const COUNTERS: usize = 4 * TRANSPORTS.len();
/// Per hook: the buckets, then the count and the sum in nanoseconds.
const HOOK_SLOTS: usize = HANDLER_BOUNDS.len() + 2;
const SLOTS: usize = COUNTERS + HOOKS.len() * HOOK_SLOTS;
const SHARDS: usize = 16;

/// One thread's slots, on cache lines of their own.
#[repr(align(128))]
struct Shard([AtomicU64; SLOTS]);

/// The metrics every message touches, sharded by thread: a thread adds to its own shard
/// (uncontended atomics), a scrape sums them.
pub(crate) struct Hot {
    shards: Box<[Shard]>,
    /// Close codes and hook failures are rare: counted in the families, by label.
    closes: OnceLock<Family<Labels, Counter>>,
    errors: OnceLock<Family<Labels, Counter>>,
}

/// This thread's shard. The first `SHARDS - 1` threads that count get one each, which no
/// other thread writes: they add with a plain load and store, no locked instruction. Later
/// threads share the last shard and add atomically.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        /// `usize::MAX` until the thread first counts. A `const` thread-local: no lazy
        /// initialisation to check on every access.
        static INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    INDEX.with(|index| match index.get() {
        usize::MAX => {
            let assigned = NEXT.fetch_add(1, Ordering::Relaxed).min(SHARDS - 1);
            index.set(assigned);
            assigned
        }
        assigned => assigned,
    })
}

/// Adds `n` to a slot of the shard at `index`.
#[inline]
fn add(index: usize, slot: &AtomicU64, n: u64) {
    if index < SHARDS - 1 {
        // Only this thread writes the slot: no read-modify-write needed.
        slot.store(slot.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    } else {
        slot.fetch_add(n, Ordering::Relaxed);
    }
}

thread_local! {
    /// Bursts of layer messages this thread has handled, for the sampling of their timing.
    static BURSTS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One burst in this many has its `message` hook timed.
pub(crate) const BURST_SAMPLING: u32 = 64;

impl Hot {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0)))).collect(),
            closes: OnceLock::new(),
            errors: OnceLock::new(),
        }
    }

    #[inline]
    fn shard(&self) -> (usize, &[AtomicU64; SLOTS]) {
        let index = shard_index();
        (index, &self.shards[index].0)
    }

    /// Whether to time this burst: one in [`BURST_SAMPLING`] on each thread, so that a
    /// connection handling one message per wake-up does not read the clock twice per message.
    #[inline]
    pub(crate) fn time_burst(&self) -> bool {
        BURSTS.with(|bursts| {
            let n = bursts.get().wrapping_add(1);
            bursts.set(n);
            n % BURST_SAMPLING == 0
        })
    }

    fn sum(&self, slot: usize) -> u64 {
        self.shards.iter().map(|s| s.0[slot].load(Ordering::Relaxed)).sum()
    }

    /// A data frame from a client.
    #[inline]
    pub(crate) fn received(&self, bytes: usize) {
        let (index, shard) = self.shard();
        add(index, &shard[Slot::MessagesIn as usize], 1);
        add(index, &shard[Slot::BytesIn as usize], bytes as u64);
    }

    /// Data frames to a WebSocket client.
    #[inline]
    pub(crate) fn sent(&self, frames: u64, bytes: u64) {
        let (index, shard) = self.shard();
        add(index, &shard[Slot::MessagesOut as usize], frames);
        add(index, &shard[Slot::BytesOut as usize], bytes);
    }

    /// Messages to clients of an HTTP transport: a long poll's answer, a stream's chunk.
    pub(crate) fn sent_on(&self, transport: Transport, messages: u64, bytes: u64) {
        let base = transport as usize * 4;
        let (index, shard) = self.shard();
        add(index, &shard[base + Slot::MessagesOut as usize], messages);
        add(index, &shard[base + Slot::BytesOut as usize], bytes);
    }

    /// Messages from clients of an HTTP transport.
    pub(crate) fn received_on(&self, transport: Transport, messages: u64, bytes: u64) {
        let base = transport as usize * 4;
        let (index, shard) = self.shard();
        add(index, &shard[base + Slot::MessagesIn as usize], messages);
        add(index, &shard[base + Slot::BytesIn as usize], bytes);
    }

    /// A hook ran for `took`.
    #[inline]
    pub(crate) fn hook(&self, hook: Hook, took: Duration) {
        let base = COUNTERS + hook as usize * HOOK_SLOTS;
        let seconds = took.as_secs_f64();
        let bucket = HANDLER_BOUNDS.iter().position(|&bound| seconds <= bound).unwrap_or(HANDLER_BOUNDS.len());
        let (index, shard) = self.shard();
        if bucket < HANDLER_BOUNDS.len() {
            add(index, &shard[base + bucket], 1);
        }
        add(index, &shard[base + HANDLER_BOUNDS.len()], 1);
        add(index, &shard[base + HANDLER_BOUNDS.len() + 1], u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The server started a close with `code`.
    pub(crate) fn close_sent(&self, code: u16) {
        if let Some(closes) = self.closes.get() {
            closes.get_or_create(&vec![("code", code.to_string())]).inc();
        }
    }

    /// A consumer hook failed (`"error"`) or panicked (`"panic"`).
    pub(crate) fn hook_failed(&self, kind: &'static str) {
        if let Some(errors) = self.errors.get() {
            errors.get_or_create(&vec![("kind", kind.to_owned())]).inc();
        }
    }
}

/// A sharded counter, as a family by transport (only WebSockets count messages so far).
#[derive(Clone)]
struct HotCounter {
    hot: Arc<Hot>,
    slot: Slot,
}

impl fmt::Debug for HotCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HotCounter")
    }
}

impl TypedMetric for HotCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for HotCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        for (index, transport) in TRANSPORTS.iter().enumerate() {
            let labels = [("transport", *transport)];
            let value = self.hot.sum(index * 4 + self.slot as usize);
            encoder.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The hook histogram, as a family by hook.
#[derive(Clone)]
struct HotHistogram {
    hot: Arc<Hot>,
}

impl fmt::Debug for HotHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HotHistogram")
    }
}

impl TypedMetric for HotHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HotHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        for (index, hook) in HOOKS.iter().enumerate() {
            let base = COUNTERS + index * HOOK_SLOTS;
            let counts: Vec<u64> = (0..HANDLER_BOUNDS.len()).map(|b| self.hot.sum(base + b)).collect();
            let count = self.hot.sum(base + HANDLER_BOUNDS.len());
            let sum = self.hot.sum(base + HANDLER_BOUNDS.len() + 1) as f64 / 1e9;
            let buckets = cumulative(HANDLER_BOUNDS, &counts, count);
            let labels = [("hook", *hook)];
            encoder.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Buckets for the encoder: the count up to each bound (prometheus-client sums them up
/// itself, so these are per bucket), then `+Inf`.
fn cumulative(bounds: &[f64], counts: &[u64], count: u64) -> Vec<(f64, u64)> {
    let below: u64 = counts.iter().sum();
    let mut buckets: Vec<(f64, u64)> = bounds.iter().copied().zip(counts.iter().copied()).collect();
    buckets.push((f64::MAX, count.saturating_sub(below)));
    buckets
}

/// A histogram of plain atomics, for what is observed once per connection.
struct AtomicHistogram {
    bounds: &'static [f64],
    /// Per bucket, then the count, then the sum in nanoseconds.
    slots: Box<[AtomicU64]>,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, slots: (0..bounds.len() + 2).map(|_| AtomicU64::new(0)).collect() }
    }

    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(bucket) = self.bounds.iter().position(|&bound| seconds <= bound) {
            self.slots[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.slots[self.bounds.len()].fetch_add(1, Ordering::Relaxed);
        self.slots[self.bounds.len() + 1]
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// The connection histograms, by transport.
#[derive(Clone)]
struct ByTransport(Arc<[AtomicHistogram; TRANSPORTS.len()]>);

impl fmt::Debug for ByTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ByTransport")
    }
}

impl TypedMetric for ByTransport {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ByTransport {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        for (h, transport) in self.0.iter().zip(TRANSPORTS) {
            let n = h.bounds.len();
            let counts: Vec<u64> = h.slots[..n].iter().map(|s| s.load(Ordering::Relaxed)).collect();
            let count = h.slots[n].load(Ordering::Relaxed);
            let sum = h.slots[n + 1].load(Ordering::Relaxed) as f64 / 1e9;
            let buckets = cumulative(h.bounds, &counts, count);
            let labels = [("transport", transport)];
            encoder.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The layer counters: one set for every layer of the application, by alias.
#[derive(Clone, Default)]
struct LayerCounters {
    group_sends: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    refused_full: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    recoveries: Family<Labels, Counter>,
}

/// One layer's counters, taken from the families once.
struct LayerHandles {
    group_sends: Counter,
    deliveries: Counter,
    dropped: Counter,
    refused_full: Counter,
    recoveries: Counter,
    errors: Family<Labels, Counter>,
    /// The last operation the backend answered failed.
    failing: std::sync::atomic::AtomicBool,
    alias: String,
}

impl LayerHandles {
    fn error(&self, operation: &'static str) {
        self.failing.store(true, Ordering::Relaxed);
        self.errors.get_or_create(&vec![("layer", self.alias.clone()), ("operation", operation.to_owned())]).inc();
    }

    /// The backend answered: a recovery if it was failing. One relaxed load otherwise.
    #[inline]
    fn answered(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            self.recoveries.inc();
        }
    }

    fn group_report(&self, report: &Result<GroupSendReport, GroupError>) {
        self.group_sends.inc();
        match report {
            Ok(report) => {
                self.answered();
                self.deliveries.inc_by(report.queued as u64);
                self.dropped.inc_by(report.dropped_full as u64);
            }
            Err(e) if e.is_outage() => self.error("group_send"),
            Err(_) => {}
        }
    }
}

impl Metrics {
    /// `layer` as the application uses it: the same layer, with what goes through it counted.
    pub(crate) fn metered_layer(&self, alias: &str, layer: Arc<dyn ChannelLayer>) -> Arc<dyn ChannelLayer> {
        let counters = &self.inner.layers;
        let labels = vec![("layer", alias.to_owned())];
        let handles = LayerHandles {
            group_sends: counters.group_sends.get_or_create(&labels).clone(),
            deliveries: counters.deliveries.get_or_create(&labels).clone(),
            dropped: counters.dropped.get_or_create(&labels).clone(),
            refused_full: counters.refused_full.get_or_create(&labels).clone(),
            recoveries: counters.recoveries.get_or_create(&labels).clone(),
            errors: counters.errors.clone(),
            failing: std::sync::atomic::AtomicBool::new(false),
            alias: alias.to_owned(),
        };
        Arc::new(MeteredLayer { inner: layer, metrics: handles })
    }
}

/// A channel layer with its traffic counted. Receiving goes straight to the layer's own
/// receiver: a connection's receive loop pays nothing for the metrics.
struct MeteredLayer {
    inner: Arc<dyn ChannelLayer>,
    metrics: LayerHandles,
}

impl fmt::Debug for MeteredLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredLayer").field("alias", &self.metrics.alias).finish_non_exhaustive()
    }
}

/// Counts a failed operation's error when the backend failed (not for bad names).
macro_rules! counted {
    ($self:ident, $operation:literal, $result:expr) => {{
        let result = $result;
        match &result {
            Ok(_) => $self.metrics.answered(),
            Err(e) if Outage::is_outage(e) => $self.metrics.error($operation),
            Err(_) => {}
        }
        result
    }};
}

/// Errors of the backend (an outage), as opposed to the caller's (a bad name).
trait Outage {
    fn is_outage(&self) -> bool;
}

macro_rules! outage {
    ($($error:ty),*) => {$(
        impl Outage for $error {
            fn is_outage(&self) -> bool {
                matches!(self, Self::Backend(_))
            }
        }
    )*};
}

outage!(NewChannelError, ReceiveError, GroupError, FlushError);

#[async_trait]
impl ChannelLayer for MeteredLayer {
    async fn new_channel(&self, prefix: &str) -> Result<String, NewChannelError> {
        counted!(self, "new_channel", self.inner.new_channel(prefix).await)
    }

    async fn send(&self, channel: &str, message: Message) -> Result<(), SendError> {
        let result = self.inner.send(channel, message).await;
        match &result {
            Err(SendError::ChannelFull { .. }) => {
                self.metrics.refused_full.inc();
            }
            Err(SendError::Backend(_)) => self.metrics.error("send"),
            Ok(()) => self.metrics.answered(),
            Err(_) => {}
        }
        result
    }

    async fn receive(&self, channel: &str) -> Result<Message, ReceiveError> {
        counted!(self, "receive", self.inner.receive(channel).await)
    }

    fn try_receive(&self, channel: &str) -> Option<Message> {
        self.inner.try_receive(channel)
    }

    fn receiver(self: Arc<Self>, channel: Arc<str>) -> Box<dyn ChannelReceiver> {
        self.inner.clone().receiver(channel)
    }

    async fn group_add(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        counted!(self, "group_add", self.inner.group_add(group, channel).await)
    }

    async fn group_discard(&self, group: &str, channel: &str) -> Result<(), GroupError> {
        counted!(self, "group_discard", self.inner.group_discard(group, channel).await)
    }

    async fn group_discard_many(&self, memberships: &[(String, String)]) -> Result<(), GroupError> {
        counted!(self, "group_discard", self.inner.group_discard_many(memberships).await)
    }

    async fn group_send(&self, group: &str, message: Message) -> Result<GroupSendReport, GroupError> {
        let report = self.inner.group_send(group, message).await;
        self.metrics.group_report(&report);
        report
    }

    async fn group_send_many(&self, sends: &[(String, Message)]) -> Vec<Result<GroupSendReport, GroupError>> {
        let reports = self.inner.group_send_many(sends).await;
        reports.iter().for_each(|report| self.metrics.group_report(report));
        reports
    }

    fn group_send_echo(&self, group: &str, channel: &str, message: &Message) -> bool {
        self.inner.group_send_echo(group, channel, message)
    }

    async fn group_send_many_echoed(
        &self,
        sends: &[(String, Message)],
        channel: &str,
        echoed: usize,
    ) -> Vec<Result<GroupSendReport, GroupError>> {
        let reports = self.inner.group_send_many_echoed(sends, channel, echoed).await;
        reports.iter().for_each(|report| self.metrics.group_report(report));
        reports
    }

    fn batch_linger(&self) -> Duration {
        self.inner.batch_linger()
    }

    async fn flush(&self) -> Result<(), FlushError> {
        counted!(self, "flush", self.inner.flush().await)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let result = self.inner.ping().await;
        match &result {
            Ok(()) => self.metrics.answered(),
            Err(_) => self.metrics.error("ping"),
        }
        result
    }

    async fn forget_channel(&self, channel: &str) {
        self.inner.forget_channel(channel).await;
    }

    fn presence_store(&self) -> Option<Arc<dyn PresenceStore>> {
        self.inner.presence_store()
    }

    fn history_store(&self) -> Option<Arc<dyn HistoryStore>> {
        self.inner.history_store()
    }

    fn config(&self) -> &LayerConfig {
        self.inner.config()
    }
}
