//! Compiles `proto/` with protox, so no system `protoc` is needed, and
//! records the git commit the binary is built from for
//! `swapstream_build_info{commit}`.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/swapstream/v1/swap.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;

    // Not a `SWAPSTREAM_*` name: `cargo run` passes it to the binary, which
    // refuses variables of its prefix that it does not know.
    println!("cargo:rustc-env=BUILD_INFO_COMMIT={}", git_commit());
    Ok(())
}

/// `git rev-parse --short HEAD`, or `BUILD_COMMIT` when set (a build without
/// `.git`, such as the Docker image, can pass it), else `unknown`.
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=BUILD_COMMIT");
    if let Some(commit) = std::env::var("BUILD_COMMIT").ok().filter(|c| !c.trim().is_empty()) {
        return commit.trim().to_owned();
    }
    // Rebuild when HEAD moves: HEAD itself, the branch it points at, packed refs.
    for path in ["HEAD", "packed-refs"].into_iter().map(str::to_owned).chain(git(&["symbolic-ref", "-q", "HEAD"])) {
        if let Some(file) = git(&["rev-parse", "--git-path", &path]) {
            let file = PathBuf::from(file);
            if file.exists() {
                println!("cargo:rerun-if-changed={}", file.display());
            }
        }
    }
    git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}
