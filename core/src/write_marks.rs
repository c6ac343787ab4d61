//! The slow-consumer accounting of one connection ([`WriteMarks`]): the bytes queued for the
//! client and not yet written, measured against three marks ([`QueueMarks`]). A TCP phone's
//! [`PhoneConn`] and a web client's [`WebConn`] both keep one, so the two connections follow
//! one rule:
//! - above `high_water_bytes` the connection turns not writable (the node is told, and pushes
//!   to it fail at once instead of queueing, as in MPush);
//! - once written down to `low_water_bytes` it is writable again (told once per crossing);
//! - above `hard_limit_bytes` the connection is dropped without flushing, as a slow consumer.
//!
//! The struct only counts and says which mark was crossed ([`Crossing`]); the connection
//! decides what a crossing does (tell the node, close).
//!
//! Beside the marks, [`WriteReports`]: the pushes whose write the node asked to hear of, told
//! once the connection wrote past the end of their frame.
//!
//! [`PhoneConn`]: crate::conn::PhoneConn
//! [`WebConn`]: crate::web_conn::WebConn
use crate::ids::ConnId;
use crate::node::Input;
use std::collections::VecDeque;

/// The queued-byte marks of the slow-consumer rule (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueMarks {
    pub low_water_bytes: usize,
    pub high_water_bytes: usize,
    pub hard_limit_bytes: usize,
}

impl QueueMarks {
    /// Marks with `low ≤ high ≤ hard`; `None` otherwise.
    pub fn new(
        low_water_bytes: usize,
        high_water_bytes: usize,
        hard_limit_bytes: usize,
    ) -> Option<Self> {
        (low_water_bytes <= high_water_bytes && high_water_bytes <= hard_limit_bytes).then_some(
            Self {
                low_water_bytes,
                high_water_bytes,
                hard_limit_bytes,
            },
        )
    }
}

impl Default for QueueMarks {
    /// 32 KiB low, 64 KiB high, 1 MiB hard.
    fn default() -> Self {
        Self {
            low_water_bytes: 32 * 1024,
            high_water_bytes: 64 * 1024,
            hard_limit_bytes: 1024 * 1024,
        }
    }
}

/// What a change of the queued bytes crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// No mark.
    None,
    /// Over the high-water mark while writable: the connection is not writable now.
    NotWritable,
    /// Down to the low-water mark while not writable: the connection is writable again.
    Writable,
    /// Over the hard limit: the connection is to be dropped as a slow consumer.
    HardLimit,
}

impl Crossing {
    /// What the node hears of this crossing on `conn`: the connection turned not writable, or
    /// writable again (`None` for no crossing, and for the hard limit, which closes instead).
    pub fn writable_input(self, conn: ConnId) -> Option<Input> {
        match self {
            Crossing::NotWritable => Some(Input::PhoneWritable {
                conn,
                writable: false,
            }),
            Crossing::Writable => Some(Input::PhoneWritable {
                conn,
                writable: true,
            }),
            Crossing::None | Crossing::HardLimit => None,
        }
    }
}

/// The bytes a connection queued and has not written yet, and whether it is writable (see the
/// module docs). Both in one word (every connection holds one): the count in the low 63 bits,
/// "not writable" in the top bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMarks {
    word: u64,
}

/// The top bit of [`WriteMarks`]' word: set while the connection is not writable.
const NOT_WRITABLE: u64 = 1 << 63;

/// The largest count [`WriteMarks`] holds (counts saturate there, far above any hard limit).
const MAX_QUEUED_BYTES: u64 = NOT_WRITABLE - 1;

impl Default for WriteMarks {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteMarks {
    /// Nothing queued, writable.
    pub const fn new() -> Self {
        Self { word: 0 }
    }

    /// The bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        usize::try_from(self.word & MAX_QUEUED_BYTES).unwrap_or(usize::MAX)
    }

    /// False between crossing the high-water mark and draining to the low-water mark.
    pub fn is_writable(&self) -> bool {
        self.word & NOT_WRITABLE == 0
    }

    fn set_queued_bytes(&mut self, bytes: usize) {
        let bytes = u64::try_from(bytes).map_or(MAX_QUEUED_BYTES, |b| b.min(MAX_QUEUED_BYTES));
        self.word = (self.word & NOT_WRITABLE) | bytes;
    }

    fn set_writable(&mut self, writable: bool) {
        if writable {
            self.word &= !NOT_WRITABLE;
        } else {
            self.word |= NOT_WRITABLE;
        }
    }

    /// `bytes` more were queued. Past the hard limit the answer is [`Crossing::HardLimit`]
    /// (whatever the writable state); past the high-water mark while writable, the connection
    /// turns not writable.
    pub fn queued(&mut self, marks: &QueueMarks, bytes: usize) -> Crossing {
        let queued = self.queued_bytes().saturating_add(bytes);
        self.set_queued_bytes(queued);
        if queued > marks.hard_limit_bytes {
            return Crossing::HardLimit;
        }
        if self.is_writable() && queued > marks.high_water_bytes {
            self.set_writable(false);
            return Crossing::NotWritable;
        }
        Crossing::None
    }

    /// `bytes` more were queued on a closing connection, which tells the node nothing more
    /// and is not dropped for them: counted, no mark applies.
    pub fn queued_closing(&mut self, bytes: usize) {
        self.set_queued_bytes(self.queued_bytes().saturating_add(bytes));
    }

    /// `bytes` of the queued ones were written (at most what is queued). Down to the
    /// low-water mark while not writable, the connection is writable again.
    pub fn written(&mut self, marks: &QueueMarks, bytes: usize) -> Crossing {
        debug_assert!(
            bytes <= self.queued_bytes(),
            "{bytes} written of {} queued",
            self.queued_bytes()
        );
        let queued = self.queued_bytes().saturating_sub(bytes);
        self.set_queued_bytes(queued);
        if !self.is_writable() && queued <= marks.low_water_bytes {
            self.set_writable(true);
            return Crossing::Writable;
        }
        Crossing::None
    }

    /// Everything queued was dropped (the connection closed without flushing). The writable
    /// state is kept: a closed connection tells the node nothing more.
    pub fn clear(&mut self) {
        self.set_queued_bytes(0);
    }
}

/// The pushes whose write the node wants to hear of ([`Input::PhoneWritten`]), each with the
/// position its frame ends at: bytes (a TCP phone) or messages (a web client) queued since the
/// connection opened. Holds no memory while empty.
#[derive(Debug, Default)]
pub struct WriteReports {
    pending: VecDeque<(u64, i32)>,
}

impl WriteReports {
    /// Push `session_id`'s frame ends at `end`.
    pub fn expect(&mut self, end: u64, session_id: i32) {
        debug_assert!(self.pending.back().is_none_or(|(last, _)| *last <= end));
        self.pending.push_back((end, session_id));
    }

    /// The connection wrote through `position`: every push whose frame ends there or before is
    /// reported to the node (in order) through `to_node`.
    pub fn written_through(&mut self, position: u64, conn: ConnId, to_node: &mut VecDeque<Input>) {
        while let Some(&(end, session_id)) = self.pending.front() {
            if end > position {
                break;
            }
            self.pending.pop_front();
            to_node.push_back(Input::PhoneWritten {
                conn,
                push_session_id: session_id,
                ok: true,
            });
        }
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = VecDeque::new(); // an idle connection holds no buffer
        }
    }

    /// Nothing more is reported (the connection closed: the node answers its pushes itself).
    pub fn clear(&mut self) {
        self.pending = VecDeque::new();
    }

    /// True when no push waits for its write.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reports_come_once_the_write_passes_the_end_of_their_frame() {
        let conn = ConnId(7);
        let mut reports = WriteReports::default();
        let mut to_node = VecDeque::new();
        reports.expect(10, 1);
        reports.expect(25, 2);
        reports.written_through(9, conn, &mut to_node);
        assert!(to_node.is_empty());
        reports.written_through(25, conn, &mut to_node);
        let sids: Vec<i32> = to_node
            .iter()
            .map(|input| match input {
                Input::PhoneWritten {
                    push_session_id, ..
                } => *push_session_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sids, [1, 2]);
        assert_eq!(
            reports.pending.capacity(),
            0,
            "an idle connection holds no buffer"
        );
        reports.expect(30, 3);
        reports.clear();
        reports.written_through(40, conn, &mut to_node);
        assert_eq!(to_node.len(), 2, "cleared: nothing more reported");
    }

    #[test]
    fn marks_are_ordered() {
        assert!(QueueMarks::new(1, 2, 3).is_some());
        assert!(QueueMarks::new(2, 2, 2).is_some());
        assert!(QueueMarks::new(3, 2, 4).is_none());
        assert!(QueueMarks::new(1, 5, 4).is_none());
    }

    #[test]
    fn high_water_then_low_water_then_hard_limit() {
        let marks = QueueMarks::new(10, 20, 40).unwrap();
        let mut w = WriteMarks::new();
        assert_eq!(w.queued(&marks, 20), Crossing::None);
        assert_eq!(w.queued(&marks, 1), Crossing::NotWritable);
        assert_eq!(w.queued(&marks, 5), Crossing::None); // told once
        assert!(!w.is_writable());
        assert_eq!(w.written(&marks, 15), Crossing::None); // 11 > low
        assert_eq!(w.written(&marks, 1), Crossing::Writable); // 10 = low
        assert!(w.is_writable());
        assert_eq!(w.queued(&marks, 30), Crossing::NotWritable);
        assert_eq!(w.queued(&marks, 1), Crossing::HardLimit); // 41
        w.clear();
        assert_eq!(w.queued_bytes(), 0);
        // A closing connection's close frame is counted and crosses nothing.
        let mut closing = WriteMarks::new();
        closing.queued_closing(100);
        assert_eq!(closing.queued_bytes(), 100);
        assert!(closing.is_writable());
        assert_eq!(closing.written(&marks, 100), Crossing::None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Queue(usize),
        /// Writes this share (in per mille) of what is queued.
        Write(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..400).prop_map(Op::Queue),
            (0u16..=1000).prop_map(Op::Write),
        ]
    }

    fn marks() -> impl Strategy<Value = QueueMarks> {
        (0usize..300, 0usize..300, 0usize..600).prop_map(|(a, b, c)| {
            let mut v = [a, b, c];
            v.sort_unstable();
            QueueMarks::new(v[0], v[1], v[2]).unwrap()
        })
    }

    /// Every connection holds one: the count and the writable state share a word.
    #[test]
    fn marks_take_one_word() {
        assert_eq!(std::mem::size_of::<WriteMarks>(), 8);
        let mut w = WriteMarks::new();
        let marks = QueueMarks::new(1, 2, usize::MAX).expect("ordered");
        assert_eq!(w.queued(&marks, usize::MAX), Crossing::NotWritable);
        assert_eq!(
            w.queued_bytes() as u64,
            MAX_QUEUED_BYTES,
            "saturates below the flag"
        );
        assert!(!w.is_writable());
        assert_eq!(w.written(&marks, w.queued_bytes()), Crossing::Writable);
        assert_eq!(w.queued_bytes(), 0);
        assert!(w.is_writable());
    }

    proptest! {
        /// Against a plain model: the count is the bytes queued less those written; the
        /// writable state flips only at the marks, and each flip is told exactly once, in
        /// alternation (not writable, writable, not writable, ...); the hard limit is told
        /// whenever the count is over it, and only then.
        #[test]
        fn the_marks_follow_the_queued_bytes(marks in marks(), ops in proptest::collection::vec(op(), 0..80)) {
            let mut w = WriteMarks::new();
            let mut queued = 0usize;
            let mut writable = true;
            for op in ops {
                match op {
                    Op::Queue(bytes) => {
                        queued += bytes;
                        let crossing = w.queued(&marks, bytes);
                        if queued > marks.hard_limit_bytes {
                            prop_assert_eq!(crossing, Crossing::HardLimit);
                            // The connection is dropped: nothing stays queued.
                            w.clear();
                            queued = 0;
                        } else if writable && queued > marks.high_water_bytes {
                            prop_assert_eq!(crossing, Crossing::NotWritable);
                            writable = false;
                        } else {
                            prop_assert_eq!(crossing, Crossing::None);
                        }
                    }
                    Op::Write(per_mille) => {
                        let bytes = queued * usize::from(per_mille) / 1000;
                        queued -= bytes;
                        let crossing = w.written(&marks, bytes);
                        if !writable && queued <= marks.low_water_bytes {
                            prop_assert_eq!(crossing, Crossing::Writable);
                            writable = true;
                        } else {
                            prop_assert_eq!(crossing, Crossing::None);
                        }
                    }
                }
                prop_assert_eq!(w.queued_bytes(), queued);
                prop_assert_eq!(w.is_writable(), writable);
            }
        }
    }
}
