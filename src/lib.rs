//! # Switchboard
//!
//! A selective forwarding unit for WebRTC calls of up to 20 people: one binary, one UDP port.
//!
//! ## Shape
//!
//! - **Control plane** (async: tokio + axum): HTTP API, WebSocket signaling (`signal`), auth.
//! - **Media plane** (`media`, synchronous, sans-I/O, no tokio, no locks): worker threads, each
//!   owning one UDP socket and every `rtc` peer connection of the rooms placed on it.
//! - **Bridge** (`bridge`): the only way between them. Typed `Command`s go in over a bounded
//!   queue with a oneshot reply; messages for each participant come out over a bounded queue.
//!
//! ## Run loop
//!
//! A media worker sleeps in `ppoll` on its socket and its command waker until the earliest peer
//! timer. Each turn drains commands, reads datagrams in batches (`recvmmsg`), routes each to a
//! peer (by source address, or by the STUN USERNAME for a new address), forwards RTP to every
//! down-track, runs due timers, and sends everything the touched peers produced in one batch
//! (`sendmmsg`, each run of datagrams to one peer as one UDP GSO send). Every function there
//! takes `now: Instant`.
//!
//! ## Errors and panics
//!
//! Bad input from the network or a client is an error value, counted (`media::stats::Drop`) or
//! answered with a stable error code; it never panics. An `expect` stands only on an invariant
//! of our own tables, with the reason it holds.

pub mod api;
pub mod auth;
pub mod bridge;
pub mod config;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod media;
pub mod metrics;
pub mod serve;
pub mod signal;
pub mod store;
pub mod whip;
