//! The fuzz targets on stable: each replays its seed corpus (`fuzz/corpus/<target>/`) and then a
//! bounded number of inputs made from it (bit flips, truncations, splices, line edits) and of
//! random bytes, from a fixed seed. A panic fails the test with the input in hex, to be added to
//! the corpus (`fuzz/corpus/<target>/`) once fixed.
//!
//! cargo-fuzz runs the same targets for as long as one likes: see `fuzz/README.md`.
//!
//! `cargo test --ignored --test fuzz_replay write_seed_corpus` writes the seeds that the
//! server's own test clients produce (`switchboard::fuzz::seed_inputs`) into the corpus.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use switchboard::fuzz::TARGETS;

/// Most made-up inputs per target after its corpus.
const MUTATIONS: usize = 2000;
/// Longest a target spends on made-up inputs (its corpus is always replayed in full).
const MUTATION_TIME: Duration = Duration::from_secs(3);
/// Longest made-up input.
const MAX_LEN: usize = 4096;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes = std::fs::read(&path).expect("corpus file reads");
            (path.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    files
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one input; a panic fails the test, naming the input.
fn run(target: &str, entry: fn(&[u8]), what: &str, input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| entry(input));
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "fuzz target {target} panicked ({message}) on {what}, {} bytes:\n{}",
            input.len(),
            hex(input)
        );
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One made-up input: random bytes, or a corpus file changed in one to four ways.
fn mutate(rng: &mut Rng, corpus: &[(String, Vec<u8>)]) -> Vec<u8> {
    if corpus.is_empty() || rng.below(8) == 0 {
        let len = rng.below(512);
        return rng.bytes(len);
    }
    let mut input = corpus[rng.below(corpus.len())].1.clone();
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            // bit flips
            0 => {
                for _ in 0..1 + rng.below(8) {
                    if len > 0 {
                        let i = rng.below(len);
                        input[i] ^= 1 << rng.below(8);
                    }
                }
            }
            // an interesting byte
            1 => {
                if len > 0 {
                    let i = rng.below(len);
                    input[i] = [0, 1, 0x7f, 0x80, 0xff, b':', b'\r', b'\n', b' '][rng.below(9)];
                }
            }
            // truncation
            2 => input.truncate(rng.below(len + 1)),
            // a chunk removed
            3 => {
                let at = rng.below(len + 1);
                let end = (at + rng.below(64)).min(len);
                input.drain(at..end);
            }
            // random bytes inserted
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes = rng.bytes(n);
                input.splice(at..at, bytes);
            }
            // a chunk repeated
            5 => {
                if len > 0 {
                    let at = rng.below(len);
                    let end = (at + 1 + rng.below(256)).min(len);
                    let chunk = input[at..end].to_vec();
                    let times = 1 + rng.below(8);
                    for _ in 0..times {
                        input.splice(end..end, chunk.iter().copied());
                    }
                }
            }
            // spliced with another corpus file
            6 => {
                let other = &corpus[rng.below(corpus.len())].1;
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            // a line removed or repeated (SDP, fragments)
            7 | 8 => {
                let mut lines: Vec<Vec<u8>> =
                    input.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    if rng.below(2) == 0 {
                        lines.remove(i);
                    } else {
                        let line = lines[i].clone();
                        lines.insert(rng.below(lines.len() + 1), line);
                    }
                }
                input = lines.join(&b'\n');
            }
            _ => unreachable!("below(9)"),
        }
    }
    input.truncate(MAX_LEN);
    input
}

/// The whole check of one target: its corpus, then made-up inputs.
fn replay(target: &str) {
    let entry = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("a target of switchboard::fuzz");
    let corpus = corpus(target);
    assert!(
        !corpus.is_empty(),
        "{target}: no seed corpus in {}",
        corpus_dir(target).display()
    );
    for (path, input) in &corpus {
        run(target, entry, path, input);
    }
    // A different sequence per target, the same on every run.
    let seed = target.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut made = 0;
    while made < MUTATIONS && started.elapsed() < MUTATION_TIME {
        let input = mutate(&mut rng, &corpus);
        run(target, entry, &format!("made-up input #{made}"), &input);
        made += 1;
    }
    eprintln!(
        "{target}: {} corpus files and {made} made-up inputs in {:.1?}",
        corpus.len(),
        started.elapsed()
    );
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    let tested = [
        "datagram",
        "media_packet",
        "ws_message",
        "publish_offer",
        "subscribe_answer",
        "whip_offer",
        "whep_offer",
        "whip_patch",
    ];
    let targets: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(targets, tested, "a target without a test below");
    for target in targets {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{target}.rs"));
        assert!(file.exists(), "no cargo-fuzz target {}", file.display());
    }
}

/// The seeds get where they are meant to (otherwise the targets would fuzz nothing but an
/// early `return`): every SDP and `/ws` seed is accepted, every datagram seed is routed to a
/// connection, and the plain media packets reach the worker, one of them forwarded to the
/// subscriber and one asking for a keyframe.
#[test]
fn seeds_reach_the_server() {
    switchboard::fuzz::observe(true);
    let mut media_outcomes = Vec::new();
    for (target, entry) in TARGETS {
        for (path, input) in corpus(target) {
            if path.contains("/crash-") || path.contains("/regression-") {
                continue; // found by fuzzing: expected to be refused
            }
            entry(&input);
            let outcome = switchboard::fuzz::outcome();
            match *target {
                "datagram" => assert!(
                    outcome.contains("datagrams_in+1")
                        && !outcome.contains("drop:unknown_source")
                        && !outcome.contains("drop:not_webrtc"),
                    "{path}: {outcome:?}"
                ),
                "media_packet" => {
                    assert!(
                        outcome.contains("datagrams_in+") && !outcome.contains("drop:"),
                        "{path}: {outcome:?}"
                    );
                    media_outcomes.push(outcome);
                }
                _ => assert_eq!(outcome, "ok", "{path}"),
            }
        }
    }
    for counter in ["rtp_forwarded+", "keyframe_requests_in+"] {
        assert!(
            media_outcomes.iter().any(|o| o.contains(counter)),
            "no media_packet seed moved {counter}: {media_outcomes:?}"
        );
    }
    switchboard::fuzz::observe(false);
}

#[test]
fn datagram() {
    replay("datagram");
}

#[test]
fn media_packet() {
    replay("media_packet");
}

#[test]
fn ws_message() {
    replay("ws_message");
}

#[test]
fn publish_offer() {
    replay("publish_offer");
}

#[test]
fn subscribe_answer() {
    replay("subscribe_answer");
}

#[test]
fn whip_offer() {
    replay("whip_offer");
}

#[test]
fn whep_offer() {
    replay("whep_offer");
}

#[test]
fn whip_patch() {
    replay("whip_patch");
}

/// Runs every file of `$FUZZ_INPUTS` (a directory) through target `$FUZZ_TARGET`, e.g. the
/// corpus libFuzzer grew, to see on stable what it does (`SWITCHBOARD_FUZZ_DEBUG=1` tells
/// when and why the rig is rebuilt).
#[test]
#[ignore = "replays a directory named in the environment; run by hand"]
fn replay_inputs() {
    let target = std::env::var("FUZZ_TARGET").expect("FUZZ_TARGET");
    let dir = std::env::var("FUZZ_INPUTS").expect("FUZZ_INPUTS");
    let entry = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("a target of switchboard::fuzz");
    let started = Instant::now();
    let mut n = 0;
    for entry_ in std::fs::read_dir(&dir).expect("FUZZ_INPUTS is a directory") {
        let path = entry_.expect("directory entry").path();
        let input = std::fs::read(&path).expect("input reads");
        run(&target, entry, &path.display().to_string(), &input);
        n += 1;
    }
    eprintln!("{target}: {n} inputs in {:.1?}", started.elapsed());
}

/// Writes `switchboard::fuzz::seed_inputs()` into `fuzz/corpus/<target>/`, named by their
/// SHA-1 as libFuzzer names its own.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    use sha1::Digest;
    for (target, input) in switchboard::fuzz::seed_inputs() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        let name = hex(&sha1::Sha1::digest(&input));
        std::fs::write(dir.join(name), &input).expect("corpus file writes");
    }
}
