//! `sextant validate -f PATH...`: every document of every file is parsed
//! and validated on its own (errors), then all valid objects together are
//! analyzed for cross-object problems (warnings), as `istioctl analyze`.
//!
//! Messages read `FILE: Kind ns/name: field.path: message`; warnings start
//! with `warning: `.
use std::path::PathBuf;
use std::process::ExitCode;

use sextant_config::file_source::{config_files, describe_raw};
use sextant_config::object::{self, IstioObject};
use sextant_config::{analysis, credential, validation};

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Files or directories (searched recursively for .yaml, .yml, .json).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
}

pub fn run(args: ValidateArgs) -> ExitCode {
    let files = match config_files(&args.paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sextant validate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut errors = 0usize;
    let mut warnings = 0usize;
    let mut documents = 0usize;
    let mut objects: Vec<(String, IstioObject)> = Vec::new();
    for file in &files {
        let shown = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                println!("{shown}: cannot read: {e}");
                errors += 1;
                continue;
            }
        };
        for (index, doc) in object::documents(&text) {
            documents += 1;
            let value = match doc {
                Ok(v) => v,
                Err(e) => {
                    println!("{shown}: document {}: {e}", index + 1);
                    errors += 1;
                    continue;
                }
            };
            let described =
                describe_raw(&value).unwrap_or_else(|| format!("document {}", index + 1));
            // Secrets (gateways' credentialName) are checked as the store would.
            if credential::is_secret(&value) {
                let checked = credential::parse_secret(value)
                    .map_err(|e| e.to_string())
                    .and_then(|(_, c)| {
                        c.map_or(Ok(()), |c| c.validate().map_err(|e| e.to_string()))
                    });
                if let Err(e) = checked {
                    println!("{shown}: {described}: {e}");
                    errors += 1;
                }
                continue;
            }
            let obj = match object::parse(value) {
                Ok(o) => o,
                Err(e) => {
                    println!("{shown}: {described}: {e}");
                    errors += 1;
                    continue;
                }
            };
            let key = obj.key();
            let findings = validation::validate(&obj);
            for f in findings.errors() {
                println!("{shown}: {key}: {f}");
                errors += 1;
            }
            for f in findings.warnings() {
                println!("warning: {shown}: {key}: {f}");
                warnings += 1;
            }
            if !findings.has_errors() {
                objects.push((shown.clone(), obj));
            }
        }
    }
    let all: Vec<&IstioObject> = objects.iter().map(|(_, o)| o).collect();
    for (index, finding) in analysis::analyze(&all) {
        let (file, obj) = &objects[index];
        println!("warning: {file}: {}: {finding}", obj.key());
        warnings += 1;
    }
    eprintln!(
        "{documents} document(s) in {} file(s): {errors} error(s), {warnings} warning(s)",
        files.len()
    );
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
