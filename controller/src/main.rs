//! `canary`: the controller's command line (see [`canary_controller::cli`]).

fn main() -> anyhow::Result<()> {
    canary_controller::cli::main()
}
