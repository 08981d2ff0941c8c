//! Shell completions and man pages, generated from the command line's own definition
//! (`clap_complete`, `clap_mangen`): never written by hand, never out of date.

#[allow(unused_imports)]
use super::*;

use clap::CommandFactory;

pub(super) fn completions(shell: clap_complete::Shell) -> Result<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut visible(Cli::command()), "operator", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(exit::OK)
}

/// `operator.1` on stdout, or every page (`operator-run.1`, …) written into `dir`.
pub(super) fn man(dir: Option<&Path>) -> Result<u8> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            say!(
                "wrote the man pages into {} (`man operator`)",
                dir.display()
            );
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
        }
    }
    Ok(exit::OK)
}

/// The command without its hidden subcommands (`sim-agent`, `guard`): the completion generators
/// offer every subcommand they are given.
fn visible(cmd: clap::Command) -> clap::Command {
    let subcommands: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let top = clap::Command::new("operator")
        .about(cmd.get_about().cloned().unwrap_or_default())
        .version(env!("CARGO_PKG_VERSION"))
        .args(cmd.get_arguments().cloned());
    top.subcommands(subcommands)
}
