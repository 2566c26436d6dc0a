//! Compiles the open spec with pure-Rust `protox` (no system `protoc`) and generates tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "p2pos/node/v1/node.proto",
        "p2pos/overlay/v1/overlay.proto",
        "p2pos/app/v1/app.proto",
        "p2pos/monitor/v1/monitor.proto",
        "p2pos/tasks/v1/tasks.proto",
        "p2pos/service/v1/service.proto",
        "p2pos/resources/v1/resources.proto",
        "p2pos/group/v1/group.proto",
        "p2pos/jobs/v1/jobs.proto",
        "p2pos/wire/v1/wire.proto",
    ];
    println!("cargo:rerun-if-changed=p2pos");
    let fds = protox::compile(files, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("p2pos_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
