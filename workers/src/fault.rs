//! A rank's own failure, as opposed to a request's: its device or a forward step failed, or its
//! engine thread died. Whoever meets it first raises it (the engine loop, or a handler whose
//! error is the rank's fault); the worker's consume loop waits on it, stops taking work, hands
//! its unfinished messages back to their queues for other ranks, and exits with the reason.
//! Nothing is written as failed: a broken rank must not turn every request it holds into a
//! failed row.

use tokio::sync::watch;

/// Raised at most once; the first reason wins.
#[derive(Clone)]
pub struct Fault(watch::Sender<Option<String>>);

impl Default for Fault {
    fn default() -> Self {
        Fault(watch::channel(None).0)
    }
}

impl Fault {
    /// Records `reason` unless a fault was raised already; returns whether this call raised it.
    pub fn raise(&self, reason: impl Into<String>) -> bool {
        let reason = reason.into();
        self.0.send_if_modified(|slot| match slot {
            Some(_) => false,
            None => {
                *slot = Some(reason);
                true
            }
        })
    }

    /// The reason, once raised.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Waits until the fault is raised and returns its reason.
    pub async fn raised(&self) -> String {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so it cannot be gone while this waits.
        let reason = rx.wait_for(Option::is_some).await.expect("a fault's sender outlives its waiters").clone();
        reason.expect("waited for Some")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins_and_wakes_waiters() {
        let fault = Fault::default();
        assert_eq!(fault.reason(), None);
        let waiter = tokio::spawn({
            let fault = fault.clone();
            async move { fault.raised().await }
        });
        assert!(fault.raise("device lost"));
        assert!(!fault.raise("a second reason"));
        assert_eq!(waiter.await.unwrap(), "device lost");
        assert_eq!(fault.reason().as_deref(), Some("device lost"));
        // A waiter that comes after the fault returns at once.
        assert_eq!(fault.raised().await, "device lost");
    }
}
