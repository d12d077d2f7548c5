//! Upgraded connections (WebSocket): which upgrades may pass, and the byte pipe after the
//! upstream switched protocols.
//!
//! After a `101` tokengate relays bytes it no longer reads, so only protocols a client may
//! legitimately use through an auth proxy pass: `upgrades` (WebSocket by default). Any other
//! `Upgrade` (`h2c` above all: the upstream would then take HTTP/2 requests through the
//! tunnel that tokengate never checked, with whatever identity headers they carry) is
//! stripped with the other hop-by-hop headers, and the request goes on as a plain one. An
//! allowed upgrade on a connection that cannot be upgraded (HTTP/1.0) is refused before it
//! goes upstream.
//!
//! A tunnel keeps its client connection's place in `limits.max_connections` until it ends,
//! and is closed after `timeouts.tunnel_idle_seconds` without a byte either way, or when
//! the credential it was opened with ends (`streams`): the WebSocket frames in flight are
//! finished (each direction's frame heads are followed for that), then each side gets a
//! close frame 1008 and the connections close.

use crate::error::Rejection;
use http::header::{CONNECTION, UPGRADE};
use http::{request, HeaderMap, HeaderValue};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Checks per idle period: a quiet tunnel is closed between one and 1¼ periods after its
/// last byte (as the connection watchdog does it).
const CHECKS: u32 = 4;

/// The protocol a request may upgrade to, if it asks for one that `allowed` lets through.
/// An upgrade not allowed is `None` (the request goes on without it).
pub fn requested(
    parts: &request::Parts,
    allowed: &[String],
) -> Result<Option<HeaderValue>, Rejection> {
    let upgradable = parts
        .extensions
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some();
    protocol(&parts.headers, upgradable, allowed)
}

/// `requested`, for a connection that can be upgraded or not.
fn protocol(
    headers: &HeaderMap,
    upgradable: bool,
    allowed: &[String],
) -> Result<Option<HeaderValue>, Rejection> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if !asks {
        return Ok(None);
    }
    let mut protocols = headers.get_all(UPGRADE).iter();
    let (Some(protocol), None) = (protocols.next(), protocols.next()) else {
        return Ok(None);
    };
    // One protocol, with or without a version (`websocket`, `foo/2`).
    let name = protocol
        .as_bytes()
        .split(|&b| b == b'/')
        .next()
        .unwrap_or_default();
    if protocol.as_bytes().contains(&b',')
        || !allowed
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(name.trim_ascii()))
    {
        return Ok(None);
    }
    if !upgradable {
        return Err(Rejection::BadRequest("This connection cannot be upgraded."));
    }
    Ok(Some(protocol.clone()))
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A side closed (or failed).
    Closed,
    /// Neither side sent a byte for the idle limit.
    Idle,
    /// The credential it was opened with ended (`streams`).
    Credential,
}

/// How long a tunnel whose credential ended may take to finish the frames in flight
/// before it is closed (with `streams::SWEEP`, within a second).
pub const GRACE: Duration = Duration::from_millis(500);

/// The close frame's payload: status 1008 (policy violation, RFC 6455 §7.4.1) and why.
const CLOSE_1008: &[u8] = b"\x03\xf0credential ended";

/// What a tunnel relays and until when.
pub struct Tunnel<E> {
    /// No byte either way for this long: closed.
    pub idle: Duration,
    /// The tunnel carries WebSocket frames (so a close frame can be sent when it ends).
    pub websocket: bool,
    /// Resolves when the credential that opened it ends.
    pub ending: E,
}

/// Relays bytes both ways between the upgraded client and upstream connections until
/// either side closes, neither sends a byte for `idle`, or `ending` resolves: then the
/// frames in flight are finished (for up to `GRACE`), each side gets a WebSocket close
/// frame 1008 (when `websocket`) and both are closed. `_slot` (the client connection's
/// place under `limits.max_connections`) is held until then.
pub async fn relay<C, U, E, S>(client: C, upstream: U, tunnel: Tunnel<E>, _slot: S) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    E: Future<Output = ()>,
{
    let activity = AtomicU32::new(0);
    let (stop, stopping) = watch::channel(false);
    let (from_client, to_client) = tokio::io::split(client);
    let (from_upstream, to_upstream) = tokio::io::split(upstream);
    let frames = || tunnel.websocket.then(Frames::default);
    let pumps = async {
        tokio::join!(
            pump(
                from_client,
                to_upstream,
                frames(),
                stopping.clone(),
                &activity
            ),
            pump(
                from_upstream,
                to_client,
                frames(),
                stopping.clone(),
                &activity
            ),
        )
    };
    tokio::pin!(pumps);
    let ending = tunnel.ending;
    tokio::pin!(ending);
    tokio::select! {
        _ = &mut pumps => Ended::Closed,
        () = quiet_for(&activity, tunnel.idle) => {
            tracing::debug!("tunnel closed after its idle limit");
            Ended::Idle
        }
        () = &mut ending => {
            tracing::debug!("tunnel closed: its credential ended");
            let _ = stop.send(true);
            if let Ok((to_upstream, to_client)) = tokio::time::timeout(GRACE, &mut pumps).await {
                if tunnel.websocket {
                    let _ = tokio::time::timeout(GRACE, async {
                        tokio::join!(close(to_client, false), close(to_upstream, true))
                    })
                    .await;
                }
            }
            Ended::Credential
        }
    }
}

/// What a pump ended with: its side closed, or it stopped at a frame boundary when told
/// to, handing back the connection it wrote to.
enum Pumped<W> {
    Closed,
    Stopped(W),
}

/// Copies `from` to `to` until `from` ends (then `to` is shut down) or either fails; when
/// `stopping` turns true, copies only the rest of the frame in flight (all of `frames`
/// when it tracks none) and stops.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut frames: Option<Frames>,
    mut stopping: watch::Receiver<bool>,
    activity: &AtomicU32,
) -> Pumped<W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0; 8 * 1024];
    let mut stop = false;
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = stopping.changed(), if !stop => {
                stop = true;
                if frames.as_ref().is_none_or(Frames::at_boundary) {
                    return Pumped::Stopped(to);
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return Pumped::Closed;
            }
            Ok(n) => n,
        };
        activity.fetch_add(1, Relaxed);
        let end = frames.as_mut().map_or(n, |f| f.advance(&buf[..n], stop));
        if to.write_all(&buf[..end]).await.is_err() || to.flush().await.is_err() {
            return Pumped::Closed;
        }
        if stop && frames.as_ref().is_none_or(Frames::at_boundary) {
            return Pumped::Stopped(to);
        }
    }
}

/// Sends a close frame 1008 on a stopped side and closes it; `masked` toward the upstream
/// (a client's frames are masked, RFC 6455 §5.3).
async fn close<W: AsyncWrite + Unpin>(side: Pumped<W>, masked: bool) {
    let Pumped::Stopped(mut to) = side else {
        return;
    };
    let mut frame = Vec::with_capacity(2 + 4 + CLOSE_1008.len());
    frame.push(0x88); // FIN, close
    let len = CLOSE_1008.len() as u8;
    if masked {
        let key: [u8; 4] = rand::random();
        frame.push(0x80 | len);
        frame.extend_from_slice(&key);
        frame.extend(
            CLOSE_1008
                .iter()
                .zip(key.iter().cycle())
                .map(|(b, k)| b ^ k),
        );
    } else {
        frame.push(len);
        frame.extend_from_slice(CLOSE_1008);
    }
    let _ = to.write_all(&frame).await;
    let _ = to.shutdown().await;
}

/// Where WebSocket frames begin in one direction of a tunnel (RFC 6455 §5.2): the bytes
/// of a frame head seen so far, and how much of the frame's payload is still to come.
#[derive(Debug, Default)]
struct Frames {
    head: [u8; 14],
    have: usize,
    payload: u64,
}

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload == 0
    }

    /// Follows `data` through the frames; with `stop`, only up to the first frame
    /// boundary (at once if there is one). Returns how many bytes it went through.
    fn advance(&mut self, data: &[u8], stop: bool) -> usize {
        let mut at = 0;
        loop {
            if (stop && self.at_boundary()) || at == data.len() {
                return at;
            }
            if self.payload > 0 {
                let take = self.payload.min((data.len() - at) as u64);
                self.payload -= take;
                at += take as usize;
                continue;
            }
            self.head[self.have] = data[at];
            self.have += 1;
            at += 1;
            if self.have >= 2 && self.have == head_len(self.head[1]) {
                self.payload = payload_len(&self.head);
                self.have = 0;
            }
        }
    }
}

/// The length of a frame head whose second byte is `second`.
fn head_len(second: u8) -> usize {
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

/// The payload length a complete frame head announces.
fn payload_len(head: &[u8; 14]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes(head[2..10].try_into().unwrap_or_default()),
        short => u64::from(short),
    }
}

/// Resolves once `activity` has not moved for a whole `idle` period.
async fn quiet_for(activity: &AtomicU32, idle: Duration) {
    let mut tick = tokio::time::interval(idle / CHECKS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let (mut seen, mut quiet) = (activity.load(Relaxed), 0);
    loop {
        tick.tick().await;
        let now = activity.load(Relaxed);
        if now == seen {
            quiet += 1;
            if quiet >= CHECKS {
                return;
            }
        } else {
            (seen, quiet) = (now, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut builder = Request::get("/ws");
        for (name, value) in pairs {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0.headers
    }

    #[test]
    fn only_allowed_protocols_upgrade() {
        let allowed = vec!["websocket".to_owned()];
        let ask = |upgrade: &str| {
            protocol(
                &headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", upgrade)]),
                true,
                &allowed,
            )
        };
        assert_eq!(ask("websocket").unwrap().unwrap(), "websocket");
        assert_eq!(ask("WebSocket").unwrap().unwrap(), "WebSocket");
        for stripped in ["h2c", "websocket, h2c", "h2c, websocket", "tls/1.0", ""] {
            assert_eq!(ask(stripped).unwrap(), None, "{stripped}");
        }
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert_eq!(protocol(&no_connection, true, &allowed).unwrap(), None);
        let asked = headers(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert_eq!(
            protocol(&asked, false, &allowed),
            Err(Rejection::BadRequest("This connection cannot be upgraded."))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_closes_after_its_idle_limit() {
        let (client, mut far_client) = tokio::io::duplex(64);
        let (upstream, _far_upstream) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let tunnel = Tunnel {
            idle: Duration::from_secs(40),
            websocket: true,
            ending: std::future::pending(),
        };
        let relay = tokio::spawn(relay(client, upstream, tunnel, ()));
        // Traffic keeps it open.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            tokio::io::AsyncWriteExt::write_all(&mut far_client, b"x")
                .await
                .unwrap();
        }
        assert!(!relay.is_finished());
        assert_eq!(relay.await.unwrap(), Ended::Idle);
        let quiet = started.elapsed() - Duration::from_secs(100);
        assert!(
            quiet >= Duration::from_secs(40) && quiet <= Duration::from_secs(50),
            "closed {quiet:?} after the last byte"
        );
    }

    /// A frame head (unmasked unless `key`) and its payload.
    fn frame(opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let mask = if key.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask | n as u8),
            n if n <= 0xffff => {
                out.push(mask | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(key) = key {
            out.extend_from_slice(&key);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_are_followed_across_reads() {
        let stream = [
            frame(1, b"hi", None),
            frame(2, &[7; 300], Some([1, 2, 3, 4])),
            frame(2, &[9; 70_000], None),
            frame(9, b"", None),
        ];
        let ends: Vec<usize> = stream
            .iter()
            .scan(0, |at, f| {
                *at += f.len();
                Some(*at)
            })
            .collect();
        let bytes = stream.concat();
        // A byte at a time: at a boundary exactly where each frame ends.
        let mut frames = Frames::default();
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(frames.advance(&[*b], false), 1);
            assert_eq!(frames.at_boundary(), ends.contains(&(i + 1)), "byte {i}");
        }
        // Stopping: up to the end of the frame in flight, and no further.
        let mut frames = Frames::default();
        assert_eq!(frames.advance(&bytes[..5], false), 5);
        assert_eq!(frames.advance(&bytes[5..], true), ends[1] - 5);
        assert!(frames.at_boundary());
        assert_eq!(frames.advance(&bytes[ends[1]..], true), 0, "at a boundary");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ending_tunnel_finishes_the_frame_in_flight_then_closes_with_1008() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut far_client) = tokio::io::duplex(1 << 16);
        let (upstream, mut far_upstream) = tokio::io::duplex(1 << 16);
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        let tunnel = Tunnel {
            idle: Duration::from_secs(300),
            websocket: true,
            ending: async move {
                let _ = ended.await;
            },
        };
        let relay = tokio::spawn(relay(client, upstream, tunnel, ()));
        let message = frame(1, &[b'x'; 1000], None);
        far_upstream.write_all(&message[..500]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        end.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The rest of the frame in flight, and one more that must not pass.
        far_upstream.write_all(&message[500..]).await.unwrap();
        far_upstream
            .write_all(&frame(1, b"too late", None))
            .await
            .unwrap();
        assert_eq!(relay.await.unwrap(), Ended::Credential);

        let mut to_client = Vec::new();
        far_client.read_to_end(&mut to_client).await.unwrap();
        let close = frame(8, CLOSE_1008, None);
        assert_eq!(to_client, [message, close].concat());

        let mut to_upstream = Vec::new();
        far_upstream.read_to_end(&mut to_upstream).await.unwrap();
        assert_eq!(to_upstream[..2], [0x88, 0x80 | CLOSE_1008.len() as u8]);
        let key = &to_upstream[2..6];
        let payload: Vec<u8> = to_upstream[6..]
            .iter()
            .zip(key.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(payload, CLOSE_1008, "masked toward the upstream");
        assert_eq!(&payload[..2], &1008u16.to_be_bytes());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_never_finishes_is_cut_after_the_grace() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut far_client) = tokio::io::duplex(1 << 16);
        let (upstream, mut far_upstream) = tokio::io::duplex(1 << 16);
        let tunnel = Tunnel {
            idle: Duration::from_secs(300),
            websocket: true,
            ending: tokio::time::sleep(Duration::from_secs(1)),
        };
        let started = tokio::time::Instant::now();
        let relay = tokio::spawn(relay(client, upstream, tunnel, ()));
        let message = frame(2, &[0; 1000], None);
        far_upstream.write_all(&message[..10]).await.unwrap();
        assert_eq!(relay.await.unwrap(), Ended::Credential);
        assert!(started.elapsed() <= Duration::from_secs(1) + GRACE + Duration::from_millis(1));
        let mut to_client = Vec::new();
        far_client.read_to_end(&mut to_client).await.unwrap();
        assert_eq!(to_client, message[..10], "no close frame inside a frame");
    }
}
