//! A phone's socket in a group: read and written when the group's epoll set says it can be,
//! with no registration in tokio's reactor (that registration is a 256-byte allocation per
//! socket, the largest single thing an idle phone held).
//!
//! The group registers the socket edge-triggered for reading, and for writing only while a write
//! found the socket's buffer full ([`GroupStream::wanted_interest`]): a socket registered for
//! writing has an event each time the peer's ACKs free room, one per push on a live link, which
//! would cost a wake-up of the group for nothing. On each event the group marks the socket
//! readable or writable ([`GroupStream::note`]) and polls the phone if the mark is news. A read
//! or write that finds the socket drained or full (`WouldBlock`) clears its mark; the next edge
//! sets it again. So a phone woken for another reason (a push queued for it) makes no read
//! syscall unless bytes came, and the waker a poll is given is not kept: the group polls the
//! phone on the socket's next event anyway.
use crate::conn::{Inbound, PhoneStream};
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// Read buffer room made when the socket is readable (as the task-per-phone path does).
const READ_CHUNK_BYTES: usize = 4096;
/// Most reads in one poll of the phone: a peer that sends as fast as the server decodes gets
/// back in line after these (tokio's budget does the same for a task of its own), so one phone
/// does not hold its group.
pub const MAX_READS_PER_POLL: u8 = 32;

/// A phone's TCP socket, driven by its group's readiness marks.
pub struct GroupStream {
    socket: mio::net::TcpStream,
    readable: bool,
    writable: bool,
    /// Registered for writing too (a write found the buffer full and its room is awaited).
    watching_writes: bool,
    /// Reads made in the current poll ([`MAX_READS_PER_POLL`]).
    reads_this_poll: u8,
}

impl GroupStream {
    /// Takes `stream` out of tokio's reactor (its registration is freed) into a socket the
    /// group registers in its own epoll set.
    pub fn from_tokio(stream: tokio::net::TcpStream) -> std::io::Result<Self> {
        // `into_std` leaves the socket non-blocking, as mio requires.
        let socket = mio::net::TcpStream::from_std(stream.into_std()?);
        Ok(Self {
            socket,
            // Bytes may have come before the registration: try once.
            readable: true,
            writable: true,
            watching_writes: false,
            reads_this_poll: 0,
        })
    }

    /// The socket, to register in (and take out of) the group's epoll set.
    pub fn socket_mut(&mut self) -> &mut mio::net::TcpStream {
        &mut self.socket
    }

    /// The group is about to poll the phone: its read budget starts again.
    pub fn start_poll(&mut self) {
        self.reads_this_poll = 0;
    }

    /// The interests the socket is registered with at first.
    pub const FIRST_INTEREST: mio::Interest = mio::Interest::READABLE;

    /// An event of the epoll set: what it says the socket can do now (a closed or failed
    /// socket counts as both: the read or write then returns what happened). True when that is
    /// news to the phone: a read or a write it could not make can be made now.
    pub fn note(&mut self, readable: bool, writable: bool) -> bool {
        let news = (readable && !self.readable) || (writable && !self.writable);
        self.readable |= readable;
        self.writable |= writable;
        news
    }

    /// After a poll: the interests the socket must now be registered with, when they changed
    /// (writing is watched from a write that found the buffer full until one goes through).
    pub fn wanted_interest(&mut self) -> Option<mio::Interest> {
        let watch_writes = !self.writable;
        if watch_writes == self.watching_writes {
            return None;
        }
        self.watching_writes = watch_writes;
        Some(match watch_writes {
            true => mio::Interest::READABLE | mio::Interest::WRITABLE,
            false => mio::Interest::READABLE,
        })
    }
}

impl PhoneStream for GroupStream {
    fn poll_read_some(
        &mut self,
        inbound: &mut Inbound,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        if !self.readable {
            return Poll::Pending;
        }
        if self.reads_this_poll >= MAX_READS_PER_POLL {
            // Still readable: the phone is polled again after the others woken before it.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.reads_this_poll += 1;
        loop {
            let buf = inbound.buf();
            let start = buf.len();
            if buf.capacity() - start < 64 {
                buf.reserve(READ_CHUNK_BYTES);
            }
            let room = buf.capacity() - start;
            buf.resize(start + room, 0);
            let read = self.socket.read(&mut buf[start..]);
            buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    inbound.release_if_empty();
                    return Poll::Pending;
                }
                read => return Poll::Ready(read),
            }
        }
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.socket.peer_addr().ok().map(|a| a.ip())
    }
}

impl AsyncWrite for GroupStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if !this.writable {
            return Poll::Pending;
        }
        loop {
            match this.socket.write(buf) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    this.writable = false;
                    return Poll::Pending;
                }
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.socket.shutdown(std::net::Shutdown::Write) {
            Err(error) if error.kind() == std::io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            done => Poll::Ready(done),
        }
    }
}
