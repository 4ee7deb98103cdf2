//! async-tftp 0.4 example server: `async-tftp-server DIR ADDR` (for the bench only).
use async_tftp::server::TftpServerBuilder;
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap();
    let addr = std::env::args().nth(2).unwrap();
    let tftpd = TftpServerBuilder::with_dir_ro(dir)?.bind(addr.parse()?).build().await?;
    println!("listening");
    tftpd.serve().await?;
    Ok(())
}
