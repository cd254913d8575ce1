//! An answer kept as it came, to tell the next one that holds the same records without
//! parsing it again.
//!
//! A Service's pods change seldom, so nearly every refresh gets the answer the one before got.
//! Parsing it again (hickory builds a `Name` and a `Record` for every address) and screening
//! it were a third of discovery's CPU at 1,000 Services (BENCHMARKS.md). Servers reorder the
//! records of each answer (dnsmasq does on every query, as does CoreDNS's `loadbalance`), so
//! a byte-for-byte comparison would rarely hold. What holds is this: the message is the kept
//! one, but for its ID and the order of its answer records.
//!
//! Only the usual answer of a headless Service is kept: address records of the type asked, each
//! owned by the question's name, all through a compression pointer to it or all with it written
//! out. So every record has one length and holds no name that another record's place could
//! change. Any other answer (a CNAME chain, or hickory-server's, which points every owner at
//! the first record's) is parsed every time.

use std::ops::Range;

use hickory_resolver::proto::{op::DnsResponse, rr::RecordType};

use crate::schedule::Answer;

/// The fixed part of a DNS header.
const HEADER: usize = 12;

/// A compression pointer to the question's name, which starts right after the header.
const POINTER_TO_QUESTION: [u8; 2] = [0xC0, HEADER as u8];

/// Class IN.
const CLASS_IN: [u8; 2] = [0, 1];

/// What an exchange with a nameserver gave.
pub(super) enum Reply<'k> {
    /// The known answer again (see [`KnownAnswer::matches`]).
    Same(&'k KnownAnswer),
    /// Another answer, parsed.
    New(DnsResponse),
}

/// An answer of address records, as it came but for its ID, and what it gave once screened.
#[derive(Debug)]
pub(super) struct KnownAnswer {
    /// The message, its ID zeroed.
    wire: Vec<u8>,
    /// Where the answer section starts, and where it ends.
    answers: Range<usize>,
    /// How long every answer record's owner is: a pointer to the question's name, or that
    /// name written out (see [`KnownAnswer::owner`]).
    owner_len: usize,
    /// Every answer record's length.
    record_len: usize,
    /// The answer records after their owner, each as a [`Key`], sorted.
    records: Vec<Key>,
    /// What the answer gave.
    answer: Answer,
}

impl KnownAnswer {
    /// Keeps `message`, which gave `answer`, when it is the usual answer of a headless Service
    /// to one question of `rtype` (A or AAAA; see the module's docs); `None` for any other
    /// message, before anything is copied.
    pub(super) fn new(message: &[u8], rtype: RecordType, answer: &Answer) -> Option<Self> {
        let rdata_len: u16 = match rtype {
            RecordType::A => 4,
            RecordType::AAAA => 16,
            _ => return None,
        };
        let header = message.get(..HEADER)?;
        let questions = u16::from_be_bytes([header[4], header[5]]);
        let count = usize::from(u16::from_be_bytes([header[6], header[7]]));
        if questions != 1 || count == 0 {
            return None;
        }
        // The question: its name written out in labels (a pointer cannot come first), then its
        // type and class.
        let mut at = HEADER;
        loop {
            let len = usize::from(*message.get(at)?);
            at += 1;
            match len {
                0 => break,
                1..=63 => at += len,
                _ => return None,
            }
        }
        let name = &message[HEADER..at];
        let start = at + 4;
        // Compressed (dnsmasq; CoreDNS when the answer would not fit otherwise) or not (CoreDNS
        // for small answers): one way for every record.
        let owner = match message.get(start..start + 2)? {
            pointer if pointer == POINTER_TO_QUESTION => &POINTER_TO_QUESTION[..],
            _ => name,
        };
        let record_len = owner.len() + FIXED + usize::from(rdata_len);
        let end = start.checked_add(count.checked_mul(record_len)?)?;
        let records = message.get(start..end)?;
        let rtype = u16::from(rtype).to_be_bytes();
        let rdata_len = rdata_len.to_be_bytes();
        let usual = records.chunks_exact(record_len).all(|r| {
            let (own, r) = r.split_at(owner.len());
            own == owner && r[..2] == rtype && r[2..4] == CLASS_IN && r[8..10] == rdata_len
        });
        if !usual {
            return None;
        }
        let mut wire = message.to_vec();
        wire[..2].fill(0);
        Some(Self {
            records: sorted_keys(records, record_len, owner.len()),
            owner_len: owner.len(),
            wire,
            answers: start..end,
            record_len,
            answer: answer.clone(),
        })
    }

    /// What the answer gave.
    pub(super) fn answer(&self) -> &Answer {
        &self.answer
    }

    /// Every answer record's owner, as the first record has it.
    fn owner(&self) -> &[u8] {
        &self.wire[self.answers.start..][..self.owner_len]
    }

    /// Whether `message` is this answer but for its ID and the order of its answer records.
    pub(super) fn matches(&self, message: &[u8]) -> bool {
        let Range { start, end } = self.answers;
        if message.len() != self.wire.len()
            || message[2..start] != self.wire[2..start]
            || message[end..] != self.wire[end..]
        {
            return false;
        }
        let records = &message[start..end];
        records
            .chunks_exact(self.record_len)
            .all(|r| r.starts_with(self.owner()))
            && sorted_keys(records, self.record_len, self.owner_len) == self.records
    }
}

/// A record's type, class, TTL and data length.
const FIXED: usize = 2 + 2 + 4 + 2;

/// What follows a record's owner (at most [`FIXED`] + 16 bytes, an AAAA record's), as two
/// numbers that compare as its bytes do: sorting them costs no call per comparison, as sorting
/// slices would.
type Key = (u128, u128);

/// The [`Key`]s of the records of length `len` that `section` holds end to end, each after its
/// owner of `owner_len` bytes, sorted.
fn sorted_keys(section: &[u8], len: usize, owner_len: usize) -> Vec<Key> {
    let mut keys: Vec<Key> = section
        .chunks_exact(len)
        .map(|record| {
            let record = &record[owner_len..];
            let (first, rest) = record.split_at(record.len().min(16));
            let (mut high, mut low) = ([0u8; 16], [0u8; 16]);
            high[..first.len()].copy_from_slice(first);
            low[..rest.len()].copy_from_slice(rest);
            (u128::from_be_bytes(high), u128::from_be_bytes(low))
        })
        .collect();
    keys.sort_unstable();
    keys
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, str::FromStr};

    use hickory_resolver::proto::{
        op::{Message, MessageType, Query},
        rr::{Name, RData, Record, rdata},
    };

    use super::*;
    use crate::schedule::Negative;

    const NAME: &str = "user-svc.default.svc.cluster.local.";

    fn answer(id: u16, records: Vec<Record>) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.message_type = MessageType::Response;
        message.add_query(Query::query(Name::from_str(NAME).unwrap(), RecordType::A));
        message.add_answers(records);
        message.to_vec().unwrap()
    }

    fn a(last: u8, ttl: u32) -> Record {
        let ip = Ipv4Addr::new(10, 0, 0, last);
        Record::from_rdata(Name::from_str(NAME).unwrap(), ttl, RData::A(rdata::A(ip)))
    }

    fn known(message: &[u8], rtype: RecordType) -> Option<KnownAnswer> {
        KnownAnswer::new(message, rtype, &Answer::Empty(Negative::NoData))
    }

    fn pods(order: &[u8]) -> Vec<u8> {
        answer(7, order.iter().map(|&last| a(last, 5)).collect())
    }

    #[test]
    fn the_same_records_in_another_order_with_another_id_match() {
        let known = known(&pods(&[1, 2, 3, 4]), RecordType::A).unwrap();
        assert!(known.matches(&pods(&[1, 2, 3, 4])));
        assert!(known.matches(&pods(&[4, 2, 1, 3])));
        let mut other_id = pods(&[3, 1, 4, 2]);
        other_id[..2].copy_from_slice(&999u16.to_be_bytes());
        assert!(known.matches(&other_id));
    }

    #[test]
    fn any_other_record_does_not_match() {
        let known = known(&pods(&[1, 2, 3, 4]), RecordType::A).unwrap();
        assert!(!known.matches(&pods(&[1, 2, 3, 5])), "another address");
        assert!(!known.matches(&pods(&[1, 2, 3])), "one less");
        assert!(!known.matches(&pods(&[1, 2, 3, 4, 5])), "one more");
        assert!(!known.matches(&pods(&[1, 2, 3, 3])), "a record twice");
        let other_ttl = answer(7, vec![a(1, 5), a(2, 5), a(3, 5), a(4, 6)]);
        assert!(!known.matches(&other_ttl), "another TTL");
        let mut truncated = pods(&[1, 2, 3, 4]);
        truncated[2] |= 0x02;
        assert!(!known.matches(&truncated), "the TC bit");
        assert!(!known.matches(&[]), "nothing");
        assert!(!known.matches(&pods(&[1, 2, 3, 4])[..20]), "cut short");
    }

    /// An answer whose records each write the owner out, as CoreDNS sends those that fit
    /// without compression.
    fn written_out(id: u16, order: &[u8], ttl: u32) -> Vec<u8> {
        let name: Vec<u8> = NAME
            .trim_end_matches('.')
            .split('.')
            .flat_map(|label| [&[label.len() as u8][..], label.as_bytes()].concat())
            .chain([0])
            .collect();
        let mut message = id.to_be_bytes().to_vec();
        message.extend_from_slice(&[0x85, 0x80, 0, 1, 0, order.len() as u8, 0, 0, 0, 0]);
        message.extend_from_slice(&name);
        message.extend_from_slice(&[0, 1, 0, 1]);
        for last in order {
            message.extend_from_slice(&name);
            message.extend_from_slice(&[0, 1, 0, 1]);
            message.extend_from_slice(&ttl.to_be_bytes());
            message.extend_from_slice(&[0, 4, 10, 0, 0, *last]);
        }
        message
    }

    #[test]
    fn owners_written_out_are_kept_too() {
        let known = known(&written_out(7, &[1, 2, 3], 5), RecordType::A).unwrap();
        assert!(known.matches(&written_out(8, &[3, 1, 2], 5)));
        assert!(!known.matches(&written_out(8, &[3, 1, 4], 5)));
        assert!(!known.matches(&written_out(8, &[3, 1, 2], 6)));
        // Compressed, the same records are another message.
        assert!(!known.matches(&pods(&[1, 2, 3])));
        // An owner changed in one record, the length the same.
        let mut other_owner = written_out(8, &[3, 1, 2], 5);
        let at = other_owner.len() - 18;
        other_owner[at] ^= 0x20;
        assert!(!known.matches(&other_owner));
        Message::from_vec(&written_out(7, &[1, 2, 3], 5)).expect("a valid message");
    }

    #[test]
    fn only_the_usual_answer_is_kept() {
        assert!(known(&pods(&[1, 2]), RecordType::AAAA).is_none());
        assert!(known(&pods(&[1, 2]), RecordType::SRV).is_none());
        assert!(known(&answer(7, vec![]), RecordType::A).is_none());
        // A record owned by another name is written out, not pointed at the question.
        let other = Record::from_rdata(
            Name::from_str("other.default.svc.cluster.local.").unwrap(),
            5,
            RData::A(rdata::A(Ipv4Addr::new(10, 0, 0, 9))),
        );
        assert!(known(&answer(7, vec![a(1, 5), other]), RecordType::A).is_none());
        let cname = Record::from_rdata(
            Name::from_str(NAME).unwrap(),
            5,
            RData::CNAME(rdata::CNAME(
                Name::from_str("x.svc.cluster.local.").unwrap(),
            )),
        );
        assert!(known(&answer(7, vec![cname, a(1, 5)]), RecordType::A).is_none());
    }

    #[test]
    fn a_message_cut_anywhere_is_not_kept_and_does_not_panic() {
        let whole = pods(&[1, 2, 3]);
        for len in 0..whole.len() {
            let known = known(&whole[..len], RecordType::A);
            assert!(known.is_none(), "kept a message cut at {len}");
        }
        let mut header_only = whole[..HEADER].to_vec();
        header_only[7] = 0xFF;
        assert!(known(&header_only, RecordType::A).is_none());
    }

    /// What a message says, but for its ID and the order of its answer records.
    fn meaning(message: &[u8]) -> Option<(Vec<String>, Vec<String>, Vec<String>)> {
        let message = Message::from_vec(message).ok()?;
        let text = |records: &[Record]| {
            let mut text: Vec<String> = records.iter().map(ToString::to_string).collect();
            text.sort();
            text
        };
        let queries = message.queries.iter().map(ToString::to_string).collect();
        Some((queries, text(&message.answers), text(&message.additionals)))
    }

    proptest::proptest! {
        /// Whatever the bytes, nothing panics; a message that matches says what the known one
        /// says.
        #[test]
        fn a_match_means_the_same_records(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            flips in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()),
                0..4,
            ),
            swap in proptest::prelude::any::<bool>(),
        ) {
            let _ = known(&noise, RecordType::A);
            let base = pods(&[1, 2, 3, 4]);
            let kept = known(&base, RecordType::A).unwrap();
            let _ = kept.matches(&noise);
            let mut changed = if swap { pods(&[4, 3, 2, 1]) } else { base.clone() };
            for (at, bits) in &flips {
                let at = at % changed.len();
                changed[at] ^= bits;
            }
            if kept.matches(&changed) {
                proptest::prop_assert_eq!(meaning(&changed), meaning(&base));
            }
        }
    }
}
