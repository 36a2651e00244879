//! `portcullis-admin`: the ADMIN companion (service catalog, combined configurations, the export
//! CSV over HTTP, versions, DB patching). This first cut only carries the command-line frame;
//! the catalog and its API arrive with their own issues and will write exports exclusively
//! through `portcullis-export`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "portcullis-admin",
    version,
    about = "portcullis ADMIN service (catalog and export)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("portcullis-admin: no subcommands yet; the catalog and export API are tracked in their own issues");
    std::process::exit(2);
}
