//! The chunked body decoder of the lean path: byte for byte the state machine of hyper's
//! HTTP/1 client (`hyper::proto::h1::decode`, MIT), so that an answer's chunked body is
//! accepted, refused and cut at the same byte whichever path carried it (checked by the
//! differential test in `upstream::differential`). Pure: it consumes what it is given and
//! asks for more.
//!
//! The rules it keeps: a size line is hex digits (at least one, no overflow), optional
//! spaces or tabs, an optional extension after `;` (which may not hold a bare LF, and whose
//! bytes over the whole body are limited to 16 KiB), then CRLF; chunk data ends with CRLF;
//! after the last chunk, the trailer section (at most 100 fields and 16 KiB) and CRLF.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Extension bytes allowed over a whole body (hyper's `CHUNKED_EXTENSIONS_LIMIT`).
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// Bytes of the trailer section (hyper's `TRAILER_LIMIT`).
const TRAILERS_LIMIT: usize = 16 * 1024;
/// Trailer fields (hyper's default `h1_max_headers`).
const MAX_TRAILERS: usize = 100;

/// What decoding found in the bytes given so far.
#[derive(Debug)]
pub(super) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    NeedMore,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Body,
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
    End,
}

/// A chunked body being decoded.
#[derive(Debug)]
pub(super) struct Chunked {
    phase: Phase,
    /// The size of the current chunk, then what is left of it.
    size: u64,
    extensions: u64,
    trailers: Option<BytesMut>,
    trailer_lines: usize,
}

impl Chunked {
    pub(super) fn new() -> Self {
        Self {
            phase: Phase::Start,
            size: 0,
            extensions: 0,
            trailers: None,
            trailer_lines: 0,
        }
    }

    /// Decodes the next piece of the body from `read`, consuming what it uses.
    pub(super) fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            if self.phase == Phase::End {
                return Ok(match self.trailers.take() {
                    Some(mut fields) => {
                        Decoded::Trailers(trailers(&mut fields, self.trailer_lines)?)
                    }
                    None => Decoded::Done,
                });
            }
            if self.phase == Phase::Body {
                if read.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(self.size).map_or(read.len(), |left| left.min(read.len()));
                self.size -= n as u64;
                if self.size == 0 {
                    self.phase = Phase::BodyCr;
                }
                return Ok(Decoded::Data(read.split_to(n).freeze()));
            }
            if read.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let byte = read.get_u8();
            self.phase = self.next(byte)?;
        }
    }

    /// Where one byte of the framing takes the decoder.
    fn next(&mut self, byte: u8) -> Result<Phase, &'static str> {
        use Phase::*;
        Ok(match (self.phase, byte) {
            (Start, _) => {
                self.add_digit(byte)
                    .ok_or("chunk size line without a size")??;
                Size
            }
            (Size, b'\t' | b' ') => SizeLws,
            (Size, b';') => Extension,
            (Size, b'\r') => SizeLf,
            (Size, _) => {
                self.add_digit(byte).ok_or("invalid chunk size")??;
                Size
            }
            (SizeLws, b'\t' | b' ') => SizeLws,
            (SizeLws, b';') => Extension,
            (SizeLws, b'\r') => SizeLf,
            (SizeLws, _) => return Err("invalid space in a chunk size line"),
            (Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return Err("chunk extension with a bare LF"),
            (Extension, _) => {
                self.extensions += 1;
                if self.extensions >= EXTENSIONS_LIMIT {
                    return Err("chunk extensions over the limit");
                }
                Extension
            }
            (SizeLf, b'\n') if self.size == 0 => EndCr,
            (SizeLf, b'\n') => Body,
            (SizeLf, _) => return Err("chunk size line without LF"),
            (BodyCr, b'\r') => BodyLf,
            (BodyCr, _) => return Err("chunk longer than its size"),
            (BodyLf, b'\n') => Start,
            (BodyLf, _) => return Err("chunk without CRLF after its data"),
            (Trailer, b'\r') => {
                self.push_trailer(byte)?;
                TrailerLf
            }
            (Trailer, _) => {
                self.push_trailer(byte)?;
                Trailer
            }
            (TrailerLf, b'\n') => {
                if self.trailer_lines >= MAX_TRAILERS {
                    return Err("too many trailer fields");
                }
                self.trailer_lines += 1;
                self.push_trailer(byte)?;
                EndCr
            }
            (TrailerLf, _) => return Err("trailer line without LF"),
            (EndCr, b'\r') => {
                if self.trailers.is_some() {
                    self.push_trailer(byte)?;
                }
                EndLf
            }
            (EndCr, _) => {
                match &mut self.trailers {
                    None => {
                        let mut fields = BytesMut::with_capacity(64);
                        fields.put_u8(byte);
                        self.trailers = Some(fields);
                    }
                    Some(_) => self.push_trailer(byte)?,
                }
                Trailer
            }
            (EndLf, b'\n') => {
                if self.trailers.is_some() {
                    self.push_trailer(byte)?;
                }
                End
            }
            (EndLf, _) => return Err("chunked body without its final CRLF"),
            (Body | End, _) => unreachable!("data and the end are handled by `decode`"),
        })
    }

    /// Adds a hex digit to the chunk size: `None` if `byte` is not one, `Some(Err)` on
    /// overflow.
    fn add_digit(&mut self, byte: u8) -> Option<Result<(), &'static str>> {
        let digit = char::from(byte).to_digit(16)?;
        Some(
            self.size
                .checked_mul(16)
                .and_then(|size| size.checked_add(u64::from(digit)))
                .map(|size| self.size = size)
                .ok_or("chunk size overflows"),
        )
    }

    fn push_trailer(&mut self, byte: u8) -> Result<(), &'static str> {
        let fields = self.trailers.get_or_insert_with(BytesMut::new);
        fields.put_u8(byte);
        if fields.len() >= TRAILERS_LIMIT {
            return Err("trailers over the limit");
        }
        Ok(())
    }
}

/// The trailer fields, parsed as hyper does: exactly as many as lines were counted.
fn trailers(fields: &mut BytesMut, lines: usize) -> Result<HeaderMap, &'static str> {
    let mut slots = vec![httparse::EMPTY_HEADER; lines];
    match httparse::parse_headers(fields, &mut slots) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            let mut map = HeaderMap::with_capacity(parsed.len());
            for field in parsed.iter() {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| "bad trailer name")?;
                let value =
                    HeaderValue::from_bytes(field.value).map_err(|_| "bad trailer value")?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err("bad trailers"),
    }
}
