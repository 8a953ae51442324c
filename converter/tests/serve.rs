//! `arq serve` end to end: the binary on a loopback port, spoken to over plain HTTP/1.0
//! sockets, its answers checked against the CLI's on the same model (greedy text,
//! next-token distributions and scores equal), concurrent streams against each one alone
//! (continuous batching changes nothing), and bad requests against the OpenAI error
//! shape. The official `openai` client and a real browser are `scripts/test-serve.sh`.
#![cfg(feature = "serve")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn tinygpt() -> PathBuf {
    repo("models/tinygpt/tinygpt-q8.arq")
}

/// A running `arq serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_arq"))
            .arg("serve")
            .arg(model)
            .args(["--port", "0", "--threads", "1"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the address, then keeps draining the server's log so it never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("arq serve: listening on http://") {
                    let _ = tx.send(rest.trim_end_matches('/').to_string());
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the server did not start");
        Server { child, addr }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// One request; the status, the headers (lower-case names) and the body.
    fn raw(&self, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut s = self.connect();
        let head = format!("{method} {path} HTTP/1.0\r\nHost: arq\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).unwrap();
        // A refused body may be cut short by the server: that is its answer, not an error.
        let _ = s.write_all(body);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse_response(&out)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, _, b) = self.raw("POST", path, body.to_string().as_bytes());
        (status, serde_json::from_slice(&b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&b))))
    }

    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body);
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    /// The `data:` payloads of a streamed answer.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let (status, headers, b) = self.raw("POST", path, body.to_string().as_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        assert!(headers.contains("content-type: text/event-stream"), "{headers}");
        let text = String::from_utf8(b).unwrap();
        text.split("\n\n")
            .flat_map(|ev| ev.lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_string)).collect::<Vec<_>>())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_arq")).args(args).output().unwrap();
    assert!(out.status.success(), "arq {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn completion(prompt: &str, n: usize) -> Value {
    json!({"model": "x", "prompt": prompt, "max_tokens": n, "temperature": 0})
}

#[test]
fn greedy_completions_equal_the_clis_generate_streamed_or_not() {
    let model = tinygpt();
    let server = Server::start(&model, &[]);
    let models = server.raw("GET", "/v1/models", b"");
    assert_eq!(models.0, 200);
    let v: Value = serde_json::from_slice(&models.2).unwrap();
    assert_eq!(v["data"][0]["id"], "tinygpt-q8");
    for prompt in ["The little robot", "Once upon a time, "] {
        let want =
            cli(&["generate", model.to_str().unwrap(), "-p", prompt, "-n", "40", "--temp", "0", "--threads", "1"]);
        let r = server.ok("/v1/completions", &completion(prompt, 40));
        let text = r["choices"][0]["text"].as_str().unwrap();
        assert_eq!(format!("{prompt}{text}\n"), want);
        assert_eq!(r["object"], "text_completion");
        assert_eq!(r["choices"][0]["finish_reason"], "length");
        assert_eq!(r["usage"]["completion_tokens"], 40);

        let mut body = completion(prompt, 40);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let events = server.stream("/v1/completions", &body);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let streamed: String =
            chunks.iter().filter_map(|c| c["choices"].get(0).and_then(|c| c["text"].as_str())).collect();
        assert_eq!(streamed, text);
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 40);
        assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    }
    // The same seed gives the same sampled text; logprobs come with their alternatives.
    let sampled = json!({"prompt": "A cat", "max_tokens": 24, "temperature": 0.9, "seed": 5, "logprobs": 3});
    let (a, b) = (server.ok("/v1/completions", &sampled), server.ok("/v1/completions", &sampled));
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let lp = &a["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 24);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 3);
    assert!(lp["token_logprobs"].as_array().unwrap().iter().all(|l| l.as_f64().unwrap() <= 0.0));
}

#[test]
fn concurrent_streams_equal_each_alone() {
    let model = tinygpt();
    let server = Server::start(&model, &["--slots", "4"]);
    let prompts = ["The sun", "A small dog ran", "In the morning, the", "She said"];
    let alone: Vec<Value> = prompts.iter().map(|p| server.ok("/v1/completions", &completion(p, 60))).collect();
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> =
            prompts.iter().map(|p| s.spawn(|| server.ok("/v1/completions", &completion(p, 60)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!(a["choices"][0]["text"], t["choices"][0]["text"]);
    }
}

#[test]
fn next_and_score_equal_the_cli_and_the_cache_is_reused() {
    let model = tinygpt();
    let m = model.to_str().unwrap();
    let server = Server::start(&model, &[]);
    let text = "The old man walked to the";
    let want: Value =
        serde_json::from_str(&cli(&["next", m, "-p", text, "--top", "5", "--json", "--threads", "1"])).unwrap();
    let got = server.ok("/v1/next", &json!({"text": text, "top": 5}));
    assert_eq!(got["top"], want["top"]);
    assert_eq!(got["prompt_tokens"], want["prompt_tokens"]);
    // The next keystroke feeds only what the cached text lacks.
    let more = server.ok("/v1/next", &json!({"text": format!("{text} "), "top": 5}));
    assert_eq!(more["cached_tokens"].as_u64().unwrap() + 1, more["prompt_tokens"].as_u64().unwrap());
    let fresh = Server::start(&model, &[]);
    assert_eq!(more["top"], fresh.ok("/v1/next", &json!({"text": format!("{text} "), "top": 5}))["top"]);

    let heldout = std::fs::read_to_string(repo("models/tinygpt/heldout.txt")).unwrap();
    let sample = &heldout[..1500];
    let path = std::env::temp_dir().join(format!("arq-serve-score-{}.txt", std::process::id()));
    std::fs::write(&path, sample).unwrap();
    let want: Value =
        serde_json::from_str(&cli(&["score", m, path.to_str().unwrap(), "--json", "--per-token", "--threads", "1"]))
            .unwrap();
    std::fs::remove_file(&path).unwrap();
    let got = server.ok("/v1/score", &json!({"text": sample, "per_token": true}));
    assert_eq!(got, want);
    assert!(got["windows"]["count"].as_u64().unwrap() > 1);

    let ids = server.ok("/v1/tokenize", &json!({"content": "hello there"}))["tokens"].clone();
    assert_eq!(ids.as_array().unwrap().len(), 11);
    assert_eq!(server.ok("/v1/detokenize", &json!({"tokens": ids}))["content"], "hello there");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(&tinygpt(), &["--max-body", "4096", "--max-tokens", "100"]);
    let error = |status: u16, body: &[u8], path: &str| {
        let (s, _, b) = server.raw("POST", path, body);
        assert_eq!(s, status, "{path} {}", String::from_utf8_lossy(body));
        let v: Value = serde_json::from_slice(&b).unwrap();
        let msg = v["error"]["message"].as_str().unwrap().to_string();
        assert!(!msg.is_empty() && v["error"]["type"].is_string());
        msg
    };
    assert!(error(400, b"{\"prompt\": ", "/v1/completions").contains("EOF"));
    assert!(error(400, br#"{"prompt": "a", "max_tokens": "ten"}"#, "/v1/completions").contains("invalid"));
    assert!(error(400, br#"{"prompt": "a", "n": 2}"#, "/v1/completions").contains("n = 1"));
    assert!(error(400, br#"{"prompt": "a", "max_tokens": 101}"#, "/v1/completions").contains("--max-tokens"));
    assert!(error(400, br#"{"prompt": "a", "temperature": 3}"#, "/v1/completions").contains("temperature"));
    assert!(error(400, br#"{"messages": []}"#, "/v1/chat/completions").contains("empty"));
    assert!(error(400, br#"{"prompt": [1, 2, 99999]}"#, "/v1/completions").contains("vocabulary"));
    assert!(error(400, br#"{"tokens": [99999]}"#, "/v1/detokenize").contains("vocabulary"));
    assert!(error(413, &vec![b' '; 10_000], "/v1/completions").contains("--max-body"));
    assert!(error(404, b"{}", "/v1/nothing").contains("no such endpoint"));
    let long = "word ".repeat(200);
    let (s, v) = server.post("/v1/completions", &json!({"prompt": long}));
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("context_length_exceeded")));
    // A client that sends half a request and goes quiet holds nobody up.
    let mut slow = server.connect();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"pro").unwrap();
    assert_eq!(server.ok("/v1/completions", &completion("Hi", 5))["usage"]["completion_tokens"], 5);
    drop(slow);
}

/// A GGUF-converted SmolLM2 (ARQ_SMOLLM2_GGUF, as `scripts/test-all.sh` sets it): slow
/// enough per token that queueing and cancelling can be watched.
fn smollm2() -> Option<PathBuf> {
    let gguf = std::env::var("ARQ_SMOLLM2_GGUF").ok().map(PathBuf::from).or_else(|| {
        let p = repo("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
        p.exists().then_some(p)
    });
    let Some(gguf) = gguf else {
        eprintln!("note: SmolLM2 not fetched (models/fetch_smollm2.sh); skipping");
        return None;
    };
    let out = std::env::temp_dir().join(format!("arq-serve-smollm2-{}.arq", std::process::id()));
    cli(&["convert", gguf.to_str().unwrap(), "-o", out.to_str().unwrap(), "--no-calib", "--force"]);
    Some(out)
}

#[test]
fn queueing_cancelling_and_chat_on_smollm2() {
    let Some(model) = smollm2() else { return };
    let server = Server::start(&model, &["--slots", "2", "--queue", "2"]);
    // Chat through the model's own template; greedy is deterministic.
    let chat = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 12, "temperature": 0});
    let r = server.ok("/v1/chat/completions", &chat);
    assert_eq!(r["object"], "chat.completion");
    assert!(r["choices"][0]["message"]["content"].as_str().unwrap().contains("Paris"), "{r}");
    assert_eq!(r, {
        let mut again = server.ok("/v1/chat/completions", &chat);
        again["id"] = r["id"].clone();
        again["created"] = r["created"].clone();
        // The second asks the same: its whole prompt but the last token is reused.
        assert!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0);
        again["usage"] = r["usage"].clone();
        again
    });

    // 100 requests at once on 2 slots and 2 queue places: the rest are told to retry.
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let (st, head, _) = server.raw(
                        "POST",
                        "/v1/completions",
                        completion(&format!("Item {i}:"), 8).to_string().as_bytes(),
                    );
                    (st, head)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok + busy.len(), 100);
    assert!(ok >= 4 && !busy.is_empty(), "{ok} answered, {} refused", busy.len());
    assert!(busy.iter().all(|(_, h)| h.contains("retry-after: 1")));

    // A client that leaves mid-stream frees its slot at once: with both slots taken by
    // long streams that are dropped, a new request is answered long before they could end.
    for _ in 0..2 {
        let mut s = server.connect();
        let body = json!({"prompt": "Write a long story.", "max_tokens": 2000, "stream": true}).to_string();
        write!(s, "POST /v1/completions HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut first = [0u8; 256];
        assert!(s.read(&mut first).unwrap() > 0);
        drop(s);
    }
    // Until the engine has admitted both streams they wait in the queue, and a loaded
    // machine may still hold them there: a 503 then means "retry", as it tells clients.
    let t0 = Instant::now();
    loop {
        let (status, v) = server.post("/v1/completions", &completion("Hello", 4));
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{v}");
        assert!(t0.elapsed() < Duration::from_secs(30), "the dropped streams kept their slots");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t0.elapsed() < Duration::from_secs(30), "the dropped streams kept their slots");

    // A request past --timeout ends with 504 (whole) or an error event (streamed).
    let quick = Server::start(&model, &["--timeout", "1"]);
    let long = json!({"prompt": "Write a long story.", "max_tokens": 2000, "ignore_eos": true});
    let (status, v) = quick.post("/v1/completions", &long);
    assert_eq!(status, 504, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("--timeout"));
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    let events = quick.stream("/v1/completions", &streamed);
    assert!(events[events.len() - 2].contains("--timeout") && events.last().unwrap() == "[DONE]");
    drop(quick);
    let _ = std::fs::remove_file(&model);
}
