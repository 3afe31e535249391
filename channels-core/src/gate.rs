//! Polling a group of futures only after one of them asked to be woken.
//!
//! A task that waits on several things at once (`select!`) polls every one of them each time
//! it wakes. A WebSocket connection wakes mostly for channel-layer messages, and polling its
//! socket, the shutdown signal and the keepalive timer on each of those wake-ups costs more
//! than taking the message. Behind a [`Gate`] they are polled with a waker of the gate's own,
//! which marks the gate before waking the task, and skipped while the gate is unmarked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// See the [module documentation](self).
pub(crate) struct Gate(Arc<Shared>);

struct Shared {
    /// Something behind the gate was woken (or the gate was opened) since its last poll.
    marked: AtomicBool,
    /// The task polling the gate.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.marked.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// A gate whose first poll runs.
    pub(crate) fn new() -> Self {
        Self(Arc::new(Shared { marked: AtomicBool::new(true), task: AtomicWaker::new() }))
    }

    /// Makes the next [`poll`](Self::poll) run whether or not anything behind the gate woke:
    /// for when something changed that the futures behind it did not see (a condition that
    /// kept one of them from being polled no longer holds).
    pub(crate) fn open(&self) {
        self.0.marked.store(true, Ordering::Relaxed);
    }

    /// Runs `poll` (with the gate's waker) if anything behind the gate woke since the last
    /// time `poll` returned `Pending`; otherwise returns `Pending` at once.
    ///
    /// `poll` must poll everything behind the gate until one is ready: whatever returns
    /// `Pending` has then registered the gate's waker. After a `Ready` the gate stays marked,
    /// because what `poll` did not reach may be ready too.
    pub(crate) fn poll<T>(&self, cx: &mut Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        self.0.task.register(cx.waker());
        if !self.0.marked.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.0.clone());
        let result = poll(&mut Context::from_waker(&waker));
        if result.is_ready() {
            self.0.marked.store(true, Ordering::Relaxed);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wake-ups of the task polling the gate.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn polls_only_after_a_wake_and_passes_it_to_the_task() {
        let gate = Gate::new();
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let polls = std::cell::Cell::new(0);
        let stored: std::cell::RefCell<Option<Waker>> = Default::default();
        let mut poll = || {
            gate.poll(&mut cx, |inner| {
                polls.set(polls.get() + 1);
                *stored.borrow_mut() = Some(inner.waker().clone());
                Poll::<()>::Pending
            })
        };

        assert!(poll().is_pending());
        assert!(poll().is_pending());
        assert!(poll().is_pending());
        assert_eq!(polls.get(), 1, "nothing woke: the first poll only");

        stored.take().expect("the gate's waker was handed in").wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task is woken");
        assert!(poll().is_pending());
        assert_eq!(polls.get(), 2, "woken: polled again");

        gate.open();
        assert!(poll().is_pending());
        assert_eq!(polls.get(), 3, "opened: polled again");
        assert!(poll().is_pending());
        assert_eq!(polls.get(), 3);
    }

    #[test]
    fn stays_open_after_ready() {
        let gate = Gate::new();
        let task_waker = Waker::from(Arc::new(CountingWaker(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&task_waker);
        let mut polls = 0;
        assert!(
            gate.poll(&mut cx, |_| {
                polls += 1;
                Poll::Ready(())
            })
            .is_ready()
        );
        assert!(
            gate.poll(&mut cx, |_| {
                polls += 1;
                Poll::<()>::Pending
            })
            .is_pending()
        );
        assert_eq!(polls, 2, "after Ready the rest behind the gate is polled without a wake");
    }
}
