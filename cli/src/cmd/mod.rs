//! One module per subcommand (or group of related subcommands).

pub mod audit;
pub mod bench;
pub mod demo;
pub mod doctor;
pub mod eval;
pub mod exec;
pub mod gc;
pub mod report;
pub mod rootfs;
pub mod run;
pub mod score;
pub mod serve;
pub mod shell;
pub mod synth;
pub mod tasks;
