//! Per-session rate limits of `/ws`: one token bucket per kind of client message, and one more
//! for the messages refused by the others (a session that keeps sending over its limits is
//! closed). Pure: every call takes `now`, so the tests run on made-up instants.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use super::protocol::ClientMessage;

/// A token bucket's shape: `burst` messages at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// `"PER_SECOND,BURST"`, e.g. `"5,20"` or `"0.5,10"`: the form of the `--ws-rate-*` flags.
impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}`: must be PER_SECOND,BURST (e.g. 5,20): a rate from 0.01 to 100000 \
                 messages per second and a burst from 1 to 100000"
            )
        };
        let (rate, burst) = s.split_once(',').ok_or_else(bad)?;
        let per_second: f64 = rate.trim().parse().map_err(|_| bad())?;
        let burst: u32 = burst.trim().parse().map_err(|_| bad())?;
        if !(0.01..=100_000.0).contains(&per_second) || !(1..=100_000).contains(&burst) {
            return Err(bad());
        }
        Ok(Self { per_second, burst })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.per_second, self.burst)
    }
}

/// A token bucket, full at the start.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens =
            (self.tokens + elapsed * self.rate.per_second).min(f64::from(self.rate.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The kinds of client message that have a bucket each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MediaState,
    Candidate,
    /// `publish_offer` and `subscribe_answer`.
    Negotiation,
    /// `ping` (and WebSocket ping frames).
    Ping,
    /// `auth`, `join`, `leave`.
    Session,
    /// Messages that cannot be read: invalid JSON, unknown type, binary, over the size limit.
    Malformed,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::MediaState,
        Kind::Candidate,
        Kind::Negotiation,
        Kind::Ping,
        Kind::Session,
        Kind::Malformed,
    ];

    pub fn of(msg: &ClientMessage) -> Kind {
        match msg {
            ClientMessage::MediaState { .. } => Kind::MediaState,
            ClientMessage::Candidate { .. } => Kind::Candidate,
            ClientMessage::PublishOffer { .. } | ClientMessage::SubscribeAnswer { .. } => {
                Kind::Negotiation
            }
            ClientMessage::Ping => Kind::Ping,
            ClientMessage::Auth { .. } | ClientMessage::Join { .. } | ClientMessage::Leave => {
                Kind::Session
            }
        }
    }

    /// As named in the `rate_limited` error.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MediaState => "media_state",
            Kind::Candidate => "candidate",
            Kind::Negotiation => "publish_offer/subscribe_answer",
            Kind::Ping => "ping",
            Kind::Session => "auth/join/leave",
            Kind::Malformed => "malformed",
        }
    }
}

/// The limits of every session (from the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub media_state: Rate,
    pub candidate: Rate,
    pub negotiation: Rate,
    pub ping: Rate,
    pub session: Rate,
    pub malformed: Rate,
    /// Messages refused by the limits above; past this the session is closed.
    pub abuse: Rate,
}

impl Limits {
    fn rate(&self, kind: Kind) -> Rate {
        match kind {
            Kind::MediaState => self.media_state,
            Kind::Candidate => self.candidate,
            Kind::Negotiation => self.negotiation,
            Kind::Ping => self.ping,
            Kind::Session => self.session,
            Kind::Malformed => self.malformed,
        }
    }
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within its limit: act on it.
    Allow,
    /// Over its limit: answer `rate_limited`, do nothing else.
    Limited,
    /// Over its limit, and the session has been over its limits too often: close it.
    Abusive,
}

/// One session's buckets.
#[derive(Debug, Clone)]
pub struct Limiter {
    buckets: [Bucket; Kind::ALL.len()],
    abuse: Bucket,
}

impl Limiter {
    pub fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            buckets: Kind::ALL.map(|k| Bucket::new(limits.rate(k), now)),
            abuse: Bucket::new(limits.abuse, now),
        }
    }

    pub fn check(&mut self, kind: Kind, now: Instant) -> Verdict {
        if self.buckets[kind as usize].take(now) {
            Verdict::Allow
        } else if self.abuse.take(now) {
            Verdict::Limited
        } else {
            Verdict::Abusive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("5,20".parse(), Ok(Rate::new(5.0, 20)));
        assert_eq!(" 0.5 , 10 ".parse(), Ok(Rate::new(0.5, 10)));
        for bad in [
            "", "5", "5,", ",5", "0,10", "5,0", "-1,3", "x,3", "NaN,3", "5,1e3",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(Rate::new(0.5, 10).to_string(), "0.5,10");
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Rate::new(2.0, 3), t0);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(400)));
        assert!(
            b.take(t0 + Duration::from_millis(500)),
            "one token per 500 ms"
        );
        assert!(!b.take(t0 + Duration::from_millis(600)));
        // A long pause refills up to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn a_clock_going_backwards_takes_nothing_extra() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = Bucket::new(Rate::new(1.0, 1), t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 - Duration::from_secs(5)));
        assert!(!b.take(t0 + Duration::from_millis(900)));
        assert!(b.take(t0 + Duration::from_secs(1)));
    }

    fn limits() -> Limits {
        Limits {
            media_state: Rate::new(1.0, 2),
            candidate: Rate::new(1.0, 5),
            negotiation: Rate::new(1.0, 5),
            ping: Rate::new(1.0, 5),
            session: Rate::new(1.0, 5),
            malformed: Rate::new(1.0, 5),
            abuse: Rate::new(1.0, 3),
        }
    }

    #[test]
    fn kinds_have_their_own_buckets_and_abuse_closes() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&limits(), t0);
        assert_eq!(l.check(Kind::MediaState, t0), Verdict::Allow);
        assert_eq!(l.check(Kind::MediaState, t0), Verdict::Allow);
        assert_eq!(l.check(Kind::MediaState, t0), Verdict::Limited);
        // another kind is untouched by the first one's limit
        assert_eq!(l.check(Kind::Candidate, t0), Verdict::Allow);
        assert_eq!(l.check(Kind::MediaState, t0), Verdict::Limited);
        assert_eq!(l.check(Kind::MediaState, t0), Verdict::Limited);
        assert_eq!(l.check(Kind::MediaState, t0), Verdict::Abusive);
    }

    #[test]
    fn occasional_overruns_are_forgiven() {
        let t0 = Instant::now();
        let mut l = Limiter::new(&limits(), t0);
        // Over the media_state limit once a second for a minute (as fast as the abuse
        // bucket refills): never abusive.
        for s in 0..60 {
            let t = t0 + Duration::from_secs(s);
            let verdicts: Vec<_> = (0..2).map(|_| l.check(Kind::MediaState, t)).collect();
            assert!(
                s == 0 || verdicts.contains(&Verdict::Limited),
                "second {s}: {verdicts:?}"
            );
            assert!(
                !verdicts.contains(&Verdict::Abusive),
                "second {s}: {verdicts:?}"
            );
        }
    }

    #[test]
    fn every_message_has_a_kind() {
        let m: ClientMessage = serde_json::from_str(r#"{"type":"leave"}"#).unwrap();
        assert_eq!(Kind::of(&m), Kind::Session);
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe_answer","sdp":""}"#).unwrap();
        assert_eq!(Kind::of(&m), Kind::Negotiation);
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "ALL is in declaration order");
        }
    }
}
