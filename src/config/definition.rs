//! The definition read back: as a command, as the list of documented
//! variables, and as the one-line explanation of a value clap refused.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command};

use super::{SettingsArgs, Variable};

/// The definition as a command of its own (what `from_vars` parses and the
/// documentation is read from).
pub fn command() -> Command {
    SettingsArgs::augment_args(Command::new("swapstream"))
}

/// Every variable of the definition, in its order.
pub fn variables() -> Vec<Variable> {
    let command = command();
    command
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_env()?.to_str()?.to_owned();
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let default = arg.get_default_values().first().map(|d| d.to_string_lossy().into_owned());
            let (help, default) = match (default, help.strip_suffix(']').and_then(|h| h.rsplit_once(" [default: "))) {
                (Some(default), _) => (help, default),
                (None, Some((help, placeholder))) => (help.to_owned(), placeholder.to_owned()),
                (None, None) => (help, "(empty)".to_owned()),
            };
            Some(Variable { name, flag: arg.get_long()?.to_owned(), default, help })
        })
        .collect()
}

/// The command with every argument whose variable is set but blank read as
/// if the variable were unset (the documented default applies), as before
/// flags existed: `SWAPSTREAM_HTTP_HEALTH_ADDR=` means none.
pub fn blank_variables_unset(command: Command) -> Command {
    let blank = |arg: &clap::Arg| {
        arg.get_env().and_then(std::env::var_os).is_some_and(|v| v.to_string_lossy().trim().is_empty())
    };
    let subcommands: Vec<String> = command.get_subcommands().map(|c| c.get_name().to_owned()).collect();
    let command = command.mut_args(|arg| if blank(&arg) { arg.env(None) } else { arg });
    subcommands.iter().fold(command, |command, name| {
        command.mut_subcommand(name, |sub| sub.mut_args(|arg| if blank(&arg) { arg.env(None) } else { arg }))
    })
}

/// `SWAPSTREAM_*` names among `names` that the definition does not know
/// (most likely typos), as problems.
pub fn unknown_variables<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let known: Vec<String> = variables().into_iter().map(|v| v.name).collect();
    names
        .into_iter()
        .filter(|name| name.starts_with("SWAPSTREAM_") && !known.iter().any(|k| k == name))
        .map(|name| format!("{name}: unknown variable (see the configuration table in README.md)"))
        .collect()
}

/// A parse error as one line naming the variable, what was expected and
/// what was given; other clap errors (usage, help) as clap renders them.
pub fn explain(error: &clap::Error) -> Option<String> {
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    let flag = arg.trim_start_matches('-').split([' ', '=', '<']).next().unwrap_or_default();
    let variable = variables().into_iter().find(|v| v.flag == flag)?;
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let expected = match (error.get(ContextKind::ValidValue), std::error::Error::source(error)) {
        (Some(ContextValue::Strings(valid)), _) => format!("expected one of {}", valid.join(", ")),
        (_, Some(why)) => why.to_string(),
        _ => "expected a valid value".to_owned(),
    };
    Some(format!("{}: {expected}, got {value:?}", variable.name))
}
