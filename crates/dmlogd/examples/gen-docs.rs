//! Renders the man pages and shell completions of `dmlogd` and `dmlogctl`
//! from their clap definitions ([`dmlogd::cli`]) into `deploy/`:
//!
//! ```text
//! cargo run -p dmlogd --example gen-docs -- deploy
//! ```
//!
//! writes `man/dmlogd.8`, `man/dmlogctl.8` and
//! `completions/{dmlogd,dmlogctl}.{bash,zsh,fish}` under the given
//! directory. `.ci/run` renders them again and fails if the committed files
//! differ.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

fn main() {
    let out = std::env::args().nth(1).map_or_else(|| PathBuf::from("deploy"), PathBuf::from);
    if let Err(e) = render(&out) {
        eprintln!("gen-docs: {e}");
        std::process::exit(2);
    }
}

fn render(out: &Path) -> Result<(), String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    for dir in ["man", "completions"] {
        let d = out.join(dir);
        std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
    }
    for cmd in [dmlogd::cli::Daemon::command(), dmlogd::cli::Ctl::command()] {
        let name = cmd.get_name().to_owned();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).section("8").render(&mut page).map_err(|e| format!("{name}: {e}"))?;
        let p = out.join("man").join(format!("{name}.8"));
        std::fs::write(&p, page).map_err(|e| io(&p, e))?;
        for (shell, ext) in [(Shell::Bash, "bash"), (Shell::Zsh, "zsh"), (Shell::Fish, "fish")] {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name.clone(), &mut text);
            let p = out.join("completions").join(format!("{name}.{ext}"));
            std::fs::write(&p, text).map_err(|e| io(&p, e))?;
        }
    }
    Ok(())
}
