//! `tenet tap --pcap FILE`: the tapped eTP messages as a pcap file, one
//! message a packet (header and param, as on the wire), link type USER0
//! (147), timestamped when the host stored them. Wireshark and tshark
//! dissect them with `contrib/wireshark/tenet.lua`.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use tenet_proto::{Codec, MAX_MESSAGE_LEN, Message};

/// The link type of a TENeT capture: the first of the user link types.
pub const LINK_TYPE: DataLink = DataLink::USER0;

/// A pcap file being written, unbuffered: every packet reaches the file at
/// once, so a tap stopped by a signal leaves a whole capture.
pub struct Capture {
    out: PcapWriter<File>,
}

impl Capture {
    /// Creates `path` (owner only: captures hold what the apps sent) with a
    /// pcap header for eTP messages.
    pub fn create(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let header = PcapHeader {
            datalink: LINK_TYPE,
            snaplen: MAX_MESSAGE_LEN as u32,
            ..PcapHeader::default()
        };
        let out = PcapWriter::with_header(file, header)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { out })
    }

    /// Appends `message`, stored at `at`.
    pub fn write(&mut self, at: SystemTime, message: &Message) -> Result<()> {
        let data = message.to_bytes();
        let ts = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let len = u32::try_from(data.len()).context("message too long for pcap")?;
        self.out
            .write_packet(&PcapPacket::new(ts, len, &data))
            .context("writing a packet")?;
        Ok(())
    }
}
