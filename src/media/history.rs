//! The last packets of a published video track, kept once for all its subscribers, so that the
//! worker answers their NACKs from one copy instead of a NACK responder per leg that copies
//! every forwarded packet again (docs/performance.md: that per-leg copy was ~4 % of the
//! server's CPU at 20 participants).

use rtc::rtp::Packet;

/// Packets kept per track: 8.5 s of 1 Mbit/s video at 120 packets/s, far longer than any
/// retransmission is still useful.
const SLOTS: usize = 1024;

pub struct RtpHistory {
    slots: Box<[Option<Packet>]>,
}

impl Default for RtpHistory {
    fn default() -> Self {
        Self {
            slots: vec![None; SLOTS].into_boxed_slice(),
        }
    }
}

impl RtpHistory {
    /// Keeps `packet` (in its publisher's numbering), replacing the one 1024 numbers older.
    pub fn push(&mut self, packet: Packet) {
        let slot = usize::from(packet.header.sequence_number) % SLOTS;
        self.slots[slot] = Some(packet);
    }

    /// The kept packet numbered `seq`, if it is still there.
    pub fn get(&self, seq: u16) -> Option<&Packet> {
        self.slots[usize::from(seq) % SLOTS]
            .as_ref()
            .filter(|p| p.header.sequence_number == seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p.payload = vec![seq as u8; 4].into();
        p
    }

    #[test]
    fn keeps_the_last_1024_numbers_across_the_wrap() {
        let mut h = RtpHistory::default();
        for i in 0..1500u32 {
            h.push(packet((65_000 + i) as u16));
        }
        let newest = (65_000u32 + 1499) as u16;
        assert_eq!(h.get(newest).unwrap().header.sequence_number, newest);
        assert_eq!(h.get(newest).unwrap().payload[0], newest as u8);
        let oldest_kept = newest.wrapping_sub(1023);
        assert!(h.get(oldest_kept).is_some());
        // Overwritten by the packet 1024 numbers later.
        assert!(h.get(oldest_kept.wrapping_sub(1)).is_none());
        assert!(h.get(newest.wrapping_add(1)).is_none());
    }
}
