//! Hooks that cannot take their connection down: a panic in one becomes an error.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::consumer::HandlerResult;

/// How the error a panic becomes begins.
pub(crate) const PANICKED: &str = "handler panicked";

/// Runs a hook, turning a panic into an error so that one bad handler cannot take the
/// connection down without its close frame and `disconnect`.
///
/// Not an `async fn`: that would keep the hook's future twice (the argument, and the
/// argument moved into the panic guard), and hooks' futures can be large.
pub(crate) fn guarded(hook: impl Future<Output = HandlerResult>) -> impl Future<Output = HandlerResult> {
    AssertUnwindSafe(hook).catch_unwind().map(|outcome| {
        outcome.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(format!("{PANICKED}: {what}").into())
        })
    })
}
