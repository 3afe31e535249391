//! The WebSocket under a connection: an upgraded TCP connection, or an in-memory pipe in tests.
//!
//! [`LeanIo`] sits between tungstenite and the socket so that an idle connection holds almost
//! no buffer memory: reads go through a scratch buffer on the stack, and only bytes that
//! tungstenite has not taken yet are kept, in an allocation freed as soon as it is drained;
//! writes collect in a buffer taken for a burst and, once it is flushed, handed to the next
//! connection that writes on the same thread.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A WebSocket over any byte stream, with access to the bytes underneath for lingering closes.
pub(crate) trait Transport:
    Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Send + Unpin
{
    fn io(&mut self) -> &mut dyn Io;

    /// Puts a whole data frame (text or binary, final, unmasked as a server's frames are) into
    /// the write buffer, sent by the next flush. Returns false, having done nothing, when the
    /// frame must take another path: [`buffer_shared_frame`](Self::buffer_shared_frame) when
    /// the buffer has no room, or the `Sink` when bytes tungstenite wrote are still waiting for
    /// the socket (order).
    fn buffer_data_frame(&mut self, text: bool, payload: &[u8]) -> bool;

    /// [`buffer_data_frame`](Self::buffer_data_frame) for a frame that does not fit: its
    /// payload is kept as a share of its buffer rather than copied. Returns false when the
    /// frame must take the `Sink` path (order, or too much is waiting already).
    fn buffer_shared_frame(&mut self, text: bool, payload: Bytes) -> bool;
}

impl<S: Io> Transport for WebSocketStream<LeanIo<S>> {
    fn io(&mut self) -> &mut dyn Io {
        self.get_mut()
    }

    fn buffer_data_frame(&mut self, text: bool, payload: &[u8]) -> bool {
        self.get_mut().buffer_data_frame(text, payload)
    }

    fn buffer_shared_frame(&mut self, text: bool, payload: Bytes) -> bool {
        self.get_mut().buffer_shared_frame(text, payload)
    }
}

pub(crate) type WsStream = Box<dyn Transport>;

/// Bytes read from the socket per system call, into a buffer on the stack.
const SCRATCH: usize = 8 * 1024;
/// Written bytes collected before the writer waits for the socket to take some; a frame this
/// large goes to the socket directly. Small, because a stalled client keeps it full.
const MAX_PENDING_WRITE: usize = 16 * 1024;

/// Room the write buffer starts with: a burst's frames then fit without growing it step by step.
const WRITE_START: usize = 2 * 1024;

/// Flushed write buffers each thread keeps for the next connection that writes.
const SPARE_BUFFERS: usize = 16;

/// Most pieces a write buffer holds after its first shared payload.
const MAX_SHARED: usize = 64;

// `LeanIo` counts what was taken of `unread` (at most `SCRATCH` bytes) and what was sent of
// `unsent` (at most `MAX_PENDING_WRITE` bytes and one frame header) in 16 bits.
const _: () = assert!(SCRATCH <= u16::MAX as usize);
const _: () = assert!(MAX_PENDING_WRITE + 10 <= u16::MAX as usize);

thread_local! {
    /// Write buffers of finished flushes (empty, at most [`MAX_PENDING_WRITE`] bytes of room,
    /// at most [`SPARE_BUFFERS`]). A connection holds a write buffer only from its first frame
    /// to the flush, so a burst would otherwise allocate and free one: at 2 KiB, past the
    /// allocator's per-thread cache, that costs more than encoding the frames.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty write buffer with room for at least `more` bytes, from this thread's spares when
/// there is one.
fn write_buffer(more: usize) -> Vec<u8> {
    let mut buffer = SPARE.with(|spare| spare.borrow_mut().pop()).unwrap_or_default();
    buffer.reserve(more.max(WRITE_START));
    buffer
}

/// Keeps a flushed write buffer for [`write_buffer`], or frees it.
fn recycle(mut buffer: Vec<u8>) {
    if buffer.capacity() == 0 || buffer.capacity() > MAX_PENDING_WRITE {
        return;
    }
    buffer.clear();
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buffer);
        }
    });
}

/// A byte stream whose buffers exist only while there is data in them.
///
/// tungstenite reads in small steps (its read buffer is kept small because every connection
/// holds one); this type turns them into one system call per [`SCRATCH`] bytes. tungstenite
/// writes every frame at once (its write buffer is off); this type gathers the frames of a
/// burst and sends them in one call when flushed. A large frame's payload is not copied: the
/// connection keeps a share of the buffer every connection sending it shares, so a frame sent
/// to thousands costs each of them a header (tungstenite would copy it into a buffer of each
/// connection's that keeps its size for the connection's life).
pub(crate) struct LeanIo<S> {
    inner: S,
    /// Read from the socket but not yet taken by the reader; empty (unallocated) when idle.
    unread: Vec<u8>,
    /// Written but not yet sent; empty (unallocated) after a flush.
    unsent: Vec<u8>,
    /// What follows `unsent` once a large payload was buffered, sent after it in order.
    later: Option<Box<Later>>,
    /// How much of `unread` was taken (16 bits, like `sent`: with `blocked` they fit in the
    /// 8 bytes after `later`, and the boxed stream stays in a smaller allocation).
    taken: u16,
    /// How much of `unsent` was sent.
    sent: u16,
    /// The last write was not taken whole: its writer holds the rest, so nothing may be put
    /// in front of it.
    blocked: bool,
}

/// Pieces to send after a write buffer: shared payloads, and the frames buffered after them.
#[derive(Default)]
struct Later {
    pieces: std::collections::VecDeque<Bytes>,
    /// How much of the first piece was sent.
    sent: usize,
}

/// A server's data frame header (FIN, opcode 1 for text or 2 for binary, unmasked length) for
/// a payload of `len` bytes.
fn frame_header(text: bool, len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x80 | if text { 0x1 } else { 0x2 };
    let size = match len {
        0..=125 => {
            header[1] = len as u8;
            2
        }
        126..=0xffff => {
            header[1] = 126;
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (header, size)
}

impl<S> LeanIo<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, unread: Vec::new(), unsent: Vec::new(), later: None, taken: 0, sent: 0, blocked: false }
    }

    /// Makes room for `more` bytes, starting an empty buffer at [`WRITE_START`].
    fn reserve_for(&mut self, more: usize) {
        if self.unsent.capacity() == 0 {
            self.unsent = write_buffer(more);
        }
    }

    /// See [`Transport::buffer_data_frame`]: the frame is encoded here, straight into the
    /// write buffer (tungstenite would encode it into its own buffer and copy it over).
    fn buffer_data_frame(&mut self, text: bool, payload: &[u8]) -> bool {
        let len = payload.len();
        // At most a 4-byte header: what fits in the buffer has a 16-bit length at most.
        if self.blocked || self.later.is_some() || self.unsent.len() + 4 + len > MAX_PENDING_WRITE {
            return false;
        }
        self.reserve_for(4 + len);
        // FIN and the opcode (1 text, 2 binary), then the length in 7 bits or in 16.
        self.unsent.push(0x80 | if text { 0x1 } else { 0x2 });
        match u8::try_from(len) {
            Ok(short) if short < 126 => self.unsent.push(short),
            _ => {
                self.unsent.push(126);
                self.unsent.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        self.unsent.extend_from_slice(payload);
        true
    }

    /// See [`Transport::buffer_shared_frame`]: the header goes into the write buffer, the
    /// payload is kept as a share of its buffer; once there is one, later frames queue behind
    /// it (a small one copied).
    fn buffer_shared_frame(&mut self, text: bool, payload: Bytes) -> bool {
        if self.blocked {
            return false;
        }
        let (header, size) = frame_header(text, payload.len());
        match &mut self.later {
            None => {
                self.reserve_for(size);
                self.unsent.extend_from_slice(&header[..size]);
                let mut later = Box::<Later>::default();
                later.pieces.push_back(payload);
                self.later = Some(later);
            }
            Some(later) if later.pieces.len() + 2 <= MAX_SHARED => {
                if payload.len() <= WRITE_START {
                    let mut frame = Vec::with_capacity(size + payload.len());
                    frame.extend_from_slice(&header[..size]);
                    frame.extend_from_slice(&payload);
                    later.pieces.push_back(frame.into());
                } else {
                    later.pieces.push_back(Bytes::copy_from_slice(&header[..size]));
                    later.pieces.push_back(payload);
                }
            }
            Some(_) => return false,
        }
        true
    }
}

impl<S: AsyncWrite + Unpin> LeanIo<S> {
    /// Sends `unsent` until it is empty, then gives it back (to this thread's spares), then
    /// what follows it.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while (self.sent as usize) < self.unsent.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.unsent[self.sent as usize..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            // Bounded by `unsent.len()`, which `MAX_PENDING_WRITE` keeps below 64 KiB.
            self.sent += n as u16;
        }
        recycle(std::mem::take(&mut self.unsent));
        self.sent = 0;
        while let Some(later) = &mut self.later {
            let Some(piece) = later.pieces.front() else {
                self.later = None;
                break;
            };
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &piece[later.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            later.sent += n;
            if later.sent == piece.len() {
                later.pieces.pop_front();
                later.sent = 0;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LeanIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let taken = this.taken as usize;
        if taken < this.unread.len() {
            let n = buf.remaining().min(this.unread.len() - taken);
            buf.put_slice(&this.unread[taken..taken + n]);
            // Bounded by `unread.len()`, at most `SCRATCH`.
            this.taken += n as u16;
            if this.taken as usize == this.unread.len() {
                this.unread = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // Uninitialised: the socket is polled on every wake-up of the connection, mostly to
        // find nothing, and zeroing 8 KiB each time would cost more than the read.
        let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH];
        let mut read = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
        let read = read.filled();
        let n = buf.remaining().min(read.len());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            this.unread = read[n..].to_vec();
            this.taken = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LeanIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Until this write is taken whole, the writer holds bytes that must go first.
        this.blocked = true;
        if this.later.is_some() || this.unsent.len() + data.len() > MAX_PENDING_WRITE {
            ready!(this.poll_send_unsent(cx))?;
            if data.len() >= MAX_PENDING_WRITE {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
                this.blocked = n < data.len();
                return Poll::Ready(Ok(n));
            }
        }
        this.reserve_for(data.len());
        this.unsent.extend_from_slice(data);
        this.blocked = false;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_unsent(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_unsent(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn small_reads_are_served_from_one_big_read() {
        let (mut far, near) = duplex(64 * 1024);
        let mut lean = LeanIo::new(near);
        let sent: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        far.write_all(&sent).await.unwrap();
        drop(far);
        let mut got = Vec::new();
        let mut step = [0u8; 100];
        loop {
            let n = lean.read(&mut step).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&step[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(lean.unread.capacity(), 0, "a drained read buffer is freed");
    }

    #[tokio::test]
    async fn a_large_frame_goes_out_from_its_shared_buffer_in_order() {
        let (mut far, near) = duplex(1024 * 1024);
        let mut lean = LeanIo::new(near);
        let big = Bytes::from(vec![b'x'; 100_000]);
        assert!(lean.buffer_data_frame(true, b"hi"));
        assert!(!lean.buffer_data_frame(true, &big), "too large to copy");
        assert!(lean.buffer_shared_frame(true, big.clone()));
        assert!(lean.unsent.capacity() <= MAX_PENDING_WRITE, "the large payload is not copied");
        assert!(!lean.buffer_data_frame(false, b"after"), "nothing goes in front of the shared payload");
        assert!(lean.buffer_shared_frame(false, Bytes::from_static(b"after")));
        lean.flush().await.unwrap();
        assert!(lean.later.is_none() && lean.unsent.capacity() == 0, "nothing is kept after the flush");
        drop(lean);
        let mut wire = Vec::new();
        far.read_to_end(&mut wire).await.unwrap();
        let mut expected = vec![0x81, 2, b'h', b'i', 0x81, 127];
        expected.extend_from_slice(&100_000u64.to_be_bytes());
        expected.extend_from_slice(&big);
        expected.extend_from_slice(&[0x82, 5, b'a', b'f', b't', b'e', b'r']);
        assert_eq!(wire.len(), expected.len());
        assert!(wire == expected, "frames in order, headers right");
    }

    #[tokio::test]
    async fn writes_are_sent_on_flush_and_the_buffer_freed() {
        let (far, near) = duplex(1024 * 1024);
        let mut lean = LeanIo::new(near);
        for i in 0..100u8 {
            lean.write_all(&[i; 50]).await.unwrap();
        }
        lean.write_all(&vec![7u8; 100_000]).await.unwrap();
        lean.flush().await.unwrap();
        assert_eq!(lean.unsent.capacity(), 0, "a flushed write buffer is freed");
        lean.shutdown().await.unwrap();
        let mut got = Vec::new();
        let mut far = far;
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 5_000 + 100_000);
        assert_eq!(&got[..50], &[0u8; 50]);
        assert!(got[5_000..].iter().all(|b| *b == 7));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flushed_write_buffer_goes_to_the_next_writer_on_the_thread() {
        SPARE.with(|spare| spare.borrow_mut().clear());
        let (_far_a, near_a) = duplex(64 * 1024);
        let (_far_b, near_b) = duplex(64 * 1024);
        let (mut a, mut b) = (LeanIo::new(near_a), LeanIo::new(near_b));
        assert!(a.buffer_data_frame(true, b"hello"));
        let buffer = a.unsent.as_ptr();
        a.flush().await.unwrap();
        assert_eq!(a.unsent.capacity(), 0, "the connection holds no buffer after its flush");
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), 1, "the thread keeps it");
        assert!(b.buffer_data_frame(false, b"next"));
        assert_eq!(b.unsent.as_ptr(), buffer, "the next writer takes it instead of allocating");
        assert_eq!(b.unsent, [0x82, 4, b'n', b'e', b'x', b't'], "and starts it empty");
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), 0);

        // The spares are bounded: in count, and big buffers are freed.
        for _ in 0..SPARE_BUFFERS + 5 {
            recycle(Vec::with_capacity(WRITE_START));
        }
        recycle(Vec::with_capacity(MAX_PENDING_WRITE + 1));
        assert_eq!(SPARE.with(|spare| spare.borrow().len()), SPARE_BUFFERS);
        assert!(SPARE.with(|spare| spare.borrow().iter().all(|b| b.capacity() <= MAX_PENDING_WRITE)));
    }

    #[test]
    fn data_frames_are_encoded_as_tungstenite_encodes_them() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        for len in [0, 1, 125, 126, 255, 256, 1000, MAX_PENDING_WRITE - 4, MAX_PENDING_WRITE - 3, 70_000] {
            for text in [true, false] {
                let payload = vec![b'x'; len];
                let mut lean = LeanIo::new(tokio::io::empty());
                let copied = lean.buffer_data_frame(text, &payload);
                assert_eq!(copied, len <= MAX_PENDING_WRITE - 4, "copied only when it fits: {len}");
                assert!(copied || lean.buffer_shared_frame(text, Bytes::from(payload.clone())), "{len}");
                let mut buffered = lean.unsent.clone();
                for piece in lean.later.iter().flat_map(|later| &later.pieces) {
                    buffered.extend_from_slice(piece);
                }
                assert_eq!(lean.later.is_some(), len > MAX_PENDING_WRITE - 4, "shared only when too large to copy");
                let opcode = OpCode::Data(if text { Data::Text } else { Data::Binary });
                let mut expected = Vec::new();
                Frame::message(payload, opcode, true).format(&mut expected).unwrap();
                assert_eq!(buffered, expected, "{len} bytes, text {text}");
            }
        }
    }

    /// [`LeanIo::buffer_data_frame`] writes frames behind tungstenite's back, after whatever
    /// tungstenite wrote: that keeps the order only while tungstenite hands each frame over at
    /// once, which its write buffer being off (the server's config) guarantees.
    #[tokio::test]
    async fn a_frame_tungstenite_took_goes_out_before_one_buffered_after_it() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (far, near) = duplex(64 * 1024);
        let config = crate::config::WebsocketLimits::default().tungstenite_config();
        let mut server = WebSocketStream::from_raw_socket(LeanIo::new(near), Role::Server, Some(config)).await;
        server.feed(WsMessage::text("first")).await.unwrap();
        assert!(server.get_mut().buffer_data_frame(true, b"second"));
        server.flush().await.unwrap();
        let mut client = WebSocketStream::from_raw_socket(far, Role::Client, None).await;
        for expected in ["first", "second"] {
            let frame = client.next().await.expect("a frame").expect("a valid frame");
            assert_eq!(frame, WsMessage::text(expected));
        }
    }

    #[tokio::test]
    async fn nothing_is_put_in_front_of_a_write_the_socket_did_not_take() {
        let (_far, near) = duplex(1024);
        let mut lean = LeanIo::new(near);
        // Fill the pipe and the buffer until a write is refused.
        let refused = loop {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut lean).poll_write(&mut cx, &[1u8; 4096]) {
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => break true,
                Poll::Ready(Err(e)) => panic!("{e}"),
            }
        };
        assert!(refused);
        assert!(!lean.buffer_data_frame(true, b"hi"), "the refused bytes must go first");
    }

    #[tokio::test]
    async fn a_writer_waits_when_the_peer_does_not_read() {
        let (_far, near) = duplex(1024);
        let mut lean = LeanIo::new(near);
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(200), async {
            for _ in 0..10 {
                lean.write_all(&[1u8; 16 * 1024]).await.unwrap();
            }
        })
        .await;
        assert!(stalled.is_err(), "writes past the pending limit wait for the socket");
        assert!(lean.unsent.len() <= MAX_PENDING_WRITE);
    }
}
