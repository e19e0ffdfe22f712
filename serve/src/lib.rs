//! dsbox-serve: the HTTP service — DSGym-compatible manager API, an environment API for
//! RL trainers, and a direct sandbox API.
