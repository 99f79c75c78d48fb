//! The media plane: one worker thread owns one UDP socket, the rooms placed on it and every
//! peer connection in those rooms. No tokio, no locks; time is a parameter.
//!
//! One turn of the loop (`Worker::turn`):
//! 1. drain commands from the control plane;
//! 2. read datagrams in batches and route each: a known source address → its peer; an unknown
//!    one → only if it is a STUN Binding request whose USERNAME names one of our ufrags;
//! 3. each touched peer's output is handled: RTP is forwarded to the down-tracks (payload shared,
//!    header rewritten per leg), RTCP keyframe requests go upstream (throttled), events update
//!    the room;
//! 4. peers whose timers are due get `handle_timeout`;
//! 5. every touched peer's `poll_write` is drained into one batched send (`sendmmsg`, with each
//!    run of datagrams to one peer as one UDP GSO message); during a burst of input this also
//!    happens in step 3, whenever a `sendmmsg` batch of forwarded packets has been written.
//!
//! Forwarded packets are written past `rtc`'s interceptors (`write_rtp_unintercepted`), so the
//! worker does the write side's work itself: sender reports (`sender_report`) and NACKs
//! (`history`).

pub mod demux;
pub mod history;
pub mod keyframe;
pub mod munger;
pub mod net;
pub mod peer;
pub mod room;
pub mod sender_report;
pub mod stats;
mod worker;

pub use worker::{Limits, Worker, spawn};
