//! `warden validate PATH...`: Istio's admission checks on policy files, offline. Prints
//! one `file:line: Kind ns/name: field.path: problem` line per problem and exits 1 if
//! any is an error; otherwise prints a one-line summary and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use warden_policy::loader;
use warden_policy::validate::{self, Options, Summary};
use warden_policy::yaml_lines::SourceLines;

/// `warden validate`
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Istio YAML files or directories (read recursively: *.yaml, *.yml, *.json).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Namespace whose policies apply mesh-wide (MeshConfig rootNamespace).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
}

/// Loads, checks and reports; exit 1 when the files cannot be loaded or a resource
/// would be refused.
pub fn run(args: ValidateArgs) -> ExitCode {
    let set = match loader::load(&args.paths) {
        Ok(set) => set,
        Err(errors) => {
            // Same form as the problems: one `file:line: ...` line each.
            println!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let lines = SourceLines::new(&set);
    let options = Options {
        root_namespace: args.root_namespace,
    };
    let problems = validate::validate(&set, &lines, &options);
    for p in &problems {
        println!("{p}");
    }
    if problems.iter().any(validate::Problem::is_error) {
        return ExitCode::FAILURE;
    }
    println!("{}", Summary::new(&set, &problems));
    ExitCode::SUCCESS
}
