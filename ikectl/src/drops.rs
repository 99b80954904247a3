//! `ikectl drops --follow`: the report as usual, then every new drop as one line until Ctrl-C.
//! With `--json`, JSON lines: the report (`{"kind":"drops","data":{...}}`), then one drop per line.

use std::io::Write;
use std::path::Path;

use mesh_config::control::{Command, Reply};
use serde::Serialize;

use crate::client::{self, ClientError, Connection};
use crate::render;

pub fn follow(socket: &Path, peer: Option<String>, kernel: bool, json: bool) -> Result<(), ClientError> {
    let report = client::request(socket, Command::Drops { peer: peer.clone(), kernel })?;
    let (after, kernel_after) = match &report {
        Reply::Drops(report) => (report.last_id, report.kernel.as_ref().map(|k| k.last_id)),
        other => return Err(unexpected(other)),
    };
    // With --json every line is one JSON value (JSON lines): the report first, then each drop.
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")));
    } else {
        print!("{}", render::text(&report));
        println!("following new drops (Ctrl-C to stop):");
    }
    let mut stream = Connection::open(socket, Command::DropsFollow { peer, after, kernel_after })?;
    loop {
        let batch = match stream.receive()? {
            Reply::DropStream(batch) => batch,
            other => return Err(unexpected(&other)),
        };
        let mut out = std::io::stdout().lock();
        let meshd = batch.drops.iter().map(|d| if json { json_line(d) } else { render::drop_line(d) });
        let kernel = batch.kernel.iter().map(|d| if json { json_line(d) } else { render::kernel_drop_line(d) });
        for line in meshd.chain(kernel) {
            // A closed stdout (ikectl drops --follow | head) ends the stream.
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
}

/// One record as a JSON line; kernel records are told apart by their `location`.
fn json_line(record: &impl Serialize) -> String {
    serde_json::to_string(record).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn unexpected(_: &Reply) -> ClientError {
    ClientError("meshd answered something else than drops; use the ikectl that came with this meshd".to_string())
}
