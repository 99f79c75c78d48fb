//! Keyframes: recognising them in RTP payloads, and throttling requests for them.

use std::time::{Duration, Instant};

/// At most one keyframe request per track per this interval reaches the publisher. A new leg
/// starts at a keyframe, and one that just missed the last may wait this long for the next, so
/// it is short; requests within it are merged into one at its end.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Video codecs the Forwarder knows how to inspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
    Av1,
}

impl VideoCodec {
    pub fn from_mime(mime: &str) -> Option<Self> {
        let sub = mime.split_once('/').map_or(mime, |(_, s)| s);
        match sub.to_ascii_lowercase().as_str() {
            "vp8" => Some(Self::Vp8),
            "vp9" => Some(Self::Vp9),
            "h264" => Some(Self::H264),
            "av1" => Some(Self::Av1),
            _ => None,
        }
    }
}

/// Does this RTP payload start a keyframe?
pub fn is_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_keyframe(payload),
        VideoCodec::Vp9 => vp9_keyframe(payload),
        VideoCodec::H264 => h264_keyframe(payload),
        VideoCodec::Av1 => av1_keyframe(payload),
    }
}

/// RFC 7741 §4.2/§4.3: payload descriptor, then the VP8 frame tag whose P bit is 0 on keyframes.
fn vp8_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let (x, s, pid) = (b0 & 0x80 != 0, b0 & 0x10 != 0, b0 & 0x07);
    if !s || pid != 0 {
        return false;
    }
    let mut i = 1;
    if x {
        let Some(&b1) = p.get(1) else { return false };
        i = 2;
        if b1 & 0x80 != 0 {
            // PictureID: 7 or 15 bits
            let Some(&pic) = p.get(i) else { return false };
            i += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if b1 & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if b1 & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    p.get(i).is_some_and(|tag| tag & 0x01 == 0)
}

/// VP9 payload descriptor: P (inter-picture predicted) clear and B (start of frame) set.
fn vp9_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

/// RFC 6184: an IDR slice or SPS, alone, in a STAP-A, or starting an FU-A.
fn h264_keyframe(p: &[u8]) -> bool {
    let is_key = |nal_type: u8| nal_type == 5 || nal_type == 7;
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        24 => {
            let mut rest = &p[1..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + size) else {
                    return false;
                };
                if nal.first().is_some_and(|h| is_key(h & 0x1f)) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        28 => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

/// AV1 RTP aggregation header: N (first packet of a coded video sequence) set.
fn av1_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b & 0x08 != 0)
}

/// Throttles keyframe requests for one track: one goes out at once, later ones within the
/// interval are merged into one that goes out when the interval ends.
#[derive(Debug, Default, Clone)]
pub struct KeyframeThrottle {
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    /// Someone wants a keyframe. True: send the request now.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.due(now) {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// True once a merged request is due; call from the timer.
    pub fn poll(&mut self, now: Instant) -> bool {
        self.pending && self.request(now)
    }

    /// When `poll` should be called next.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.pending, self.last_sent) {
            (true, Some(last)) => Some(last + KEYFRAME_REQUEST_INTERVAL),
            _ => None,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|last| now.saturating_duration_since(last) >= KEYFRAME_REQUEST_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_to_one_per_interval_and_keeps_the_merged_request() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut k = KeyframeThrottle::default();
        assert!(k.request(t0));
        assert!(!k.request(t0 + ms(100)));
        assert!(!k.request(t0 + KEYFRAME_REQUEST_INTERVAL - ms(50)));
        assert_eq!(k.deadline(), Some(t0 + KEYFRAME_REQUEST_INTERVAL));
        assert!(!k.poll(t0 + KEYFRAME_REQUEST_INTERVAL - ms(1)));
        assert!(k.poll(t0 + KEYFRAME_REQUEST_INTERVAL));
        let later = t0 + 3 * KEYFRAME_REQUEST_INTERVAL;
        assert!(!k.poll(later), "nothing pending any more");
        assert_eq!(k.deadline(), None);
        assert!(k.request(later));
    }

    #[test]
    fn vp8_keyframes() {
        // S=1, PID=0, no extension, frame tag P=0
        assert!(is_keyframe(VideoCodec::Vp8, &[0x10, 0x00, 0x9d]));
        // inter frame
        assert!(!is_keyframe(VideoCodec::Vp8, &[0x10, 0x01]));
        // not the start of a partition
        assert!(!is_keyframe(VideoCodec::Vp8, &[0x00, 0x00]));
        // X=1, I=1 with 15-bit picture id, then tag P=0 (Chrome's usual layout)
        assert!(is_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0x80, 0x81, 0x23, 0x50]
        ));
        assert!(!is_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0x80, 0x81, 0x23, 0x51]
        ));
        // X=1, I, L, T all set
        assert!(is_keyframe(
            VideoCodec::Vp8,
            &[0x90, 0xE0, 0x05, 0x01, 0x20, 0x00]
        ));
        // truncated
        assert!(!is_keyframe(VideoCodec::Vp8, &[0x90, 0x80]));
        assert!(!is_keyframe(VideoCodec::Vp8, &[]));
    }

    #[test]
    fn h264_keyframes() {
        assert!(is_keyframe(VideoCodec::H264, &[0x65, 0x88]));
        assert!(is_keyframe(VideoCodec::H264, &[0x67, 0x42]));
        assert!(!is_keyframe(VideoCodec::H264, &[0x41, 0x9a]));
        // STAP-A carrying SPS
        assert!(is_keyframe(
            VideoCodec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]
        ));
        // STAP-A with a bogus length
        assert!(!is_keyframe(VideoCodec::H264, &[0x78, 0x00, 0x09, 0x41]));
        // FU-A start of an IDR / middle of an IDR
        assert!(is_keyframe(VideoCodec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe(VideoCodec::H264, &[0x7c, 0x05, 0x00]));
    }

    #[test]
    fn mime_types() {
        assert_eq!(VideoCodec::from_mime("video/VP8"), Some(VideoCodec::Vp8));
        assert_eq!(VideoCodec::from_mime("video/h264"), Some(VideoCodec::H264));
        assert_eq!(VideoCodec::from_mime("audio/opus"), None);
    }
}
