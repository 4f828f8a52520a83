//! `dedisk completions SHELL` and `dedisk manpages DIR`: generated from the clap
//! definitions themselves, so a new flag is in both the day it is added.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::{Cli, ShellArg};
use crate::context::Outcome;

pub fn completions(shell: ShellArg) -> Result<Outcome> {
    use clap_complete::{generate, Shell};
    let shell = match shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    generate(shell, &mut cmd, "dedisk", &mut script);
    // `dedisk completions bash | head` closes the pipe early: that is not an error.
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the completion script")?
        }
        _ => {}
    }
    Ok(Outcome::default())
}

/// dedisk.1, then dedisk-COMMAND.1 for every command (and dedisk-COMMAND-SUB.1 for
/// `key` and `repair`'s subcommands).
pub fn manpages(dir: &Path) -> Result<Outcome> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    write_page(dir, &cmd, "dedisk")?;
    for sub in cmd.get_subcommands() {
        let name = format!("dedisk-{}", sub.get_name());
        write_page(dir, sub, &name)?;
        for subsub in sub.get_subcommands() {
            write_page(dir, subsub, &format!("{name}-{}", subsub.get_name()))?;
        }
    }
    Ok(Outcome::default())
}

fn write_page(dir: &Path, cmd: &clap::Command, name: &str) -> Result<()> {
    let cmd = cmd
        .clone()
        .name(name.to_string())
        .version(env!("CARGO_PKG_VERSION"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut page)
        .with_context(|| format!("rendering the man page {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}
