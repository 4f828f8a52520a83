//! `dedisk completions` and `dedisk manpages`: scripts real shells load and complete
//! with, and man pages groff renders without a warning.

use std::process::Command;

use crate::helpers::*;

/// Runs `shell args...` and returns stdout, failing the test on a non-zero exit.
fn shell(shell: &str, args: &[&str]) -> String {
    let out = Command::new(shell).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{shell} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completes_commands_and_flags_and_zsh_and_fish_load_their_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let bash = dir.path().join("dedisk.bash");
    std::fs::write(&bash, ok(&["completions", "bash"])).unwrap();
    let complete = |words: &str, cword: usize| {
        shell(
            "bash",
            &[
                "-c",
                &format!(
                    "source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                     _dedisk dedisk \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
                     printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                    bash.display()
                ),
            ],
        )
    };
    assert_eq!(complete("dedisk res", 1).trim(), "restore");
    assert!(complete("dedisk restore --diff", 2).contains("--differential"));
    assert!(complete("dedisk verify --bo", 2).contains("--boot-serial"));

    for (sh, check) in [("zsh", "-n"), ("fish", "--no-execute")] {
        let script = ok(&["completions", sh]);
        assert!(script.contains("restore") && script.contains("differential"));
        if !have(sh) {
            assert!(
                std::env::var_os("CI").is_none(),
                "{sh} is required under CI"
            );
            eprintln!("SKIPPED: {sh} is not installed; its script was not parsed");
            continue;
        }
        let file = dir.path().join(format!("dedisk.{sh}"));
        std::fs::write(&file, script).unwrap();
        shell(sh, &[check, p(&file)]);
    }
}

#[test]
fn one_man_page_per_command_renders_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    ok(&["manpages", p(&man)]);
    // Every command `dedisk --help` lists has its page.
    let help = ok(&["--help"]);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 15, "{help}");
    for c in &commands {
        assert!(
            man.join(format!("dedisk-{c}.1")).exists(),
            "no man page for {c}"
        );
    }
    assert!(man.join("dedisk.1").exists());
    assert!(man.join("dedisk-key-passwd.1").exists());
    if !have("groff") {
        assert!(
            std::env::var_os("CI").is_none(),
            "groff is required under CI"
        );
        return;
    }
    for entry in std::fs::read_dir(&man).unwrap().flatten() {
        let out = Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(entry.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            out.stderr.is_empty(),
            "{}: {}",
            entry.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The restore page documents the new flags.
    let page = std::fs::read_to_string(man.join("dedisk-restore.1")).unwrap();
    assert!(page.contains("differential"), "{page}");
}
