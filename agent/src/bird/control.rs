//! BIRD's control socket spoken directly, for the read-only `show` commands the agent
//! asks often (session state every fraction of a second): no `birdc` process per
//! question. The socket is a file, so this works from any network namespace.
//!
//! The protocol: BIRD greets with `0001 BIRD <version> ready.`; a command is one line;
//! every reply line is `<4-digit code><'-' or ' '><text>`, or ` <text>` continuing the
//! previous code, and the line whose fifth character is a blank ends the reply. The
//! text returned here is what `birdc` prints: the code and its separator dropped, code
//! 0000 lines left out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::BirdError;

/// Ask BIRD one command on its control socket, with `timeout` for each read and write.
pub(crate) fn query(socket: &Path, command: &str, timeout: Duration) -> Result<String, BirdError> {
    let io = |source: std::io::Error| BirdError::Io {
        op: "talking to BIRD on",
        path: socket.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
    // The greeting.
    read_reply(&mut reader).map_err(io)?;
    (&stream)
        .write_all(format!("{command}\n").as_bytes())
        .map_err(io)?;
    read_reply(&mut reader).map_err(io)
}

/// Read one reply, as birdc would print it.
fn read_reply(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut out = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "BIRD closed the control socket in the middle of a reply",
            ));
        }
        let l = line.trim_end_matches(['\n', '\r']);
        let b = l.as_bytes();
        if let Some(text) = l.strip_prefix(' ') {
            out.push_str(text);
            out.push('\n');
        } else if b.len() >= 5
            && b[..4].iter().all(u8::is_ascii_digit)
            && matches!(b[4], b'-' | b' ')
        {
            if &l[..4] != "0000" {
                out.push_str(&l[5..]);
                out.push('\n');
            }
            if b[4] == b' ' {
                return Ok(out);
            }
        } else if b.len() == 4 && b.iter().all(u8::is_ascii_digit) {
            // "0000" with nothing after it ends a reply too.
            return Ok(out);
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_as_birdc_prints_them() {
        let raw = "2002-Name       Proto      Table      State  Since         Info\n\
                   1002-device1    Device     ---        up     04:59:49.914  \n\
                   1002-Mesh_10_0_0_2 BGP     ---        up     04:59:54.104  Established   \n\
                   1006-  BGP state:          Established\n \x20   Neighbor address: 10.0.0.2\n\
                   0000 \n\
                   left over";
        let mut r = std::io::Cursor::new(raw.as_bytes());
        let text = read_reply(&mut r).expect("a complete reply");
        assert_eq!(
            text,
            "Name       Proto      Table      State  Since         Info\n\
             device1    Device     ---        up     04:59:49.914  \n\
             Mesh_10_0_0_2 BGP     ---        up     04:59:54.104  Established   \n\
             \x20 BGP state:          Established\n\
             \x20   Neighbor address: 10.0.0.2\n"
        );
        let mut greeting = std::io::Cursor::new(&b"0001 BIRD 2.0.12 ready.\n"[..]);
        assert_eq!(
            read_reply(&mut greeting).expect("greeting"),
            "BIRD 2.0.12 ready.\n"
        );
        let mut cut = std::io::Cursor::new(&b"1002-device1 Device\n"[..]);
        assert!(read_reply(&mut cut).is_err());
    }
}
