//! Test hook: `IMGBUILD_FAILPOINT=<name>` stops the process (it sleeps until killed) when it
//! reaches the point of that name, so a test can SIGKILL a build inside a chosen stage.

/// Stop here forever if `IMGBUILD_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var("IMGBUILD_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: waiting to be killed");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
