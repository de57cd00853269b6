//! A benchmark's command line: numbers, the flags it knows, and options
//! with one value; anything else is refused, so a mistyped or outdated flag
//! never runs a different benchmark than the one asked for.

/// The arguments after the program name, less cargo's `--bench`. Exits
/// with status 2 and `usage` on an argument that is neither a number
/// (`1_000_000` reads as one), one of `flags`, nor one of `options`
/// followed by its value.
pub fn checked(usage: &str, flags: &[&str], options: &[&str]) -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut expect_value = false;
    for arg in &args {
        if std::mem::take(&mut expect_value) {
            continue;
        }
        if options.contains(&arg.as_str()) {
            expect_value = true;
        } else if !flags.contains(&arg.as_str()) && arg.replace('_', "").parse::<f64>().is_err() {
            eprintln!("unknown argument {arg:?}\nusage: {usage}");
            std::process::exit(2);
        }
    }
    if expect_value {
        eprintln!("{} needs a value\nusage: {usage}", args.last().map_or("", String::as_str));
        std::process::exit(2);
    }
    args
}
