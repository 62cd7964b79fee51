//! A one-slot single-producer single-consumer hand-off: how sojourn histograms move
//! between a worker and the reader (T4: a full one out, an empty one back).
//!
//! Protocol: `full` is the only shared word. The sender writes the slot only while
//! `full` is `false` and then stores `true` with `Release`; the receiver reads the slot
//! only after loading `true` with `Acquire` (partner of that store), then stores `false`
//! with `Release`; the sender's `Acquire` load of `false` (partner) orders the
//! receiver's take before the next write. Each side is a distinct type, `Send`, not
//! `Clone`, created only as a pair, so there is one writer and one reader.

use super::sync::{Arc, AtomicBool, Ordering, Slot};

#[derive(Debug)]
struct Shared<T> {
    full: AtomicBool,
    slot: Slot<Option<T>>,
}

// SAFETY: the slot is accessed by at most one thread at a time, ordered by the `full`
// hand-off (see the module docs); the value moves between threads, hence `T: Send`.
unsafe impl<T: Send> Sync for Shared<T> {}

/// The writing half of a [`channel`].
#[derive(Debug)]
pub struct MailboxSender<T> {
    shared: Arc<Shared<T>>,
}

/// The reading half of a [`channel`].
#[derive(Debug)]
pub struct MailboxReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// A new empty mailbox, as its two halves.
pub fn channel<T: Send>() -> (MailboxSender<T>, MailboxReceiver<T>) {
    let shared = Arc::new(Shared {
        full: AtomicBool::new(false),
        slot: Slot::new(None),
    });
    (
        MailboxSender {
            shared: shared.clone(),
        },
        MailboxReceiver { shared },
    )
}

impl<T: Send> MailboxSender<T> {
    /// Puts `value` in the slot, or gives it back if the previous one was not taken yet.
    pub fn put(&mut self, value: T) -> Result<(), T> {
        // Acquire: partner of the receiver's Release store of `false` (its take of the
        // previous value happened before our write).
        if self.shared.full.load(Ordering::Acquire) {
            return Err(value);
        }
        // SAFETY: `full` is false, so the receiver does not touch the slot until our
        // Release store below; we are the only sender (not Clone, `&mut self`).
        unsafe { self.shared.slot.with_mut(|s| *s = Some(value)) };
        // Release: publishes the write (partner: the receiver's Acquire load).
        self.shared.full.store(true, Ordering::Release);
        Ok(())
    }

    /// `true` while a value waits to be taken.
    pub fn is_full(&self) -> bool {
        // Acquire: as in `put`.
        self.shared.full.load(Ordering::Acquire)
    }
}

impl<T: Send> MailboxReceiver<T> {
    /// `true` while a value waits to be taken.
    pub fn is_waiting(&self) -> bool {
        // Acquire: partner of the sender's Release store of `true`.
        self.shared.full.load(Ordering::Acquire)
    }

    /// Takes the value waiting in the slot, if any.
    pub fn take(&mut self) -> Option<T> {
        // Acquire: partner of the sender's Release store of `true`.
        if !self.shared.full.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: `full` is true, so the sender does not touch the slot until our
        // Release store below; we are the only receiver.
        let value = unsafe { self.shared.slot.with_mut(Option::take) };
        // Release: our take happens before the sender's next write (partner: its
        // Acquire load in `put`).
        self.shared.full.store(false, Ordering::Release);
        value
    }
}

#[cfg(all(test, not(qos_loom)))]
mod tests {
    use super::*;

    #[test]
    fn t4_mailbox_hands_over_once_and_refuses_a_second_put() {
        let (mut tx, mut rx) = channel();
        assert_eq!(rx.take(), None);
        tx.put(1).unwrap();
        assert!(tx.is_full());
        assert_eq!(tx.put(2), Err(2));
        assert_eq!(rx.take(), Some(1));
        assert_eq!(rx.take(), None);
        tx.put(3).unwrap();
        assert_eq!(rx.take(), Some(3));
    }
}
