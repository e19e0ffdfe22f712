//! The parent/child channel: a `SOCK_SEQPACKET` socketpair (close-on-exec), one JSON
//! [`Message`] per datagram. Message boundaries come from the socket type, so there is no
//! framing code, and EOF means every child end is closed.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::message::Message;

/// Errors on the channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("socketpair failed: {0}")]
    Create(nix::errno::Errno),
    #[error("sending to the sandbox process failed: {0}")]
    Send(nix::errno::Errno),
    #[error("receiving from the sandbox process failed: {0}")]
    Recv(nix::errno::Errno),
    #[error("the sandbox process sent a malformed message: {0}")]
    Decode(serde_json::Error),
}

/// Largest message we accept (setup profiles are a few KiB).
const MAX_MESSAGE: usize = 64 * 1024;

/// Room for the next message on `fd`, sized by peeking at it (`flags` add e.g.
/// MSG_DONTWAIT), at most [`MAX_MESSAGE`] (a longer one is cut and fails to decode).
/// Not a fixed 64 KiB buffer: zeroing that wrote 16 pages per message, and a large
/// allocation makes glibc consolidate its free lists, touching chunks all over the heap.
fn receive_buffer(fd: RawFd, flags: libc::c_int) -> Result<Vec<u8>, nix::errno::Errno> {
    let n = datagram_len(fd, flags)?;
    Ok(Vec::with_capacity(n.clamp(1, MAX_MESSAGE)))
}

/// The length of the next datagram on `fd`, without taking it off the queue.
pub fn datagram_len(fd: RawFd, flags: libc::c_int) -> Result<usize, nix::errno::Errno> {
    loop {
        // SAFETY: a zero-length peek; MSG_TRUNC makes recv return the datagram's length.
        let n = unsafe {
            libc::recv(
                fd,
                std::ptr::null_mut(),
                0,
                libc::MSG_PEEK | libc::MSG_TRUNC | flags,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let errno = nix::errno::Errno::last();
        if errno != nix::errno::Errno::EINTR {
            return Err(errno);
        }
    }
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair `(parent, child)`, both close-on-exec.
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds is a valid 2-element array for socketpair to fill.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(ChannelError::Create(nix::errno::Errno::last()));
        }
        // SAFETY: socketpair returned two new fds that nothing else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wrap an fd (e.g. after moving it to another number).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Send one message. Safe to call in a forked child (no locks; allocation is fine with
    /// glibc's fork).
    pub fn send(&self, msg: &Message) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg).map_err(ChannelError::Decode)?;
        send_raw(self.fd.as_raw_fd(), &bytes)
    }

    /// Receive one message; `Ok(None)` on EOF (every peer end is closed).
    pub fn recv(&self) -> Result<Option<Message>, ChannelError> {
        let mut buf = receive_buffer(self.fd.as_raw_fd(), 0).map_err(ChannelError::Recv)?;
        loop {
            // SAFETY: buf has buf.capacity() writable bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.capacity(),
                    libc::MSG_CMSG_CLOEXEC,
                )
            };
            if n < 0 {
                let errno = nix::errno::Errno::last();
                if errno == nix::errno::Errno::EINTR {
                    continue;
                }
                return Err(ChannelError::Recv(errno));
            }
            if n == 0 {
                return Ok(None);
            }
            // SAFETY: recv initialised the first n bytes (n <= capacity).
            unsafe { buf.set_len(n as usize) };
            return serde_json::from_slice(&buf)
                .map(Some)
                .map_err(ChannelError::Decode);
        }
    }

    /// Receive without blocking: `Ok(None)` when nothing is queued or at EOF.
    pub fn try_recv(&self) -> Result<Option<Message>, ChannelError> {
        let mut buf = match receive_buffer(self.fd.as_raw_fd(), libc::MSG_DONTWAIT) {
            Ok(buf) => buf,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(errno) => return Err(ChannelError::Recv(errno)),
        };
        // SAFETY: buf has buf.capacity() writable bytes.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.capacity(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let errno = nix::errno::Errno::last();
            if errno == nix::errno::Errno::EAGAIN {
                return Ok(None);
            }
            return Err(ChannelError::Recv(errno));
        }
        if n == 0 {
            return Ok(None);
        }
        // SAFETY: recv initialised the first n bytes (n <= capacity).
        unsafe { buf.set_len(n as usize) };
        serde_json::from_slice(&buf)
            .map(Some)
            .map_err(ChannelError::Decode)
    }

    /// The raw fd (for poll and for the child's fd bookkeeping).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Give up ownership (a forked child that must keep the fd across its own steps).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

/// Send bytes as one datagram on a raw fd (used by children that hold a raw fd).
pub fn send_raw(fd: RawFd, bytes: &[u8]) -> Result<(), ChannelError> {
    loop {
        // SAFETY: bytes is a valid buffer; MSG_NOSIGNAL avoids SIGPIPE if the runtime died.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let errno = nix::errno::Errno::last();
            if errno == nix::errno::Errno::EINTR {
                continue;
            }
            return Err(ChannelError::Send(errno));
        }
        return Ok(());
    }
}

/// Send a message on a raw fd, ignoring failure (a child whose runtime is gone has nobody
/// to tell).
pub fn send_quiet(fd: RawFd, msg: &Message) {
    if let Ok(bytes) = serde_json::to_vec(msg) {
        let _ = send_raw(fd, &bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_recv_is_none_when_nothing_is_queued_and_a_message_too_long_is_an_error() {
        let (a, b) = Channel::pair().unwrap();
        assert!(b.try_recv().unwrap().is_none());
        a.send(&Message::ExecFailed { errno: 2 }).unwrap();
        assert_eq!(
            b.try_recv().unwrap(),
            Some(Message::ExecFailed { errno: 2 })
        );
        send_raw(a.raw_fd(), &vec![b' '; MAX_MESSAGE + 10]).unwrap();
        assert!(matches!(b.recv(), Err(ChannelError::Decode(_))));
        drop(a);
        assert_eq!(b.recv().unwrap(), None);
    }

    #[test]
    fn a_pair_carries_messages_and_reports_eof() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&Message::IdMapRequest).unwrap();
        b.send(&Message::PayloadExited { status: 3 }).unwrap();
        assert_eq!(b.recv().unwrap(), Some(Message::IdMapRequest));
        assert_eq!(
            a.try_recv().unwrap(),
            Some(Message::PayloadExited { status: 3 })
        );
        assert_eq!(a.try_recv().unwrap(), None);
        drop(b);
        assert_eq!(a.recv().unwrap(), None);
    }
}
