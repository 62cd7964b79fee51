//! Control plane of the QoS dataplane: everything an operator needs to change the
//! dataplane safely and to prove afterwards what it did.
//!
//! * [`policy`]: the serde-facing policy file (TOML, JSON), validated as a whole into
//!   the dataplane's `Policy` (C1), versions (C2) and ed25519 signatures (C3).
//! * [`audit`]: the append-only, hash-chained audit log and its verifier (C5).
//! * [`files`]: opening the files an operator names without hanging on a FIFO.
//! * [`logs`]: JSON-lines event logs through `tracing` (O3).
//! * [`store`]: `metrics.db`, QoSMetrics rows in a real SQLite file (O2).
//! * [`hlog`]: HdrHistogram interval logs (`.hlog`) of sojourn and cost (O4).
//! * [`health`]: health states and the degrade state machine (O5).
//! * [`metrics`]: the Prometheus exposition, read from the runtime at scrape time (O1).
//! * [`integrity`]: the integrity report (O6).
//! * [`api`]: the HTTP control API.
//! * [`plane`]: the control plane that ties them together on its own thread.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod files;
pub mod health;
pub mod hlog;
pub mod integrity;
pub mod logs;
pub mod metrics;
pub mod plane;
pub mod policy;
pub mod store;
