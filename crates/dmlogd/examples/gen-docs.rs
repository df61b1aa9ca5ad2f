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
//! differ. A page's sections beyond what clap knows (configuration,
//! signals, exit status, environment, files, see also) come from
//! `crates/dmlogd/man/<program>.roff`; `dmlogctl`'s subcommands are
//! described on its own page (there are no per-subcommand pages).

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
    let pages = [
        (dmlogd::cli::Daemon::command(), include_str!("../man/dmlogd.roff")),
        (dmlogd::cli::Ctl::command(), include_str!("../man/dmlogctl.roff")),
    ];
    for (cmd, extra) in pages {
        let name = cmd.get_name().to_owned();
        let page = man_page(&cmd, extra).map_err(|e| format!("{name}: {e}"))?;
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

/// One man page: clap's title, name, synopsis, description and options,
/// the subcommands with their arguments, then `extra`.
fn man_page(cmd: &clap::Command, extra: &str) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    let mut commands = String::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        describe(&mut commands, cmd.get_name(), sub);
    }
    if !commands.is_empty() {
        page.extend_from_slice(b".SH COMMANDS\n");
        page.extend_from_slice(commands.as_bytes());
    }
    page.extend_from_slice(extra.as_bytes());
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// `.TP` entries for `sub` and its own subcommands: the command line with
/// its arguments, its help, each argument's help.
fn describe(out: &mut String, parent: &str, sub: &clap::Command) {
    let path = format!("{parent} {}", sub.get_name());
    if sub.has_subcommands() {
        for s in sub.get_subcommands().filter(|s| s.get_name() != "help") {
            describe(out, &path, s);
        }
        return;
    }
    let mut line = format!("\\fB{}\\fR", roff(&path));
    let args: Vec<&clap::Arg> =
        sub.get_arguments().filter(|a| !a.is_hide_set() && !a.is_global_set() && a.get_id() != "help").collect();
    for a in &args {
        let value =
            a.get_value_names().and_then(|v| v.first()).map_or_else(|| a.get_id().to_string(), |v| v.to_string());
        match a.get_long() {
            Some(long) if a.get_action().takes_values() => {
                line.push_str(&format!(" [\\fB\\-\\-{}\\fR \\fI{}\\fR]", roff(long), roff(&value)));
            }
            Some(long) => line.push_str(&format!(" [\\fB\\-\\-{}\\fR]", roff(long))),
            None => line.push_str(&format!(" \\fI{}\\fR", roff(&value))),
        }
    }
    out.push_str(&format!(".TP\n{line}\n"));
    if let Some(about) = sub.get_long_about().or(sub.get_about()) {
        out.push_str(&format!("{}\n", roff(&about.to_string())));
    }
    for a in args {
        if let Some(help) = a.get_help() {
            let value =
                a.get_value_names().and_then(|v| v.first()).map_or_else(|| a.get_id().to_string(), |v| v.to_string());
            let name = a.get_long().map_or(value, |l| format!("--{l}"));
            out.push_str(&format!(".br\n\\fI{}\\fR: {}\n", roff(&name), roff(&help.to_string())));
        }
    }
}

/// Text for roff: backslashes and hyphens escaped, no line starting with
/// a control character.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') { format!("\\&{t}") } else { t }
}
