//! WebSocket signaling: the protocol types and one session per socket.

pub mod protocol;
pub mod session;
