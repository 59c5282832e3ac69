//! Reading input files: gzip detection and line-aligned chunks read on a helper thread.

use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

/// Opens a file, transparently decompressing it when it starts with the gzip magic bytes.
pub fn open_maybe_gzip(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let mut f = BufReader::with_capacity(1 << 20, File::open(path)?);
    let gz = f.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz { Box::new(MultiGzDecoder::new(f)) } else { Box::new(f) })
}

/// An iterator over chunks of whole lines, read (and decompressed) on a separate thread so
/// that decompression overlaps with parsing on a 2-core machine.
pub struct LineChunks {
    rx: Receiver<io::Result<Vec<u8>>>,
}

impl LineChunks {
    /// Starts the reader thread with chunks of about `size` bytes.
    pub fn spawn(mut reader: Box<dyn Read + Send>, size: usize) -> LineChunks {
        let (tx, rx) = sync_channel(4);
        thread::spawn(move || {
            let mut carry: Vec<u8> = Vec::new();
            loop {
                let mut buf = std::mem::take(&mut carry);
                let start = buf.len();
                buf.resize(start + size, 0);
                let n = match read_full(&mut reader, &mut buf[start..]) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                buf.truncate(start + n);
                if n == 0 {
                    if !buf.is_empty() {
                        let _ = tx.send(Ok(buf));
                    }
                    return;
                }
                // Keep the partial last line for the next chunk.
                if let Some(p) = buf.iter().rposition(|b| *b == b'\n') {
                    carry = buf.split_off(p + 1);
                }
                if tx.send(Ok(buf)).is_err() {
                    return;
                }
            }
        });
        LineChunks { rx }
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Iterator for LineChunks {
    type Item = io::Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}
