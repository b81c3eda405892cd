#[derive(clap::Args)] pub struct ValidateArgs { pub x: Vec<String> }
#[derive(clap::Args)] pub struct ExplainArgs { #[arg(long)] pub y: String }
pub fn validate(_a: ValidateArgs) -> anyhow::Result<std::process::ExitCode> { todo!() }
pub fn explain(_a: ExplainArgs) -> anyhow::Result<std::process::ExitCode> { todo!() }
