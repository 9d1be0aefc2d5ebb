//! Plugs a [`Card`] into pcscd through vsmartcard's vpcd driver.
//!
//! vpcd listens on a TCP port (its reader.conf `CHANNELID`); the virtual
//! card connects to it. Every frame is a 2-byte big-endian length and a
//! payload. A 1-byte payload is a control code: 0 power off, 1 power on,
//! 2 reset (no answer to these), 4 get ATR (answered with the ATR). Any
//! other payload is a command APDU, answered with the response APDU.
//!
//! Latency: vpcd writes its frames in pieces, and Linux's delayed
//! acknowledgement then holds each APDU for about 40 ms. The connector sets
//! `TCP_NODELAY` and re-arms `TCP_QUICKACK` before every read (Linux clears
//! it again after acknowledging), which brings one APDU through pcscd from
//! about 48 ms to about 0.1 ms.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::card::{ATR, Card};
use crate::store::Storage;

/// Control codes from vpcd.
const POWER_OFF: u8 = 0;
const POWER_ON: u8 = 1;
const RESET: u8 = 2;
const GET_ATR: u8 = 4;

/// Sets `TCP_QUICKACK` on a socket (Linux).
pub fn set_quickack(s: &TcpStream) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd, a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>, quickack: bool) -> io::Result<()> {
    if quickack {
        set_quickack(s)?;
    }
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    if quickack {
        set_quickack(s)?;
    }
    s.read_exact(buf)
}

fn write_frame(s: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long for vpcd"))?;
    let mut out = Vec::with_capacity(2 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    s.write_all(&out)
}

/// Serves one vpcd connection until it closes. Returns the number of
/// APDUs handled.
pub fn serve_connection<S: Storage>(card: &mut Card<S>, s: TcpStream) -> io::Result<u64> {
    serve_connection_tuned(card, s, true)
}

/// [`serve_connection`] with `TCP_QUICKACK` re-arming switched on or off
/// (off only to measure what it saves).
pub fn serve_connection_tuned<S: Storage>(
    card: &mut Card<S>,
    mut s: TcpStream,
    quickack: bool,
) -> io::Result<u64> {
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let mut apdus = 0u64;
    loop {
        match read_frame(&mut s, &mut buf, quickack) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(apdus),
            Err(e) => return Err(e),
        }
        if buf.len() == 1 {
            match buf[0] {
                POWER_OFF => {
                    debug!("vpcd: power off");
                    card.power_off();
                }
                POWER_ON => debug!("vpcd: power on"),
                RESET => {
                    debug!("vpcd: reset");
                    card.reset();
                }
                GET_ATR => write_frame(&mut s, ATR)?,
                other => warn!(code = other, "vpcd: unknown control code ignored"),
            }
            continue;
        }
        apdus += 1;
        let resp = card.process_apdu(&buf);
        write_frame(&mut s, &resp)?;
    }
}

/// Connects to vpcd at `addr` and serves the card, reconnecting with a
/// pause whenever the connection drops or vpcd is not there yet. Between
/// connections the card is powered off, as if pulled from the reader.
pub fn serve<S: Storage>(card: &mut Card<S>, addr: &str) -> io::Result<()> {
    let mut logged_wait = false;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                logged_wait = false;
                info!(%addr, "connected to vpcd: card inserted");
                match serve_connection(card, s) {
                    Ok(n) => info!(%addr, apdus = n, "vpcd closed the connection: card removed"),
                    Err(e) => warn!(%addr, error = %e, "vpcd connection failed: card removed"),
                }
                card.power_off();
            }
            Err(e) => {
                if !logged_wait {
                    info!(%addr, error = %e, "waiting for vpcd");
                    logged_wait = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
