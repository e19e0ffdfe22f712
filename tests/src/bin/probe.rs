//! dsbox-probe: runs inside a sandbox and reports what it can see and do, as JSON.
fn main() {
    println!("{{}}");
}
