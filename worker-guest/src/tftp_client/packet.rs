//! TFTP packets (RFC 1350) and option answers (RFC 2347–2349): encoding,
//! decoding and checking, apart from the transfer logic so each can be
//! read (and tested) on its own.

use super::MIN_BLKSIZE;

pub(super) const RRQ: u16 = 1;
pub(super) const WRQ: u16 = 2;
pub(super) const DATA: u16 = 3;
pub(super) const ACK: u16 = 4;
pub(super) const ERROR: u16 = 5;
pub(super) const OACK: u16 = 6;

/// TFTP error code "file not found".
pub const ERR_NOT_FOUND: u16 = 1;
/// TFTP error code "unknown transfer id".
pub(super) const ERR_UNKNOWN_TID: u16 = 5;
/// TFTP error code "option negotiation failed" (RFC 2347).
pub(super) const ERR_OPTIONS: u16 = 8;
/// TFTP error code "not defined" (used for our own protocol aborts).
pub(super) const ERR_UNDEFINED: u16 = 0;

#[derive(Debug)]
pub(super) enum Packet<'a> {
    Data(u16, &'a [u8]),
    Ack(u16),
    Error(u16, String),
    OAck(Vec<(String, String)>),
}

pub(super) fn parse(buf: &[u8]) -> Option<Packet<'_>> {
    let (op, rest) = buf.split_first_chunk::<2>()?;
    let word = |b: &[u8]| b.first_chunk::<2>().map(|w| u16::from_be_bytes(*w));
    match u16::from_be_bytes(*op) {
        DATA => Some(Packet::Data(word(rest)?, rest.get(2..)?)),
        ACK => Some(Packet::Ack(word(rest)?)),
        ERROR => {
            let code = word(rest)?;
            let msg = rest.get(2..)?.split(|&b| b == 0).next().unwrap_or_default();
            Some(Packet::Error(
                code,
                String::from_utf8_lossy(msg).into_owned(),
            ))
        }
        OACK => {
            let fields: Vec<String> = rest
                .split(|&b| b == 0)
                .filter(|f| !f.is_empty())
                .map(|f| String::from_utf8_lossy(f).to_ascii_lowercase())
                .collect();
            Some(Packet::OAck(
                fields
                    .chunks_exact(2)
                    .map(|c| (c[0].clone(), c[1].clone()))
                    .collect(),
            ))
        }
        _ => None,
    }
}

pub(super) fn request(op: u16, name: &str, options: &[(&str, String)]) -> Vec<u8> {
    let mut p = op.to_be_bytes().to_vec();
    for part in [name, "octet"] {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

pub(super) fn ack(block: u16) -> Vec<u8> {
    let mut p = ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

pub(super) fn data(block: u16, chunk: &[u8]) -> Vec<u8> {
    let mut p = DATA.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(chunk);
    p
}

pub(super) fn error_packet(code: u16, msg: &str) -> Vec<u8> {
    let mut p = ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// A reason to give up on a transfer: sent to the server as an ERROR
/// packet, returned to the caller as a protocol error.
pub(super) struct Abort {
    pub(super) code: u16,
    pub(super) message: String,
}

impl Abort {
    pub(super) fn new(code: u16, message: impl Into<String>) -> Self {
        Abort {
            code,
            message: message.into(),
        }
    }
}

/// The options a server accepted in its OACK.
#[derive(Debug, Clone, Copy)]
pub(super) struct Accepted {
    pub(super) blksize: usize,
    pub(super) tsize: Option<u64>,
    /// Blocks per window (RFC 7440); 1 when the server did not answer it.
    pub(super) windowsize: u16,
}

impl Accepted {
    /// What a server that answers no options uses.
    pub(super) const PLAIN: Accepted = Accepted {
        blksize: 512,
        tsize: None,
        windowsize: 1,
    };
}

/// Reads an OACK: a blksize or windowsize is only valid within what we
/// asked for (`asked`: blksize, `asked_window`: windowsize, 1 for not
/// asked); a tsize must be a number.
pub(super) fn accepted_options(
    options: &[(String, String)],
    asked: u16,
    asked_window: u16,
) -> Result<Accepted, Abort> {
    let mut out = Accepted::PLAIN;
    for (k, v) in options {
        match k.as_str() {
            "windowsize" => match v.parse::<u16>() {
                Ok(n) if asked_window > 1 && (1..=asked_window).contains(&n) => out.windowsize = n,
                _ => {
                    return Err(Abort::new(
                        ERR_OPTIONS,
                        format!("server answered windowsize {v}, asked for at most {asked_window}"),
                    ))
                }
            },
            "blksize" => match v.parse::<u16>() {
                Ok(n) if asked != 512 && (MIN_BLKSIZE..=asked).contains(&n) => {
                    out.blksize = usize::from(n)
                }
                _ => {
                    return Err(Abort::new(
                        ERR_OPTIONS,
                        format!("server answered blksize {v}, asked for at most {asked}"),
                    ))
                }
            },
            "tsize" => match v.parse::<u64>() {
                Ok(n) => out.tsize = Some(n),
                Err(_) => {
                    return Err(Abort::new(
                        ERR_OPTIONS,
                        format!("server answered tsize '{v}', not a number"),
                    ))
                }
            },
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packets_and_rejects_short_ones() {
        assert!(parse(&[]).is_none());
        assert!(parse(&[0, 3, 0]).is_none());
        assert!(parse(&[0, 9, 0, 1]).is_none());
        assert!(matches!(
            parse(&[0, 3, 0, 7, b'x']),
            Some(Packet::Data(7, b"x"))
        ));
        assert!(matches!(parse(&[0, 4, 1, 0]), Some(Packet::Ack(256))));
        match parse(b"\x00\x05\x00\x01nope\x00") {
            Some(Packet::Error(1, m)) => assert_eq!(m, "nope"),
            other => panic!("{other:?}"),
        }
        match parse(b"\x00\x06BLKSIZE\x001024\x00tsize\x00") {
            Some(Packet::OAck(o)) => assert_eq!(o, [("blksize".into(), "1024".into())]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn option_answers_are_checked() {
        let o = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(
            accepted_options(&o("blksize", "1024"), 1428, 1)
                .ok()
                .map(|a| a.blksize),
            Some(1024)
        );
        assert!(accepted_options(&o("blksize", "2000"), 1428, 1).is_err());
        assert!(accepted_options(&o("blksize", "1024"), 512, 1).is_err());
        assert!(accepted_options(&o("blksize", "x"), 1428, 1).is_err());
        assert_eq!(
            accepted_options(&o("tsize", "77"), 512, 1)
                .ok()
                .and_then(|a| a.tsize),
            Some(77)
        );
        assert!(accepted_options(&o("tsize", "-1"), 512, 1).is_err());
        assert_eq!(
            accepted_options(&[], 1428, 16).ok().map(|a| a.blksize),
            Some(512)
        );
        // windowsize: only what was asked for, 1 when not answered.
        let w = |v: &str, asked| {
            accepted_options(&o("windowsize", v), 1428, asked)
                .ok()
                .map(|a| a.windowsize)
        };
        assert_eq!(w("8", 16), Some(8));
        assert_eq!(w("16", 16), Some(16));
        assert_eq!(w("17", 16), None);
        assert_eq!(w("0", 16), None);
        assert_eq!(w("2", 1), None);
        assert_eq!(
            accepted_options(&[], 1428, 16).ok().map(|a| a.windowsize),
            Some(1)
        );
    }
}
