//! A small HTTP/1.1 file server on 127.0.0.1 that serves a directory and misbehaves on request:
//! status codes, connections reset or closed mid-body, stalls, wrong bytes, redirect chains and
//! ignored Range headers. Every request is logged (path and Range) for the tests to inspect.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[allow(dead_code)]
const _: () = ();

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Send the headers and `after` body bytes, then reset the connection (RST).
    Reset { after: usize },
    /// Send the headers (full Content-Length) and `after` body bytes, then close cleanly.
    Short { after: usize },
    /// Send `after` body bytes, then go silent for `secs`.
    Stall { after: usize, secs: u64 },
    /// Serve the file with one byte changed.
    Wrong,
    /// Redirect `hops` times before serving the file.
    Redirect { hops: usize },
    /// Answer every request with 200 and the whole file, ignoring Range.
    IgnoreRange,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

struct State {
    root: PathBuf,
    /// (path, fault, uses left)
    faults: Mutex<Vec<(String, Fault, usize)>>,
    log: Mutex<Vec<Logged>>,
}

pub struct Server {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Server {
    pub fn start(root: impl Into<PathBuf>) -> Server {
        Self::start_on(root, 0)
    }

    /// Serve on a given port of 127.0.0.1 (0: any free port).
    pub fn start_on(root: impl Into<PathBuf>, port: u16) -> Server {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            root: root.into(),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(&st, conn);
                });
            }
        });
        Server { addr, state }
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Misbehave on `path` (e.g. `/downloads.apache.org/kafka/...`) for the next `times` requests.
    pub fn fault(&self, path: &str, fault: Fault, times: usize) {
        self.state
            .faults
            .lock()
            .unwrap()
            .push((path.to_string(), fault, times));
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn requests_for(&self, path: &str) -> Vec<Logged> {
        self.requests()
            .into_iter()
            .filter(|l| l.path == path)
            .collect()
    }
}

fn take_fault(st: &State, path: &str) -> Option<Fault> {
    let mut faults = st.faults.lock().unwrap();
    let i = faults
        .iter()
        .position(|(p, _, left)| p == path && *left > 0)?;
    faults[i].2 -= 1;
    Some(faults[i].1.clone())
}

fn decode(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(st: &State, mut conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let raw_path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let mut path = decode(raw_path.split('?').next().unwrap_or("/"));
    // Redirect chains: /__hop/N/rest → /__hop/N-1/rest → … → /rest
    let mut hop = None;
    if let Some(rest) = path.strip_prefix("/__hop/") {
        let (n, real) = rest.split_once('/').unwrap_or(("0", ""));
        hop = n.parse::<usize>().ok();
        path = format!("/{real}");
    }
    let log = |status| {
        st.log.lock().unwrap().push(Logged {
            path: path.clone(),
            range: range.clone(),
            status,
        })
    };
    let fault = if hop.is_some() {
        None
    } else {
        take_fault(st, &path)
    };
    if let Some(n) = hop.filter(|n| *n > 0) {
        log(302);
        let to = format!("/__hop/{}{}", n - 1, path);
        return write!(
            conn,
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    match &fault {
        Some(Fault::Status(code)) => {
            log(*code);
            return write!(
                conn,
                "HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        Some(Fault::Redirect { hops }) => {
            log(302);
            let to = format!("/__hop/{}{}", hops - 1, path);
            return write!(
                conn,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        _ => {}
    }
    let file = st.root.join(path.trim_start_matches('/'));
    let Ok(meta) = std::fs::metadata(&file).and_then(|m| {
        if m.is_file() {
            Ok(m)
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }) else {
        log(404);
        return write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    let total = meta.len() as usize;
    let start = match (&range, &fault) {
        (_, Some(Fault::IgnoreRange)) | (None, _) => None,
        (Some(r), _) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok()),
    };
    if let Some(s) = start {
        if s >= total {
            log(416);
            return write!(
                conn,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        log(206);
        write!(
            conn,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            total - 1,
            total - s
        )?;
    } else {
        log(200);
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
        )?;
    }
    if matches!(fault, None | Some(Fault::IgnoreRange)) {
        // The common case streams straight from the file (sendfile on Linux).
        let mut f = std::fs::File::open(&file)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start.unwrap_or(0) as u64))?;
        std::io::copy(&mut f, &mut conn)?;
        return Ok(());
    }
    let mut body = std::fs::read(&file)?;
    if matches!(fault, Some(Fault::Wrong)) {
        let i = body.len() / 2;
        body[i] ^= 0xff;
    }
    let body = &body[start.unwrap_or(0)..];
    match fault {
        Some(Fault::Reset { after }) => {
            conn.write_all(&body[..after.min(body.len())])?;
            conn.flush()?;
            std::thread::sleep(Duration::from_millis(50));
            // SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            unsafe {
                libc::setsockopt(
                    conn.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            Ok(())
        }
        Some(Fault::Short { after }) => {
            conn.write_all(&body[..after.min(body.len())])?;
            conn.shutdown(std::net::Shutdown::Both)
        }
        Some(Fault::Stall { after, secs }) => {
            conn.write_all(&body[..after.min(body.len())])?;
            conn.flush()?;
            std::thread::sleep(Duration::from_secs(secs));
            Ok(())
        }
        _ => conn.write_all(body),
    }
}
