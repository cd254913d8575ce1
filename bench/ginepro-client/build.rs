//! Compiles the pods' `user.proto` (the one the main workspace uses) with tonic 0.13.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../../testkit/proto";
    println!("cargo:rerun-if-changed={proto}/user.proto");
    let fds = protox::compile([format!("{proto}/user.proto")], [proto])?;
    tonic_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
