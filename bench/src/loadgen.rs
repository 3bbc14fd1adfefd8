//! Open-loop, fixed-rate HTTP/1.1 load generator for bench/proxy.sh (std only; the
//! workspace's `warden-bench` package, built by the script with `cargo build --release
//! -p warden-bench`).
//!
//! Requests are scheduled at fixed intended times `t0 + k / rate` and request `k` is
//! sent on keep-alive connection `k % conns`, one outstanding request per connection
//! (wrk2's model). Latency runs from the *intended* send time to the end of the
//! response, so a stall delays the following requests and counts against them too (no
//! coordinated omission). Each connection is a thread that sleeps until its next
//! intended time with 1 ns timer slack.
//!
//!   loadgen --addr 127.0.0.2:15001 --host nginx.bench.svc.cluster.local:8080 \
//!           --rate 1000 --conns 16 --duration 10 [--path /]
//!
//! Prints one JSON object: requests, errors, non_2xx, rps, latency percentiles (ms) from
//! the intended time, the same from the actual send time (`service_*`), and how late
//! the sends were (`send_lag_*`), which shows whether the generator kept up.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

// The one foreign function: prctl(2), declared with its C signature (five register-width
// arguments, an int result), as glibc exports it.
#[allow(unsafe_code)]
unsafe extern "C" {
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
}
const PR_SET_TIMERSLACK: i32 = 29;

struct Args {
    addr: String,
    host: String,
    path: String,
    rate: f64,
    conns: usize,
    duration: f64,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: String::new(),
        host: String::new(),
        path: "/".into(),
        rate: 1000.0,
        conns: 16,
        duration: 10.0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_else(|| usage(&argv[i]));
        match argv[i].as_str() {
            "--addr" => a.addr = v,
            "--host" => a.host = v,
            "--path" => a.path = v,
            "--rate" => a.rate = v.parse().unwrap_or_else(|_| usage("--rate")),
            "--conns" => a.conns = v.parse().unwrap_or_else(|_| usage("--conns")),
            "--duration" => a.duration = v.parse().unwrap_or_else(|_| usage("--duration")),
            other => usage(other),
        }
        i += 2;
    }
    if a.addr.is_empty() || a.rate <= 0.0 || a.conns == 0 || a.duration <= 0.0 {
        usage("--addr/--rate/--conns/--duration");
    }
    if a.host.is_empty() {
        a.host = a.addr.clone();
    }
    a
}

fn usage(what: &str) -> ! {
    eprintln!(
        "loadgen: bad or missing {what}\nusage: loadgen --addr HOST:PORT [--host H] [--path P] \
         [--rate R] [--conns N] [--duration S]"
    );
    std::process::exit(2)
}

#[derive(Default)]
struct ConnResult {
    latency_ns: Vec<u64>,
    service_ns: Vec<u64>,
    lag_ns: Vec<u64>,
    errors: u64,
    non_2xx: u64,
    reconnects: u64,
    last_done: Option<Instant>,
    first_error: Option<String>,
}

/// Reads one HTTP/1.1 response from `s` (using and refilling `buf`); returns the status
/// and whether the server keeps the connection open.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, bool)> {
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut chunk = [0u8; 16384];
    // Head.
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut keep = !head.starts_with("http/1.0");
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in head.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            match k.trim() {
                "content-length" => content_length = v.parse().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => {
                    if v.contains("close") {
                        keep = false
                    } else if v.contains("keep-alive") {
                        keep = true
                    }
                }
                _ => {}
            }
        }
    }
    buf.drain(..head_end);
    if chunked {
        // Chunks until the zero-size one and its trailer.
        loop {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n") {
                    break p;
                }
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(eof());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailer section ends with an empty line.
                loop {
                    if let Some(p) = find(&buf[line_end..], b"\r\n\r\n") {
                        buf.drain(..line_end + p + 4);
                        return Ok((status, keep));
                    }
                    if buf[line_end..].starts_with(b"\r\n\r\n") {
                        buf.drain(..line_end + 4);
                        return Ok((status, keep));
                    }
                    let n = s.read(&mut chunk)?;
                    if n == 0 {
                        return Err(eof());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            let need = line_end + 2 + size + 2;
            while buf.len() < need {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(eof());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..need);
        }
    }
    let len = match content_length {
        Some(l) => l,
        None if status == 204 || status == 304 || (100..200).contains(&status) => 0,
        None => {
            // Body until close.
            loop {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    buf.clear();
                    return Ok((status, false));
                }
            }
        }
    };
    while buf.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..len);
    Ok((status, keep))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn run_conn(idx: usize, a: &Args, request: &[u8], t0: Instant, end: Instant) -> ConnResult {
    // SAFETY: prctl(PR_SET_TIMERSLACK, 1) takes no pointers (every argument is an
    // integer passed by value), touches no memory of this process, and only sets the
    // calling thread's timer slack to 1 ns; a failure is a -1 return we may ignore (the
    // slack then stays at its 50 µs default and `send_lag_*` shows it).
    #[allow(unsafe_code)]
    unsafe {
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
    let mut r = ConnResult::default();
    let interval = a.conns as f64 / a.rate;
    let offset = idx as f64 / a.rate;
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut j: u64 = 0;
    loop {
        let intended = t0 + Duration::from_secs_f64(offset + j as f64 * interval);
        j += 1;
        if intended >= end {
            break;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let sent = Instant::now();
        let result = (|| -> std::io::Result<(u16, bool)> {
            if stream.is_none() {
                stream = Some(connect(&a.addr)?);
                buf.clear();
            }
            let s = stream.as_mut().expect("connected above");
            s.write_all(request)?;
            read_response(s, &mut buf)
        })();
        let done = Instant::now();
        match result {
            Ok((status, keep)) => {
                r.latency_ns.push((done - intended).as_nanos() as u64);
                r.service_ns.push((done - sent).as_nanos() as u64);
                r.lag_ns.push((sent - intended).as_nanos() as u64);
                if !(200..300).contains(&status) {
                    r.non_2xx += 1;
                }
                if !keep {
                    if let Some(s) = stream.take() {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                    r.reconnects += 1;
                }
                r.last_done = Some(done);
            }
            Err(e) => {
                r.errors += 1;
                if r.first_error.is_none() {
                    r.first_error = Some(e.to_string());
                }
                stream = None;
                // Do not hammer a dead server: wait for the next slot.
            }
        }
    }
    r
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

fn main() {
    let a = parse_args();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: warden-bench-loadgen\r\n\r\n",
        a.path, a.host
    )
    .into_bytes();
    // Open every connection's first request a little in the future so the threads exist.
    let t0 = Instant::now() + Duration::from_millis(50);
    let end = t0 + Duration::from_secs_f64(a.duration);
    let results: Vec<ConnResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..a.conns)
            .map(|i| {
                let (a, request) = (&a, &request);
                scope.spawn(move || run_conn(i, a, request, t0, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connection thread panicked"))
            .collect()
    });
    let mut lat: Vec<u64> = Vec::new();
    let mut svc: Vec<u64> = Vec::new();
    let mut lag: Vec<u64> = Vec::new();
    let (mut errors, mut non_2xx, mut reconnects) = (0, 0, 0);
    let mut last = t0;
    let mut first_error = None;
    for r in results {
        lat.extend(r.latency_ns);
        svc.extend(r.service_ns);
        lag.extend(r.lag_ns);
        errors += r.errors;
        non_2xx += r.non_2xx;
        reconnects += r.reconnects;
        if let Some(d) = r.last_done {
            last = last.max(d);
        }
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    lat.sort_unstable();
    svc.sort_unstable();
    lag.sort_unstable();
    let elapsed = (last - t0).as_secs_f64().max(a.duration);
    let n = lat.len();
    let mean = if n == 0 {
        f64::NAN
    } else {
        lat.iter().sum::<u64>() as f64 / n as f64 / 1e6
    };
    let num = |x: f64| {
        if x.is_finite() {
            format!("{x:.4}")
        } else {
            "null".into()
        }
    };
    println!(
        "{{\"requests\": {n}, \"errors\": {errors}, \"non_2xx\": {non_2xx}, \"reconnects\": {reconnects}, \
         \"target_rate\": {}, \"conns\": {}, \"elapsed_s\": {elapsed:.3}, \"rps\": {:.1}, \
         \"p50_ms\": {}, \"p90_ms\": {}, \"p99_ms\": {}, \"p999_ms\": {}, \"max_ms\": {}, \"mean_ms\": {}, \
         \"service_p50_ms\": {}, \"service_p99_ms\": {}, \
         \"send_lag_p50_ms\": {}, \"send_lag_p99_ms\": {}, \"first_error\": {}}}",
        a.rate,
        a.conns,
        n as f64 / elapsed,
        num(pct(&lat, 50.0)),
        num(pct(&lat, 90.0)),
        num(pct(&lat, 99.0)),
        num(pct(&lat, 99.9)),
        num(pct(&lat, 100.0)),
        num(mean),
        num(pct(&svc, 50.0)),
        num(pct(&svc, 99.0)),
        num(pct(&lag, 50.0)),
        num(pct(&lag, 99.0)),
        match first_error {
            Some(e) => format!("{:?}", e),
            None => "null".into(),
        },
    );
}
