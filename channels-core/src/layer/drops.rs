//! Messages a layer drops because their channel is full: counted, and logged as one summary
//! line per interval instead of one line per message.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Counts the messages a layer drops because their channel (or its local buffer) is full, and
/// logs them at most once per interval: one WARN line with the count and one of the channels.
///
/// Drops come in floods: a room whose members stop reading loses thousands of messages a
/// second, and a line per message would fill the disk exactly when the system is under
/// stress. The first drop after a quiet interval starts the interval; its end logs what was
/// dropped during it (from a task on the current Tokio runtime; outside one, at the next drop
/// past the interval). Dropping the counter logs what is still uncounted.
///
/// ```
/// use std::time::Duration;
/// use channels_core::layer::DroppedMessages;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let drops = DroppedMessages::new("my-layer", Duration::from_secs(10));
/// for _ in 0..1000 {
///     drops.record("specific.a!b", 1); // one line, in 10 s: dropped=1000 sample_channel=specific.a!b
/// }
/// # }
/// ```
pub struct DroppedMessages {
    state: Arc<Mutex<Uncounted>>,
    layer: &'static str,
    interval: Duration,
}

/// What was dropped since the last line.
#[derive(Default)]
struct Uncounted {
    dropped: u64,
    /// The first channel that lost a message in the interval.
    sample: Option<String>,
    /// The interval's line is due from a task already.
    scheduled: bool,
    /// When the last line was logged, for drops outside a Tokio runtime.
    last_line: Option<tokio::time::Instant>,
}

impl DroppedMessages {
    /// One line per this interval at most, unless set otherwise.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

    /// A counter whose lines name `layer` (`"redis"`, say) and come at most once per `interval`.
    pub fn new(layer: &'static str, interval: Duration) -> Self {
        Self { state: Arc::default(), layer, interval }
    }

    /// Counts `count` messages dropped for `channel`.
    pub fn record(&self, channel: &str, count: u64) {
        let mut uncounted = lock(&self.state);
        uncounted.dropped += count;
        if uncounted.sample.is_none() {
            uncounted.sample = Some(channel.to_owned());
        }
        if uncounted.scheduled {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            uncounted.scheduled = true;
            let state = Arc::downgrade(&self.state);
            let (layer, interval) = (self.layer, self.interval);
            runtime.spawn(async move {
                tokio::time::sleep(interval).await;
                log_due(&state, layer, interval);
            });
        } else if uncounted.last_line.is_none_or(|at| at.elapsed() >= self.interval) {
            log_line(&mut uncounted, self.layer, self.interval);
        }
    }
}

fn lock(state: &Mutex<Uncounted>) -> std::sync::MutexGuard<'_, Uncounted> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The scheduled line at the end of an interval, unless the counter is gone (it logged then).
fn log_due(state: &Weak<Mutex<Uncounted>>, layer: &'static str, interval: Duration) {
    if let Some(state) = state.upgrade() {
        let mut uncounted = lock(&state);
        uncounted.scheduled = false;
        log_line(&mut uncounted, layer, interval);
    }
}

fn log_line(uncounted: &mut Uncounted, layer: &'static str, interval: Duration) {
    let dropped = std::mem::take(&mut uncounted.dropped);
    let sample = uncounted.sample.take();
    if dropped == 0 {
        return;
    }
    uncounted.last_line = Some(tokio::time::Instant::now());
    tracing::warn!(
        %layer,
        dropped,
        sample_channel = %sample.as_deref().unwrap_or_default(),
        interval_secs = interval.as_secs_f64(),
        "messages dropped because their channels were full"
    );
}

impl Drop for DroppedMessages {
    fn drop(&mut self) {
        log_line(&mut lock(&self.state), self.layer, self.interval);
    }
}

impl std::fmt::Debug for DroppedMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DroppedMessages")
            .field("layer", &self.layer)
            .field("interval", &self.interval)
            .field("uncounted", &lock(&self.state).dropped)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::DroppedMessages;

    /// Every line logged while the guard lives, in `lines`.
    fn capture() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines(Arc::default());
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        (lines.0, tracing::subscriber::set_default(subscriber))
    }

    fn logged(lines: &Mutex<Vec<u8>>) -> Vec<String> {
        String::from_utf8_lossy(&lines.lock().unwrap_or_else(|p| p.into_inner())).lines().map(str::to_owned).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_drops_is_one_line_with_its_count_at_the_end_of_the_interval() {
        let (lines, _guard) = capture();
        let drops = DroppedMessages::new("test", Duration::from_secs(10));
        for i in 0..5_000 {
            drops.record(&format!("specific.a!{}", i % 7), 1);
        }
        assert!(logged(&lines).is_empty(), "nothing before the interval ends");
        tokio::time::sleep(Duration::from_secs(11)).await;
        let logged = logged(&lines);
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(logged[0].contains("dropped=5000"), "{}", logged[0]);
        assert!(logged[0].contains("sample_channel=specific.a!0"), "{}", logged[0]);
        assert!(logged[0].contains("WARN"), "{}", logged[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn drops_in_the_next_interval_make_the_next_line() {
        let (lines, _guard) = capture();
        let drops = DroppedMessages::new("test", Duration::from_secs(10));
        drops.record("specific.a!1", 3);
        tokio::time::sleep(Duration::from_secs(11)).await;
        drops.record("specific.a!2", 4);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(logged(&lines).len(), 1, "the second interval has not ended");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let logged = logged(&lines);
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(logged[1].contains("dropped=4") && logged[1].contains("specific.a!2"), "{}", logged[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_uncounted_when_the_counter_goes_is_logged_then() {
        let (lines, _guard) = capture();
        let drops = DroppedMessages::new("test", Duration::from_secs(10));
        drops.record("specific.a!1", 2);
        drop(drops);
        let logged = logged(&lines);
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(logged[0].contains("dropped=2"), "{}", logged[0]);
    }

    #[test]
    fn outside_a_runtime_the_first_drop_is_logged_and_the_rest_wait_for_the_interval() {
        let (lines, _guard) = capture();
        let drops = DroppedMessages::new("test", Duration::from_secs(3600));
        for _ in 0..100 {
            drops.record("specific.a!1", 1);
        }
        assert_eq!(logged(&lines).len(), 1);
        drop(drops);
        let logged = logged(&lines);
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(logged[1].contains("dropped=99"), "{}", logged[1]);
    }
}
