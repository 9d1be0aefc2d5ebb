//! A timing model of a real smartcard, in simulated time.
//!
//! The virtual card runs at the host's speed. To say what the same work
//! would cost on a real card, a [`Meter`] on the card counts the operations
//! that dominate a card's time (signatures, verifications, SHA-256 blocks,
//! random bytes, EEPROM pages programmed), and a [`TimingModel`] turns those
//! counts and the sizes of the APDUs on the card link into milliseconds.
//! Metering is off unless [`Card::set_meter`](crate::Card::set_meter) turns
//! it on; when off, the card does no extra work.
//!
//! [`TimingModel::paper_card`] is the card of the TENeT paper's Table 3
//! (15 MHz CPU, ECDSA sign 125 ms and verify 185 ms, a reader at 38.4 kbps);
//! every figure it adds to Table 3 is an assumption written down here and in
//! `docs/benchmarks-model.md`, with its source or reasoning.

use std::sync::atomic::{AtomicU64, Ordering};

/// SHA-256 compression blocks to hash `n` bytes (the padding adds a 0x80
/// byte and the 8-byte length).
pub fn sha256_blocks(n: usize) -> u64 {
    (n as u64 + 9).div_ceil(64)
}

/// EEPROM pages programmed to turn record `old` into record `new`, when
/// content that only moved is not written again.
///
/// The virtual card rewrites its whole record on every update; a real card
/// updates its objects in place. This counts the `page`-sized pieces of the
/// new record whose bytes do not occur anywhere in the old one: an inserted
/// run of `k` bytes costs about `k / page + 1` pages, a changed counter one
/// page, and content that is unchanged but shifted by an insertion before
/// it costs nothing.
pub fn pages_changed(old: &[u8], new: &[u8], page: usize) -> u64 {
    let page = page.max(1);
    new.chunks(page)
        .filter(|c| c.len() > old.len() || !old.windows(c.len()).any(|w| w == *c))
        .count() as u64
}

/// Operations counted on a card while its meter is on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ops {
    /// ECDSA signatures made with the card's key.
    pub signs: u64,
    /// Signature verifications (a certificate checked against the CA is one,
    /// the signature under the certificate another).
    pub verifies: u64,
    /// SHA-256 compression blocks, including those of the signed and
    /// verified data.
    pub hash_blocks: u64,
    /// Random bytes drawn.
    pub random_bytes: u64,
    /// Atomic updates of the persistent store.
    pub commits: u64,
    /// EEPROM pages whose content changed ([`pages_changed`]).
    pub eeprom_pages: u64,
    /// Bytes of the records the virtual card committed (its whole record
    /// each time; for reference, not charged).
    pub record_bytes: u64,
}

impl Ops {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Ops) -> Ops {
        Ops {
            signs: self.signs - before.signs,
            verifies: self.verifies - before.verifies,
            hash_blocks: self.hash_blocks - before.hash_blocks,
            random_bytes: self.random_bytes - before.random_bytes,
            commits: self.commits - before.commits,
            eeprom_pages: self.eeprom_pages - before.eeprom_pages,
            record_bytes: self.record_bytes - before.record_bytes,
        }
    }

    /// The sum of `self` and `o`.
    pub fn plus(&self, o: &Ops) -> Ops {
        Ops {
            signs: self.signs + o.signs,
            verifies: self.verifies + o.verifies,
            hash_blocks: self.hash_blocks + o.hash_blocks,
            random_bytes: self.random_bytes + o.random_bytes,
            commits: self.commits + o.commits,
            eeprom_pages: self.eeprom_pages + o.eeprom_pages,
            record_bytes: self.record_bytes + o.record_bytes,
        }
    }
}

/// The counters of a metered card.
#[derive(Debug)]
pub struct Meter {
    page: usize,
    signs: AtomicU64,
    verifies: AtomicU64,
    hash_blocks: AtomicU64,
    random_bytes: AtomicU64,
    commits: AtomicU64,
    eeprom_pages: AtomicU64,
    record_bytes: AtomicU64,
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl Meter {
    /// A meter that counts EEPROM writes in pages of `eeprom_page` bytes.
    pub fn new(eeprom_page: usize) -> Self {
        Self {
            page: eeprom_page.max(1),
            signs: AtomicU64::new(0),
            verifies: AtomicU64::new(0),
            hash_blocks: AtomicU64::new(0),
            random_bytes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            eeprom_pages: AtomicU64::new(0),
            record_bytes: AtomicU64::new(0),
        }
    }

    /// The counts so far.
    pub fn ops(&self) -> Ops {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Ops {
            signs: g(&self.signs),
            verifies: g(&self.verifies),
            hash_blocks: g(&self.hash_blocks),
            random_bytes: g(&self.random_bytes),
            commits: g(&self.commits),
            eeprom_pages: g(&self.eeprom_pages),
            record_bytes: g(&self.record_bytes),
        }
    }

    pub(crate) fn sign(&self, signed: usize) {
        add(&self.signs, 1);
        add(&self.hash_blocks, sha256_blocks(signed));
    }

    pub(crate) fn verify(&self, hashed: usize) {
        add(&self.verifies, 1);
        add(&self.hash_blocks, sha256_blocks(hashed));
    }

    pub(crate) fn hash_blocks(&self, n: u64) {
        add(&self.hash_blocks, n);
    }

    pub(crate) fn random(&self, n: usize) {
        add(&self.random_bytes, n as u64);
    }

    pub(crate) fn commit(&self, old: &[u8], new: &[u8]) {
        add(&self.commits, 1);
        add(&self.eeprom_pages, pages_changed(old, new, self.page));
        add(&self.record_bytes, new.len() as u64);
    }
}

/// The card link: ISO 7816-3 T=1 between reader and card, and the reader's
/// own latency per APDU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// Bits (elementary time units) per second on the I/O line.
    pub etu_per_second: f64,
    /// Elementary time units per character: start bit, 8 data bits, parity
    /// and the guard time.
    pub etu_per_char: u32,
    /// The card's largest information field per block (IFSC).
    pub ifsc: usize,
    /// The reader's largest information field per block (IFSD).
    pub ifsd: usize,
    /// Bytes a T=1 block adds to its information field: NAD, PCB, LEN and
    /// the LRC.
    pub block_overhead: usize,
    /// Idle time at each change of direction beyond the last character: the
    /// block guard time (22 etu between leading edges) less the character.
    pub turnaround_etu: u32,
    /// The reader's latency per APDU between host and reader (USB), in ms.
    pub reader_ms_per_apdu: f64,
}

impl LinkModel {
    /// The paper's reader link (Table 3: 38.4 kbps) under ISO 7816-3 T=1.
    pub fn paper() -> Self {
        Self {
            etu_per_second: 38_400.0,
            etu_per_char: 12,
            ifsc: 254,
            ifsd: 254,
            block_overhead: 4,
            turnaround_etu: 22 - 12,
            reader_ms_per_apdu: 1.0,
        }
    }

    /// The same link at the effective throughput the paper states for its
    /// reader (section 5.4.2: 32 kbps, 4,000 bytes/s), which is more than
    /// 12-etu characters at 38.4 kbps carry (3,200 bytes/s): the same
    /// framing at the character rate that gives 4,000 bytes/s. For a
    /// sensitivity check beside [`Self::paper`], not the model.
    pub fn paper_stated_throughput() -> Self {
        Self {
            etu_per_second: 4_000.0 * 12.0,
            ..Self::paper()
        }
    }

    /// Characters and direction changes on the line for one APDU whose
    /// command has `command` bytes and whose response has `response` bytes:
    /// each sent in I-blocks of at most IFSC (command) or IFSD (response)
    /// bytes, every block of a chain but the last acknowledged by an
    /// R-block (no information field) from the other side.
    pub fn line(&self, command: usize, response: usize) -> (u64, u64) {
        let blocks = |n: usize, ifs: usize| n.div_ceil(ifs.max(1)).max(1) as u64;
        let (kc, kr) = (blocks(command, self.ifsc), blocks(response, self.ifsd));
        let o = self.block_overhead as u64;
        let chars = command as u64 + kc * o + (kc - 1) * o // command blocks and their R-blocks
            + response as u64 + kr * o + (kr - 1) * o; // response blocks and their R-blocks
        // A chain of k blocks turns around 2(k-1) times; then the response
        // starts, and the next command follows it.
        let turns = 2 * (kc - 1) + 2 * (kr - 1) + 2;
        (chars, turns)
    }

    /// The time of one APDU on the link, in ms.
    pub fn apdu_ms(&self, command: usize, response: usize) -> f64 {
        let (chars, turns) = self.line(command, response);
        let etu = chars * self.etu_per_char as u64 + turns * self.turnaround_etu as u64;
        etu as f64 / self.etu_per_second * 1e3 + self.reader_ms_per_apdu
    }

    /// Milliseconds per byte of payload on the line (no block overhead).
    pub fn ms_per_byte(&self) -> f64 {
        self.etu_per_char as f64 / self.etu_per_second * 1e3
    }
}

/// The card's processor, crypto coprocessor and EEPROM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuModel {
    /// Clock, Hz.
    pub clock_hz: f64,
    /// One ECDSA signature, ms.
    pub sign_ms: f64,
    /// One ECDSA verification, ms.
    pub verify_ms: f64,
    /// Cycles per SHA-256 compression block in software.
    pub sha256_block_cycles: f64,
    /// Cycles per random byte from the hardware generator.
    pub random_byte_cycles: f64,
    /// Cycles to dispatch one APDU: header checks, routing to the applet,
    /// opening and closing the transaction.
    pub apdu_cycles: f64,
    /// Cycles per byte of command and response handled (copied between the
    /// I/O buffer and RAM, walked by the TLV parser or writer).
    pub io_byte_cycles: f64,
    /// EEPROM page size, bytes.
    pub eeprom_page: usize,
    /// Erase and write of one EEPROM page, ms.
    pub eeprom_page_ms: f64,
    /// Pages written per changed page: the old content goes to the
    /// transaction's backup area first (2).
    pub eeprom_writes_per_page: f64,
    /// Pages written per commit besides: the transaction's commit flag (1).
    pub eeprom_pages_per_commit: f64,
}

impl CpuModel {
    /// The paper's card (Table 3: SLE66CLX320P, 15 MHz, ECDSA sign 125 ms,
    /// verify 185 ms) with the assumptions of `docs/benchmarks-model.md`.
    pub fn paper() -> Self {
        Self {
            clock_hz: 15e6,
            sign_ms: 125.0,
            verify_ms: 185.0,
            sha256_block_cycles: 16_000.0,
            random_byte_cycles: 1_500.0,
            apdu_cycles: 15_000.0,
            io_byte_cycles: 50.0,
            eeprom_page: 64,
            eeprom_page_ms: 3.0,
            eeprom_writes_per_page: 2.0,
            eeprom_pages_per_commit: 1.0,
        }
    }

    fn cycles_ms(&self, cycles: f64) -> f64 {
        cycles / self.clock_hz * 1e3
    }

    /// The card's time for `ops` while handling `apdus` APDUs carrying
    /// `io_bytes` bytes (commands and responses).
    pub fn time(&self, ops: &Ops, apdus: u64, io_bytes: u64) -> CpuTime {
        let eeprom_pages = ops.eeprom_pages as f64 * self.eeprom_writes_per_page
            + ops.commits as f64 * self.eeprom_pages_per_commit;
        CpuTime {
            crypto_ms: ops.signs as f64 * self.sign_ms + ops.verifies as f64 * self.verify_ms,
            hash_ms: self.cycles_ms(ops.hash_blocks as f64 * self.sha256_block_cycles),
            eeprom_ms: eeprom_pages * self.eeprom_page_ms,
            other_ms: self.cycles_ms(
                ops.random_bytes as f64 * self.random_byte_cycles
                    + apdus as f64 * self.apdu_cycles
                    + io_bytes as f64 * self.io_byte_cycles,
            ),
        }
    }
}

/// Simulated card time, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CpuTime {
    /// Signatures and verifications.
    pub crypto_ms: f64,
    /// SHA-256 in software.
    pub hash_ms: f64,
    /// EEPROM programming.
    pub eeprom_ms: f64,
    /// Random bytes, APDU dispatch and byte handling.
    pub other_ms: f64,
}

impl CpuTime {
    /// The sum.
    pub fn total_ms(&self) -> f64 {
        self.crypto_ms + self.hash_ms + self.eeprom_ms + self.other_ms
    }
}

/// A card and its reader link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimingModel {
    /// The card link.
    pub link: LinkModel,
    /// The card.
    pub cpu: CpuModel,
}

impl TimingModel {
    /// The TENeT paper's card and reader (Table 3) with the documented
    /// assumptions.
    pub fn paper_card() -> Self {
        Self {
            link: LinkModel::paper(),
            cpu: CpuModel::paper(),
        }
    }

    /// A meter for a card simulated by this model.
    pub fn meter(&self) -> Meter {
        Meter::new(self.cpu.eeprom_page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn sha256_block_counts() {
        assert_eq!(sha256_blocks(0), 1);
        assert_eq!(sha256_blocks(55), 1);
        assert_eq!(sha256_blocks(56), 2);
        assert_eq!(sha256_blocks(64), 2);
        assert_eq!(sha256_blocks(119), 2);
        assert_eq!(sha256_blocks(120), 3);
    }

    #[test]
    fn a_short_apdu_on_the_paper_link() {
        let l = LinkModel::paper();
        // SELECT by AID: 5 + 7 = 12 bytes; response 90 00. One block each
        // way: (12 + 4) + (2 + 4) = 22 characters of 12 etu, two direction
        // changes of 10 etu: 284 etu at 38 400 etu/s, plus 1 ms of reader.
        assert_eq!(l.line(12, 2), (22, 2));
        assert!(close(l.apdu_ms(12, 2), 284.0 / 38.4 + 1.0));
        assert!(close(l.ms_per_byte(), 0.3125));
    }

    #[test]
    fn the_papers_stated_throughput_is_4000_bytes_a_second() {
        let (model, stated) = (LinkModel::paper(), LinkModel::paper_stated_throughput());
        assert!(close(stated.ms_per_byte(), 0.25));
        assert_eq!(stated.line(300, 40), model.line(300, 40), "same framing");
        assert!(stated.apdu_ms(300, 40) < model.apdu_ms(300, 40));
    }

    #[test]
    fn a_long_command_is_chained_in_blocks_with_acknowledgements() {
        let l = LinkModel::paper();
        // 600 bytes: blocks of 254, 254, 92; two R-blocks back; a 300-byte
        // response in blocks of 254 and 46 with one R-block.
        let (chars, turns) = l.line(600, 300);
        assert_eq!(chars, 600 + 3 * 4 + 2 * 4 + 300 + 2 * 4 + 4);
        assert_eq!(turns, 2 * 2 + 2 + 2);
        let etu = chars as f64 * 12.0 + turns as f64 * 10.0;
        assert!(close(l.apdu_ms(600, 300), etu / 38.4 + 1.0));
    }

    #[test]
    fn the_etp_header_costs_21_ms_per_round_trip_on_this_link() {
        // The 34-byte eTP header rides in the command and in the response:
        // 68 bytes at 12 etu and 38.4 kbps are 21.25 ms. (Paper 5.4.2 counts
        // 62 bytes, at an effective 32 kbps: about 15 ms.)
        let l = LinkModel::paper();
        let extra = l.apdu_ms(5 + 34, 34 + 2) - l.apdu_ms(5, 2);
        assert!(close(extra, 68.0 * 0.3125), "{extra}");
    }

    #[test]
    fn cpu_time_adds_up_by_kind() {
        let c = CpuModel::paper();
        let ops = Ops {
            signs: 1,
            verifies: 2,
            hash_blocks: 15,
            random_bytes: 16,
            commits: 1,
            eeprom_pages: 4,
            record_bytes: 5000,
        };
        let t = c.time(&ops, 1, 300);
        assert!(close(t.crypto_ms, 125.0 + 2.0 * 185.0));
        assert!(close(t.hash_ms, 15.0 * 16_000.0 / 15_000.0));
        assert!(close(t.eeprom_ms, (4.0 * 2.0 + 1.0) * 3.0));
        assert!(close(
            t.other_ms,
            (16.0 * 1_500.0 + 15_000.0 + 300.0 * 50.0) / 15_000.0
        ));
        assert!(close(
            t.total_ms(),
            t.crypto_ms + t.hash_ms + t.eeprom_ms + t.other_ms
        ));
    }

    #[test]
    fn moved_content_is_not_written_again() {
        let old: Vec<u8> = (0..=255u8).cycle().take(640).collect();
        assert_eq!(pages_changed(&old, &old, 64), 0);
        // 20 new bytes inserted at 120 straddle two pages of the new
        // record; everything after them only moved.
        let mut new = old.clone();
        new.splice(120..120, [0xee; 20]);
        assert_eq!(pages_changed(&old, &new, 64), 2);
        // One byte changed: one page.
        let mut one = old.clone();
        one[300] ^= 0xff;
        assert_eq!(pages_changed(&old, &one, 64), 1);
        // Everything new.
        assert_eq!(pages_changed(&[], &[1; 130], 64), 3);
    }

    /// An applet that signs, draws randomness, reports a verification and
    /// appends to its data.
    struct Busy;

    impl crate::Applet for Busy {
        fn id(&self) -> u16 {
            7
        }
        fn name(&self) -> &'static str {
            "busy"
        }
        fn handles(&self, m: tenet_proto::Mtype) -> bool {
            m == tenet_proto::Mtype(0x7777)
        }
        fn privileged(&self) -> &[tenet_proto::Mtype] {
            &[]
        }
        fn handle(
            &mut self,
            cx: &mut crate::AppletCx<'_>,
            m: &tenet_proto::Message,
        ) -> Result<(), crate::Refusal> {
            let mut n = [0u8; 10];
            cx.entropy.fill(&mut n);
            let sig = cx.sign(&m.param);
            cx.count_verify(100);
            cx.count_hash_blocks(2);
            cx.data.extend_from_slice(&sig);
            Ok(())
        }
    }

    #[test]
    fn a_metered_card_counts_what_its_applet_does_and_an_unmetered_one_nothing() {
        use crate::{Card, CardLimits, MemStore, Personalization, SeededEntropy};
        use tenet_proto::{Codec, Domain, Message, Mtype};
        let p = Personalization {
            domain: Domain::new([3; 12]),
            pin: b"1234".to_vec(),
            puk: b"12345678".to_vec(),
        };
        let mut card = Card::personalize(
            MemStore::new(8192),
            &p,
            CardLimits::default(),
            Box::new(SeededEntropy::new(1)),
        )
        .unwrap();
        card.install(Box::new(Busy));
        let m = Message::new(card.id(), card.id(), Mtype(0x7777), vec![5; 100]);
        card.handle_message(m.clone()).unwrap();
        assert!(card.meter().is_none());
        card.set_meter(Some(TimingModel::paper_card().meter()));
        card.handle_message(m).unwrap();
        let ops = card.meter().unwrap().ops();
        assert_eq!((ops.signs, ops.verifies, ops.random_bytes), (1, 1, 10));
        // sign(100 bytes) 2 blocks, verify(100) 2, the applet's own 2.
        assert_eq!(ops.hash_blocks, 6);
        assert_eq!(ops.commits, 1);
        // About 72 new bytes of signature: two pages at most, one at least.
        assert!((1..=3).contains(&ops.eeprom_pages), "{ops:?}");
        assert_eq!(ops.record_bytes as usize, card.state().to_bytes().len());
    }

    #[test]
    fn the_meter_counts_and_subtracts() {
        let m = Meter::new(64);
        m.sign(100);
        m.verify(500);
        m.verify(60);
        m.random(16);
        m.commit(&[0; 64], &[1; 64]);
        let a = m.ops();
        assert_eq!(
            (a.signs, a.verifies, a.hash_blocks, a.random_bytes),
            (1, 2, 2 + 8 + 2, 16)
        );
        assert_eq!((a.commits, a.eeprom_pages, a.record_bytes), (1, 1, 64));
        m.hash_blocks(3);
        assert_eq!(m.ops().since(&a).hash_blocks, 3);
        assert_eq!(a.plus(&a).signs, 2);
    }
}
