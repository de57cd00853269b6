//! A benchmark's command line: numbers, the flags it knows, and options
//! with one value; anything else is refused, so a mistyped or outdated flag
//! never runs a different benchmark than the one asked for.

use std::str::FromStr;

/// A checked command line.
pub struct BenchArgs {
    usage: String,
    /// The numbers that are not an option's value, in order, without `_`.
    numbers: Vec<String>,
    flags: Vec<String>,
    /// Every option with its value, in order (an option may repeat).
    options: Vec<(String, String)>,
}

/// The arguments after the program name, less cargo's `--bench`. Exits
/// with status 2 and `usage` on an argument that is neither a number
/// (`1_000_000` reads as one), one of `flags`, nor one of `options`
/// followed by its value.
pub fn checked(usage: &str, flags: &[&str], options: &[&str]) -> BenchArgs {
    let refuse = |message: String| -> ! {
        eprintln!("{message}\nusage: {usage}");
        std::process::exit(2)
    };
    let mut parsed = BenchArgs { usage: usage.to_owned(), numbers: Vec::new(), flags: Vec::new(), options: Vec::new() };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        if options.contains(&arg.as_str()) {
            let Some(value) = args.next() else { refuse(format!("{arg} needs a value")) };
            parsed.options.push((arg, value));
        } else if flags.contains(&arg.as_str()) {
            parsed.flags.push(arg);
        } else if arg.replace('_', "").parse::<f64>().is_ok() {
            parsed.numbers.push(arg.replace('_', ""));
        } else {
            refuse(format!("unknown argument {arg:?}"));
        }
    }
    parsed
}

impl BenchArgs {
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|flag| flag == name)
    }

    /// Every value given to option `name`, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.options.iter().filter(move |(option, _)| option == name).map(|(_, value)| value.as_str())
    }

    /// The value of option `name`, read as a `T` (`_` in numbers allowed);
    /// exits with status 2 and the usage when it does not read as one.
    pub fn value<T: FromStr>(&self, name: &str) -> Option<T> {
        let value = self.values(name).next()?;
        match value.replace('_', "").parse() {
            Ok(parsed) => Some(parsed),
            Err(_) => {
                eprintln!("{name}: {value:?} is not a valid value\nusage: {}", self.usage);
                std::process::exit(2)
            }
        }
    }

    /// The positional numbers read as `T`.
    pub fn numbers<T: FromStr>(&self) -> Vec<T> {
        self.numbers.iter().filter_map(|n| n.parse().ok()).collect()
    }
}
