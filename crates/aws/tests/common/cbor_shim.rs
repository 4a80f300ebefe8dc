//! The CloudWatch SDK speaks Smithy RPC v2 CBOR, which moto 5.2 does not
//! (it speaks CloudWatch's Query and JSON 1.0 protocols; getmoto/moto#9195).
//! This loopback shim translates: CBOR requests to `/service/Granite.../
//! operation/OP` go to moto as JSON 1.0 (`X-Amz-Target`), and moto's JSON
//! answers come back as CBOR. Everything else is forwarded untouched.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::OnceLock;

use serde_json::{Map, Number, Value};

const PREFIX: &str = "/service/GraniteServiceVersion20100801/operation/";

/// The shim's URL (started once per test binary).
pub fn url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let moto = super::moto_url();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let moto = moto.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &moto);
                });
            }
        });
        url
    })
    .clone()
}

struct Message {
    head: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_message(r: &mut impl BufRead, until_eof: bool) -> std::io::Result<Option<Message>> {
    let mut head = String::new();
    if r.read_line(&mut head)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None if until_eof => {
            r.read_to_end(&mut body)?;
        }
        None => {}
    }
    Ok(Some(Message {
        head: head.trim_end().to_string(),
        headers,
        body,
    }))
}

fn serve(conn: TcpStream, moto: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    while let Some(req) = read_message(&mut reader, false)? {
        let method = req.head.split(' ').next().unwrap_or("POST").to_string();
        let path = req.head.split(' ').nth(1).unwrap_or("/").to_string();
        let op = path.strip_prefix(PREFIX).map(str::to_string);
        let auth = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let (path, extra, body) = match &op {
            Some(op) => {
                let json = if req.body.is_empty() {
                    Value::Object(Map::new())
                } else {
                    decode(&mut &req.body[..])
                };
                (
                    "/".to_string(),
                    format!(
                        "X-Amz-Target: GraniteServiceVersion20100801.{op}\r\nContent-Type: application/x-amz-json-1.0\r\n"
                    ),
                    serde_json::to_vec(&json).unwrap(),
                )
            }
            None => {
                let headers: String = req
                    .headers
                    .iter()
                    .filter(|(k, _)| {
                        !["host", "connection", "content-length", "authorization"]
                            .contains(&k.to_ascii_lowercase().as_str())
                    })
                    .map(|(k, v)| format!("{k}: {v}\r\n"))
                    .collect();
                (path, headers, req.body)
            }
        };
        let addr = moto.trim_start_matches("http://");
        let mut up = TcpStream::connect(addr)?;
        write!(
            up,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )?;
        up.write_all(&body)?;
        let resp = read_message(&mut BufReader::new(up), true)?.expect("moto answers");
        let (ct, body) = match (&op, serde_json::from_slice::<Value>(&resp.body)) {
            (Some(_), Ok(json)) => {
                let mut out = Vec::new();
                encode(&json, "", &mut out);
                ("application/cbor".to_string(), out)
            }
            // ECS through moto: task containers carry `cpu`/`memory`
            // as numbers where the ECS API has strings; mend them.
            (None, Ok(mut json)) if path == "/" && resp.body.starts_with(b"{") => {
                mend_ecs(&mut json, false);
                (
                    "application/x-amz-json-1.1".to_string(),
                    serde_json::to_vec(&json).unwrap(),
                )
            }
            _ => (
                resp.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map_or("text/plain".to_string(), |(_, v)| v.clone()),
                resp.body,
            ),
        };
        let protocol = if op.is_some() {
            "smithy-protocol: rpc-v2-cbor\r\n"
        } else {
            ""
        };
        write!(
            conn,
            "{}\r\nContent-Type: {ct}\r\n{protocol}Content-Length: {}\r\n\r\n",
            resp.head,
            body.len()
        )?;
        conn.write_all(&body)?;
    }
    Ok(())
}

fn mend_ecs(v: &mut Value, in_containers: bool) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if in_containers && ["cpu", "memory", "memoryReservation"].contains(&k.as_str()) {
                    if let Value::Number(n) = x {
                        *x = Value::String(n.to_string());
                    }
                } else {
                    mend_ecs(x, k == "containers");
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mend_ecs(x, in_containers)),
        _ => {}
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (h, t) = b.split_at(n);
    *b = t;
    h
}

fn arg(b: &mut &[u8], info: u8) -> u64 {
    match info {
        0..=23 => info as u64,
        24 => take(b, 1)[0] as u64,
        25 => u16::from_be_bytes(take(b, 2).try_into().unwrap()) as u64,
        26 => u32::from_be_bytes(take(b, 4).try_into().unwrap()) as u64,
        27 => u64::from_be_bytes(take(b, 8).try_into().unwrap()),
        _ => u64::MAX, // indefinite
    }
}

fn is_break(b: &[u8]) -> bool {
    b.first() == Some(&0xff)
}

/// CBOR to JSON (timestamps, tag 1, become epoch seconds).
pub fn decode(b: &mut &[u8]) -> Value {
    let first = take(b, 1)[0];
    let (major, info) = (first >> 5, first & 0x1f);
    match major {
        0 => Value::from(arg(b, info)),
        1 => Value::from(-1 - arg(b, info) as i64),
        2 | 3 => {
            let mut bytes = Vec::new();
            if info == 31 {
                while !is_break(b) {
                    let first = take(b, 1)[0];
                    let n = arg(b, first & 0x1f) as usize;
                    bytes.extend_from_slice(take(b, n));
                }
                take(b, 1);
            } else {
                let n = arg(b, info) as usize;
                bytes.extend_from_slice(take(b, n));
            }
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        }
        4 => {
            let mut out = Vec::new();
            if info == 31 {
                while !is_break(b) {
                    out.push(decode(b));
                }
                take(b, 1);
            } else {
                for _ in 0..arg(b, info) {
                    out.push(decode(b));
                }
            }
            Value::Array(out)
        }
        5 => {
            let mut out = Map::new();
            let mut entry = |b: &mut &[u8]| {
                let k = match decode(b) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let v = decode(b);
                out.insert(k, v);
            };
            if info == 31 {
                while !is_break(b) {
                    entry(b);
                }
                take(b, 1);
            } else {
                for _ in 0..arg(b, info) {
                    entry(b);
                }
            }
            Value::Object(out)
        }
        6 => {
            arg(b, info);
            decode(b)
        }
        _ => match info {
            20 => Value::Bool(false),
            21 => Value::Bool(true),
            25 => {
                let h = u16::from_be_bytes(take(b, 2).try_into().unwrap());
                let (e, m) = ((h >> 10) & 0x1f, (h & 0x3ff) as f64);
                let v = match e {
                    0 => m * 2f64.powi(-24),
                    31 => f64::INFINITY,
                    _ => (1.0 + m / 1024.0) * 2f64.powi(e as i32 - 15),
                };
                let v = if h & 0x8000 != 0 { -v } else { v };
                Number::from_f64(v).map_or(Value::Null, Value::Number)
            }
            26 => Number::from_f64(f32::from_be_bytes(take(b, 4).try_into().unwrap()) as f64)
                .map_or(Value::Null, Value::Number),
            27 => Number::from_f64(f64::from_be_bytes(take(b, 8).try_into().unwrap()))
                .map_or(Value::Null, Value::Number),
            _ => Value::Null,
        },
    }
}

fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend([m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend((n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend((n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend(n.to_be_bytes());
    }
}

fn double(x: f64, out: &mut Vec<u8>) {
    out.push(0xfb);
    out.extend(x.to_be_bytes());
}

/// JSON to CBOR; `key` is the member's name: timestamps (`...Timestamp(s)`)
/// get tag 1, doubles the SDK expects (`Values`, `Threshold`) stay floats.
pub fn encode(v: &Value, key: &str, out: &mut Vec<u8>) {
    let timestamp = key.ends_with("Timestamp") || key.ends_with("Timestamps");
    let float = matches!(key, "Values" | "Threshold");
    match v {
        Value::Null => out.push(0xf6),
        Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        Value::Number(n) => {
            if timestamp {
                out.push(0xc1);
                double(n.as_f64().unwrap(), out);
            } else if float || n.is_f64() {
                double(n.as_f64().unwrap(), out);
            } else if let Some(u) = n.as_u64() {
                head(0, u, out);
            } else {
                head(1, (-1 - n.as_i64().unwrap()) as u64, out);
            }
        }
        Value::String(s) => {
            if timestamp {
                if let Ok(t) = aws_smithy_types::DateTime::from_str(
                    s,
                    aws_smithy_types::date_time::Format::DateTime,
                ) {
                    out.push(0xc1);
                    double(t.as_secs_f64(), out);
                    return;
                }
            }
            head(3, s.len() as u64, out);
            out.extend(s.as_bytes());
        }
        Value::Array(a) => {
            head(4, a.len() as u64, out);
            for x in a {
                encode(x, key, out);
            }
        }
        Value::Object(m) => {
            head(5, m.len() as u64, out);
            for (k, x) in m {
                head(3, k.len() as u64, out);
                out.extend(k.as_bytes());
                encode(x, k, out);
            }
        }
    }
}
