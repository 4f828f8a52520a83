//! `dedisk`: the command-line edge. Parses arguments, sets up logging, runs one command,
//! prints the error chain once and maps the outcome to a documented exit code.

mod args;
mod cmd;
mod context;
mod output;
mod progress;
mod ui;

use clap::Parser;

use args::{Cli, Command};

/// Exit codes, as README.md documents them for scripts:
///
/// | code | when                                                                  |
/// |------|-----------------------------------------------------------------------|
/// | 0    | success                                                               |
/// | 1    | an error: any [`engine::Error`] or [`repo_format::Error`] kind except  |
/// |      | interruption (bad input, a missing or damaged repository, a lock held |
/// |      | elsewhere, damage found, a provider's tool failing), and the job      |
/// |      | runner when every VM failed                                           |
/// | 2    | the command line is wrong (clap's own exit)                           |
/// | 3    | finished, with warnings (an index rebuilt, a repaired snapshot        |
/// |      | restored, some of a job's VMs failed)                                 |
/// | 130  | interrupted: [`engine::Error::Interrupted`] (128 + SIGINT)            |
///
/// [`exit_code`] is the one place an error becomes a code.
const EXIT_ERROR: i32 = 1;
const EXIT_WARNINGS: i32 = 3;
const EXIT_INTERRUPTED: i32 = 130;

/// The exit code for a failed command, by the kind of error in its chain (see the table
/// above).
fn exit_code(e: &anyhow::Error) -> i32 {
    let interrupted = e
        .chain()
        .any(|c| matches!(c.downcast_ref(), Some(engine::Error::Interrupted)));
    if interrupted {
        EXIT_INTERRUPTED
    } else {
        EXIT_ERROR
    }
}

/// The first SIGINT/SIGTERM asks the running command to stop cleanly (temporary files
/// removed, no snapshot written); a second one ends the process at once.
fn handle_signals() {
    let flag = context::CANCEL.flag();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registration fails only for forbidden signals, which these are not; without a
        // handler Ctrl-C still stops dedisk, just less tidily.
        let _ =
            signal_hook::flag::register_conditional_shutdown(sig, EXIT_INTERRUPTED, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
}

/// Runs the command the arguments name.
fn run(cli: &Cli) -> anyhow::Result<context::Outcome> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => cmd::init::init(g, a),
        Command::Key { what } => cmd::key::key(g, what),
        Command::Backup(a) => cmd::backup::backup_cmd(g, a),
        Command::Snapshots(a) => cmd::listing::snapshots(g, a),
        Command::Restore(a) => cmd::restore::restore(g, a),
        Command::Stats => cmd::listing::stats(g),
        Command::Metrics => cmd::listing::metrics(g),
        Command::Ui(a) => cmd::ui::ui(g, a),
        Command::Verify(a) if a.fsck.is_some() || a.boot.is_some() => cmd::guest::verify(g, a),
        Command::Verify(a) => cmd::maintain::verify(g, a),
        Command::Forget(a) => cmd::maintain::forget(g, a),
        Command::Inspect(a) => cmd::inspect::inspect(g, a),
        Command::ServeNbd(a) => cmd::access::serve_nbd(g, a),
        Command::Mount(a) => cmd::access::mount(g, a),
        Command::Prune(a) => cmd::maintain::prune(g, a),
        Command::Copy(a) => cmd::maintain::copy(g, a),
        Command::Run(a) => cmd::job::run(g, a),
        Command::Unlock { force } => cmd::maintain::unlock(g, *force),
        Command::Repair { what } => cmd::maintain::repair(g, what),
        Command::Completions { shell } => cmd::docs::completions(*shell),
        Command::Manpages { dir } => cmd::docs::manpages(dir),
    }
}

/// The damaged-index error in `e`'s chain, if any.
fn broken_index(e: &anyhow::Error) -> Option<&repo_format::Error> {
    e.chain().find_map(|c| {
        let r = c.downcast_ref::<repo_format::Error>().or_else(|| {
            match c.downcast_ref::<engine::Error>() {
                Some(engine::Error::Repo(r)) => Some(r),
                _ => None,
            }
        })?;
        r.is_broken_index().then_some(r)
    })
}

/// Sets the damaged index of `--repo` aside and rebuilds it from the packs.
fn recover_index(g: &args::Global, why: &repo_format::Error) -> anyhow::Result<()> {
    let repo = context::open_quietly(g)?;
    let index = repo.index()?;
    repo.recover_index(&index, why)?;
    Ok(())
}

/// Keeps glibc's allocator from handing chunk-sized memory back to the kernel between
/// chunks. By default it maps buffers above a moving threshold on their own and trims
/// each thread's heap as soon as 128 KiB at its top are free, so the cutter's next chunk
/// buffer (16-256 KiB, freed by another thread) faulted its pages in afresh: a third of a
/// night's CPU time was the kernel's (page faults, clearing, unmapping). Fixed
/// thresholds keep the pipeline's few MiB in flight mapped: measured on the shared
/// workload's day 2 against day 1 (caches dropped, three runs each), system time
/// 1.16-1.46 s became 0.84-0.96 s, peak RSS unchanged. A `GLIBC_TUNABLES` set by the
/// caller wins.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only sets allocator parameters; called first thing in main,
        // before any thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        }
    }
}

fn main() {
    tune_malloc();
    let cli = Cli::parse();
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .format_target(false)
        .init();

    handle_signals();
    if let Some(dir) = &cli.global.cache_dir {
        // Read wherever a repository's cache folder is found (repo_format::cache), before
        // any thread starts.
        std::env::set_var("DEDISK_CACHE_DIR", dir);
    }
    let g = &cli.global;
    let mut result = run(&cli);
    // A damaged index met where no reader recovers it in place (verify's and prune's
    // queries, a backup's dedup lookups): rebuild it from the packs and run the command
    // once more. Every command is safe to re-run: a failed one wrote no snapshot and
    // left the repository as it was (issue 12).
    if let Err(e) = &result {
        if let Some(broken) = broken_index(e) {
            if recover_index(g, broken).is_ok() {
                result = run(&cli);
            }
        }
    }
    // With --json a script reads stdout only: failures and warnings come as one JSON
    // object there too (stderr keeps the human line).
    let json_end = |kind: &str, message: &str, code: i32| {
        if g.json {
            output::json(&serde_json::json!({"type": kind, "message": message, "exit_code": code}));
        }
    };
    match result {
        Ok(outcome) if outcome.warnings.is_empty() => {}
        Ok(outcome) => {
            for w in &outcome.warnings {
                eprintln!("dedisk: warning: {w}");
                json_end("warning", w, EXIT_WARNINGS);
            }
            std::process::exit(EXIT_WARNINGS);
        }
        Err(e) if exit_code(&e) == EXIT_INTERRUPTED => {
            eprintln!("dedisk: {e:#}; temporary files were removed");
            json_end("error", &format!("{e:#}"), EXIT_INTERRUPTED);
            std::process::exit(EXIT_INTERRUPTED);
        }
        Err(e) => {
            // One line: the context chain, outermost first.
            // Library errors often include their cause in their own text; skip a cause
            // already said by the message before it.
            let mut chain: Vec<String> = Vec::new();
            // Some causes (a TOML parser's) span lines: an error is one line whatever it quotes.
            let one_line = |text: String| {
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            for cause in e.chain().map(|c| one_line(c.to_string())) {
                if !chain.last().is_some_and(|prev| prev.contains(&cause)) {
                    chain.push(cause);
                }
            }
            let code = exit_code(&e);
            eprintln!("dedisk: error: {}", chain.join(": "));
            json_end("error", &chain.join(": "), code);
            std::process::exit(code);
        }
    }
}
