//! dsbox-tasks: the unified task record, loaders for the DSGym suites, metrics with the
//! reference's exact rules, and leaderboard scoring.
