//! WebSocket signaling: the protocol types, the per-session limits and one session per socket.

pub mod limits;
pub mod protocol;
pub mod session;
