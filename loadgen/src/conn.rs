//! Sockets: connecting from a chosen loopback source address, a batching
//! writer fed through an [`Outbox`], and a reader loop feeding a decoder
//! (over any transport: [`crate::transport`]).

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::transport::{Reader, Writer};
use crate::wire::{Decoder, Event};

/// Connects to `addr`, from `source` if given (another 127.0.0.x address
/// gives another ~28,000 ephemeral ports). Nagle is off.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = match ip {
                IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding source address {ip}"))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `127.0.0.1`, `127.0.0.2`, ... for connection `i` of a run using `n`
/// source addresses.
pub fn source_addr(i: usize, n: usize) -> Option<IpAddr> {
    if n <= 1 {
        return None;
    }
    let k = (i % n) as u32 + 1;
    Some(IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + k)))
}

/// Bytes waiting to be written to one connection. Producers append whole
/// frames; the writer task takes everything queued in one go, so frames
/// produced in the same turn leave in one `write`. It is bounded by its
/// producers: senders hold a window permit per message in it.
#[derive(Default)]
pub struct Outbox {
    buf: RefCell<Vec<u8>>,
    notify: Notify,
    closed: Cell<bool>,
}

impl Outbox {
    /// Appends with `f` and wakes the writer.
    pub fn push(&self, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut self.buf.borrow_mut());
        self.notify.notify_one();
    }

    /// Lets the writer finish once it has written what is queued.
    pub fn close(&self) {
        self.closed.set(true);
        self.notify.notify_one();
    }
}

/// Writes what the outbox collects until it is closed or the socket fails.
pub async fn writer(mut w: Writer, outbox: Rc<Outbox>) -> anyhow::Result<()> {
    let mut spare = Vec::new();
    loop {
        if outbox.buf.borrow().is_empty() {
            if outbox.closed.get() {
                w.shutdown().await;
                return Ok(());
            }
            outbox.notify.notified().await;
            continue;
        }
        std::mem::swap(&mut *outbox.buf.borrow_mut(), &mut spare);
        w.write_all(&spare).await?;
        spare.clear();
    }
}

/// Reads and decodes until the peer closes; hands every event to
/// `on_event`. Returns `Ok` on a clean close.
pub async fn reader(
    mut r: Reader,
    mut decoder: Box<dyn Decoder>,
    mut on_event: impl FnMut(Event),
) -> anyhow::Result<()> {
    loop {
        while let Some(ev) = decoder.next_event()? {
            on_event(ev);
        }
        let buf = decoder.buffer();
        buf.reserve(64 * 1024);
        if r.read_buf(buf).await? == 0 {
            return Ok(());
        }
    }
}
