//! Shadow comparison bookkeeping, per worker. A sampled champion-served
//! request is copied to the challenger's cluster; the user never waits for
//! the copy. The copy is sent from the root context (it outlives the user's
//! stream, so a slow challenger is still measured), and the two predictions
//! are compared when both are known, in whichever order they arrive.
//!
//! ```text
//!  user request ──begin──► pending ──ready(headers, body)──► queue ──tick: sent(token)──►
//!  user response ──champion_bin(id, bin)──┐
//!  shadow answer ──answered(token, bin)───┴──► verdict: agree / disagree / incomplete
//!  expire(now): entries older than twice the timeout end as incomplete
//! ```

use std::collections::HashMap;

/// A request ready to be copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowCall {
    pub id: u64,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The comparison of one shadowed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Agree,
    Disagree,
    /// One of the predictions was missing or unparsed.
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Pending {
    created_ns: u64,
    /// The user's response: `Some(bin)`, `Some(None)` unparsed.
    champion: Option<Option<u16>>,
    /// The shadow's answer, same encoding.
    challenger: Option<Option<u16>>,
}

/// Per-worker shadow state.
#[derive(Debug)]
pub struct Shadows {
    max_in_flight: usize,
    /// Whether predictions are configured (otherwise there is nothing to compare).
    compare: bool,
    expire_after_ns: u64,
    next_id: u64,
    queue: Vec<ShadowCall>,
    pending: HashMap<u64, Pending>,
    /// Dispatch token → (id, sent at).
    tokens: HashMap<u32, (u64, u64)>,
}

/// What a shadow answer amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub latency_ns: u64,
    pub verdict: Option<Verdict>,
}

/// The bodies of the answers Envoy makes up itself when a call cannot be
/// completed (its router's local replies, the same text its response code
/// details name): a timeout, a refused or reset connection, no healthy
/// host. Such an answer is the call failing, not the challenger answering.
const LOCAL_REPLIES: [&[u8]; 5] = [
    b"upstream request timeout",
    b"upstream connect error or disconnect/reset before headers",
    b"no healthy upstream",
    b"upstream max stream duration reached",
    b"upstream reset",
];

/// Longest local-reply prefix: read this much of a 503/504 body to tell.
pub const LOCAL_REPLY_PREFIX: usize = 64;

/// Whether a shadow answer is Envoy's own local reply (the call failed),
/// by its status and the start of its body.
pub fn is_local_reply(status: u16, body: &[u8]) -> bool {
    (status == 503 || status == 504) && LOCAL_REPLIES.iter().any(|p| body.starts_with(p))
}

fn compare(a: Option<u16>, b: Option<u16>) -> Verdict {
    match (a, b) {
        (Some(a), Some(b)) if a == b => Verdict::Agree,
        (Some(_), Some(_)) => Verdict::Disagree,
        _ => Verdict::Incomplete,
    }
}

impl Shadows {
    pub fn new(max_in_flight: u32, timeout_ms: u32, compare: bool) -> Shadows {
        Shadows {
            max_in_flight: max_in_flight as usize,
            compare,
            expire_after_ns: u64::from(timeout_ms) * 2_000_000,
            next_id: 0,
            queue: vec![],
            pending: HashMap::new(),
            tokens: HashMap::new(),
        }
    }

    /// Requests being shadowed right now.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// A sampled request begins; `None` (skip it) when too many are in flight.
    pub fn begin(&mut self, now_ns: u64) -> Option<u64> {
        if self.pending.len() >= self.max_in_flight {
            return None;
        }
        self.next_id += 1;
        self.pending.insert(self.next_id, Pending { created_ns: now_ns, ..Default::default() });
        Some(self.next_id)
    }

    /// The copy is complete (headers and body) and may be sent.
    pub fn ready(&mut self, call: ShadowCall) {
        if self.pending.contains_key(&call.id) {
            self.queue.push(call);
        }
    }

    /// The copy will not be sent (body over the limit).
    pub fn abandon(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// Copies to send now.
    pub fn take_ready(&mut self) -> Vec<ShadowCall> {
        std::mem::take(&mut self.queue)
    }

    pub fn sent(&mut self, id: u64, token: u32, now_ns: u64) {
        self.tokens.insert(token, (id, now_ns));
    }

    /// The copy could not be sent, or got no answer.
    pub fn failed(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// A token's call got no answer (timeout, reset).
    pub fn token_failed(&mut self, token: u32) -> bool {
        match self.tokens.remove(&token) {
            Some((id, _)) => {
                self.pending.remove(&id);
                true
            }
            None => false,
        }
    }

    /// The user's response's prediction bin (`None`: unparsed).
    pub fn champion_bin(&mut self, id: u64, bin: Option<u16>) -> Option<Verdict> {
        let p = self.pending.get_mut(&id)?;
        p.champion = Some(bin);
        self.settle(id)
    }

    /// The shadow answered; `bin` is its prediction (`None`: unparsed).
    /// `None` for a token this worker does not know.
    pub fn answered(&mut self, token: u32, now_ns: u64, bin: Option<u16>) -> Option<Answer> {
        let (id, sent) = self.tokens.remove(&token)?;
        let latency_ns = now_ns.saturating_sub(sent);
        let verdict = match self.pending.get_mut(&id) {
            Some(p) if self.compare => {
                p.challenger = Some(bin);
                self.settle(id)
            }
            _ => {
                self.pending.remove(&id);
                None
            }
        };
        Some(Answer { latency_ns, verdict })
    }

    fn settle(&mut self, id: u64) -> Option<Verdict> {
        let p = self.pending.get(&id)?;
        let (Some(a), Some(b)) = (p.champion, p.challenger) else { return None };
        self.pending.remove(&id);
        Some(compare(a, b))
    }

    /// Ends entries that waited too long; returns how many (incomplete).
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let limit = self.expire_after_ns;
        let before = self.pending.len();
        self.pending.retain(|_, p| now_ns.saturating_sub(p.created_ns) <= limit);
        let live: std::collections::HashSet<u64> = self.pending.keys().copied().collect();
        self.tokens.retain(|_, (id, _)| live.contains(id));
        self.queue.retain(|c| live.contains(&c.id));
        before - self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: u64) -> ShadowCall {
        ShadowCall { id, headers: vec![(":path".into(), "/".into())], body: vec![] }
    }

    #[test]
    fn envoys_local_replies_are_failures_and_the_models_5xx_are_not() {
        assert!(is_local_reply(504, b"upstream request timeout"));
        assert!(is_local_reply(503, b"no healthy upstream"));
        assert!(is_local_reply(
            503,
            b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        ));
        assert!(!is_local_reply(503, b"{\"error\": \"overloaded\"}"), "the model's own 503");
        assert!(!is_local_reply(500, b"upstream request timeout"), "not a status Envoy uses for it");
        assert!(!is_local_reply(504, b""));
    }

    #[test]
    fn agreement_is_judged_whichever_side_answers_first() {
        let mut s = Shadows::new(10, 1000, true);
        // Champion first.
        let a = s.begin(0).unwrap();
        s.ready(call(a));
        assert_eq!(s.take_ready().len(), 1);
        s.sent(a, 7, 10);
        assert_eq!(s.champion_bin(a, Some(2)), None);
        assert_eq!(s.answered(7, 110, Some(2)), Some(Answer { latency_ns: 100, verdict: Some(Verdict::Agree) }));
        // Shadow first.
        let b = s.begin(0).unwrap();
        s.ready(call(b));
        s.sent(b, 8, 0);
        assert_eq!(s.answered(8, 5, Some(1)).unwrap().verdict, None);
        assert_eq!(s.champion_bin(b, Some(3)), Some(Verdict::Disagree));
        // Unparsed on either side.
        let c = s.begin(0).unwrap();
        s.sent(c, 9, 0);
        s.champion_bin(c, None);
        assert_eq!(s.answered(9, 1, Some(1)).unwrap().verdict, Some(Verdict::Incomplete));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn in_flight_is_bounded_and_failures_free_their_slot() {
        let mut s = Shadows::new(2, 1000, true);
        let a = s.begin(0).unwrap();
        let _b = s.begin(0).unwrap();
        assert_eq!(s.begin(0), None);
        s.sent(a, 1, 0);
        assert!(s.token_failed(1));
        assert!(!s.token_failed(1));
        assert!(s.begin(0).is_some());
    }

    #[test]
    fn stale_entries_expire_as_incomplete() {
        let mut s = Shadows::new(10, 100, true);
        let a = s.begin(0).unwrap();
        s.ready(call(a));
        s.sent(a, 1, 0);
        let _b = s.begin(150_000_000).unwrap();
        assert_eq!(s.expire(201_000_000), 1);
        assert_eq!(s.answered(1, 300_000_000, Some(1)), None, "the expired call's answer is ignored");
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn without_predictions_answers_only_time() {
        let mut s = Shadows::new(10, 100, false);
        let a = s.begin(0).unwrap();
        s.sent(a, 1, 0);
        assert_eq!(s.answered(1, 50, None), Some(Answer { latency_ns: 50, verdict: None }));
        assert_eq!(s.in_flight(), 0);
    }
}
