//! Sequence number, timestamp and SSRC rewriting for one DownTrack (a `Munger`).
//!
//! A subscriber joins a stream at some packet; from its point of view the stream must start at
//! a sequence number and timestamp of the DownTrack's own, with no gaps the publisher did not
//! make. The first forwarded packet fixes the offsets; every later packet (including late and
//! retransmitted ones) is shifted by the same offsets, so wrap-around is handled by wrapping
//! arithmetic and reordering is preserved.

/// The rewrite for one packet on one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
}

#[derive(Debug, Clone)]
pub struct Munger {
    ssrc: u32,
    offsets: Option<(u16, u32)>,
    first_seq: u16,
    first_ts: u32,
}

impl Munger {
    /// `first_seq`/`first_ts` are where this leg's numbering starts (random in production).
    pub fn new(ssrc: u32, first_seq: u16, first_ts: u32) -> Self {
        Self {
            ssrc,
            offsets: None,
            first_seq,
            first_ts,
        }
    }

    /// The leg's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn started(&self) -> bool {
        self.offsets.is_some()
    }

    /// The rewrite of a packet on a leg that has already started, without changing anything
    /// (a retransmission).
    pub fn map(&self, seq: u16, ts: u32) -> Option<Rewrite> {
        self.offsets.map(|offsets| self.shift(offsets, seq, ts))
    }

    /// The incoming sequence number this leg numbered `out_seq`, once the leg has started.
    pub fn incoming_seq(&self, out_seq: u16) -> Option<u16> {
        self.offsets
            .map(|(seq_off, _)| out_seq.wrapping_sub(seq_off))
    }

    /// The rewrite of an incoming packet with `seq`/`ts` (fixing the offsets on the first).
    pub fn rewrite(&mut self, seq: u16, ts: u32) -> Rewrite {
        let offsets = *self.offsets.get_or_insert((
            self.first_seq.wrapping_sub(seq),
            self.first_ts.wrapping_sub(ts),
        ));
        self.shift(offsets, seq, ts)
    }

    fn shift(&self, (seq_off, ts_off): (u16, u32), seq: u16, ts: u32) -> Rewrite {
        Rewrite {
            ssrc: self.ssrc,
            sequence_number: seq.wrapping_add(seq_off),
            timestamp: ts.wrapping_add(ts_off),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_leg_maps_both_ways_without_changing() {
        let mut m = Munger::new(42, 65_530, 5000);
        assert_eq!(m.map(100, 1), None);
        assert_eq!(m.incoming_seq(65_530), None);
        m.rewrite(100, 90_000);
        let r = m.map(110, 90_300).unwrap();
        assert_eq!((r.ssrc, r.sequence_number, r.timestamp), (42, 4, 5300));
        assert_eq!(m.incoming_seq(4), Some(110));
        assert_eq!(m.rewrite(110, 90_300), r);
    }

    #[test]
    fn first_packet_maps_to_leg_start() {
        let mut m = Munger::new(42, 1000, 5000);
        assert!(!m.started());
        let r = m.rewrite(30_000, 123_456);
        assert_eq!(
            r,
            Rewrite {
                ssrc: 42,
                sequence_number: 1000,
                timestamp: 5000
            }
        );
        assert!(m.started());
        assert_eq!(m.rewrite(30_001, 126_456).sequence_number, 1001);
        assert_eq!(m.rewrite(30_001, 126_456).timestamp, 8000);
    }

    #[test]
    fn continuous_across_input_wrap_around() {
        let mut m = Munger::new(1, 100, 0);
        let out: Vec<u16> = [65_533u16, 65_534, 65_535, 0, 1, 2]
            .iter()
            .map(|&s| m.rewrite(s, 0).sequence_number)
            .collect();
        assert_eq!(out, vec![100, 101, 102, 103, 104, 105]);
    }

    #[test]
    fn continuous_across_output_wrap_around() {
        let mut m = Munger::new(1, 65_534, u32::MAX - 1);
        let seqs: Vec<u16> = (10u16..14)
            .map(|s| m.rewrite(s, 0).sequence_number)
            .collect();
        assert_eq!(seqs, vec![65_534, 65_535, 0, 1]);
        let mut m = Munger::new(1, 0, u32::MAX - 1);
        assert_eq!(m.rewrite(0, 10).timestamp, u32::MAX - 1);
        assert_eq!(m.rewrite(1, 13).timestamp, 1);
    }

    #[test]
    fn reordered_and_retransmitted_packets_keep_their_place() {
        let mut m = Munger::new(1, 500, 0);
        assert_eq!(m.rewrite(10, 0).sequence_number, 500);
        assert_eq!(m.rewrite(12, 0).sequence_number, 502);
        assert_eq!(m.rewrite(11, 0).sequence_number, 501);
        assert_eq!(m.rewrite(9, 0).sequence_number, 499);
    }
}
