//! `sshwarden classify`: one JSON verdict per input line, in input order, for
//! checking what sshwarden makes of a log format. Lines are read with their
//! connection context, as the service reads them, but nothing is counted.

use std::io::Write;

use serde::Serialize;
use sshwarden_pipeline::classify::{Kind, Signal};
use sshwarden_pipeline::context::Attribution;
use sshwarden_pipeline::engine::LineVerdict;
use sshwarden_pipeline::{Engine, EngineConfig};

use super::input::{self, Format};

#[derive(Debug, clap::Args)]
pub struct ClassifyArgs {
    /// File to read (`-` for stdin; gzip is read directly).
    #[arg(default_value = "-")]
    pub input: String,
}

#[derive(Serialize)]
struct Out<'a> {
    line: u64,
    kind: Option<Kind>,
    attack: bool,
    ip: Option<String>,
    user: Option<&'a str>,
    port: Option<u16>,
    signal: Option<Signal>,
    sshd: bool,
    attribution: Option<Attribution>,
    ambiguous: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    invalid_utf8: bool,
}

pub fn classify(args: &ClassifyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut engine = Engine::new(EngineConfig::default()).map_err(anyhow::Error::msg)?;
    let mut input = input::open(&args.input, Format::Lines)?;
    let mut n = 0u64;
    let instance = args.input.clone();
    input::for_each_line(&mut *input.reader, |line, lossy| {
        n += 1;
        let mut o = Out {
            line: n,
            kind: None,
            attack: false,
            ip: None,
            user: None,
            port: None,
            signal: None,
            sshd: true,
            attribution: None,
            ambiguous: false,
            invalid_utf8: lossy,
        };
        match engine.verdict(line, &instance) {
            LineVerdict::NotSshd => o.sshd = false,
            LineVerdict::Unclassified => {}
            LineVerdict::Classified(v) => {
                o.kind = Some(v.kind);
                o.attack = v.is_attack();
                o.ip = v
                    .source
                    .as_ref()
                    .map(ToString::to_string)
                    .or(v.logged_source.map(str::to_owned));
                o.user = v.user;
                o.port = v.port;
                o.signal = v.signal;
                o.attribution = Some(v.attribution);
                o.ambiguous = v.ambiguous;
            }
        }
        serde_json::to_writer(&mut *out, &o)?;
        out.write_all(b"\n")?;
        Ok(())
    })
}
