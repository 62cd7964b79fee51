//! loom model checks of the workspace's concurrent protocols (DESIGN T5).
//!
//! The models live in `tests/` and are compiled to nothing unless built with
//! `RUSTFLAGS="--cfg qos_loom"`:
//!
//! ```text
//! RUSTFLAGS="--cfg qos_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p qos-loom-tests --release --target-dir target/loom
//! ```
//!
//! * `tests/shm_ring.rs`: the `qos-shm-ring` SPSC protocol (push/pop, wrap-around,
//!   full/empty, batch commit and release, abandonment of either side).
//! * `tests/runtime.rs`: the `qos-dataplane` runtime, through its `sync` facade
//!   (`dataplane/src/runtime/sync.rs`):
//!   * `t5_doorbell_no_lost_wakeup`, `t5_doorbell_no_lost_wakeup_two_wakers`: a worker
//!     sleeping on its `Doorbell` while one or two producers publish work (Release)
//!     and ring; every interleaving ends (a lost wake-up is a loom deadlock).
//!   * `t5_mailbox_histogram_exchange_round_trip`: the T4 histogram exchange over two
//!     mailboxes (an empty set out, the full one back, a second put refused and handed
//!     back intact); no value lost or duplicated, every slot access ordered.
//!   * `t5_mailbox_refuses_second_put_until_taken`: a put into a full mailbox is
//!     refused; after the take, the retry is delivered in order.
//!   * `t5_snapshot_adoption_monotone_and_newest_after_publish`: T3 adoption on the
//!     loom stand-in of the arc-swap cell: whole versions, never backwards, the newest
//!     once the publisher is joined.
//!   * `t5_counters_single_writer_monotone_per_word`: T4 Relaxed counter words
//!     (reached through the `#[doc(hidden)]` `runtime::loom_access`, which exists only
//!     under `qos_loom`): every value read was published, per-word monotone, the last
//!     one after the join. `read` loads every word (about 170), so this model raises
//!     loom's branch limit.
//!
//! # The models have teeth
//!
//! Each weakening below was applied to the protocol alone, the runtime models run with
//! the command above, and the change reverted (all six pass on the real code in about
//! 7 s):
//!
//! | change to the protocol | models that fail | loom's message |
//! |---|---|---|
//! | `Doorbell::ring`: drop `fence(SeqCst)` | both doorbell models | `deadlock; threads = [(Id(0), Blocked(Location(None))), (Id(1), Terminated)]` (the worker parked for good) |
//! | `Doorbell::sleep_unless`: drop `fence(SeqCst)` | both doorbell models | same deadlock |
//! | `MailboxSender::put`: store of `true` `Relaxed` | both mailbox models | `Causality violation: Concurrent write accesses to UnsafeCell.` |
//! | `MailboxReceiver::take`: store of `false` `Relaxed` | `..refuses_second_put_until_taken` | same causality violation |
//! | `MailboxSender::put`: load of `full` `Relaxed` | `..refuses_second_put_until_taken` | same causality violation |
//! | `MailboxReceiver::take`: load of `full` `Relaxed` | both mailbox models | same causality violation |
//! | `SnapshotCell::publish`: bump the generation before storing the value | the snapshot model | `the newest version after the join` (the load returns 2, not 3) |
//! | `Counters::publish_hot`: skip one word too many | the counters model | `the last publication after the join` |
//!
//! Not caught, by construction: the generation bump in the loom stand-in made `Relaxed`,
//! because the stand-in's mutex already orders the value (the real cell is arc-swap,
//! tested with ordinary threads); and the counters' orderings, which are `Relaxed`
//! already (nothing is published through a counter word).
