//! The man pages and shell completions of a command, written from its clap definition: what
//! `meshd generate` and `ikectl generate` (hidden subcommands, run by scripts/package) call.

#![deny(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Command;
use clap_complete::Shell;

/// The shells completions are written for, with the file name each expects for `bin`.
const SHELLS: [(Shell, &str, &str); 3] = [(Shell::Bash, "", ""), (Shell::Zsh, "_", ""), (Shell::Fish, "", ".fish")];

/// What the hidden `generate` subcommands run: [`write`], and on failure a one-line reason on
/// stderr and exit status 1.
pub fn generate(command: Command, section: &str, dir: &Path) -> ExitCode {
    let name = command.get_name().to_string();
    match write(command, section, dir) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: cannot write the man pages and completions into {}: {error}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Writes into `dir`: `man/NAME.SECTION` for the command and `man/NAME-SUB.SECTION` for each
/// subcommand (hidden ones left out), and `completions/{bash,zsh,fish}/FILE` under the names
/// bash-completion, zsh and fish look for. Returns every file written.
pub fn write(command: Command, section: &str, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let name = command.get_name().to_string();
    let mut written = Vec::new();
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    write_man_pages(&command, section, &man, &mut written)?;
    for (shell, prefix, suffix) in SHELLS {
        let folder = dir.join("completions").join(shell.to_string());
        fs::create_dir_all(&folder)?;
        let path = folder.join(format!("{prefix}{name}{suffix}"));
        let mut file = fs::File::create(&path)?;
        clap_complete::generate(shell, &mut command, name.clone(), &mut file);
        written.push(path);
    }
    Ok(written)
}

/// `command`'s page, then its visible subcommands' pages (clap names them `meshd-run` and so on
/// once the command is built).
fn write_man_pages(command: &Command, section: &str, man: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    let page = clap_mangen::Man::new(command.clone()).section(section);
    let path = man.join(page.get_filename());
    page.render(&mut fs::File::create(&path)?)?;
    written.push(path);
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_man_pages(sub, section, man, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn tool() -> Command {
        Command::new("tool")
            .version("1.2.3")
            .about("Does things")
            .subcommand(Command::new("run").about("Runs").arg(Arg::new("fast").long("fast").action(ArgAction::SetTrue)))
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn pages_for_visible_subcommands_and_three_shells() {
        let dir = std::env::temp_dir().join(format!("clidoc-test-{}", std::process::id()));
        let written = write(tool(), "8", &dir).expect("write");
        let names: Vec<String> =
            written.iter().map(|p| p.strip_prefix(&dir).expect("inside").display().to_string()).collect();
        assert_eq!(
            names,
            [
                "man/tool.8",
                "man/tool-run.8",
                "completions/bash/tool",
                "completions/zsh/_tool",
                "completions/fish/tool.fish"
            ]
        );
        let run = fs::read_to_string(dir.join("man/tool-run.8")).expect("read page");
        assert!(run.contains(".TH tool-run 8") && run.contains("fast"), "{run}");
        let fish = fs::read_to_string(dir.join("completions/fish/tool.fish")).expect("read fish");
        assert!(fish.contains("-l fast"), "{fish}");
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
