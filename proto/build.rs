//! Generates the gRPC code with a vendored `protoc`, so building needs no system install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .bytes(".sluice.v1.ProduceRequest.batch")
        .bytes(".sluice.v1.FetchedPartition.records")
        .compile_with_config(
            config,
            &["proto/sluice/v1/sluice.proto", "proto/sluice/v1/raft.proto"],
            &["proto"],
        )?;
    Ok(())
}
