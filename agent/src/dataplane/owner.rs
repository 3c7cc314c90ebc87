//! One owner per driver: a thread (a task for a driver that only touches memory) holds
//! the driver for its whole life and makes every call to it, one at a time, in the
//! order they were sent. The apply loop sends calls and awaits their answers; it never
//! holds the driver itself, so nothing moves a driver in and out of blocking threads.
//!
//! ```text
//! apply loop ── call(f) ──► jobs queue ──► owner: f(&mut driver) ──► answer ──► apply loop
//! ```
//!
//! Dropping the [`Owned`] closes the queue: the owner finishes the call in hand, drops
//! the driver and ends. A call that panics ends the owner; the caller's `call` panics
//! in turn, so the bug ends the agent's task instead of hiding.

use std::fmt;

use tokio::sync::{mpsc, oneshot};

type Job<D> = Box<dyn FnOnce(&mut D) + Send>;

/// A driver behind its owner.
pub struct Owned<D: ?Sized> {
    jobs: mpsc::UnboundedSender<Job<D>>,
    name: &'static str,
}

impl<D: ?Sized> fmt::Debug for Owned<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owned").field("name", &self.name).finish()
    }
}

impl<D: ?Sized + Send + 'static> Owned<D> {
    /// Give `driver` a thread of its own, named `thread` (drivers whose calls block
    /// on external tools).
    pub fn on_thread(name: &'static str, thread: &str, driver: Box<D>) -> std::io::Result<Self> {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job<D>>();
        std::thread::Builder::new()
            .name(thread.to_string())
            .spawn(move || {
                let mut driver = driver;
                while let Some(job) = rx.blocking_recv() {
                    job(&mut driver);
                }
            })?;
        Ok(Owned { jobs, name })
    }

    /// Give `driver` a task of its own (drivers that never block). Needs a tokio
    /// runtime.
    pub fn on_task(name: &'static str, driver: Box<D>) -> Self {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job<D>>();
        tokio::spawn(async move {
            let mut driver = driver;
            while let Some(job) = rx.recv().await {
                job(&mut driver);
            }
        });
        Owned { jobs, name }
    }

    /// What the owner was given (the driver's name).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Run `f` on the driver and return its answer.
    ///
    /// # Panics
    /// When `f` (or an earlier call) panicked on the owner: a driver bug.
    pub async fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut D) -> T + Send + 'static) -> T {
        let (tx, rx) = oneshot::channel();
        let job: Job<D> = Box::new(move |d: &mut D| {
            let _ = tx.send(f(d));
        });
        let sent = self.jobs.send(job).is_ok();
        match rx.await {
            Ok(answer) if sent => answer,
            _ => panic!(
                "the {} driver's owner ended: a call to it panicked",
                self.name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Counter {
        calls: Vec<u32>,
    }

    #[tokio::test]
    async fn calls_run_in_order_on_one_thread() {
        let owned = Owned::on_thread("counter", "test-owner", Box::new(Counter::default()))
            .expect("thread");
        for i in 0..5 {
            let seen = owned
                .call(move |c: &mut Counter| {
                    c.calls.push(i);
                    (
                        c.calls.clone(),
                        std::thread::current().name().map(str::to_string),
                    )
                })
                .await;
            assert_eq!(seen.0, (0..=i).collect::<Vec<_>>());
            assert_eq!(seen.1.as_deref(), Some("test-owner"));
        }
    }

    #[tokio::test]
    async fn a_task_owner_answers_too() {
        let owned = Owned::on_task("counter", Box::new(Counter::default()));
        owned.call(|c: &mut Counter| c.calls.push(7)).await;
        assert_eq!(owned.call(|c: &mut Counter| c.calls.clone()).await, [7]);
    }

    #[tokio::test]
    async fn a_panicking_call_reaches_the_caller() {
        let owned = Owned::on_thread("counter", "test-owner", Box::new(Counter::default()))
            .expect("thread");
        let caller = tokio::spawn(async move {
            owned.call(|_: &mut Counter| panic!("a driver bug")).await;
        });
        let e = caller.await.expect_err("the caller panics");
        assert!(e.is_panic());
    }
}
